"""``safehold find``: which snapshots hold files whose paths match a pattern."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from safehold.cli.cmd_ls import long_line, node_json
from safehold.cli.cmd_snapshots import filtered
from safehold.cli.context import Context
from safehold.engine.inspect.find import compile_patterns, find_in_snapshot
from safehold.policy.patterns import PatternList
from safehold.repository.repository import Repository
from safehold.repository.snapshot import Snapshot

PATTERN_HELP = """\
patterns (as restic's): matched against each whole path in the snapshot, one folder
level at a time. '*' and '?' stay within one name, '[a-z]' is a class ('[^a-z]' negates),
'**' spans any number of folders. A pattern without a leading '/' matches at any depth
('*.log', 'cache', 'deep/*.log'); one with it is anchored at the root ('/srv/db/*.conf').
A folder that matches is listed with everything below it; a later '!PATTERN' takes back
what it matches ('*.log' '!deep': the logs outside folders named deep).

examples:
  safehold find '*.pgdump'                      # in every snapshot
  safehold find --host db1 -s latest 'etc/**/*.conf'
  safehold find -i --json README.md
"""


def register(sub: Any) -> None:
    """Add ``find`` and its options to the parser."""
    p: argparse.ArgumentParser = sub.add_parser(
        "find",
        help="find files and folders by name or path in snapshots",
        description="List the paths matching any PATTERN in each snapshot (all snapshots, "
        "oldest first, or those chosen with --snapshot and the filters).",
        epilog=PATTERN_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("patterns", nargs="+", metavar="PATTERN", help="a name or path pattern")
    p.add_argument(
        "-s",
        "--snapshot",
        action="append",
        default=[],
        metavar="ID",
        help="search only this snapshot (an id prefix or 'latest'); repeatable",
    )
    p.add_argument("-i", "--ignore-case", action="store_true", help="match regardless of case")
    p.add_argument(
        "-l", "--long", action="store_true", help="show type, mode, owner, size and time"
    )
    f = p.add_argument_group("which snapshots")
    f.add_argument("--host", help="only snapshots of this host")
    f.add_argument("--tag", action="append", default=[], help="only snapshots with this tag")
    f.add_argument("--path", action="append", default=[], help="only snapshots of this path")
    p.set_defaults(func=run)


def choose(repo: Repository, refs: list[str], args: argparse.Namespace) -> list[Snapshot]:
    """The snapshots named by ``refs`` (id prefixes, or 'latest' of those the filters
    leave), else every snapshot the filters leave; oldest first, each once."""
    snaps = filtered(repo.list_snapshots(), args)
    if not refs:
        return snaps
    chosen = {s.id: s for s in (repo.find_snapshot(ref, snapshots=snaps) for ref in refs)}
    return sorted(chosen.values(), key=lambda s: (s.time, s.id))


def run(args: argparse.Namespace, ctx: Context) -> int:
    """``find``: the items whose name or path matches, in every snapshot chosen."""
    matcher = compile_patterns(args.patterns, ignore_case=args.ignore_case)
    args.path = [os.path.abspath(p) for p in args.path]
    repo = ctx.open_repo()
    with repo.lock("read"):
        repo.load_index()
        # Listed under the lock: each keeps its data until the lock goes, even if a forget
        # removes it meanwhile (docs/format.md, section 16).
        snaps = choose(repo, args.snapshot, args)
        if ctx.json:
            _json(repo, snaps, matcher)
        elif not ctx.quiet:
            _text(repo, snaps, matcher, long=args.long)
    return 0


def _json(repo: Repository, snaps: list[Snapshot], matcher: PatternList) -> None:
    """One object per snapshot with hits, as restic prints them; matches are streamed, so
    a search that finds millions of paths needs no memory for them."""
    out = sys.stdout
    out.write("[")
    first = True
    for snap in snaps:
        count = 0
        for path, node in find_in_snapshot(repo, snap, matcher):
            if not count:
                out.write(("\n  " if first else ",\n  ") + '{"snapshot": ' + json.dumps(snap.id))
                out.write(', "matches": [')
                first = False
            out.write(("," if count else "") + "\n    " + json.dumps(node_json(path, node)))
            count += 1
        if count:
            out.write(f'\n  ], "hits": {count}}}')
    out.write("]\n" if first else "\n]\n")


def _text(repo: Repository, snaps: list[Snapshot], matcher: PatternList, *, long: bool) -> None:
    # Bytes, so that names that are not UTF-8 print as they are on disk.
    out = sys.stdout.buffer
    for snap in snaps:
        header = False
        for path, node in find_in_snapshot(repo, snap, matcher):
            if not header:
                out.write(
                    f"Found matching entries in snapshot {snap.short_id} from "
                    f"{snap.time:%Y-%m-%d %H:%M:%S}\n".encode()
                )
                header = True
            line = long_line(path, node) if long else path
            out.write(line.encode("utf-8", "surrogateescape") + b"\n")
        if header:
            out.write(b"\n")
