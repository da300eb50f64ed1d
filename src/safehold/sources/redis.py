"""Redis: the server's RDB snapshot as one stream, ``dump.rdb``.

Two ways to take it:

* ``method: sync`` (default, works from anywhere): the RDB comes over the replication
  protocol, as ``redis-cli --rdb`` takes it, but read by safehold itself (see
  :mod:`safehold.sources.redis_util` for why not through redis-cli). Redis forks and
  streams a point-in-time image; nothing touches the server's disk.
* ``method: bgsave`` (an agent on the Redis machine): ``BGSAVE``, wait until the save has
  finished and succeeded, then stream the server's own RDB file.

Both check the RDB's header and end-of-file marker as it streams, so an RDB cut short is
an error and never a complete snapshot.

Restore writes the RDB where a *stopped* server will load it (its ``dir``/``dbfilename``):
refused while a server answers at the configured address (a running Redis would ignore the
file and overwrite it at its next save) or when a file is already there, unless
``replace``. docs/sources/redis.md has the step-by-step procedure.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr

from safehold.errors import SourceError, TargetError, UsageError
from safehold.sources.base import RestoreRequest, SnapshotFiles, Stream, StreamContent
from safehold.sources.redis_util import (
    RedisConnection,
    RedisReplyError,
    open_rdb_reader,
    parse_redis_url,
    sync_pieces,
)

__all__ = ["RedisSource", "Settings", "build"]

STREAM_NAME = "dump.rdb"
_PIECE = 1 << 20


class Settings(BaseModel):
    """The ``redis`` source's configuration keys."""

    model_config = ConfigDict(extra="forbid")

    # redis://[user[:password]@]host[:port]; not "host:", which every source block
    # already has (the host name recorded in snapshots).
    url: SecretStr = SecretStr("redis://127.0.0.1:6379")
    username: str | None = None  # an ACL user; default: the URL's, else "default"
    password: SecretStr | None = None  # else the URL's, password_file, REDISCLI_AUTH
    password_file: str | None = None
    method: Literal["sync", "bgsave"] = "sync"
    rdb_path: str | None = None  # the server's RDB file (bgsave reads it, restore writes it)
    # Seconds the server may stay silent ("timeout" is the shared key: the whole run).
    io_timeout: float = Field(default=60.0, gt=0)
    bgsave_timeout: float = Field(default=3600.0, gt=0)


