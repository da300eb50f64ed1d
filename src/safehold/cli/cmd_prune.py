"""``safehold prune``: free the space of data that no snapshot needs."""

from __future__ import annotations

import argparse
import re
import sys
from datetime import timedelta
from typing import Any

from safehold.cli.context import Context, human_bytes
from safehold.cli.progress import make_progress
from safehold.repository.prune import (
    DEFAULT_LOCK_SKEW,
    DEFAULT_MAX_UNUSED,
    PruneOptions,
    PruneResult,
    SweepResult,
    prune,
)
from safehold.repository.retention import RetentionReport, extend_retention

_SECONDS = {"s": 1, "m": 60, "h": 3600}


def register(sub: Any) -> None:
    """Add ``prune`` and its options to the parser."""
    p: argparse.ArgumentParser = sub.add_parser(
        "prune",
        help="delete data no snapshot needs (backups may keep running)",
        description="Remove packs that no snapshot uses and repack mostly unused ones. "
        "Packs are first put in the trash and deleted only once no process that could "
        "still use them holds a lock, so backups may run meanwhile; space such a backup "
        "blocks is freed by a later prune.",
    )
    add_prune_options(p)
    p.add_argument("--dry-run", action="store_true", help="only print what would be done")
    p.add_argument(
        "--config",
        metavar="FILE",
        help="take the repository and its password from FILE's repository: block (what "
        "'safehold serve' runs on the block's prune: schedule)",
    )
    p.set_defaults(func=run)


def add_prune_options(p: argparse.ArgumentParser) -> None:
    """Add the options ``prune`` shares with ``forget --prune``."""
    p.add_argument(
        "--max-unused",
        type=parse_percent,
        default=DEFAULT_MAX_UNUSED,
        metavar="PCT",
        help=f"repack a pack when more than PCT of it is unused (default {DEFAULT_MAX_UNUSED:g}%%;"
        " 100%% or 'unlimited' never repacks)",
    )
    p.add_argument(
        "--lock-skew",
        type=parse_seconds,
        default=DEFAULT_LOCK_SKEW,
        metavar="TIME",
        help="margin for clocks that disagree between hosts, such as 90s, 5m or 1h "
        f"(default {int(DEFAULT_LOCK_SKEW.total_seconds() // 60)}m)",
    )


