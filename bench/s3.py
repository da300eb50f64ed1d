"""safehold against restic, both backing up to the same SeaweedFS S3 server.

Run from the repository root (SeaweedFS comes from the project's dev dependencies,
restic from apt)::

    uv run python -m bench.s3 --size-mb 2048           # the issue's case: 2 GiB
    uv run python -m bench.s3 --size-mb 200 --reps 1   # a smoke run

Per repetition and tool, with a fresh bucket and cache: (a) initial backup of a copy of
the dataset, then ``make_dataset.py mutate`` (5 %) and (c) a re-backup, then (d) a full
restore of the latest snapshot into an empty folder (nothing is deleted until the run
ends: see ``run_rep``; about 4.5 GB per tool and repetition). Before each timed command the
dataset (or, for a restore, nothing) is read once so both tools start from a warm page
cache. One ``weed mini`` serves every run; its CPU time per phase is reported too, since
on a small machine the server shares the cores with the client.

safehold runs as ``.venv/bin/safehold`` (not ``uv run``, whose start-up would be timed).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from bench.run import DEFAULT_MAKE_DATASET, warm

from tests.servers.s3 import SeaweedS3, start_seaweedfs

REPO_ROOT = Path(__file__).resolve().parent.parent
PHASES = ("a_initial", "c_mutated", "d_restore")
LABELS = {
    "a_initial": "(a) initial backup",
    "c_mutated": "(c) re-backup after 5 % change",
    "d_restore": "(d) full restore",
}
TARGET = 0.7  # the issue: at most 0.7x restic's wall time for each phase
PASSWORD = "bench-password"


@dataclass
class Sample:
    wall: float
    cpu: float  # the tool's user+sys CPU (children rusage)
    server_cpu: float


@dataclass
class Results:
    samples: dict[tuple[str, str], list[Sample]] = field(default_factory=dict)

    def add(self, tool: str, phase: str, sample: Sample) -> None:
        self.samples.setdefault((tool, phase), []).append(sample)

    def median(self, tool: str, phase: str, what: str) -> float:
        return float(statistics.median(getattr(s, what) for s in self.samples[(tool, phase)]))


def _server_cpu(server: SeaweedS3) -> float:
    fields = Path(f"/proc/{server.process.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _children_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def timed(argv: Sequence[str], env: dict[str, str], server: SeaweedS3, log: Path) -> Sample:
    cpu0, srv0, t0 = _children_cpu(), _server_cpu(server), time.perf_counter()
    with open(log, "ab") as out:
        done = subprocess.run(argv, env=env, stdout=out, stderr=subprocess.STDOUT, check=False)
    sample = Sample(time.perf_counter() - t0, _children_cpu() - cpu0, _server_cpu(server) - srv0)
    if done.returncode != 0:
        tail = log.read_text(errors="replace")[-3000:]
        raise SystemExit(f"{' '.join(argv[:4])}... failed ({done.returncode}):\n{tail}")
    return sample


class Tool:
    name = ""

    def __init__(self, server: SeaweedS3, work: Path) -> None:
        self.server = server
        self.work = work
        self.bucket = f"bench-{self.name}-{uuid.uuid4().hex[:8]}"
        self.env = {
            **os.environ,
            **server.env(),
            "HOME": str(work / "home"),
            "XDG_CACHE_HOME": str(work / "cache"),
        }

    def init(self) -> list[str]:
        raise NotImplementedError

    def backup(self, src: Path) -> list[str]:
        raise NotImplementedError

    def restore(self, target: Path) -> list[str]:
        raise NotImplementedError


class Safehold(Tool):
    name = "safehold"

    def __init__(self, server: SeaweedS3, work: Path) -> None:
        super().__init__(server, work)
        self.env["SAFEHOLD_PASSWORD"] = PASSWORD
        self.exe = str(REPO_ROOT / ".venv" / "bin" / "safehold")
        self.repo = f"s3:{server.endpoint}/{self.bucket}/repo"

    def init(self) -> list[str]:
        return [self.exe, "-r", self.repo, "init"]

    def backup(self, src: Path) -> list[str]:
        return [self.exe, "-r", self.repo, "backup", str(src)]

    def restore(self, target: Path) -> list[str]:
        return [self.exe, "-r", self.repo, "restore", "latest", "--target", str(target)]


class Restic(Tool):
    name = "restic"

    def __init__(self, server: SeaweedS3, work: Path) -> None:
        super().__init__(server, work)
        self.env["RESTIC_PASSWORD"] = PASSWORD
        self.exe = shutil.which("restic") or "restic"
        self.repo = f"s3:{server.endpoint}/{self.bucket}/repo"
        self.cache = ["--cache-dir", str(work / "restic-cache")]

    def init(self) -> list[str]:
        return [self.exe, "-r", self.repo, *self.cache, "init"]

    def backup(self, src: Path) -> list[str]:
        return [self.exe, "-r", self.repo, *self.cache, "backup", "-q", str(src)]

    def restore(self, target: Path) -> list[str]:
        return [
            self.exe,
            "-r",
            self.repo,
            *self.cache,
            "restore",
            "latest",
            "--target",
            str(target),
        ]


def run_rep(
    rep: int, args: argparse.Namespace, server: SeaweedS3, work: Path, results: Results
) -> None:
    tools: list[type[Tool]] = [Safehold, Restic] if rep % 2 == 0 else [Restic, Safehold]
    for cls in tools:
        tool_work = work / f"{cls.name}-{rep}"
        tool_work.mkdir(parents=True)
        src = tool_work / "data"
        subprocess.run(["cp", "-a", str(args.dataset), str(src)], check=True)
        tool = cls(server, tool_work)
        log = tool_work / "log.txt"
        print(f"rep {rep} {tool.name}: init", flush=True)
        timed(tool.init(), tool.env, server, log)
        warm([src])
        results.add(tool.name, "a_initial", timed(tool.backup(src), tool.env, server, log))
        subprocess.run(
            [
                sys.executable,
                str(args.make_dataset_py),
                "mutate",
                str(src),
                str(args.mutate_pct),
                "7",
            ],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        warm([src])
        results.add(tool.name, "c_mutated", timed(tool.backup(src), tool.env, server, log))
        target = tool_work / "restore"
        target.mkdir()
        results.add(tool.name, "d_restore", timed(tool.restore(target), tool.env, server, log))
        for phase in PHASES:
            s = results.samples[(tool.name, phase)][-1]
            print(f"  {phase}: {s.wall:7.2f} s (cpu {s.cpu:.1f} s, server {s.server_cpu:.1f} s)")
        # The data copy and the restored tree stay until the run ends: after tens of
        # thousands of files are deleted, ext4 creates files slowly for minutes (it skips
        # recently freed inodes while their table blocks are dirty), which made whichever
        # restore came next 2-3x slower (6.2 s for the first restore of a run, 15-18 s for
        # the same one after a deletion).


def report(results: Results, args: argparse.Namespace) -> str:
    lines = [
        f"S3 (SeaweedFS `weed mini` on the same machine), dataset {args.size_mb} MiB, "
        f"{args.reps} repetition(s), medians; `uv run python -m bench.s3 --size-mb {args.size_mb}"
        f" --reps {args.reps}`",
        "",
        "| phase | safehold s | restic s | ratio (target <= 0.7) | safehold / restic CPU s "
        "| server CPU s (safehold / restic) |",
        "|---|---|---|---|---|---|",
    ]
    for phase in PHASES:
        sh, rs = (results.median(t, phase, "wall") for t in ("safehold", "restic"))
        cpu = "/".join(f"{results.median(t, phase, 'cpu'):.1f}" for t in ("safehold", "restic"))
        srv = "/".join(
            f"{results.median(t, phase, 'server_cpu'):.1f}" for t in ("safehold", "restic")
        )
        ok = "ok" if sh / rs <= TARGET else "MISSED"
        lines.append(
            f"| {LABELS[phase]} | {sh:.2f} | {rs:.2f} | {sh / rs:.2f} ({ok}) | {cpu} | {srv} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--size-mb", type=int, default=2048)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--dataset", type=Path, help="an existing tree (default: generated)")
    parser.add_argument("--make-dataset-py", type=Path, default=DEFAULT_MAKE_DATASET)
    parser.add_argument("--mutate-pct", type=float, default=5)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--work", type=Path, default=None, help="default: a temporary folder")
    parser.add_argument("--json", type=Path, help="also write the raw samples here")
    args = parser.parse_args()
    if not shutil.which("restic"):
        raise SystemExit("restic not found: apt-get install restic")
    with tempfile.TemporaryDirectory(prefix="bench-s3-", dir=args.work) as tmp:
        work = Path(tmp)
        if args.dataset is None:
            args.dataset = work / "dataset"
            print(f"generating {args.size_mb} MiB dataset", flush=True)
            subprocess.run(
                [sys.executable, str(args.make_dataset_py), str(args.dataset),
                 str(args.size_mb), str(args.seed)],
                check=True,
                stdout=subprocess.DEVNULL,
            )  # fmt: skip
        server = start_seaweedfs(work / "seaweedfs")
        results = Results()
        try:
            for rep in range(args.reps):
                run_rep(rep, args, server, work / "runs", results)
        finally:
            server.stop()
    text = report(results, args)
    print(text)
    if args.json:
        raw = {f"{t}/{p}": [s.__dict__ for s in v] for (t, p), v in results.samples.items()}
        args.json.write_text(json.dumps(raw, indent=2))


if __name__ == "__main__":
    main()
