"""PostgreSQL: each database as a ``pg_dump --format=custom`` stream, roles as SQL.

Backup: one stream per database (``<db>.pgdump``), plus ``globals.sql`` from
``pg_dumpall --globals-only`` (roles, tablespaces) when ``globals`` is on. Each dump is
one transaction inside the server, so every database is consistent in itself.

The dumps are *uncompressed* by default (``--compress=0``): pg_dump's own compression turns
a small change into a different byte stream from that point on, which defeats
deduplication between nightly dumps; safehold compresses the chunks with zstd anyway
(docs/benchmarks.md, "Nightly PostgreSQL dumps", has the measured difference).

Before dumping, the server's major version is compared with pg_dump's: pg_dump refuses
servers newer than itself, and the message then names the package to install.

Restore: each dump into a database of the same name or one chosen by the request, on the
configured server or one given by URL. A target that already holds tables is refused unless
``replace``; with ``replace`` it is dropped and created afresh. Parallel restore
(``--jobs``) needs a seekable file, so with ``jobs > 1`` the dump is first spooled to a
temporary file (free space the size of the dump); with one job it streams.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, SecretStr

from safehold.errors import SourceError, TargetError, UsageError
from safehold.sources.base import RestoreRequest, SnapshotFiles, Stream, StreamContent
from safehold.sources.dumps import select_dumps
from safehold.sources.postgres_util import (
    GLOBALS_NAME,
    conninfo,
    db_from_stream,
    describe_failure,
    parse_url,
    server_major,
    show_major,
    stream_name,
    tool_major,
)
from safehold.sources.process import command_sink, command_stream, find_tool

__all__ = ["PostgresSource", "Settings", "build"]

PACKAGE = "postgresql-client"
_COPY = 1 << 20


class Settings(BaseModel):
    """The ``postgres`` source's configuration keys."""

    model_config = ConfigDict(extra="forbid")

    url: SecretStr | None = None  # postgresql://user[:password]@host:port/db; else PG* env
    password: SecretStr | None = None
    password_file: str | None = None  # a pgpass file (PGPASSFILE)
    databases: str | list[str] | None = None  # one, a list, or "all"; default: the URL's
    globals: bool = False  # also pg_dumpall --globals-only (roles, tablespaces)
    compress: int = Field(default=0, ge=0, le=9)  # pg_dump's own; 0 keeps dedup working
    maintenance_db: str = "postgres"  # where to list, create and drop databases
    tool_path: str | None = None  # where to find pg_dump & co. (PATH syntax)
    extra_args: list[str] = Field(default_factory=list)  # more pg_dump options
    connect_timeout: int = Field(default=15, ge=1)
    # Restore defaults (a restore request's options override them):
    restore_jobs: int = Field(default=1, ge=1)  # > 1 spools each dump to a temporary file
    restore_no_owner: bool = False  # pg_restore --no-owner --no-privileges
    restore_globals: bool = False  # run globals.sql (roles) before the databases


class _Server:
    """One server to talk to: libpq keywords (no password) and the client environment."""

    def __init__(self, params: dict[str, str], password: str | None, settings: Settings) -> None:
        self.params = params
        self.env: dict[str, str] = {
            "PGCONNECT_TIMEOUT": str(settings.connect_timeout),
            "PGAPPNAME": "safehold",
        }
        if password is not None:
            self.env["PGPASSWORD"] = password
        if settings.password_file:
            self.env["PGPASSFILE"] = settings.password_file

    def where(self) -> str:
        host = self.params.get("host") or os.environ.get("PGHOST")
        if not host or host.startswith("/"):  # a Unix socket folder
            return host or "the local socket"
        return f"{host}:{self.params.get('port') or os.environ.get('PGPORT') or '5432'}"

    def dsn(self, db: str | None = None) -> str:
        return conninfo(self.params, db)


