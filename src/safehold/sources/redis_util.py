"""Talking to Redis without a client library: RESP2 calls, the SYNC transfer, RDB checks.

Why not ``redis-cli --rdb -``: redis-cli removes the 40-byte end marker of a diskless
transfer by truncating its output file afterwards, which a pipe cannot do, so with
``repl-diskless-sync yes`` (the default since Redis 7.0) ``--rdb -`` ends its output with
40 bytes that are not part of the RDB. We speak the same short protocol ourselves:
``REPLCONF rdb-only 1`` (the server closes the link after the RDB instead of streaming
commands), ``REPLCONF capa eof``, then ``SYNC``; the reply is either ``$<length>`` and that
many bytes, or ``$EOF:<40-byte mark>`` and bytes up to the mark. Either way we know exactly
where the RDB ends, so a transfer cut short is an error and never a complete stream.

:class:`RdbReader` checks what it passes on: the ``REDIS`` magic and version up front, and
the end-of-file opcode (0xFF, then an 8-byte CRC64 from version 5 on) at the end. The CRC
itself is not recomputed (pure Python would crawl); Redis checks it when it loads the file.
"""

from __future__ import annotations

import io
import re
import socket
from collections.abc import Iterator
from typing import BinaryIO
from urllib.parse import unquote, urlsplit

from safehold.errors import ConfigError, SourceError

__all__ = [
    "RdbReader",
    "RedisConnection",
    "RedisReplyError",
    "check_rdb_header",
    "open_rdb_reader",
    "parse_redis_url",
    "sync_pieces",
]

_PIECE = 1 << 20
EOF_MARK_SIZE = 40
RDB_MAGIC = b"REDIS"
_HEADER = re.compile(rb"REDIS(\d{4})")


def parse_redis_url(url: str) -> tuple[str, int, str | None, str | None]:
    """Host, port, user and password of ``redis://[user[:password]@]host[:port][/db]``."""
    parts = urlsplit(url)
    if parts.scheme != "redis":
        raise ConfigError(
            "a Redis URL must start with redis://", hint="e.g. redis://127.0.0.1:6379"
        )
    try:
        port = parts.port or 6379
    except ValueError as exc:
        raise ConfigError("the port in the Redis URL is not a number") from exc
    user = unquote(parts.username) if parts.username else None
    password = unquote(parts.password) if parts.password is not None else None
    return parts.hostname or "127.0.0.1", port, user, password


class RedisReplyError(Exception):
    """Redis answered a command with an error reply (``-ERR ...``)."""


