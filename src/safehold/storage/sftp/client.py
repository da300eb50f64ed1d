"""The client side of an SFTP location: one SFTP session per SSH connection, the pool that
lends sessions to threads, and the :class:`Connector` that makes them.

paramiko's ``SFTPClient`` reads replies on the calling thread, and a thread waiting for its
own reply consumes (and drops) replies meant for others, so a session is never shared: the
:class:`Pool` lends each one to a single thread at a time. :class:`Session` also keeps the
server's extension list and raises :class:`StatusError` for SFTP status replies, so callers
can tell "the server said no" (the session is fine) from a broken connection.
"""

from __future__ import annotations

import socket
import threading
from collections import deque
from collections.abc import Callable
from typing import Protocol, cast

import paramiko
from paramiko.message import Message
from paramiko.sftp import (
    CMD_CLOSE,
    CMD_DATA,
    CMD_EXTENDED,
    CMD_FSTAT,
    CMD_HANDLE,
    CMD_INIT,
    CMD_OPEN,
    CMD_READ,
    CMD_STATUS,
    CMD_VERSION,
    CMD_WRITE,
    SFTP_EOF,
    SFTP_NO_SUCH_FILE,
    SFTP_OK,
    SFTPError,
    int64,
)

from safehold.errors import (
    SafeholdError,
    StorageError,
    StoragePermissionDenied,
    TransientStorageError,
)
from safehold.storage.sftp.errors import BROKEN, StatusEOF, StatusError, reason
from safehold.storage.sftp.keys import HostKeyTrust, default_keys, load_private_key
from safehold.storage.sftp.settings import ENV_PREFIX, SftpOptions, SftpTarget

__all__ = ["Connector", "Pool", "Session", "StatusEOF", "StatusError"]

# SFTP v3 servers must accept requests of 32 KiB; more may be cut short or refused.
_CHUNK = 32 * 1024
# Requests in flight per transfer: 64 x 32 KiB fills paramiko's 2 MiB channel window.
_IN_FLIGHT = 64


# --- one SFTP session ----------------------------------------------------------------------------


class _Internals(Protocol):
    """The parts of paramiko's SFTP client its stubs leave out (stable since paramiko 1.x)."""

    def _send_packet(self, t: int, packet: Message) -> None: ...
    def _read_packet(self) -> tuple[int, bytes]: ...
    def _async_request(self, fileobj: object, t: int, *args: object) -> int: ...
    def _read_response(self, waitfor: int | None = None) -> tuple[int | None, Message]: ...
    def _request(self, t: int, *args: object) -> tuple[int, Message]: ...


class _Replies:
    """Collects replies to pipelined requests: paramiko calls ``_async_response`` for each."""

    def __init__(self) -> None:
        self.got: dict[int, tuple[int, Message]] = {}

    def _async_response(self, t: int, msg: Message, num: int) -> None:
        self.got[num] = (t, msg)


def _status(t: int, msg: Message) -> None:
    if t != CMD_STATUS:
        raise SFTPError(f"expected a status reply, got type {t}")
    code, text = msg.get_int(), msg.get_text()
    if code == SFTP_EOF:
        raise StatusEOF(code, text)
    if code != SFTP_OK:
        raise StatusError(code, text)


