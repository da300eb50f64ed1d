#!/usr/bin/env python3
"""Measure chunking parameters on the benchmark data: how many chunks, how big, and how
much new data a 5 % mutation produces under each setting (what deduplication saves).

Usage: uv run python bench/chunk_sizes.py BASE_DIR MUTATED_DIR [--seed N]

Each setting is MIN/AVG/MAX in KiB. Files no larger than MIN are one chunk, as in the
backup engine. Prints a Markdown table for docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import os
import time

import blake3

from safehold.repository.chunker import Chunker, ChunkerParams

KiB = 1024
SETTINGS = [(256, 512, 4096), (512, 1024, 8192), (1024, 2048, 8192), (1024, 4096, 16384)]


def files(root: str) -> list[str]:
    out = []
    for d, _dirs, names in os.walk(root):
        out.extend(os.path.join(d, n) for n in names)
    return sorted(out)


def chunk_tree(root: str, params: ChunkerParams) -> dict[bytes, int]:
    chunker = Chunker(params)
    buf = bytearray(2 * params.max_size)
    found: dict[bytes, int] = {}
    for path in files(root):
        with open(path, "rb", buffering=0) as f:
            for piece in chunker.cut_stream(f.readinto, buf):
                found[blake3.blake3(piece).digest()] = len(piece)
    return found


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("base")
    ap.add_argument("mutated")
    ap.add_argument("--seed", type=int, default=12345)
    args = ap.parse_args()
    print("| min / avg / max KiB | chunks | mean chunk KiB | new data after mutation MiB | s |")
    print("|---|---|---|---|---|")
    for lo, avg, hi in SETTINGS:
        params = ChunkerParams(
            min_size=lo * KiB, avg_size=avg * KiB, max_size=hi * KiB, seed=args.seed
        )
        t0 = time.monotonic()
        base = chunk_tree(args.base, params)
        mutated = chunk_tree(args.mutated, params)
        new = sum(size for h, size in mutated.items() if h not in base)
        mean = sum(base.values()) / len(base) / KiB
        print(
            f"| {lo} / {avg} / {hi} | {len(base):,} | {mean:.0f} | {new / 2**20:.1f} | "
            f"{time.monotonic() - t0:.1f} |"
        )


if __name__ == "__main__":
    main()
