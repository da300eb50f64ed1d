"""``safehold chain``: list chains, and finish one by hand.

A chain is a full backup and the incrementals that follow it; deduplication reaches only
inside a chain. Finishing a chain writes a marker (``chains/<id>``): the next backup of its
source then starts a new chain with a full upload, and the finished chain can be kept or
forgotten as a whole.
"""

from __future__ import annotations

import argparse
import os
from typing import Any

from safehold.cli.context import Context
from safehold.engine.inspect.stats import ChainInfo, list_chains
from safehold.errors import SnapshotNotFound, UsageError
from safehold.ids import HexId
from safehold.repository.snapshot import Snapshot


def register(sub: Any) -> None:
    """Add ``chain`` and its subcommands (list, finish) to the parser."""
    p: argparse.ArgumentParser = sub.add_parser(
        "chain",
        help="list chains, or finish one",
        description="A chain is a full backup and the incrementals that follow it; "
        "deduplication reaches only inside a chain.",
    )
    actions = p.add_subparsers(dest="chain_action", metavar="ACTION", required=True)

    ls = actions.add_parser(
        "list",
        help="list chains and their snapshots",
        description="List chains, oldest first, with their snapshots in chain order and "
        "whether each chain is open, finished, or isolated.",
    )
    _filters(ls, "only chains with a snapshot")
    ls.set_defaults(func=run_list)

    fin = actions.add_parser(
        "finish",
        help="finish a chain: the next backup of its source starts a new one",
        description="Finish the chain of SNAPSHOT, or the chain whose id starts with "
        "CHAIN (default: the chain of the latest snapshot matching --host/--path/--tag). "
        "The next backup of that source starts a new chain with a full upload.",
    )
    fin.add_argument(
        "ref", nargs="?", metavar="SNAPSHOT|CHAIN", help="snapshot id, chain id prefix or 'latest'"
    )
    _filters(fin, "with the default or 'latest': the latest snapshot")
    fin.set_defaults(func=run_finish)


def _filters(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--host", help=f"{what} of this host")
    p.add_argument("--path", action="append", default=[], help=f"{what} of this path")
    p.add_argument("--tag", action="append", default=[], help=f"{what} with this tag")


def _paths(args: argparse.Namespace) -> list[str] | None:
    return [os.path.abspath(p) for p in args.path] or None


def _matches(s: Snapshot, args: argparse.Namespace) -> bool:
    paths = _paths(args)
    if args.host and s.hostname != args.host:
        return False
    if paths and sorted(s.paths) != sorted(paths):
        return False
    return not (args.tag and not set(args.tag) <= set(s.tags))


def chain_json(c: ChainInfo) -> dict[str, Any]:
    """A chain as ``chain list --json`` prints it."""
    return {
        "id": c.id,
        "status": c.status,
        "finished": c.finished,
        "isolated": c.isolated,
        "hosts": sorted({s.hostname for s in c.snapshots}),
        "paths": sorted({p for s in c.snapshots for p in s.paths}),
        "snapshots": [
            {
                "id": s.id,
                "short_id": s.short_id,
                "time": s.time.isoformat(),
                "seq": s.chain_seq,
                "position": "full" if s.chain_seq == 0 else "incremental",
            }
            for s in c.snapshots
        ],
    }


def run_list(args: argparse.Namespace, ctx: Context) -> int:
    """``chain list``: every chain with its snapshots and status."""
    repo = ctx.open_repo()
    with repo.lock("read"):
        chains = list_chains(repo.list_snapshots(), repo.finished_chains())
    chains = [c for c in chains if any(_matches(s, args) for s in c.snapshots)]
    if ctx.json:
        ctx.emit_json([chain_json(c) for c in chains])
        return 0
    for c in chains:
        hosts = ", ".join(sorted({s.hostname for s in c.snapshots}))
        paths = ", ".join(sorted({p for s in c.snapshots for p in s.paths}))
        ctx.print(
            f"chain {c.id[:8]}  {c.status:8}  {len(c.snapshots)} snapshot(s)  {hosts}  {paths}"
        )
        for s in c.snapshots:
            pos = "full" if s.chain_seq == 0 else f"incremental {s.chain_seq}"
            ctx.print(f"  {s.short_id}  {s.time:%Y-%m-%d %H:%M:%S}  {pos}")
    ctx.print(f"{len(chains)} chain(s)")
    return 0


def resolve_chain(ref: str, snaps: list[Snapshot], chains: list[ChainInfo]) -> HexId:
    """The chain id that ``ref`` (a snapshot id prefix or a chain id prefix) names."""
    found = {s.chain for s in snaps if s.id.startswith(ref)}
    found |= {c.id for c in chains if c.id.startswith(ref)}
    if not found:
        raise SnapshotNotFound(
            f"no snapshot or chain id starts with {ref!r}", hint="see 'safehold chain list'"
        )
    if len(found) > 1:
        raise UsageError(f"{ref!r} names {len(found)} chains", hint="give more digits")
    return found.pop()


def run_finish(args: argparse.Namespace, ctx: Context) -> int:
    """``chain finish``: mark a chain finished, so that the next backup of its source starts
    a new one."""
    repo = ctx.open_repo()
    with repo.lock("chain"):
        snaps = repo.list_snapshots()
        finished = repo.finished_chains()
        chains = list_chains(snaps, finished)
        if args.ref is None or args.ref == "latest":
            latest = repo.find_snapshot(
                "latest",
                host=args.host,
                paths=_paths(args),
                tags=args.tag or None,
                snapshots=snaps,
            )
            chain_id = latest.chain
        else:
            chain_id = resolve_chain(args.ref, snaps, chains)
        info = next(c for c in chains if c.id == chain_id)
        if info.isolated:
            raise UsageError(
                f"chain {chain_id[:8]} is an isolated snapshot's: it already shares nothing "
                "and never gets another snapshot, so there is nothing to finish",
                hint="name a regular chain (see 'safehold chain list')",
            )
        already = chain_id in finished
        if not already:
            repo.finish_chain(chain_id)
    if ctx.json:
        doc = chain_json(info)
        doc.update(status="finished", finished=True, already_finished=already)
        ctx.emit_json(doc)
    elif already:
        ctx.print(f"chain {chain_id[:8]} was already finished")
    else:
        ctx.print(
            f"chain {chain_id[:8]} finished ({len(info.snapshots)} snapshot(s)); the next "
            "backup of its source starts a new chain with a full upload"
        )
    return 0