def parse_percent(text: str) -> float:
    """``--max-unused``'s value as a percentage (``unlimited``: 100)."""
    if text.strip().lower() == "unlimited":
        return 100.0
    try:
        value = float(text.strip().removesuffix("%"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a percentage: {text!r} (write e.g. 10%)") from None
    if not 0 <= value <= 100:
        raise argparse.ArgumentTypeError(f"{text!r} is not between 0% and 100%")
    return value


def parse_seconds(text: str) -> timedelta:
    """A time span written ``90s``, ``5m`` or ``1h`` (seconds without a unit)."""
    m = re.fullmatch(r"\s*([0-9]+)\s*([smh]?)\s*", text)
    if not m:
        raise argparse.ArgumentTypeError(f"not a time span: {text!r} (write e.g. 90s, 5m, 1h)")
    return timedelta(seconds=int(m.group(1)) * _SECONDS[m.group(2) or "s"])


def options_from(args: argparse.Namespace, *, dry_run: bool) -> PruneOptions:
    """The prune options the command line gives."""
    return PruneOptions(max_unused=args.max_unused, lock_skew=args.lock_skew, dry_run=dry_run)


def run(args: argparse.Namespace, ctx: Context) -> int:
    """``prune``: delete what no snapshot needs, in two phases (backups may keep running)."""
    if args.config:
        from safehold.cli.config_run import open_configured_repository

        repo = open_configured_repository(args.config, ctx)
    else:
        repo = ctx.open_repo()
    progress = make_progress(ctx.progress_enabled())
    result = prune(repo, options_from(args, dry_run=args.dry_run), progress=progress)
    # Immutable mode: what is still needed gets a new retention end, after the prune so
    # that what it left in the trash runs out (repository/retention.py).
    retention = extend_retention(repo) if not args.dry_run else None
    if ctx.json:
        doc = result.to_json()
        doc["retention"] = retention.to_json() if retention else None
        ctx.emit_json(doc)
    else:
        print_result(ctx, result)
        if retention:
            print_retention(ctx, retention)
    return 0


def print_result(ctx: Context, r: PruneResult) -> None:
    """Print what a prune did (or would do, for a dry run)."""
    would = "would be " if r.dry_run else ""
    _print_sweep(ctx, "trash from earlier runs", r.earlier, would)
    m = r.mark
    ctx.print(
        f"{m.snapshots} snapshot(s); {m.packs} indexed pack(s), {human_bytes(m.bytes)}"
        + (f"; {m.packs_unindexed} unindexed pack(s) left for backups" if m.packs_unindexed else "")
    )
    if not (m.packs_garbage or m.packs_repacked):
        ctx.print("no unused data")
    else:
        ctx.print(
            f"{m.packs_garbage} unused pack(s) ({human_bytes(m.bytes_garbage)}) {would}marked"
        )
        if m.packs_repacked:
            into = f" into {m.packs_written} new pack(s)" if not r.dry_run else ""
            ctx.print(
                f"{m.packs_repacked} mostly unused pack(s) ({human_bytes(m.bytes_repacked)}) "
                f"{would}repacked: {m.blobs_repacked} blob(s), {human_bytes(m.bytes_copied)} "
                f"copied{into}"
            )
        if not r.dry_run:
            ctx.print(
                f"index rewritten: {m.index_files_written} file(s) written, "
                f"{m.index_files_deleted} deleted"
            )
    _print_sweep(ctx, "trash of this run", r.swept, would)
    ctx.print(
        f"{would}freed {human_bytes(r.bytes_freed)} ({r.packs_deleted} pack(s) deleted, "
        f"{r.packs_rescued} rescued); {human_bytes(r.bytes_pending)} in "
        f"{r.packs_pending} pack(s) {would}left in the trash"
    )
    if r.temp_files_removed:
        ctx.print(f"{r.temp_files_removed} temporary file(s) of interrupted writes removed")


def _print_sweep(ctx: Context, what: str, s: SweepResult, would: str) -> None:
    if s.stale_locks_removed:
        ctx.print(f"{s.stale_locks_removed} stale lock(s) {would}removed")
    if s.records_swept:
        ctx.print(
            f"{what}: {s.packs_deleted} pack(s) {would}deleted ({human_bytes(s.bytes_freed)}), "
            f"{s.packs_rescued} {would}rescued (a snapshot uses them), "
            f"{s.packs_readopted} listed by an index again"
        )
    if s.packs_retained:
        ctx.print(
            f"{what}: {s.packs_retained} pack(s) ({human_bytes(s.bytes_retained)}) are under "
            "the storage's retention (e.g. S3 Object Lock): kept in the trash; a later prune "
            "deletes them once the retention period is over"
        )
    if s.records_waiting:
        ctx.print(
            f"{what}: {s.packs_waiting} pack(s) ({human_bytes(s.bytes_waiting)}) "
            f"{'would wait' if would else 'wait'} for a later prune, until these locks are gone:"
        )
        for desc in s.waiting_for:
            ctx.print(f"  {desc}")


def print_retention(ctx: Context, report: RetentionReport) -> None:
    """Print what extending the retention did, and what failed."""
    ctx.print(
        f"retention: {report.extended} of {report.checked} object(s) given a new end date "
        "(the rest have more than half of the period left)"
    )
    if report.failed:
        name, why = report.failed[0]
        print(
            f"safehold: warning: the retention of {len(report.failed)} object(s) could not "
            f"be extended (the next prune tries again); first: {name}: {why}",
            file=sys.stderr,
        )
