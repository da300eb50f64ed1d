"""What every command shares: the repository location, the password, output modes."""

from __future__ import annotations

import argparse
import getpass
import json
import os
import shlex
import subprocess
import sys
from dataclasses import dataclass
from typing import Any

from safehold import units
from safehold.app import open_repository
from safehold.errors import ConfigError, UsageError
from safehold.repository.repository import Repository
from safehold.repository.snapshot import Snapshot


@dataclass
class Context:
    """What every command needs from the command line: the repository and its password, output
    mode, progress; the one place that opens the repository for a command."""

    args: argparse.Namespace

    @property
    def json(self) -> bool:
        """Whether ``--json`` was given: results go to standard output as JSON."""
        return bool(self.args.json)

    @property
    def quiet(self) -> bool:
        """Whether ``--quiet`` was given: no text output but errors and warnings."""
        return bool(self.args.quiet)

    def location(self) -> str:
        """The repository location (``-r``/``--repo``, else ``SAFEHOLD_REPOSITORY``); raises
        :class:`UsageError` when there is none."""
        repo: str | None = self.args.repo or os.environ.get("SAFEHOLD_REPOSITORY")
        if not repo:
            raise UsageError(
                "no repository given",
                hint="use -r/--repo LOCATION or set SAFEHOLD_REPOSITORY",
            )
        return repo

    def password(self, *, confirm: bool = False, prompt: str = "repository password") -> bytes:
        """The repository password (file, command, environment or prompt); ``confirm`` asks twice
        at a prompt."""
        return read_password(
            self.args.password_file, self.args.password_command, confirm=confirm, prompt=prompt
        )

    def open_repo(self) -> Repository:
        """The repository, opened with the password and the cache options; damaged objects it skips
        are warned about on standard error."""
        return open_repository(
            self.location(), self.password(), on_warning=print_warning, **self.cache_options()
        )

    def cache_options(self) -> dict[str, Any]:
        """The local index cache options of the command line."""
        return cache_options(self.args)

    def print(self, text: str = "") -> None:
        """Print ``text`` unless ``--quiet``."""
        if not self.quiet:
            print(text)

    def emit_json(self, obj: Any) -> None:
        """Write ``obj`` as indented JSON to standard output (values JSON lacks as strings)."""
        json.dump(obj, sys.stdout, indent=2, default=str)
        sys.stdout.write("\n")

    def progress_enabled(self) -> bool:
        """Whether to draw bars: standard error is a terminal, and neither ``--json`` nor
        ``--quiet`` was given."""
        return not self.json and not self.quiet and sys.stderr.isatty()


def print_warning(name: str, message: str) -> None:
    """A damaged object skipped by the repository (``Repository.warn``), on stderr even
    with --quiet or --json: it is damage the user must hear of."""
    print(f"safehold: warning: {name}: {message}", file=sys.stderr)


def cache_options(args: argparse.Namespace) -> dict[str, Any]:
    """``--cache-dir`` and ``--no-cache``, as open_repository's keyword arguments."""
    return {
        "cache_dir": getattr(args, "cache_dir", None),
        "no_cache": bool(getattr(args, "no_cache", False)),
    }


def add_latest_filters(p: argparse.ArgumentParser) -> None:
    """--host/--path/--tag: which snapshot 'latest' means (see :func:`find_snapshot`)."""
    g = p.add_argument_group("choosing 'latest'")
    g.add_argument("--host", help="newest snapshot of this host")
    g.add_argument(
        "--path",
        dest="filter_path",
        action="append",
        default=[],
        metavar="PATH",
        help="newest snapshot of this backed-up path; repeatable",
    )
    g.add_argument("--tag", action="append", default=[], help="newest snapshot with this tag")


def find_snapshot(
    repo: Repository,
    ref: str,
    args: argparse.Namespace,
    *,
    snapshots: list[Snapshot] | None = None,
) -> Snapshot:
    """Resolve an id prefix or 'latest' with the options of :func:`add_latest_filters`."""
    return repo.find_snapshot(
        ref,
        host=args.host,
        paths=[os.path.abspath(p) for p in args.filter_path] or None,
        tags=args.tag or None,
        snapshots=snapshots,
    )


def read_password(
    password_file: str | None,
    password_command: str | None,
    *,
    confirm: bool = False,
    prompt: str = "repository password",
    env: str = "SAFEHOLD_PASSWORD",
    flags: str = "--password-file or --password-command",
) -> bytes:
    """A password from a file, a command, the environment (``env``, ``env_FILE``,
    ``env_COMMAND``) or, on a terminal, a prompt. ``prompt`` names which password it is in
    every message. Never logged; trailing newlines are stripped."""
    password_file = password_file or os.environ.get(env + "_FILE")
    password_command = password_command or os.environ.get(env + "_COMMAND")
    if password_file:
        try:
            with open(password_file, "rb") as f:
                pw = f.read().rstrip(b"\r\n")
        except OSError as exc:
            raise ConfigError(
                f"cannot read the {prompt} file {password_file}: {exc.strerror}"
            ) from exc
    elif password_command:
        try:
            out = subprocess.run(
                shlex.split(password_command), capture_output=True, check=False, timeout=60
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise ConfigError(f"the {prompt} command could not run: {exc}") from exc
        if out.returncode != 0:
            raise ConfigError(
                f"the {prompt} command exited with status {out.returncode}",
                hint="run it by hand to see why",
            )
        pw = out.stdout.rstrip(b"\r\n")
    elif env in os.environ:
        pw = os.environ[env].encode()
    elif sys.stdin.isatty():
        pw = getpass.getpass(f"enter the {prompt}: ").encode()
        if confirm and getpass.getpass(f"enter the {prompt} again: ").encode() != pw:
            raise UsageError("the passwords do not match")
    else:
        raise UsageError(f"no {prompt} given", hint=f"set {env}, or use {flags}")
    if not pw:
        raise UsageError(f"the {prompt} is empty", hint="an empty password protects nothing")
    return pw


def human_bytes(n: float) -> str:
    """``n`` bytes for people ("1.25 GiB"): :func:`safehold.units.size` with the two
    decimals a command's summary shows."""
    return units.size(n, places=2)
