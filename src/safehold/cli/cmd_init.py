"""``safehold init``: create a repository."""

from __future__ import annotations

import argparse
from typing import Any

from safehold.app import init_repository
from safehold.cli.context import Context
from safehold.crypto.kdf import calibrated_lanes
from safehold.crypto.keys import DEFAULT_SCRYPT_N, DEFAULT_SCRYPT_P, DEFAULT_SCRYPT_R, KdfParams
from safehold.errors import UsageError


def register(sub: Any) -> None:
    """Add ``init`` and its options to the parser."""
    p: argparse.ArgumentParser = sub.add_parser(
        "init",
        help="create a new repository",
        description="Create a new, empty repository at the --repo location with one key "
        "(the password given). Its master key is random; the password only wraps it.",
    )
    p.add_argument(
        "--compression",
        default="3",
        metavar="LEVEL",
        help="zstd level 1-19 for new data, or 'off' (default: %(default)s)",
    )
    add_kdf_option(p)
    p.set_defaults(func=run)


def add_kdf_option(p: argparse.ArgumentParser) -> None:
    """Add the key derivation options (``--kdf-log2n``, ``--kdf-p``) shared by ``init`` and
    ``key``."""
    p.add_argument(
        "--kdf-log2n",
        type=int,
        default=15,
        metavar="N",
        help="scrypt cost 2**N (r=8) for the password's key (default: %(default)s, "
        "32 MiB); "
        "lower values make guessing cheaper and are meant for tests only",
    )
    p.add_argument(
        "--kdf-p",
        type=int,
        default=None,
        metavar="P",
        help="scrypt lanes, 1-16; every lane is paid by every command and by every guess of "
        "an attacker alike (default: as many as one core computes in 0.5 s, at least "
        f"{DEFAULT_SCRYPT_P}, as restic calibrates its keys; the lanes run side by side, so "
        "a command on two cores waits about half that: docs/format.md, 'Cost of a guess')",
    )


def kdf_params(args: argparse.Namespace) -> KdfParams:
    """The scrypt parameters the options ask for: lanes calibrated to at least the default's
    work when ``--kdf-p`` is not given; raises :class:`UsageError` for values out of range."""
    if not 10 <= args.kdf_log2n <= 22:
        raise UsageError("--kdf-log2n must be between 10 and 22")
    n = 1 << args.kdf_log2n
    lanes = args.kdf_p
    if lanes is None and n < DEFAULT_SCRYPT_N:
        # A key for tests ("--kdf-log2n" says so): no calibration, which would choose the
        # most lanes.
        lanes = DEFAULT_SCRYPT_P
    elif lanes is None:
        # At least the default's work per guess: fewer lanes where each holds more memory.
        default_work = DEFAULT_SCRYPT_N * DEFAULT_SCRYPT_P
        lanes = calibrated_lanes(n, DEFAULT_SCRYPT_R, least=-(-default_work // n))
    params = KdfParams(n=n, p=lanes)
    try:
        params.check()
    except ValueError as exc:
        raise UsageError(f"--kdf-log2n {args.kdf_log2n} with --kdf-p {lanes}: {exc}") from None
    return params


def parse_level(text: str) -> int | None:
    """The zstd level of ``--compression`` (1-19), or None for ``off``; raises
    :class:`UsageError` for anything else."""
    if text in ("off", "none", "0"):
        return None
    try:
        level = int(text)
    except ValueError:
        level = -1
    if not 1 <= level <= 19:
        raise UsageError(f"--compression must be 1-19 or 'off', not {text!r}")
    return level


def run(args: argparse.Namespace, ctx: Context) -> int:
    """``init``: create a repository at the location."""
    location = ctx.location()
    level = parse_level(args.compression)
    repo = init_repository(
        location, ctx.password(confirm=True), compression=level, kdf=kdf_params(args)
    )
    if ctx.json:
        ctx.emit_json({"id": repo.config.repo_id, "location": repo.storage.describe()})
    else:
        ctx.print(f"created repository {repo.config.repo_id[:8]} at {repo.storage.describe()}")
        ctx.print("keep the password safe: without it the data cannot be read")
    return 0