class RedisSource:
    """A Redis server's RDB snapshot as the stream ``dump.rdb``, taken by ``sync`` or
    ``bgsave`` (see the module docstring)."""

    kind = "redis"

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.host, self.port, url_user, self._url_password = parse_redis_url(
            settings.url.get_secret_value()
        )
        self.username = settings.username or url_user

    def _password(self) -> str | None:
        s = self.settings
        if s.password is not None:
            return s.password.get_secret_value()
        if self._url_password is not None:
            return self._url_password
        if s.password_file:
            try:
                return Path(s.password_file).read_text().strip()
            except OSError as exc:
                raise SourceError(
                    f"cannot read the Redis password file {s.password_file}: {exc.strerror}"
                ) from exc
        return os.environ.get("REDISCLI_AUTH")

    def connect(self) -> RedisConnection:
        """A new connection to the server, logged in."""
        return RedisConnection(
            self.host,
            self.port,
            username=self.username,
            password=self._password(),
            timeout=self.settings.io_timeout,
        )

    # --- backup ---------------------------------------------------------------------------

    def content(self) -> StreamContent:
        """The stream ``dump.rdb``, after a PING that fails early on a server that is down or
        refuses the login."""
        with self.connect() as conn:  # fail early if down or the password is wrong
            conn.call("PING")
        opener = self._open_sync if self.settings.method == "sync" else self._open_bgsave
        return StreamContent([Stream(STREAM_NAME, opener)])

    @contextmanager
    def _open_sync(self) -> Iterator[BinaryIO]:
        conn = self.connect()
        try:
            what = f"RDB transfer from Redis at {conn.where}"
            with open_rdb_reader(sync_pieces(conn), what) as reader:
                yield reader
        finally:
            conn.close()

    @contextmanager
    def _open_bgsave(self) -> Iterator[BinaryIO]:
        with self.connect() as conn:
            path = self._rdb_path(conn)
            self._bgsave(conn)
        try:
            f = open(path, "rb")  # noqa: SIM115 - closed below, after the consumer is done
        except OSError as exc:
            raise SourceError(
                f"cannot read Redis's RDB file {path}: {exc.strerror}",
                hint="method bgsave needs safehold on the Redis machine, with read access "
                "to the file (or set rdb_path)",
            ) from exc
        with f, open_rdb_reader(iter(lambda: f.read(_PIECE), b""), f"RDB file {path}") as reader:
            yield reader

    def _rdb_path(self, conn: RedisConnection) -> Path:
        if self.settings.rdb_path:
            return Path(self.settings.rdb_path)
        try:
            folder = conn.call("CONFIG", "GET", "dir")
            name = conn.call("CONFIG", "GET", "dbfilename")
        except Exception as exc:
            raise SourceError(
                f"cannot ask Redis at {conn.where} where its RDB file is: {exc}",
                hint="set rdb_path to the server's RDB file",
            ) from exc
        assert isinstance(folder, list) and isinstance(name, list)
        return Path(bytes(folder[1]).decode()) / bytes(name[1]).decode()

    def _bgsave(self, conn: RedisConnection) -> None:
        """Have Redis write a fresh RDB, and wait until it has, successfully."""
        deadline = time.monotonic() + self.settings.bgsave_timeout
        while True:
            before = _persistence(conn)
            if "rdb_saves" not in before:
                raise SourceError(
                    f"Redis at {conn.where} is older than 7.0 (no rdb_saves counter)",
                    hint="use method: sync with this server",
                )
            try:
                conn.call("BGSAVE")
                break
            except RedisReplyError as exc:
                # Another save (or a replication fork) runs; ours must start after it.
                if "in progress" not in str(exc):
                    raise SourceError(f"BGSAVE on Redis at {conn.where} failed: {exc}") from exc
            if time.monotonic() > deadline:
                raise SourceError(f"Redis at {conn.where} stayed busy saving; no BGSAVE ran")
            time.sleep(0.05)
        need = int(before["rdb_saves"]) + 1
        while True:
            now = _persistence(conn)
            # BGSAVE forks before it answers, so "in progress" is already 1 for ours.
            if now["rdb_bgsave_in_progress"] == "0":
                break
            if time.monotonic() > deadline:
                raise SourceError(f"BGSAVE on Redis at {conn.where} did not finish in time")
            time.sleep(0.05)
        if now.get("rdb_last_bgsave_status") != "ok" or int(now["rdb_saves"]) < need:
            raise SourceError(
                f"BGSAVE failed on Redis at {conn.where}",
                hint="see the server's log: often its dir is not writable or the disk is full",
            )

    # --- restore --------------------------------------------------------------------------

    def restore(self, files: SnapshotFiles, request: RestoreRequest) -> None:
        """Place the RDB file for a stopped server (at the target or ``rdb_path``); raises
        :class:`TargetError` if a server answers there or a file exists without ``replace``."""
        names = [n for n in files.names() if n.endswith(".rdb")]
        if len(names) != 1:
            raise UsageError(f"expected one RDB file in the snapshot, found {names}")
        target = request.target or self.settings.rdb_path
        if not target:
            raise UsageError(
                "where should the RDB go?",
                hint="give the stopped server's RDB file (its dir/dbfilename) as the target",
            )
        path = Path(target)
        if path.is_dir():
            path = path / STREAM_NAME
        host, port = self.host, self.port
        if request.options.get("check_server", True) and _answers(host, port):
            raise TargetError(
                f"a Redis server is running at {host}:{port}; refusing to place an RDB under "
                "it (it would ignore the file and overwrite it at its next save)",
                hint="stop the server, restore, then start it (docs/sources/redis.md)",
            )
        if path.exists() and not request.replace:
            raise TargetError(
                f"{path} already exists; refusing to overwrite it",
                hint="restore with replace to overwrite it, or choose another target",
            )
        _write_rdb(files, names[0], path)


def _write_rdb(files: SnapshotFiles, name: str, path: Path) -> None:
    """Write the RDB beside ``path`` and rename it into place, owned like its folder."""
    tmp = path.with_name(f".{path.name}.safehold-restore")
    try:
        with files.open(name) as src, open(tmp, "wb") as out:
            reader = open_rdb_reader(iter(lambda: src.read(_PIECE), b""), f"RDB {name}")
            while piece := reader.read(_PIECE):
                out.write(piece)
            out.flush()
            os.fsync(out.fileno())
        folder = os.stat(path.parent)
        # Redis runs as its own user (redis on Debian), which owns its dir: give it the file.
        os.chown(tmp, folder.st_uid, folder.st_gid)
        os.chmod(tmp, 0o660)
        os.replace(tmp, path)
    except OSError as exc:
        raise TargetError(f"cannot write {path}: {exc.strerror}") from exc
    finally:
        tmp.unlink(missing_ok=True)
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _persistence(conn: RedisConnection) -> dict[str, str]:
    text = conn.call("INFO", "persistence")
    assert isinstance(text, bytes)
    out: dict[str, str] = {}
    for line in text.decode().splitlines():
        key, sep, value = line.partition(":")
        if sep:
            out[key] = value.strip()
    return out


def _answers(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1.0):
            return True
    except OSError:
        return False


def build(settings: Settings) -> RedisSource:
    """The source for a validated ``redis`` block (the registry's entry point)."""
    return RedisSource(settings)
