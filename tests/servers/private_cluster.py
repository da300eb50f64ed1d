"""safehold's own private PostgreSQL cluster (safehold.service.cluster), for the service's
tests: state folders it may live in, and one cluster per test module with a fresh
database per test.

A state folder is made under /tmp rather than pytest's tmp_path: as root, the cluster runs
as the ``postgres`` user, who must pass through every folder above its own, and pytest's
folders are 0700 root. Whatever a test leaves running in one is stopped at the end.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest
from sqlalchemy import URL, Engine, create_engine

from safehold.service.cluster import PORT, SUPERUSER, Cluster, find_bin_dir, open_cluster
from tests.servers import unavailable

__all__ = [
    "database_url",
    "fresh_database",
    "make_state_dir",
    "new_state_dir",
    "private_cluster",
    "run_python",
    "stop_leftover",
]


def need_server_programs() -> None:
    try:
        find_bin_dir()
    except Exception:
        unavailable("PostgreSQL is not installed: apt-get install postgresql")


def new_state_dir() -> Path:
    folder = Path(tempfile.mkdtemp(prefix="sh-svc-", dir="/tmp"))
    folder.chmod(0o711)
    return folder / "state"


def stop_leftover(state_dir: Path) -> None:
    """Kill a cluster a failed test left running in ``state_dir``, then remove its folder."""
    pid_file = state_dir / "postgresql" / "data" / "postmaster.pid"
    try:
        os.kill(int(pid_file.read_text().split()[0]), signal.SIGQUIT)  # immediate shutdown
        time.sleep(0.5)
    except (OSError, ValueError, IndexError):
        pass
    shutil.rmtree(state_dir.parent, ignore_errors=True)


@pytest.fixture
def make_state_dir() -> Iterator[Callable[[], Path]]:
    """``make()`` returns a new, empty state folder; all are cleaned up after the test."""
    need_server_programs()
    made: list[Path] = []

    def make() -> Path:
        made.append(new_state_dir())
        return made[-1]

    try:
        yield make
    finally:
        for state_dir in made:
            stop_leftover(state_dir)


@pytest.fixture(scope="module")
def private_cluster() -> Iterator[Cluster]:
    """One private cluster for the test module (keep the module on one xdist worker)."""
    need_server_programs()
    state_dir = new_state_dir()
    try:
        with open_cluster(state_dir) as cluster:
            yield cluster
    finally:
        stop_leftover(state_dir)


def database_url(cluster: Cluster, name: str) -> URL:
    return URL.create(
        "postgresql+psycopg",
        username=SUPERUSER,
        database=name,
        query={"host": str(cluster.socket_dir), "port": str(PORT)},
    )


def fresh_database(cluster: Cluster, name: str) -> Engine:
    """An engine on a new, empty database ``name`` in ``cluster`` (dropped first if a
    previous test made it). The caller disposes of the engine."""
    with psycopg.connect(cluster.conninfo("postgres"), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    return create_engine(database_url(cluster, name))


def run_python(code: str) -> subprocess.Popen[str]:
    """Start ``python -c code`` in this environment, pipes on its standard streams."""
    return subprocess.Popen(
        [sys.executable, "-c", code],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
