#!/usr/bin/env python3
"""A tree of many small mail-sized files, and the change made to it before a re-backup.

Standard library only, like bench/run.py, which calls it the way it calls make_dataset.py:

    python3 bench/small_files.py gen DIR FILES SEED [--folders N]
    python3 bench/small_files.py mutate DIR PCT SEED

``gen`` writes FILES files (default layout: 200,000 in 2,000 folders, ``boxNN/fNN/``)
of 200-4,500 bytes each, triangular with its mode at 550 bytes, so 1,750 bytes on average:
200,000 files hold about 334 MiB, like a maildir or a source tree. Each file is a mail:
headers with a unique Message-ID (no two files are equal, so none is deduplicated away)
and a body of paragraphs drawn from a pool, so it compresses about as text does.

``mutate`` changes the tree as mail arrives and is filed: PCT % of the file count are new
files spread over the folders, and PCT/5 % each are deleted, renamed (a maildir flag
change: same content, new name) and appended to. It prints a JSON summary, as
make_dataset.py's ``mutate`` does.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
from collections.abc import Sequence
from pathlib import Path

MIN_SIZE, MODE_SIZE, MAX_SIZE = 200, 550, 4500
BASE_MTIME = 1_764_000_000  # fixed, so that two trees of one seed are the same tree
WORDS = [
    "the",
    "meeting",
    "report",
    "budget",
    "review",
    "draft",
    "please",
    "attached",
    "thanks",
    "regards",
    "project",
    "schedule",
    "invoice",
    "account",
    "server",
    "backup",
    "release",
    "update",
    "monday",
    "friday",
    "team",
    "client",
    "order",
    "shipping",
    "question",
    "answer",
    "issue",
    "fixed",
    "deploy",
    "config",
    "database",
    "table",
    "query",
    "agenda",
    "notes",
    "minutes",
    "lunch",
    "call",
    "tomorrow",
    "today",
    "week",
    "month",
    "quarter",
    "plan",
]


class Mails:
    """Makes mail-shaped bytes from a pool of paragraphs (fast: no per-word work per file)."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.paragraphs = [self._paragraph() for _ in range(4000)]

    def _paragraph(self) -> bytes:
        n = self.rng.randint(8, 120)
        text = " ".join(self.rng.choice(WORDS) for _ in range(n)).capitalize()
        return (text + ".\n\n").encode()

    def size(self) -> int:
        return int(self.rng.triangular(MIN_SIZE, MAX_SIZE, MODE_SIZE))

    def mail(self, ident: str, size: int) -> bytes:
        rng = self.rng
        head = (
            f"Return-Path: <{rng.choice(WORDS)}{rng.randint(1, 999)}@example.org>\n"
            f"Message-ID: <{ident}.{rng.getrandbits(64):016x}@mail.example.org>\n"
            f"From: {rng.choice(WORDS).title()} <{rng.choice(WORDS)}@example.com>\n"
            f"To: {rng.choice(WORDS)}@example.net\n"
            f"Subject: {' '.join(rng.choice(WORDS) for _ in range(rng.randint(2, 8)))}\n"
            f"Date: {rng.randint(1, 28)} Nov 2026 {rng.randint(0, 23):02d}:"
            f"{rng.randint(0, 59):02d}:{rng.randint(0, 59):02d} +0000\n\n"
        ).encode()
        parts = [head]
        have = len(head)
        while have < size:
            p = rng.choice(self.paragraphs)
            parts.append(p)
            have += len(p)
        return b"".join(parts)[:size]


def folders(count: int) -> list[str]:
    """``boxNN/fNN``: two levels, like users' mail folders (or a source tree's packages)."""
    per_box = 40
    return [f"box{i // per_box:03d}/f{i % per_box:02d}" for i in range(count)]


def write(path: Path, data: bytes, mtime: int) -> None:
    with open(path, "wb") as f:
        f.write(data)
    os.utime(path, (mtime, mtime))


def cmd_gen(root: Path, files: int, seed: int, n_folders: int) -> None:
    rng = random.Random(f"small-files gen {seed}")
    mails = Mails(rng)
    names = folders(n_folders)
    total = 0
    for i, rel in enumerate(names):
        d = root / rel
        d.mkdir(parents=True)
        # Spread files evenly; the first `files % n_folders` folders hold one more.
        count = files // n_folders + (i < files % n_folders)
        for k in range(count):
            size = mails.size()
            write(d / f"m{k:05d}.eml", mails.mail(f"{seed}.{i}.{k}", size), BASE_MTIME + k)
            total += size
    print(json.dumps({"files": files, "folders": n_folders, "bytes": total}))


def cmd_mutate(root: Path, pct: float, seed: int) -> None:
    rng = random.Random(f"small-files mutate {seed} {pct}")
    mails = Mails(rng)
    dirs = sorted({p.parent for p in root.rglob("*.eml")})
    existing = sorted(root.rglob("*.eml"))
    n_new = max(1, round(len(existing) * pct / 100))
    n_each = max(1, n_new // 5)
    victims = rng.sample(existing, min(len(existing), 3 * n_each))
    deleted, renamed, appended = (
        victims[:n_each],
        victims[n_each : 2 * n_each],
        victims[2 * n_each :],
    )
    new_bytes = 0
    for k in range(n_new):
        size = mails.size()
        d = rng.choice(dirs)
        write(d / f"new{seed}-{k:06d}.eml", mails.mail(f"new.{seed}.{k}", size), BASE_MTIME + 86400)
        new_bytes += size
    for p in deleted:
        p.unlink()
    for p in renamed:
        p.rename(p.with_name(p.stem + ",S.eml"))
    appended_bytes = 0
    for p in appended:
        extra = b"\n-- \nread " + str(rng.getrandbits(32)).encode() + b"\n"
        with open(p, "ab") as f:
            f.write(extra)
        appended_bytes += len(extra)
    print(
        json.dumps(
            {
                "new_files": {"files": n_new, "bytes": new_bytes},
                "deleted": {"files": len(deleted)},
                "renamed": {"files": len(renamed)},
                "appended": {"files": len(appended), "bytes": appended_bytes},
            },
            indent=1,
        )
    )


def main(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    g = sub.add_parser("gen", help="write a new tree")
    g.add_argument("dir", type=Path)
    g.add_argument("files", type=int)
    g.add_argument("seed", type=int)
    g.add_argument("--folders", type=int, default=0, help="default: one per 100 files")
    m = sub.add_parser("mutate", help="change a tree before the next backup")
    m.add_argument("dir", type=Path)
    m.add_argument("pct", type=float)
    m.add_argument("seed", type=int)
    args = p.parse_args(argv)
    if args.cmd == "gen":
        if args.dir.exists():
            raise SystemExit(f"{args.dir} exists")
        n_folders = args.folders or max(1, args.files // 100)
        cmd_gen(args.dir, args.files, args.seed, n_folders)
    else:
        cmd_mutate(args.dir, args.pct, args.seed)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
