"""MySQL and MariaDB: each database as a ``mariadb-dump`` (or ``mysqldump``) SQL stream.

Backup: one stream per database, ``<db>.sql``, dumped with ``--single-transaction``
(a consistent InnoDB snapshot without locking writers) plus routines, events and
triggers. One stream per database rather than one for all, because a single database
can then be restored on its own and under another name: the dump is made *without*
``--databases``, so it holds no ``CREATE DATABASE``/``USE`` lines that would pin its name.
The price: each database is consistent in itself, but two databases are dumped in two
transactions; applications that need several databases consistent with each other should
use a ``command`` source running one ``mariadb-dump --single-transaction --databases ...``.
``all`` means every database except the server's own (``mysql``, ``sys``,
``information_schema``, ``performance_schema``).

Credentials go into a client option file (mode 0600, in a private temporary folder,
removed afterwards) passed with ``--defaults-extra-file``; never on the command line.

Restore: each dump is piped into the ``mariadb``/``mysql`` client, into a database of the
same name or one chosen by the request, on the configured server or one given by URL
(``mysql://user@host:3306/db``). A target database that already has tables is refused
unless ``replace``, which drops and re-creates it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from typing import BinaryIO
from urllib.parse import quote, unquote, urlsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr

from safehold.errors import ConfigError, SourceError, TargetError
from safehold.sources.base import RestoreRequest, SnapshotFiles, Stream, StreamContent
from safehold.sources.dumps import select_dumps
from safehold.sources.process import ToolMissing, command_sink, command_stream, find_tool

__all__ = ["MysqlSource", "Settings", "build"]

PACKAGE = "mariadb-client (or default-mysql-client)"
SUFFIX = ".sql"
SYSTEM_DATABASES = frozenset({"information_schema", "performance_schema", "mysql", "sys"})
_COPY = 1 << 20


class Settings(BaseModel):
    """The ``mysql`` source's configuration keys."""

    model_config = ConfigDict(extra="forbid")

    # mysql://[user[:password]@]host[:port]; without it, the client's defaults (the local
    # socket). Not "host:", which every source block already has (the snapshots' host).
    url: SecretStr | None = None
    socket: str | None = None
    user: str | None = None  # overrides the URL's
    password: SecretStr | None = None  # else the URL's, the client's option files, MYSQL_PWD
    databases: str | list[str] = "all"  # one, a list, or "all"
    tool_path: str | None = None  # where to find mariadb-dump & co. (PATH syntax)
    extra_args: list[str] = Field(default_factory=list)  # more dump options
    connect_timeout: int = Field(default=15, ge=1)


class _Server:
    """Where to connect, as the [client] lines of an option file."""

    def __init__(
        self,
        host: str | None,
        port: int | None,
        socket: str | None,
        user: str | None,
        password: str | None,
        timeout: int,
    ) -> None:
        self.host, self.port, self.socket, self.user = host, port, socket, user
        self.password = password
        self.timeout = timeout

    def where(self) -> str:
        if self.host:
            return f"{self.host}:{self.port or 3306}"
        return self.socket or "the local socket"

    def option_text(self) -> str:
        # Only keys every client reads: mariadb-dump rejects connect-timeout, for one.
        lines = ["[client]"]
        for key, value in (
            ("host", self.host),
            ("port", None if self.port is None else str(self.port)),
            ("socket", self.socket),
            ("user", self.user),
            ("password", self.password),
        ):
            if value is not None:
                escaped = value.replace("\\", "\\\\").replace('"', '\\"')
                lines.append(f'{key}="{escaped}"')
        return "\n".join(lines) + "\n"

    @contextmanager
    def option_file(self) -> Iterator[str]:
        """A 0600 option file in a private folder, removed when done."""
        folder = tempfile.mkdtemp(prefix="safehold-mysql-")  # mode 0700
        path = os.path.join(folder, "client.cnf")
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(self.option_text())
            yield path
        finally:
            shutil.rmtree(folder, ignore_errors=True)


def parse_url(url: str) -> tuple[str | None, int | None, str | None, str | None, str | None]:
    """Host, port, user, password and database of ``mysql://user:pw@host:port/db``."""
    parts = urlsplit(url)
    if parts.scheme not in ("mysql", "mariadb"):
        raise ConfigError(
            "a MySQL URL must start with mysql://", hint="e.g. mysql://backup@db1:3306"
        )
    try:
        port = parts.port
    except ValueError as exc:
        raise ConfigError("the port in the MySQL URL is not a number") from exc
    return (
        parts.hostname,
        port,
        unquote(parts.username) if parts.username else None,
        unquote(parts.password) if parts.password is not None else None,
        unquote(parts.path.lstrip("/")) or None,
    )


def stream_name(db: str) -> str:
    return quote(db, safe="") + SUFFIX


def db_from_stream(name: str) -> str | None:
    return unquote(name[: -len(SUFFIX)]) if name.endswith(SUFFIX) else None


def ident(name: str) -> str:
    """``name`` as a quoted SQL identifier."""
    return "`" + name.replace("`", "``") + "`"


