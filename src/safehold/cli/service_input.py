"""What service commands read from a file or standard input: a destination's or a plan's
block, as YAML (or JSON, which is YAML). Credentials come this way, never on the command
line, where every user of the machine can read them (``ps``, ``/proc/PID/cmdline``) and
shells keep them in their history."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import yaml

from safehold.errors import UsageError

__all__ = ["add_block_argument", "add_project_argument", "read_block"]


def add_project_argument(p: argparse.ArgumentParser) -> None:
    """``--project P`` (default: ``default``)."""
    p.add_argument(
        "--project", metavar="P", default="default", help="the project (default: default)"
    )


def add_block_argument(p: argparse.ArgumentParser, what: str) -> None:
    """``--from-file FILE`` (``-``: standard input)."""
    p.add_argument(
        "--from-file",
        metavar="FILE",
        help=f"the {what} as YAML or JSON ('-': read it from standard input)",
    )


def read_block(source: str | None, what: str) -> dict[str, Any]:
    """The mapping in ``source`` (a path, or ``-`` for standard input)."""
    if source is None:
        raise UsageError(
            f"the {what} is read from a file",
            hint="give --from-file FILE, or --from-file - and the YAML on standard input",
        )
    try:
        raw = sys.stdin.read() if source == "-" else Path(source).read_text(encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"cannot read {source}: {exc.strerror}") from exc
    try:
        data = yaml.safe_load(raw)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{source}:{mark.line + 1}" if mark is not None else source
        # The parser's message may quote the text; the text may be a credential.
        raise UsageError(f"{where}: not valid YAML or JSON") from None
    if not isinstance(data, dict):
        raise UsageError(f"{source}: the {what} must be a mapping of keys to values")
    return data
