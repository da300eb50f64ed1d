"""The capability lookup: one typed walk down the wrapper stack."""

from __future__ import annotations

from pathlib import Path

import pytest

from safehold.errors import TransientStorageError
from safehold.storage.capabilities import (
    ForkSafe,
    ReadsInto,
    ReadSpan,
    TempFileSweeper,
    capability,
    fork_safe,
    layers,
    read_into,
    read_span,
)
from safehold.storage.local import LocalStorage
from safehold.storage.memory import MemoryStorage
from safehold.storage.wrappers import FaultyStorage, LimitedStorage, RetryingStorage


def test_layers_are_the_stack_outermost_first() -> None:
    backend = MemoryStorage()
    limited = LimitedStorage(backend, 2)
    stack = RetryingStorage(limited)
    assert list(layers(stack)) == [stack, limited, backend]
    assert list(layers(backend)) == [backend]


def test_found_through_wrappers_or_none(tmp_path: Path) -> None:
    local = LocalStorage(tmp_path, create=True)
    stack = RetryingStorage(FaultyStorage(LimitedStorage(local, 2)))
    assert capability(stack, TempFileSweeper) is local
    assert capability(stack, ReadSpan) is local
    assert read_span(stack, 8 << 20) == 1 << 20
    assert fork_safe(stack)
    memory = RetryingStorage(MemoryStorage())
    assert capability(memory, TempFileSweeper) is None
    assert capability(memory, ForkSafe) is None
    assert read_span(memory, 8 << 20) == 8 << 20
    assert not fork_safe(memory)


def test_the_first_layer_that_has_it_wins(tmp_path: Path) -> None:
    local = LocalStorage(tmp_path, create=True)
    retrying = RetryingStorage(local)  # forwards get_into itself, with retries
    assert capability(retrying, ReadsInto) is retrying


def test_read_into_asks_only_the_outermost_layer(tmp_path: Path) -> None:
    """A wrapper that does not forward get_into (FaultyStorage) sees the read as a get:
    its faults apply, it is not bypassed for the backend's get_into below it."""
    local = LocalStorage(tmp_path, create=True)
    local.put("x", b"0123456789")
    faulty = FaultyStorage(local).fail_always("get", TransientStorageError("injected"))
    out = memoryview(bytearray(4))
    with pytest.raises(TransientStorageError, match="injected"):
        read_into(faulty, "x", 2, out)
    assert faulty.calls["get"] == 1
    read_into(local, "x", 2, out)
    assert bytes(out) == b"2345"
