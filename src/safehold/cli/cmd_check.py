"""``safehold check``: verify the repository's structure, and with --read-data its data."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from safehold.cli.context import Context, human_bytes
from safehold.cli.progress import make_progress
from safehold.engine.verify import run_check
from safehold.errors import ExitCode
from safehold.repository.check import CheckOptions, CheckReport, parse_subset


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "check",
        help="verify the repository (structure; with --read-data also every byte)",
        description="Check that the config, keys, index files, packs, snapshots and trees "
        "are intact and consistent, and that every snapshot's data is indexed and stored in "
        "its own chain. With --read-data, also download packs, re-hash them and open every "
        "blob. Exit code 4 when damage is found; warnings alone (such as packs left by an "
        "interrupted backup) exit 0.",
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
    p.set_defaults(func=run)


def run(args: argparse.Namespace, ctx: Context) -> int:
    # Parsed before the repository is opened: a typo should not cost a password prompt.
    subset = parse_subset(args.read_data_subset) if args.read_data_subset else None
    opts = CheckOptions(read_data=args.read_data or subset is not None, subset=subset)
    repo = ctx.open_repo()
    report = run_check(repo, opts, make_progress(ctx.progress_enabled()))
    if ctx.json:
        ctx.emit_json(report.to_json())
    else:
        _print_report(ctx, report)
    if report.errors:
        print(
            f"safehold: check found {len(report.errors)} error(s): the repository is damaged",
            file=sys.stderr,
        )
        return ExitCode.INTEGRITY
    return ExitCode.OK


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
