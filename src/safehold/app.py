"""The composition root: from a location and a password to a storage stack and repository.

Only this module chooses wrappers (retry, concurrency limit) for a storage backend, so
the layers below never need to know how their storage is decorated.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path

from safehold.crypto.keys import KdfParams
from safehold.repository.chunker import ChunkerParams
from safehold.repository.compress import DEFAULT_LEVEL
from safehold.repository.repository import DEFAULT_PACK_SIZE, Repository
from safehold.storage.base import Storage
from safehold.storage.location import open_location
from safehold.storage.wrappers import LimitedStorage, RetryingStorage

MAX_CONCURRENT_CALLS = 8


def open_storage(
    location: str, *, create: bool = False, options: Mapping[str, object] | None = None
) -> Storage:
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
    return Repository.init(
        open_storage(location, create=True),
        password,
        compression=compression,
        chunker=chunker,
        pack_size=pack_size,
        kdf=kdf,
    )
