"""The options every service command shares, and the one way they open the catalog.

``serve``, ``plans``, ``plan`` and ``runs`` take the configuration file (its plans and its
``service:`` block) and may override where the service's state and database are:
``--state-dir`` and ``--database`` (or ``SAFEHOLD_DATABASE``), which win over the file.
Every command given the same file therefore finds the same catalog. The clock and the
log lines of the long-running commands (``serve``, ``agent``) are set up here too.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from safehold.errors import UsageError

if TYPE_CHECKING:
    from safehold.clock import Clock
    from safehold.config import Config
    from safehold.service.database import Database
    from safehold.service.vault import Vault

__all__ = [
    "add_service_arguments",
    "database_url",
    "open_service_database",
    "open_service_vault",
    "service_clock",
    "service_logging",
    "state_dir",
]


def add_service_arguments(p: argparse.ArgumentParser, *, remote: bool = False) -> None:
    """``--config``, ``--database`` and ``--state-dir`` on ``p``; with ``remote``, also
    ``--server`` and ``--token-file`` (a service elsewhere, through its API), and then
    ``--config`` is needed only without them."""
    g = p.add_argument_group("the service's file and database")
    g.add_argument(
        "--config",
        metavar="FILE",
        required=not remote,
        help="the YAML file with the plans" + (" (not with --server)" if remote else ""),
    )
    if remote:
        r = p.add_argument_group("a service elsewhere, through its REST API")
        r.add_argument(
            "--server", metavar="URL", help="the service's API (default: $SAFEHOLD_SERVER)"
        )
        r.add_argument(
            "--token-file",
            metavar="FILE",
            help="a file holding a token of the project (default: $SAFEHOLD_TOKEN_FILE)",
        )
    g.add_argument(
        "--database",
        metavar="URL",
        help="a shared PostgreSQL (postgresql://USER:PASSWORD@HOST/DB) for several "
        "processes or machines (default: $SAFEHOLD_DATABASE, then the file's "
        "service.database, else a private cluster under the state folder)",
    )
    g.add_argument(
        "--state-dir",
        metavar="DIR",
        help="the service's state folder (default: the file's service.state_dir, else "
        "/var/lib/safehold for root and ~/.local/share/safehold for others)",
    )


def database_url(args: argparse.Namespace, config: Config) -> str | None:
    """The database URL the options, the environment and the file ask for (None: private)."""
    if args.database:
        return str(args.database)
    if os.environ.get("SAFEHOLD_DATABASE"):
        return os.environ["SAFEHOLD_DATABASE"]
    if config.service.database is not None:
        return config.service.database.get_secret_value()
    return None


def state_dir(args: argparse.Namespace, config: Config) -> Path:
    """The service's state folder: the option, the file's, or the default."""
    from safehold.service.cluster import default_state_dir

    if args.state_dir:
        return Path(args.state_dir)
    if config.service.state_dir:
        return Path(config.service.state_dir)
    return default_state_dir()


@contextmanager
def open_service_database(args: argparse.Namespace) -> Iterator[tuple[Config, Database]]:
    """The configuration and the catalog's database, opened (and migrated) for a command."""
    from safehold.config import load_config
    from safehold.service.database import open_database

    if not args.config:
        raise UsageError(
            "this command needs --config FILE (the service's file), or --server URL",
            hint="--server URL --token-file FILE asks a service elsewhere",
        )
    config = load_config(args.config)
    with open_database(database_url(args, config), state_dir(args, config)) as database:
        yield config, database


def service_clock() -> Clock:
    """The system clock, or for the project's own tests a faster one shared by several
    processes (``SAFEHOLD_TEST_CLOCK=ORIGIN:SPEED``, safehold.clock.ScaledClock)."""
    from safehold.clock import SYSTEM_CLOCK, ScaledClock

    given = os.environ.get("SAFEHOLD_TEST_CLOCK")
    if not given:
        return SYSTEM_CLOCK
    try:
        return ScaledClock.parse(given)
    except ValueError:
        raise UsageError(
            f"SAFEHOLD_TEST_CLOCK={given!r} is not ORIGIN:SPEED", hint="unset it"
        ) from None


class _JsonFormatter(logging.Formatter):
    """One JSON object a line, as the runs' own log lines are."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "event": "service",
            "message": record.getMessage(),
        }
        line.update(getattr(record, "fields", {}))
        return json.dumps(line, default=str)


def service_logging(fmt: str, *, quiet: bool) -> None:
    """Log the service's (or an agent's) lines on standard error: text, or one JSON
    object a line (``fmt == "json"``)."""
    import time

    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        formatter: logging.Formatter = _JsonFormatter()
        formatter.converter = time.gmtime
    else:
        formatter = logging.Formatter("%(asctime)s %(levelname)-7s %(message)s")
    handler.setFormatter(formatter)
    root = logging.getLogger("safehold")
    root.addHandler(handler)
    root.setLevel(logging.WARNING if quiet else logging.INFO)
    # procrastinate's own lines (jobs started, finished) at warning and above only.
    logging.getLogger("procrastinate").addHandler(handler)
    logging.getLogger("procrastinate").setLevel(logging.WARNING)


@contextmanager
def open_service_vault(args: argparse.Namespace) -> Iterator[tuple[Database, Vault]]:
    """The catalog's database and the service's key (read, or made, on first use)."""
    from safehold.service.vault import Vault, key_file_path

    with open_service_database(args) as (config, database):
        key_file = key_file_path(config.service.key_file, state_dir(args, config))
        yield database, Vault(database.engine, key_file)


def add_loop_arguments(p: argparse.ArgumentParser, *, stop_grace: float, grace_of: str) -> None:
    """``--tick`` and ``--stop-grace`` of a long-running command (``serve``, ``agent``):
    ``grace_of`` says what the grace is for."""
    p.add_argument(
        "--tick",
        type=float,
        default=1.0,
        metavar="SECONDS",
        help="seconds between two looks at the schedules (default: 1)",
    )
    p.add_argument(
        "--stop-grace",
        type=float,
        default=stop_grace,
        metavar="SECONDS",
        help=f"on SIGTERM, how long {grace_of} (default: {stop_grace:g})",
    )
