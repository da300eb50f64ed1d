"""Floors for a full restore on this machine: writing the files, and opening the blobs,
each measured alone.

Run from the repository root, after ``python3 bench/run.py`` has made the dataset::

    uv run --frozen python -m bench.floor --dataset /tmp/ds_base

Three measurements, each repeated ``--reps`` times into a fresh folder:

* ``write``: the dataset's tree written from memory by restore's own writer
  (:class:`safehold.engine.restore.write.FileWriter`, with restore's thread count): folders
  made first, files created exclusively, 1 MiB blobs placed with ``pwrite`` (whole blocks
  of large blobs with direct I/O), metadata set through the descriptor. Nothing is read,
  decrypted, decompressed or verified.
* ``write-buffered``: the same through the page cache only, as restic writes.
* ``open``: every data blob of a repository holding the dataset read from its pack,
  decrypted, decompressed and verified (:meth:`Repository.open_blob_into`), with restore's
  thread count, after opening the repository (key derivation) and loading its index as a
  restore does. Nothing is written.
* ``restore``: ``safehold restore latest`` of that repository, for comparison: the same work
  done together, by the command.

A full restore does both kinds of work, so on C cores it takes at least the longer of
``write`` and ``open``, and at least their CPU time together divided by C. Trees are kept
until the run ends, and the run should start at least five minutes after any large tree
was deleted: on ext4 without a journal, creating files right after tens of thousands were
deleted is several times slower until the deleted inodes are old (see bench/README.md).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import stat
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from safehold.engine.restore import RestoreOptions
from safehold.engine.restore.write import FileWriter, OpenFile
from safehold.repository.format import BLOB_DATA
from safehold.repository.repository import Repository, pack_name
from safehold.storage.local import LocalStorage

REPO_ROOT = Path(__file__).resolve().parent.parent
BLOB = 1024 * 1024  # the chunker's average size: large files are written in pieces of it
GROUP = 16 * 1024 * 1024  # bytes of files per task, about what one pack holds
PASSWORD = "bench-floor"


def dataset_tree(root: Path) -> tuple[list[str], list[tuple[str, int]]]:
    """Relative folders (parents first) and (relative path, size) of regular files."""
    dirs: list[str] = []
    files: list[tuple[str, int]] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        rel = os.path.relpath(dirpath, root)
        if rel != ".":
            dirs.append(rel)
        for name in sorted(filenames):
            st = os.lstat(os.path.join(dirpath, name))
            if stat.S_ISREG(st.st_mode):
                files.append((os.path.normpath(os.path.join(rel, name)), st.st_size))
    return dirs, files


def groups(files: list[tuple[str, int]]) -> Iterator[list[tuple[str, int]]]:
    group: list[tuple[str, int]] = []
    size = 0
    for item in files:
        group.append(item)
        size += item[1]
        if size >= GROUP:
            yield group
            group, size = [], 0
    if group:
        yield group


def timed(fn: Callable[[], object], who: int = resource.RUSAGE_SELF) -> dict[str, float]:
    """Wall and CPU time of ``fn``: this process's, or (RUSAGE_CHILDREN) its commands'."""
    before = resource.getrusage(who)
    start = time.perf_counter()
    fn()
    wall = time.perf_counter() - start
    after = resource.getrusage(who)
    return {
        "wall": wall,
        "user": after.ru_utime - before.ru_utime,
        "sys": after.ru_stime - before.ru_stime,
    }


def write_tree(
    target: Path, dirs: list[str], files: list[tuple[str, int]], *, direct: bool, threads: int
) -> None:
    data = memoryview(os.urandom(BLOB))
    owner = os.geteuid() == 0
    writer = FileWriter(owner=owner, overwrite=True, direct=direct)
    meta = (0o644, os.geteuid(), os.getegid(), 1_700_000_000 * 10**9)
    target.mkdir(parents=True)
    for rel in dirs:  # restore's planning makes every folder before any file
        os.mkdir(target / rel)

    def task(group: list[tuple[str, int]]) -> None:
        for rel, size in group:
            pieces = -(-size // BLOB)  # an empty file has none, as in restore's plan
            f = OpenFile(str(target / rel), meta, size, pieces, False)
            if not pieces:
                writer.write_empty(f)
                continue
            if pieces > 1:
                f.make_shared()
            for offset in range(0, size, BLOB):
                writer.put(f, data[: min(BLOB, size - offset)], offset)

    with ThreadPoolExecutor(threads) as pool:
        for fut in [pool.submit(task, g) for g in groups(files)]:
            fut.result()


def make_repo(repo: Path, dataset: Path, safehold: list[str]) -> None:
    env = dict(os.environ, SAFEHOLD_PASSWORD=PASSWORD)
    subprocess.run([*safehold, "-r", str(repo), "-q", "init"], env=env, check=True)
    subprocess.run([*safehold, "-r", str(repo), "-q", "backup", str(dataset)], env=env, check=True)


def open_blobs(repo_path: Path, threads: int) -> None:
    repo = Repository.open(LocalStorage(repo_path), PASSWORD.encode())
    repo.load_index()
    local = threading.local()

    def task(pack_id: bytes) -> None:
        name = pack_name(pack_id)
        pack = memoryview(repo.storage.get(name))
        scratch = getattr(local, "scratch", None)
        if scratch is None:
            scratch = local.scratch = bytearray(16 * 1024 * 1024)
        for e in repo.index.packs[pack_id].entries:
            if e.blob_type == BLOB_DATA:
                sealed = pack[e.offset : e.offset + e.length]
                repo.open_blob_into(e.blob_id, sealed, e.raw_length, name, scratch)

    index = repo.index.packs
    packs = [p for p, rec in index.items() if any(e.blob_type == BLOB_DATA for e in rec.entries)]
    with ThreadPoolExecutor(threads) as pool:
        for fut in [pool.submit(task, p) for p in packs]:
            fut.result()


def restore(repo: Path, target: Path, safehold: list[str]) -> dict[str, float]:
    env = dict(os.environ, SAFEHOLD_PASSWORD=PASSWORD)
    cmd = [*safehold, "-r", str(repo), "-q", "restore", "latest", "--target", str(target)]
    return timed(lambda: subprocess.run(cmd, env=env, check=True), resource.RUSAGE_CHILDREN)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--dataset", type=Path, default=Path("/tmp/ds_base"))
    ap.add_argument("--work", type=Path, default=Path("/tmp/safehold-bench/floor"))
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=RestoreOptions(target="").threads)
    ap.add_argument(
        "--safehold",
        default=str(REPO_ROOT / ".venv" / "bin" / "safehold"),
        help="safehold command, for making the repository that 'open' reads",
    )
    args = ap.parse_args(argv)
    if not args.dataset.is_dir():
        print(f"no dataset at {args.dataset}: run bench/run.py --make-dataset", file=sys.stderr)
        return 2
    if args.work.exists():
        shutil.rmtree(args.work)
    args.work.mkdir(parents=True)
    dirs, files = dataset_tree(args.dataset)
    total = sum(s for _, s in files)
    print(f"== {len(files):,} files, {total / 2**20:,.1f} MiB; {args.threads} threads")
    repo = args.work / "repo"
    make_repo(repo, args.dataset, args.safehold.split())

    def measure(kind: str, rep: int) -> dict[str, float]:
        subprocess.run(["sync"], check=True)  # no earlier writes flushing during this one
        time.sleep(2)
        target = args.work / f"{kind}-{rep}"
        if kind == "open":
            return timed(lambda: open_blobs(repo, args.threads))
        if kind == "restore":
            return restore(repo, target, args.safehold.split())
        direct = kind == "write"
        return timed(lambda: write_tree(target, dirs, files, direct=direct, threads=args.threads))

    kinds = ("write", "write-buffered", "open", "restore")
    results: dict[str, list[dict[str, float]]] = {kind: [] for kind in kinds}
    for rep in range(1, args.reps + 1):
        for kind, runs in results.items():
            r = measure(kind, rep)
            runs.append(r)
            cpu = r["user"] + r["sys"]
            print(
                f"  rep{rep} {kind:15s} wall {r['wall']:6.2f} s  cpu {cpu:6.2f} s "
                f"(user {r['user']:.2f}, sys {r['sys']:.2f})",
                flush=True,
            )
    print("== medians")
    summary = {}
    for kind, rs in results.items():
        wall = statistics.median(r["wall"] for r in rs)
        cpu = statistics.median(r["user"] + r["sys"] for r in rs)
        summary[kind] = {"wall": round(wall, 2), "cpu": round(cpu, 2)}
        print(f"  {kind:15s} wall {wall:6.2f} s  cpu {cpu:6.2f} s")
    cores = os.cpu_count() or 1
    floor = max(
        summary["write"]["wall"],
        summary["open"]["wall"],
        (summary["write"]["cpu"] + summary["open"]["cpu"]) / cores,
    )
    actual = summary["restore"]["wall"]
    print(
        f"== a full restore needs at least {floor:.2f} s here ({cores} cores); "
        f"safehold restore took {actual:.2f} s ({actual / floor:.2f}x the floor)"
    )
    print(json.dumps({"files": len(files), "bytes": total, "floor": round(floor, 2), **summary}))
    shutil.rmtree(args.work)
    return 0


if __name__ == "__main__":
    sys.exit(main())
