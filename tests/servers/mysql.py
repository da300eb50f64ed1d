"""MariaDB servers on free 127.0.0.1 ports, for the mysql source.

Each server is a fresh ``mariadb-install-db`` data folder in a temporary folder owned by
the ``mysql`` user, run by ``mariadbd --user=mysql``. ``root`` logs in over TCP without a
password; the user ``safehold_pw`` (password ``MY_PASSWORD``) has every privilege and is
there for the wrong-credentials tests.

* ``mysql_server`` — one per session (per xdist worker); tests create their own databases.
* ``mysql_server_factory`` — ``make()`` returns a private extra server (to restore into,
  or to stop and start again); all are stopped when the test ends.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.servers import ServerProcess, free_port, need_binary

__all__ = ["MY_PASSWORD", "MY_USER_PW", "MysqlServer", "mysql_server", "mysql_server_factory"]

MY_USER_PW = "safehold_pw"
MY_PASSWORD = "right-password"


@dataclass
class MysqlServer:
    root: Path
    port: int = field(default_factory=free_port)
    proc: ServerProcess | None = None

    @property
    def data(self) -> Path:
        return self.root / "data"

    def init(self) -> None:
        shutil.chown(self.root, "mysql", "mysql")
        subprocess.run(
            [
                need_binary("mariadb-install-db", "mariadb-server"),
                *("--no-defaults", "--user=mysql", f"--datadir={self.data}"),
                *("--auth-root-authentication-method=normal", "--skip-test-db"),
            ],
            check=True,
            capture_output=True,
        )

    def start(self) -> None:
        self.proc = ServerProcess(
            "mariadb",
            [
                need_binary("mariadbd", "mariadb-server"),
                *("--no-defaults", "--user=mysql", f"--datadir={self.data}"),
                *(f"--socket={self.root}/sock", f"--pid-file={self.root}/pid"),
                *("--bind-address=127.0.0.1", f"--port={self.port}", "--skip-name-resolve"),
                *("--innodb-buffer-pool-size=64M", "--innodb-flush-log-at-trx-commit=0"),
                "--skip-log-bin",
            ],
            self.root,
        )
        self.proc.wait_ready(lambda: self.sql("SELECT 1", check=False) == "1", timeout=60)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop(timeout=30)
            self.proc = None

    def sql(self, sql: str, db: str | None = None, *, check: bool = True) -> str:
        """Run ``sql`` as root; tab-separated rows without headers."""
        argv = ["mariadb", "--no-defaults", "-h", "127.0.0.1", "-P", str(self.port), "-u", "root"]
        argv += ["--batch", "--skip-column-names"]
        if db:
            argv.append(db)
        done = subprocess.run(
            argv, input=sql, capture_output=True, text=True, check=False, timeout=120
        )
        if check and done.returncode != 0:
            raise RuntimeError(f"mariadb failed: {done.stderr.strip()}")
        return done.stdout.strip()


def _new_server() -> MysqlServer:
    # Not under pytest's tmp_path: its folders are 0700 root, closed to the mysql user.
    server = MysqlServer(Path(tempfile.mkdtemp(prefix="safehold-test-mariadb-")))
    try:
        server.init()
        server.start()
        server.sql(
            f"CREATE USER '{MY_USER_PW}'@'%' IDENTIFIED BY '{MY_PASSWORD}';"
            f"GRANT ALL ON *.* TO '{MY_USER_PW}'@'%' WITH GRANT OPTION;"
        )
    except BaseException:
        _discard(server)
        raise
    return server


def _discard(server: MysqlServer) -> None:
    server.stop()
    shutil.rmtree(server.root, ignore_errors=True)


@pytest.fixture(scope="session")
def mysql_server() -> Iterator[MysqlServer]:
    server = _new_server()
    try:
        yield server
    finally:
        _discard(server)


@pytest.fixture
def mysql_server_factory() -> Iterator[Callable[[], MysqlServer]]:
    made: list[MysqlServer] = []

    def make() -> MysqlServer:
        server = _new_server()
        made.append(server)
        return server

    try:
        yield make
    finally:
        for server in made:
            _discard(server)
