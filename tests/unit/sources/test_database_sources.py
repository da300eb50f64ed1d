"""The pure parts of the postgres, mysql and redis sources: no servers needed."""

from __future__ import annotations

import io
from collections.abc import Iterator

import pytest
from pydantic import ValidationError

from safehold.errors import ConfigError, SourceError
from safehold.sources import mysql, postgres, redis
from safehold.sources.postgres_util import (
    conninfo,
    db_from_stream,
    describe_failure,
    parse_url,
    server_major,
    stream_name,
    tool_major,
)
from safehold.sources.redis_util import RdbReader, check_rdb_header, open_rdb_reader, sync_pieces

# --- postgres ---------------------------------------------------------------------------


def test_url_password_is_taken_out_of_the_connection_string() -> None:
    params, password = parse_url(
        "postgresql://backup:s%40cret@db1.example:6543/shop?sslmode=require"
    )
    assert password == "s@cret"
    assert params == {"user": "backup", "host": "db1.example", "port": "6543", "dbname": "shop"} | {
        "sslmode": "require"
    }
    text = conninfo(params, "other")
    assert "s@cret" not in text and "cret" not in text
    assert "dbname='other'" in text and "sslmode='require'" in text


def test_password_in_the_query_string_is_taken_out_too() -> None:
    params, password = parse_url("postgres://u@h/db?password=pw&application_name=x")
    assert password == "pw" and "password" not in params


def test_conninfo_quotes_odd_database_names() -> None:
    assert conninfo({}, "it's a\\db") == "dbname='it\\'s a\\\\db'"


def test_bad_urls_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="postgresql://"):
        parse_url("mysql://u@h/db")
    with pytest.raises(ConfigError, match="port"):
        parse_url("postgresql://u@h:notaport/db")


def test_versions() -> None:
    assert tool_major("pg_dump (PostgreSQL) 15.20 (Debian 15.20-0+deb12u1)") == (15,)
    assert tool_major("pg_dump (PostgreSQL) 9.6.24") == (9, 6)
    assert tool_major("pg_dump (PostgreSQL) 17devel") == (17,)
    assert server_major(150020) == (15,) and server_major(90624) == (9, 6)
    assert tool_major("pg_dump (PostgreSQL) 15.2") < server_major(160001)
    with pytest.raises(ValueError):
        tool_major("something else")


def test_stream_names_round_trip() -> None:
    for db in ("shop", "my db", "a/b", "ünï", "x.pgdump"):
        assert db_from_stream(stream_name(db)) == db
        assert "/" not in stream_name(db)
    assert db_from_stream("globals.sql") is None


def test_failures_are_described() -> None:
    refused = 'connection to server at "127.0.0.1", port 1 failed: Connection refused'
    assert describe_failure(refused)[0] == "the PostgreSQL server is not reachable"
    auth = 'FATAL:  password authentication failed for user "x"'
    assert describe_failure(auth)[0] == "PostgreSQL refused the login"
    assert "older" in describe_failure("aborting because of server version mismatch")[0]
    assert describe_failure("something new")[0] == "the PostgreSQL client failed"


def test_postgres_settings() -> None:
    s = postgres.Settings.model_validate({"url": "postgresql://u:pw@h/db", "databases": "all"})
    assert "pw" not in repr(s)
    with pytest.raises(ValidationError, match="extra"):
        postgres.Settings.model_validate({"databse": "x"})
    with pytest.raises(ValidationError):
        postgres.Settings.model_validate({"compress": 11})


# --- mysql --------------------------------------------------------------------------------


def test_mysql_option_file_escapes_and_holds_the_password() -> None:
    settings = mysql.Settings.model_validate(
        {"url": "mysql://bk:urlpw@db:3307", "password": 'a"b\\c'}
    )
    source = mysql.build(settings)
    text = source.server.option_text()
    assert text.startswith("[client]\n")
    assert 'password="a\\"b\\\\c"' in text and 'host="db"' in text and 'port="3307"' in text
    assert 'user="bk"' in text and "urlpw" not in text  # the explicit password wins
    assert 'a"b' not in repr(source.settings)


def test_mysql_option_file_is_private_and_removed() -> None:
    import os
    import stat

    server = mysql.build(mysql.Settings(password="pw")).server
    with server.option_file() as path:
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        assert stat.S_IMODE(os.stat(os.path.dirname(path)).st_mode) == 0o700
    assert not os.path.exists(path)


