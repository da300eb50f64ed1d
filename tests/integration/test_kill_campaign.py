"""Kill campaign (issue 14): ``backup``, ``prune``, ``forget --prune``, ``copy`` and
``repair index`` killed with SIGKILL at every storage mutation, and at random moments.

Each command runs in a child process through ``tests/kill_driver.py``, which wraps the
storage the CLI opens and SIGKILLs the process itself just before or just after its N-th
mutating call (``put`` or ``delete``), or, for a ``put``, once the object is written to its
temporary file beside the final name but not renamed (what a crash inside the local
folder's put leaves). A counting run of the command gives its mutations 1..M; the kill
points are *before*, *after* and (puts) *mid* each of them. A few kills per command come
at a random moment between the counting run's first and last mutation instead (threads
mid-way, work between storage calls).

Every kill starts from a pristine copy of a small scenario repository (a few MB: a
128 KiB pack size and a 32 KiB chunker make a handful of packs per backup) and is then
judged; it *survived* when all of this holds:

(a) every snapshot listed restores, read back through the library (every blob opened and
    verified), to the manifest of the source it was taken from, and every snapshot that
    existed before and that the command does not forget is still listed;
(b) ``check`` (structure) finds no error that it did not find before the command (the
    damaged scenarios for ``repair index`` start with some); its warnings are allowed and
    counted by code in the summary;
(c) the same command run again, by the real CLI, exits 0; then ``check --read-data`` finds
    no error, every listed snapshot restores, the snapshots above are all still there, no
    lock is left (the killed run's lock was recognised as stale), prune left nothing in
    the trash, copy has copied every snapshot once, backup saved its snapshot, kept the
    packs the killed run stored and uploaded none of their data blobs again.

Counts are printed per command (``-s`` shows them): kill points tried, survived, failed
(with the kill point and what failed), and how many failures were silent wrong data (a
restore that gave different content without an error): it must be 0, like every failure.

Default: 8 kill points per command drawn from its scenarios plus one random-moment kill,
``SAFEHOLD_KILL_SEED`` repeats a sample (the seed is printed). ``--long``: every kill
point of every scenario of the command, on fresh data again and again until at least
``LONG_MIN_KILLS`` per command (1,000 over the five), and three random-moment kills per
scenario.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import signal
import struct
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from safehold.engine.backup import BackupOptions, run_backup
from safehold.engine.maintain.copy import CopyOptions, copy_snapshots
from safehold.engine.maintain.forget import ForgetOptions, run_forget
from safehold.repository.check import CheckOptions, check_repository
from safehold.repository.chunker import ChunkerParams
from safehold.repository.prune import PruneOptions, prune
from safehold.repository.repository import Repository
from safehold.repository.snapshot import Snapshot
from safehold.storage.local import TEMP_PREFIX, LocalStorage
from tests.conftest import FAST_KDF, PASSWORD, ROOT
from tests.integration.helpers import (
    Manifest,
    PackContent,
    diff_manifests,
    lock_files,
    pack_files,
    read_packs,
    snapshot_manifest,
    tree_manifest,
)

pytestmark = pytest.mark.crash

DRIVER = ROOT / "tests" / "kill_driver.py"
KiB = 1024
CHUNKER = ChunkerParams(min_size=16 * KiB, avg_size=32 * KiB, max_size=64 * KiB, seed=11)
PACK_SIZE = 128 * KiB
SAMPLE_POINTS = 8  # per command, default run
SAMPLE_RANDOM = 1  # random-moment kills per command, default run
LONG_MIN_KILLS = 200  # per command with --long: 1,000 over the five
LONG_RANDOM = 3  # random-moment kills per scenario with --long
TIMEOUT = 120

COMMANDS = ("backup", "prune", "forget-prune", "copy", "repair-index")


# --- the source data ---------------------------------------------------------------------


def _random(rng: random.Random, size: int) -> bytes:
    return hashlib.shake_128(rng.randbytes(16)).digest(size)


def _text(rng: random.Random, size: int) -> bytes:
    words = ["backup", "prune", "pack", "index", "lock", "GET", "200", "404", "ms", "user"]
    out = []
    n = 0
    while n < size:
        line = f"{rng.randrange(10**9):09d} {' '.join(rng.choices(words, k=10))}\n"
        out.append(line)
        n += len(line)
    return "".join(out).encode()[:size]


class Source:
    """A folder of ~1.8 MB that changes between backups: random files rewritten, a log
    appended to, small files changed, removed and added."""

    def __init__(self, root: Path, rng: random.Random) -> None:
        self.root = root
        self.rng = rng
        self.next_small = 0
        (root / "big").mkdir(parents=True)
        (root / "logs").mkdir()
        (root / "small").mkdir()
        (root / "empty").mkdir()
        for i in range(7):
            (root / "big" / f"b{i}.bin").write_bytes(_random(rng, 192 * KiB + i * 1031))
        (root / "logs" / "app.log").write_bytes(_text(rng, 256 * KiB))
        for _ in range(40):
            self._add_small()
        os.symlink("big/b0.bin", root / "link")

    def _add_small(self) -> None:
        size = self.rng.randrange(0, 6 * KiB)
        data = _random(self.rng, size) if self.next_small % 2 else _text(self.rng, size)
        (self.root / "small" / f"s{self.next_small:03d}").write_bytes(data)
        self.next_small += 1

    def mutate(self) -> None:
        rng = self.rng
        for path in rng.sample(sorted((self.root / "big").iterdir()), 3):
            path.write_bytes(_random(rng, 192 * KiB + rng.randrange(-4096, 4096)))
        with open(self.root / "logs" / "app.log", "ab") as f:
            f.write(_text(rng, rng.randrange(20 * KiB, 60 * KiB)))
        smalls = sorted((self.root / "small").iterdir())
        for path in rng.sample(smalls, 3):
            path.write_bytes(_random(rng, rng.randrange(0, 6 * KiB)))
        rng.choice(smalls).unlink()
        self._add_small()


# --- scenarios ---------------------------------------------------------------------------


def _open(path: Path) -> Repository:
    r = Repository.open(LocalStorage(path), PASSWORD)
    r.load_index()
    return r


def _init(path: Path) -> Repository:
    return Repository.init(
        LocalStorage(path, create=True), PASSWORD, kdf=FAST_KDF, chunker=CHUNKER,
        pack_size=PACK_SIZE,
    )  # fmt: skip


@dataclass
class Baseline:
    """What a repository of a scenario gives before the command: the snapshots listed,
    those that restore, and the errors ``check`` finds (code, subject)."""

    listed: set[str]
    restorable: set[str]
    errors: set[tuple[str, str]]


@dataclass
class Scenario:
    name: str
    root: Path  # pristine: root/repo and, when there is one, root/dst
    source: Path  # the folder every snapshot of the seed was taken of (not copied)
    manifests: dict[str, Manifest]  # source snapshot id -> what it restores to
    next_manifest: Manifest  # what a backup of the source now stores
    baseline: dict[str, Baseline] = field(default_factory=dict)  # "repo"/"dst" -> ...

    def repos(self) -> list[str]:
        return [n for n in ("repo", "dst") if (self.root / n).is_dir()]


class Seed:
    """The scenarios of one data seed, built on first use. Every scenario of a seed backs
    up the same source folder, so the snapshots of one are found in the others."""

    def __init__(self, root: Path, seed: int) -> None:
        self.root = root
        self.seed = seed
        self.manifests: dict[str, Manifest] = {}
        self.order: list[str] = []  # snapshot ids of "chain", oldest first
        self.scenarios: dict[str, Scenario] = {}
        self.source = Source(root / "src", random.Random(seed))
        self.next_manifest: Manifest = {}  # set by the chain's build

    def get(self, name: str) -> Scenario:
        if name not in self.scenarios:
            if name != "chain":
                self.get("chain")
            folder = self.root / name
            getattr(self, "_build_" + name.replace("-", "_"))(folder)
            sc = Scenario(name, folder, self.source.root, self.manifests, self.next_manifest)
            for repo in sc.repos():
                sc.baseline[repo] = baseline(folder / repo, sc)
            if name == "damaged-pack":  # a damaged header alone costs no snapshot
                assert sc.baseline["repo"].restorable == sc.baseline["repo"].listed
            self.scenarios[name] = sc
        return self.scenarios[name]

    def _backup(self, r: Repository) -> str:
        manifest = tree_manifest(self.source.root)
        snap = run_backup(r, BackupOptions(paths=[str(self.source.root)], threads=1)).snapshot
        self.manifests[snap.id] = manifest
        return snap.id

    def _build_chain(self, folder: Path) -> None:
        """Four snapshots in one chain; the source has changed since the last."""
        r = _init(folder / "repo")
        for i in range(4):
            if i:
                self.source.mutate()
            self.order.append(self._backup(r))
        self.source.mutate()
        self.next_manifest = tree_manifest(self.source.root)
        _init(folder / "dst")

    def _copy_chain(self, folder: Path, *, dst: bool = False) -> Repository:
        shutil.copytree(self.root / "chain" / "repo", folder / "repo", symlinks=True)
        if dst:
            _init(folder / "dst")
        return _open(folder / "repo")

    def _build_first(self, folder: Path) -> None:
        """An empty repository: the first backup."""
        _init(folder / "repo")

    def _build_garbage(self, folder: Path) -> None:
        """The two oldest snapshots forgotten: whole packs unused, others partly."""
        r = self._copy_chain(folder)
        run_forget(r, ForgetOptions(snapshot_ids=self.order[:2]))

    def _build_trash(self, folder: Path) -> None:
        """The oldest snapshot forgotten and pruned while another process held a lock, so
        prune's trash record still waits; then the second forgotten. The destination holds
        a copy of the third."""
        r = self._copy_chain(folder, dst=True)
        run_forget(r, ForgetOptions(snapshot_ids=self.order[:1]))
        with r.lock("backup"):
            result = prune(_open(folder / "repo"), PruneOptions())
        assert result.swept.records_waiting == 1, result
        run_forget(r, ForgetOptions(snapshot_ids=self.order[1:2]))
        third = r.load_snapshot(self.order[2])
        copy_snapshots(r, _open(folder / "dst"), [third], opts=CopyOptions(threads=1))

    def _build_lost_index(self, folder: Path) -> None:
        """The first backup's index file deleted, and a junk file among the index files."""
        self._copy_chain(folder)
        index = sorted((folder / "repo" / "index").iterdir(), key=lambda p: p.stat().st_mtime_ns)
        index[0].unlink()
        junk = random.Random(self.seed).randbytes(700)
        (folder / "repo" / "index" / hashlib.sha256(junk).hexdigest()).write_bytes(junk)

    def _build_damaged_pack(self, folder: Path) -> None:
        """One byte flipped in the sealed header of a pack (defect 1 of the review flipped
        one 200 bytes from the end: in a pack of few blobs that is inside a blob): the
        index still knows its blobs, every snapshot restores."""
        self._copy_chain(folder)
        pack = folder / "repo" / sorted(pack_files(folder / "repo"))[0]
        data = bytearray(pack.read_bytes())
        # The pack ends with the sealed header, its length (u32 LE) and b"SHPE".
        (header_len,) = struct.unpack_from("<I", data, len(data) - 8)
        data[len(data) - 8 - header_len // 2] ^= 0x01
        pack.write_bytes(bytes(data))


def baseline(path: Path, sc: Scenario) -> Baseline:
    state = inspect(path, sc, lambda s: sc.manifests.get(s.original or s.id))
    return Baseline(
        set(state.snapshots),
        {sid for sid, problems in state.restores.items() if not problems},
        {(p.code, p.subject) for p in state.errors},
    )


# --- cases --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    command: str  # one of COMMANDS
    scenario: str
    args: tuple[str, ...]  # after ``-r REPO``; {src} and {dst} are filled in
    sample: bool = True  # part of the default run's draw

    @property
    def target(self) -> str:
        return "dst" if self.command == "copy" else "repo"

    def label(self) -> str:
        return f"{self.scenario}: {' '.join(a for a in self.args if a != '--json')}"


def _backup_args(*extra: str) -> tuple[str, ...]:
    return ("backup", "--json", *extra, "{src}")


CASES = [
    Case("backup", "chain", _backup_args("--threads", "1")),
    Case("backup", "first", _backup_args("--threads", "1"), sample=False),
    Case("backup", "garbage", _backup_args("--threads", "1", "--chain-length", "0")),
    Case("backup", "trash", _backup_args("--threads", "2"), sample=False),
    Case("prune", "garbage", ("prune", "--json")),
    Case("prune", "garbage", ("prune", "--json", "--max-unused", "100"), sample=False),
    Case("prune", "trash", ("prune", "--json")),
    Case("prune", "chain", ("prune", "--json"), sample=False),
    Case("forget-prune", "chain", ("forget", "--json", "--keep-last", "1", "--prune")),
    Case("forget-prune", "trash", ("forget", "--json", "--keep-last", "1", "--prune")),
    Case("copy", "chain", ("copy", "--json", "--to", "{dst}", "--threads", "1")),
    Case("copy", "trash", ("copy", "--json", "--to", "{dst}", "--threads", "2")),
    Case("repair-index", "lost-index", ("repair", "index", "--json")),
    Case("repair-index", "damaged-pack", ("repair", "index", "--json")),
    Case(
        "repair-index",
        "damaged-pack",
        ("repair", "index", "--json", "--read-all-packs"),
        sample=False,
    ),
    Case("repair-index", "trash", ("repair", "index", "--json"), sample=False),
    Case("repair-index", "chain", ("repair", "index", "--json"), sample=False),
]


# --- looking at a repository --------------------------------------------------------------


@dataclass
class RepoState:
    snapshots: dict[str, Snapshot] = field(default_factory=dict)
    restores: dict[str, list[str]] = field(default_factory=dict)  # id -> problems; [] = ok
    wrong: list[str] = field(default_factory=list)  # ids restored to other content, silently
    errors: list[Any] = field(default_factory=list)  # check's errors (Problem)
    warnings: list[Any] = field(default_factory=list)
    failure: str = ""  # the repository could not even be opened or checked


def inspect(
    path: Path,
    sc: Scenario,
    expected: Callable[[Snapshot], Manifest | None],
    *,
    read_data: bool = False,
) -> RepoState:
    """Every listed snapshot read back and compared with ``expected(snapshot)``, and
    ``check``: never raises, every problem is in the result."""
    state = RepoState()
    try:
        r = _open(path)
        digests: dict[tuple[str, ...], str] = {}
        for snap in r.list_snapshots():
            state.snapshots[snap.id] = snap
            want = expected(snap)
            if want is None:
                state.restores[snap.id] = [f"snapshot {snap.id[:8]} is none the test knows"]
                continue
            try:
                got = snapshot_manifest(r, snap, sc.source, digests)
            except Exception as exc:
                state.restores[snap.id] = [f"does not restore: {type(exc).__name__}: {exc}"]
                continue
            problems = diff_manifests(want, got)
            state.restores[snap.id] = problems[:5]
            if problems:
                state.wrong.append(snap.id)
        report = check_repository(r, CheckOptions(read_data=read_data))
        state.errors = report.errors
        state.warnings = report.warnings
    except Exception as exc:
        state.failure = f"{type(exc).__name__}: {exc}"
    return state


# --- running and judging one kill ----------------------------------------------------------


@dataclass(frozen=True)
class Point:
    n: int  # the n-th mutation; 0 for a random moment
    at: str  # before, after, mid, or "random"
    delay: float = 0.0  # seconds after the start, for a random moment

    def describe(self, op: str = "") -> str:
        if self.at == "random":
            return f"random moment {self.delay:.3f}s"
        return f"{self.at} mutation {self.n}{f' ({op})' if op else ''}"


@dataclass
class Counted:
    """A counting run of a case: its mutations and when they happened."""

    mutations: list[dict[str, Any]]
    forgotten: set[str]  # snapshots of the target the command removes
    window: tuple[float, float]  # seconds after the start: first and last mutation

    def points(self) -> list[Point]:
        out = []
        for m in self.mutations:
            out.append(Point(m["n"], "before"))
            if m["op"] == "put":
                out.append(Point(m["n"], "mid"))
            out.append(Point(m["n"], "after"))
        return out


@dataclass
class Tally:
    tried: int = 0
    survived: int = 0
    random_moments: int = 0
    finished_first: int = 0  # a random moment after the command had ended: not a kill
    wrong_data: int = 0  # silent wrong data: must stay 0
    failures: list[str] = field(default_factory=list)
    # check's warning codes -> how many kills left a state it warned of
    warnings: Counter[str] = field(default_factory=Counter)

    def line(self, command: str) -> str:
        warn = ", ".join(f"{c} x{n}" for c, n in sorted(self.warnings.items())) or "none"
        return (
            f"{command:13} tried {self.tried} (random moments {self.random_moments}), "
            f"survived {self.survived}, failed {len(self.failures)}, silent wrong data "
            f"{self.wrong_data}; not killed (finished first) {self.finished_first}; "
            f"check warnings after kills: {warn}"
        )


class Campaign:
    """Runs the kill points of one command and keeps its tally."""

    def __init__(self, work: Path, env: dict[str, str]) -> None:
        self.work = work
        self.env = dict(env)
        self.env["SAFEHOLD_TO_PASSWORD"] = PASSWORD.decode()
        self.env["SAFEHOLD_CACHE_DIR"] = str(work / "cache")
        self.tally = Tally()

    # -- the work copy

    def fresh(self, sc: Scenario) -> None:
        if self.work.exists():
            shutil.rmtree(self.work)
        self.work.mkdir(parents=True)
        for name in sc.repos():
            shutil.copytree(sc.root / name, self.work / name, symlinks=True)

    def _argv(self, case: Case, sc: Scenario) -> list[str]:
        fill = {"src": str(sc.source), "dst": str(self.work / "dst")}
        return ["-r", str(self.work / "repo"), *(a.format(**fill) for a in case.args)]

    def _driver(self, case: Case, sc: Scenario, log: Path, *kill: str) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [sys.executable, str(DRIVER), "--log", str(log), *kill, "--", *self._argv(case, sc)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=self.env,
        )

    # -- counting

    def count(self, case: Case, sc: Scenario) -> Counted:
        self.fresh(sc)
        log = self.work / "count.log"
        started = time.time()
        proc = self._driver(case, sc, log)
        out, err = proc.communicate(timeout=TIMEOUT)
        assert proc.returncode == 0, (
            f"{case.label()}: the counting run failed ({proc.returncode}): "
            f"{out.decode()}{err.decode()}"
        )
        mutations = [json.loads(line) for line in log.read_text().splitlines()]
        assert mutations, f"{case.label()}: no mutation at all"
        target = sc.baseline[case.target].listed
        after = set(_open(self.work / case.target).list_snapshot_ids())
        return Counted(
            mutations,
            target - after,
            (mutations[0]["t"] - started, mutations[-1]["t"] - started),
        )

    # -- one kill

    def kill(self, case: Case, sc: Scenario, counted: Counted, point: Point) -> None:
        self.fresh(sc)
        log = self.work / "kill.log"
        if point.at == "random":
            proc = subprocess.Popen(
                [sys.executable, "-m", "safehold", *self._argv(case, sc)],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=self.env,
            )
            try:
                _out, err = proc.communicate(timeout=point.delay)
            except subprocess.TimeoutExpired:
                proc.send_signal(signal.SIGKILL)
                _out, err = proc.communicate(timeout=TIMEOUT)
        else:
            proc = self._driver(case, sc, log, "--kill", str(point.n), "--at", point.at)
            _out, err = proc.communicate(timeout=TIMEOUT)
        done = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
        op = f"{done[-1]['op']} {done[-1]['name']}" if done else ""
        where = f"{case.command} [{case.label()}] {point.describe(op)}"
        if proc.returncode != -signal.SIGKILL:
            # With two threads a run may make fewer mutations than the counting run (the
            # packs fill in another order): a kill point past its end is not a kill.
            if proc.returncode == 0 and (point.at == "random" or len(done) < point.n):
                self.tally.finished_first += 1
                return
            said = err.decode(errors="replace")[-400:]
            self.fail(where, f"exited {proc.returncode} instead of being killed: {said}")
            self.tally.tried += 1
            return
        self.tally.tried += 1
        self.tally.random_moments += point.at == "random"
        problems = self.judge(case, sc, counted)
        if problems:
            self.fail(where, "; ".join(problems))
        else:
            self.tally.survived += 1

    def fail(self, where: str, what: str) -> None:
        self.tally.failures.append(f"{where}: {what}")

    # -- judging

    def expected(
        self, case: Case, sc: Scenario, name: str
    ) -> Callable[[Snapshot], Manifest | None]:
        """What a snapshot listed in ``name`` ("repo" or "dst") must restore to: a known
        one's manifest (a copy: its original's); a snapshot none knows can only be a
        backup's of the source as it is now."""

        def manifest(snap: Snapshot) -> Manifest | None:
            if name == "dst":
                return sc.manifests.get(snap.original)
            if case.command == "backup":
                return sc.manifests.get(snap.id, sc.next_manifest)
            return sc.manifests.get(snap.id)

        return manifest

    def judge(self, case: Case, sc: Scenario, counted: Counted) -> list[str]:
        problems: list[str] = []
        # (a) and (b): the state the kill left.
        after_kill: dict[str, RepoState] = {}
        for name in sc.repos():
            state = inspect(self.work / name, sc, self.expected(case, sc, name))
            after_kill[name] = state
            problems += self._problems(case, sc, name, state, counted, rerun=False)
            self.tally.warnings.update({w.code for w in state.warnings})
        packs_after_kill = pack_files(self.work / "repo")
        left = packs_after_kill - pack_files(sc.root / "repo")
        left_content = (
            read_packs(_open(self.work / "repo"), left) if case.command == "backup" else {}
        )

        # (c): the command again, by the real CLI, to its end.
        rerun = subprocess.run(
            [sys.executable, "-m", "safehold", *self._argv(case, sc)],
            capture_output=True,
            env=self.env,
            timeout=TIMEOUT,
            check=False,
        )
        if rerun.returncode != 0:
            problems.append(
                f"the command run again exited {rerun.returncode}: "
                f"{rerun.stderr.decode(errors='replace')[-400:]}"
            )
            return problems
        for name in sc.repos():
            state = inspect(self.work / name, sc, self.expected(case, sc, name), read_data=True)
            problems += self._problems(case, sc, name, state, counted, rerun=True)
            locks = lock_files(self.work / name)
            if locks:
                problems.append(f"after the rerun, {name}: locks left: {locks}")
        if case.command in ("prune", "forget-prune"):
            # (Temporary files of interrupted puts stay until they are an hour old.)
            trash = sorted(
                p.name
                for p in (self.work / "repo" / "trash").glob("*")
                if not p.name.startswith(TEMP_PREFIX)
            )
            if trash:
                problems.append(f"after the rerun, trash records left: {trash}")
        doc = json.loads(rerun.stdout)
        if case.command == "backup":
            saved = set(after_kill["repo"].snapshots) - sc.baseline["repo"].listed
            problems += self._reused(sc, doc, saved, left, left_content, packs_after_kill)
        if case.command == "copy":
            problems += self._all_copied()
        return problems

    def _problems(
        self,
        case: Case,
        sc: Scenario,
        name: str,
        state: RepoState,
        counted: Counted,
        *,
        rerun: bool,
    ) -> list[str]:
        when = "after the rerun" if rerun else "after the kill"
        if state.failure:
            return [f"{when}, {name} cannot be read: {state.failure}"]
        base = sc.baseline[name]
        out = []
        kept = base.listed - (counted.forgotten if name == case.target else set())
        missing = kept - set(state.snapshots)
        if missing:
            out.append(f"{when}, {name}: snapshots gone: {sorted(s[:8] for s in missing)}")
        for sid, found in state.restores.items():
            # Before the rerun, a snapshot that did not restore in the scenario (damaged
            # ones for repair) need not; after it, every listed snapshot must.
            must = rerun or sid in base.restorable or sid not in base.listed
            if found and must:
                out.append(f"{when}, {name}: snapshot {sid[:8]}: {found}")
        self.tally.wrong_data += len(state.wrong)
        errors = [p for p in state.errors if rerun or (p.code, p.subject) not in base.errors]
        if errors:
            shown = [f"{p.code}: {p}" for p in errors[:5]]
            out.append(f"{when}, {name}: check: {len(errors)} error(s): {shown}")
        return out

    def _reused(
        self,
        sc: Scenario,
        doc: dict[str, Any],
        saved: set[str],
        left: set[str],
        left_content: dict[str, PackContent],
        packs_after_kill: set[str],
    ) -> list[str]:
        """The rerun saved a snapshot, kept every pack the killed run stored, and (unless
        the killed run had saved its snapshot already) continued its chain, storing none
        of those packs' data blobs again."""
        out = []
        if doc["snapshot"] in sc.baseline["repo"].listed or doc["snapshot"] in saved:
            out.append("the rerun saved no new snapshot")
        now = pack_files(self.work / "repo")
        if not left <= now:
            out.append(f"packs the killed run stored were deleted: {sorted(left - now)[:3]}")
        chain = bytes.fromhex(doc["chain"])
        with_data = {n: pc for n, pc in left_content.items() if pc.data_blobs}
        if not saved and any(pc.chain != chain for pc in with_data.values()):
            other = sorted({pc.chain.hex()[:8] for pc in with_data.values()})
            out.append(f"the rerun wrote chain {doc['chain'][:8]}, the killed run {other}")
        stored = {bid for pc in with_data.values() if pc.chain == chain for bid in pc.data_blobs}
        again: set[bytes] = set()
        for pc in read_packs(_open(self.work / "repo"), now - packs_after_kill).values():
            again |= stored & pc.data_blobs.keys()
        if again:
            out.append(f"{len(again)} blob(s) the killed run stored were uploaded again")
        return out

    def _all_copied(self) -> list[str]:
        originals = Counter(s.original for s in _open(self.work / "dst").list_snapshots())
        out = []
        missing = [s[:8] for s in _open(self.work / "repo").list_snapshot_ids() if not originals[s]]
        if missing:
            out.append(f"after the rerun, not copied: {missing}")
        twice = [s[:8] for s, n in originals.items() if n > 1]
        if twice:
            out.append(f"after the rerun, copied twice: {twice}")
        return out


# --- the tests -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def seeds(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[[int], Seed]]:
    built: dict[int, Seed] = {}
    base = tmp_path_factory.mktemp("kill-scenarios")

    def get(n: int) -> Seed:
        if n not in built:
            built[n] = Seed(base / f"seed{n}", 1000 + n)
        return built[n]

    yield get


@pytest.fixture
def kill_seed() -> int:
    value = int(os.environ.get("SAFEHOLD_KILL_SEED", "0")) or random.randrange(1, 2**31)
    print(f"kill campaign seed: {value} (set SAFEHOLD_KILL_SEED to repeat)")
    return value


@pytest.mark.parametrize("command", COMMANDS)
def test_kill_campaign(
    command: str,
    seeds: Callable[[int], Seed],
    cli_env: dict[str, str],
    tmp_path: Path,
    long_mode: bool,
    kill_seed: int,
) -> None:
    rng = random.Random(f"{kill_seed}-{command}")
    camp = Campaign(tmp_path / "work", cli_env)
    cases = [c for c in CASES if c.command == command]
    started = time.monotonic()
    if long_mode:
        n = 0
        while camp.tally.tried < LONG_MIN_KILLS:
            seed = seeds(n)
            for case in cases:
                sc = seed.get(case.scenario)
                counted = camp.count(case, sc)
                for point in counted.points():
                    camp.kill(case, sc, counted, point)
                for _ in range(LONG_RANDOM):
                    camp.kill(case, sc, counted, random_point(rng, counted))
            n += 1
    else:
        seed = seeds(0)
        plans = []
        for case in (c for c in cases if c.sample):
            sc = seed.get(case.scenario)
            counted = camp.count(case, sc)
            plans += [(case, sc, counted, p) for p in counted.points()]
        for case, sc, counted, point in rng.sample(plans, min(SAMPLE_POINTS, len(plans))):
            camp.kill(case, sc, counted, point)
        for _ in range(SAMPLE_RANDOM):
            case, sc, counted, _p = rng.choice(plans)
            camp.kill(case, sc, counted, random_point(rng, counted))
    summary = camp.tally.line(command) + f" in {time.monotonic() - started:.0f}s"
    print(summary)
    for failure in camp.tally.failures:
        print(f"  FAILED {failure}")
    assert not camp.tally.failures, summary + "\n" + "\n".join(camp.tally.failures[:10])
    assert camp.tally.wrong_data == 0, summary
    assert camp.tally.tried >= (LONG_MIN_KILLS if long_mode else 1), summary


def random_point(rng: random.Random, counted: Counted) -> Point:
    first, last = counted.window
    return Point(0, "random", rng.uniform(max(0.0, first - 0.05), last + 0.02))
