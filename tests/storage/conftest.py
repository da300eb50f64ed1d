"""The backends the conformance suite runs against.

Adding a backend is one line in ``BACKENDS``: ``pytest.param(make_x, id="x")``, where
``make_x(tmp_path, request)`` returns a fresh, empty ``Storage`` (it may use
``request.getfixturevalue`` to reach a server fixture) and calls :func:`unavailable` when
its server cannot be reached. The failure-mode suite (``test_failure_modes.py``) runs over
:data:`REAL_SERVERS`, each reached through a fault proxy as ``proxied.py`` describes.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from safehold.storage.base import Storage
from safehold.storage.local import LocalStorage
from safehold.storage.memory import MemoryStorage
from safehold.storage.wrappers import FaultyStorage, LimitedStorage, RetryingStorage
from tests.servers import unavailable

__all__ = ["BACKENDS", "StorageFactory", "unavailable"]

StorageFactory = Callable[[Path, pytest.FixtureRequest], Storage]


def _no_sleep(_seconds: float) -> None:
    pass


def make_memory(tmp_path: Path, request: pytest.FixtureRequest) -> Storage:
    return MemoryStorage()


def make_local(tmp_path: Path, request: pytest.FixtureRequest) -> Storage:
    return LocalStorage(tmp_path / "repo", create=True)


def make_local_retry_limit(tmp_path: Path, request: pytest.FixtureRequest) -> Storage:
    local = LocalStorage(tmp_path / "repo", create=True)
    return RetryingStorage(LimitedStorage(local, 4), sleep=_no_sleep)


def make_memory_faulty_retry(tmp_path: Path, request: pytest.FixtureRequest) -> Storage:
    # Faults strike before and after the inner call (lost replies), so the retry wrapper's
    # handling of ambiguous exclusive puts and deletes is exercised by every test here.
    faulty = FaultyStorage(MemoryStorage(), seed=1234).transient_rate(0.05, lost_replies=True)
    return RetryingStorage(faulty, attempts=12, sleep=_no_sleep)


REAL_SERVERS = ["s3", "azure", "gcs", "sftp", "swift"]


def _server_factory(name: str) -> StorageFactory:
    def make(tmp_path: Path, request: pytest.FixtureRequest) -> Storage:
        module = importlib.import_module(f"tests.servers.{name}")
        factory: StorageFactory | None = getattr(module, "make_storage", None)
        if factory is None:
            unavailable(f"tests/servers/{name}.py has no make_storage yet")
        return factory(tmp_path, request)

    return make


BACKENDS = [
    pytest.param(make_memory, id="memory"),
    pytest.param(make_local, id="local"),
    pytest.param(make_local_retry_limit, id="local+retry+limit"),
    pytest.param(make_memory_faulty_retry, id="memory+faulty+retry"),
    # Real servers; each factory is tests/servers/<name>.py's make_storage.
    *(pytest.param(_server_factory(name), id=name) for name in REAL_SERVERS),
]


@pytest.fixture(params=BACKENDS)
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Storage]:
    factory: StorageFactory = request.param
    backend = factory(tmp_path, request)
    try:
        yield backend
    finally:
        backend.close()
