"""The service's one way to its database: the catalog's engine and procrastinate's queue.

:func:`open_database` takes a URL (a shared server: how the work spreads over several
machines) or None (the private cluster under the state folder, :mod:`.cluster`), checks
that it can log in, and brings both schemas up to date before anything else uses them:

1. the catalog's Alembic migrations up to the newest this version ships, then
2. procrastinate's schema, installed when the database has none yet,

both in one transaction that first takes a PostgreSQL advisory lock
(``pg_advisory_xact_lock``). Several processes starting at once (three ``serve`` on three
machines) therefore migrate one after the other: the first does the work, the others wait
for its commit and then find nothing left to do. The lock is released by the commit, or by
the server when a process dies half way, whose transaction is then rolled back whole
(PostgreSQL's DDL is transactional).

procrastinate's schema has no version table of its own, and its schema manager only
installs a whole schema (``schema.sql``, which fails on a database that has it). A newer
procrastinate ships SQL migration files instead (``procrastinate/sql/migrations``); when
safehold moves to one that has them, a catalog migration applies them (when the queue's
tables exist: a new database gets the new whole schema from step 2). The comment on
``procrastinate_jobs`` records the version installed, where such a migration starts.

The URL may hold a password: only :attr:`Database.display_url` (password masked) may
appear in logs and errors; :attr:`Database.conninfo` is for connecting only.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
from alembic.util import CommandError as AlembicCommandError
from procrastinate import __version__ as procrastinate_version
from procrastinate.schema import SchemaManager
from psycopg.conninfo import make_conninfo
from sqlalchemy import URL, Connection, Engine, create_engine, make_url, text
from sqlalchemy import exc as sa_exc

from safehold.catalog import migrate
from safehold.errors import DatabaseAuthFailed, DatabaseError, DatabaseUnreachable, UsageError
from safehold.service.cluster import DATABASE_NAME, PORT, SUPERUSER, Cluster, open_cluster

__all__ = ["MIGRATION_LOCK", "Database", "open_database", "prepare"]

# The advisory lock around schema changes: one 64-bit key for safehold's migrations, the
# catalog's and the queue's alike ("safehold" in ASCII, less its top bit: a signed bigint).
MIGRATION_LOCK = 0x7361666568_6F6C64
_QUEUE_TABLE = "procrastinate_jobs"
CONNECT_TIMEOUT = 10  # seconds
# libpq's SQLSTATEs for a refused login: bad password, and no such role / hba refusal.
_AUTH_STATES = {"28P01", "28000"}
_AUTH_WORDS = (
    "password authentication failed",
    "no password supplied",
    "no pg_hba.conf entry",
    'role "',
    "peer authentication failed",
)


@dataclass(frozen=True)
class Database:
    """An open, migrated database. ``engine`` is the catalog's (``postgresql+psycopg``);
    ``conninfo`` is for procrastinate's ``PsycopgConnector(conninfo=...)`` and may hold a
    password, so it is never logged; ``display_url`` is the URL with its password masked.
    ``cluster`` is the private cluster in use, None for a server given by URL."""

    engine: Engine
    conninfo: str = field(repr=False)
    display_url: str
    cluster: Cluster | None = None


@contextmanager
def open_database(
    url: str | None, state_dir: Path | None = None, *, bin_dir: Path | None = None
) -> Iterator[Database]:
    """Open the database at ``url``, or with None the private cluster of ``state_dir``
    (default: :func:`~safehold.service.cluster.default_state_dir`; ``bin_dir``: where its
    server programs are), migrated and ready. Leaving closes the connections, and stops a
    private cluster that no other process uses."""
    if url is None:
        with open_cluster(state_dir, bin_dir=bin_dir) as cluster:
            private = URL.create(
                "postgresql+psycopg",
                username=SUPERUSER,
                database=DATABASE_NAME,
                query={"host": str(cluster.socket_dir), "port": str(PORT)},
            )
            with _opened(private, cluster) as database:
                yield database
    else:
        with _opened(_parse(url), None) as database:
            yield database


@contextmanager
def _opened(url: URL, cluster: Cluster | None) -> Iterator[Database]:
    display = url.set(drivername="postgresql").render_as_string(hide_password=True)
    if "connect_timeout" not in url.query:
        # libpq waits for an unanswered connection as long as the kernel does (minutes).
        url = url.update_query_dict({"connect_timeout": str(CONNECT_TIMEOUT)})
    # JIT compiling pays only for long analytical queries; the catalog's are short, and
    # PostgreSQL's cost estimate for a LIMITed keyset page (the subplan per row) made it
    # compile one for 300 ms to run it in 1 ms.
    engine = create_engine(url, pool_pre_ping=True, connect_args={"options": "-c jit=off"})
    try:
        try:
            with engine.connect():
                pass
        except sa_exc.OperationalError as exc:
            raise _connect_error(exc, display, url.password) from exc
        try:
            prepare(engine)
        except AlembicCommandError as exc:
            raise DatabaseError(
                f"the catalog in {display} is at a revision this safehold does not know "
                f"({exc}; the newest it knows is {migrate.head()})",
                hint="a newer safehold has migrated it: upgrade safehold here too",
            ) from exc
        except sa_exc.OperationalError as exc:
            raise _connect_error(exc, display, url.password) from exc
        except sa_exc.DBAPIError as exc:
            raise DatabaseError(
                f"could not bring the catalog in {display} up to date: "
                f"{_reason(exc, url.password)}",
                hint="the database's user must be allowed to create tables, types and "
                "functions in it (its owner is)",
            ) from exc
        yield Database(engine, _conninfo(url), display, cluster)
    finally:
        engine.dispose()


def prepare(engine: Engine) -> None:
    """Bring the catalog and the job queue's schema up to date, under the migration lock."""
    with engine.begin() as connection:
        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK})
        migrate.upgrade(connection)
        _install_queue_schema(connection)


