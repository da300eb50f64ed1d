"""The postgres source against real PostgreSQL 15 servers.

The main case backs up a pgbench database while pgbench keeps running transactions
against it, restores the snapshot into a fresh server, and checks that the restored
database is one consistent moment: in pgbench's TPC-B-like transaction every change to an
account balance is matched by the same change to its teller and branch and by a row in
the history, so the four sums agree only if the dump saw all of a transaction or none.
"""

from __future__ import annotations

import itertools
import os
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from safehold.errors import ExitCode, SourceError, TargetError, UsageError
from safehold.repository.repository import Repository
from safehold.sources.base import RestoreRequest, StreamContent
from safehold.sources.postgres import PostgresSource, Settings, build
from safehold.sources.process import ToolMissing
from safehold.storage.memory import MemoryStorage
from tests.conftest import FAST_KDF, PASSWORD, CliRunner
from tests.integration.source_helpers import backup, files_of, killing_after
from tests.servers import free_port
from tests.servers.postgres import PG_PASSWORD, PG_USER_PW, PgServer, pg_bin

pytestmark = pytest.mark.xdist_group("postgres")

_names = itertools.count()


def new_db(server: PgServer, prefix: str = "db") -> str:
    name = f"{prefix}_{os.getpid()}_{next(_names)}"
    server.psql(f"CREATE DATABASE {name}")
    return name


def add_static_table(server: PgServer, db: str, rows: int = 3000) -> None:
    server.psql(
        "CREATE TABLE items (id int PRIMARY KEY, name text, price numeric(10,2), tags text[]);"
        f"INSERT INTO items SELECT i, 'item ' || i, i * 1.25, ARRAY['t' || (i % 7)] "
        f"FROM generate_series(1, {rows}) i",
        db,
    )


def table_digest(server: PgServer, db: str, table: str, key: str) -> str:
    """Row count and md5 of every row in key order."""
    return server.psql(
        f"SELECT count(*) || ':' || coalesce(md5(string_agg(t::text, E'\\n' ORDER BY {key})), '') "
        f"FROM {table} t",
        db,
    )


def pgbench_sums(server: PgServer, db: str) -> tuple[int, int, int, int, int]:
    row = server.psql(
        "SELECT (SELECT sum(abalance) FROM pgbench_accounts), "
        "(SELECT sum(bbalance) FROM pgbench_branches), "
        "(SELECT sum(tbalance) FROM pgbench_tellers), "
        "(SELECT coalesce(sum(delta), 0) FROM pgbench_history), "
        "(SELECT count(*) FROM pgbench_history)",
        db,
    )
    a, b, t, h, n = (int(x) for x in row.split("|"))
    return a, b, t, h, n


def source_for(server: PgServer, db: str, **kw: object) -> PostgresSource:
    return build(Settings.model_validate({"url": server.url(db), **kw}))


