"""Large blobs are restored from an aligned buffer with direct writes (restore._aligned,
DirectWrites.write_aligned), whatever their offset in their file, shared or not."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from safehold.direct_io import DirectWrites, suits_direct_io
from safehold.engine.backup import BackupOptions, run_backup
from safehold.engine.restore import RestoreOptions, run_restore
from safehold.repository.repository import Repository


def test_large_blobs_land_in_place(
    local_repo: Repository, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = tmp_path / "src"
    src.mkdir()
    big = os.urandom(3_000_000)  # several chunks, cut at content-defined (unaligned) offsets
    (src / "big").write_bytes(big)
    (src / "copy").write_bytes(big)  # the same blobs, a second target each
    (src / "mid").write_bytes(os.urandom(100_000))  # one blob, just above the direct size
    text = b"".join(b"line %d with some text\n" % i for i in range(150_000))
    (src / "text").write_bytes(text)  # compressed blobs
    with open(src / "sparse", "wb") as f:
        f.truncate(6_000_000)
        f.seek(1_000_003)
        f.write(os.urandom(700_000))
    calls: list[bool] = []
    real = DirectWrites.write_aligned

    def spy(self: DirectWrites, fd: int, data: memoryview, offset: int) -> None:
        real(self, fd, data, offset)
        calls.append(self.enabled)

    monkeypatch.setattr(DirectWrites, "write_aligned", spy)
    snap = run_backup(local_repo, BackupOptions(paths=[str(src)])).snapshot
    run_restore(local_repo, snap, RestoreOptions(target=str(tmp_path / "out")))
    out = tmp_path / "out" / str(src).lstrip("/")
    for name in ("big", "copy", "mid", "text", "sparse"):
        assert (out / name).read_bytes() == (src / name).read_bytes(), name
    if suits_direct_io(tmp_path):
        assert calls, "no blob took the aligned path"
        assert all(calls), "the kernel refused an aligned direct write"
