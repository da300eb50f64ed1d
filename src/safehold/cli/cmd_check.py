"""``safehold check``: verify the repository's structure, and with --read-data its data;
with --max-age also that every backup is recent."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from safehold.cli.context import Context, human_bytes
from safehold.cli.progress import make_progress
from safehold.clock import utcnow
from safehold.engine.maintain.verify import run_check
from safehold.errors import ExitCode, UsageError
from safehold.policy.duration import parse_duration
from safehold.repository.check import (
    OVERDUE,
    CheckOptions,
    CheckReport,
    MaxAge,
    parse_pack_list,
    parse_subset,
)


def register(sub: Any) -> None:
    """Add ``check`` and its options to the parser."""
    p: argparse.ArgumentParser = sub.add_parser(
        "check",
        help="verify the repository (structure; with --read-data also every byte)",
        description="Check that the config, keys, index files, packs, snapshots and trees "
        "are intact and consistent, and that every snapshot's data is indexed and stored in "
        "its own chain. With --read-data, also download packs, re-hash them and open every "
        "blob. With --max-age, also that the newest snapshot of each host and set of paths "
        "(or configured source) is younger than that. Exit code 4 when damage is found, 13 "
        "when a backup is overdue (and nothing is damaged); warnings alone (such as packs "
        "left by an interrupted backup) exit 0.",
    )
    p.add_argument(
        "--read-data",
        action="store_true",
        help="also download every pack, verify its hash and header and open every blob",
    )
    p.add_argument(
        "--read-data-subset",
        metavar="SPEC",
        help="read only part of the data: n/t reads the n-th of t groups of packs (chosen "
        "by pack id, so 1/t ... t/t read everything), x%% reads that share at random",
    )
    p.add_argument(
        "--read-packs",
        metavar="FILE",
        help="read only the packs FILE names (one hex pack id a line; '-' reads standard "
        "input); packs no longer stored are skipped",
    )
    age = p.add_argument_group("recent backups")
    age.add_argument(
        "--max-age",
        metavar="DURATION",
        help="exit 13 if the newest snapshot of a host and set of paths (or of a configured "
        "source) is older than DURATION (e.g. 26h, 8d), or if there is none: catches a "
        "backup that stopped, deleted snapshots and a rolled-back repository",
    )
    age.add_argument("--host", help="with --max-age: only snapshots of this host")
    age.add_argument(
        "--path",
        action="append",
        default=[],
        help="with --max-age: only snapshots including this path; repeatable",
    )
    age.add_argument(
        "--source", metavar="NAME", help="with --max-age: only snapshots of this configured source"
    )
    p.set_defaults(func=run)


def max_age_from(args: argparse.Namespace) -> MaxAge | None:
    """The --max-age rule, or None; filters without --max-age are a usage error."""
    if args.max_age is None:
        if args.host is not None or args.path or args.source is not None:
            raise UsageError(
                "--host, --path and --source choose what --max-age looks at",
                hint="add --max-age DURATION, e.g. --max-age 26h for a daily backup",
            )
        return None
    duration = parse_duration(args.max_age)
    if duration.is_zero():
        raise UsageError("--max-age must be longer than zero", hint="for example --max-age 26h")
    now = utcnow()
    return MaxAge(
        age=now - duration.subtract_from(now),
        limit=args.max_age,
        host=args.host,
        paths=tuple(args.path),
        source=args.source,
    )


def run(args: argparse.Namespace, ctx: Context) -> int:
    """``check``: verify the repository; the exit code says what the worst finding was."""
    # Parsed before the repository is opened: a typo should not cost a password prompt.
    subset = parse_subset(args.read_data_subset) if args.read_data_subset else None
    if args.read_packs is not None:
        if subset is not None:
            raise UsageError(
                "give --read-data-subset or --read-packs, not both",
                hint="--read-packs FILE reads exactly the packs the file names",
            )
        subset = parse_pack_list(_read_text(args.read_packs), source=args.read_packs)
    max_age = max_age_from(args)
    opts = CheckOptions(
        read_data=args.read_data or subset is not None, subset=subset, max_age=max_age
    )
    repo = ctx.open_repo()
    report = run_check(repo, opts, make_progress(ctx.progress_enabled()))
    overdue = [p for p in report.problems if p.code == OVERDUE]
    if ctx.json:
        doc = report.to_json()
        if max_age is not None:
            doc["overdue"] = len(overdue)  # the warnings with code "backup-overdue"
        ctx.emit_json(doc)
    else:
        _print_report(ctx, report)
    if report.errors:
        print(
            f"safehold: check found {len(report.errors)} error(s): the repository is damaged",
            file=sys.stderr,
        )
        return ExitCode.INTEGRITY
    if overdue:
        print(
            f"safehold: check: {len(overdue)} backup(s) overdue: no snapshot younger than "
            f"{args.max_age}",
            file=sys.stderr,
        )
        return ExitCode.OVERDUE
    return ExitCode.OK


def _read_text(path: str) -> str:
    """The text of ``path`` (``-``: standard input); a file that cannot be read is a usage
    error naming it."""
    if path == "-":
        return sys.stdin.read()
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(
            f"cannot read the pack list {path!r}: {exc}", hint="give a readable text file"
        ) from None


def _print_report(ctx: Context, report: CheckReport) -> None:
    hints_shown: set[str] = set()
    for p in report.problems:
        line = f"{p.severity}: {p}"
        if p.hint and p.hint not in hints_shown:
            hints_shown.add(p.hint)
            line += f"\n  hint: {p.hint}"
        if p.severity == "error":
            print(line)  # errors are printed even with --quiet
        else:
            ctx.print(line)
    ctx.print(
        f"checked {report.snapshots} snapshots, {report.trees} trees, {report.blobs} data "
        f"blobs; {report.packs} packs, {report.index_files} index files"
    )
    if report.read_data:
        subset = "" if report.read_data == "all" else f" (subset {report.read_data})"
        ctx.print(
            f"read {report.packs_read} packs, {human_bytes(report.bytes_read)}{subset}: "
            "hashes, headers and blobs verified"
        )
    errors, warnings = len(report.errors), len(report.warnings)
    if not errors:
        ctx.print("no errors were found" + (f" ({warnings} warning(s))" if warnings else ""))
    else:
        ctx.print(f"{errors} error(s), {warnings} warning(s)")