class Session(paramiko.SFTPClient):
    """One SFTP channel on its own SSH connection; used by one thread at a time."""

    def __init__(self, transport: paramiko.Transport, channel: paramiko.Channel) -> None:
        self.transport = transport
        self.extensions: dict[str, bytes] = {}
        self._raw = cast(_Internals, self)
        super().__init__(channel)

    # paramiko hooks: keep the server's extension list, and raise our own status errors
    # so that a status reply cannot be mistaken for a broken connection.
    def _send_version(self) -> int:
        init = Message()
        init.add_int(3)
        self._raw._send_packet(CMD_INIT, init)
        t, data = self._raw._read_packet()
        if t != CMD_VERSION:
            raise SFTPError("incompatible SFTP protocol")
        msg = Message(data)
        version = msg.get_int()
        try:
            while True:
                name = msg.get_text()
                if not name:
                    break
                self.extensions[name] = msg.get_binary()
        except (paramiko.SSHException, UnicodeDecodeError):
            pass  # a malformed extension list only costs us the extensions
        return version

    def _convert_status(self, msg: Message) -> None:
        _status(CMD_STATUS, msg)

    def alive(self) -> bool:
        """Whether the session's connection and channel are still open."""
        channel = self.get_channel()
        return self.transport.is_active() and channel is not None and not channel.closed

    def shut(self) -> None:
        """Close the connection (the session is not used again)."""
        self.transport.close()

    def open_handle(self, path: str, flags: int) -> bytes:
        """Open ``path`` with SFTP ``flags`` (a new file gets mode 0600); returns its handle."""
        attrs = paramiko.SFTPAttributes()
        attrs.st_mode = 0o600  # only the login user: like mkstemp in the local backend
        t, msg = self._raw._request(CMD_OPEN, path, flags, attrs)
        if t != CMD_HANDLE:
            raise SFTPError("expected a handle")
        return msg.get_binary()

    def close_handle(self, handle: bytes) -> None:
        """Close a handle, the reply checked."""
        self._raw._request(CMD_CLOSE, handle)

    def fstat(self, handle: bytes) -> paramiko.SFTPAttributes:
        """The attributes of an open handle."""
        _t, msg = self._raw._request(CMD_FSTAT, handle)
        attrs = paramiko.SFTPAttributes._from_msg(msg)  # type: ignore[attr-defined]
        return cast(paramiko.SFTPAttributes, attrs)

    def fsync_and_close(self, handle: bytes) -> None:
        """fsync (where the server offers it) and close, both in one round trip."""
        replies, nums = _Replies(), []
        if "fsync@openssh.com" in self.extensions:
            nums.append(
                self._raw._async_request(replies, CMD_EXTENDED, "fsync@openssh.com", handle)
            )
        nums.append(self._raw._async_request(replies, CMD_CLOSE, handle))
        while not replies.got.keys() >= set(nums):
            self._raw._read_response()
        for num in nums:
            _status(*replies.got[num])

    def replace(self, old: str, new: str) -> None:
        """Rename ``old`` over ``new``: atomic with the server's ``posix-rename`` extension, else
        remove then rename (a reader may miss the name for a moment)."""
        if "posix-rename@openssh.com" in self.extensions:
            self.posix_rename(old, new)
            return
        # Not atomic, and only on servers without the extension (documented): a reader may
        # find the name missing for a moment, never a partial object.
        try:
            self.remove(new)
        except StatusError as exc:
            if exc.code != SFTP_NO_SUCH_FILE:
                raise
        self.rename(old, new)

    def write_all(self, handle: bytes, data: memoryview) -> None:
        """Write ``data`` with many requests in flight; every reply is checked (paramiko's
        own pipelined writes drop the replies other requests read first)."""
        replies, pending = _Replies(), set[int]()
        offset = 0
        while offset < len(data) or pending:
            while offset < len(data) and len(pending) < _IN_FLIGHT:
                chunk = bytes(data[offset : offset + _CHUNK])
                pending.add(
                    self._raw._async_request(replies, CMD_WRITE, handle, int64(offset), chunk)
                )
                offset += len(chunk)
            self._raw._read_response()
            for num in pending & replies.got.keys():
                pending.discard(num)
                _status(*replies.got.pop(num))

    def read_exactly(self, handle: bytes, offset: int, length: int) -> bytes | None:
        """``length`` bytes at ``offset``, or None if the file ends first. Replies may be
        short (servers cap their size), so the rest of a chunk is asked for again."""
        out = bytearray(length)
        replies, pending = _Replies(), dict[int, tuple[int, int]]()
        end = offset + length
        todo = deque((pos, min(_CHUNK, end - pos)) for pos in range(offset, end, _CHUNK))
        while todo or pending:
            while todo and len(pending) < _IN_FLIGHT:
                pos, size = todo.popleft()
                num = self._raw._async_request(replies, CMD_READ, handle, int64(pos), size)
                pending[num] = (pos, size)
            self._raw._read_response()
            for num in list(pending.keys() & replies.got.keys()):
                pos, size = pending.pop(num)
                t, msg = replies.got.pop(num)
                if t != CMD_DATA:
                    try:
                        _status(t, msg)
                    except StatusEOF:
                        return None
                    raise SFTPError("expected data")
                chunk = msg.get_binary()
                if not chunk or len(chunk) > size:
                    raise SFTPError(f"the server sent {len(chunk)} bytes for a {size}-byte read")
                out[pos - offset : pos - offset + len(chunk)] = chunk
                if len(chunk) < size:
                    todo.append((pos + len(chunk), size - len(chunk)))
        return bytes(out)


# --- the pool ---------------------------------------------------------------------------------


class Pool:
    """At most ``size`` sessions; each borrowed by one thread at a time."""

    def __init__(self, connect: Callable[[], Session], size: int) -> None:
        self._connect = connect
        self._slots = threading.BoundedSemaphore(size)
        self._lock = threading.Lock()
        self._idle: list[Session] = []
        self._closed = False

    def acquire(self) -> Session:
        """Borrow a live session (an idle one, else a new connection), waiting for a free slot;
        give it back with :meth:`release`."""
        self._slots.acquire()
        try:
            with self._lock:
                while self._idle:
                    session = self._idle.pop()
                    if session.alive():
                        return session
                    session.shut()
            return self._connect()
        except BaseException:
            self._slots.release()
            raise

    def release(self, session: Session, *, healthy: bool) -> None:
        """Give ``session`` back; an unhealthy one is closed, and the idle ones with it (they most
        likely share its fate)."""
        try:
            dropped = [session]
            with self._lock:
                if healthy and not self._closed and session.alive():
                    self._idle.append(session)
                    return
                if not healthy:
                    # The idle sessions most likely share its fate (server gone, network
                    # down), and a retry must not find them dead one timeout at a time.
                    dropped += self._idle
                    self._idle = []
            for other in dropped:
                other.shut()
        finally:
            self._slots.release()

    def close(self) -> None:
        """Close the idle sessions; borrowed ones are closed when released."""
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for session in idle:
            session.shut()


