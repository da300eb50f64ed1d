"""The ``Storage`` Protocol over pooled SFTP sessions (see the package docstring).

Every call borrows a session and runs one function on it (:meth:`SftpStorage._call`); the
function may raise :class:`StatusError` (the server said no: translated here, the session
goes back to the pool) or fail below SFTP (the session is dropped, the error is transient).
"""

from __future__ import annotations

import errno
import os
import posixpath
import socket
import stat as stat_mode
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime
from typing import TypeVar

import paramiko
from paramiko.sftp import (
    SFTP_CONNECTION_LOST,
    SFTP_FAILURE,
    SFTP_FLAG_CREATE,
    SFTP_FLAG_EXCL,
    SFTP_FLAG_READ,
    SFTP_FLAG_WRITE,
    SFTP_NO_CONNECTION,
    SFTP_NO_SUCH_FILE,
    SFTP_OP_UNSUPPORTED,
    SFTP_PERMISSION_DENIED,
    SFTPError,
)

from safehold.errors import (
    ObjectExists,
    ObjectNotFound,
    SafeholdError,
    StorageError,
    StorageFull,
    StoragePermissionDenied,
    TransientStorageError,
)
from safehold.model import ObjectInfo
from safehold.storage.base import check_name, clock_reading
from safehold.storage.common import check_range, short_read
from safehold.storage.sftp.keys import HostKeyTrust, default_keys, load_private_key
from safehold.storage.sftp.options import ENV_PREFIX, SftpOptions, SftpTarget, parse_location
from safehold.storage.sftp.session import Pool, Session, StatusError

__all__ = ["TEMP_PREFIX", "SftpStorage", "from_location"]

T = TypeVar("T")
TEMP_PREFIX = ".tmp-"


# Failures below the SFTP layer: sockets, SSH, a garbled SFTP stream.
_BROKEN = (OSError, EOFError, paramiko.SSHException, SFTPError)


