"""``safehold stats``: sizes of snapshots and of the repository."""

from __future__ import annotations

import argparse
from typing import Any

from safehold.cli.context import Context, add_latest_filters, find_snapshot, human_bytes
from safehold.engine.inspect.stats import ALL, MODES, Stats, compute_stats
from safehold.repository.snapshot import Snapshot


def register(sub: Any) -> None:
    """Add ``stats`` and its options to the parser."""
    p: argparse.ArgumentParser = sub.add_parser(
        "stats",
        help="show how much snapshots hold and the repository stores",
        description="Measure SNAPSHOTs (id prefixes or 'latest'; default: every snapshot, "
        "plus repository totals). restore-size: files, folders and the bytes a restore would "
        "write. raw-data: the unique blobs they reference, in plaintext and as stored. "
        "all: both, with the deduplication ratio (restore size / unique file data) and the "
        "compression ratio (plaintext / stored).",
    )
    p.add_argument("snapshots", nargs="*", metavar="SNAPSHOT", help="snapshot id or 'latest'")
    p.add_argument("--mode", choices=MODES, default=ALL, help="what to count (default: all)")
    add_latest_filters(p)
    p.set_defaults(func=run)


def _ratio(r: float | None) -> str:
    return f"{r:.2f}x" if r is not None else "-"


def lines(st: Stats) -> list[str]:
    """The lines ``stats`` prints for the parts computed."""
    out: list[str] = []
    if st.repository:
        r = st.repository
        out += [
            f"snapshots:          {r.snapshots} in {r.chains} chain(s)",
            f"packs:              {r.packs}, {human_bytes(r.pack_bytes)} stored",
        ]
    if st.restore_size:
        rs = st.restore_size
        out += [
            f"restore size:       {human_bytes(rs.bytes)} "
            f"({rs.files} files, {rs.dirs} folders, {rs.others} other)",
        ]
    if st.raw_data:
        rd = st.raw_data
        out += [
            f"raw data:           {human_bytes(rd.raw_bytes)} in {rd.blobs} blobs "
            f"({rd.data_blobs} data, {rd.tree_blobs} tree); "
            f"file data {human_bytes(rd.data_raw_bytes)}",
            f"stored:             {human_bytes(rd.stored_bytes)}",
        ]
        if rd.missing_blobs:
            out.append(
                f"missing:            {rd.missing_blobs} blob(s) not in the index "
                "(run 'safehold check')"
            )
    if st.restore_size and st.raw_data:
        out.append(f"deduplication:      {_ratio(st.dedup_ratio)}")
    if st.raw_data:
        out.append(f"compression:        {_ratio(st.compression_ratio)}")
    return out


def run(args: argparse.Namespace, ctx: Context) -> int:
    """``stats``: how much the snapshots hold and the repository stores."""
    repo = ctx.open_repo()
    with repo.lock("read"):
        repo.load_index()
        every = repo.list_snapshots()
        if args.snapshots:
            snaps: list[Snapshot] = []
            for ref in args.snapshots:
                s = find_snapshot(repo, ref, args, snapshots=every)
                if s.id not in {x.id for x in snaps}:
                    snaps.append(s)
        else:
            snaps = every
        st = compute_stats(repo, snaps, mode=args.mode, whole_repository=not args.snapshots)
    if ctx.json:
        doc = st.to_json()
        doc["mode"] = args.mode
        doc["snapshots"] = [s.id for s in snaps]
        ctx.emit_json(doc)
        return 0
    if args.snapshots:
        ctx.print(f"stats of {', '.join(s.short_id for s in snaps)} ({args.mode})")
    else:
        ctx.print(f"stats of the repository ({len(snaps)} snapshots, {args.mode})")
    for line in lines(st):
        ctx.print(line)
    return 0
