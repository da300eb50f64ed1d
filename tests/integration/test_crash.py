"""Crash safety: ``safehold backup`` killed with SIGKILL at random moments.

DESIGN.md promises: write order packs -> index -> snapshot; an interrupted backup leaves
nothing a reader can see; the next backup reuses what was uploaded. After every kill the
campaign proves that

(a) the repository is consistent: ``safehold check`` exits 0 (while ``check`` is still a
    stub, the same structure is verified through the library: every snapshot loads, every
    tree loads, every blob is indexed in a pack that exists);
(b) no stored object was changed or removed by the killed run (nor by the next backup);
    the newest snapshot restores bit-identical with ``safehold restore``, the
    least-verified older one is read back blob by blob through the library and compared,
    and at the end of the campaign every snapshot is read back and compared with the
    manifest of the source it was taken from;
(c) the next backup completes, the packs the killed run left are still there and are
    adopted: none of their blobs is uploaded again, and its ``data_added`` is smaller than
    the changed data by what the killed run had already stored.

The repository is made with ``init --kdf-log2n 10`` and reused across kill points, as a
real machine would: crash, then the next run carries on. 50 kill points normally, 500 with
``--long`` (a fresh repository every 50, to bound the disk used). Kill delays are uniform
between 0 and 1.25x the measured duration of an uninterrupted backup of one round of
changes (~40 MiB of new data: several 16 MiB packs); the margin keeps the window between
the first stored pack and the snapshot inside the range when the measured run was quicker
than the killed ones (other tests share the cores). ``SAFEHOLD_CRASH_SEED`` repeats a
campaign.

A separate, deterministic test kills a backup the moment its first pack is stored, for a
first backup, an incremental one, and one that starts a new chain.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import PASSWORD, CliResult, CliRunner
from tests.integration.helpers import (
    Manifest,
    assert_same_tree,
    check_ok,
    check_passes,
    diff_manifests,
    lock_files,
    open_repo,
    pack_files,
    read_packs,
    remove_tree,
    repo_files,
    restore_and_compare,
    restored_root,
    snapshot_manifest,
    tree_manifest,
    verify_structure,
)

pytestmark = pytest.mark.crash

MiB = 1024 * 1024
BIG_FILES = 10
BIG_SIZE = 4 * MiB  # random, incompressible: 10 x 4 MiB, all rewritten between runs
LOG_SIZE = 4 * MiB  # compressible text, appended to between runs
SMALL_FILES = 150
KILLS = 50
LONG_KILLS = 500
EPOCH_KILLS = 50  # kill points per repository
# Tree blobs a backup adds besides file content (a handful of folders): generous bound.
TREE_SLACK = 1 * MiB

WORDS = [
    "backup", "restore", "chunk", "pack", "index", "snapshot", "chain", "prune", "lock",
    "error", "warning", "info", "debug", "request", "served", "in", "ms", "user", "id",
    "GET", "POST", "/api/v1/items", "200", "404", "500", "db", "query", "rows",
]  # fmt: skip


def _random(rng: random.Random, size: int) -> bytes:
    """Incompressible bytes, repeatable from ``rng`` (and faster than ``rng.randbytes``)."""
    return hashlib.shake_128(rng.randbytes(16)).digest(size)


def _text(rng: random.Random, size: int) -> bytes:
    lines = []
    n = 0
    while n < size:
        line = f"{rng.randrange(10**9):09d} {' '.join(rng.choices(WORDS, k=12))}\n"
        lines.append(line)
        n += len(line)
    return "".join(lines).encode()[:size]


class SourceTree:
    """A folder of ~46 MiB that changes between backups like a service's data folder."""

    def __init__(self, root: Path, rng: random.Random) -> None:
        self.root = root
        self.rng = rng
        self.next_small = SMALL_FILES

    def create(self) -> None:
        rng = self.rng
        (self.root / "big").mkdir(parents=True)
        (self.root / "logs").mkdir()
        (self.root / "small").mkdir()
        (self.root / "empty").mkdir()
        for i in range(BIG_FILES):
            (self.root / "big" / f"b{i}.bin").write_bytes(_random(rng, BIG_SIZE + i * 4099))
        (self.root / "logs" / "app.log").write_bytes(_text(rng, LOG_SIZE))
        for i in range(SMALL_FILES):
            self._write_small(i)
        os.symlink("big/b0.bin", self.root / "link")

    def _write_small(self, i: int) -> int:
        rng = self.rng
        size = rng.randrange(0, 20_000)
        data = _random(rng, size) if i % 2 else _text(rng, size)
        (self.root / "small" / f"s{i:04d}.dat").write_bytes(data)
        return size

    def mutate(self) -> int:
        """Change the tree; returns an upper bound of the content bytes that are new."""
        rng = self.rng
        changed = 0
        for path in sorted((self.root / "big").iterdir()):
            size = BIG_SIZE + rng.randrange(-64 * 1024, 64 * 1024)
            path.write_bytes(_random(rng, size))
            changed += size
        log = self.root / "logs" / "app.log"
        with open(log, "ab") as f:
            f.write(_text(rng, rng.randrange(50_000, 300_000)))
        changed += log.stat().st_size
        smalls = sorted((self.root / "small").iterdir())
        for path in rng.sample(smalls, 3):
            changed += self._write_small(int(path.stem[1:]))
        rng.choice(smalls).unlink()
        changed += self._write_small(self.next_small)
        self.next_small += 1
        return changed

    def size(self) -> int:
        return sum(
            p.stat().st_size for p in self.root.rglob("*") if p.is_file() and not p.is_symlink()
        )


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The source data, generated once per module; each test works on a copy."""
    root = tmp_path_factory.mktemp("crash-template") / "src"
    SourceTree(root, random.Random(20240607)).create()
    return root


def copy_source(template: Path, dest: Path, seed: int) -> SourceTree:
    shutil.copytree(template, dest, symlinks=True)
    tree = SourceTree(dest, random.Random(seed))
    tree.next_small = SMALL_FILES
    return tree


@dataclass
class Run:
    code: int | None  # None: killed
    stdout: str
    stderr: str
    elapsed: float

    @property
    def killed(self) -> bool:
        return self.code is None

    def json(self) -> dict[str, Any]:
        assert self.code == 0, f"backup failed ({self.code}): {self.stdout}{self.stderr}"
        doc: dict[str, Any] = json.loads(self.stdout)
        return doc


def backup_argv(repo: Path, src: Path, threads: int, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "safehold", "-r", str(repo),
        "backup", "--json", "--threads", str(threads), *extra, str(src),
    ]  # fmt: skip


def run_backup(
    env: dict[str, str],
    repo: Path,
    src: Path,
    threads: int,
    kill_after: float | None,
    *extra: str,
) -> Run:
    """Runs a backup; with ``kill_after``, SIGKILLs it that many seconds after it started
    unless it has finished by then."""
    started = time.monotonic()
    proc = subprocess.Popen(
        backup_argv(repo, src, threads, *extra),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    try:
        out, err = proc.communicate(timeout=kill_after if kill_after is not None else 300)
    except subprocess.TimeoutExpired:
        if kill_after is None:
            proc.kill()
            proc.communicate()
            raise
        proc.send_signal(signal.SIGKILL)
        out, err = proc.communicate()
        # It may have exited on its own in the instant before the signal.
        code = None if proc.returncode == -signal.SIGKILL else proc.returncode
        return Run(code, out.decode(), err.decode(), time.monotonic() - started)
    return Run(proc.returncode, out.decode(), err.decode(), time.monotonic() - started)


def start_cli(env: dict[str, str], *args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "safehold", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )


def run_cli(env: dict[str, str], *args: str) -> CliResult:
    return finish(start_cli(env, *args))


def finish(proc: subprocess.Popen[bytes]) -> CliResult:
    try:
        out, err = proc.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
    return CliResult(proc.returncode, out.decode(errors="replace"), err.decode(errors="replace"))


@dataclass
class Campaign:
    cli: CliRunner
    env: dict[str, str]
    repo: Path
    src: SourceTree
    scratch: Path
    manifests: dict[str, Manifest] = field(default_factory=dict)  # snapshot id -> source
    order: list[str] = field(default_factory=list)  # snapshot ids, oldest first
    restored: dict[str, int] = field(default_factory=dict)  # snapshot id -> times verified
    check_works: bool = False
    stats: dict[str, int] = field(
        default_factory=lambda: {"kills": 0, "finished_first": 0, "kills_after_packs": 0}
    )
    seconds: dict[str, float] = field(default_factory=dict)  # where the time goes

    @contextlib.contextmanager
    def timed(self, what: str) -> Iterator[None]:
        t0 = time.monotonic()
        try:
            yield
        finally:
            self.seconds[what] = self.seconds.get(what, 0.0) + time.monotonic() - t0

    def record(self, snap_id: str, manifest: Manifest) -> None:
        assert snap_id not in self.manifests
        self.manifests[snap_id] = manifest
        self.order.append(snap_id)
        self.restored[snap_id] = 0

    def full_backup(self, threads: int) -> Run:
        manifest = tree_manifest(self.src.root)
        run = run_backup(self.env, self.repo, self.src.root, threads, None)
        self.record(run.json()["snapshot"], manifest)
        return run

    def kill_point(self, delay: float, threads: int) -> None:
        with self.timed("mutate"):
            changed = self.src.mutate()
            manifest = tree_manifest(self.src.root)
            files_before = repo_files(self.repo)
            packs_before = pack_files(self.repo)
        with self.timed("killed backup"):
            run = run_backup(self.env, self.repo, self.src.root, threads, delay)
        if not run.killed:
            # It finished before its kill time: an ordinary backup.
            self.stats["finished_first"] += 1
            self.record(run.json()["snapshot"], manifest)
            return
        self.stats["kills"] += 1
        where = f"kill at {delay:.3f}s (threads={threads})"

        with self.timed("structure"):
            # (b) Nothing stored before was changed or removed by the killed run.
            files_after = repo_files(self.repo)
            changed_objects = [n for n, st in files_before.items() if files_after.get(n) != st]
            assert not changed_objects, f"{where}: the killed run changed {changed_objects[:5]}"
            left = pack_files(self.repo) - packs_before
            # (a) Readers see the old snapshots, plus at most the killed run's own snapshot
            # if the kill came after it was written; that one must then be complete.
            r = open_repo(self.repo, PASSWORD)
            listed = [s.id for s in verify_structure(r)]
            assert set(self.manifests) <= set(listed), f"{where}: a snapshot disappeared"
            new = [s for s in listed if s not in self.manifests]
            assert len(new) <= 1, f"{where}: {len(new)} new snapshots"
            if new:
                self.record(new[0], manifest)
            left_content = read_packs(r, left)
        # (a) `check` and (b) a restore of the newest snapshot run side by side: their
        # shared locks coexist.
        with self.timed("check+restore"):
            check = start_cli(self.env, "-r", str(self.repo), "check")
            newest = self.order[-1]
            target = self.scratch / "restore"
            restored = run_cli(
                self.env, "-r", str(self.repo), "restore", newest, "--target", str(target)
            )
            checked = finish(check)
            assert restored.code == 0, f"{where}: restore failed: {restored.output}"
            assert_same_tree(self.manifests[newest], restored_root(target, self.src.root))
            remove_tree(target)
            self.restored[newest] += 1
            self.check_works = check_ok(checked)

        # (c) The next backup completes and adopts what the killed run uploaded. While it
        # runs, (b) this process reads back the least-verified older snapshot through the
        # library, blob by blob, from the state the kill left (a reader during a backup).
        packs_after_kill = pack_files(self.repo)
        with self.timed("resumed backup"):
            backup = subprocess.Popen(
                backup_argv(self.repo, self.src.root, threads),
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=self.env,
            )
            try:
                older = [s for s in self.order if s != newest]
                if older:
                    least = min(older, key=lambda s: (self.restored[s], self.order.index(s)))
                    got = snapshot_manifest(r, r.load_snapshot(least), self.src.root, {})
                    problems = diff_manifests(self.manifests[least], got)
                    assert not problems, f"{where}: snapshot {least[:8]}: {problems[:10]}"
                    self.restored[least] += 1
            finally:
                resumed = finish(backup)
        assert resumed.code == 0, f"{where}: the next backup failed: {resumed.output}"
        doc = json.loads(resumed.stdout)
        with self.timed("structure"):
            packs_now = pack_files(self.repo)
            assert left <= packs_now, f"{where}: packs of the killed run were deleted"
            written = packs_now - packs_after_kill
            summary = doc["summary"]
            assert summary["packs_written"] == len(written), f"{where}: {summary} vs {written}"
            chain = bytes.fromhex(doc["chain"])
            adopted = {
                bid: n
                for pc in left_content.values()
                if pc.chain == chain
                for bid, n in pc.data_blobs.items()
            }
            again: set[bytes] = set()
            for pc in read_packs(r, written).values():
                again |= adopted.keys() & pc.data_blobs.keys()
        assert not again, f"{where}: {len(again)} blobs the killed run stored were uploaded again"
        adopted_bytes = sum(adopted.values())
        if not new:
            assert summary["data_added"] <= changed - adopted_bytes + TREE_SLACK, (
                f"{where}: data_added {summary['data_added']} but only {changed} bytes changed "
                f"and {adopted_bytes} of them were already stored by the killed run"
            )
        if adopted_bytes > TREE_SLACK:
            self.stats["kills_after_packs"] += 1
            assert summary["data_added"] < changed
        self.record(doc["snapshot"], manifest)
        assert not lock_files(self.repo), f"{where}: locks left: {lock_files(self.repo)}"
        files_now = repo_files(self.repo)
        changed_objects = [n for n, st in files_after.items() if files_now.get(n) != st]
        assert not changed_objects, f"{where}: the next backup changed {changed_objects[:5]}"

    def final_sweep(self) -> None:
        """Every snapshot's content, read back through the library, equals its source."""
        with self.timed("final sweep"):
            self._final_sweep()

    def _final_sweep(self) -> None:
        r = open_repo(self.repo, PASSWORD)
        snaps = {s.id: s for s in verify_structure(r)}
        assert set(snaps) == set(self.manifests)
        digests: dict[tuple[str, ...], str] = {}
        for snap_id in self.order:
            self.restored[snap_id] += 1
            got = snapshot_manifest(r, snaps[snap_id], self.src.root, digests)
            problems = diff_manifests(self.manifests[snap_id], got)
            assert not problems, f"snapshot {snap_id[:8]}: {problems[:10]}"
        self.check_works = check_passes(self.cli, self.repo)


