"""The private PostgreSQL cluster that ``safehold serve`` runs when no database is given.

The cluster lives under the state folder and is made from the machine's own PostgreSQL
server programs (Debian's ``postgresql`` package)::

    STATE_DIR/cluster.lock          one process at a time decides to create, start or stop
    STATE_DIR/cluster.users         every process using the cluster holds a shared lock on it
    STATE_DIR/postgresql/           the server user's folder (0700)
        data/                       made by initdb (data.new/ while initdb runs)
        run/.s.PGSQL.5432           the only way in: a unix socket, no TCP port
        server.log                  the server's own log

``initdb`` refuses to run as root, so a root process runs the server programs as Debian's
``postgres`` system user (through ``runuser``) and hands it the ``postgresql/`` folder;
any other user runs them as itself. Logins are trusted on the socket and nothing else is
accepted: the socket and its folder are 0700, so only the server's user and root (which
any file permission lets through) can reach it, as with a SQLite file of the same mode.

Several processes may share one state folder (``safehold serve`` and a ``safehold plans``
beside it, or two ``serve`` started at once). Each decision to create, start or stop is
taken under an exclusive ``flock`` on ``cluster.lock``; every user holds a shared lock on
``cluster.users`` for as long as it uses the cluster, and on leaving stops the server only
if it can then take that lock exclusively, that is if it was the last one. A process that
joined a running cluster therefore never stops it under another's feet, and a cluster left
running by a process killed with SIGKILL is stopped by the last one to use it next.
``flock`` locks belong to an open file, not to a process, so two :func:`open_cluster` in
one process count as two users, and the kernel drops a dead process's locks.
"""

from __future__ import annotations

import fcntl
import os
import pwd
import shutil
import subprocess
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from safehold.errors import DatabaseError, DatabaseNotInstalled, UsageError

__all__ = [
    "DATABASE_NAME",
    "SERVER_USER",
    "Cluster",
    "default_state_dir",
    "find_bin_dir",
    "open_cluster",
]

DATABASE_NAME = "safehold"
SUPERUSER = "safehold"
# The system user Debian's package creates; the server runs as it when safehold is root.
SERVER_USER = "postgres"
# With no TCP listener the port only names the socket file: ``.s.PGSQL.5432``.
PORT = 5432
# A unix socket's path is at most 107 bytes (108 with the NUL ending it, Linux's sun_path).
_SOCKET_PATH_MAX = 107
_START_TIMEOUT = 60
# After a SIGKILL of the postmaster its backends take a moment to notice and exit; until
# they have, a new server refuses the still-attached shared memory. Retried this long.
_STALE_RETRY_SECONDS = 15.0

_MISSING = (
    "PostgreSQL's server programs (initdb, pg_ctl, postgres) are not installed: install the "
    "Debian package 'postgresql', or give --database postgresql://USER@HOST/DB to use a "
    "running server"
)


def default_state_dir() -> Path:
    """``/var/lib/safehold`` for root, else ``$XDG_DATA_HOME/safehold`` (by default
    ``~/.local/share/safehold``)."""
    if os.geteuid() == 0:
        return Path("/var/lib/safehold")
    data_home = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(data_home) / "safehold"


def _has_server_programs(folder: Path) -> bool:
    return all(os.access(folder / name, os.X_OK) for name in ("initdb", "pg_ctl", "postgres"))


def _version_key(folder: Path) -> tuple[int, str]:
    name = folder.parent.name
    return (int(name), name) if name.isascii() and name.isdigit() else (-1, name)


def find_bin_dir(bin_dir: Path | None = None, *, version: str | None = None) -> Path:
    """The folder holding ``initdb``, ``pg_ctl`` and ``postgres``.

    ``bin_dir`` when given (and nothing else); otherwise the newest of Debian's
    ``/usr/lib/postgresql/<version>/bin`` (the programs are not on PATH there), then the
    folder of a ``pg_ctl`` on PATH (other distributions). With ``version`` (the major
    version an existing cluster was made with: a server opens only its own version's
    files), only programs of that version.
    """
    if bin_dir is not None:
        candidates = [bin_dir]
    else:
        debian = sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=_version_key)
        candidates = list(reversed(debian))
        on_path = shutil.which("pg_ctl")
        if on_path is not None:
            candidates.append(Path(on_path).resolve().parent)
    for folder in candidates:
        if _has_server_programs(folder) and (version is None or _major(folder) == version):
            return folder
    if version is None:
        raise DatabaseNotInstalled(_MISSING)
    raise DatabaseNotInstalled(
        f"the private PostgreSQL cluster was made by PostgreSQL {version}, whose server "
        f"programs are not installed: install the Debian package 'postgresql-{version}' "
        "(or move the cluster to an installed version with pg_upgrade)"
    )


