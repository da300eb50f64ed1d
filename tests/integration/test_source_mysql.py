"""The mysql source against real MariaDB servers.

The main case backs up while a client keeps moving money between accounts, each move
one transaction that also logs it in ``ledger`` and counts it in ``counter``; the
restored copy is one consistent moment only if the balances still add up to the starting
total and the ledger holds exactly as many rows as the counter says.
"""

from __future__ import annotations

import itertools
import os
import random
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from safehold.engine.backup import BackupOptions, run_backup
from safehold.errors import SourceError, TargetError
from safehold.repository.repository import Repository
from safehold.sources.base import RestoreRequest, StreamContent
from safehold.sources.mysql import MysqlSource, Settings, build
from safehold.sources.process import ToolMissing
from tests.integration.source_helpers import backup, files_of, killing_after
from tests.servers import free_port
from tests.servers.mysql import MY_PASSWORD, MY_USER_PW, MysqlServer

pytestmark = pytest.mark.xdist_group("mysql")

ACCOUNTS = 2000
START_BALANCE = 100
_names = itertools.count()


def new_db(server: MysqlServer, prefix: str = "db") -> str:
    name = f"{prefix}_{os.getpid()}_{next(_names)}"
    server.sql(f"CREATE DATABASE {name}")
    return name


def load_bank(server: MysqlServer, db: str) -> None:
    server.sql(
        f"""
        CREATE TABLE accounts (id INT PRIMARY KEY, owner VARCHAR(40), balance INT NOT NULL);
        CREATE TABLE ledger (id INT AUTO_INCREMENT PRIMARY KEY, src INT, dst INT, amount INT);
        CREATE TABLE counter (id INT PRIMARY KEY, n INT NOT NULL);
        INSERT INTO counter VALUES (1, 0);
        INSERT INTO accounts SELECT seq, CONCAT('owner ', seq), {START_BALANCE}
            FROM seq_1_to_{ACCOUNTS};
        CREATE TABLE products (
            id INT PRIMARY KEY, name VARCHAR(80), price DECIMAL(10,2), added DATETIME,
            data BLOB, note TEXT CHARACTER SET utf8mb4);
        INSERT INTO products SELECT seq, CONCAT('product ', seq), seq * 1.5,
            '2026-01-01' + INTERVAL seq MINUTE, UNHEX(MD5(seq)), CONCAT('nöte ✓ ', seq)
            FROM seq_1_to_3000;
        CREATE TRIGGER products_upper BEFORE INSERT ON products
            FOR EACH ROW SET NEW.name = UPPER(NEW.name);
        CREATE FUNCTION total() RETURNS INT READS SQL DATA
            RETURN (SELECT SUM(balance) FROM accounts);
        """,
        db,
    )


def digest(server: MysqlServer, db: str, table: str, columns: str) -> str:
    """Row count and md5 of every row in id order."""
    return server.sql(
        "SET SESSION group_concat_max_len = 1073741824;"
        f"SELECT COUNT(*), MD5(GROUP_CONCAT(CONCAT_WS('|', {columns}) ORDER BY id "
        f"SEPARATOR '\\n')) FROM {table}",
        db,
    )


def bank_state(server: MysqlServer, db: str) -> tuple[int, int, int]:
    row = server.sql(
        "SELECT (SELECT SUM(balance) FROM accounts), (SELECT COUNT(*) FROM ledger), "
        "(SELECT n FROM counter)",
        db,
    )
    total, ledger, n = (int(x) for x in row.split("\t"))
    return total, ledger, n


def source_for(server: MysqlServer, db: str | list[str], **kw: object) -> MysqlSource:
    fields = {"url": f"mysql://root@127.0.0.1:{server.port}", "databases": db, **kw}
    return build(Settings.model_validate(fields))


