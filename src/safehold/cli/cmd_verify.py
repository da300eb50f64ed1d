"""``safehold verify``: re-read a slice of the repository's packs now, or show the
verification coverage (``--status``). The rotation lives in the service's catalog."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from safehold.cli.context import Context, human_bytes
from safehold.cli.service_args import add_service_arguments, open_service_database, service_clock
from safehold.errors import ExitCode, UsageError


def register(sub: Any) -> None:
    """Add ``verify`` and its options to the parser."""
    p: argparse.ArgumentParser = sub.add_parser(
        "verify",
        help="re-read a slice of the repository's packs now, or show the coverage",
        description="Verification coverage: every pack of the repository is re-read "
        "(check --read-data) at least once per the repository: block's verify: period, "
        "in slices that 'safehold serve' runs on its schedule. Without --status, read one "
        "slice now (the packs read least recently) and record it in the service's "
        "catalog; exit code 4 when it finds damage, naming the snapshots affected. With "
        "--status, show the share of stored bytes re-read within the period.",
    )
    p.add_argument(
        "--status", action="store_true", help="show the coverage instead of reading a slice"
    )
    # The service's worker runs its slices through this (the rotation in FILE, from the
    # catalog; the child opens no database).
    p.add_argument("--slice-state", metavar="FILE", help=argparse.SUPPRESS)
    add_service_arguments(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace, ctx: Context) -> int:
    """``verify``: one slice, or the coverage; the exit code."""
    if args.slice_state:
        return _child_slice(args, ctx)
    from safehold.config.plans import VerifyConfig
    from safehold.service.coverage import coverage
    from safehold.service.verify import run_slice_now, slice_timing
    from safehold.storage.location import redact

    now = service_clock().now()
    with open_service_database(args) as (config, database):
        if config.repository is None:
            raise UsageError(
                f"{args.config} has no repository: block",
                hint="add one with the location (and verify: {period: 30d})",
            )
        repository = redact(config.repository.location)
        settings = config.repository.verify or VerifyConfig()
        if args.status:
            found = coverage(database.engine, repository, settings.period, now)
            if ctx.json:
                ctx.emit_json([found.to_json()])
            else:
                _print_status(ctx, [found])
            return ExitCode.OK
        from safehold.cli.config_run import open_configured_repository
        from safehold.policy.schedule import parse_schedule

        schedule = parse_schedule(settings.schedule, key="verify", timezone=settings.timezone)
        timing = slice_timing(schedule, settings.period, settings.margin, now)
        repo = open_configured_repository(args.config, ctx)
        result = run_slice_now(database.engine, repo, repository, timing)
        after = coverage(database.engine, repository, settings.period, now)
    if ctx.json:
        ctx.emit_json({**result.to_json(), "coverage": after.to_json()})
    else:
        ctx.print(
            f"read {len(result.read)} of {len(result.listed)} packs, "
            f"{human_bytes(result.bytes_read)} (slice budget {human_bytes(result.budget)})"
        )
        _print_status(ctx, [after])
    return _exit(result.ok, result.describe_damage())


def _child_slice(args: argparse.Namespace, ctx: Context) -> int:
    """The worker's child: the slice the state file says, its result on standard output."""
    from safehold.cli.config_run import open_configured_repository
    from safehold.service.verify import read_state, read_with_state

    if not args.config:
        raise UsageError("--slice-state needs --config FILE")
    timing, rotation = read_state(Path(args.slice_state))
    repo = open_configured_repository(args.config, ctx)
    result = read_with_state(repo, timing, rotation)
    ctx.emit_json(result.to_json())
    return _exit(result.ok, result.describe_damage())


def _exit(ok: bool, damage: str) -> int:
    if ok:
        return ExitCode.OK
    print(f"safehold: verify: {damage}", file=sys.stderr)
    return ExitCode.INTEGRITY


def _print_status(ctx: Context, rows: list[Any]) -> None:
    ctx.print(
        f"{'REPOSITORY':<32} {'PERIOD':<7} {'PACKS':>6} {'STORED':>10} {'READ':>10} "
        f"{'COVERAGE':>8}  {'OLDEST READ':<20} {'NEVER':>5} {'DAMAGED':>7}"
    )
    for c in rows:
        oldest = f"{c.oldest_read:%Y-%m-%d %H:%M:%S}" if c.oldest_read else "-"
        ctx.print(
            f"{c.repository:<32} {c.period:<7} {c.packs:>6} {human_bytes(c.bytes_total):>10} "
            f"{human_bytes(c.bytes_read_within_period):>10} {c.ratio:>8.1%}  {oldest:<20} "
            f"{c.never_read:>5} {c.damaged_packs:>7}"
        )
