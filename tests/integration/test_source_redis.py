"""The redis source against real Redis 7 servers.

Keys of every type (string, list, set, sorted set, hash, stream), some with expiry times,
are backed up while a client keeps changing other keys; the RDB is restored into a fresh,
stopped server, which is then started and compared key by key: type, value and absolute
expiry time. The busy client changes three keys in one MULTI/EXEC each time, so the
restored copy is one moment only if the three still agree.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest

from safehold.engine.backup import BackupOptions, run_backup
from safehold.errors import SourceError, TargetError
from safehold.repository.repository import Repository
from safehold.sources.base import RestoreRequest, StreamContent
from safehold.sources.redis import RedisSource, Settings, build
from safehold.sources.redis_util import RedisConnection
from tests.integration.source_helpers import Writer, backup, files_of, killing_after
from tests.servers import free_port
from tests.servers.redis import RedisServer

pytestmark = pytest.mark.xdist_group("redis")

FAR = 4_102_444_800_000  # 2100-01-01 in ms: an expiry that cannot pass during the test


def load_every_type(c: RedisConnection, prefix: str) -> None:
    c.call("SET", f"{prefix}:str", "hello")
    c.call("SET", f"{prefix}:bin", bytes(range(256)))
    c.call("SET", f"{prefix}:int", 42)
    c.call("RPUSH", f"{prefix}:list", *[f"item{i}" for i in range(300)])
    c.call("SADD", f"{prefix}:set", *[f"m{i}" for i in range(200)])
    c.call("SADD", f"{prefix}:intset", 1, 2, 3)
    c.call("ZADD", f"{prefix}:zset", *[x for i in range(150) for x in (i * 1.5, f"z{i}")])
    c.call("HSET", f"{prefix}:hash", *[x for i in range(100) for x in (f"f{i}", f"v{i}")])
    c.call("HSET", f"{prefix}:bighash", *[x for i in range(1000) for x in (f"f{i}", "x" * 80)])
    for i in range(50):
        c.call("XADD", f"{prefix}:stream", "*", "n", i, "who", f"user{i}")
    c.call("XGROUP", "CREATE", f"{prefix}:stream", "workers", "0")
    for i in range(2000):
        c.send("SET", f"{prefix}:many:{i}", f"value {i} " * 20)
    for _ in range(2000):
        c.reply()
    c.call("PEXPIREAT", f"{prefix}:str", FAR)
    c.call("PEXPIREAT", f"{prefix}:hash", FAR + 1234)
    c.call("SET", f"{prefix}:ttl", "soon gone", "PXAT", FAR - 1)


def scan(c: RedisConnection, match: str = "*") -> list[bytes]:
    keys: list[bytes] = []
    cursor = b"0"
    while True:
        reply = c.call("SCAN", cursor, "MATCH", match, "COUNT", 1000)
        assert isinstance(reply, list)
        cursor, batch = reply
        keys += batch
        if cursor == b"0":
            return keys


def value_of(c: RedisConnection, key: bytes, kind: bytes) -> object:
    """A key's value in a comparable form, read with its type's own commands."""
    if kind == b"string":
        return c.call("GET", key)
    if kind == b"list":
        return c.call("LRANGE", key, 0, -1)
    if kind == b"set":
        return sorted(c.call("SMEMBERS", key))  # type: ignore[type-var]
    if kind == b"zset":
        return c.call("ZRANGE", key, 0, -1, "WITHSCORES")
    if kind == b"hash":
        flat = c.call("HGETALL", key)
        assert isinstance(flat, list)
        return sorted(zip(flat[::2], flat[1::2], strict=True))
    if kind == b"stream":
        return (c.call("XRANGE", key, "-", "+"), c.call("XINFO", "GROUPS", key))
    raise AssertionError(f"unexpected type {kind!r}")


def snapshot_of(c: RedisConnection) -> dict[bytes, tuple[object, ...]]:
    """Every key: (type, value digest, absolute expiry in ms or -1), and for the keys of
    load_every_type also the value itself, read back with its type's commands."""
    out: dict[bytes, tuple[object, ...]] = {}
    keys = scan(c)
    for start in range(0, len(keys), 500):  # pipelined, in batches
        batch = keys[start : start + 500]
        for key in batch:
            c.send("TYPE", key)
            c.send("PEXPIRETIME", key)
            c.send("DEBUG", "DIGEST-VALUE", key)
        for key in batch:
            kind, expiry, digest = c.reply(), c.reply(), c.reply()
            out[key] = (kind, digest, expiry)
    for key in scan(c, "s:*"):
        kind = out[key][0]
        assert isinstance(kind, bytes)
        out[key] += (value_of(c, key, kind),)
    return out


def source_for(server: RedisServer, **kw: object) -> RedisSource:
    return build(Settings.model_validate({"url": f"redis://127.0.0.1:{server.port}", **kw}))


def busy_writer(server: RedisServer, prefix: str) -> Writer:
    c = server.client()

    def step(i: int) -> None:
        c.send("MULTI")
        c.send("INCR", f"{prefix}:n")
        c.send("RPUSH", f"{prefix}:log", i)
        c.send("HSET", f"{prefix}:seen", f"f{i}", i)
        c.send("EXEC")
        for _ in range(5):
            c.reply()

    return Writer(step)


