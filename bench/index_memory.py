"""Memory and speed of the in-memory index (repository/index.py) on synthetic blobs.

Usage (from the repository root)::

    uv run python bench/index_memory.py [--blobs 2000000] [--per-pack 16]

Builds an index of N random 32-byte blob ids in packs of ``--per-pack`` blobs (16 is a
data pack of 16 MiB holding 1 MiB chunks, the worst realistic case for per-pack costs),
then reports bytes per blob (tracemalloc: everything the index holds, the per-pack tables
included), the time per ``add_pack`` blob, and lookup / has_in_chain times for present and
absent ids. A plain dict of Location objects, the previous design, is measured alongside.
Times are CPU time of this process (``time.process_time_ns``), so that other work on a
shared machine disturbs them less than it would wall time.
"""

from __future__ import annotations

import argparse
import gc
import os
import random
import time
import tracemalloc
from collections.abc import Callable

from safehold.repository.index import Index, Location, PackRecord
from safehold.repository.pack import PackEntry

CHAIN = b"c" * 16


def make_records(blobs: int, per_pack: int) -> list[PackRecord]:
    rnd = random.Random(42)
    recs = []
    for p in range(0, blobs, per_pack):
        entries = tuple(
            PackEntry(0, 8 + i * 1000, 1000, 2000, rnd.randbytes(32))
            for i in range(min(per_pack, blobs - p))
        )
        recs.append(PackRecord(rnd.randbytes(32), CHAIN, 16 << 20, entries))
    return recs


def per_call_ns(fn: Callable[[bytes], object], keys: list[bytes]) -> float:
    start = time.process_time_ns()
    for k in keys:
        fn(k)
    return (time.process_time_ns() - start) / len(keys)


def build(recs: list[PackRecord]) -> Index:
    index = Index()
    for rec in recs:
        index.add_pack(rec)
    index.flush()
    return index


def traced(fn: Callable[[], object]) -> tuple[object, int, int]:
    """Runs ``fn`` under tracemalloc; returns its result, bytes still held, peak bytes."""
    gc.collect()
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    out = fn()
    held, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return out, held - base, peak - base


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--blobs", type=int, default=2_000_000)
    ap.add_argument("--per-pack", type=int, default=16)
    args = ap.parse_args()
    n = args.blobs
    recs, recs_bytes, _ = traced(lambda: make_records(n, args.per_pack))
    assert isinstance(recs, list)
    rnd = random.Random(1)
    present = [rnd.choice(rnd.choice(recs).entries).blob_id for _ in range(50_000)]
    absent = [os.urandom(32) for _ in range(50_000)]

    # The records exist before and after: only what the index itself holds is counted.
    index, held, peak = traced(lambda: build(recs))
    assert isinstance(index, Index)
    print(f"blobs: {n:,} in {len(recs):,} packs of {args.per_pack}")
    print(
        f"compact index: {held / n:.1f} B/blob held ({index.memory() / n:.1f} in the sorted run),"
        f" {peak / n:.1f} B/blob peak while loading"
    )
    del index
    gc.collect()
    start = time.process_time_ns()
    index = build(recs)
    print(
        "  load (add_pack of every pack, merges included): "
        f"{(time.process_time_ns() - start) / n:.0f} ns/blob"
    )
    print(
        f"  lookup present {per_call_ns(index.lookup, present):.0f} ns, "
        f"absent {per_call_ns(index.lookup, absent):.0f} ns"
    )
    has = index.has_in_chain
    print(
        f"  has_in_chain present {per_call_ns(lambda k: has(k, CHAIN), present):.0f} ns, "
        f"absent {per_call_ns(lambda k: has(k, CHAIN), absent):.0f} ns"
    )
    fresh = [os.urandom(32) for _ in range(200_000)]
    extra = [
        PackRecord(
            os.urandom(32), CHAIN, 1, tuple(PackEntry(0, 8, 1, 1, b) for b in fresh[i : i + 16])
        )
        for i in range(0, len(fresh), 16)
    ]
    start = time.process_time_ns()
    for rec in extra:
        index.add_pack(rec)
    index.flush()
    print(
        "  add_pack into the loaded index: "
        f"{(time.process_time_ns() - start) / len(fresh):.0f} ns/blob"
    )
    del index, extra, fresh
    gc.collect()

    def previous() -> tuple[dict[bytes, PackRecord], dict[bytes, Location]]:
        packs: dict[bytes, PackRecord] = {}
        blobs: dict[bytes, Location] = {}
        for rec in recs:
            packs[rec.pack_id] = rec
            for e in rec.entries:
                blobs[e.blob_id] = Location(
                    rec.pack_id, e.blob_type, e.offset, e.length, e.raw_length
                )
        return packs, blobs

    old, held, _ = traced(previous)
    assert isinstance(old, tuple)
    print(
        f"previous design (dict of Location, records kept): {(held + recs_bytes) / n:.1f} B/blob "
        f"({held / n:.1f} for the dicts, {recs_bytes / n:.1f} for the records)"
    )
    start = time.process_time_ns()
    old = previous()
    print(f"  insert {(time.process_time_ns() - start) / n:.0f} ns/blob")
    get = old[1].get
    print(
        f"  lookup present {per_call_ns(get, present):.0f} ns, "
        f"absent {per_call_ns(get, absent):.0f} ns"
    )


if __name__ == "__main__":
    main()
