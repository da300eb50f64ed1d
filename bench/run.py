#!/usr/bin/env python3
"""Side-by-side benchmark: safehold against restic and borg on the same data, in one run.

Standard library only; run it with a plain ``python3`` from the repository root:

    python3 bench/run.py --install --make-dataset --write-docs

Per repetition the pristine dataset is copied (``cp -a``) to a working tree, then for every
tool, with a fresh repository and cache dir: (a) initial backup, (b) re-backup with no change.
The working tree is then mutated once (``make_dataset.py mutate DIR 5 7``) and for every tool:
(c) re-backup, (d) full restore of the latest snapshot into an empty dir, (d') ``sync``.
Before every timed command dirty data is flushed, the page cache dropped (when
/proc/sys/vm/drop_caches is writable) and the dataset, the repository and the tool's cache dir
read back in, so every tool starts from the same warm state. Commands run under
``/usr/bin/time -v`` (wall, peak RSS, user/sys CPU). See bench/README.md for how to read the
output.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime as dt
import json
import os
import platform
import shlex
import shutil
import signal
import stat
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_MAKE_DATASET = REPO_ROOT.parent / "shared" / "bench" / "make_dataset.py"
DEFAULT_DOCS = REPO_ROOT / "docs" / "benchmarks.md"
SMALL_FILES_PY = Path(__file__).resolve().parent / "small_files.py"
DEFAULT_BORG_VENV = Path("/tmp/venv-borg")
DEFAULT_BORG_SPEC = "borgbackup==1.4.5"
TIME_BIN = Path("/usr/bin/time")
DROP_CACHES = Path("/proc/sys/vm/drop_caches")
SETTLE_S = 360.0  # see settle()
DOCS_START = "<!-- bench:start -->"
DOCS_END = "<!-- bench:end -->"
PASSWORD = "bench-password"
MiB = 1 << 20
READ_CHUNK = 8 * MiB

ALL_TOOLS = ("safehold", "restic", "borg")
PEERS = ("restic", "borg")
TOOL_LABELS = {"safehold": "safehold", "restic": "restic", "borg": "borg (zstd,3)"}
TIMED_PHASES = ("a_initial", "b_nochange", "c_mutated", "d_restore", "d_sync")
# Read-only commands on the latest snapshot, after (d); run on the small-file tree, where
# a tool's cost per item shows (--extra-phases runs them on any dataset).
EXTRA_PHASES = ("e_partial", "f_ls", "g_dump", "h_check")
# The targets safehold is held to, as ratios safehold/peer measured in the same run.
WALL_TARGETS = {"a_initial": 0.6, "b_nochange": 0.4, "c_mutated": 0.4, "d_restore": 0.5}
# A partial restore is a restore; listing, dumping one file and checking are held to "no
# slower than the peer" (issue 16: check at most restic's time and memory).
EXTRA_TARGETS = {"e_partial": 0.5, "f_ls": 1.0, "g_dump": 1.0, "h_check": 1.0}
RSS_TARGET = 1.0
REPO_TARGET = 1.0


def phase_label(phase: str, mutate_pct: float = 5) -> str:
    labels = {
        "init": "repository init",
        "a_initial": "(a) initial backup",
        "b_nochange": "(b) re-backup, no change",
        "c_mutated": f"(c) re-backup after mutate {mutate_pct:g}%",
        "d_restore": "(d) full restore",
        "d_sync": "(d') sync after restore",
        "e_partial": "(e) restore of one folder",
        "f_ls": "(f) ls of the whole snapshot",
        "g_dump": "(g) dump of one file",
        "h_check": "(h) check",
    }
    return labels.get(phase, phase)


def log(msg: str) -> None:
    print(msg, flush=True)


def loud(msg: str) -> None:
    bar = "!" * 78
    print(f"\n{bar}\n!!! {msg}\n{bar}\n", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- tools


class Tool:
    """How to drive one backup tool; every path lives under ``work/<name>``."""

    name = ""

    def __init__(self, base: Path, data: Path) -> None:
        self.base = base / self.name
        self.data = data
        self.repo = self.base / "repo"
        self.cache = self.base / "cache"
        self.restore_dir = self.base / "restore"

    @property
    def label(self) -> str:
        return TOOL_LABELS[self.name]

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        # Anything that honours the XDG layout keeps its cache in our fresh cache dir.
        env["XDG_CACHE_HOME"] = str(self.cache)
        return env

    def version_cmd(self) -> list[str]:
        raise NotImplementedError

    def init_cmd(self) -> list[str]:
        raise NotImplementedError

    def backup_cmd(self, snapshot: str) -> list[str]:
        raise NotImplementedError

    def restore_cmd(self) -> tuple[list[str], Path | None]:
        """Command and working directory restoring the latest snapshot into restore_dir."""
        raise NotImplementedError

    def restored_tree(self) -> Path:
        """Where the copy of the data dir ends up inside restore_dir."""
        return self.restore_dir / self.data.relative_to(self.data.anchor)

    @property
    def partial_dir(self) -> Path:
        return self.base / "partial"

    def partial_restore_cmd(self, folder: Path) -> tuple[list[str], Path | None]:
        """Restore only ``folder`` (an absolute path in the data) into partial_dir."""
        raise NotImplementedError

    def ls_cmd(self) -> list[str]:
        raise NotImplementedError

    def dump_cmd(self, file: Path) -> list[str]:
        """Write one file of the latest snapshot to standard output."""
        raise NotImplementedError

    def check_cmd(self) -> list[str]:
        raise NotImplementedError


class Safehold(Tool):
    name = "safehold"

    def __init__(self, base: Path, data: Path, cmd: list[str]) -> None:
        super().__init__(base, data)
        self.cmd = cmd

    def env(self) -> dict[str, str]:
        env = super().env()
        env["SAFEHOLD_PASSWORD"] = PASSWORD
        env["SAFEHOLD_CACHE_DIR"] = str(self.cache)
        return env

    def version_cmd(self) -> list[str]:
        return [*self.cmd, "--version"]

    def init_cmd(self) -> list[str]:
        return [*self.cmd, "-r", str(self.repo), "init"]

    def backup_cmd(self, snapshot: str) -> list[str]:
        return [*self.cmd, "-r", str(self.repo), "backup", "--host", "bench", str(self.data)]

    def restore_cmd(self) -> tuple[list[str], Path | None]:
        cmd = [*self.cmd, "-r", str(self.repo), "restore", "latest", "--target"]
        return [*cmd, str(self.restore_dir)], None

    def partial_restore_cmd(self, folder: Path) -> tuple[list[str], Path | None]:
        cmd = [*self.cmd, "-r", str(self.repo), "restore", "latest", "--target"]
        return [*cmd, str(self.partial_dir), "--include", str(folder)], None

    def ls_cmd(self) -> list[str]:
        return [*self.cmd, "-r", str(self.repo), "ls", "latest"]

    def dump_cmd(self, file: Path) -> list[str]:
        return [*self.cmd, "-r", str(self.repo), "dump", "latest", str(file)]

    def check_cmd(self) -> list[str]:
        return [*self.cmd, "-r", str(self.repo), "check"]

    def restored_tree(self) -> Path:
        # The layout inside the target is safehold's choice: full path (like restic and
        # borg), the folder's name, or its contents directly.
        for candidate in (super().restored_tree(), self.restore_dir / self.data.name):
            if candidate.is_dir():
                return candidate
        return self.restore_dir


class Restic(Tool):
    name = "restic"

    def __init__(self, base: Path, data: Path, binary: str) -> None:
        super().__init__(base, data)
        self.binary = binary

    def env(self) -> dict[str, str]:
        env = super().env()
        env["RESTIC_PASSWORD"] = PASSWORD
        env["RESTIC_CACHE_DIR"] = str(self.cache)
        return env

    def version_cmd(self) -> list[str]:
        return [self.binary, "version"]

    def init_cmd(self) -> list[str]:
        # Format v2 (compression "auto") explicitly: v1 has no compression at all.
        return [self.binary, "init", "-r", str(self.repo), "--repository-version", "2"]

    def backup_cmd(self, snapshot: str) -> list[str]:
        return [self.binary, "-r", str(self.repo), "backup", "--host", "bench", str(self.data)]

    def restore_cmd(self) -> tuple[list[str], Path | None]:
        cmd = [self.binary, "-r", str(self.repo), "restore", "latest"]
        return [*cmd, "--target", str(self.restore_dir)], None

    def partial_restore_cmd(self, folder: Path) -> tuple[list[str], Path | None]:
        cmd = [self.binary, "-r", str(self.repo), "restore", "latest"]
        return [*cmd, "--target", str(self.partial_dir), "--include", str(folder)], None

    def ls_cmd(self) -> list[str]:
        return [self.binary, "-r", str(self.repo), "ls", "latest"]

    def dump_cmd(self, file: Path) -> list[str]:
        return [self.binary, "-r", str(self.repo), "dump", "latest", str(file)]

    def check_cmd(self) -> list[str]:
        return [self.binary, "-r", str(self.repo), "check"]


class Borg(Tool):
    name = "borg"

    def __init__(self, base: Path, data: Path, binary: str) -> None:
        super().__init__(base, data)
        self.binary = binary

    def env(self) -> dict[str, str]:
        env = super().env()
        env["BORG_PASSPHRASE"] = PASSWORD
        env["BORG_BASE_DIR"] = str(self.cache)
        env["BORG_RELOCATED_REPO_ACCESS_IS_OK"] = "yes"
        return env

    def version_cmd(self) -> list[str]:
        return [self.binary, "--version"]

    def init_cmd(self) -> list[str]:
        return [self.binary, "init", "-e", "repokey", str(self.repo)]

    def backup_cmd(self, snapshot: str) -> list[str]:
        archive = f"{self.repo}::{snapshot}"
        return [self.binary, "create", "--compression", "zstd,3", archive, str(self.data)]

    def restore_cmd(self) -> tuple[list[str], Path | None]:
        # borg extracts into the current directory; "c" is the latest archive.
        return [self.binary, "extract", f"{self.repo}::c"], self.restore_dir

    # borg keeps paths without their leading "/".
    def partial_restore_cmd(self, folder: Path) -> tuple[list[str], Path | None]:
        member = str(folder.relative_to(folder.anchor))
        return [self.binary, "extract", f"{self.repo}::c", member], self.partial_dir

    def ls_cmd(self) -> list[str]:
        return [self.binary, "list", f"{self.repo}::c"]

    def dump_cmd(self, file: Path) -> list[str]:
        member = str(file.relative_to(file.anchor))
        return [self.binary, "extract", "--stdout", f"{self.repo}::c", member]

    def check_cmd(self) -> list[str]:
        return [self.binary, "check", str(self.repo)]


# --------------------------------------------------------------------------- measuring


@dataclass
class Measurement:
    exit_code: int | None  # None: killed after the timeout
    wall_s: float
    user_s: float | None = None
    sys_s: float | None = None
    maxrss_kib: int | None = None  # the larger of the two below
    process_maxrss_kib: int | None = None  # the largest single process (wait4 / time -v)
    tree_pss_kib: int | None = None  # peak sum of PSS, sampled while it had subprocesses
    foreign_cpu_s: float | None = None
    time_report: dict[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.exit_code == 0


class TreeMemory(threading.Thread):
    """Samples the memory of a command that runs as several processes.

    The peak resident set size the kernel reports for a command (``time -v``, wait4) is
    that of its largest single process: a tool that forks workers (safehold's restore)
    would be measured by one of them. While the command has two processes or more, this
    sums their proportional set sizes (PSS: a page shared by n processes counts 1/n in
    each, so shared pages count once) every ``interval`` seconds; the reported peak is the
    larger of the two. A single process costs one small read per sample.
    """

    def __init__(self, root: int, skip_root: bool, interval: float = 0.05) -> None:
        super().__init__(daemon=True)
        self.root = root
        self.skip_root = skip_root  # /usr/bin/time itself
        self.interval = interval
        self.peak_kib = 0
        self.done = threading.Event()

    @staticmethod
    def _children(pid: int) -> list[int]:
        out: list[int] = []
        with contextlib.suppress(OSError):
            for tid in os.listdir(f"/proc/{pid}/task"):
                with open(f"/proc/{pid}/task/{tid}/children") as f:
                    out.extend(int(x) for x in f.read().split())
        return out

    @staticmethod
    def _pss_kib(pid: int) -> int:
        with contextlib.suppress(OSError, ValueError), open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
        return 0

    def run(self) -> None:
        while not self.done.wait(self.interval):
            pids = [] if self.skip_root else [self.root]
            todo = [self.root]
            while todo:
                kids = self._children(todo.pop())
                pids.extend(kids)
                todo.extend(kids)
            if len(pids) >= 2:
                self.peak_kib = max(self.peak_kib, sum(self._pss_kib(p) for p in pids))


def cpu_counters() -> tuple[int, int] | None:
    """(busy, total) jiffies of the whole machine, from the first line of /proc/stat."""
    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:9]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + fields[4]
    return sum(fields) - idle, sum(fields)


def parse_time_report(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for raw in text.splitlines():
        key, sep, value = raw.strip().rpartition(": ")
        if sep:
            out[key] = value
    return out


def run_measured(
    cmd: Sequence[str], env: dict[str, str], cwd: Path | None, log_path: Path, timeout: float
) -> Measurement:
    """Run cmd under /usr/bin/time -v (or wait4's rusage when that is missing)."""
    use_time = TIME_BIN.exists()
    time_file = log_path.with_suffix(".time")
    full = [str(TIME_BIN), "-v", "-o", str(time_file), *cmd] if use_time else list(cmd)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {}

    with open(log_path, "wb") as out:
        out.write(("$ " + shlex.join(cmd) + "\n").encode())
        out.flush()
        cpu0 = cpu_counters()
        t0 = time.perf_counter()
        try:
            proc = subprocess.Popen(
                full,
                env=env,
                cwd=cwd,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        except OSError as exc:
            out.write(f"cannot start: {exc}\n".encode())
            return Measurement(exit_code=127, wall_s=0.0)

        def reap() -> None:
            _, status, usage = os.wait4(proc.pid, 0)
            result["t1"] = time.perf_counter()
            result["status"] = status
            result["usage"] = usage

        waiter = threading.Thread(target=reap, daemon=True)
        waiter.start()
        tree = TreeMemory(proc.pid, skip_root=use_time)
        tree.start()
        waiter.join(timeout)
        tree.done.set()
        if waiter.is_alive():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            waiter.join()
            proc.returncode = -9
            out.write(f"\n*** killed after {timeout:g} s\n".encode())
            return Measurement(exit_code=None, wall_s=result["t1"] - t0)
        cpu1 = cpu_counters()
        code = os.waitstatus_to_exitcode(result["status"])
        proc.returncode = code

    m = Measurement(exit_code=code, wall_s=result["t1"] - t0)
    if use_time and time_file.exists():
        report = parse_time_report(time_file.read_text(errors="replace"))
        m.time_report = report
        with contextlib.suppress(KeyError, ValueError):
            m.user_s = float(report["User time (seconds)"])
            m.sys_s = float(report["System time (seconds)"])
            m.process_maxrss_kib = int(report["Maximum resident set size (kbytes)"])
    else:
        usage = result["usage"]
        m.user_s, m.sys_s, m.process_maxrss_kib = usage.ru_utime, usage.ru_stime, usage.ru_maxrss
    tree.join()
    m.tree_pss_kib = tree.peak_kib or None
    if m.process_maxrss_kib is not None:
        m.maxrss_kib = max(m.process_maxrss_kib, tree.peak_kib)
    if cpu0 and cpu1 and m.user_s is not None and m.sys_s is not None:
        hz = os.sysconf("SC_CLK_TCK")
        busy = (cpu1[0] - cpu0[0]) / hz
        m.foreign_cpu_s = round(max(0.0, busy - m.user_s - m.sys_s), 2)
    return m


def tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


# --------------------------------------------------------------------------- files


def walk_files(root: Path) -> Iterator[Path]:
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            yield Path(dirpath, name)


def tree_bytes(root: Path) -> tuple[int, int]:
    """(regular files, bytes) under root."""
    files = size = 0
    for p in walk_files(root):
        st = p.lstat()
        if stat.S_ISREG(st.st_mode):
            files += 1
            size += st.st_size
    return files, size


def du_bytes(path: Path) -> int:
    """Apparent size like ``du -sb`` (the peers' repository sizes were measured that way)."""
    if shutil.which("du"):
        out = subprocess.run(["du", "-sb", str(path)], capture_output=True, text=True, check=True)
        return int(out.stdout.split()[0])
    total = path.lstat().st_size
    for dirpath, dirnames, filenames in os.walk(path):
        for name in [*dirnames, *filenames]:
            total += Path(dirpath, name).lstat().st_size
    return total


def warm(paths: Iterable[Path]) -> None:
    """Read every file under paths so that the timed command finds it in the page cache."""
    buf = bytearray(READ_CHUNK)
    view = memoryview(buf)
    for root in paths:
        if not root.exists():
            continue
        for p in walk_files(root) if root.is_dir() else [root]:
            try:
                if not stat.S_ISREG(p.lstat().st_mode):
                    continue
                with open(p, "rb", buffering=0) as f:
                    while f.readinto(view):
                        pass
            except OSError:
                pass


def can_drop_caches() -> bool:
    return os.access(DROP_CACHES, os.W_OK)


def drop_caches() -> None:
    os.sync()
    DROP_CACHES.write_text("3\n")


def remove(path: Path, inside: Path) -> None:
    """rm -rf, refusing anything outside the work dir."""
    path, inside = path.resolve(), inside.resolve()
    if path == inside or inside not in path.parents:
        raise SystemExit(f"refusing to delete {path}: not inside {inside}")
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


# --------------------------------------------------------------------------- verification


@dataclass
class TreeDiff:
    files: int = 0
    bytes: int = 0
    missing: list[str] = field(default_factory=list)
    extra: list[str] = field(default_factory=list)
    different: list[str] = field(default_factory=list)
    mtime_differs: int = 0
    mode_differs: int = 0

    @property
    def ok(self) -> bool:
        return not (self.missing or self.extra or self.different)

    def summary(self) -> str:
        if self.ok:
            text = f"ok ({self.files} files, {self.bytes / MiB:.1f} MiB identical"
        else:
            text = (
                f"MISMATCH: {len(self.missing)} missing, {len(self.extra)} extra, "
                f"{len(self.different)} different (of {self.files} source entries"
            )
        notes = []
        if self.mtime_differs:
            notes.append(f"{self.mtime_differs} file mtimes differ")
        if self.mode_differs:
            notes.append(f"{self.mode_differs} modes differ")
        return text + (", " + ", ".join(notes) if notes else "") + ")"


def scan_tree(root: Path) -> dict[str, os.stat_result]:
    entries: dict[str, os.stat_result] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [*dirnames, *filenames]:
            p = Path(dirpath, name)
            entries[str(p.relative_to(root))] = p.lstat()
    return entries


def same_content(a: Path, b: Path) -> bool:
    with open(a, "rb") as fa, open(b, "rb") as fb:
        while True:
            x, y = fa.read(READ_CHUNK), fb.read(READ_CHUNK)
            if x != y:
                return False
            if not x:
                return True


def compare_trees(source: Path, restored: Path) -> TreeDiff:
    """Content check like ``diff -r``; mtime/mode differences are counted, not failed."""
    diff = TreeDiff()
    if not restored.is_dir():
        diff.missing.append(f"{restored} (no restored tree)")
        return diff
    src, dst = scan_tree(source), scan_tree(restored)
    diff.missing = sorted(set(src) - set(dst))
    diff.extra = sorted(set(dst) - set(src))
    for rel in sorted(set(src) & set(dst)):
        a, b = src[rel], dst[rel]
        diff.files += 1
        if stat.S_IFMT(a.st_mode) != stat.S_IFMT(b.st_mode):
            diff.different.append(f"{rel} (type)")
        elif stat.S_ISLNK(a.st_mode):
            if os.readlink(source / rel) != os.readlink(restored / rel):
                diff.different.append(f"{rel} (link target)")
        elif stat.S_ISREG(a.st_mode):
            diff.bytes += a.st_size
            if a.st_size != b.st_size or not same_content(source / rel, restored / rel):
                diff.different.append(rel)
            elif a.st_mtime_ns // 1000 != b.st_mtime_ns // 1000:
                diff.mtime_differs += 1
        if stat.S_IMODE(a.st_mode) != stat.S_IMODE(b.st_mode):
            diff.mode_differs += 1
    return diff


# --------------------------------------------------------------------------- results


class Results:
    """Raw results as JSON lines: one meta record, then one record per step."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.records: list[dict[str, Any]] = []
        path.parent.mkdir(parents=True, exist_ok=True)

    def add(self, record: dict[str, Any]) -> None:
        self.records.append(record)
        with open(self.path, "a") as f:
            f.write(json.dumps(record, sort_keys=True) + "\n")


def load_results(path: Path) -> list[dict[str, Any]]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


# --------------------------------------------------------------------------- the run


@dataclass
class Step:
    phase: str
    cmd: list[str]
    data_bytes: int
    cwd: Path | None = None
    prepare: bool = True  # drop + warm the page cache first
    repo_size: bool = False  # du -sb the repository afterwards
    # Warm the dataset too (a backup reads it; a restore does not, and reading 2 GiB it
    # never touches changed how much system time the restore's writes cost on a VM).
    reads_data: bool = True


@dataclass
class Config:
    dataset: Path
    work: Path
    reps: int
    tools: list[str]
    safehold_cmd: list[str]
    restic_bin: str
    borg_bin: str
    make_dataset_py: Path
    mutate_pct: float
    mutate_seed: int
    timeout: float
    drop: bool
    rotate: bool
    verify_reps: int
    warm_tools: bool
    extra_phases: bool = False  # (e)-(h) after (d): see EXTRA_PHASES


class Bench:
    def __init__(self, cfg: Config, results: Results, run_id: str) -> None:
        self.cfg = cfg
        self.results = results
        self.data = cfg.work / "data"
        self.logs = cfg.work / "logs" / run_id
        self.trash = cfg.work / "trash" / run_id
        self.tools: dict[str, Tool] = {}
        for name in cfg.tools:
            if name == "safehold":
                self.tools[name] = Safehold(cfg.work, self.data, cfg.safehold_cmd)
            elif name == "restic":
                self.tools[name] = Restic(cfg.work, self.data, cfg.restic_bin)
            else:
                self.tools[name] = Borg(cfg.work, self.data, cfg.borg_bin)

    # Every timed command starts from the same state: nothing dirty, page cache dropped,
    # then what the command reads (the dataset, the repository, the tool's cache) read
    # back in.
    def prepare(self, tool: Tool, reads_data: bool = True) -> None:
        os.sync()
        if self.cfg.drop:
            drop_caches()
        warm([self.data, tool.repo, tool.cache] if reads_data else [tool.repo, tool.cache])
        if self.cfg.warm_tools:
            # An untimed cheap invocation loads the tool's own binaries / Python modules too,
            # so no tool pays for reading its installation from disk in a timed command.
            with contextlib.suppress(OSError, subprocess.TimeoutExpired):
                subprocess.run(
                    tool.version_cmd(),
                    env=tool.env(),
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                    stdin=subprocess.DEVNULL,
                    timeout=120,
                    check=False,
                )

    def step(self, tool: Tool, rep: int, s: Step) -> bool:
        if s.prepare:
            self.prepare(tool, s.reads_data)
        log_path = self.logs / f"rep{rep}-{tool.name}-{s.phase}.log"
        m = run_measured(s.cmd, tool.env(), s.cwd, log_path, self.cfg.timeout)
        status = "ok" if m.ok else ("timeout" if m.exit_code is None else "failed")
        rec: dict[str, Any] = {
            "kind": "step",
            "tool": tool.name,
            "rep": rep,
            "phase": s.phase,
            "status": status,
            "exit": m.exit_code,
            "cmd": shlex.join(s.cmd),
            "cwd": str(s.cwd) if s.cwd else None,
            "wall_s": round(m.wall_s, 3),
            "user_s": m.user_s,
            "sys_s": m.sys_s,
            "maxrss_kib": m.maxrss_kib,
            "process_maxrss_kib": m.process_maxrss_kib,
            "tree_pss_kib": m.tree_pss_kib,
            "foreign_cpu_s": m.foreign_cpu_s,
            "data_bytes": s.data_bytes,
            "log": str(log_path),
        }
        if m.ok and s.repo_size:
            rec["repo_bytes"] = du_bytes(tool.repo)
        self.results.add(rec)
        if m.ok:
            rss = (m.maxrss_kib or 0) / 1024
            cpu = (m.user_s or 0) + (m.sys_s or 0)
            extra = f"  repo {rec['repo_bytes'] / MiB:8.1f} MiB" if "repo_bytes" in rec else ""
            log(
                f"  {tool.name:<9} rep{rep} {s.phase:<10} wall {m.wall_s:8.2f} s  "
                f"rss {rss:7.1f} MiB  cpu {cpu:7.2f} s ({100 * cpu / max(m.wall_s, 1e-9):4.0f}%)"
                + extra
            )
        else:
            loud(
                f"{tool.name} rep{rep} {s.phase} {status.upper()} (exit {m.exit_code}): "
                f"{shlex.join(s.cmd)}\n    log: {log_path}\n{tail(log_path)}"
            )
        return m.ok

    def chain(self, tool: Tool, rep: int, plan: Sequence[Step], then: Sequence[str] = ()) -> bool:
        """Run the steps in order; after a failure the rest (and `then`) are recorded skipped."""
        for i, s in enumerate(plan):
            if not self.step(tool, rep, s):
                rest = [later.phase for later in plan[i + 1 :]] + list(then)
                self.skip(tool, rep, rest, f"{phase_label(s.phase)} failed")
                return False
        return True

    def skip(self, tool: Tool, rep: int, phases: Iterable[str], why: str) -> None:
        for phase in phases:
            self.results.add(
                {
                    "kind": "step",
                    "tool": tool.name,
                    "rep": rep,
                    "phase": phase,
                    "status": "skipped",
                    "reason": why,
                }
            )

    def mutate(self, rep: int) -> dict[str, Any]:
        cmd = [
            sys.executable,
            str(self.cfg.make_dataset_py),
            "mutate",
            str(self.data),
            f"{self.cfg.mutate_pct:g}",
            str(self.cfg.mutate_seed),
        ]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True)
        self.logs.mkdir(parents=True, exist_ok=True)
        (self.logs / f"rep{rep}-mutate.json").write_text(out.stdout)
        os.sync()
        try:
            summary: dict[str, Any] = json.loads(out.stdout)
        except ValueError:
            summary = {"output": out.stdout[-2000:]}
        return summary

    def run(self) -> None:
        cfg = self.cfg
        for rep in range(1, cfg.reps + 1):
            order = list(self.tools.values())
            if cfg.rotate:
                k = (rep - 1) % len(order)
                order = order[k:] + order[:k]
            load = Path("/proc/loadavg").read_text().split()[:3]
            log(
                f"== repetition {rep}/{cfg.reps}  order {', '.join(t.name for t in order)}  "
                f"loadavg {' '.join(load)}"
            )
            self.discard(self.data)
            subprocess.run(["cp", "-a", str(cfg.dataset), str(self.data)], check=True)
            os.sync()
            _, bytes_a = tree_bytes(self.data)
            alive: dict[str, bool] = {}
            for tool in order:
                remove(tool.base, cfg.work)
                tool.cache.mkdir(parents=True)
                plan = [
                    Step("init", tool.init_cmd(), 0, prepare=False),
                    Step("a_initial", tool.backup_cmd("a"), bytes_a, repo_size=True),
                    Step("b_nochange", tool.backup_cmd("b"), bytes_a),
                ]
                alive[tool.name] = self.chain(tool, rep, plan, then=TIMED_PHASES[2:])
            summary = self.mutate(rep)
            files_c, bytes_c = tree_bytes(self.data)
            self.results.add(
                {
                    "kind": "mutate",
                    "rep": rep,
                    "pct": cfg.mutate_pct,
                    "seed": cfg.mutate_seed,
                    "bytes_before": bytes_a,
                    "bytes_after": bytes_c,
                    "files_after": files_c,
                    "summary": summary,
                }
            )
            log(
                f"  mutated {cfg.mutate_pct:g}% (seed {cfg.mutate_seed}): "
                f"{bytes_a / MiB:.1f} -> {bytes_c / MiB:.1f} MiB"
            )
            extras = self.extra_targets() if cfg.extra_phases else None
            for tool in order:
                if not alive[tool.name]:
                    continue
                tool.restore_dir.mkdir(parents=True)
                cmd, cwd = tool.restore_cmd()
                plan = [
                    Step("c_mutated", tool.backup_cmd("c"), bytes_c, repo_size=True),
                    Step("d_restore", cmd, bytes_c, cwd=cwd, reads_data=False),
                    # How much of the restore was still dirty in the page cache.
                    Step("d_sync", ["sync"], bytes_c, prepare=False),
                ]
                then = EXTRA_PHASES if extras else ()
                if not self.chain(tool, rep, plan, then=then):
                    continue
                if rep <= cfg.verify_reps:
                    self.verify(tool, rep)
                if extras:
                    self.chain(tool, rep, self.extra_plan(tool, *extras))
            for tool in order:
                self.discard(tool.restore_dir)
                self.discard(tool.partial_dir)
            os.sync()

    def extra_targets(self) -> tuple[Path, Path, int]:
        """The folder that (e) restores, the file that (g) dumps, and the folder's bytes:
        the folder in the middle of the sorted folders that hold files, and its first file,
        so every tool and repetition reads the same items of the mutated tree."""
        holding = sorted(
            (Path(dirpath), sorted(names)) for dirpath, _, names in os.walk(self.data) if names
        )
        if not holding:
            raise SystemExit(f"{self.data} holds no files for the extra phases")
        folder, names = holding[len(holding) // 2]
        size = sum((folder / n).lstat().st_size for n in names)
        return folder, folder / names[0], size

    def extra_plan(self, tool: Tool, folder: Path, file: Path, folder_bytes: int) -> list[Step]:
        tool.partial_dir.mkdir(parents=True)
        cmd, cwd = tool.partial_restore_cmd(folder)
        return [
            Step("e_partial", cmd, folder_bytes, cwd=cwd, reads_data=False),
            Step("f_ls", tool.ls_cmd(), 0, reads_data=False),
            Step("g_dump", tool.dump_cmd(file), file.lstat().st_size, reads_data=False),
            Step("h_check", tool.check_cmd(), 0, reads_data=False),
        ]

    def discard(self, path: Path) -> None:
        """Move a tree out of the way; it is deleted when the run ends. On ext4, after tens
        of thousands of files are deleted, creating files is slow for up to minutes (the
        allocator skips recently freed inodes one by one while their inode table blocks
        are dirty, and new files keep them dirty): a deletion between repetitions made the
        next restores seconds slower, for every tool, which hid the tools' own work."""
        if path.exists():
            self.trash.mkdir(parents=True, exist_ok=True)
            path.rename(self.trash / f"{len(list(self.trash.iterdir()))}-{path.name}")

    def verify(self, tool: Tool, rep: int) -> None:
        tree = tool.restored_tree()
        diff = compare_trees(self.data, tree)
        self.results.add(
            {
                "kind": "verify",
                "tool": tool.name,
                "rep": rep,
                "ok": diff.ok,
                "restored_tree": str(tree),
                "summary": diff.summary(),
                "missing": diff.missing[:20],
                "extra": diff.extra[:20],
                "different": diff.different[:20],
            }
        )
        if diff.ok:
            log(f"  {tool.name:<9} rep{rep} restore verified: {diff.summary()}")
        else:
            sample = [*diff.missing[:5], *diff.extra[:5], *diff.different[:5]]
            loud(
                f"{tool.name} rep{rep}: RESTORE DOES NOT MATCH THE SOURCE ({tree})\n"
                f"    {diff.summary()}\n    e.g. " + "\n         ".join(sample)
            )

    def cleanup(self) -> None:
        remove(self.data, self.cfg.work)
        for tool in self.tools.values():
            remove(tool.base, self.cfg.work)
        self.remove_trash()
        self.stamp_deletion()

    def stash(self) -> None:
        """Move the data copy and the tools' repositories into the trash, deleting nothing:
        the run's trees go when the whole invocation ends (``--delete-at-end``), so the next
        dataset needs no settling first."""
        self.discard(self.data)
        for tool in self.tools.values():
            self.discard(tool.base)

    def remove_trash(self) -> None:
        if self.trash.exists():
            remove(self.trash, self.cfg.work)
            self.stamp_deletion()

    def stamp_deletion(self) -> None:
        stamp_deletion(self.cfg.work)


def stamp_deletion(work: Path) -> None:
    """Note that trees were deleted now, for :func:`settle`."""
    deletion_stamp(work).write_text(f"{time.time():.0f}\n")


def deletion_stamp(work: Path) -> Path:
    """When a run last deleted its trees (seconds since the epoch), for the next run."""
    return work / "last-deletion"


def settle(work: Path, seconds: float) -> None:
    """Wait until ``seconds`` have passed since the last run deleted its trees. ext4
    without a journal skips inodes freed in the last 60 s (360 s while their inode table
    block is dirty, as creating files keeps it) one by one when it creates files: restores
    run minutes after a large deletion were seconds slower for every tool."""
    try:
        since = time.time() - float(deletion_stamp(work).read_text())
    except (OSError, ValueError):
        return
    wait = seconds - since
    if wait > 0:
        log(f"== waiting {wait:.0f} s: the last run deleted its trees {since:.0f} s ago")
        time.sleep(wait)


# --------------------------------------------------------------------------- report


def fmt(values: Sequence[float], spec: str = "{:.1f}") -> str:
    if not values:
        return "-"
    med = spec.format(statistics.median(values))
    if len(values) == 1:
        return med
    return f"{med} [{spec.format(min(values))}-{spec.format(max(values))}]"


def steps(records: list[dict[str, Any]], tool: str, phase: str) -> list[dict[str, Any]]:
    return [
        r
        for r in records
        if r.get("kind") == "step"
        and r["tool"] == tool
        and r["phase"] == phase
        and r["status"] == "ok"
    ]


def metric(rec: dict[str, Any], name: str) -> float | None:
    if name == "wall":
        return float(rec["wall_s"])
    if name == "rss":
        kib = rec.get("maxrss_kib")
        return kib / 1024 if kib is not None else None
    value = rec.get(name)
    return float(value) if value is not None else None


def ratio_cell(
    records: list[dict[str, Any]], phase: str, name: str, peer: str, target: float
) -> tuple[str, str]:
    """Ratio of medians safehold/peer, with the per-repetition range; and its target mark."""
    mine = {r["rep"]: metric(r, name) for r in steps(records, "safehold", phase)}
    theirs = {r["rep"]: metric(r, name) for r in steps(records, peer, phase)}
    mine_v = [v for v in mine.values() if v is not None]
    theirs_v = [v for v in theirs.values() if v is not None]
    if not mine_v or not theirs_v or statistics.median(theirs_v) <= 0:
        return "-", "❌ no data" if theirs_v else "-"
    value = statistics.median(mine_v) / statistics.median(theirs_v)
    paired = [
        m / t
        for rep, m in mine.items()
        if m is not None and (t := theirs.get(rep)) is not None and t > 0
    ]
    text = f"{value:.2f}x"
    if len(paired) > 1:
        text += f" [{min(paired):.2f}-{max(paired):.2f}]"
    # Judged on the figure shown, so that "1.00x" never reads as a miss.
    return text, "✅" if round(value, 2) <= target else "❌"


def wall_targets(records: list[dict[str, Any]]) -> dict[str, float]:
    """The phases judged by their wall time: (a)-(d), and (e)-(h) when the run had them."""
    ran = {r.get("phase") for r in records if r.get("kind") == "step"}
    extra = {phase: t for phase, t in EXTRA_TARGETS.items() if phase in ran}
    return {**WALL_TARGETS, **extra}


def render(records: list[dict[str, Any]]) -> str:
    meta = next((r for r in records if r.get("kind") == "meta"), {})
    pct = float(meta.get("mutate_pct", 5))
    tools = [t for t in ALL_TOOLS if any(r.get("tool") == t for r in records)]
    targets = wall_targets(records)
    mutates = [r for r in records if r.get("kind") == "mutate"]
    out: list[str] = []
    w = out.append

    w(f"Run `{meta.get('run_id', '?')}`, command (from the repository root):\n")
    w(f"```\n{meta.get('command', '?')}\n```\n")
    ds = meta.get("dataset", {})
    w(
        f"- dataset: `{ds.get('path', '?')}`: {ds.get('files', 0):,} files, "
        f"{ds.get('bytes', 0) / MiB:,.1f} MiB; mutation {pct:g}% with seed "
        f"{meta.get('mutate_seed', '?')}"
        + (
            f" ({mutates[0]['bytes_before'] / MiB:,.1f} → {mutates[0]['bytes_after'] / MiB:,.1f}"
            " MiB)"
            if mutates
            else ""
        )
    )
    host = meta.get("host", {})
    w(
        f"- machine: {host.get('cpus', '?')} CPUs, {host.get('mem_gib', '?')} GiB RAM, "
        f"{host.get('system', '?')}; repetitions: {meta.get('reps', '?')}, tool order rotated "
        f"each repetition: {'yes' if meta.get('rotate') else 'no'}"
    )
    w(
        f"- before every timed command: sync, "
        f"{'drop the page cache, ' if meta.get('drop_caches') else '(page cache NOT dropped) '}"
        "then read what the command reads: dataset (backups), repository + cache dir (warm)"
    )
    versions = meta.get("versions", {})
    w("- versions: " + "; ".join(f"{t}: {versions.get(t, '?')}" for t in tools))
    w(f"- started {meta.get('started', '?')}, raw results `{meta.get('results', '?')}`\n")

    if "safehold" in tools and any(p in tools for p in PEERS):
        peers = [p for p in PEERS if p in tools]
        w(
            "#### Ratios safehold / peer (median of safehold ÷ median of peer, "
            "[range of per-repetition ratios])\n"
        )
        head = "| metric | target |" + "".join(f" safehold/{TOOL_LABELS[p]} | |" for p in peers)
        w(head)
        w("|---|---|" + "---|---|" * len(peers))
        rows: list[tuple[str, str, str, float]] = []
        for phase, target in targets.items():
            rows.append((f"wall time {phase_label(phase, pct)}", phase, "wall", target))
        for phase in ("a_initial", "c_mutated"):
            rows.append(
                (f"repo size after {phase_label(phase, pct)[:3]}", phase, "repo_bytes", REPO_TARGET)
            )
        for phase in targets:
            rows.append((f"peak RSS {phase_label(phase, pct)}", phase, "rss", RSS_TARGET))
        met = dict.fromkeys(peers, 0)
        for title, phase, name, target in rows:
            cells = ""
            for peer in peers:
                text, mark = ratio_cell(records, phase, name, peer, target)
                met[peer] += mark == "✅"
                cells += f" {text} | {mark} |"
            w(f"| {title} | ≤ {target:.1f}x |{cells}")
        w("")
        w(
            "Targets met: "
            + ", ".join(f"{met[p]}/{len(rows)} against {TOOL_LABELS[p]}" for p in peers)
            + ".\n"
        )

    w("#### Per tool and phase: median [min-max] over the repetitions\n")
    w(
        "| tool | phase | n | wall s | MiB/s | peak RSS MiB | CPU user+sys s | CPU % "
        "| foreign CPU s | failed |"
    )
    w("|---|---|---|---|---|---|---|---|---|---|")
    for tool in tools:
        for phase in (*TIMED_PHASES, *EXTRA_PHASES):
            ok = steps(records, tool, phase)
            bad = [
                r
                for r in records
                if r.get("kind") == "step"
                and r["tool"] == tool
                and r["phase"] == phase
                and r["status"] != "ok"
            ]
            if not ok and not bad:
                continue
            walls = [r["wall_s"] for r in ok]
            # ls and check read no data of their own: no rate.
            rates = [
                r["data_bytes"] / MiB / r["wall_s"]
                for r in ok
                if r["wall_s"] > 0 and r["data_bytes"]
            ]
            rss = [v for r in ok if (v := metric(r, "rss")) is not None]
            cpu = [(r["user_s"] or 0) + (r["sys_s"] or 0) for r in ok]
            cpu_pct = [
                100 * c / r["wall_s"] for c, r in zip(cpu, ok, strict=True) if r["wall_s"] > 0
            ]
            foreign = [r["foreign_cpu_s"] for r in ok if r.get("foreign_cpu_s") is not None]
            statuses = [r["status"] for r in bad]
            failed = ", ".join(f"{statuses.count(x)} {x}" for x in sorted(set(statuses)))
            w(
                f"| {TOOL_LABELS[tool]} | {phase_label(phase, pct)} | {len(ok)} "
                f"| {fmt(walls, '{:.2f}')} | {fmt(rates)} "
                f"| {fmt(rss, '{:.0f}') if phase != 'd_sync' else '-'} | {fmt(cpu, '{:.2f}')} "
                f"| {fmt(cpu_pct, '{:.0f}%')} | {fmt(foreign)} | {failed} |"
            )
    w("")

    w("#### Repository size (`du -sb`), MiB\n")
    w("| tool | n | after (a) | after (c) | growth (c)-(a) | dataset / repo after (a) |")
    w("|---|---|---|---|---|---|")
    for tool in tools:
        after_a = {
            r["rep"]: r["repo_bytes"] / MiB
            for r in steps(records, tool, "a_initial")
            if "repo_bytes" in r
        }
        after_c = {
            r["rep"]: r["repo_bytes"] / MiB
            for r in steps(records, tool, "c_mutated")
            if "repo_bytes" in r
        }
        growth = [after_c[k] - after_a[k] for k in after_c if k in after_a]
        squeeze = (
            f"{ds.get('bytes', 0) / MiB / statistics.median(after_a.values()):.2f}"
            if after_a
            else "-"
        )
        w(
            f"| {TOOL_LABELS[tool]} | {len(after_a)} | {fmt(list(after_a.values()))} "
            f"| {fmt(list(after_c.values()))} | {fmt(growth)} | {squeeze} |"
        )
    w("")

    verifies = [r for r in records if r.get("kind") == "verify"]
    if verifies:
        w(
            "Restore verification (content of every file against the source): "
            + "; ".join(
                f"{r['tool']} rep{r['rep']}: {'ok' if r['ok'] else '**' + r['summary'] + '**'}"
                for r in verifies
            )
            + "\n"
        )
    failures = [
        r for r in records if r.get("kind") == "step" and r["status"] in ("failed", "timeout")
    ]
    if failures:
        w("Failures (later steps of that tool in that repetition were skipped):\n")
        for r in failures:
            w(
                f"- {r['tool']} rep{r['rep']} {phase_label(r['phase'], pct)}: {r['status']} "
                f"(exit {r['exit']}), log `{r['log']}`"
            )
        w("")
    return "\n".join(out)


SHORT_LABELS = {
    "a_initial": "(a) initial",
    "b_nochange": "(b) no change",
    "c_mutated": "(c) after change",
    "d_restore": "(d) restore",
    "e_partial": "(e) one folder",
    "f_ls": "(f) ls",
    "g_dump": "(g) dump",
    "h_check": "(h) check",
}


def render_matrix(runs: list[list[dict[str, Any]]]) -> str:
    """Several datasets measured in one run: their ratios side by side, one row a dataset,
    then each dataset's own report."""
    metas = [next((r for r in recs if r.get("kind") == "meta"), {}) for recs in runs]
    first = metas[0]
    all_records = [r for recs in runs for r in recs]
    tools = [t for t in ALL_TOOLS if any(r.get("tool") == t for r in all_records)]
    peers = [p for p in PEERS if p in tools]
    targets = wall_targets(all_records)
    out: list[str] = []
    w = out.append

    w(f"Run `{first.get('run_id', '?').rsplit('-', 1)[0]}`, command (from the repository root):\n")
    w(f"```\n{first.get('command', '?')}\n```\n")
    host = first.get("host", {})
    w(
        f"- machine: {host.get('cpus', '?')} CPUs, {host.get('mem_gib', '?')} GiB RAM, "
        f"{host.get('system', '?')}; repetitions per dataset: {first.get('reps', '?')}, tool "
        f"order rotated each repetition: {'yes' if first.get('rotate') else 'no'}"
    )
    versions = first.get("versions", {})
    w("- versions: " + "; ".join(f"{t}: {versions.get(t, '?')}" for t in tools))
    w(f"- started {first.get('started', '?')}; datasets, in the order they ran:")
    for meta in metas:
        ds = meta.get("dataset", {})
        w(
            f"  - {ds.get('label', ds.get('path', '?'))}: `{ds.get('path', '?')}`, "
            f"{ds.get('files', 0):,} files, {ds.get('bytes', 0) / MiB:,.1f} MiB; raw results "
            f"`{meta.get('results', '?')}`"
        )
    w("")

    def label(meta: dict[str, Any]) -> str:
        ds = meta.get("dataset", {})
        return str(ds.get("label", ds.get("path", "?")))

    for peer in peers:
        for title, name, extra in (
            ("wall time", "wall", ()),
            ("peak memory (and repository size after (c))", "rss", ("repo",)),
        ):
            w(f"#### {title.capitalize()}, safehold / {TOOL_LABELS[peer]}\n")
            head = "| dataset |"
            for phase, target in targets.items():
                goal = target if name == "wall" else RSS_TARGET
                head += f" {SHORT_LABELS[phase]} ≤ {goal:.1f}x |"
            head += " repo (c) ≤ 1.0x |" if extra else ""
            w(head)
            w("|---|" + "---|" * (len(targets) + len(extra)))
            met = total = 0
            for meta, recs in zip(metas, runs, strict=True):
                cells = ""
                columns = [
                    (phase, name, t if name == "wall" else RSS_TARGET)
                    for phase, t in targets.items()
                ]
                if extra:
                    columns.append(("c_mutated", "repo_bytes", REPO_TARGET))
                for phase, metric_name, goal in columns:
                    text, mark = ratio_cell(recs, phase, metric_name, peer, goal)
                    if text != "-":
                        total += 1
                        met += mark == "✅"
                    # Only the ratio of medians: the ranges are in each dataset's report.
                    cells += f" {text.split(' [')[0]} {mark} |" if text != "-" else " - |"
                w(f"| {label(meta)} |{cells}")
            w(f"\nWithin target: {met} of {total}.\n")

    for meta, recs in zip(metas, runs, strict=True):
        w(f"### {label(meta)}\n")
        w(render(recs))
    return "\n".join(out)


DOCS_INTRO = """# Benchmarks

safehold is measured side by side with restic and borg (`--compression zstd,3`, repokey
encryption) on the same data, in the same run, on the same machine, and judged by ratios
safehold/peer rather than absolute figures (the machine is shared; absolute times drift
between runs, ratios measured in one run much less). How to run it and what each figure
means: [bench/README.md](../bench/README.md).

Targets (safehold ÷ peer): initial backup ≤ 0.6x, re-backup with no change ≤ 0.4x,
re-backup after a 5% change ≤ 0.4x, full restore ≤ 0.5x (wall time); repository size
≤ 1.0x; peak memory ≤ 1.0x.

## Latest results

The section below is rewritten by `python3 bench/run.py --write-docs`.

"""


def write_docs(path: Path, section: str) -> None:
    block = f"{DOCS_START}\n{section.rstrip()}\n{DOCS_END}"
    if path.exists():
        text = path.read_text()
        start, end = text.find(DOCS_START), text.find(DOCS_END)
        if start >= 0 and end > start:
            text = text[:start] + block + text[end + len(DOCS_END) :]
        else:
            text = text.rstrip() + "\n\n" + block + "\n"
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        text = DOCS_INTRO + block + "\n"
    path.write_text(text)
    log(f"== updated {path}")


# --------------------------------------------------------------------------- setup


def install(borg_venv: Path, borg_spec: str) -> None:
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    log("== installing restic and GNU time (apt), borg build dependencies")
    subprocess.run(["apt-get", "update", "-q"], env=env, check=True)
    subprocess.run(
        [
            "apt-get",
            "install",
            "-y",
            "-q",
            "restic",
            "time",
            "build-essential",
            "pkg-config",
            "libssl-dev",
            "liblz4-dev",
            "libzstd-dev",
            "libxxhash-dev",
            "libacl1-dev",
        ],
        env=env,
        check=True,
    )
    if (borg_venv / "bin" / "borg").exists():
        log(f"== borg already installed in {borg_venv}")
        return
    log(f"== installing {borg_spec} into {borg_venv}")
    subprocess.run([sys.executable, "-m", "venv", str(borg_venv)], check=True)
    subprocess.run([str(borg_venv / "bin" / "pip"), "install", "-q", borg_spec], check=True)


def command_version(cmd: list[str], env: dict[str, str] | None = None) -> str:
    try:
        out = subprocess.run(
            cmd,
            capture_output=True,
            text=True,
            timeout=120,
            env=env,
            stdin=subprocess.DEVNULL,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unavailable ({exc})"
    text = (out.stdout or out.stderr).strip().splitlines()
    if out.returncode != 0 or not text:
        return f"unavailable (exit {out.returncode})"
    return text[0].strip()


def git_describe() -> str:
    def git(*args: str) -> str:
        out = subprocess.run(
            ["git", "-C", str(REPO_ROOT), *args], capture_output=True, text=True, check=False
        )
        return out.stdout.strip() if out.returncode == 0 else ""

    commit = git("rev-parse", "--short", "HEAD") or "no commit"
    dirty = " + uncommitted changes" if git("status", "--porcelain") else ""
    return commit + dirty


def host_info() -> dict[str, Any]:
    mem_gib: float | str = "?"
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_gib = round(int(line.split()[1]) / (1 << 20), 1)
    return {
        "cpus": os.cpu_count(),
        "mem_gib": mem_gib,
        "system": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
    }


def default_safehold_cmd() -> list[str]:
    venv_bin = REPO_ROOT / ".venv" / "bin" / "safehold"
    if venv_bin.exists():
        # Byte-compiled as an installed package is (`./run setup` does the same): with
        # PYTHONDONTWRITEBYTECODE set, every timed command would recompile the sources.
        subprocess.run(
            [str(venv_bin.parent / "python"), "-m", "compileall", "-q", str(REPO_ROOT / "src")],
            check=False,
            stdout=subprocess.DEVNULL,
        )
        # Straight to the venv's entry point: `uv run` would add its own startup to every
        # timed command.
        return [str(venv_bin)]
    return ["uv", "run", "--frozen", "--project", str(REPO_ROOT), "safehold"]


def default_borg() -> str:
    venv_borg = DEFAULT_BORG_VENV / "bin" / "borg"
    return str(venv_borg) if venv_borg.exists() else (shutil.which("borg") or str(venv_borg))


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Benchmark safehold side by side with restic and borg; report ratios.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "--dataset",
        type=Path,
        default=Path("/tmp/ds_base"),
        help="pristine dataset dir (never modified; copied once per repetition)",
    )
    p.add_argument(
        "--make-dataset",
        action="store_true",
        help="generate --dataset with make_dataset.py if it does not exist",
    )
    p.add_argument(
        "--make-dataset-py",
        type=Path,
        default=DEFAULT_MAKE_DATASET,
        help="make_dataset.py (generation and the mutation before (c))",
    )
    p.add_argument("--size-mb", type=int, default=2048, help="size for --make-dataset")
    p.add_argument("--seed", type=int, default=42, help="seed for --make-dataset")
    p.add_argument("--mutate-pct", type=float, default=5, help="percent changed before (c)")
    p.add_argument("--mutate-seed", type=int, default=7, help="seed of the mutation")
    p.add_argument(
        "--work",
        type=Path,
        default=Path("/tmp/safehold-bench"),
        help="work dir: data copy, repositories, caches, logs, results",
    )
    p.add_argument("--reps", type=int, default=3, help="repetitions")
    p.add_argument(
        "--tools",
        default="safehold,restic,borg",
        help="comma-separated subset of safehold,restic,borg",
    )
    p.add_argument(
        "--safehold",
        default=None,
        help="safehold command (default: <repo>/.venv/bin/safehold if present, "
        "else `uv run --frozen --project <repo> safehold`)",
    )
    p.add_argument("--restic", default=shutil.which("restic") or "restic", help="restic binary")
    p.add_argument("--borg", default=default_borg(), help="borg binary")
    p.add_argument(
        "--install",
        action="store_true",
        help="apt-get install restic + GNU time; borg into a venv (--borg-venv)",
    )
    p.add_argument("--borg-venv", type=Path, default=DEFAULT_BORG_VENV)
    p.add_argument("--borg-spec", default=DEFAULT_BORG_SPEC, help="pip requirement for borg")
    p.add_argument("--timeout", type=float, default=3600, help="seconds per command")
    p.add_argument(
        "--verify-reps",
        type=int,
        default=1,
        help="verify restores against the source on the first N repetitions",
    )
    p.add_argument(
        "--no-drop",
        action="store_true",
        help="do not drop the page cache (only warm it) before timed commands",
    )
    p.add_argument(
        "--no-rotate",
        action="store_true",
        help="keep the tool order fixed (default: rotate it every repetition)",
    )
    p.add_argument(
        "--no-warm-tools",
        action="store_true",
        help="skip the untimed `--version` call that loads each tool before timing",
    )
    p.add_argument(
        "--settle",
        type=float,
        default=SETTLE_S,
        help="wait until this many seconds have passed since the last run deleted its "
        "trees (ext4 creates files slowly for minutes after a large deletion; 0: no wait)",
    )
    p.add_argument(
        "--keep",
        action="store_true",
        help="keep the data copy and repositories of the last repetition",
    )
    p.add_argument(
        "--delete-at-end",
        action="store_true",
        help="with several datasets: keep every dataset's trees (moved aside) until the last "
        "one is done, so that no dataset waits --settle after the one before; needs room "
        "for all of them (about 6 GB a GiB of dataset with 2 tools and 2 repetitions)",
    )
    p.add_argument(
        "--write-docs",
        action="store_true",
        help=f"rewrite the results between {DOCS_START} and {DOCS_END} in --docs",
    )
    p.add_argument("--docs", type=Path, default=DEFAULT_DOCS)
    p.add_argument(
        "--report",
        type=Path,
        nargs="+",
        metavar="JSONL",
        help="do not run: print (and with --write-docs, write) the report of a saved results "
        "file; several files (the datasets of one run): the report over all of them",
    )
    several = p.add_argument_group(
        "several datasets in one run (any of these replaces --dataset; see bench/README.md)"
    )
    several.add_argument(
        "--sizes",
        metavar="GIB,...",
        help="datasets of make_dataset.py of these sizes in GiB, e.g. 0.25,1,2 "
        "(default with --seeds: 2)",
    )
    several.add_argument("--seeds", metavar="SEED,...", help="their seeds, e.g. 42,7 (default: 42)")
    several.add_argument(
        "--small-files",
        action="store_true",
        help="also a tree of many small mail-sized files (bench/small_files.py; first seed), "
        "with (e)-(h) after (d)",
    )
    several.add_argument(
        "--small-files-count", type=int, default=200_000, help="files in the small-file tree"
    )
    several.add_argument(
        "--small-files-folders",
        type=int,
        default=0,
        help="folders in the small-file tree (default: one per 100 files)",
    )
    several.add_argument(
        "--datasets-dir",
        type=Path,
        default=Path("/tmp"),
        help="where the datasets are generated when missing (ds_<MiB>m_s<seed>, "
        "ds_small_<files>f_<folders>d_s<seed>); 2 GiB of seed 42 is --dataset",
    )
    several.add_argument(
        "--extra-phases",
        action="store_true",
        help="run (e) restore of one folder, (f) ls, (g) dump of one file, (h) check on "
        "every dataset, not only the small-file tree",
    )
    return p.parse_args(argv)


@dataclass(frozen=True)
class DatasetSpec:
    """One dataset of a run over several: where it lives, how it is made and changed."""

    label: str
    path: Path
    gen_cmd: list[str]  # run when path does not exist
    mutate_py: Path  # called as `mutate_py mutate DIR PCT SEED` before (c)
    extra_phases: bool


def split_list(text: str, kind: type[float] | type[int], option: str) -> list[Any]:
    try:
        values = [kind(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise SystemExit(f"{option}: expected comma-separated numbers, got {text!r}") from None
    if not values or min(values) < 0 or (option == "--sizes" and min(values) == 0):
        raise SystemExit(f"{option}: expected positive numbers, got {text!r}")
    return values


def dataset_specs(args: argparse.Namespace, make_py: Path) -> list[DatasetSpec] | None:
    """The datasets of --sizes/--seeds/--small-files, in that order; None without them
    (one dataset, --dataset, as before)."""
    if not (args.sizes or args.seeds or args.small_files):
        return None
    seeds: list[int] = split_list(args.seeds, int, "--seeds") if args.seeds else [42]
    if args.sizes:
        sizes: list[float] = split_list(args.sizes, float, "--sizes")
    else:
        sizes = [] if args.small_files and not args.seeds else [2.0]
    where = args.datasets_dir.resolve()
    specs = []
    for size in sizes:
        mib = round(size * 1024)
        for seed in seeds:
            # The default dataset is make_dataset.py's 2 GiB of seed 42: reuse it.
            default = mib == args.size_mb and seed == args.seed
            path = args.dataset.resolve() if default else where / f"ds_{mib}m_s{seed}"
            gen = [sys.executable, str(make_py), str(path), str(mib), str(seed)]
            label = f"{size:g} GiB, seed {seed}"
            specs.append(DatasetSpec(label, path, gen, make_py, args.extra_phases))
    if args.small_files:
        count, seed = args.small_files_count, seeds[0]
        folders = args.small_files_folders or max(1, count // 100)
        path = where / f"ds_small_{count}f_{folders}d_s{seed}"
        gen = [sys.executable, str(SMALL_FILES_PY), "gen", str(path), str(count), str(seed)]
        gen += ["--folders", str(folders)]
        label = f"{count:,} small files in {folders:,} folders, seed {seed}"
        specs.append(DatasetSpec(label, path, gen, SMALL_FILES_PY, True))
    return specs


def check_dataset(dataset: Path, work: Path) -> None:
    if work in (Path("/"), REPO_ROOT) or work == dataset or work in dataset.parents:
        raise SystemExit(f"--work {work} would contain or clash with {dataset}; pick another")
    if dataset == work / "data" or work / "data" in dataset.parents:
        raise SystemExit(f"--dataset must not live under {work / 'data'}")


def run_dataset(
    cfg: Config,
    run_id: str,
    command: str,
    args: argparse.Namespace,
    label: str | None = None,
) -> list[dict[str, Any]]:
    """Measure one dataset; print and save its report; return its records."""
    results = Results(cfg.work / "results" / f"{run_id}.jsonl")
    bench = Bench(cfg, results, run_id)

    log(f"== command: {command}")
    versions: dict[str, str] = {}
    for name, tool in bench.tools.items():
        versions[name] = command_version(tool.version_cmd(), tool.env())
    if "safehold" in versions:
        versions["safehold"] += f" ({shlex.join(cfg.safehold_cmd)}, git {git_describe()})"
    if "borg" in versions:
        versions["borg"] += " (--compression zstd,3, repokey)"
    for name, version in versions.items():
        log(f"   {name}: {version}")
    log(f"== measuring dataset {cfg.dataset}")
    files, size = tree_bytes(cfg.dataset)
    meta: dict[str, Any] = {
        "kind": "meta",
        "run_id": run_id,
        "command": command,
        "started": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "dataset": {"path": str(cfg.dataset), "files": files, "bytes": size},
        "work": str(cfg.work),
        "results": str(results.path),
        "reps": cfg.reps,
        "tools": cfg.tools,
        "mutate_pct": cfg.mutate_pct,
        "mutate_seed": cfg.mutate_seed,
        "drop_caches": cfg.drop,
        "rotate": cfg.rotate,
        "warm_tools": cfg.warm_tools,
        "timeout_s": cfg.timeout,
        "versions": versions,
        "host": host_info(),
        "time_tool": str(TIME_BIN) if TIME_BIN.exists() else "wait4 rusage",
    }
    if label is not None:
        meta["dataset"]["label"] = label
    results.add(meta)
    log(f"   {files:,} files, {size / MiB:,.1f} MiB; results -> {results.path}")

    settle(cfg.work, args.settle)
    try:
        bench.run()
    finally:
        if args.keep:
            bench.remove_trash()
        elif args.delete_at_end:
            bench.stash()
        else:
            bench.cleanup()

    text = render(results.records)
    report_path = results.path.with_suffix(".md")
    report_path.write_text(text + "\n")
    print("\n" + text)
    log(f"== raw results: {results.path}\n== report: {report_path}\n== command: {command}")
    return results.records


def main(argv: Sequence[str]) -> int:
    args = parse_args(argv)
    command = shlex.join(["python3", "bench/run.py", *argv])

    if args.report:
        runs = [load_results(path) for path in args.report]
        text = render(runs[0]) if len(runs) == 1 else render_matrix(runs)
        print(text)
        if args.write_docs:
            write_docs(args.docs, text)
        return 0

    tools = [t.strip() for t in args.tools.split(",") if t.strip()]
    unknown = [t for t in tools if t not in ALL_TOOLS]
    if unknown or not tools or len(set(tools)) != len(tools):
        raise SystemExit(f"--tools: expected a subset of {','.join(ALL_TOOLS)}, got {args.tools}")
    if args.reps < 1:
        raise SystemExit("--reps must be at least 1")

    if args.install:
        install(args.borg_venv, args.borg_spec)
        if args.borg == default_borg() or not Path(args.borg).exists():
            args.borg = str(args.borg_venv / "bin" / "borg")
        args.restic = shutil.which("restic") or args.restic

    make_py = args.make_dataset_py.resolve()
    if not make_py.exists():
        raise SystemExit(f"{make_py} not found (needed for the mutation): see --make-dataset-py")
    work = args.work.resolve()
    specs = dataset_specs(args, make_py)
    if specs is None:
        dataset = args.dataset.resolve()
        if not dataset.is_dir():
            if not args.make_dataset:
                raise SystemExit(f"no dataset at {dataset}: pass --make-dataset to generate it")
            log(f"== generating {dataset} ({args.size_mb} MiB, seed {args.seed})")
            subprocess.run(
                [sys.executable, str(make_py), str(dataset), str(args.size_mb), str(args.seed)],
                check=True,
            )
        check_dataset(dataset, work)
    else:
        for spec in specs:
            check_dataset(spec.path, work)
    for name, binary in (("restic", args.restic), ("borg", args.borg)):
        if name in tools and not shutil.which(binary):
            raise SystemExit(f"{name} not found ({binary}): run with --install or pass --{name}")

    drop = not args.no_drop and can_drop_caches()
    if not args.no_drop and not drop:
        loud(f"{DROP_CACHES} is not writable: the page cache is only warmed, not dropped")
    safehold_cmd = shlex.split(args.safehold) if args.safehold else default_safehold_cmd()
    cfg = Config(
        dataset=args.dataset.resolve(),
        work=work,
        reps=args.reps,
        tools=tools,
        safehold_cmd=safehold_cmd,
        restic_bin=args.restic,
        borg_bin=args.borg,
        make_dataset_py=make_py,
        mutate_pct=args.mutate_pct,
        mutate_seed=args.mutate_seed,
        timeout=args.timeout,
        drop=drop,
        rotate=not args.no_rotate,
        verify_reps=args.verify_reps,
        warm_tools=not args.no_warm_tools,
        extra_phases=args.extra_phases,
    )
    run_id = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    if specs is None:
        text = render(run_dataset(cfg, run_id, command, args))
    else:
        text = run_matrix(cfg, specs, run_id, command, args)
    if args.write_docs:
        write_docs(args.docs, text)
    return 0


def run_matrix(
    cfg: Config, specs: list[DatasetSpec], run_id: str, command: str, args: argparse.Namespace
) -> str:
    """Every dataset in turn, each a run of its own (results `<run>-<n>.jsonl`); then one
    report: the ratios of every dataset side by side, followed by each dataset's report."""
    for spec in specs:
        if not spec.path.is_dir():
            log(f"== generating {spec.path} ({spec.label})")
            subprocess.run(spec.gen_cmd, check=True)
    log("== datasets: " + "; ".join(f"{s.label} ({s.path})" for s in specs))
    runs = []
    try:
        for n, spec in enumerate(specs, 1):
            log(f"\n==== dataset {n}/{len(specs)}: {spec.label}")
            one = dataclasses.replace(
                cfg,
                dataset=spec.path,
                make_dataset_py=spec.mutate_py,
                extra_phases=cfg.extra_phases or spec.extra_phases,
            )
            runs.append(run_dataset(one, f"{run_id}-{n}", command, args, spec.label))
    finally:
        if args.delete_at_end and (cfg.work / "trash").exists():
            log("== deleting every dataset's trees")
            remove(cfg.work / "trash", cfg.work)
            stamp_deletion(cfg.work)
    text = render_matrix(runs)
    report_path = cfg.work / "results" / f"{run_id}.md"
    report_path.write_text(text + "\n")
    print("\n" + text)
    log(f"== report of all datasets: {report_path}")
    return text


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
