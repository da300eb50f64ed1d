"""open_database with a server given by URL (the shared database of several machines):
a login with a password, its errors, and no secret in any message."""

from __future__ import annotations

import pytest

from safehold.errors import (
    DatabaseAuthFailed,
    DatabaseError,
    DatabaseUnreachable,
    ExitCode,
    UsageError,
)
from safehold.service.database import open_database
from tests.servers import free_port
from tests.servers.postgres import PG_PASSWORD, PG_USER_PW, PgServer

# pg_server is one per xdist worker: share it with the postgres source's tests.
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("postgres")]


def test_a_password_login_migrates_and_masks_the_password(pg_server: PgServer) -> None:
    pg_server.psql("DROP DATABASE IF EXISTS safehold_url WITH (FORCE)")
    pg_server.psql("CREATE DATABASE safehold_url")
    url = f"postgresql://{PG_USER_PW}:{PG_PASSWORD}@127.0.0.1:{pg_server.port}/safehold_url"
    with open_database(url) as db:
        assert PG_PASSWORD not in db.display_url
        assert db.display_url == (
            f"postgresql://{PG_USER_PW}:***@127.0.0.1:{pg_server.port}/safehold_url"
        )
        assert db.cluster is None
    tables = pg_server.psql("SELECT tablename FROM pg_tables ORDER BY 1", db="safehold_url")
    assert {"plans", "slots", "runs", "procrastinate_jobs"} <= set(tables.split())


def test_a_wrong_password(pg_server: PgServer) -> None:
    secret = "not-the-password-4711"
    url = f"postgresql://{PG_USER_PW}:{secret}@127.0.0.1:{pg_server.port}/postgres"
    with pytest.raises(DatabaseAuthFailed) as caught:
        with open_database(url):
            pass
    assert secret not in str(caught.value)
    assert "refused the login" in str(caught.value)
    assert caught.value.exit_code == ExitCode.DATABASE
    assert caught.value.hint is not None and "--database" in caught.value.hint


def test_nothing_listening() -> None:
    secret = "s3cret-pw-0815"
    url = f"postgresql://someone:{secret}@127.0.0.1:{free_port()}/safehold"
    with pytest.raises(DatabaseUnreachable) as caught:
        with open_database(url):
            pass
    message = str(caught.value)
    assert secret not in message
    assert "cannot connect to the database at postgresql://someone:***@127.0.0.1:" in message
    assert caught.value.exit_code == ExitCode.DATABASE


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("mysql://root:pw@localhost/db", "must be a PostgreSQL one"),
        ("not a url at all", "not valid"),
    ],
)
def test_not_a_postgresql_url(url: str, says: str) -> None:
    with pytest.raises(UsageError, match=says) as caught:
        with open_database(url):
            pass
    assert "pw@" not in str(caught.value)


def test_a_user_who_may_not_create_tables(pg_server: PgServer) -> None:
    pg_server.psql("DROP DATABASE IF EXISTS safehold_ro WITH (FORCE)")
    pg_server.psql("CREATE DATABASE safehold_ro")
    pg_server.psql(
        "DO $$ BEGIN CREATE ROLE safehold_reader LOGIN; "
        "EXCEPTION WHEN duplicate_object THEN NULL; END $$"
    )
    url = f"postgresql://safehold_reader@127.0.0.1:{pg_server.port}/safehold_ro"
    with pytest.raises(DatabaseError, match="permission denied") as caught:
        with open_database(url):
            pass
    assert type(caught.value) is DatabaseError
    assert caught.value.hint is not None and "create tables" in caught.value.hint
