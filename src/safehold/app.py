"""The composition root: from a location and a password to a storage stack and repository.

Only this module chooses wrappers (retry, concurrency limit) for a storage backend, so
the layers below never need to know how their storage is decorated.
"""

from __future__ import annotations

from collections.abc import Mapping

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


def open_repository(
    location: str, password: bytes, *, options: Mapping[str, object] | None = None
) -> Repository:
    return Repository.open(open_storage(location, options=options), password)


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