def check_writer_keys(c: RedisConnection, prefix: str) -> int:
    n = int(c.call("GET", f"{prefix}:n") or 0)  # type: ignore[call-overload]
    log = c.call("LRANGE", f"{prefix}:log", 0, -1)
    assert log == [str(i).encode() for i in range(n)], "the log and the counter disagree"
    assert c.call("HLEN", f"{prefix}:seen") == n
    return n


@pytest.mark.parametrize("method", ["sync", "bgsave"])
def test_backup_under_load_restores_every_key(
    method: str,
    redis_server_factory: Callable[..., RedisServer],
    local_repo: Repository,
) -> None:
    server = redis_server_factory()
    with server.client() as c:
        load_every_type(c, "s")
        c.call("DEBUG", "POPULATE", 20000, "bulk", 512)  # ~10 MB, so the dump takes a while
        static = snapshot_of(c)
    source = source_for(server, method=method)
    with busy_writer(server, "w") as writer:
        while writer.count < 100:
            time.sleep(0.01)
        before = writer.count
        result = backup(local_repo, source, "cache")
        during = writer.count
    assert during > before, "the writer was not writing during the backup"
    assert result.snapshot.source == "redis"
    files = files_of(local_repo, result.snapshot)
    assert files.names() == ["dump.rdb"]

    target = redis_server_factory()
    target.stop()
    source_for(target).restore(files, into(target.root))
    assert target.rdb_path.exists()
    target.start()
    with target.client() as c:
        restored = snapshot_of(c)
        n = check_writer_keys(c, "w")
    assert 0 < n <= writer.count
    for key in (b"w:n", b"w:log", b"w:seen"):
        restored.pop(key, None)
    assert restored.keys() == static.keys()
    assert restored == static
    assert restored[b"s:str"][2] == FAR and restored[b"s:ttl"][2] == FAR - 1
    assert len(restored) > 20000


def into(folder: Path, *, replace: bool = False) -> RestoreRequest:
    return RestoreRequest(target=str(folder), replace=replace)


def test_restore_refuses_a_running_server_and_an_existing_file(
    redis_server: RedisServer,
    redis_server_factory: Callable[..., RedisServer],
    mem_repo: Repository,
) -> None:
    with redis_server.client() as c:
        c.call("SET", "refuse:k", "v")
    snap = backup(mem_repo, source_for(redis_server), "r").snapshot
    files = files_of(mem_repo, snap)
    target = redis_server_factory()
    with pytest.raises(TargetError, match="is running"):
        source_for(target).restore(files, into(target.root))
    target.stop()
    target.rdb_path.write_bytes(b"an older RDB")
    with pytest.raises(TargetError, match="already exists"):
        source_for(target).restore(files, into(target.root))
    assert target.rdb_path.read_bytes() == b"an older RDB"
    source_for(target).restore(files, into(target.root, replace=True))
    target.start()
    with target.client() as c:
        assert c.call("GET", "refuse:k") == b"v"


def test_password(redis_server_factory: Callable[..., RedisServer], mem_repo: Repository) -> None:
    server = redis_server_factory(password="right-password")
    with pytest.raises(SourceError, match="WRONGPASS") as info:
        source_for(server, password="wrong-secret").content()
    assert "wrong-secret" not in str(info.value)
    with pytest.raises(SourceError, match="NOAUTH"):
        source_for(server).content()
    snap = backup(mem_repo, source_for(server, password="right-password"), "r").snapshot
    assert files_of(mem_repo, snap).size("dump.rdb") > 0


def test_server_down_saves_nothing(mem_repo: Repository) -> None:
    port = free_port()
    with pytest.raises(SourceError, match="not reachable") as info:
        backup(mem_repo, build(Settings.model_validate({"url": f"redis://127.0.0.1:{port}"})), "r")
    assert f"127.0.0.1:{port}" in str(info.value)
    assert mem_repo.list_snapshots() == []


def test_transfer_cut_short_saves_no_snapshot(
    redis_server_factory: Callable[..., RedisServer], mem_repo: Repository
) -> None:
    server = redis_server_factory()
    with server.client() as c:
        # Uncompressed, so the RDB is ~100 MB: far more than the kernel's socket buffers
        # hold once the server is killed 4 MiB in (compressed it is only ~4.4 MB, and the
        # whole rest could already sit in the buffers, so nothing would be cut).
        c.call("CONFIG", "SET", "rdbcompression", "no")
        c.call("DEBUG", "POPULATE", 100000, "bulk", 1000)
    content = source_for(server).content()
    assert isinstance(content, StreamContent)
    streams = [killing_after(s, 4 << 20, server.kill) for s in content.streams]
    with pytest.raises(SourceError, match=r"cut short|closed the link"):
        run_backup(mem_repo, BackupOptions(streams=streams, source_kind="redis", source_name="r"))
    assert mem_repo.list_snapshots() == []
