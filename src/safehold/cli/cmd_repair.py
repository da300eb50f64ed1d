"""``safehold repair index``: rebuild the index from the packs alone."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from safehold.cli.context import Context
from safehold.cli.progress import make_progress
from safehold.engine.verify import run_repair_index
from safehold.errors import ExitCode


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "repair",
        help="repair the repository (rebuild the index)",
        description="Repair what can be derived again from the data that is stored.",
    )
    what = p.add_subparsers(dest="repair_what", metavar="WHAT", required=True)
    ip: argparse.ArgumentParser = what.add_parser(
        "index",
        help="rebuild the index from the packs alone",
        description="Read the header of every pack, write new index files from them, then "
        "delete the old index files. Needs an exclusive lock. Packs whose header cannot be "
        "read are reported and left out (exit code 4); packs prune put in the trash are "
        "left out unless --include-trash.",
    )
    ip.add_argument(
        "--include-trash",
        action="store_true",
        help="also index packs that prune has scheduled for deletion",
    )
    ip.set_defaults(func=run_index)


def run_index(args: argparse.Namespace, ctx: Context) -> int:
    repo = ctx.open_repo()
    report = run_repair_index(
        repo, include_trash=args.include_trash, progress=make_progress(ctx.progress_enabled())
    )
    if ctx.json:
        ctx.emit_json(report.to_json())
    else:
        ctx.print(
            f"indexed {report.packs} packs holding {report.blobs} blobs in "
            f"{len(report.written)} new index file(s); removed {len(report.removed)} old "
            "index file(s)"
        )
        if report.trash_skipped:
            ctx.print(f"left out {report.trash_skipped} pack(s) that prune put in the trash")
        for name, why in report.damaged:
            print(f"error: {name}: damaged pack left out of the index: {why}")
    if report.damaged:
        print(
            f"safehold: {len(report.damaged)} damaged pack(s) left out; "
            "'safehold check' lists the snapshots and paths that needed them",
            file=sys.stderr,
        )
        return ExitCode.INTEGRITY
    return ExitCode.OK
