"""``safehold report``: one project's report now, over the last period (docs/reports.md)."""

from __future__ import annotations

import argparse
from datetime import timedelta
from pathlib import Path
from typing import Any

from safehold.cli.context import Context
from safehold.cli.service_args import add_service_arguments, open_service_database
from safehold.errors import ExitCode, UsageError


def register(sub: Any) -> None:
    """Add ``report`` to the command line's subcommands."""
    p: argparse.ArgumentParser = sub.add_parser(
        "report",
        help="write a project's report (runs, RPO, storage) now",
        description="Write one project's report over the last --since (default: the "
        "file's reports.period, else 7d) to --html FILE and print its summary. It is not "
        "sent and not marked as reported: the service's own reports go out on their "
        "period. Exit 0: nothing failed; 1: a run failed in the period; 13: a plan's "
        "newest restore point is older than its rpo_target.",
    )
    p.add_argument("--project", required=True, metavar="P", help="the project to report on")
    p.add_argument("--html", metavar="FILE", help="write the HTML report to FILE")
    p.add_argument(
        "--since", metavar="DURATION", help="the period, ending now: 1d, 7d, 2w, 12h ..."
    )
    add_service_arguments(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace, ctx: Context) -> int:
    """``report``: write it; the exit code (see the description)."""
    from safehold.clock import SYSTEM_CLOCK
    from safehold.config.reports import parse_period
    from safehold.service.coverage import verify_periods
    from safehold.service.metrics_targets import rpo_targets
    from safehold.service.plans import plans_from_config
    from safehold.service.reports_data import gather
    from safehold.service.reports_render import render_html
    from safehold.service.repository_bytes import plan_repositories

    with open_service_database(args) as (config, database):
        if args.since:
            try:
                seconds = int(parse_period(args.since))  # type: ignore[call-overload]
            except ValueError as exc:
                raise UsageError(str(exc), hint="for example --since 7d") from None
        else:
            seconds = config.reports.period if config.reports else 7 * 86400
        now = SYSTEM_CLOCK.now()
        specs = list(plans_from_config(config).values())
        data = gather(database.engine, args.project, now - timedelta(seconds=seconds), now,
                      now=now, rpo_targets=rpo_targets(specs),
                      verify_periods=verify_periods(specs, args.project),
                      repositories=plan_repositories(specs))  # fmt: skip
    if not data.plans:
        raise UsageError(
            f"project {args.project!r} has no plans in this service's catalog",
            hint="see the projects' plans with: safehold plans --config FILE",
        )
    summary = data.summary()
    if args.html:
        Path(args.html).write_text(render_html(data), encoding="utf-8")
        summary["html"] = str(Path(args.html).resolve())
    if ctx.json:
        ctx.emit_json(summary)
    else:
        _print(summary, ctx)
    if data.breaches:
        return ExitCode.OVERDUE
    return ExitCode.FAILURE if data.failed else ExitCode.OK


def _print(summary: dict[str, Any], ctx: Context) -> None:
    ctx.print(f"project {summary['project']}: {summary['period_start']} to "
              f"{summary['period_end']}")  # fmt: skip
    ctx.print(f"  runs: {summary['runs_succeeded']} succeeded, {summary['runs_failed']} failed")
    breached = summary["rpo_breached"]
    ctx.print(f"  over RPO target: {', '.join(breached) if breached else 'none'}")
    ctx.print(f"  stored: {summary['stored_bytes']} bytes, added: {summary['added_bytes']} bytes")
    for key in ("drills_passed", "drills_failed"):
        if key in summary:
            ctx.print(f"  {key.replace('_', ' ')}: {summary[key]}")
    if "html" in summary:
        ctx.print(f"  written to {summary['html']}")
