"""``safehold key``: not built yet."""

from __future__ import annotations

import argparse
from typing import Any

from safehold.cli.context import Context
from safehold.errors import UsageError


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser("key", help="(not available yet)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace, ctx: Context) -> int:
    raise UsageError("'safehold key' is not available yet")
