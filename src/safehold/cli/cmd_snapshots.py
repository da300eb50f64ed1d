"""``safehold snapshots``: list snapshots."""

from __future__ import annotations

import argparse
from typing import Any

from safehold.cli.config_run import add_config_repository_argument, repository_of
from safehold.cli.context import Context, human_bytes
from safehold.errors import UsageError
from safehold.repository.snapshot import Snapshot


def register(sub: Any) -> None:
    """Add ``snapshots`` and its options to the parser."""
    p: argparse.ArgumentParser = sub.add_parser(
        "snapshots", help="list snapshots", description="List snapshots, oldest first."
    )
    add_filters(p)
    add_config_repository_argument(p)
    p.add_argument(
        "--latest",
        type=int,
        metavar="N",
        help="only the N newest snapshots of each host and set of paths (as restic)",
    )
    p.set_defaults(func=run)


def add_filters(p: argparse.ArgumentParser) -> None:
    """Add the ``--host``, ``--tag`` and ``--path`` filters several commands share."""
    p.add_argument("--host", help="only snapshots of this host")
    p.add_argument("--tag", action="append", default=[], help="only snapshots with this tag")
    p.add_argument("--path", action="append", default=[], help="only snapshots of this path")


def filtered(snaps: list[Snapshot], args: argparse.Namespace) -> list[Snapshot]:
    """The snapshots matching every filter given (``--host``, all ``--tag``s, all ``--path``s)."""
    out = []
    for s in snaps:
        if args.host and s.hostname != args.host:
            continue
        if args.tag and not set(args.tag) <= set(s.tags):
            continue
        if args.path and not set(args.path) <= set(s.paths):
            continue
        out.append(s)
    return out


def latest(snaps: list[Snapshot], n: int) -> list[Snapshot]:
    """The ``n`` newest of each host and set of paths, in the order of ``snaps``."""
    seen: dict[tuple[str, tuple[str, ...]], int] = {}
    keep = set()
    for s in sorted(snaps, key=lambda s: (s.time, s.id), reverse=True):
        group = (s.hostname, tuple(sorted(s.paths)))
        if seen.get(group, 0) < n:
            seen[group] = seen.get(group, 0) + 1
            keep.add(s.id)
    return [s for s in snaps if s.id in keep]


def snapshot_json(s: Snapshot) -> dict[str, Any]:
    """A snapshot as ``--json`` output prints it: its stored JSON plus its id."""
    d = s.to_json()
    d["id"] = s.id
    d["short_id"] = s.short_id
    return d


def run(args: argparse.Namespace, ctx: Context) -> int:
    """``snapshots``: list them, oldest first."""
    repo = repository_of(args, ctx)
    snaps = filtered(repo.list_snapshots(), args)
    if args.latest is not None:
        if args.latest < 1:
            raise UsageError("--latest needs a number of snapshots of at least 1")
        snaps = latest(snaps, args.latest)
    if ctx.json:
        ctx.emit_json([snapshot_json(s) for s in snaps])
        return 0
    ctx.print(f"{'ID':8}  {'Time':19}  {'Host':14}  {'Chain':13}  {'Size':>10}  Paths / Tags")
    for s in snaps:
        chain = f"{s.chain[:8]}+{s.chain_seq}" if not s.isolated else f"{s.chain[:8]} iso"
        size = human_bytes(int(s.summary.get("total_bytes", 0)))
        tags = f"  [{', '.join(s.tags)}]" if s.tags else ""
        errs = f"  ({len(s.errors)} unreadable)" if s.errors else ""
        ctx.print(
            f"{s.short_id}  {s.time:%Y-%m-%d %H:%M:%S}  {s.hostname[:14]:14}  {chain:13}  "
            f"{size:>10}  {', '.join(s.paths)}{tags}{errs}"
        )
    ctx.print(f"{len(snaps)} snapshot(s)")
    return 0