class PostgresSource:
    """One ``<db>.pgdump`` stream per database of a PostgreSQL server (and ``globals.sql``),
    restored with ``pg_restore`` (see the module docstring)."""

    kind = "postgres"

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        params: dict[str, str] = {}
        password: str | None = None
        if settings.url is not None:
            params, password = parse_url(settings.url.get_secret_value())
        if settings.password is not None:
            password = settings.password.get_secret_value()
        self.server = _Server(params, password, settings)

    # --- tools and queries ----------------------------------------------------------------

    def _tool(self, name: str) -> str:
        return find_tool(name, PACKAGE, path=self.settings.tool_path)

    def _query(
        self, server: _Server, sql: str, db: str, variables: dict[str, str] | None = None
    ) -> list[str]:
        """Rows of ``sql`` (fields joined by '|'); ``:'name'`` in ``sql`` quotes a variable."""
        argv = [self._tool("psql"), "-X", "-q", "-A", "-t", "--no-password"]
        argv += ["-v", "ON_ERROR_STOP=1", f"--dbname={server.dsn(db)}"]
        for key, value in (variables or {}).items():
            argv += ["-v", f"{key}={value}"]
        try:
            done = subprocess.run(
                argv,
                input=sql,  # on stdin, so psql interpolates the variables
                capture_output=True,
                text=True,
                env={**os.environ, **server.env},
                timeout=self.settings.connect_timeout + 300,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise SourceError(f"PostgreSQL at {server.where()} did not answer in time") from exc
        if done.returncode != 0:
            what, hint = describe_failure(done.stderr)
            detail = done.stderr.strip().splitlines()[-1] if done.stderr.strip() else ""
            raise SourceError(f"{what} ({server.where()}): {detail}", hint=hint)
        return [line for line in done.stdout.splitlines() if line]

    def _check_versions(self, dump_tool: str) -> None:
        """Fail early, and clearly, if pg_dump cannot dump this server."""
        rows = self._query(self.server, "SHOW server_version_num", self.settings.maintenance_db)
        server = server_major(int(rows[0]))
        done = subprocess.run([dump_tool, "--version"], capture_output=True, text=True, check=False)
        try:
            tool = tool_major(done.stdout)
        except ValueError as exc:
            raise SourceError(f"{dump_tool} --version gave no version: {done.stdout!r}") from exc
        if tool < server:
            raise SourceError(
                f"pg_dump {show_major(tool)} ({dump_tool}) cannot dump a PostgreSQL "
                f"{show_major(server)} server at {self.server.where()}: pg_dump must be at "
                "least as new as the server",
                hint=f"install postgresql-client-{show_major(server)} and set tool_path to its "
                f"bin folder (e.g. /usr/lib/postgresql/{show_major(server)}/bin)",
            )

    def _databases(self) -> list[str]:
        wanted = self.settings.databases
        if wanted == "all":
            return self._query(
                self.server,
                "SELECT datname FROM pg_database WHERE datallowconn AND NOT datistemplate "
                "ORDER BY datname",
                self.settings.maintenance_db,
            )
        if isinstance(wanted, str):
            return [wanted]
        if wanted:
            return list(wanted)
        db = self.server.params.get("dbname") or os.environ.get("PGDATABASE")
        if not db:
            raise UsageError(
                "no database to back up",
                hint="set databases (a name, a list or 'all') or put one in the URL",
            )
        return [db]

    # --- backup ---------------------------------------------------------------------------

    def content(self) -> StreamContent:
        """One stream per database (and ``globals.sql`` when asked), after checking that pg_dump
        can dump this server's version."""
        dump = self._tool("pg_dump")
        self._check_versions(dump)
        streams: list[Stream] = []
        if self.settings.globals:
            argv = [self._tool("pg_dumpall"), "--globals-only", "--no-password"]
            argv.append(f"--dbname={self.server.dsn(self.settings.maintenance_db)}")
            streams.append(self._stream(GLOBALS_NAME, argv, "dump of roles and tablespaces"))
        for db in self._databases():
            argv = [dump, "--format=custom", f"--compress={self.settings.compress}"]
            argv += ["--no-password", f"--dbname={self.server.dsn(db)}", *self.settings.extra_args]
            streams.append(self._stream(stream_name(db), argv, f"dump of database {db!r}"))
        return StreamContent(streams)

    def _stream(self, name: str, argv: list[str], what: str) -> Stream:
        env = dict(self.server.env)
        return Stream(name, lambda: command_stream(argv, what=what, env=env))

    # --- restore --------------------------------------------------------------------------

    def _target(self, request: RestoreRequest) -> tuple[_Server, str | None]:
        """The server to restore to, and the database name the request asks for."""
        target = request.target
        if target is None or not target.startswith(("postgresql://", "postgres://")):
            return self.server, target
        params, password = parse_url(target)
        if password is None:
            password = self.server.env.get("PGPASSWORD")
        db = params.pop("dbname", None)
        return _Server(params, password, self.settings), db

    def restore(self, files: SnapshotFiles, request: RestoreRequest) -> None:
        """Roles first when asked, then ``pg_restore`` of each chosen dump into its database (or
        the target name); raises :class:`TargetError` for one holding tables unless ``replace``."""
        server, target_db = self._target(request)
        names = files.names()
        dumps = [(n, db) for n in names if (db := db_from_stream(n)) is not None]
        dumps = select_dumps(dumps, request.options.get("database"), target_db)
        opts = request.options
        if opts.get("globals", self.settings.restore_globals) and GLOBALS_NAME in names:
            self._restore_globals(files, server)
        for name, db in dumps:
            self._restore_one(files, name, server, target_db or db, request)

    def _restore_globals(self, files: SnapshotFiles, server: _Server) -> None:
        # Roles that already exist make psql report errors and go on: that is wanted here.
        argv = [self._tool("psql"), "-X", "-q", "--no-password"]
        argv.append(f"--dbname={server.dsn(self.settings.maintenance_db)}")
        with (
            files.open(GLOBALS_NAME) as src,
            command_sink(argv, what="restore of roles and tablespaces", env=server.env) as sink,
        ):
            shutil.copyfileobj(src, sink, _COPY)

    def _restore_one(
        self, files: SnapshotFiles, name: str, server: _Server, db: str, request: RestoreRequest
    ) -> None:
        maint = self.settings.maintenance_db
        exists = self._query(
            server, "SELECT 1 FROM pg_database WHERE datname = :'db'", maint, {"db": db}
        )
        if exists:
            tables = int(
                self._query(
                    server,
                    "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                    "WHERE n.nspname NOT IN ('pg_catalog', 'information_schema') "
                    "AND n.nspname NOT LIKE 'pg_toast%' AND c.relkind IN ('r','p','v','m','S','f')",
                    db,
                )[0]
            )
            if tables and not request.replace:
                raise TargetError(
                    f"database {db!r} on {server.where()} already holds {tables} tables, views "
                    "or sequences; refusing to restore over them",
                    hint="restore into a new database name, or allow replacing it (replace)",
                )
            if tables:
                self._query(server, 'DROP DATABASE :"db" WITH (FORCE)', maint, {"db": db})
                exists = []
        if not exists:
            # template0: a dump restores into an empty database, never into template1's extras.
            self._query(server, 'CREATE DATABASE :"db" TEMPLATE template0', maint, {"db": db})
        argv = [self._tool("pg_restore"), "--no-password", "--exit-on-error"]
        argv.append(f"--dbname={server.dsn(db)}")
        if request.options.get("no_owner", self.settings.restore_no_owner):
            argv += ["--no-owner", "--no-privileges"]
        what = f"restore of database {db!r}"
        jobs = request.jobs if request.jobs > 1 else self.settings.restore_jobs
        try:
            if jobs > 1:
                self._restore_spooled(files, name, argv, what, server, jobs, request)
            else:
                with files.open(name) as src, command_sink(argv, what=what, env=server.env) as sink:
                    shutil.copyfileobj(src, sink, _COPY)
        except SourceError as exc:
            if isinstance(exc, TargetError):
                raise
            hint = describe_failure(exc.message)[1]
            raise TargetError(exc.message, hint=hint or exc.hint) from exc

    def _restore_spooled(
        self,
        files: SnapshotFiles,
        name: str,
        argv: list[str],
        what: str,
        server: _Server,
        jobs: int,
        request: RestoreRequest,
    ) -> None:
        # pg_restore --jobs seeks in the archive, which a pipe cannot do.
        spool_dir = request.options.get("spool_dir")
        with tempfile.TemporaryDirectory(
            prefix="safehold-pgrestore-", dir=str(spool_dir) if spool_dir else None
        ) as tmp:
            path = Path(tmp) / "dump.pgdump"
            with files.open(name) as src, open(path, "wb") as out:
                shutil.copyfileobj(src, out, _COPY)
            full = [*argv, f"--jobs={jobs}", str(path)]
            with command_stream(full, what=what, env=server.env) as output:
                while output.read(_COPY):  # pg_restore writes nothing to stdout with --dbname
                    pass


def build(settings: Settings) -> PostgresSource:
    """The source for a validated ``postgres`` block (the registry's entry point)."""
    return PostgresSource(settings)