class RedisConnection:
    """One RESP2 connection: ``call("SET", "k", "v")`` returns the decoded reply."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        username: str | None = None,
        password: str | None = None,
        timeout: float = 30.0,
    ) -> None:
        self.where = f"{host}:{port}"
        try:
            self.sock = socket.create_connection((host, port), timeout=timeout)
        except OSError as exc:
            raise SourceError(
                f"the Redis server at {self.where} is not reachable: {exc.strerror or exc}",
                hint="check that it is running and that host and port are right",
            ) from exc
        self.rfile = self.sock.makefile("rb")
        if password is not None:
            try:
                if username:
                    self.call("AUTH", username, password)
                else:
                    self.call("AUTH", password)
            except RedisReplyError as exc:
                self.close()
                raise SourceError(
                    f"the Redis server at {self.where} refused the login: {exc}",
                    hint="check the username and password",
                ) from exc

    def close(self) -> None:
        """Close the socket."""
        self.rfile.close()
        self.sock.close()

    def __enter__(self) -> RedisConnection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def send(self, *args: bytes | str | int) -> None:
        """Send one command; raises :class:`SourceError` if the link is gone."""
        out = bytearray(b"*%d\r\n" % len(args))
        for arg in args:
            raw = arg if isinstance(arg, bytes) else str(arg).encode()
            out += b"$%d\r\n%s\r\n" % (len(raw), raw)
        try:
            self.sock.sendall(out)
        except OSError as exc:
            raise SourceError(f"the Redis server at {self.where} closed the link: {exc}") from exc

    def call(self, *args: bytes | str | int) -> object:
        """Send one command and return its reply."""
        self.send(*args)
        return self.reply()

    def readline(self) -> bytes:
        """One line of the reply, its line end included; raises :class:`SourceError` if the link
        breaks or closes."""
        try:
            line = self.rfile.readline()
        except OSError as exc:
            raise SourceError(f"reading from Redis at {self.where} failed: {exc}") from exc
        if not line.endswith(b"\n"):
            raise SourceError(f"the Redis server at {self.where} closed the link")
        return line

    def read_exact(self, n: int) -> bytes:
        """Exactly ``n`` bytes; raises :class:`SourceError` if the server closes first."""
        data = self.rfile.read(n)
        if len(data) != n:
            raise SourceError(f"the Redis server at {self.where} closed the link mid-reply")
        return data

    def reply(self) -> object:
        """The next reply, parsed (an error reply raises :class:`RedisReplyError`)."""
        line = self.readline()
        kind, rest = line[:1], line[1:].rstrip(b"\r\n")
        if kind == b"+":
            return rest
        if kind == b"-":
            if rest.startswith((b"NOAUTH", b"WRONGPASS")):
                raise SourceError(
                    f"the Redis server at {self.where} refused: {rest.decode(errors='replace')}",
                    hint="set the source's password (and username for an ACL user)",
                )
            raise RedisReplyError(rest.decode(errors="replace"))
        if kind == b":":
            return int(rest)
        if kind == b"$":
            n = int(rest)
            if n < 0:
                return None
            return self.read_exact(n + 2)[:-2]
        if kind == b"*":
            n = int(rest)
            if n < 0:
                return None
            return [self.reply() for _ in range(n)]
        raise SourceError(f"unexpected reply from Redis at {self.where}: {line[:40]!r}")


def sync_pieces(conn: RedisConnection) -> Iterator[bytes]:
    """Ask for a full RDB over the replication protocol and yield it, exactly, in pieces."""
    try:
        conn.call("REPLCONF", "rdb-only", "1")
    except RedisReplyError:
        pass  # before Redis 7.0: the link then also carries commands after the RDB; we stop
    conn.call("REPLCONF", "capa", "eof")
    conn.send("SYNC")
    while True:
        line = conn.readline()
        if line == b"\n":  # keepalive while the server prepares the RDB
            continue
        break
    if line.startswith(b"-"):
        raise SourceError(
            f"Redis at {conn.where} refused to send its RDB: {line[1:].strip().decode()}",
            hint="the user needs the SYNC and REPLCONF commands (ACL +sync +replconf), and "
            "the server must not be a replica that is still loading",
        )
    header = line.rstrip(b"\r\n")
    if not header.startswith(b"$"):
        raise SourceError(f"unexpected answer to SYNC from Redis at {conn.where}: {line[:60]!r}")
    if header.startswith(b"$EOF:"):
        yield from _until_mark(conn, header[5:])
    else:
        yield from _counted(conn, int(header[1:]))


def _counted(conn: RedisConnection, remaining: int) -> Iterator[bytes]:
    while remaining:
        piece = conn.rfile.read(min(remaining, _PIECE))
        if not piece:
            raise SourceError(f"the RDB transfer from Redis at {conn.where} was cut short")
        remaining -= len(piece)
        yield piece


def _until_mark(conn: RedisConnection, mark: bytes) -> Iterator[bytes]:
    if len(mark) != EOF_MARK_SIZE:
        raise SourceError(f"Redis at {conn.where} sent a malformed end marker")
    held = b""  # the last bytes seen, which may be the start of the marker
    while True:
        piece = conn.rfile.read1(_PIECE)
        if not piece:
            raise SourceError(f"the RDB transfer from Redis at {conn.where} was cut short")
        data = held + piece
        at = data.find(mark)
        if at >= 0:
            if at:
                yield data[:at]
            return
        if len(data) > EOF_MARK_SIZE:
            yield data[:-EOF_MARK_SIZE]
            held = data[-EOF_MARK_SIZE:]
        else:
            held = data


def check_rdb_header(head: bytes) -> int:
    """The RDB version in the first 9 bytes; SourceError if they are not an RDB header."""
    m = _HEADER.fullmatch(head[:9])
    if m is None:
        raise SourceError(f"this is not an RDB file (it starts with {head[:9]!r})")
    return int(m.group(1))


class RdbReader(io.RawIOBase):
    """Passes an RDB through from ``pieces``, checking its header and its end.

    The end check runs when ``pieces`` is exhausted, before the final empty read returns,
    so a consumer that reads to the end has either a well-formed RDB or an exception.
    """

    def __init__(self, pieces: Iterator[bytes], what: str) -> None:
        super().__init__()
        self._pieces = pieces
        self._what = what
        self._buf = memoryview(b"")
        self._head = b""
        self._tail = b""
        self._done = False
        self.size = 0

    def readable(self) -> bool:
        """Always: the RDB is read, never written or sought."""
        return True

    def readinto(self, b: memoryview | bytearray) -> int:  # type: ignore[override]
        """Fill ``b`` with the next bytes of the RDB; 0 at its end, once the end check passed
        (:class:`SourceError` if not)."""
        while not self._buf:
            if self._done:
                return 0
            piece = next(self._pieces, None)
            if piece is None:
                self._finish()
                self._done = True
                return 0
            self._see(piece)
            self._buf = memoryview(piece)
        n = min(len(b), len(self._buf))
        b[:n] = self._buf[:n]
        self._buf = self._buf[n:]
        return n

    def _see(self, piece: bytes) -> None:
        if len(self._head) < 9:
            self._head += piece[: 9 - len(self._head)]
            if len(self._head) == 9:
                try:
                    check_rdb_header(self._head)
                except SourceError as exc:
                    raise SourceError(f"{self._what}: {exc.message}") from None
        self._tail = (self._tail + piece)[-9:]
        self.size += len(piece)

    def _finish(self) -> None:
        if len(self._head) < 9:
            raise SourceError(f"{self._what}: the RDB is only {self.size} bytes long")
        version = check_rdb_header(self._head)
        # From RDB version 5 on, the file ends with 0xFF and an 8-byte CRC64.
        end_ok = self._tail[0] == 0xFF if version >= 5 else self._tail[-1] == 0xFF
        if not end_ok:
            raise SourceError(
                f"{self._what}: the RDB does not end with its end-of-file marker (cut short?)"
            )


def open_rdb_reader(pieces: Iterator[bytes], what: str) -> BinaryIO:
    """A buffered reader over :class:`RdbReader`."""
    return io.BufferedReader(RdbReader(pieces, what), buffer_size=_PIECE)
