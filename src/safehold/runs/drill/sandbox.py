"""Sandboxes: the scratch places a drill restores into, made and removed by the drill.

Each sandbox lives in one temporary folder (``safehold-drill-*``) and is a context
manager: leaving it, however the drill ended (a failed check, an error, Ctrl-C or the
service's stop, which reaches the child as SIGINT), stops its server's process group and
removes the folder. Servers are the machine's own binaries on a free 127.0.0.1 port,
never the machine's running services.

A sandbox offers:

- ``target``: what the source's normal restore is given (a ``postgresql://`` or
  ``mysql://`` URL without credentials, an RDB path, a file or a folder);
- ``options``: restore options the sandbox needs (e.g. MariaDB's generated password,
  which must not appear in the target because targets are logged);
- ``ready()``: called after the restore, inside the measured restore time (Redis starts
  here, loading the restored RDB: a server that serves the data is the restore's end);
- ``env()``: its connection details for a check command (``SAFEHOLD_DRILL_*``, and the
  client's own variables such as ``PGHOST``).
"""

from __future__ import annotations

import glob
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from safehold.errors import SafeholdError

__all__ = [
    "FolderSandbox",
    "MariadbSandbox",
    "PostgresSandbox",
    "RedisSandbox",
    "Sandbox",
    "SandboxError",
    "SqliteSandbox",
    "make_sandbox",
    "remove_stale_sandboxes",
]

START_TIMEOUT = 120.0  # seconds a scratch server may take to answer
PREFIX = "safehold-drill-"
OWNER_FILE = "drill.pid"  # the drill's process id: a folder whose drill is gone is stale


class SandboxError(SafeholdError):
    """A sandbox could not be made (a binary missing, a server that would not start)."""


def free_port() -> int:
    """A free TCP port on 127.0.0.1 (the kernel's choice)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _find(name: str, package: str, extra: Sequence[str] = ()) -> str:
    found = shutil.which(name) or next((p for p in extra if os.access(p, os.X_OK)), None)
    if found is None:
        raise SandboxError(
            f"the drill's sandbox needs {name}, which is not installed",
            hint=f"install {package} on the machine that runs the drill",
        )
    return found


def _service_user(name: str) -> str | None:
    """The system user to run a server as when safehold runs as root (PostgreSQL and
    MariaDB refuse root); None when not root."""
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam(name)
    except KeyError:
        raise SandboxError(
            f"running as root, the sandbox's server must run as user {name!r}, which does "
            "not exist",
            hint=f"install the server package (it creates {name!r}), or run as another user",
        ) from None
    return name


class Sandbox:
    """The base of every sandbox: a private temporary folder, removed on exit."""

    kind = ""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix=PREFIX))
        (self.root / OWNER_FILE).write_text(f"{os.getpid()}\n")
        self.target = ""
        self.options: dict[str, object] = {}
        self._procs: list[tuple[subprocess.Popen[bytes], Callable[[], None] | None]] = []

    def __enter__(self) -> Sandbox:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> None:
        """Make the sandbox ready to be restored into."""

    def ready(self) -> None:
        """After the restore: make the restored copy serve (inside the measured time)."""

    def env(self) -> dict[str, str]:
        """The connection details a check command gets in its environment."""
        return {"SAFEHOLD_DRILL_KIND": self.kind, "SAFEHOLD_DRILL_TARGET": self.target}

    def close(self) -> None:
        """Stop every server started and remove the folder; never raises."""
        for proc, stop in reversed(self._procs):
            if proc.poll() is None:
                try:
                    (stop or proc.terminate)()
                    proc.wait(20)
                except (OSError, ValueError, IndexError, subprocess.SubprocessError):
                    pass
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        self._procs.clear()
        shutil.rmtree(self.root, ignore_errors=True)

    # --- helpers for the servers ------------------------------------------------------

    def _give(self, user: str | None) -> None:
        """Hand the folder to the server's user (it must write there)."""
        if user is not None:
            shutil.chown(self.root, user, user)

    def _run(self, argv: list[str], what: str, *, user: str | None = None) -> str:
        cmd = ["runuser", "-u", user, "--", *argv] if user else argv
        done = subprocess.run(
            cmd, capture_output=True, text=True, check=False, cwd=self.root, timeout=600
        )
        if done.returncode != 0:
            tail = (done.stderr or done.stdout).strip()[-2000:]
            raise SandboxError(f"the sandbox's {what} failed (exit {done.returncode}): {tail}")
        return done.stdout

    def _spawn(
        self,
        argv: list[str],
        name: str,
        ready: Callable[[], bool],
        *,
        user: str | None = None,
        stop: Callable[[], None] | None = None,
    ) -> None:
        """Start a server in its own process group, its output in ``name.log``, and wait
        until ``ready`` says it answers."""
        cmd = ["runuser", "-u", user, "--", *argv] if user else argv
        log_path = self.root / f"{name}.log"
        with open(log_path, "ab") as log:
            proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.root,
                # In the drill's own process group (no new session): when the service
                # kills a drill's child and its group, its servers go with it.
            )
        self._procs.append((proc, stop))
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                break
            try:
                if ready():
                    return
            except (OSError, SafeholdError, subprocess.SubprocessError):
                pass
            time.sleep(0.1)
        try:
            tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-15:])
        except OSError:
            tail = ""
        state = f"exited with {proc.returncode}" if proc.poll() is not None else "did not answer"
        raise SandboxError(f"the sandbox's {name} server {state}:\n{tail}")


