"""Prune reports its long phases as progress events: snapshots walked, packs repacked and
packs deleted, with totals that the advances add up to."""

from __future__ import annotations

import os
import threading
from datetime import timedelta
from pathlib import Path

from safehold.crypto.keys import KdfParams
from safehold.engine.backup import BackupOptions, run_backup
from safehold.engine.maintain.forget import ForgetOptions, run_forget
from safehold.repository.prune import PruneOptions, prune
from safehold.repository.repository import Repository
from safehold.storage.memory import MemoryStorage

KDF = KdfParams(n=1 << 10)
PASSWORD = b"prune progress password"


class Recorder:
    """Every phase with its totals and what was advanced in it."""

    def __init__(self) -> None:
        self.phases: list[dict[str, object]] = []
        self.open = 0
        self._lock = threading.Lock()

    def start(self, phase: str, total_items: int = 0, total_bytes: int = 0) -> None:
        with self._lock:
            assert self.open == 0, "phases do not nest"
            self.open += 1
            self.phases.append(
                {"phase": phase, "items": total_items, "bytes": total_bytes, "done": [0, 0]}
            )

    def advance(self, items: int = 0, nbytes: int = 0) -> None:
        with self._lock:
            assert self.open == 1, "advance outside a phase"
            done = self.phases[-1]["done"]
            assert isinstance(done, list)
            done[0] += items
            done[1] += nbytes

    def finish(self) -> None:
        with self._lock:
            self.open -= 1

    def named(self, phase: str) -> dict[str, object]:
        (found,) = [p for p in self.phases if p["phase"] == phase]
        return found


def test_prune_reports_mark_repack_and_delete(tmp_path: Path) -> None:
    repo = Repository.init(MemoryStorage(), PASSWORD, kdf=KDF)
    src = tmp_path / "src"
    src.mkdir()
    (src / "big").write_bytes(os.urandom(400_000))
    (src / "small").write_bytes(b"kept\n" * 100)
    (src / "gone").write_bytes(os.urandom(300_000))
    opts = BackupOptions(paths=[str(src)], threads=2)
    old = run_backup(repo, opts).snapshot
    (src / "big").unlink()
    run_backup(repo, opts)
    (src / "gone").unlink()
    run_backup(repo, opts)
    run_forget(repo, ForgetOptions(snapshot_ids=[old.id]))

    rec = Recorder()
    result = prune(repo, PruneOptions(lock_skew=timedelta(0)), progress=rec)

    assert rec.open == 0
    mark = rec.named("mark")
    assert mark["items"] == 2 and mark["done"] == [2, 0]
    repack = rec.named("repack")
    assert repack["items"] == result.mark.packs_repacked >= 1
    assert repack["done"] == [repack["items"], result.mark.bytes_repacked]
    deleted = [p for p in rec.phases if p["phase"] == "delete"]
    assert sum(p["items"] for p in deleted) == result.packs_deleted >= 1  # type: ignore[misc]
    for phase in deleted:
        assert phase["done"] == [phase["items"], phase["bytes"]]
    assert sum(p["bytes"] for p in deleted) == result.bytes_freed  # type: ignore[misc]


def test_dry_run_reports_the_mark_only(tmp_path: Path) -> None:
    repo = Repository.init(MemoryStorage(), PASSWORD, kdf=KDF)
    src = tmp_path / "src"
    src.mkdir()
    (src / "a").write_bytes(os.urandom(100_000))
    first = run_backup(repo, BackupOptions(paths=[str(src)], threads=2)).snapshot
    (src / "a").write_bytes(os.urandom(100_000))
    run_backup(repo, BackupOptions(paths=[str(src)], threads=2))
    run_forget(repo, ForgetOptions(snapshot_ids=[first.id]))

    rec = Recorder()
    result = prune(repo, PruneOptions(dry_run=True), progress=rec)

    assert result.mark.packs_garbage >= 1
    assert [p["phase"] for p in rec.phases] == ["mark"]