def _major(folder: Path) -> str | None:
    """The major version of the programs in ``folder`` ("15"), from ``pg_ctl --version``."""
    if folder.parent.parent == Path("/usr/lib/postgresql"):
        return folder.parent.name  # Debian names the folder so
    try:
        done = subprocess.run(
            [str(folder / "pg_ctl"), "--version"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    except OSError:
        return None
    # "pg_ctl (PostgreSQL) 15.14 (Debian 15.14-0+deb12u1)"
    words = done.stdout.split()
    return words[2].split(".")[0] if len(words) > 2 else None


@dataclass(frozen=True)
class _Account:
    """Who runs the server programs: None for this process's own user."""

    name: str | None
    uid: int
    gid: int

    @classmethod
    def for_this_process(cls) -> _Account:
        if os.geteuid() != 0:
            return cls(None, os.geteuid(), os.getegid())
        try:
            entry = pwd.getpwnam(SERVER_USER)
        except KeyError:
            raise DatabaseNotInstalled(
                f"there is no '{SERVER_USER}' system user to run the private PostgreSQL "
                "cluster as (initdb refuses root): install the Debian package 'postgresql', "
                "or give --database postgresql://USER@HOST/DB to use a running server"
            ) from None
        return cls(SERVER_USER, entry.pw_uid, entry.pw_gid)

    def command(self, argv: Sequence[str]) -> list[str]:
        if self.name is None:
            return list(argv)
        return ["runuser", "-u", self.name, "--", *argv]

    def give(self, path: Path) -> None:
        if self.name is not None:
            os.chown(path, self.uid, self.gid)


@dataclass(frozen=True)
class Cluster:
    """Where a private cluster lives and how to reach it. Made by :func:`open_cluster`."""

    state_dir: Path
    bin_dir: Path

    @property
    def root(self) -> Path:
        """``STATE_DIR/postgresql``: the server user's folder."""
        return self.state_dir / "postgresql"

    @property
    def data_dir(self) -> Path:
        """The cluster itself (initdb's folder)."""
        return self.root / "data"

    @property
    def socket_dir(self) -> Path:
        """The folder of the unix socket, the only way in."""
        return self.root / "run"

    @property
    def log_path(self) -> Path:
        """PostgreSQL's own log: where to look when the server does not start."""
        return self.root / "server.log"

    @property
    def socket_path(self) -> Path:
        """The socket file (at most 107 bytes long, checked when the cluster opens)."""
        return self.socket_dir / f".s.PGSQL.{PORT}"

    def conninfo(self, dbname: str = DATABASE_NAME) -> str:
        """A libpq connection string for the socket (no password: the socket is trusted)."""
        return f"host='{self.socket_dir}' port={PORT} user={SUPERUSER} dbname={dbname}"

    def pid(self) -> int | None:
        """The postmaster's process id, when ``postmaster.pid`` names one."""
        try:
            return int((self.data_dir / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None


@contextmanager
def open_cluster(
    state_dir: Path | None = None, *, bin_dir: Path | None = None
) -> Iterator[Cluster]:
    """Use the private cluster of ``state_dir``: create it the first time, start it unless it
    runs, and stop it on leaving if no other process uses it any more."""
    state_dir = (state_dir or default_state_dir()).absolute()
    made_by = _made_by(state_dir / "postgresql" / "data")
    cluster = Cluster(state_dir, find_bin_dir(bin_dir, version=made_by))
    _check_socket_path(cluster)
    account = _Account.for_this_process()
    _make_state_dir(state_dir, account)
    decide = _open_lock(state_dir / "cluster.lock")
    users = _open_lock(state_dir / "cluster.users")
    try:
        with _held(decide):
            fcntl.flock(users, fcntl.LOCK_SH)
            try:
                _ensure_running(cluster, account)
            except BaseException:
                _leave(cluster, account, users)
                raise
        try:
            yield cluster
        finally:
            with _held(decide):
                _leave(cluster, account, users)
    finally:
        os.close(users)
        os.close(decide)


def _made_by(data_dir: Path) -> str | None:
    """The major version of PostgreSQL that made the cluster in ``data_dir``, if any."""
    try:
        return (data_dir / "PG_VERSION").read_text().strip() or None
    except OSError:
        return None


def _leave(cluster: Cluster, account: _Account, users: int) -> None:
    fcntl.flock(users, fcntl.LOCK_UN)
    try:
        fcntl.flock(users, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return  # another process still uses the cluster: it stops it when it leaves
    try:
        if _running(cluster, account):
            try:
                _pg_ctl(cluster, account, "stop", "-m", "fast")
            except DatabaseError:
                # A server killed a moment ago can look alive to pg_ctl until it is
                # reaped; gone is what stopping it was for.
                if _running(cluster, account):
                    raise
    finally:
        fcntl.flock(users, fcntl.LOCK_UN)


def _check_socket_path(cluster: Cluster) -> None:
    path = str(cluster.socket_path)
    if len(path.encode()) > _SOCKET_PATH_MAX:
        raise UsageError(
            f"the state folder {cluster.state_dir} is too deep for the private cluster's "
            f"socket ({path} is {len(path.encode())} bytes, a socket path at most "
            f"{_SOCKET_PATH_MAX})",
            hint="choose a shorter --state-dir",
        )
    if any(c in path for c in "\"',\n"):
        raise UsageError(
            f"the state folder {cluster.state_dir} has a quote, comma or line break in its "
            "path, which PostgreSQL's socket setting cannot hold",
            hint="choose another --state-dir",
        )


def _make_state_dir(state_dir: Path, account: _Account) -> None:
    if not state_dir.is_dir():
        state_dir.mkdir(parents=True, exist_ok=True)
        # The server's user must pass through (not read) the state folder to its own.
        state_dir.chmod(0o711 if account.name is not None else 0o700)


def _open_lock(path: Path) -> int:
    return os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)


@contextmanager
def _held(fd: int) -> Iterator[None]:
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)


def _run(
    account: _Account, argv: Sequence[str], *, cwd: Path, timeout: float
) -> subprocess.CompletedProcess[str]:
    # cwd: a server user may not enter the caller's folder (root's home), and initdb and
    # pg_ctl want to read theirs.
    return subprocess.run(
        account.command(argv),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        stdin=subprocess.DEVNULL,
    )


def _pg_ctl(
    cluster: Cluster, account: _Account, *args: str, check: bool = True
) -> subprocess.CompletedProcess[str]:
    done = _run(
        account,
        [
            str(cluster.bin_dir / "pg_ctl"),
            *("-D", str(cluster.data_dir), "-w", "-t", str(_START_TIMEOUT), *args),
        ],
        cwd=cluster.root,
        timeout=_START_TIMEOUT + 15,
    )
    if check and done.returncode != 0:
        raise DatabaseError(
            f"pg_ctl {args[0]} of the private PostgreSQL cluster failed: "
            f"{_last_line(done.stderr or done.stdout)}",
            hint=f"its log is {cluster.log_path}",
        )
    return done


def _running(cluster: Cluster, account: _Account) -> bool:
    # 0: running; 3: not running (no postmaster.pid, or one naming a dead process); 4: no
    # data folder.
    return _pg_ctl(cluster, account, "status", check=False).returncode == 0


def _forget_stale_pid_file(cluster: Cluster) -> None:
    """Remove a ``postmaster.pid`` whose process id now belongs to another program.

    pg_ctl and the server take a ``postmaster.pid`` naming a live process of the server's
    user for a running server. After a crash and a restart of the machine or container,
    process ids start again from the bottom and the dead server's id may be some other
    program's: then neither would start the cluster, ever. A postmaster's command line
    names the ``postgres`` program.
    """
    pid = cluster.pid()
    if pid is None:
        return
    try:
        argv0 = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0]
    except OSError:
        return  # gone (or no /proc): pg_ctl sees a dead process itself
    if os.path.basename(argv0) not in (b"postgres", b"postmaster"):
        (cluster.data_dir / "postmaster.pid").unlink(missing_ok=True)


def _ensure_running(cluster: Cluster, account: _Account) -> None:
    _make_server_folder(cluster, account)
    if not (cluster.data_dir / "PG_VERSION").exists():
        _initdb(cluster, account)
    _write_settings(cluster, account)
    _forget_stale_pid_file(cluster)
    if not _running(cluster, account):
        _start(cluster, account)
    _create_database(cluster)


def _make_server_folder(cluster: Cluster, account: _Account) -> None:
    for folder in (cluster.root, cluster.socket_dir):
        folder.mkdir(mode=0o700, exist_ok=True)
        account.give(folder)
    if account.name is not None:
        probe = _run(account, ["test", "-w", str(cluster.root)], cwd=Path("/"), timeout=30)
        if probe.returncode != 0:
            raise DatabaseError(
                f"the '{account.name}' user cannot reach {cluster.root}, where the private "
                "PostgreSQL cluster lives",
                hint=f"let it pass through every folder above it (chmod o+x), or choose "
                f"another --state-dir than {cluster.state_dir}",
            )


def _initdb(cluster: Cluster, account: _Account) -> None:
    # initdb writes into a fresh folder renamed into place only when complete, so a crash
    # half way leaves nothing that looks like a cluster.
    staging = cluster.root / "data.new"
    shutil.rmtree(staging, ignore_errors=True)
    done = _run(
        account,
        [
            *(str(cluster.bin_dir / "initdb"), "-D", str(staging), "-U", SUPERUSER),
            *("--auth-local=trust", "--auth-host=reject", "-E", "UTF8", "--locale=C.UTF-8"),
        ],
        cwd=cluster.root,
        timeout=300,
    )
    if done.returncode != 0:
        raise DatabaseError(
            f"initdb of the private PostgreSQL cluster in {staging} failed: "
            f"{_last_line(done.stderr or done.stdout)}"
        )
    conf = staging / "postgresql.conf"
    with conf.open("a") as f:
        f.write("\n# safehold's settings, rewritten at every start\ninclude 'safehold.conf'\n")
    staging.rename(cluster.data_dir)


def _write_settings(cluster: Cluster, account: _Account) -> None:
    # Rewritten at every start, so that a moved state folder moves its socket too.
    settings = cluster.data_dir / "safehold.conf"
    settings.write_text(
        "listen_addresses = ''\n"
        f"unix_socket_directories = '{cluster.socket_dir}'\n"
        "unix_socket_permissions = 0700\n"
        f"port = {PORT}\n"
    )
    account.give(settings)


def _start(cluster: Cluster, account: _Account) -> None:
    deadline = time.monotonic() + _STALE_RETRY_SECONDS
    while True:
        done = _pg_ctl(cluster, account, "start", "-l", str(cluster.log_path), check=False)
        if done.returncode == 0:
            return
        if time.monotonic() > deadline or not _stale_leftovers(cluster):
            raise DatabaseError(
                "the private PostgreSQL cluster did not start: "
                f"{_last_line(_log_tail(cluster) or done.stderr or done.stdout)}",
                hint=f"its log is {cluster.log_path}",
            )
        time.sleep(0.2)


def _stale_leftovers(cluster: Cluster) -> bool:
    """Whether a start failed for what a killed server leaves behind for a moment."""
    tail = _log_tail(cluster)
    return "pre-existing shared memory block" in tail or "lock file" in tail


def _log_tail(cluster: Cluster) -> str:
    try:
        with cluster.log_path.open("rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - 4096))
            return f.read().decode(errors="replace")
    except OSError:
        return ""


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else "no output"


def _create_database(cluster: Cluster) -> None:
    import psycopg

    try:
        with psycopg.connect(cluster.conninfo("postgres"), autocommit=True) as conn:
            found = conn.execute(
                "SELECT 1 FROM pg_database WHERE datname = %s", (DATABASE_NAME,)
            ).fetchone()
            if found is None:
                conn.execute(f'CREATE DATABASE "{DATABASE_NAME}"')
    except psycopg.OperationalError as exc:
        raise DatabaseError(
            f"the private PostgreSQL cluster does not answer on {cluster.socket_path}: "
            f"{_last_line(str(exc))}",
            hint=f"its log is {cluster.log_path}",
        ) from exc
