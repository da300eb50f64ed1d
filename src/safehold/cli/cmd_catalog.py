"""``safehold catalog resync``: rebuild what the service's catalog knows of snapshots from
the repository, their source of truth."""

from __future__ import annotations

import argparse
from typing import Any

from safehold.cli.context import Context
from safehold.cli.service_args import add_service_arguments, open_service_database


def register(sub: Any) -> None:
    """Add ``catalog`` to the command line's subcommands."""
    p: argparse.ArgumentParser = sub.add_parser(
        "catalog",
        help="rebuild the service's catalog from the repository",
        description="'resync': read the repository's snapshots of each plan's source and "
        "make the catalog agree: a snapshot no succeeded run names (made by hand with "
        "'backup --config', or before the catalog existed) gets a succeeded run (trigger "
        "'resync'), so the plan's last success and RPO count it; runs whose snapshot is "
        "no longer in the repository (forgotten) are listed and left as they are.",
    )
    p.add_argument("action", choices=("resync",))
    add_service_arguments(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace, ctx: Context) -> int:
    """``catalog resync``: the exit code."""
    from safehold.cli.config_run import open_configured_repository
    from safehold.service.plans import plans_from_config
    from safehold.service.resync import SnapshotSeen, resync

    repo = open_configured_repository(args.config, ctx)
    seen = [
        SnapshotSeen(
            snap.id,
            snap.source_name,
            snap.time,
            snap.summary,
            chain_id=snap.chain,
            chain_seq=snap.chain_seq,
            isolated=snap.isolated,
        )
        for snap in repo.list_snapshots()
    ]
    with open_service_database(args) as (config, database):
        report = resync(database.engine, plans_from_config(config), seen)
    if ctx.json:
        ctx.emit_json(report.to_json())
        return 0
    ctx.print(
        f"{len(report.plans)} plan(s), {report.snapshots} of their snapshot(s) in the "
        f"repository: {report.known} known to the catalog, {len(report.added)} added"
    )
    for added in report.added:
        ctx.print(f"  added    {added['plan']}  snapshot {added['snapshot'][:8]}  "
                  f"{added['time']:%Y-%m-%d %H:%M:%S}  (run {added['run_id'][:8]})")  # fmt: skip
    if report.forgotten:
        ctx.print(f"{len(report.forgotten)} run(s) name a snapshot no longer in the repository:")
        for gone in report.forgotten:
            ctx.print(f"  forgotten  {gone['plan']}  snapshot {gone['snapshot'][:8]}  "
                      f"(run {gone['run_id'][:8]})")  # fmt: skip
    return 0
