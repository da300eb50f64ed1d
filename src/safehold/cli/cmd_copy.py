"""``safehold copy``: not built yet."""

from __future__ import annotations

import argparse
from typing import Any

from safehold.cli.context import Context
from safehold.errors import UsageError


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser("copy", help="(not available yet)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace, ctx: Context) -> int:
    raise UsageError("'safehold copy' is not available yet")
