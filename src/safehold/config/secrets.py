"""Which values of a validated configuration are credentials, to be masked wherever a run
would show them (log lines, hook output, error messages, run records)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any
from urllib.parse import unquote, urlsplit

from pydantic import BaseModel, SecretBytes, SecretStr

from safehold.config.models import Config, RepositoryConfig

__all__ = ["config_secrets", "repository_secrets", "source_secrets"]

# Option keys whose values are credentials (masked in logs and records).
_SECRET_KEY = re.compile(r"pass|pwd|secret|token|key|sig|credential|auth|session|sas", re.I)


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
    """The credentials in a repository or destination block (none for ``None``)."""
    return list(_secrets(repo)) if repo is not None else []


def source_secrets(settings: BaseModel) -> list[str]:
    """The credentials in a source's settings (passwords, URLs with passwords...)."""
    return list(_secrets(settings))


def config_secrets(config: Config) -> list[str]:
    """The credentials of the file's repository and of every further destination."""
    found = repository_secrets(config.repository)
    for dest in config.destinations:
        found += repository_secrets(dest)
    return found
