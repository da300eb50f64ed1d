"""The pure parts of the postgres source: connection strings, versions, stream names, errors.

A connection URL (``postgresql://user:secret@host:5432/shop?sslmode=require``) is split into
libpq keywords *without* the password, which travels in ``PGPASSWORD`` instead: argv is
visible to every user through ``ps``. The keywords are written as a libpq ``conninfo``
string (``host='db1' port='5432' dbname='shop'``), which every client tool accepts as its
``--dbname`` and which quotes any database name safely.
"""

from __future__ import annotations

import re
from urllib.parse import parse_qsl, quote, unquote, urlsplit

from safehold.errors import ConfigError

__all__ = [
    "DUMP_SUFFIX",
    "GLOBALS_NAME",
    "conninfo",
    "db_from_stream",
    "describe_failure",
    "parse_url",
    "server_major",
    "stream_name",
    "tool_major",
]

DUMP_SUFFIX = ".pgdump"
GLOBALS_NAME = "globals.sql"

_SCHEMES = ("postgresql", "postgres")


def parse_url(url: str) -> tuple[dict[str, str], str | None]:
    """libpq keywords from a ``postgresql://`` URL, and the password taken out of it."""
    parts = urlsplit(url)
    if parts.scheme not in _SCHEMES:
        raise ConfigError(
            "a PostgreSQL URL must start with postgresql://",
            hint="e.g. postgresql://backup@db1:5432/shop",
        )
    params: dict[str, str] = {}
    password = unquote(parts.password) if parts.password is not None else None
    if parts.username:
        params["user"] = unquote(parts.username)
    host = parts.hostname
    if host:
        params["host"] = unquote(host)
    try:
        port = parts.port
    except ValueError as exc:
        raise ConfigError("the port in the PostgreSQL URL is not a number") from exc
    if port is not None:
        params["port"] = str(port)
    db = unquote(parts.path.lstrip("/"))
    if db:
        params["dbname"] = db
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        if key == "password":
            password = value
        else:
            params[key] = value
    return params, password


def _quote(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def conninfo(params: dict[str, str], dbname: str | None = None) -> str:
    """A libpq conninfo string for ``params``, connecting to ``dbname`` when given."""
    merged = dict(params)
    if dbname is not None:
        merged["dbname"] = dbname
    return " ".join(f"{k}={_quote(v)}" for k, v in merged.items())


def stream_name(db: str) -> str:
    """The snapshot file name of database ``db``'s dump (``shop.pgdump``)."""
    return quote(db, safe="") + DUMP_SUFFIX


def db_from_stream(name: str) -> str | None:
    """The database a dump file name stands for, or None if ``name`` is not a dump."""
    if not name.endswith(DUMP_SUFFIX):
        return None
    return unquote(name[: -len(DUMP_SUFFIX)])


_TOOL_VERSION = re.compile(r"\(PostgreSQL\)\s+(\d+)(?:\.(\d+))?")


def tool_major(version_text: str) -> tuple[int, ...]:
    """The major version of ``pg_dump --version`` output: (15,) or (9, 6) before 10."""
    m = _TOOL_VERSION.search(version_text)
    if m is None:
        raise ValueError(f"cannot read a PostgreSQL version from {version_text!r}")
    major = int(m.group(1))
    if major < 10:
        return (major, int(m.group(2) or 0))
    return (major,)


def server_major(version_num: int) -> tuple[int, ...]:
    """The major version from ``server_version_num`` (150020 -> (15,), 90624 -> (9, 6))."""
    if version_num >= 100000:
        return (version_num // 10000,)
    return (version_num // 10000, version_num // 100 % 100)


def show_major(major: tuple[int, ...]) -> str:
    return ".".join(str(x) for x in major)


# libpq and the client tools say what went wrong in a few stable phrases; each becomes a
# message a person can act on (the raw text follows it).
_FAILURES: list[tuple[tuple[str, ...], str, str]] = [
    (
        ("Connection refused", "could not connect", "No such file or directory", "timeout"),
        "the PostgreSQL server is not reachable",
        "check that it is running and that host and port are right",
    ),
    (
        (
            "password authentication failed",
            "no password supplied",
            "pg_hba.conf rejects",
            'role "',
            "Peer authentication failed",
        ),
        "PostgreSQL refused the login",
        "check the user and password (password, password_file, PGPASSWORD or ~/.pgpass)",
    ),
    (
        ("server version mismatch", "aborting because of server version mismatch"),
        "pg_dump is older than the server",
        "install the client tools of the server's major version and point tool_path at them",
    ),
    (
        ("unsupported version", "in file header"),
        "pg_restore is older than the pg_dump that made this archive",
        "use the client tools of the same (or a newer) major version as the dump",
    ),
    (
        ("does not exist",),
        "the database does not exist",
        "check the database name",
    ),
]


def describe_failure(stderr: str) -> tuple[str, str | None]:
    """A short diagnosis of a client tool's error output, and a hint."""
    for needles, what, hint in _FAILURES:
        if any(n in stderr for n in needles):
            return what, hint
    return "the PostgreSQL client failed", None