def _install_queue_schema(connection: Connection) -> None:
    found = connection.execute(text("SELECT to_regclass(:name)"), {"name": _QUEUE_TABLE})
    if found.scalar() is not None:
        return
    # no_parameters: the schema has '%' in it, which must not be read as placeholders, and
    # it is many statements, which psycopg runs in one call only without parameters.
    connection.execution_options(no_parameters=True).exec_driver_sql(SchemaManager.get_schema())
    # COMMENT takes a literal only, no parameter.
    note = f"procrastinate {procrastinate_version} schema, installed by safehold"
    connection.exec_driver_sql(
        f"COMMENT ON TABLE {_QUEUE_TABLE} IS '{note.replace(chr(39), chr(39) * 2)}'"
    )


def _parse(url: str) -> URL:
    try:
        parsed = make_url(url)
    except (sa_exc.ArgumentError, ValueError):
        # Not the URL itself in the message: it may hold a password.
        raise UsageError(
            "the database URL is not valid",
            hint="give it as postgresql://USER:PASSWORD@HOST:PORT/DATABASE",
        ) from None
    if parsed.drivername not in ("postgresql", "postgres", "postgresql+psycopg"):
        raise UsageError(
            f"the database URL must be a PostgreSQL one, not {parsed.drivername}://",
            hint="give it as postgresql://USER:PASSWORD@HOST:PORT/DATABASE",
        )
    return parsed.set(drivername="postgresql+psycopg")


def _conninfo(url: URL) -> str:
    params: dict[str, str | int | None] = dict(
        url.translate_connect_args(username="user", database="dbname")
    )
    for key, value in url.query.items():
        params[key] = value if isinstance(value, str) else value[-1]
    return make_conninfo("", **params)


def _connect_error(
    exc: sa_exc.OperationalError, display: str, password: str | None
) -> DatabaseUnreachable | DatabaseAuthFailed:
    reason = _reason(exc, password)
    sqlstate = exc.orig.sqlstate if isinstance(exc.orig, psycopg.Error) else None
    if sqlstate in _AUTH_STATES or any(word in reason for word in _AUTH_WORDS):
        return DatabaseAuthFailed(
            f"the database server at {display} refused the login: {reason}",
            hint="check the user and password of --database (or service: database: in the "
            "configuration file)",
        )
    return DatabaseUnreachable(
        f"cannot connect to the database at {display}: {reason}",
        hint="check that the server runs and that the host, port and database name of "
        "--database are right",
    )


def _reason(exc: sa_exc.DBAPIError, password: str | None) -> str:
    """The driver's first line (libpq's next ones are advice such as "Is the server
    running..."), the password masked should a server ever quote it."""
    lines = [line.strip() for line in str(exc.orig).splitlines() if line.strip()]
    reason = lines[0] if lines else "no reason given"
    return reason.replace(password, "***") if password else reason