def init_repo(cli: CliRunner, repo: Path) -> None:
    res = cli("-r", str(repo), "init", "--kdf-log2n", "10")
    assert res.code == 0, res.output


@pytest.fixture
def seed() -> int:
    value = int(os.environ.get("SAFEHOLD_CRASH_SEED", "0")) or random.randrange(1, 2**31)
    print(f"crash campaign seed: {value} (set SAFEHOLD_CRASH_SEED to repeat)")
    return value


def test_sigkill_during_backup_campaign(
    cli: CliRunner,
    cli_env: dict[str, str],
    template: Path,
    tmp_path: Path,
    long_mode: bool,
    seed: int,
) -> None:
    rng = random.Random(seed)
    wanted = LONG_KILLS if long_mode else KILLS
    src = copy_source(template, tmp_path / "src", seed)
    started = time.monotonic()
    total = {"kills": 0, "finished_first": 0, "kills_after_packs": 0}
    epoch = 0
    while total["kills"] < wanted:
        repo = tmp_path / f"repo{epoch}"
        init_repo(cli, repo)
        c = Campaign(cli, cli_env, repo, src, tmp_path / "scratch")
        c.full_backup(2)
        # Measure uninterrupted backups of one round of changes: kill delays are drawn
        # uniformly between 0 and 1.25x these durations.
        durations = {}
        for threads in (1, 2):
            src.mutate()
            durations[threads] = c.full_backup(threads).elapsed
        target = min(EPOCH_KILLS, wanted - total["kills"])
        attempts = 0
        while c.stats["kills"] < target:
            attempts += 1
            assert attempts <= 3 * target, f"only {c.stats} in {attempts} attempts"
            threads = rng.choice((1, 2))
            c.kill_point(rng.uniform(0.0, 1.25 * durations[threads]), threads)
        c.final_sweep()
        for k in total:
            total[k] += c.stats[k]
        print(
            f"epoch {epoch}: {c.stats}, {len(c.order)} snapshots, durations {durations}, "
            f"seconds { ({k: round(v, 1) for k, v in c.seconds.items()}) }, "
            f"check {'ran' if c.check_works else 'is a stub: structure verified by the test'}"
        )
        shutil.rmtree(repo)
        epoch += 1
    print(f"campaign: {total} in {time.monotonic() - started:.1f}s")
    # The campaign must really have hit the interesting window: packs stored, no snapshot.
    assert total["kills_after_packs"] >= max(1, total["kills"] // 25), total


@pytest.mark.parametrize("kind", ["first", "incremental", "new-chain"])
def test_kill_after_first_pack_then_resume_reuses_it(
    cli: CliRunner, cli_env: dict[str, str], template: Path, tmp_path: Path, kind: str
) -> None:
    """Deterministic kill point: the moment the killed backup's first pack is stored. The
    next backup of the same source must adopt that pack, not upload its blobs again: for
    the very first backup of a source, for an incremental one, and for one that starts a
    new chain (``--chain-length 0``: the chain is full) just as well."""
    src = copy_source(template, tmp_path / "src", 7)
    repo = tmp_path / "repo"
    init_repo(cli, repo)
    earlier: dict[str, Manifest] = {}
    extra: tuple[str, ...] = ("--chain-length", "0") if kind == "new-chain" else ()
    if kind == "first":
        changed = src.size()
    else:
        manifest = tree_manifest(src.root)
        earlier[run_backup(cli_env, repo, src.root, 1, None).json()["snapshot"]] = manifest
        changed = src.mutate() if kind == "incremental" else src.size()
    manifest = tree_manifest(src.root)
    files_before = repo_files(repo)
    packs_before = pack_files(repo)

    # One reader thread: one pack builder, so the first pack is stored early in the run.
    proc = subprocess.Popen(
        backup_argv(repo, src.root, 1, *extra), env=cli_env, stdout=subprocess.PIPE
    )
    left: set[str] = set()
    deadline = time.monotonic() + 120
    while not left and proc.poll() is None and time.monotonic() < deadline:
        left = pack_files(repo) - packs_before
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL, "the backup finished before a pack was stored"
    left = pack_files(repo) - packs_before
    assert left

    files_after = repo_files(repo)
    assert all(files_after.get(n) == st for n, st in files_before.items())
    r = open_repo(repo, PASSWORD)
    assert {s.id for s in verify_structure(r)} == set(earlier)
    check_passes(cli, repo)
    left_content = read_packs(r, left)
    stored = {bid: n for pc in left_content.values() for bid, n in pc.data_blobs.items()}
    assert sum(stored.values()) >= 8 * MiB  # a whole pack's worth

    packs_after_kill = pack_files(repo)
    doc = run_backup(cli_env, repo, src.root, 1, None, *extra).json()
    assert left <= pack_files(repo), "packs of the killed run were deleted"
    written = pack_files(repo) - packs_after_kill
    again: set[bytes] = set()
    for pc in read_packs(r, written).values():
        again |= stored.keys() & pc.data_blobs.keys()
    summary = doc["summary"]
    assert not again, (
        f"{kind} backup: {len(again)} of the {len(stored)} blobs in the pack the killed run "
        f"stored were uploaded again (data_added {summary['data_added']} of {changed} bytes; "
        f"killed run's chain {sorted({pc.chain.hex()[:8] for pc in left_content.values()})}, "
        f"resumed run's chain {doc['chain'][:8]})"
    )
    assert summary["data_added"] <= changed - sum(stored.values()) + TREE_SLACK
    restore_and_compare(cli, repo, doc["snapshot"], src.root, manifest, tmp_path / "restore")
    for snap_id, m in earlier.items():
        restore_and_compare(cli, repo, snap_id, src.root, m, tmp_path / "restore")
    check_passes(cli, repo)
    remove_tree(repo)
