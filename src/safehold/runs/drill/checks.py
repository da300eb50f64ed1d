"""The checks a drill runs against its restored copy, and what each found.

A check returns a :class:`CheckResult`: passed or not, and its output (what it counted,
compared or printed), which the drill records. The default per kind:

- PostgreSQL, MariaDB: the row counts of the largest tables of each restored database
  (``DefaultCheck.tables`` of them), failing on a query error or fewer rows in all than
  ``min_rows``, or on a restored database without a single table when the dump had some;
- Redis: ``DBSIZE`` and a sample of keys (``RANDOMKEY``, then each key's ``TYPE`` and a
  read of it), failing on an error or a sampled key that cannot be read;
- SQLite: ``PRAGMA integrity_check`` (which must say ``ok``) and the tables' row counts;
- folders: the file count and every file's size and SHA-256 against the snapshot's bytes.

``query`` runs the user's SQL and compares its output (rows on lines, fields by tabs,
spaces at line ends ignored) with ``expect``; ``command`` runs the user's program with
the sandbox's connection details added to its environment and passes when it exits 0.
"""

from __future__ import annotations

import hashlib
import os
import shlex
import sqlite3
import subprocess
from dataclasses import dataclass

from safehold.engine.tree_walk import walk
from safehold.errors import SafeholdError
from safehold.repository import tree as t
from safehold.repository.repository import Repository
from safehold.repository.snapshot import Snapshot
from safehold.runs.drill.sandbox import MariadbSandbox, PostgresSandbox, Sandbox
from safehold.runs.snapshot_files import BlobStreamReader

__all__ = ["CheckResult", "DrillCheck", "run_check"]

OUTPUT_KEEP = 16 * 1024  # characters of a check's output kept in the record
_PIECE = 1 << 20


@dataclass(frozen=True, kw_only=True)
class DrillCheck:
    """What to check, as the composition root built it from ``drill.check``."""

    form: str = "default"  # default | query | command
    tables: int = 5
    sample_keys: int = 20
    min_rows: int = 0
    query: str | None = None
    expect: str | None = None
    database: str | None = None
    command: str | None = None
    timeout: float = 600.0


@dataclass(frozen=True)
class CheckResult:
    """A check's verdict and its output."""

    passed: bool
    output: str


class _Failed(Exception):
    """A default check found the copy wrong; its message is the reason."""


def _tail(text: str) -> str:
    return text if len(text) <= OUTPUT_KEEP else "...\n" + text[-OUTPUT_KEEP:]


def run_check(
    check: DrillCheck,
    sandbox: Sandbox,
    *,
    repo: Repository,
    snap: Snapshot,
    databases: list[str],
) -> CheckResult:
    """Run ``check`` against the restored ``sandbox``; ``databases``: the databases the
    snapshot restored (PostgreSQL, MariaDB)."""
    lines: list[str] = []
    try:
        if check.form == "command":
            return _command(check, sandbox)
        if check.form == "query":
            return _query(check, sandbox, databases)
        if isinstance(sandbox, PostgresSandbox):
            _postgres_default(check, sandbox, databases, lines)
        elif isinstance(sandbox, MariadbSandbox):
            _mariadb_default(check, sandbox, databases, lines)
        elif sandbox.kind == "redis":
            _redis_default(check, sandbox, lines)
        elif sandbox.kind == "sqlite":
            _sqlite_default(sandbox, lines)
        else:
            _folder_default(repo, snap, sandbox, lines)
    except (_Failed, SafeholdError, sqlite3.Error, OSError) as exc:
        lines.append(f"FAILED: {exc}")
        return CheckResult(False, _tail("\n".join(lines)))
    return CheckResult(True, _tail("\n".join(lines)))


def _normal(text: str) -> str:
    return "\n".join(line.rstrip() for line in text.strip().splitlines())


def _query(check: DrillCheck, sandbox: Sandbox, databases: list[str]) -> CheckResult:
    assert check.query is not None
    db = check.database
    if db is None:
        if len(databases) != 1:
            return CheckResult(
                False,
                f"the snapshot restored {len(databases)} databases ({', '.join(databases)}); "
                "name the one the query runs in with drill.check.database",
            )
        db = databases[0]
    if isinstance(sandbox, PostgresSandbox):
        out = sandbox.psql(check.query, db, timeout=check.timeout)
    elif isinstance(sandbox, MariadbSandbox):
        out = sandbox.sql(check.query, db, timeout=check.timeout)
    else:
        return CheckResult(False, f"a query cannot run against a {sandbox.kind} sandbox")
    got, want = _normal(out), _normal(check.expect or "")
    if got == want:
        return CheckResult(True, _tail(f"database {db}: query returned the expected\n{got}"))
    return CheckResult(
        False, _tail(f"database {db}: query returned\n{got}\nbut drill.check.expect is\n{want}")
    )


def _command(check: DrillCheck, sandbox: Sandbox) -> CheckResult:
    assert check.command is not None
    try:
        done = subprocess.run(
            shlex.split(check.command),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            errors="replace",
            check=False,
            timeout=check.timeout,
            env={**os.environ, **sandbox.env()},
            cwd=sandbox.root,
        )
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout if isinstance(exc.stdout, str) else ""
        return CheckResult(False, _tail(f"{out}\nFAILED: no end after {check.timeout:g} s"))
    except OSError as exc:
        return CheckResult(False, f"FAILED: cannot run {check.command!r}: {exc.strerror}")
    output = (done.stdout + done.stderr).strip()
    if done.returncode == 0:
        return CheckResult(True, _tail(output))
    return CheckResult(False, _tail(f"{output}\nFAILED: the command exited {done.returncode}"))


