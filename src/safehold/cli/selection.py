"""The options that choose what a backup saves and a restore writes, as restic names them:
``--exclude`` and its kin for ``backup``, ``--include``/``--exclude`` for ``restore``, and the
lists of paths (``--files-from``) and patterns (``--exclude-file``) read from files."""

from __future__ import annotations

import argparse
import os
import sys

from safehold.errors import SourceNotFound, UsageError
from safehold.policy.patterns import (
    SIZE_SYNTAX,
    decode_text,
    go_match,
    parse_pattern_lines,
    parse_size,
    text_lines,
)

PATTERN_HELP = """\
patterns (restic's syntax, for --exclude, --iexclude, the exclude files and restore's
--include/--exclude): matched against each item's whole absolute path, one name at a time.
'*' and '?' stay within one name, '[a-z]' is a class ('[^a-z]' negates), '\\' escapes,
'**' spans any number of folders. A pattern without a leading '/' matches at any depth
('*.tmp', 'cache', 'docs/sources', 'deep/*.log'); one with it is anchored at the root
('/home/*/.cache'). A match takes in everything below it. A trailing '/' is ignored, so
'cache/' also matches a file named cache. '!PATTERN' takes back what earlier patterns
matched (a folder left out is not entered, so its contents cannot be taken back).
"""


def _size(text: str) -> int:
    try:
        return parse_size(text)
    except UsageError as exc:
        raise argparse.ArgumentTypeError(f"{exc.message}; give {SIZE_SYNTAX}") from None


def add_backup_selection(p: argparse.ArgumentParser) -> None:
    """Add the options that say what a backup leaves out (excludes, tag files, size, caches)."""
    g = p.add_argument_group("what to leave out (patterns: see below)")
    g.add_argument(
        "-e",
        "--exclude",
        action="append",
        default=[],
        metavar="PATTERN",
        help="leave out what matches PATTERN; repeatable",
    )
    g.add_argument(
        "--iexclude",
        action="append",
        default=[],
        metavar="PATTERN",
        help="as --exclude, ignoring case; repeatable",
    )
    g.add_argument(
        "--exclude-file",
        action="append",
        default=[],
        metavar="FILE",
        help="read --exclude patterns from FILE, one a line ('#' comments, $VAR expanded, "
        "$$ for a $); repeatable",
    )
    g.add_argument(
        "--iexclude-file",
        action="append",
        default=[],
        metavar="FILE",
        help="as --exclude-file, for --iexclude patterns",
    )
    g.add_argument(
        "--exclude-caches",
        action="store_true",
        help="leave out the contents of folders holding a CACHEDIR.TAG with the standard "
        "signature (the folder and the tag are kept)",
    )
    g.add_argument(
        "--exclude-if-present",
        action="append",
        default=[],
        metavar="NAME[:HEADER]",
        help="leave out the contents of folders holding a file NAME (that starts with "
        "HEADER, if given); the folder and NAME are kept; repeatable",
    )
    g.add_argument(
        "--exclude-larger-than",
        type=_size,
        metavar="SIZE",
        help=f"leave out files larger than SIZE: {SIZE_SYNTAX}",
    )
    f = p.add_argument_group("paths read from files")
    f.add_argument(
        "--files-from",
        action="append",
        default=[],
        metavar="FILE",
        help="back up the paths listed in FILE ('-': standard input), one a line; each "
        "line is a glob ('*' matches dot files too); blank lines and '#' comments skipped",
    )
    f.add_argument(
        "--files-from-verbatim",
        action="append",
        default=[],
        metavar="FILE",
        help="as --files-from, but each line is a path as it is (no globs, no comments)",
    )
    f.add_argument(
        "--files-from-raw",
        action="append",
        default=[],
        metavar="FILE",
        help="as --files-from-verbatim, with paths ended by NUL bytes (find -print0)",
    )


def backup_selection_given(args: argparse.Namespace) -> list[str]:
    """The options of :func:`add_backup_selection` that were given, by flag."""
    names = [
        ("--exclude", args.exclude),
        ("--iexclude", args.iexclude),
        ("--exclude-file", args.exclude_file),
        ("--iexclude-file", args.iexclude_file),
        ("--exclude-caches", args.exclude_caches),
        ("--exclude-if-present", args.exclude_if_present),
        ("--exclude-larger-than", args.exclude_larger_than is not None),
        ("--files-from", args.files_from),
        ("--files-from-verbatim", args.files_from_verbatim),
        ("--files-from-raw", args.files_from_raw),
    ]
    return [flag for flag, given in names if given]


