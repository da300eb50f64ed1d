"""The local storage's direct writes for packs (safehold/direct_io.py has its own tests)."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from safehold import direct_io as direct
from safehold.storage.local import DIRECT_MIN, LocalStorage
from tests.unit.test_direct_io import DIRECT_FLAG, refuse, spy_direct

pytestmark = pytest.mark.skipif(not DIRECT_FLAG, reason="no O_DIRECT on this platform")


def put_and_spy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sizes: list[int]
) -> tuple[LocalStorage, list[int], Callable[[int], bytes]]:
    store = LocalStorage(tmp_path / "repo", create=True)
    asked = spy_direct(monkeypatch)
    blobs = {n: os.urandom(n) for n in sizes}
    for n, data in blobs.items():
        store.put(f"data/{n}", data)
    return store, asked, blobs.__getitem__


def test_large_objects_are_written_directly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sizes = [DIRECT_MIN - 1, DIRECT_MIN, DIRECT_MIN * 3 + 123]
    store, asked, blob = put_and_spy(tmp_path, monkeypatch, sizes)
    for n in sizes:
        assert store.get(f"data/{n}") == blob(n)
    assert len(asked) == 2  # the two objects of DIRECT_MIN bytes or more, not the smaller


@pytest.mark.parametrize("where", ["fcntl", "pwrite"])
def test_large_objects_on_a_file_system_refusing_direct_io(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    refused = refuse(monkeypatch, where)
    store = LocalStorage(tmp_path / "repo", create=True)
    first, second = os.urandom(DIRECT_MIN + 1), os.urandom(2 * DIRECT_MIN)
    store.put("data/a", first)
    store.put("data/b", second)
    assert store.get("data/a") == first and store.get("data/b") == second
    assert len(refused) == 1  # the second object was not tried again


def test_no_direct_writes_on_a_tmpfs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.unit.storage.test_local import mount_tmpfs

    mnt = tmp_path / "mnt"
    mount_tmpfs(mnt, "size=64m")
    try:
        assert direct.file_system_type(mnt) == "tmpfs"
        store = LocalStorage(mnt / "repo", create=True)
        asked = spy_direct(monkeypatch)
        data = os.urandom(3 * DIRECT_MIN)
        store.put("data/big", data)
        assert store.get("data/big") == data
        assert asked == []
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)