def test_backup_under_load_restores_a_consistent_database(
    pg_server: PgServer,
    pg_server_factory: Callable[[], PgServer],
    local_repo: Repository,
) -> None:
    db = new_db(pg_server, "bench")
    pg_server.pgbench("-i", "-s", "2", "-q", db=db)
    add_static_table(pg_server, db)
    role = f"reader_{db}"
    pg_server.psql(f"CREATE ROLE {role} LOGIN; GRANT SELECT ON items TO {role}", db)
    source = source_for(pg_server, db, globals=True)

    # A busy writer for the whole backup: pgbench itself, two clients.
    bench = subprocess.Popen(
        [
            *(str(pg_bin() / "pgbench"), "-h", "127.0.0.1", "-p", str(pg_server.port)),
            *("-U", "postgres", "-n", "-c", "2", "-T", "120", db),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while pgbench_sums(pg_server, db)[4] < 200 and time.monotonic() < deadline:
            time.sleep(0.1)
        before = pgbench_sums(pg_server, db)[4]
        result = backup(local_repo, source, "pg-main")
        after = pgbench_sums(pg_server, db)[4]
    finally:
        bench.terminate()
        bench.wait(30)
    assert after > before > 0, "pgbench was not writing during the backup"

    snap = result.snapshot
    assert snap.source == "postgres" and snap.source_name == "pg-main"
    files = files_of(local_repo, snap)
    assert sorted(files.names()) == sorted(["globals.sql", f"{db}.pgdump"])
    with files.open("globals.sql") as f:
        assert f"CREATE ROLE {PG_USER_PW}" in f.read().decode()

    target = pg_server_factory()
    request = RestoreRequest(target=target.url("restored"), options={"globals": True})
    source.restore(files, request)
    # The roles came first (globals.sql), so the grant to the role restored too.
    assert (
        target.psql(f"SELECT has_table_privilege('{role}', 'items', 'SELECT')", "restored") == "t"
    )
    a, b, t, h, n = pgbench_sums(target, "restored")
    assert a == b == t == h, "the restored pgbench tables are not one consistent moment"
    assert before <= n <= after
    assert target.psql("SELECT count(*) FROM pgbench_accounts", "restored") == "200000"
    assert table_digest(target, "restored", "items", "id") == table_digest(
        pg_server, db, "items", "id"
    )

    # The same target again: refused, as it has tables now; allowed with replace, and
    # then restored in parallel (--jobs needs the dump spooled to a file).
    with pytest.raises(TargetError, match="already holds"):
        source.restore(files, request)
    target.psql("CREATE TABLE restored_extra (x int)", "restored")
    source.restore(files, RestoreRequest(target=target.url("restored"), replace=True, jobs=2))
    assert target.psql("SELECT to_regclass('restored_extra') IS NULL", "restored") == "t"
    assert pgbench_sums(target, "restored") == (a, b, t, h, n)


def test_restore_under_another_name_on_the_same_server(
    pg_server: PgServer, mem_repo: Repository
) -> None:
    db = new_db(pg_server)
    add_static_table(pg_server, db, 500)
    source = source_for(pg_server, db)
    snap = backup(mem_repo, source, "pg").snapshot
    copy = f"{db}_copy"
    source.restore(files_of(mem_repo, snap), RestoreRequest(target=copy))
    assert table_digest(pg_server, copy, "items", "id") == table_digest(
        pg_server, db, "items", "id"
    )


def test_all_databases_and_choosing_one_to_restore(
    pg_server: PgServer, mem_repo: Repository
) -> None:
    alpha, beta = new_db(pg_server, "alpha"), new_db(pg_server, "beta")
    for name in (alpha, beta):
        add_static_table(pg_server, name, 100)
    source = build(Settings(url=pg_server.url(), databases="all"))
    content = source.content()
    assert isinstance(content, StreamContent)
    names = [s.name for s in content.streams]
    assert {f"{alpha}.pgdump", f"{beta}.pgdump", "postgres.pgdump"} <= set(names)
    assert "template0.pgdump" not in names and "template1.pgdump" not in names
    snap = backup(mem_repo, source, "all").snapshot
    files = files_of(mem_repo, snap)
    with pytest.raises(UsageError, match="target 'gamma' is none of them"):
        source.restore(files, RestoreRequest(target="gamma"))
    # Naming one of them restores that one alone (here: refused, it has its table).
    with pytest.raises(TargetError, match=f"database '{alpha}' .* already holds 1 tables"):
        source.restore(files, RestoreRequest(target=alpha))
    gamma = f"{beta}_gamma"
    source.restore(files, RestoreRequest(target=gamma, options={"database": beta}))
    assert table_digest(pg_server, gamma, "items", "id") == table_digest(
        pg_server, beta, "items", "id"
    )


def test_database_down_saves_nothing(pg_server: PgServer, mem_repo: Repository) -> None:
    down = PgServer(pg_server.root, port=free_port())  # nothing listens there
    with pytest.raises(SourceError, match="not reachable") as info:
        backup(mem_repo, source_for(down, "postgres"), "pg")
    assert f"127.0.0.1:{down.port}" in str(info.value)
    assert mem_repo.list_snapshots() == []


def test_wrong_password_is_refused_and_not_shown(pg_server: PgServer) -> None:
    url = f"postgresql://{PG_USER_PW}:wrong-secret@127.0.0.1:{pg_server.port}/postgres"
    with pytest.raises(SourceError, match="refused the login") as info:
        build(Settings(url=url)).content()
    assert "wrong-secret" not in str(info.value)
    # The right password, given apart from the URL, works.
    good = build(Settings(url=pg_server.url(user=PG_USER_PW), password=PG_PASSWORD))
    assert isinstance(good.content(), StreamContent)


def test_password_never_on_the_command_line(pg_server: PgServer, tmp_path: Path) -> None:
    # A pg_dump that records its argv and whether it got the password, then runs the real one.
    log = tmp_path / "argv"
    wrapper = tmp_path / "pg_dump"
    wrapper.write_text(
        f'#!/bin/sh\necho "$@" >> {log}\necho "pw=$PGPASSWORD" >> {log}\n'
        f'exec {pg_bin() / "pg_dump"} "$@"\n'
    )
    wrapper.chmod(0o755)
    for tool in ("psql", "pg_dumpall"):
        (tmp_path / tool).symlink_to(pg_bin() / tool)
    url = f"postgresql://{PG_USER_PW}:{PG_PASSWORD}@127.0.0.1:{pg_server.port}/postgres"
    content = build(Settings(url=url, tool_path=str(tmp_path))).content()
    assert isinstance(content, StreamContent)
    with content.streams[0].open() as reader:
        assert reader.read().startswith(b"PGDMP")
    lines = log.read_text().splitlines()  # --version first, then the dump
    dump_argv = lines[-2]
    assert "--format=custom" in dump_argv and f"user='{PG_USER_PW}'" in dump_argv
    assert PG_PASSWORD not in dump_argv
    assert lines[-1] == f"pw={PG_PASSWORD}"  # it travelled in the environment


def test_missing_tool_names_the_package(pg_server: PgServer, tmp_path: Path) -> None:
    source = source_for(pg_server, "postgres", tool_path=str(tmp_path))
    with pytest.raises(ToolMissing, match="pg_dump") as info:
        source.content()
    assert "postgresql-client" in str(info.value)


def test_old_pg_dump_is_named_with_the_fix(pg_server: PgServer, tmp_path: Path) -> None:
    # A pg_dump that says it is 13, next to the real psql.
    fake = tmp_path / "pg_dump"
    fake.write_text("#!/bin/sh\necho 'pg_dump (PostgreSQL) 13.14'\n")
    fake.chmod(0o755)
    (tmp_path / "psql").symlink_to("/usr/bin/psql")
    with pytest.raises(SourceError, match=r"pg_dump 13 .* cannot dump a PostgreSQL 15") as info:
        source_for(pg_server, "postgres", tool_path=str(tmp_path)).content()
    assert "postgresql-client-15" in str(info.value)


def test_dump_killed_midway_saves_no_snapshot(pg_server: PgServer, mem_repo: Repository) -> None:
    db = new_db(pg_server)
    pg_server.pgbench("-i", "-s", "1", "-q", db=db)
    content = source_for(pg_server, db).content()
    assert isinstance(content, StreamContent)
    from safehold.engine.backup import BackupOptions, run_backup

    streams = [killing_after(s, 1 << 20, "pg_dump") for s in content.streams]
    opts = BackupOptions(streams=streams, source_kind="postgres", source_name="pg")
    with pytest.raises(SourceError, match="killed by signal 9"):
        run_backup(mem_repo, opts)
    assert mem_repo.list_snapshots() == []


def load_nightly(server: PgServer) -> str:
    """pgbench at scale 10 (1 M accounts), with varied filler rather than pgbench's blanks,
    which would compress to nothing and flatter every figure."""
    db = new_db(server, "nightly")
    server.pgbench("-i", "-I", "dt", "-s", "10", db=db)
    server.psql(
        "INSERT INTO pgbench_branches SELECT i, 0 FROM generate_series(1, 10) i;"
        "INSERT INTO pgbench_tellers SELECT i, (i - 1) / 10 + 1, 0 FROM generate_series(1, 100) i;"
        "INSERT INTO pgbench_accounts SELECT i, (i - 1) / 100000 + 1, 0, "
        "md5(i::text) || md5((i * 7)::text) FROM generate_series(1, 1000000) i",
        db,
    )
    server.pgbench("-i", "-I", "p", "-s", "10", db=db)
    return db


# A day's changes to 1 % of the accounts (10,000): a contiguous range of them, as when
# recent rows change, or every hundredth one, spread evenly over the whole table.
CHANGES = {
    "range": "UPDATE pgbench_accounts SET abalance = abalance + 7 "
    "WHERE aid BETWEEN 400001 AND 410000",
    "spread": "UPDATE pgbench_accounts SET abalance = abalance + 7 WHERE aid % 100 = 42",
}


def nightly(server: PgServer, template: str, compress: int, change: str) -> tuple[int, int, float]:
    """Dump, change, dump again: (first stored, second stored, seconds of the first dump)."""
    db = new_db(server, "night")
    server.psql(f"DROP DATABASE {db}; CREATE DATABASE {db} TEMPLATE {template}")
    repo = Repository.init(MemoryStorage(), PASSWORD, kdf=FAST_KDF)
    source = source_for(server, db, compress=compress)
    started = time.monotonic()
    first = backup(repo, source, "nightly").summary
    took = time.monotonic() - started
    server.psql(CHANGES[change], db)
    second = backup(repo, source, "nightly").summary
    server.psql(f"DROP DATABASE {db}")
    assert first["data_added"] > 40_000_000  # the dump is ~100 MB (~42 MB compressed)
    return first["data_added_stored"], second["data_added_stored"], took


def test_nightly_dumps_deduplicate(pg_server: PgServer) -> None:
    """Dumped, 1 % of the accounts changed, dumped again: the second snapshot adds only a
    small part of what the first stored. docs/benchmarks.md ("Nightly PostgreSQL dumps")
    records the figures."""
    template = load_nightly(pg_server)
    first, second, _ = nightly(pg_server, template, 0, "range")
    ratio = second / first
    print(f"nightly: first {first / 1e6:.1f} MB stored, second {second / 1e6:.2f} MB ({ratio:.1%})")
    assert ratio < 0.15, f"the second dump added {ratio:.1%} of the first"


def test_nightly_dump_variants(pg_server: PgServer, long_mode: bool) -> None:
    """--long: the figures of docs/benchmarks.md for pg_dump's own compression and for
    changes spread over the whole table (which no chunk-level deduplication can share)."""
    if not long_mode:
        pytest.skip("measurement only: run with --long")
    template = load_nightly(pg_server)
    for compress in (0, 6):
        for change in CHANGES:
            first, second, took = nightly(pg_server, template, compress, change)
            print(
                f"compress={compress} change={change}: first {first / 1e6:.1f} MB "
                f"({took:.1f} s), second {second / 1e6:.2f} MB ({second / first:.1%})"
            )


def test_config_file_backup_and_restore_through_the_cli(
    pg_server: PgServer, cli: CliRunner, cli_repo: str, tmp_path: Path
) -> None:
    db = new_db(pg_server, "cli")
    add_static_table(pg_server, db, 1000)
    config = tmp_path / "safehold.yaml"
    config.write_text(
        f"""\
repository:
  location: {cli_repo}
  password_env: REPO_PW
sources:
  pg-main:
    type: postgres
    url: postgresql://{PG_USER_PW}@127.0.0.1:{pg_server.port}/{db}
    password: {PG_PASSWORD}
    globals: true
"""
    )
    env = {"REPO_PW": PASSWORD.decode(), "SAFEHOLD_STATE_DIR": str(tmp_path / "state")}
    res = cli("backup", "--config", str(config), "--source", "pg-main", env=env)
    assert res.code == 0, res.output
    assert PG_PASSWORD not in res.output
    copy = f"{db}_copy"
    restore = ["restore", "--config", str(config), "--source", "pg-main", "latest"]
    res = cli(*restore, "--target", copy, env=env)
    assert res.code == 0, res.output
    assert table_digest(pg_server, copy, "items", "id") == table_digest(
        pg_server, db, "items", "id"
    )
    # Again: the target has tables now, so the exit code says the target was refused.
    res = cli(*restore, "--target", copy, env=env)
    assert res.code == ExitCode.TARGET and "already holds" in res.stderr, res.output
    # Replacing it, with pg_restore's parallel jobs.
    res = cli(*restore, "--target", copy, "--replace", "--jobs", "2", env=env)
    assert res.code == 0, res.output
    assert table_digest(pg_server, copy, "items", "id") == table_digest(
        pg_server, db, "items", "id"
    )