def _read(name: str, flag: str) -> bytes:
    try:
        if name == "-":
            return sys.stdin.buffer.read()
        with open(name, "rb") as f:
            return f.read()
    except OSError as exc:
        raise UsageError(f"{flag} {name}: {exc.strerror or exc}") from exc


def exclude_patterns(files: list[str], flag: str) -> list[str]:
    """The patterns of ``--exclude-file`` (or ``--iexclude-file``) files, in order."""
    out: list[str] = []
    for name in files:
        out.extend(parse_pattern_lines(decode_text(_read(name, flag)), os.environ))
    return out


def files_from(args: argparse.Namespace) -> list[str]:
    """The paths of ``--files-from``, ``--files-from-verbatim`` and ``--files-from-raw``,
    in restic's order (globbed lists, verbatim lists, raw lists). A line that names
    nothing stops the backup, as a PATH argument that does not exist does (restic skips
    it with a warning)."""
    paths: list[str] = []
    for name in args.files_from:
        for n, raw in enumerate(text_lines(decode_text(_read(name, "--files-from"))), 1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            found = glob(line)
            if not found:
                raise SourceNotFound(
                    f"--files-from {name}, line {n}: {line!r} matches nothing",
                    hint="fix or remove the line",
                )
            paths.extend(found)
    for name in args.files_from_verbatim:
        paths.extend(
            line for line in text_lines(decode_text(_read(name, "--files-from-verbatim"))) if line
        )
    for name in args.files_from_raw:
        data = _read(name, "--files-from-raw")
        if not data:
            continue
        if not data.endswith(b"\0"):
            raise UsageError(f"--files-from-raw {name}: the last path is not ended by a NUL")
        for item in data[:-1].split(b"\0"):
            if not item:
                raise UsageError(f"--files-from-raw {name}: an empty path")
            paths.append(os.fsdecode(item))
    return paths


def _has_magic(path: str) -> bool:
    return any(c in path for c in "*?[\\")


def glob(pattern: str) -> list[str]:
    """Go's ``filepath.Glob``, which restic's ``--files-from`` uses: each component is a
    Go pattern, ``*`` matches names starting with a dot too, matches are sorted within each
    folder; a path without glob characters is itself if it exists (not followed)."""
    for comp in pattern.split("/"):
        try:
            go_match(comp, "")
        except ValueError as exc:
            raise UsageError(f"--files-from: bad pattern {pattern!r}: {exc}") from None
    return _glob(pattern)


def _glob(pattern: str) -> list[str]:
    if not _has_magic(pattern):
        return [pattern] if os.path.lexists(pattern) else []
    head, tail = os.path.split(pattern)
    dirs = _glob(head) if _has_magic(head) else [head or "."]
    out: list[str] = []
    for d in dirs:
        try:
            names = sorted(os.listdir(d))
        except OSError:
            continue  # not a folder, or unreadable: nothing there, as in Go's Glob
        out.extend(os.path.join(d, n) if head else n for n in names if go_match(tail, n))
    return out


def add_restore_selection(p: argparse.ArgumentParser) -> None:
    """Add the options that say what a restore writes (includes, excludes)."""
    g = p.add_argument_group("what to restore (patterns: see below)")
    g.add_argument(
        "-i",
        "--include",
        action="append",
        default=[],
        metavar="PATTERN",
        help="restore only what matches PATTERN (and what is below it); repeatable",
    )
    g.add_argument(
        "--iinclude",
        action="append",
        default=[],
        metavar="PATTERN",
        help="as --include, ignoring case; repeatable",
    )
    g.add_argument(
        "-e",
        "--exclude",
        action="append",
        default=[],
        metavar="PATTERN",
        help="do not restore what matches PATTERN (nor what is below it); repeatable",
    )
    g.add_argument(
        "--iexclude",
        action="append",
        default=[],
        metavar="PATTERN",
        help="as --exclude, ignoring case; repeatable",
    )
