"""The composition root: from a location and a password to a storage stack and repository,
and from a configuration file's source block to the job a run runs.

Only this module chooses wrappers (retry, concurrency limit) for a storage backend, so
the layers below never need to know how their storage is decorated. It also builds a
:class:`~safehold.runs.SourceJob` from the validated configuration (:func:`source_job`),
so that ``config`` stays parsing and validation and ``runs`` knows no configuration file.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from safehold.crypto.keys import KdfParams
from safehold.repository.chunker import ChunkerParams
from safehold.repository.compress import DEFAULT_LEVEL
from safehold.repository.repository import DEFAULT_PACK_SIZE, Repository
from safehold.storage.base import Storage
from safehold.storage.location import open_location
from safehold.storage.wrappers import LimitedStorage, RetryingStorage

# The configuration (pydantic, every source kind's settings) and the runs (the backup and
# restore engines) are imported when a job is built, not by every command that opens a
# repository.
if TYPE_CHECKING:
    from safehold.config import Config
    from safehold.runs import SourceJob

MAX_CONCURRENT_CALLS = 8


def open_storage(
    location: str, *, create: bool = False, options: Mapping[str, object] | None = None
) -> Storage:
    """The storage stack for ``location``: its backend, at most ``MAX_CONCURRENT_CALLS`` calls
    at once, transient failures retried. The one place the wrappers are chosen."""
    backend = open_location(location, create=create, options=options)
    return RetryingStorage(LimitedStorage(backend, MAX_CONCURRENT_CALLS))


def default_cache_dir() -> Path:
    """Where index caches live: ``SAFEHOLD_CACHE_DIR``, else ``$XDG_CACHE_HOME/safehold``,
    else ``~/.cache/safehold``."""
    env = os.environ.get("SAFEHOLD_CACHE_DIR")
    if env:
        return Path(env)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "safehold"


def open_repository(
    location: str,
    password: bytes,
    *,
    options: Mapping[str, object] | None = None,
    cache_dir: str | Path | None = None,
    no_cache: bool = False,
    on_warning: Callable[[str, str], None] | None = None,
) -> Repository:
    """Open the repository at ``location``, keeping its loaded index in a local cache
    (``cache_dir``, default :func:`default_cache_dir`) unless ``no_cache``. ``on_warning``
    hears of every damaged object skipped (``Repository.warn``), from opening on."""
    repo = Repository.open(open_storage(location, options=options), password, on_warning=on_warning)
    if not no_cache:
        repo.use_index_cache(Path(cache_dir) if cache_dir else default_cache_dir())
    return repo


def init_repository(
    location: str,
    password: bytes,
    *,
    compression: int | None = DEFAULT_LEVEL,
    chunker: ChunkerParams | None = None,
    pack_size: int = DEFAULT_PACK_SIZE,
    kdf: KdfParams | None = None,
) -> Repository:
    """Create a repository at ``location`` (raises :class:`RepositoryExists` if one is there)
    and return it opened."""
    return Repository.init(
        open_storage(location, create=True),
        password,
        compression=compression,
        chunker=chunker,
        pack_size=pack_size,
        kdf=kdf,
    )


def source_job(
    config: Config, name: str | None, *, plan: str = "", run_id: str | None = None
) -> SourceJob:
    """The run's view of source ``name`` (the file's only one when ``None``): the built
    source, its hooks and settings, and every secret of the file to mask."""
    from safehold.config import choose_source, config_secrets, source_secrets
    from safehold.runs import SourceJob
    from safehold.sources.hooks import HookSpec
    from safehold.sources.registry import kind_module

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
    secrets = source_secrets(sc.settings) + config_secrets(config)
    hide_env = [r.password_env for r in [config.repository, *config.destinations] if r]
    return SourceJob(
        name=sc.name,
        kind=sc.kind,
        source=source,
        hooks=hooks,
        plan=plan,
        run_id=run_id,
        host=common.host,
        tags=list(common.tags),
        chain_length=common.chain_length,
        isolated=common.isolated,
        timeout=common.timeout,
        backup_user=common.backup_user,
        exit_if_in_progress=common.exit_if_in_progress,
        identifier=common.identifier,
        identifier_command=common.identifier_command,
        target_dir=target_dir,
        secrets=secrets,
        hide_env=[h for h in hide_env if h],
    )
