"""The SQLite source: consistent online copies under a busy writer, and safe restores."""

from __future__ import annotations

import logging
import os
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path

import pytest

from safehold.errors import IntegrityError, SourceError, TargetError
from safehold.sources import sqlite as sqlite_source
from safehold.sources.base import RestoreRequest
from safehold.sources.sqlite import Settings, SqliteSource, build
from tests.unit.sources.memfiles import MemoryFiles, read_stream

ROWS = 2000


def make_db(path: Path, journal_mode: str) -> None:
    with closing(sqlite3.connect(path, isolation_level=None)) as db:
        db.execute(f"PRAGMA journal_mode={journal_mode}")
        db.execute("CREATE TABLE orders (id INTEGER PRIMARY KEY, v BLOB)")
        db.execute("CREATE TABLE ledger (id INTEGER PRIMARY KEY, order_id INTEGER, v BLOB)")
        db.execute("BEGIN")
        for _ in range(ROWS):
            insert_pair(db, 1000)
        db.execute("COMMIT")


def insert_pair(db: sqlite3.Connection, size: int) -> None:
    db.execute("INSERT INTO orders (v) VALUES (randomblob(?))", (size,))
    db.execute(
        "INSERT INTO ledger (order_id, v) VALUES (last_insert_rowid(), randomblob(?))", (size,)
    )


# Another process, as applications are (threads of this one would contend for the GIL
# rather than for SQLite's locks). Each transaction adds one row to both tables. It
# commits without fsync and retries a locked database at once instead of backing off:
# a relentless writer that takes every gap between the backup's steps, so a stepped
# copy of a rollback-journal database restarts for certain (the hard case).
WRITER = """
import os, sqlite3, sys
db = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=0)
db.execute("PRAGMA synchronous=OFF")

def retry(sql, *args):
    while True:
        try:
            return db.execute(sql, *args)
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc):
                raise

n = 0
while not os.path.exists(sys.argv[2]):
    retry("BEGIN IMMEDIATE")
    retry("INSERT INTO orders (v) VALUES (randomblob(300))")
    retry("INSERT INTO ledger (order_id, v) VALUES (last_insert_rowid(), randomblob(300))")
    retry("COMMIT")
    n += 1
    if n == 20:
        print("ready", flush=True)
"""


@contextmanager
def busy_writer(path: Path) -> Iterator[None]:
    """A writer process committing transactions until the block ends."""
    stop = path.parent / "stop-writer"
    proc = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(path), str(stop)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline() == "ready\n"  # writing before the backup starts
        yield
        assert proc.poll() is None, "the writer failed during the backup"
    finally:
        stop.touch()
        code = proc.wait(30)
        stop.unlink()
    assert code == 0


def count(path: Path) -> int:
    with closing(sqlite3.connect(path, timeout=30)) as db:
        return int(db.execute("SELECT count(*) FROM orders").fetchone()[0])


def check_copy(path: Path) -> int:
    """integrity_check passes and the invariant holds (one ledger row per order)."""
    with closing(sqlite3.connect(path)) as db:
        assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        orders, ledger, orphans = db.execute(
            "SELECT (SELECT count(*) FROM orders), (SELECT count(*) FROM ledger),"
            " (SELECT count(*) FROM ledger WHERE order_id NOT IN (SELECT id FROM orders))"
        ).fetchone()
    assert orders == ledger and orphans == 0
    return int(orders)


def backup_and_restore(src: SqliteSource, out: Path) -> None:
    (stream,) = src.content().streams
    data = bytes(read_stream(stream))
    src.restore(MemoryFiles({stream.name: data}), RestoreRequest(target=str(out)))


@pytest.mark.parametrize("memory_limit", [1 << 30, 0], ids=["memory", "temp-file"])
def test_wal_copy_is_consistent_under_a_busy_writer(tmp_path: Path, memory_limit: int) -> None:
    db = tmp_path / "app.db"
    make_db(db, "wal")
    spool = tmp_path / "spool"
    spool.mkdir()
    src = build(
        Settings(path=str(db), pages_per_step=8, memory_limit=memory_limit, temp_dir=str(spool))
    )
    with busy_writer(db):
        backup_and_restore(src, tmp_path / "restored.db")
        live = count(db)
    rows = check_copy(tmp_path / "restored.db")
    assert rows >= ROWS + 20
    # The copy is the database as it was when the copy began (one read transaction);
    # the writer, never blocked by it in WAL mode, went on committing.
    assert live > rows
    assert list(spool.iterdir()) == []  # the scratch copy (if any) is gone
    with closing(sqlite3.connect(tmp_path / "restored.db")) as r:
        assert r.execute("PRAGMA journal_mode").fetchone() == ("wal",)


@pytest.mark.parametrize("memory_limit", [1 << 30, 0], ids=["memory", "temp-file"])
def test_rollback_copy_is_consistent_under_a_busy_writer(tmp_path: Path, memory_limit: int) -> None:
    db = tmp_path / "app.db"
    make_db(db, "delete")
    src = build(
        Settings(
            path=str(db),
            pages_per_step=8,
            max_restarts=2,
            memory_limit=memory_limit,
            temp_dir=str(tmp_path),
        )
    )
    with busy_writer(db):
        backup_and_restore(src, tmp_path / "restored.db")
    assert check_copy(tmp_path / "restored.db") >= ROWS + 20
    assert sorted(p.name for p in tmp_path.iterdir()) == ["app.db", "restored.db"]
    assert count(db) > ROWS


