"""``safehold repair index``: make the index describe what is stored, losing nothing."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from safehold.cli.context import Context
from safehold.cli.progress import make_progress
from safehold.engine.maintain.verify import run_repair_index
from safehold.errors import ExitCode
from safehold.repository.repair import (
    BLOBS_DAMAGED,
    HEADER_DAMAGED,
    MISMATCH,
    MISSING,
    UNREADABLE,
    PackFinding,
    RepairOptions,
    RepairReport,
)

DESCRIPTION = """\
Make the index describe the packs that are stored. Repair never makes unreachable a blob
that was reachable: it keeps every index entry whose blob still opens. Needs an exclusive
lock.

Index files that load and agree with the headers of their packs are kept as they are.
Damaged index files are replaced from the pack headers; packs no index lists are adopted
(except packs prune put in the trash). An index entry whose pack is missing is dropped and
reported. A pack whose header is damaged is salvaged: every blob the index lists there is
read and verified on its own, and those that open are copied into a new pack of the same
chain, so that afterwards 'safehold check' is clean (left where they are, they would be
read through an index that could never again be checked against their pack's header).
The damaged pack is left in place, no longer indexed, and named: keep it for analysis or
delete it by hand. With
--read-all-packs every blob of every pack is opened too; a pack with blobs that do not open
is retired (its good blobs copied out; it stays indexed with no blobs, so no backup adopts
the damaged ones again, and 'safehold prune' removes it).

Exit code 0 when everything that was reachable still is; 4 when something could not be
saved (each such blob is named, and 'safehold check' lists the snapshots and paths that
needed it)."""


def register(sub: Any) -> None:
    """Add ``repair`` and its subcommand (index) to the parser."""
    p: argparse.ArgumentParser = sub.add_parser(
        "repair",
        help="repair the repository (the index)",
        description="Repair what can be derived again from the data that is stored.",
    )
    what = p.add_subparsers(dest="repair_what", metavar="WHAT", required=True)
    ip: argparse.ArgumentParser = what.add_parser(
        "index",
        help="repair the index from the index files and the packs, losing nothing",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ip.add_argument(
        "--read-all-packs",
        action="store_true",
        help="read every pack whole and open every blob, not only the headers (slow): "
        "finds damage inside blobs, which are then dropped and reported",
    )
    ip.add_argument(
        "--include-trash",
        action="store_true",
        help="also index packs that prune has scheduled for deletion",
    )
    ip.set_defaults(func=run_index)


def run_index(args: argparse.Namespace, ctx: Context) -> int:
    """``repair index``: rebuild the index from the packs."""
    opts = RepairOptions(read_all_packs=args.read_all_packs, include_trash=args.include_trash)
    repo = ctx.open_repo()
    report = run_repair_index(repo, opts, make_progress(ctx.progress_enabled()))
    if ctx.json:
        ctx.emit_json(report.to_json())
    else:
        _print_report(ctx, report)
    if not report.ok:
        what = []
        if report.lost:
            what.append(f"{report.lost} blob(s) listed by the index could not be saved")
        if report.unrecovered:
            what.append(
                f"{len(report.unrecovered)} pack(s) that a damaged index file may have "
                "listed cannot be read"
            )
        print(
            f"safehold: {'; '.join(what)}; 'safehold check' lists the snapshots and paths "
            "that needed them",
            file=sys.stderr,
        )
        return ExitCode.INTEGRITY
    return ExitCode.OK


def _print_report(ctx: Context, report: RepairReport) -> None:
    ctx.print(
        f"index files: {len(report.kept)} kept, {len(report.written)} written, "
        f"{len(report.removed)} removed ({len(report.damaged_index)} damaged)"
    )
    for name, why in report.damaged_index:
        ctx.print(f"  {name}: damaged ({why}): replaced from the pack headers")
    if report.left_for_prune or report.trash_skipped:
        ctx.print(
            f"trash: left {len(report.left_for_prune)} index file(s) and "
            f"{report.trash_skipped} pack(s) that prune put in the trash alone"
        )
    if report.adopted:
        ctx.print(f"adopted: {report.adopted} pack(s) no index listed")
    if report.corrected:
        ctx.print(f"corrected: {report.corrected} pack(s) indexed as their own header says")
    for finding in report.findings:
        line = _describe(finding)
        if finding.lost or (finding.problem == UNREADABLE and report.damaged_index):
            print(f"error: {line}")  # printed even with --quiet, as check's errors are
        else:
            ctx.print(line)
    for pack, blob in report.suspect:
        ctx.print(
            f"warning: {pack}: blob {blob[:8]} does not open (another copy was salvaged); "
            "run 'safehold repair index --read-all-packs'"
        )
    if report.new_packs:
        ctx.print(f"salvage: {len(report.new_packs)} new pack(s) written")
    left = [f for f in report.findings if f.problem in (HEADER_DAMAGED, UNREADABLE)]
    if left:
        ctx.print(
            f"{len(left)} damaged pack(s) left in place and in no index: keep them for "
            "analysis or delete them by hand; nothing reads them any more"
        )
    ctx.print(f"indexed {report.packs} packs holding {report.blobs} blobs")


def _describe(f: PackFinding) -> str:
    why = f.why.removeprefix(f.pack).strip()  # errors name the pack; the line starts with it
    lost = f", {len(f.lost)} lost" if f.lost else ""
    kept = f"{f.salvaged} salvaged into new packs, {f.elsewhere} intact elsewhere{lost}"
    if f.problem == HEADER_DAMAGED:
        return (
            f"{f.pack}: header damaged ({why}); of its {f.blobs} indexed blob(s): {kept}; "
            "the pack is no longer indexed"
        )
    if f.problem == BLOBS_DAMAGED:
        return (
            f"{f.pack}: {why}; of its {f.blobs} blob(s): {kept}; the pack is retired "
            "(indexed with no blobs: 'safehold prune' removes it)"
        )
    if f.problem == MISSING:
        return (
            f"{f.pack}: missing: {f.blobs} blob(s) dropped from the index, "
            f"{f.elsewhere} intact elsewhere{lost}"
        )
    if f.problem == MISMATCH:
        return f"{f.pack}: {why}: {kept}"
    return f"{f.pack}: in no index and its header does not open ({why}): nothing to salvage"
