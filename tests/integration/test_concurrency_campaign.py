"""Backups, ``forget --prune`` and ``copy`` interleaved at random, round after round, on one
repository (and a copy destination); after every round ``check --read-data`` passes on both
and every listed snapshot restores exactly what was backed up.

This is the campaign that issue 14's defect 3 asked for: a snapshot saved while a prune
trashes data it deduplicated against must be complete when it is listed, whatever the
interleaving. Each round runs, in threads and each with its own opened repository (as
separate processes would), after a random delay of up to 30 ms each:

* two folder backups (two sources sharing some content; files changed, added and removed
  between rounds),
* one stream backup (``--stdin-name``) of a "dump" that shares most chunks with the last,
* ``forget`` with a random ``--keep-last`` and a prune with a random repack threshold and
  no clock-skew margin (one process's clock: the sweep runs as soon as the locks allow),
* ``copy`` of every snapshot to the destination, and every third round a forget and prune
  there too.

Default: 6 rounds. ``--long``: 200 rounds (``SAFEHOLD_CONCURRENCY_ROUNDS`` overrides,
``SAFEHOLD_CONCURRENCY_SEED`` repeats a campaign; the seed is printed).
"""

from __future__ import annotations

import hashlib
import io
import os
import random
import shutil
import threading
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from safehold.engine.backup import BackupOptions, run_backup
from safehold.engine.maintain.copy import copy_snapshots
from safehold.engine.maintain.forget import ForgetOptions, run_forget
from safehold.engine.restore import RestoreOptions, run_restore
from safehold.policy.retention import RetentionPolicy
from safehold.repository.check import CheckOptions, check_repository
from safehold.repository.prune import PruneOptions, prune
from safehold.repository.repository import Repository
from safehold.storage.local import LocalStorage
from tests.conftest import FAST_KDF, PASSWORD

pytestmark = pytest.mark.xdist_group("concurrency-campaign")

ROUNDS = 6
LONG_ROUNDS = 200
Manifest = dict[str, str]  # relative path -> sha256 of the content


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _manifest(root: Path) -> Manifest:
    return {
        str(p.relative_to(root)): _digest(p.read_bytes())
        for p in sorted(root.rglob("*"))
        if p.is_file() and not p.is_symlink()
    }


