"""The backends the conformance suite runs against.

Adding a backend is one line in ``BACKENDS``: ``pytest.param(make_x, id="x")``, where
``make_x(tmp_path, request)`` returns a fresh, empty ``Storage`` (it may use
``request.getfixturevalue`` to reach a server fixture) and calls :func:`unavailable` when
its server cannot be reached.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import NoReturn

import pytest

from safehold.storage.base import Storage
from safehold.storage.local import LocalStorage
from safehold.storage.memory import MemoryStorage
from safehold.storage.wrappers import FaultyStorage, LimitedStorage, RetryingStorage

StorageFactory = Callable[[Path, pytest.FixtureRequest], Storage]


def unavailable(reason: str) -> NoReturn:
    """A backend's server is missing: skip on a laptop, fail under CI (STYLE.md, habit 11)."""
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI is set, so a missing server is a failure)")
    pytest.skip(reason)


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


BACKENDS = [
    pytest.param(make_memory, id="memory"),
    pytest.param(make_local, id="local"),
    pytest.param(make_local_retry_limit, id="local+retry+limit"),
    pytest.param(make_memory_faulty_retry, id="memory+faulty+retry"),
]


@pytest.fixture(params=BACKENDS)
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Storage]:
    factory: StorageFactory = request.param
    backend = factory(tmp_path, request)
    try:
        yield backend
    finally:
        backend.close()