_PG_LARGEST = """
SELECT quote_ident(n.nspname) || '.' || quote_ident(c.relname)
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'p') AND n.nspname NOT IN ('pg_catalog', 'information_schema')
  AND n.nspname NOT LIKE 'pg_toast%%'
ORDER BY pg_total_relation_size(c.oid) DESC, 1 LIMIT %d
"""


def _postgres_default(
    check: DrillCheck, sandbox: PostgresSandbox, databases: list[str], lines: list[str]
) -> None:
    total = 0
    for db in databases:
        tables = sandbox.psql(_PG_LARGEST % check.tables, db).split()
        if not tables:
            lines.append(f"database {db}: no tables")
        for table in tables:
            rows = int(sandbox.psql(f"SELECT count(*) FROM {table}", db).strip())
            total += rows
            lines.append(f"{db}.{table}: {rows} rows")
    _min_rows(check, total, lines)


def _min_rows(check: DrillCheck, total: int, lines: list[str]) -> None:
    lines.append(f"{total} rows in the tables counted")
    if total < check.min_rows:
        raise _Failed(f"{total} rows, fewer than drill.check.default.min_rows ({check.min_rows})")


def _mariadb_default(
    check: DrillCheck, sandbox: MariadbSandbox, databases: list[str], lines: list[str]
) -> None:
    total = 0
    for db in databases:
        literal = db.replace("\\", "\\\\").replace("'", "\\'")
        found = sandbox.sql(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = "
            f"'{literal}' AND table_type = 'BASE TABLE' "
            f"ORDER BY data_length + index_length DESC, table_name LIMIT {check.tables}"
        ).split("\n")
        tables = [name for name in found if name]
        if not tables:
            lines.append(f"database {db}: no tables")
        for table in tables:
            quoted = "`" + table.replace("`", "``") + "`"
            rows = int(sandbox.sql(f"SELECT COUNT(*) FROM {quoted}", db).strip())
            total += rows
            lines.append(f"{db}.{table}: {rows} rows")
    _min_rows(check, total, lines)


def _redis_default(check: DrillCheck, sandbox: Sandbox, lines: list[str]) -> None:
    from safehold.sources.redis_util import RedisConnection, RedisReplyError

    port = int(sandbox.env()["SAFEHOLD_DRILL_PORT"])
    with RedisConnection("127.0.0.1", port) as conn:
        size = conn.call("DBSIZE")
        assert isinstance(size, int)
        lines.append(f"DBSIZE {size}")
        reads = {b"string": "STRLEN", b"list": "LLEN", b"set": "SCARD", b"zset": "ZCARD",
                 b"hash": "HLEN", b"stream": "XLEN"}  # fmt: skip
        for _ in range(min(size, check.sample_keys)):
            key = conn.call("RANDOMKEY")
            if not isinstance(key, bytes):
                raise _Failed("RANDOMKEY returned no key while DBSIZE counts some")
            kind = conn.call("TYPE", key)
            assert isinstance(kind, bytes)
            command = reads.get(kind)
            try:
                length = conn.call(command, key) if command else conn.call("DUMP", key)
            except RedisReplyError as exc:
                raise _Failed(f"key {key!r} ({kind.decode()}) cannot be read: {exc}") from exc
            shown = length if isinstance(length, int) else "read"
            lines.append(f"{key.decode(errors='replace')} ({kind.decode()}): {shown}")


def _sqlite_default(sandbox: Sandbox, lines: list[str]) -> None:
    db = sqlite3.connect(f"file:{sandbox.target}?mode=ro", uri=True)
    try:
        verdict = [row[0] for row in db.execute("PRAGMA integrity_check")]
        lines.append("integrity_check: " + "; ".join(verdict))
        if verdict != ["ok"]:
            raise _Failed("PRAGMA integrity_check did not say ok")
        names = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        for name in names:
            quoted = '"' + name.replace('"', '""') + '"'
            rows = db.execute(f"SELECT count(*) FROM {quoted}").fetchone()[0]
            lines.append(f"{name}: {rows} rows")
    finally:
        db.close()


def _folder_default(repo: Repository, snap: Snapshot, sandbox: Sandbox, lines: list[str]) -> None:
    files = checked = 0
    wrong: list[str] = []
    for path, node in walk(repo, snap.tree):
        if node.type != t.FILE:
            continue
        files += 1
        restored = os.path.join(sandbox.target, path.lstrip("/"))
        want = hashlib.sha256()
        with BlobStreamReader(repo, list(node.content)) as reader:
            while piece := reader.read(_PIECE):
                want.update(piece)
        got = hashlib.sha256()
        try:
            with open(restored, "rb") as f:
                while piece := f.read(_PIECE):
                    got.update(piece)
        except OSError as exc:
            wrong.append(f"{path}: {exc.strerror}")
            continue
        if got.digest() != want.digest():
            wrong.append(f"{path}: its SHA-256 differs from the snapshot's bytes")
        checked += 1
    on_disk = sum(len(names) for _, _, names in os.walk(sandbox.target))
    lines.append(f"{files} files in the snapshot, {on_disk} restored, {checked} hashed")
    lines.extend(wrong[:50])
    if wrong:
        raise _Failed(f"{len(wrong)} files differ from the snapshot")
    if on_disk < files:
        raise _Failed(f"{files - on_disk} files of the snapshot are missing")