class SftpStorage:
    """Objects as files below a folder of an SFTP server; see the package docstring."""

    def __init__(self, target: SftpTarget, opts: SftpOptions, *, create: bool = False) -> None:
        self._target = target
        self._opts = opts
        self._where = target.describe()
        self._root = target.path
        self._create = create
        self._key = load_private_key(opts)
        self._trust = HostKeyTrust(target, opts, self._where)
        self._pool = Pool(self._connect, opts.max_connections)

    def __repr__(self) -> str:
        return f"SftpStorage({self._where!r})"

    def describe(self) -> str:
        return self._where

    def close(self) -> None:
        self._pool.close()

    # --- connecting ---------------------------------------------------------------------------

    def _connect(self) -> Session:
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
        except _BROKEN as exc:
            transport.close()
            raise TransientStorageError(
                f"{self._where}: could not {step} to {server} "
                f"({_reason(exc, opts.connect_timeout, 'connect_timeout')}); may be temporary"
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

    # --- calls -----------------------------------------------------------------------------------

    def _call(
        self, action: str, fn: Callable[[Session], T], *, missing_is_not_found: bool = True
    ) -> T:
        session = self._pool.acquire()
        healthy = False
        try:
            result = fn(session)
            healthy = True
            return result
        except StatusError as exc:
            healthy = True
            raise self._status_error(exc, action, missing_is_not_found) from exc
        except SafeholdError:
            healthy = True
            raise
        except _BROKEN as exc:
            raise TransientStorageError(
                f"{self._where}: the connection failed while trying to {action} "
                f"({_reason(exc, self._opts.timeout)}); may be temporary"
            ) from exc
        finally:
            self._pool.release(session, healthy=healthy)

    def _status_error(
        self, exc: StatusError, action: str, missing_is_not_found: bool
    ) -> StorageError:
        where, detail = self._where, exc.text or f"status {exc.code}"
        if exc.code == SFTP_NO_SUCH_FILE and missing_is_not_found:
            return ObjectNotFound(f"{where}: cannot {action}: no such object")
        if exc.code == SFTP_PERMISSION_DENIED:
            return StoragePermissionDenied(
                f"{where}: permission denied: could not {action} ({detail})",
                hint=f"check the owner and mode of the folder on the server and that "
                f"{self._target.user!r} may write there",
            )
        if exc.code in (SFTP_NO_CONNECTION, SFTP_CONNECTION_LOST):
            return TransientStorageError(
                f"{where}: could not {action} ({detail}); may be temporary"
            )
        if exc.code == SFTP_FAILURE and any(w in detail.lower() for w in ("space", "quota")):
            return StorageFull(f"{where} is full: could not {action} ({detail})")
        if exc.code == SFTP_OP_UNSUPPORTED:
            return StorageError(f"{where}: the server does not support what {action} needs")
        return StorageError(
            f"{where}: could not {action}: the server answered {detail!r}",
            hint="SFTP does not say why; common causes are a full disk or quota, or a "
            "file where a folder should be: check the server"
            if exc.code == SFTP_FAILURE
            else None,
        )

    def _path(self, name: str) -> str:
        return f"{self._root}/{check_name(name)}"

    # --- put --------------------------------------------------------------------------------------

    def put(self, name: str, data: bytes | memoryview, *, exclusive: bool = False) -> None:
        final = self._path(name)
        folder, base = posixpath.split(final)
        if base.startswith(TEMP_PREFIX):
            raise ValueError(f"invalid object name {name!r}: {TEMP_PREFIX!r} names are reserved")
        view = memoryview(data).cast("B")

        def put(s: Session) -> None:
            tmp = f"{folder}/{TEMP_PREFIX}{uuid.uuid4().hex}"
            flags = SFTP_FLAG_WRITE | SFTP_FLAG_CREATE | SFTP_FLAG_EXCL
            try:
                handle = s.open_handle(tmp, flags)
            except StatusError as exc:
                if exc.code != SFTP_NO_SUCH_FILE:
                    raise
                self._make_folders(s, folder)
                handle = s.open_handle(tmp, flags)
            try:
                try:
                    s.write_all(handle, view)
                except StatusError:
                    s.close_handle(handle)  # after a broken connection, this would hang too
                    raise
                s.fsync_and_close(handle)
                if exclusive:
                    try:
                        s.rename(tmp, final)  # SFTP RENAME refuses an existing target
                    except StatusError:
                        if self._is(s, final, stat_mode.S_ISREG):
                            raise ObjectExists(
                                f"{self._where}: object {name!r} already exists"
                            ) from None
                        raise
                else:
                    s.replace(tmp, final)
            except (StatusError, SafeholdError):
                # The session still works: do not leave the temporary file behind. (After a
                # broken connection it stays: hidden from list, and tiny next to a pack.)
                try:
                    s.remove(tmp)
                except StatusError:
                    pass
                raise

        self._call(f"write {name!r}", put, missing_is_not_found=False)

    def _is(self, s: Session, path: str, kind: Callable[[int], bool]) -> bool:
        try:
            mode = s.stat(path).st_mode
        except StatusError as exc:
            if exc.code == SFTP_NO_SUCH_FILE:
                return False
            raise
        return mode is not None and kind(mode)

    def _make_folders(self, s: Session, folder: str) -> None:
        """Create ``folder`` and its missing parents; the root only if ``create`` was given
        (otherwise a mistyped location would silently start a new repository)."""
        missing: list[str] = []
        path = folder
        while True:
            if path == self._root and not self._create:
                if not self._is(s, path, stat_mode.S_ISDIR):
                    raise StorageError(
                        f"{self._where}: the folder does not exist",
                        hint="check the path, or create the repository there first",
                    )
                break
            try:
                s.mkdir(path)
                break
            except StatusError as exc:
                parent = posixpath.dirname(path)
                if exc.code == SFTP_NO_SUCH_FILE and parent not in ("", "/", path):
                    missing.append(path)
                    path = parent
                    continue
                if not self._is(s, path, stat_mode.S_ISDIR):
                    raise
                break  # it exists: made by a concurrent put, or the parent we stopped at
        for path in reversed(missing):
            try:
                s.mkdir(path)
            except StatusError:
                if not self._is(s, path, stat_mode.S_ISDIR):
                    raise

    # --- get / stat / delete ----------------------------------------------------------------------

    def get(self, name: str, offset: int = 0, length: int | None = None) -> bytes:
        path = self._path(name)
        check_range(offset, length)

        def get(s: Session) -> bytes:
            handle = s.open_handle(path, SFTP_FLAG_READ)
            try:
                attrs = s.fstat(handle)
                if attrs.st_mode is None or not stat_mode.S_ISREG(attrs.st_mode):
                    raise ObjectNotFound(f"{self._where}: cannot read {name!r}: no such object")
                size = attrs.st_size or 0
                end = size if length is None else offset + length
                if end > size or offset > size:
                    raise short_read(self._where, name, size, offset, length)
                data = s.read_exactly(handle, offset, end - offset) if end > offset else b""
                if data is None:  # it shrank under us
                    raise short_read(self._where, name, size, offset, length)
            except (StatusError, SafeholdError):
                s.close_handle(handle)
                raise
            s.close_handle(handle)
            return data

        return self._call(f"read {name!r}", get)

    def stat(self, name: str) -> ObjectInfo:
        path = self._path(name)

        def stat(s: Session) -> ObjectInfo:
            attrs = s.stat(path)
            if attrs.st_mode is None or not stat_mode.S_ISREG(attrs.st_mode):
                raise ObjectNotFound(f"{self._where}: cannot stat {name!r}: no such object")
            return ObjectInfo(name, attrs.st_size or 0)

        return self._call(f"stat {name!r}", stat)

    def delete(self, name: str) -> None:
        path = self._path(name)

        def delete(s: Session) -> None:
            try:
                s.remove(path)
            except StatusError as exc:
                # Removing a folder fails with a generic failure: it is not an object.
                if exc.code != SFTP_NO_SUCH_FILE and not self._is(s, path, stat_mode.S_ISREG):
                    raise ObjectNotFound(
                        f"{self._where}: cannot delete {name!r}: no such object"
                    ) from None
                raise

        self._call(f"delete {name!r}", delete)

    # --- clock ---------------------------------------------------------------------------------

    def server_time(self) -> datetime | None:
        """The server's clock (storage.base.ServerClock): the modification time the server
        gives a temporary file created now in the root (SFTP version 3 carries whole
        seconds), which is removed again. None if no file can be created there."""
        tmp = f"{self._root}/{TEMP_PREFIX}{uuid.uuid4().hex}"

        def stamp(s: Session) -> int | None:
            handle = s.open_handle(tmp, SFTP_FLAG_WRITE | SFTP_FLAG_CREATE | SFTP_FLAG_EXCL)
            try:
                mtime = s.fstat(handle).st_mtime
            finally:
                s.close_handle(handle)
                s.remove(tmp)
            return int(mtime) if mtime is not None else None

        started = time.monotonic()
        try:
            seconds = self._call("read the server's clock", stamp, missing_is_not_found=False)
        except SafeholdError:
            return None
        ended = time.monotonic()
        if seconds is None:
            return None
        found = datetime.fromtimestamp(seconds, UTC)
        return clock_reading(found, started, ended, resolution=1.0)

    # --- list ----------------------------------------------------------------------------------

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        folder = prefix.rpartition("/")[0]
        if folder:
            try:
                check_name(folder)
            except ValueError:
                return iter(())  # no valid name starts with this prefix

        def walk(s: Session) -> list[ObjectInfo]:
            found: list[ObjectInfo] = []
            start = f"{self._root}/{folder}" if folder else self._root
            stack = [(start, f"{folder}/" if folder else "")]
            while stack:
                path, rel = stack.pop()
                try:
                    entries = s.listdir_attr(path)
                except StatusError as exc:
                    if exc.code == SFTP_NO_SUCH_FILE:
                        continue  # no such folder (yet): nothing to list
                    raise
                for entry in entries:
                    entry_name, mode = f"{rel}{entry.filename}", entry.st_mode or 0
                    if stat_mode.S_ISDIR(mode):
                        if entry_name.startswith(prefix) or prefix.startswith(f"{entry_name}/"):
                            stack.append((f"{path}/{entry.filename}", f"{entry_name}/"))
                    elif (
                        stat_mode.S_ISREG(mode)
                        and not entry.filename.startswith(TEMP_PREFIX)
                        and entry_name.startswith(prefix)
                    ):
                        found.append(ObjectInfo(entry_name, entry.st_size or 0))
            return found

        # Materialised while the session is held: a caller may interleave other calls.
        return iter(self._call(f"list {prefix or '/'}", walk))


def _raise_if_timeout(exc: paramiko.AuthenticationException) -> None:
    # paramiko reports a server that stops answering during the login as an auth failure.
    if "timeout" in str(exc).lower():
        raise TimeoutError("no answer during the login") from exc


def _reason(exc: BaseException, timeout: float, option: str = "timeout") -> str:
    # paramiko reports a server that never says hello as a banner error.
    if isinstance(exc, TimeoutError) or "protocol banner" in str(exc):
        return f"no answer within {timeout:g} s (the {option} option)"
    if isinstance(exc, OSError) and exc.errno in (errno.ECONNRESET, errno.EPIPE):
        return "the connection was reset"
    text = str(exc).strip()
    return f"{exc.__class__.__name__}: {text}" if text else exc.__class__.__name__


def from_location(
    rest: str, *, create: bool, options: Mapping[str, object] | None = None
) -> SftpStorage:
    """Open ``sftp:REST``; options come from ``options``, then ``SAFEHOLD_SFTP_*``."""
    return SftpStorage(parse_location(rest), SftpOptions.parse(options, os.environ), create=create)