class Mover:
    """A client that keeps moving money, one transaction per move, through one session."""

    def __init__(self, server: MysqlServer, db: str) -> None:
        argv = ["mariadb", "--no-defaults", "-h", "127.0.0.1", "-P", str(server.port)]
        self.proc = subprocess.Popen(
            [*argv, "-u", "root", db], stdin=subprocess.PIPE, stderr=subprocess.PIPE
        )
        self.rng = random.Random(7)

    def move(self) -> None:
        a, b = self.rng.sample(range(1, ACCOUNTS + 1), 2)
        assert self.proc.stdin is not None
        self.proc.stdin.write(
            f"START TRANSACTION; UPDATE accounts SET balance = balance - 3 WHERE id = {a};"
            f"UPDATE accounts SET balance = balance + 3 WHERE id = {b};"
            f"INSERT INTO ledger (src, dst, amount) VALUES ({a}, {b}, 3);"
            "UPDATE counter SET n = n + 1 WHERE id = 1; COMMIT;\n".encode()
        )
        self.proc.stdin.flush()

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(30)


def test_backup_under_load_restores_a_consistent_database(
    mysql_server: MysqlServer,
    mysql_server_factory: Callable[[], MysqlServer],
    local_repo: Repository,
) -> None:
    db = new_db(mysql_server, "bank")
    load_bank(mysql_server, db)
    source = source_for(mysql_server, [db])

    mover = Mover(mysql_server, db)
    try:
        while bank_state(mysql_server, db)[2] < 50:
            mover.move()
        for _ in range(200):  # a backlog the client works through during the dump
            mover.move()
        before = bank_state(mysql_server, db)[2]
        result = backup(local_repo, source, "shop-db")
        for _ in range(50):
            mover.move()
    finally:
        mover.close()
    after = bank_state(mysql_server, db)[2]
    assert after > before

    snap = result.snapshot
    assert snap.source == "mysql" and snap.source_name == "shop-db"
    files = files_of(local_repo, snap)
    assert files.names() == [f"{db}.sql"]

    target = mysql_server_factory()
    source.restore(files, RestoreRequest(target=f"mysql://root@127.0.0.1:{target.port}/copy"))
    total, ledger, n = bank_state(target, "copy")
    assert total == ACCOUNTS * START_BALANCE, "balances do not add up: not one moment"
    assert ledger == n >= before, "ledger and counter disagree: not one moment"
    cols = "id, name, price, added, HEX(data), note"
    assert digest(target, "copy", "products", cols) == digest(mysql_server, db, "products", cols)
    # Routines and triggers came along.
    assert target.sql("SELECT total()", "copy") == str(ACCOUNTS * START_BALANCE)
    target.sql("INSERT INTO products (id, name) VALUES (99999, 'shout')", "copy")
    assert target.sql("SELECT name FROM products WHERE id = 99999", "copy") == "SHOUT"

    # The target has tables now: refused, unless replace (which drops the extra row).
    with pytest.raises(TargetError, match="already has"):
        source.restore(files, RestoreRequest(target=f"mysql://root@127.0.0.1:{target.port}/copy"))
    source.restore(
        files, RestoreRequest(target=f"mysql://root@127.0.0.1:{target.port}/copy", replace=True)
    )
    assert target.sql("SELECT COUNT(*) FROM products WHERE id = 99999", "copy") == "0"
    assert bank_state(target, "copy") == (total, ledger, n)


def test_all_databases_skip_the_system_ones(
    mysql_server: MysqlServer, mem_repo: Repository
) -> None:
    a, b = new_db(mysql_server, "alpha"), new_db(mysql_server, "beta")
    mysql_server.sql("CREATE TABLE t (id INT PRIMARY KEY); INSERT INTO t VALUES (1), (2)", a)
    source = source_for(mysql_server, "all")
    content = source.content()
    assert isinstance(content, StreamContent)
    names = {s.name for s in content.streams}
    assert {f"{a}.sql", f"{b}.sql"} <= names
    assert not names & {"mysql.sql", "sys.sql", "information_schema.sql"}
    # One database restored alone, under another name, on the same server.
    snap = backup(mem_repo, source, "all").snapshot
    copy = f"{a}_copy"
    source.restore(files_of(mem_repo, snap), RestoreRequest(target=copy, options={"database": a}))
    assert mysql_server.sql("SELECT COUNT(*) FROM t", copy) == "2"


