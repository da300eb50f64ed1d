"""PostgreSQL 15 servers on free 127.0.0.1 ports, for the postgres source.

Each server is a fresh ``initdb`` cluster in a temporary folder owned by the ``postgres``
user (the server refuses to run as root), started as ``postgres -D DIR`` through
``runuser`` so :class:`ServerProcess` owns it. Local and loopback logins are trusted, except
for the role ``safehold_pw`` (password ``PG_PASSWORD``), which must use SCRAM over TCP: the
wrong-credentials tests need one role whose password is really checked.

* ``pg_server`` — one per session (per xdist worker); tests create their own databases.
* ``pg_server_factory`` — ``make()`` returns a private extra server (to restore into, or to
  stop and restart for the "database is down" cases); all are stopped when the test ends.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.servers import ServerProcess, free_port, unavailable

__all__ = ["PG_PASSWORD", "PG_USER_PW", "PgServer", "pg_bin", "pg_server", "pg_server_factory"]

PG_USER_PW = "safehold_pw"
PG_PASSWORD = "right-password"


def pg_bin() -> Path:
    """The newest installed PostgreSQL server binaries (initdb, postgres, pgbench)."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: p.parent)
    if not found:
        unavailable(
            "PostgreSQL is not installed: apt-get install postgresql (scripts/test-deps.sh)"
        )
    return found[-1].parent


@dataclass
class PgServer:
    """A private PostgreSQL cluster; ``url(db)`` connects as the trusted superuser."""

    root: Path
    port: int = field(default_factory=free_port)
    proc: ServerProcess | None = None

    @property
    def data(self) -> Path:
        return self.root / "data"

    def url(self, db: str = "postgres", user: str = "postgres") -> str:
        return f"postgresql://{user}@127.0.0.1:{self.port}/{db}"

    def init(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        shutil.chown(self.root, "postgres", "postgres")
        subprocess.run(
            [
                *("runuser", "-u", "postgres", "--", str(pg_bin() / "initdb")),
                *("-D", str(self.data), "-U", "postgres", "--auth=trust"),
                *("-E", "UTF8", "--locale=C.UTF-8", "-N"),
            ],
            check=True,
            capture_output=True,
        )
        hba = self.data / "pg_hba.conf"
        # First match wins: the password role must authenticate, everyone else is trusted.
        hba.write_text(f"host all {PG_USER_PW} 127.0.0.1/32 scram-sha-256\n" + hba.read_text())

    def start(self) -> None:
        self.proc = ServerProcess(
            "postgres",
            [
                *(str(pg_bin() / "postgres"), "-D", str(self.data), "-p", str(self.port)),
                *("-c", "listen_addresses=127.0.0.1", "-k", str(self.root), "-c", "fsync=off"),
                *("-c", "full_page_writes=off", "-c", "synchronous_commit=off"),
            ],
            self.root,
            user="postgres",
        )
        self.proc.wait_ready(lambda: self.psql("SELECT 1", check=False) == "1", timeout=60)

    def stop(self) -> None:
        if self.proc is None:
            return
        # SIGINT is PostgreSQL's "fast" shutdown; SIGTERM ("smart") would wait for clients.
        pid_file = self.data / "postmaster.pid"
        try:
            os.kill(int(pid_file.read_text().split()[0]), signal.SIGINT)
        except (OSError, ValueError, IndexError):
            pass
        self.proc.stop(timeout=20)
        self.proc = None

    def psql(self, sql: str, db: str = "postgres", *, check: bool = True) -> str:
        """Run ``sql``; the unaligned, tuples-only output (rows on lines, fields by '|')."""
        done = subprocess.run(
            ["psql", "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-d", self.url(db)],
            input=sql,
            capture_output=True,
            text=True,
            check=False,
            timeout=120,
        )
        if check and done.returncode != 0:
            raise RuntimeError(f"psql failed: {done.stderr.strip()}")
        return done.stdout.strip()

    def pgbench(self, *args: str, db: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [
                *(str(pg_bin() / "pgbench"), "-h", "127.0.0.1", "-p", str(self.port)),
                *("-U", "postgres", *args, db),
            ],
            capture_output=True,
            text=True,
            check=True,
            timeout=300,
        )


def _new_server() -> PgServer:
    # Not under pytest's tmp_path: its folders are 0700 root, which the postgres user
    # cannot enter. This folder is removed by _discard().
    server = PgServer(Path(tempfile.mkdtemp(prefix="safehold-test-pg-")))
    try:
        server.init()
        server.start()
        server.psql(f"CREATE ROLE {PG_USER_PW} LOGIN SUPERUSER PASSWORD '{PG_PASSWORD}'")
    except BaseException:
        _discard(server)
        raise
    return server


def _discard(server: PgServer) -> None:
    server.stop()
    shutil.rmtree(server.root, ignore_errors=True)


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    pg_bin()
    server = _new_server()
    try:
        yield server
    finally:
        _discard(server)


@pytest.fixture
def pg_server_factory() -> Iterator[Callable[[], PgServer]]:
    made: list[PgServer] = []

    def make() -> PgServer:
        pg_bin()
        server = _new_server()
        made.append(server)
        return server

    try:
        yield make
    finally:
        for server in made:
            _discard(server)