def literal(value: str) -> str:
    """``value`` as a quoted SQL string."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def describe_failure(stderr: str) -> tuple[str, str | None]:
    if "Can't connect" in stderr or "Lost connection" in stderr or "(2002)" in stderr:
        return "the MySQL/MariaDB server is not reachable", (
            "check that it is running and that host, port or socket are right"
        )
    if "Access denied" in stderr:
        return "the MySQL/MariaDB server refused the login", "check the user and password"
    if "Unknown database" in stderr:
        return "the database does not exist", "check the database name"
    return "the MySQL/MariaDB client failed", None


class MysqlSource:
    """One ``<db>.sql`` stream per database of a MySQL or MariaDB server, restored with the
    client (see the module docstring)."""

    kind = "mysql"

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        s = settings
        host = port = user = password = None
        if s.url is not None:
            host, port, user, password, _ = parse_url(s.url.get_secret_value())
        if s.password is not None:
            password = s.password.get_secret_value()
        self.server = _Server(host, port, s.socket, s.user or user, password, s.connect_timeout)

    def _tool(self, *names: str) -> str:
        """The first of ``names`` that is installed (MariaDB's name first, then MySQL's)."""
        first: ToolMissing | None = None
        for name in names:
            try:
                return find_tool(name, PACKAGE, path=self.settings.tool_path)
            except ToolMissing as exc:
                first = first or exc
        assert first is not None
        raise ToolMissing(f"neither {' nor '.join(names)} was found on PATH", hint=first.hint)

    def _client(self) -> str:
        return self._tool("mariadb", "mysql")

    def _query(self, server: _Server, sql: str) -> list[list[str]]:
        client = self._client()
        with server.option_file() as opts:
            argv = [client, f"--defaults-extra-file={opts}", "--batch", "--skip-column-names"]
            argv.append(f"--connect-timeout={server.timeout}")
            try:
                done = subprocess.run(
                    argv,
                    input=sql,
                    capture_output=True,
                    text=True,
                    timeout=server.timeout + 300,
                    check=False,
                )
            except subprocess.TimeoutExpired as exc:
                raise SourceError(f"MySQL at {server.where()} did not answer in time") from exc
        if done.returncode != 0:
            what, hint = describe_failure(done.stderr)
            detail = done.stderr.strip().splitlines()[-1] if done.stderr.strip() else ""
            raise SourceError(f"{what} ({server.where()}): {detail}", hint=hint)
        return [line.split("\t") for line in done.stdout.splitlines()]

    def _databases(self) -> list[str]:
        wanted = self.settings.databases
        if wanted == "all":
            rows = self._query(self.server, "SHOW DATABASES")
            return sorted(r[0] for r in rows if r[0] not in SYSTEM_DATABASES)
        if isinstance(wanted, str):
            return [wanted]
        return list(wanted)

    # --- backup ---------------------------------------------------------------------------

    def content(self) -> StreamContent:
        """One stream per database (asking the server for the list); raises :class:`SourceError`
        when there is none to back up."""
        dump = self._tool("mariadb-dump", "mysqldump")
        databases = self._databases()  # also proves the server is up and the login works
        if not databases:
            raise SourceError(f"no databases to back up on {self.server.where()}")
        return StreamContent([self._stream(dump, db) for db in databases])

    def _stream(self, dump: str, db: str) -> Stream:
        server = self.server
        extra = list(self.settings.extra_args)

        @contextmanager
        def open_dump() -> Iterator[BinaryIO]:
            with server.option_file() as opts:
                argv = [dump, f"--defaults-extra-file={opts}", "--single-transaction"]
                argv += ["--routines", "--events", "--triggers", "--hex-blob", "--quick"]
                # No dump date: an unchanged database dumps to identical bytes.
                argv += ["--no-tablespaces", "--skip-dump-date", *extra, db]
                with command_stream(argv, what=f"dump of database {db!r}") as out:
                    yield out

        return Stream(stream_name(db), open_dump)

    # --- restore --------------------------------------------------------------------------

    def _target(self, request: RestoreRequest) -> tuple[_Server, str | None]:
        target = request.target
        if target is None or not target.startswith(("mysql://", "mariadb://")):
            return self.server, target
        host, port, user, password, db = parse_url(target)
        if password is None:
            given = request.options.get("password")
            password = str(given) if given is not None else self.server.password
        server = _Server(
            host, port, None, user or self.server.user, password, self.settings.connect_timeout
        )
        return server, db

    def restore(self, files: SnapshotFiles, request: RestoreRequest) -> None:
        """Load each chosen dump with the client into its database (or the target name), created
        if missing; raises :class:`TargetError` for a database with tables unless ``replace``."""
        server, target_db = self._target(request)
        dumps = [(n, db) for n in files.names() if (db := db_from_stream(n)) is not None]
        dumps = select_dumps(dumps, request.options.get("database"), target_db)
        for name, db in dumps:
            self._restore_one(files, name, server, target_db or db, request.replace)

    def _restore_one(
        self, files: SnapshotFiles, name: str, server: _Server, db: str, replace: bool
    ) -> None:
        rows = self._query(
            server,
            "SELECT COUNT(*) FROM information_schema.schemata WHERE schema_name = "
            f"{literal(db)}; SELECT COUNT(*) FROM information_schema.tables "
            f"WHERE table_schema = {literal(db)}",
        )
        exists, tables = int(rows[0][0]), int(rows[1][0])
        if tables and not replace:
            raise TargetError(
                f"database {db!r} on {server.where()} already has {tables} tables; "
                "refusing to restore over them",
                hint="restore into a new database name, or allow replacing it (replace)",
            )
        if exists and tables:
            self._query(server, f"DROP DATABASE {ident(db)}")
            exists = 0
        if not exists:
            self._query(server, f"CREATE DATABASE {ident(db)}")
        client = self._client()
        with server.option_file() as opts:
            argv = [client, f"--defaults-extra-file={opts}", db]
            try:
                with (
                    files.open(name) as src,
                    command_sink(argv, what=f"restore of database {db!r}") as sink,
                ):
                    shutil.copyfileobj(src, sink, _COPY)
            except SourceError as exc:
                if isinstance(exc, TargetError):
                    raise
                raise TargetError(exc.message, hint=describe_failure(exc.message)[1]) from exc


def build(settings: Settings) -> MysqlSource:
    """The source for a validated ``mysql`` block (the registry's entry point)."""
    return MysqlSource(settings)