# --- connecting ----------------------------------------------------------------------------------


class Connector:
    """Makes the sessions of one location (the :class:`Pool` calls it when it needs one)."""

    def __init__(self, target: SftpTarget, opts: SftpOptions, where: str) -> None:
        self._target = target
        self._opts = opts
        self._where = where
        self._key = load_private_key(opts)
        self._trust = HostKeyTrust(target, opts, where)

    def __call__(self) -> Session:
        """A new session: connected, the host key checked, logged in, SFTP started."""
        target, opts = self._target, self._opts
        server = f"{target.host}:{target.port}"
        try:
            sock = socket.create_connection((target.host, target.port), opts.connect_timeout)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except socket.gaierror as exc:
            if exc.errno == socket.EAI_AGAIN:
                raise TransientStorageError(f"{self._where}: cannot resolve {target.host}") from exc
            raise StorageError(
                f"{self._where}: unknown host {target.host!r}", hint="check the location"
            ) from exc
        except TimeoutError as exc:
            raise TransientStorageError(
                f"{self._where}: no answer from {server} within {opts.connect_timeout:g} s "
                "(connect_timeout)"
            ) from exc
        except OSError as exc:
            raise TransientStorageError(
                f"{self._where}: cannot connect to {server} ({exc.strerror or exc}); is the SSH "
                "server running?"
            ) from exc
        transport = paramiko.Transport(sock)
        transport.banner_timeout = transport.handshake_timeout = opts.connect_timeout
        transport.auth_timeout = opts.connect_timeout
        transport.set_keepalive(30)  # keeps NAT and firewall state of an idle pooled session
        step = "open an SSH connection"
        try:
            self._trust.prefer_known_types(transport)
            transport.start_client(timeout=opts.connect_timeout)
            if transport.host_key is None:  # start_client gives up quietly when time is up
                raise TimeoutError("no SSH handshake")
            self._trust.verify(transport.get_remote_server_key())
            self._authenticate(transport)
            step = "open an SFTP session"
            channel = transport.open_session(timeout=opts.connect_timeout)
            channel.settimeout(opts.timeout)
            try:
                channel.invoke_subsystem("sftp")
            except paramiko.SSHException as exc:
                raise StorageError(
                    f"{self._where}: the server refused the SFTP subsystem ({exc})",
                    hint="enable SFTP on the server (`Subsystem sftp internal-sftp` for "
                    "OpenSSH); servers that offer only legacy scp are not supported",
                ) from exc
            return Session(transport, channel)
        except SafeholdError:
            transport.close()
            raise
        except BROKEN as exc:
            transport.close()
            raise TransientStorageError(
                f"{self._where}: could not {step} to {server} "
                f"({reason(exc, opts.connect_timeout, 'connect_timeout')}); may be temporary"
            ) from exc
        except BaseException:
            transport.close()
            raise

    def _authenticate(self, transport: paramiko.Transport) -> None:
        user, opts = self._target.user, self._opts
        if self._key is not None:
            keys = [self._key]  # only the key asked for, as ssh's IdentitiesOnly
        elif opts.password is None:
            keys = default_keys(opts.key_passphrase)
        else:
            keys = []
        for key in keys:
            try:
                transport.auth_publickey(user, key)
                return
            except paramiko.BadAuthenticationType:
                break  # the server takes no keys at all
            except paramiko.AuthenticationException as exc:
                _raise_if_timeout(exc)
                continue
        if opts.password is not None:
            try:
                transport.auth_password(user, opts.password)
                return
            except paramiko.AuthenticationException as exc:
                _raise_if_timeout(exc)
        if self._key is not None:
            what = f"the key from {self._opts.sources.get('key') or self._opts.sources['key_file']}"
        elif opts.password is not None:
            what = f"the password from {self._opts.sources['password']}"
        else:
            what = "ssh-agent and ~/.ssh/id_ed25519, id_ecdsa, id_rsa (no key_file was given)"
        raise StoragePermissionDenied(
            f"{self._where}: the server refused the login as {user!r} with {what}",
            hint=f"add the public key to ~{user}/.ssh/authorized_keys on the server, or set "
            f"key_file (or {ENV_PREFIX}KEY_FILE) to a key it accepts",
        )


def _raise_if_timeout(exc: paramiko.AuthenticationException) -> None:
    # paramiko reports a server that stops answering during the login as an auth failure.
    if "timeout" in str(exc).lower():
        raise TimeoutError("no answer during the login") from exc