def test_mysql_quoting_and_names() -> None:
    assert mysql.ident("we`ird") == "`we``ird`"
    assert mysql.literal("it's\\") == "'it\\'s\\\\'"
    assert mysql.db_from_stream(mysql.stream_name("a b/c")) == "a b/c"
    assert mysql.describe_failure("ERROR 1045 (28000): Access denied for user")[0].endswith(
        "refused the login"
    )


# --- redis --------------------------------------------------------------------------------

RDB = b"REDIS0010" + b"\xfa\x09redis-ver\x067.0.15" + b"\xfe\x00\xfb\x01\x00\x00\x01a\x01b"
RDB += b"\xff" + b"\x12\x34\x56\x78\x9a\xbc\xde\xf0"


def read_all(pieces: list[bytes]) -> bytes:
    return open_rdb_reader(iter(pieces), "test").read()


def test_a_whole_rdb_passes_in_any_pieces() -> None:
    assert read_all([RDB]) == RDB
    assert read_all([RDB[i : i + 3] for i in range(0, len(RDB), 3)]) == RDB
    assert check_rdb_header(RDB) == 10


@pytest.mark.parametrize("cut", [0, 5, 9, 20, len(RDB) - 1, len(RDB) - 9])
def test_an_rdb_cut_short_is_an_error(cut: int) -> None:
    with pytest.raises(SourceError):
        read_all([RDB[:cut]])


def test_not_an_rdb_is_an_error() -> None:
    with pytest.raises(SourceError, match="not an RDB"):
        read_all([b"<html>hello</html>" + RDB])


def test_the_reader_is_raw_io() -> None:
    raw = RdbReader(iter([RDB]), "t")
    buf = bytearray(4)
    assert raw.readinto(buf) == 4 and bytes(buf) == b"REDI"


class FakeConn:
    """What sync_pieces needs of a RedisConnection, over canned server output."""

    where = "fake:1"

    def __init__(self, server_output: bytes) -> None:
        self.rfile = io.BufferedReader(io.BytesIO(server_output), buffer_size=7)  # type: ignore[arg-type]
        self.sent: list[tuple[object, ...]] = []

    def call(self, *args: object) -> object:
        self.sent.append(args)
        return b"OK"

    def send(self, *args: object) -> None:
        self.sent.append(args)

    def readline(self) -> bytes:
        line = self.rfile.readline()
        if not line.endswith(b"\n"):
            raise SourceError("closed")
        return line


def pieces(output: bytes) -> Iterator[bytes]:
    return sync_pieces(FakeConn(output))  # type: ignore[arg-type]


MARK = b"0123456789abcdef0123456789abcdef01234567"


def test_sync_with_an_end_mark_stops_at_the_mark() -> None:
    # Keepalive newlines first, then the RDB, the mark, and replication traffic after it.
    out = b"\n\n$EOF:" + MARK + b"\r\n" + RDB + MARK + b"*1\r\n$4\r\nPING\r\n"
    assert b"".join(pieces(out)) == RDB


def test_sync_with_a_length() -> None:
    out = b"\n$" + str(len(RDB)).encode() + b"\r\n" + RDB + b"+extra"
    assert b"".join(pieces(out)) == RDB


def test_sync_cut_short_is_an_error() -> None:
    with pytest.raises(SourceError, match="cut short"):
        b"".join(pieces(b"$EOF:" + MARK + b"\r\n" + RDB + MARK[:20]))
    with pytest.raises(SourceError, match="cut short"):
        b"".join(pieces(b"$" + str(len(RDB) + 5).encode() + b"\r\n" + RDB))


def test_sync_refused() -> None:
    with pytest.raises(SourceError, match="refused to send its RDB"):
        b"".join(pieces(b"-NOPERM this user has no permissions\r\n"))


def test_redis_url() -> None:
    source = redis.build(redis.Settings.model_validate({"url": "redis://bob:p%40ss@cache:6390/2"}))
    assert (source.host, source.port, source.username) == ("cache", 6390, "bob")
    assert source._password() == "p@ss"
    with pytest.raises(ConfigError, match="redis://"):
        redis.build(redis.Settings.model_validate({"url": "http://cache"}))


def test_redis_settings() -> None:
    s = redis.Settings.model_validate({"password": "pw", "method": "bgsave"})
    assert "pw" not in repr(s)
    with pytest.raises(ValidationError):
        redis.Settings.model_validate({"method": "copy"})
