"""``safehold forget``: remove snapshots by id or by a retention policy."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any, TypeVar

from safehold.cli import cmd_prune
from safehold.cli.cmd_snapshots import snapshot_json
from safehold.cli.context import Context
from safehold.cli.progress import make_progress
from safehold.engine.maintain.forget import (
    ForgetGroup,
    ForgetOptions,
    RetainedSnapshot,
    parse_group_by,
    run_forget,
)
from safehold.errors import UsageError
from safehold.ids import SnapshotId
from safehold.policy.duration import Duration, parse_duration
from safehold.policy.retention import RetentionPolicy, keep_tag_sets
from safehold.repository.prune import prune
from safehold.repository.repository import Repository
from safehold.repository.retention import extend_retention
from safehold.repository.snapshot import Snapshot

_COUNTS = ("last", "hourly", "daily", "weekly", "monthly", "yearly")
_WITHIN = ("", "hourly", "daily", "weekly", "monthly", "yearly")
_PERIOD = {"hourly": "hour", "daily": "day", "weekly": "week", "monthly": "month", "yearly": "year"}

T = TypeVar("T")


def _argument(parse: Callable[[str], T]) -> Callable[[str], T]:
    """Lets argparse report a parser's UsageError as a usage error (exit 2)."""

    def convert(text: str) -> T:
        try:
            return parse(text)
        except UsageError as exc:
            raise argparse.ArgumentTypeError(exc.message) from None

    convert.__name__ = parse.__name__
    return convert


def register(sub: Any) -> None:
    """Add ``forget`` and its options (the ``--keep-*`` rules) to the parser."""
    p: argparse.ArgumentParser = sub.add_parser(
        "forget",
        help="remove snapshots by id or by a retention policy",
        description="Remove the named snapshots, or apply keep rules to each group of "
        "snapshots (by default: each host and set of paths) and remove what no rule keeps. "
        "A snapshot is kept if any rule keeps it. Data is freed by 'safehold prune' (or "
        "--prune).",
    )
    p.add_argument("snapshots", nargs="*", metavar="SNAPSHOT", help="snapshot ids to remove")
    add_keep_rules(p)
    c = p.add_argument_group("a configured source's retention (docs/configuration.md)")
    c.add_argument(
        "--config",
        metavar="FILE",
        help="take the repository from FILE and, with --source, that source's retention",
    )
    c.add_argument(
        "--source",
        metavar="NAME",
        help="with --config: only this source's snapshots, kept by its retention: block "
        "unless keep rules are given here (what 'safehold serve' runs after each backup)",
    )
    f = p.add_argument_group("which snapshots")
    f.add_argument("--host", help="only snapshots of this host")
    f.add_argument("--tag", action="append", default=[], help="only snapshots with this tag")
    f.add_argument("--path", action="append", default=[], help="only snapshots of this path")
    f.add_argument(
        "--group-by",
        type=_argument(parse_group_by),
        default=("host", "paths"),
        metavar="FIELDS",
        help="apply the rules per host,paths (default), host, paths, tags (any "
        "combination), or none",
    )
    p.add_argument(
        "--keep-id",
        action="append",
        default=[],
        metavar="SNAPSHOT",
        help="never remove this snapshot, whatever the rules say (kept as 'held'; naming it "
        "for removal is refused); repeatable. 'safehold serve' passes a plan's held "
        "restore points",
    )
    p.add_argument("--dry-run", action="store_true", help="only print what would be removed")
    p.add_argument("--prune", action="store_true", help="run 'safehold prune' afterwards")
    cmd_prune.add_prune_options(p)
    p.set_defaults(func=run)


def add_keep_rules(p: argparse.ArgumentParser) -> None:
    """The --keep-* options (also used by 'archive forget')."""
    g = p.add_argument_group("keep rules")
    for unit in _COUNTS:
        what = (
            "the N newest snapshots"
            if unit == "last"
            else f"the newest snapshot of each of the N newest {_PERIOD[unit]}s that have one"
        )
        g.add_argument(f"--keep-{unit}", type=int, metavar="N", help=f"keep {what} (-1: all)")
    for unit in _WITHIN:
        opt = f"--keep-within-{unit}" if unit else "--keep-within"
        what = f"the newest snapshot of each {_PERIOD[unit]}" if unit else "every snapshot"
        g.add_argument(
            opt,
            type=_argument(parse_duration),
            metavar="DURATION",
            help=f"keep {what} newer than DURATION before now (e.g. 30d, 1y6m, 12h)",
        )
    g.add_argument(
        "--keep-tag",
        action="append",
        default=[],
        metavar="TAG[,TAG]",
        help="keep snapshots carrying all these tags; repeatable",
    )


