"""From a validated source block to what the engine runs (:class:`SourceJob`)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any
from urllib.parse import unquote, urlsplit

from pydantic import BaseModel, SecretBytes, SecretStr

from safehold.config.models import Config, RepositoryConfig, SourceConfig
from safehold.engine.source_run import SourceJob
from safehold.errors import UsageError
from safehold.sources.hooks import HookSpec
from safehold.sources.registry import kind_module

__all__ = ["choose_source", "repository_secrets", "source_job"]

# Option keys whose values are credentials (masked in logs and records).
_SECRET_KEY = re.compile(r"pass|pwd|secret|token|key|sig|credential|auth|session|sas", re.I)


def choose_source(config: Config, name: str | None) -> SourceConfig:
    """The source called ``name``; without a name, the file's only source."""
    if name is None:
        if len(config.sources) == 1:
            return next(iter(config.sources.values()))
        raise UsageError(
            f"{config.path} has {len(config.sources)} sources; say which one",
            hint="add --source NAME (one of: " + ", ".join(config.sources) + ")"
            if config.sources
            else "add a sources: section to the file",
        )
    found = config.sources.get(name)
    if found is None:
        raise UsageError(
            f"no source {name!r} in {config.path}",
            hint="its sources are: " + (", ".join(config.sources) or "none"),
        )
    return found


def _with_url_password(secret: str) -> Iterator[str]:
    """A secret, and the password inside it when it is a URL (``postgresql://u:pw@h``):
    a tool's message may quote the password alone."""
    yield secret
    if "://" in secret:
        try:
            password = urlsplit(secret).password
        except ValueError:
            return
        if password:
            yield unquote(password)
            yield password


def _secrets(value: Any) -> Iterator[str]:
    if isinstance(value, SecretStr):
        yield from _with_url_password(value.get_secret_value())
    elif isinstance(value, SecretBytes):
        yield value.get_secret_value().decode(errors="replace")
    elif isinstance(value, BaseModel):
        for name in type(value).model_fields:
            yield from _secrets(getattr(value, name))
    elif isinstance(value, dict):
        for k, v in value.items():
            if isinstance(v, str) and _SECRET_KEY.search(str(k)):
                yield from _with_url_password(v)
            else:
                yield from _secrets(v)
    elif isinstance(value, list | tuple):
        for v in value:
            yield from _secrets(v)


def repository_secrets(repo: RepositoryConfig | None) -> list[str]:
    return list(_secrets(repo)) if repo is not None else []


def source_job(config: Config, name: str | None, *, plan: str = "") -> SourceJob:
    """The engine's view of source ``name``: the built source, its hooks and settings."""
    sc = choose_source(config, name)
    common = sc.common
    source = kind_module(sc.kind).build(sc.settings)
    hooks = {
        phase: HookSpec(
            phase=phase, run=hook.run, timeout=hook.timeout, shell=hook.shell, user=hook.user
        )
        for phase, hook in common.hooks.by_phase().items()
    }
    paths = getattr(sc.settings, "paths", None)
    target_dir = str(paths[0]) if isinstance(paths, list) and paths else None
    secrets = list(_secrets(sc.settings))
    secrets += repository_secrets(config.repository)
    for dest in config.destinations:
        secrets += repository_secrets(dest)
    hide_env = [r.password_env for r in [config.repository, *config.destinations] if r]
    return SourceJob(
        name=sc.name,
        kind=sc.kind,
        source=source,
        hooks=hooks,
        plan=plan,
        host=common.host,
        tags=list(common.tags),
        chain_length=common.chain_length,
        timeout=common.timeout,
        backup_user=common.backup_user,
        exit_if_in_progress=common.exit_if_in_progress,
        identifier=common.identifier,
        identifier_command=common.identifier_command,
        target_dir=target_dir,
        secrets=secrets,
        hide_env=[h for h in hide_env if h],
    )