class PostgresSandbox(Sandbox):
    """A scratch PostgreSQL cluster (``initdb``, trust logins on 127.0.0.1 only)."""

    kind = "postgres"

    def __init__(self) -> None:
        super().__init__()
        self.port = free_port()
        self.user = _service_user("postgres")

    def _bin(self, name: str) -> str:
        # Debian keeps the server binaries out of PATH: the newest installed major.
        found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), key=_major)
        return _find(name, "postgresql (the server package)", found[::-1])

    def start(self) -> None:
        """``initdb`` and start a cluster on a free port, its socket in the folder."""
        self._give(self.user)
        data = self.root / "data"
        self._run(
            [
                self._bin("initdb"),
                "-D",
                str(data),
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--locale=C.UTF-8",
                "-N",
            ],
            "initdb",
            user=self.user,
        )
        pid_file = data / "postmaster.pid"

        def fast_stop() -> None:
            # SIGINT is PostgreSQL's fast shutdown; the postmaster is runuser's child.
            os.kill(int(pid_file.read_text().split()[0]), signal.SIGINT)

        self._spawn(
            [
                self._bin("postgres"),
                "-D",
                str(data),
                "-p",
                str(self.port),
                "-c",
                "listen_addresses=127.0.0.1",
                "-k",
                str(self.root),
                "-c",
                "fsync=off",
                "-c",
                "full_page_writes=off",
                "-c",
                "synchronous_commit=off",
            ],
            "postgres",
            lambda: self.psql("SELECT 1").strip() == "1",
            user=self.user,
            stop=fast_stop,
        )
        self.target = f"postgresql://postgres@127.0.0.1:{self.port}"
        # The sandbox has only its superuser: owners and grants of roles it lacks are
        # left out rather than failing the restore (the data is what is proven).
        self.options = {"no_owner": True}

    def psql(self, sql: str, db: str = "postgres", *, timeout: float = 600.0) -> str:
        """Run ``sql``; unaligned, tuples only, fields by tabs. Raises on an error."""
        done = subprocess.run(
            [
                _find("psql", "postgresql-client"),
                "-X",
                "-q",
                "-A",
                "-t",
                "-F",
                "\t",
                "-v",
                "ON_ERROR_STOP=1",
                "-h",
                "127.0.0.1",
                "-p",
                str(self.port),
                "-U",
                "postgres",
                "-d",
                db,
            ],
            input=sql,
            capture_output=True,
            text=True,
            check=False,
            timeout=timeout,
            env={**os.environ, "PGCONNECT_TIMEOUT": "5"},
        )
        if done.returncode != 0:
            raise SandboxError(f"psql failed: {done.stderr.strip()[-2000:]}")
        return done.stdout

    def env(self) -> dict[str, str]:
        """``PGHOST``/``PGPORT``/``PGUSER`` and the sandbox's URL."""
        return {
            **super().env(),
            "SAFEHOLD_DRILL_URL": self.target,
            "SAFEHOLD_DRILL_HOST": "127.0.0.1",
            "SAFEHOLD_DRILL_PORT": str(self.port),
            "SAFEHOLD_DRILL_USER": "postgres",
            "PGHOST": "127.0.0.1",
            "PGPORT": str(self.port),
            "PGUSER": "postgres",
        }