@pytest.mark.parametrize("memory_limit", [1 << 30, 0], ids=["memory", "temp-file"])
def test_rollback_copy_falls_back_to_one_step_after_restarts(
    tmp_path: Path,
    memory_limit: int,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Whether a writer process lands a commit between two steps is up to the scheduler;
    here a commit is made after every step, so every step restarts the copy."""
    db = tmp_path / "app.db"
    make_db(db, "delete")
    writer = sqlite3.connect(db, isolation_level=None, timeout=30)
    steps = commits = 0
    real = sqlite_source._RestartWatch.__call__

    def commit_after_each_step(
        self: sqlite_source._RestartWatch, status: int, remaining: int, total: int
    ) -> None:
        nonlocal steps, commits
        steps += 1
        real(self, status, remaining, total)  # raises when it gives up
        writer.execute("BEGIN IMMEDIATE")
        insert_pair(writer, 300)
        writer.execute("COMMIT")
        commits += 1

    monkeypatch.setattr(sqlite_source._RestartWatch, "__call__", commit_after_each_step)
    caplog.set_level(logging.INFO, logger="safehold.sources.sqlite")
    src = build(
        Settings(
            path=str(db),
            pages_per_step=8,
            max_restarts=3,
            memory_limit=memory_limit,
            temp_dir=str(tmp_path),
        )
    )
    with closing(writer):
        backup_and_restore(src, tmp_path / "restored.db")
    assert "restarted 4 times" in caplog.text and "in one step" in caplog.text
    assert steps == 5  # gave up at the 4th restart instead of chasing the writer
    # The one-step copy holds every commit made before it.
    assert check_copy(tmp_path / "restored.db") == ROWS + commits


def test_a_quiet_rollback_database_is_copied_in_steps(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    db = tmp_path / "app.db"
    make_db(db, "delete")
    caplog.set_level(logging.INFO, logger="safehold.sources.sqlite")
    backup_and_restore(build(Settings(path=str(db), pages_per_step=4)), tmp_path / "out.db")
    assert check_copy(tmp_path / "out.db") == ROWS
    assert "in one step" not in caplog.text


def test_stream_name_defaults_to_the_file_name(tmp_path: Path) -> None:
    assert build(Settings(path=str(tmp_path / "app.db"))).content().streams[0].name == "app.db"
    named = build(Settings(path=str(tmp_path / "app.db"), name="main.sqlite"))
    assert named.content().streams[0].name == "main.sqlite"


def test_missing_or_foreign_files_are_source_errors(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="does not exist"):
        read_stream(build(Settings(path=str(tmp_path / "nope.db"))).content().streams[0])
    assert not (tmp_path / "nope.db").exists()  # the backup did not create it
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"this is not a database" * 100)
    with pytest.raises(SourceError, match="not a database"):
        read_stream(build(Settings(path=str(junk))).content().streams[0])


def _snapshot_of(tmp_path: Path) -> tuple[SqliteSource, MemoryFiles]:
    db = tmp_path / "app.db"
    make_db(db, "wal")
    src = build(Settings(path=str(db)))
    data = bytes(read_stream(src.content().streams[0]))
    return src, MemoryFiles({"app.db": data}, step=4096)


def test_restore_refuses_an_existing_database_unless_replace(tmp_path: Path) -> None:
    src, files = _snapshot_of(tmp_path)
    db = tmp_path / "app.db"
    with closing(sqlite3.connect(db, isolation_level=None)) as live:
        live.execute("PRAGMA wal_autocheckpoint=0")  # keep the change in the -wal file
        live.execute("DELETE FROM ledger")
        with pytest.raises(TargetError, match="already exists"):
            src.restore(files, RestoreRequest())
        assert (tmp_path / "app.db-wal").exists()
    # Closing checkpointed and removed the -wal; leave a stale one the way a crashed
    # application would, to prove it is not replayed over the restored database.
    stale = tmp_path / "app.db-wal"
    stale.write_bytes(os.urandom(8192))
    os.chmod(db, 0o640)
    src.restore(files, RestoreRequest(replace=True))
    assert not stale.exists()
    assert check_copy(db) == ROWS
    assert db.stat().st_mode & 0o777 == 0o640
    assert not list(tmp_path.glob(".app.db.*"))


def test_restore_checks_integrity_before_placing_the_file(tmp_path: Path) -> None:
    src, files = _snapshot_of(tmp_path)
    data = bytearray(files.files["app.db"])
    page = 4096
    data[3 * page : 5 * page] = os.urandom(2 * page)  # damage two b-tree pages
    target = tmp_path / "restored.db"
    with pytest.raises(IntegrityError, match="integrity check"):
        src.restore(MemoryFiles({"app.db": bytes(data)}), RestoreRequest(target=str(target)))
    assert not target.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["app.db"]


def test_restore_into_a_missing_folder_is_a_target_error(tmp_path: Path) -> None:
    src, files = _snapshot_of(tmp_path)
    with pytest.raises(TargetError, match="cannot write"):
        src.restore(files, RestoreRequest(target=str(tmp_path / "no" / "such.db")))


def test_settings_are_checked() -> None:
    assert Settings.model_validate({"path": "/x", "memory_limit": "64MiB"}).memory_limit == 64 << 20
    with pytest.raises(ValueError, match="extra"):
        Settings.model_validate({"path": "/x", "pages": 5})
    with pytest.raises(ValueError, match="plain file name"):
        Settings(path="/x", name="../x")
