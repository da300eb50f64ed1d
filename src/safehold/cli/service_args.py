"""The options every service command shares, and the one way they open the catalog.

``serve``, ``plans``, ``plan`` and ``runs`` take the configuration file (its plans and its
``service:`` block) and may override where the service's state and database are:
``--state-dir`` and ``--database`` (or ``SAFEHOLD_DATABASE``), which win over the file.
Every command given the same file therefore finds the same catalog.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from safehold.config import Config
    from safehold.service.database import Database
    from safehold.service.vault import Vault

__all__ = [
    "add_service_arguments",
    "database_url",
    "open_service_database",
    "open_service_vault",
    "state_dir",
]


def add_service_arguments(p: argparse.ArgumentParser) -> None:
    """``--config``, ``--database`` and ``--state-dir`` on ``p``."""
    g = p.add_argument_group("the service's file and database")
    g.add_argument("--config", metavar="FILE", required=True, help="the YAML file with the plans")
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

    config = load_config(args.config)
    with open_database(database_url(args, config), state_dir(args, config)) as database:
        yield config, database


@contextmanager
def open_service_vault(args: argparse.Namespace) -> Iterator[tuple[Database, Vault]]:
    """The catalog's database and the service's key (read, or made, on first use)."""
    from safehold.service.vault import Vault, key_file_path

    with open_service_database(args) as (config, database):
        key_file = key_file_path(config.service.key_file, state_dir(args, config))
        yield database, Vault(database.engine, key_file)