def _major(path: str) -> int:
    try:
        return int(Path(path).parent.parent.name)
    except ValueError:
        return 0


class MariadbSandbox(Sandbox):
    """A scratch MariaDB server (``mariadb-install-db`` and ``mariadbd``), with a user of
    its own whose random password reaches the restore as an option, never the target."""

    kind = "mysql"
    DRILL_USER = "safehold_drill"

    def __init__(self) -> None:
        super().__init__()
        self.port = free_port()
        self.user = _service_user("mysql")
        self.password = secrets.token_urlsafe(18)

    def start(self) -> None:
        """Make the data folder, start the server, create the drill's user."""
        self._give(self.user)
        as_user = [f"--user={self.user}"] if self.user else []
        install = _find("mariadb-install-db", "mariadb-server", ["/usr/bin/mariadb-install-db"])
        self._run(
            [
                install,
                "--no-defaults",
                *as_user,
                f"--datadir={self.root / 'data'}",
                "--auth-root-authentication-method=normal",
                "--skip-test-db",
                # Its own folder, not $TMPDIR, which the mysql user may not write to.
                f"--tmpdir={self.root}",
            ],
            "mariadb-install-db",
        )
        server = _find("mariadbd", "mariadb-server", ["/usr/sbin/mariadbd"])
        self._spawn(
            [
                server,
                "--no-defaults",
                *as_user,
                f"--datadir={self.root / 'data'}",
                f"--socket={self.socket}",
                f"--pid-file={self.root / 'pid'}",
                "--bind-address=127.0.0.1",
                f"--port={self.port}",
                "--skip-name-resolve",
                "--innodb-buffer-pool-size=64M",
                "--innodb-flush-log-at-trx-commit=0",
                "--skip-log-bin",
                f"--tmpdir={self.root}",
            ],
            "mariadb",
            lambda: self._root_sql("SELECT 1").strip() == "1",
        )
        self._root_sql(
            f"CREATE USER '{self.DRILL_USER}'@'%' IDENTIFIED BY '{self.password}';"
            f"GRANT ALL ON *.* TO '{self.DRILL_USER}'@'%' WITH GRANT OPTION;"
        )
        self.target = f"mysql://{self.DRILL_USER}@127.0.0.1:{self.port}"
        self.options = {"password": self.password}

    @property
    def socket(self) -> Path:
        """The server's Unix socket."""
        return self.root / "sock"

    def _root_sql(self, sql: str) -> str:
        # root through the socket, from this machine's root account only (normal auth,
        # no password: the socket is in the sandbox's private folder).
        return self._run(
            [
                _find("mariadb", "mariadb-client"),
                "--no-defaults",
                f"--socket={self.socket}",
                "-u",
                "root",
                "--batch",
                "--skip-column-names",
                "-e",
                sql,
            ],
            "mariadb client",
        )

    def sql(self, sql: str, db: str | None = None, *, timeout: float = 600.0) -> str:
        """Run ``sql`` as the drill's user; rows on lines, fields by tabs."""
        argv = [_find("mariadb", "mariadb-client"), "--no-defaults", "-h", "127.0.0.1",
                "-P", str(self.port), "-u", self.DRILL_USER, "--batch",
                "--skip-column-names"]  # fmt: skip
        if db:
            argv.append(db)
        done = subprocess.run(
            argv,
            input=sql,
            capture_output=True,
            text=True,
            check=False,
            timeout=timeout,
            # In the client's environment only: never on its command line (ps shows it).
            env={**os.environ, "MYSQL_PWD": self.password},
        )
        if done.returncode != 0:
            raise SandboxError(f"mariadb failed: {done.stderr.strip()[-2000:]}")
        return done.stdout

    def env(self) -> dict[str, str]:
        """Host, port, user and password (``MYSQL_PWD``, which the clients read)."""
        return {
            **super().env(),
            "SAFEHOLD_DRILL_URL": self.target,
            "SAFEHOLD_DRILL_HOST": "127.0.0.1",
            "SAFEHOLD_DRILL_PORT": str(self.port),
            "SAFEHOLD_DRILL_USER": self.DRILL_USER,
            "SAFEHOLD_DRILL_PASSWORD": self.password,
            "MYSQL_PWD": self.password,
        }