def test_database_down(mem_repo: Repository) -> None:
    port = free_port()
    source = build(Settings.model_validate({"url": f"mysql://root@127.0.0.1:{port}"}))
    with pytest.raises(SourceError, match="not reachable") as info:
        backup(mem_repo, source, "down")
    assert f"127.0.0.1:{port}" in str(info.value)
    assert mem_repo.list_snapshots() == []


def test_wrong_password_is_refused_and_not_shown(mysql_server: MysqlServer) -> None:
    bad = source_for(mysql_server, "all", user=MY_USER_PW, password="wrong-secret")
    with pytest.raises(SourceError, match="refused the login") as info:
        bad.content()
    assert "wrong-secret" not in str(info.value)
    new_db(mysql_server)  # "all" needs one, whichever tests ran on this server before
    good = source_for(mysql_server, "all", user=MY_USER_PW, password=MY_PASSWORD)
    assert isinstance(good.content(), StreamContent)


def test_credentials_travel_in_a_private_option_file(
    mysql_server: MysqlServer, tmp_path: Path
) -> None:
    db = new_db(mysql_server)
    log = tmp_path / "log"
    wrapper = tmp_path / "mariadb-dump"
    wrapper.write_text(
        "#!/bin/sh\n"
        f'echo "$@" >> {log}\n'
        'opts="${1#--defaults-extra-file=}"\n'
        f'stat -c "%a %U" "$opts" >> {log}\n'
        f'stat -c "%a" "$(dirname "$opts")" >> {log}\n'
        'exec /usr/bin/mariadb-dump "$@"\n'
    )
    wrapper.chmod(0o755)
    (tmp_path / "mariadb").symlink_to("/usr/bin/mariadb")
    source = source_for(
        mysql_server, db, user=MY_USER_PW, password=MY_PASSWORD, tool_path=str(tmp_path)
    )
    content = source.content()
    assert isinstance(content, StreamContent)
    with content.streams[0].open() as reader:
        assert b"-- MariaDB dump" in reader.read()
    argv, file_mode, dir_mode = log.read_text().splitlines()
    assert MY_PASSWORD not in argv and "--single-transaction" in argv
    assert file_mode == "600 root" and dir_mode == "700"
    assert not Path(argv.split()[0].partition("=")[2]).exists()  # removed afterwards


def test_missing_tool_names_the_package(mysql_server: MysqlServer, tmp_path: Path) -> None:
    with pytest.raises(ToolMissing, match="mariadb-dump nor mysqldump") as info:
        source_for(mysql_server, "all", tool_path=str(tmp_path)).content()
    assert "mariadb-client" in str(info.value)


def test_dump_killed_midway_saves_no_snapshot(
    mysql_server: MysqlServer, mem_repo: Repository
) -> None:
    db = new_db(mysql_server, "big")
    mysql_server.sql(
        "CREATE TABLE blobs (id INT PRIMARY KEY, v VARCHAR(300));"
        "INSERT INTO blobs SELECT seq, REPEAT(MD5(seq), 8) FROM seq_1_to_40000",
        db,
    )
    content = source_for(mysql_server, db).content()
    assert isinstance(content, StreamContent)
    streams = [killing_after(s, 256 << 10, "mariadb-dump") for s in content.streams]
    started = time.monotonic()
    with pytest.raises(SourceError, match="killed by signal 9"):
        run_backup(mem_repo, BackupOptions(streams=streams, source_kind="mysql", source_name="b"))
    assert time.monotonic() - started < 60
    assert mem_repo.list_snapshots() == []