def policy_from(args: argparse.Namespace) -> RetentionPolicy:
    """The retention policy the ``--keep-*`` options give (empty when none is given)."""
    within: dict[str, Duration | None] = {}
    for unit in _WITHIN:
        name = f"keep_within_{unit}" if unit else "keep_within"
        within[name] = getattr(args, name)
    return RetentionPolicy(
        keep_last=args.keep_last,
        keep_hourly=args.keep_hourly,
        keep_daily=args.keep_daily,
        keep_weekly=args.keep_weekly,
        keep_monthly=args.keep_monthly,
        keep_yearly=args.keep_yearly,
        keep_tags=keep_tag_sets(args.keep_tag),
        **within,
    )


def run(args: argparse.Namespace, ctx: Context) -> int:
    """``forget``: remove snapshots by id or policy, then prune if asked."""
    policy = policy_from(args)
    source = None
    if args.config or args.source:
        from safehold.cli.config_run import source_retention

        policy, source = source_retention(args, ctx, policy)
    opts = ForgetOptions(
        policy=policy,
        source=source,
        snapshot_ids=args.snapshots,
        host=args.host,
        tags=args.tag,
        paths=args.path,
        group_by=args.group_by,
        dry_run=args.dry_run,
        held=args.keep_id,
    )
    repo = ctx.open_repo() if not args.config else _config_repo(args, ctx)
    result = run_forget(repo, opts)
    pruned = (
        prune(
            repo,
            cmd_prune.options_from(args, dry_run=args.dry_run),
            progress=make_progress(ctx.progress_enabled()),
        )
        if args.prune
        else None
    )
    # The scheduled maintenance (forget --prune) also keeps what the repository still needs
    # under retention in immutable mode: after prune, so that new garbage is left to expire.
    retention = extend_retention(repo) if args.prune and not args.dry_run else None
    if ctx.json:
        ctx.emit_json(
            {
                "dry_run": result.dry_run,
                "groups": [_group_json(g) for g in result.groups],
                "removed": [s.id for s in result.removed],
                "damaged_removed": result.damaged,
                "retained": [_retained_json(r) for r in result.retained],
                "prune": pruned.to_json() if pruned else None,
                "retention": retention.to_json() if retention else None,
            }
        )
        return 0
    retained = {r.snapshot.id: r for r in result.retained}
    for g in result.groups:
        _print_group(ctx, g, retained)
    n = len(result.removed)
    ctx.print(f"would remove {n} snapshot(s)" if result.dry_run else f"removed {n} snapshot(s)")
    for snap_id in result.damaged:
        would = "would remove" if result.dry_run else "removed"
        ctx.print(f"{would} damaged snapshot object snapshots/{snap_id}")
    if result.retained:
        ctx.print(
            f"kept {len(result.retained)} snapshot(s) the storage retains (S3 Object Lock or "
            "another retention period): a later forget removes them once it is over"
        )
    if pruned:
        ctx.print()
        cmd_prune.print_result(ctx, pruned)
    if retention:
        cmd_prune.print_retention(ctx, retention)
    return 0


def _config_repo(args: argparse.Namespace, ctx: Context) -> Repository:
    from safehold.cli.config_run import open_configured_repository

    return open_configured_repository(args.config, ctx)


def _group_json(g: ForgetGroup) -> dict[str, Any]:
    return {
        "group": g.key,
        "keep": [snapshot_json(s) | {"reasons": g.reasons.get(s.id, [])} for s in g.keep],
        "remove": [snapshot_json(s) for s in g.remove],
        "reasons": g.reasons,
    }


def _retained_json(r: RetainedSnapshot) -> dict[str, Any]:
    return {"id": r.snapshot.id, "until": r.until.isoformat() if r.until else None}


def _until(r: RetainedSnapshot) -> str:
    return f"retained until {r.until:%Y-%m-%d %H:%M} UTC" if r.until else "retained"


def _print_group(
    ctx: Context, g: ForgetGroup, retained: dict[SnapshotId, RetainedSnapshot]
) -> None:
    if g.key:
        parts = []
        for name, value in g.key.items():
            shown = f"[{', '.join(value)}]" if isinstance(value, list) else value
            parts.append(f"{name} {shown}")
        ctx.print(f"snapshots for {', '.join(parts)}:")
    if g.keep:
        ctx.print(f"keep {len(g.keep)} snapshot(s):")
        for s in g.keep:
            ctx.print(f"  {_line(s)}  {', '.join(g.reasons.get(s.id, []))}")
    if g.remove:
        ctx.print(f"remove {len(g.remove)} snapshot(s):")
        for s in g.remove:
            kept = retained.get(s.id)
            ctx.print(f"  {_line(s)}" + (f"  {_until(kept)}" if kept else ""))
    ctx.print()


def _line(s: Snapshot) -> str:
    tags = f"  [{', '.join(s.tags)}]" if s.tags else ""
    return (
        f"{s.short_id}  {s.time:%Y-%m-%d %H:%M:%S}  {s.hostname[:14]:14}  "
        f"{', '.join(s.paths)}{tags}"
    )