class Sources:
    """Two folders and a dump stream that change a little between rounds."""

    def __init__(self, root: Path, rng: random.Random) -> None:
        self.rng = rng
        self.shared = [rng.randbytes(rng.randrange(1, 300_000)) for _ in range(6)]
        self.folders = [root / "alpha", root / "beta"]
        for i, folder in enumerate(self.folders):
            folder.mkdir(parents=True)
            for j, blob in enumerate(self.shared):
                (folder / f"shared{j}.bin").write_bytes(blob)  # the same in both sources
            for j in range(8):
                self._write(folder / f"own{i}-{j}.bin")
        self.dump = bytearray(rng.randbytes(1_500_000))

    def _write(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        size = self.rng.choice([0, 10, 4_000, 90_000, 600_000, 1_100_000])
        path.write_bytes(self.rng.randbytes(size))

    def change(self) -> None:
        for folder in self.folders:
            files = sorted(p for p in folder.rglob("*") if p.is_file())
            for path in self.rng.sample(files, k=min(len(files), self.rng.randrange(1, 4))):
                path.unlink()
            for _ in range(self.rng.randrange(1, 4)):
                self._write(
                    folder / f"sub{self.rng.randrange(3)}" / f"n{self.rng.randrange(10**6)}"
                )
        # A dump changes in a few places: most of its chunks stay the same.
        for _ in range(3):
            at = self.rng.randrange(len(self.dump) - 100)
            self.dump[at : at + 100] = self.rng.randbytes(100)


class Campaign:
    def __init__(self, tmp: Path, seed: int) -> None:
        self.rng = random.Random(seed)
        self.src_path = tmp / "repo"
        self.dst_path = tmp / "copy"
        Repository.init(LocalStorage(self.src_path, create=True), PASSWORD, kdf=FAST_KDF)
        Repository.init(LocalStorage(self.dst_path, create=True), PASSWORD, kdf=FAST_KDF)
        self.sources = Sources(tmp / "src", self.rng)
        self.out = tmp / "out"
        self.expected: dict[str, Manifest] = {}  # snapshot id -> what it must restore
        self.lock = threading.Lock()
        self.counts: dict[str, int] = {}

    def open(self, path: Path) -> Repository:
        return Repository.open(LocalStorage(path), PASSWORD)

    def _count(self, what: str) -> None:
        with self.lock:
            self.counts[what] = self.counts.get(what, 0) + 1

    # --- the operations of a round --------------------------------------------------------

    def backup_folder(self, folder: Path, manifest: Manifest) -> None:
        opts = BackupOptions(paths=[str(folder)], threads=2)
        snap = run_backup(self.open(self.src_path), opts).snapshot
        prefix = str(folder).lstrip("/") + "/"
        with self.lock:
            self.expected[snap.id] = {prefix + k: v for k, v in manifest.items()}
        self._count("backups")

    def backup_dump(self, dump: bytes) -> None:
        opts = BackupOptions(stdin_name="db.dump", stdin=io.BytesIO(dump), threads=2)  # type: ignore[arg-type]
        snap = run_backup(self.open(self.src_path), opts).snapshot
        with self.lock:
            self.expected[snap.id] = {"db.dump": _digest(dump)}
        self._count("stream backups")

    def forget_prune(self, path: Path, keep: int, max_unused: float) -> None:
        repo = self.open(path)
        run_forget(repo, ForgetOptions(policy=RetentionPolicy(keep_last=keep)))
        result = prune(repo, PruneOptions(lock_skew=timedelta(0), max_unused=max_unused))
        with self.lock:
            for key, value in (
                ("prunes", 1),
                ("packs deleted", result.packs_deleted),
                ("packs rescued", result.packs_rescued),
                ("packs repacked", result.mark.packs_repacked),
                ("records left waiting", result.swept.records_waiting),
            ):
                self.counts[key] = self.counts.get(key, 0) + value

    def copy(self) -> None:
        src, dst = self.open(self.src_path), self.open(self.dst_path)
        results = copy_snapshots(src, dst, src.list_snapshots())
        failed = [r for r in results if r.status == "FAILED"]
        assert not failed, [(r.source.id, r.problems) for r in failed]
        self._count("copies")

    def round(self, number: int) -> None:
        self.sources.change()
        manifests = [_manifest(f) for f in self.sources.folders]
        dump = bytes(self.sources.dump)
        rng = self.rng
        keep, unused, keep_copies = (
            rng.randrange(1, 4),
            rng.choice([0.0, 10.0, 100.0]),
            rng.randrange(1, 5),
        )
        ops: list[Callable[[], None]] = [
            lambda: self.backup_folder(self.sources.folders[0], manifests[0]),
            lambda: self.backup_folder(self.sources.folders[1], manifests[1]),
            lambda: self.backup_dump(dump),
            lambda: self.forget_prune(self.src_path, keep, unused),
            self.copy,
        ]
        if number % 3 == 2:
            ops.append(lambda: self.forget_prune(self.dst_path, keep_copies, 10.0))
        rng.shuffle(ops)
        delays = [rng.uniform(0, 0.03) for _ in ops]
        errors: list[BaseException] = []

        def run(op: Callable[[], None], delay: float) -> None:
            time.sleep(delay)
            try:
                op()
            except BaseException as exc:  # collected: the round fails with every error
                errors.append(exc)

        threads = [
            threading.Thread(target=run, args=(op, d)) for op, d in zip(ops, delays, strict=True)
        ]
        for th in threads:
            th.start()
        for th in threads:
            th.join(300)
        assert not errors, f"round {number}: {errors!r}"
        self.verify(number)

    # --- after each round -----------------------------------------------------------------

    def verify(self, number: int) -> None:
        for path in (self.src_path, self.dst_path):
            repo = self.open(path)
            report = check_repository(repo, CheckOptions(read_data=True))
            assert report.ok, f"round {number}, {path.name}: {[str(p) for p in report.errors]}"
            assert not repo.warnings, repo.warnings
            for snap in repo.list_snapshots():
                wanted = self.expected[snap.original or snap.id]
                shutil.rmtree(self.out, ignore_errors=True)
                result = run_restore(repo, snap, RestoreOptions(target=str(self.out), threads=2))
                assert not result.errors, (number, snap.id, result.errors)
                got = _manifest(self.out)
                assert got == wanted, f"round {number}: {path.name} snapshot {snap.short_id}"
                self._count("restores verified")


def test_backups_forget_prune_and_copy_interleaved_at_random(
    tmp_path: Path, long_mode: bool
) -> None:
    seed = int(os.environ.get("SAFEHOLD_CONCURRENCY_SEED", random.randrange(1 << 30)))
    rounds = int(
        os.environ.get("SAFEHOLD_CONCURRENCY_ROUNDS", LONG_ROUNDS if long_mode else ROUNDS)
    )
    print(f"concurrency campaign: seed {seed}, {rounds} rounds")
    campaign = Campaign(tmp_path, seed)
    started = time.monotonic()
    for number in range(rounds):
        campaign.round(number)
    counts: dict[str, Any] = dict(sorted(campaign.counts.items()))
    print(f"concurrency campaign: {rounds} rounds in {time.monotonic() - started:.0f} s: {counts}")
    assert campaign.counts["prunes"] >= rounds