class RedisSandbox(Sandbox):
    """A folder for the restored RDB, then a scratch ``redis-server`` that loads it."""

    kind = "redis"

    def __init__(self) -> None:
        super().__init__()
        self.port = free_port()

    def start(self) -> None:
        """Nothing runs yet: the restore places ``dump.rdb`` in the folder."""
        self.target = str(self.root / "dump.rdb")
        # The source's own server answers elsewhere: the restore must not refuse because
        # of it (it checks that no server runs on the *source's* address).
        self.options = {"check_server": False}

    def ready(self) -> None:
        """Start ``redis-server`` on the RDB and wait until it has loaded it."""
        from safehold.sources.redis_util import RedisConnection

        def loaded() -> bool:
            with RedisConnection("127.0.0.1", self.port, timeout=2.0) as conn:
                info = conn.call("INFO", "persistence")
            return isinstance(info, bytes) and b"loading:0" in info

        self._spawn(
            [
                _find("redis-server", "redis-server"),
                "--bind",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--dir",
                str(self.root),
                "--dbfilename",
                "dump.rdb",
                "--save",
                "",
                "--appendonly",
                "no",
                "--daemonize",
                "no",
            ],
            "redis",
            loaded,
        )

    def env(self) -> dict[str, str]:
        """Host and port of the scratch server."""
        return {
            **super().env(),
            "SAFEHOLD_DRILL_URL": f"redis://127.0.0.1:{self.port}",
            "SAFEHOLD_DRILL_HOST": "127.0.0.1",
            "SAFEHOLD_DRILL_PORT": str(self.port),
            "REDISCLI_HOST": "127.0.0.1",
        }


class SqliteSandbox(Sandbox):
    """A temporary file the database is restored to."""

    kind = "sqlite"

    def start(self) -> None:
        """The target is a file in the folder, not there yet."""
        self.target = str(self.root / "restored.db")

    def env(self) -> dict[str, str]:
        """The restored file's path."""
        return {**super().env(), "SAFEHOLD_DRILL_PATH": self.target}


class FolderSandbox(Sandbox):
    """A temporary folder the tree is restored under."""

    kind = "directory"

    def start(self) -> None:
        """The target is an empty folder."""
        tree = self.root / "tree"
        tree.mkdir()
        self.target = str(tree)

    def env(self) -> dict[str, str]:
        """The folder's path."""
        return {**super().env(), "SAFEHOLD_DRILL_PATH": self.target}


def remove_stale_sandboxes(folder: str | None = None) -> list[str]:
    """Remove the sandboxes in ``folder`` (default: the temporary folder) whose drill's
    process is gone; the removed paths. A drill killed outright (SIGKILL: the service's
    last resort) takes its servers with it, as they are in its process group, but cannot
    remove its folder; the next drill on the machine does."""
    removed = []
    for path in Path(folder or tempfile.gettempdir()).glob(f"{PREFIX}*"):
        try:
            pid = int((path / OWNER_FILE).read_text().strip())
        except (OSError, ValueError):
            continue  # not ours, or still being made
        try:
            os.kill(pid, 0)
            continue  # its drill still runs
        except ProcessLookupError:
            pass
        except PermissionError:
            continue  # another user's live process
        shutil.rmtree(path, ignore_errors=True)
        removed.append(str(path))
    return removed


_SANDBOXES: dict[str, type[Sandbox]] = {
    "postgres": PostgresSandbox,
    "mysql": MariadbSandbox,
    "redis": RedisSandbox,
    "sqlite": SqliteSandbox,
    "directory": FolderSandbox,
}


def make_sandbox(kind: str) -> Sandbox:
    """A new (not yet started) sandbox for a source of ``kind``."""
    made = _SANDBOXES.get(kind)
    if made is None:
        raise SandboxError(
            f"there is no drill sandbox for {kind!r} sources",
            hint=f"drills restore {', '.join(_SANDBOXES)}",
        )
    return made()
