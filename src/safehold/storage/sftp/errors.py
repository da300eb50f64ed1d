"""SFTP errors: status replies and failures below SFTP as safehold storage errors,
translated once.

A status reply (:class:`StatusError`) means the server said no and the session is fine;
anything in :data:`BROKEN` (sockets, SSH, a garbled SFTP stream) means the connection
failed, which is transient: the pool connects afresh on the retry.
"""

from __future__ import annotations

import errno
from dataclasses import dataclass

import paramiko
from paramiko.sftp import (
    SFTP_CONNECTION_LOST,
    SFTP_FAILURE,
    SFTP_NO_CONNECTION,
    SFTP_NO_SUCH_FILE,
    SFTP_OP_UNSUPPORTED,
    SFTP_PERMISSION_DENIED,
    SFTPError,
)

from safehold.errors import (
    ObjectNotFound,
    StorageError,
    StorageFull,
    StoragePermissionDenied,
    TransientStorageError,
)

__all__ = [
    "BROKEN", "SDK_ERRORS", "Context", "StatusEOF", "StatusError", "reason", "translate",
]  # fmt: skip


class StatusError(Exception):
    """An SFTP status reply other than OK: the session itself is still fine."""

    def __init__(self, code: int, text: str) -> None:
        super().__init__(f"SFTP status {code}: {text}")
        self.code = code
        self.text = text


class StatusEOF(StatusError, EOFError):
    """SFTP_EOF. An EOFError too, because paramiko's directory loops stop on EOFError."""


#: Failures below the SFTP layer: sockets, SSH, a garbled SFTP stream.
BROKEN: tuple[type[BaseException], ...] = (OSError, EOFError, paramiko.SSHException, SFTPError)
#: What a call through a session raises.
SDK_ERRORS: tuple[type[BaseException], ...] = (StatusError, *BROKEN)


@dataclass(frozen=True)
class Context:
    """What a message names: the location, the login, the timeout that may have struck."""

    where: str
    user: str
    timeout: float


def translate(
    exc: BaseException, ctx: Context, action: str, *, missing_is_not_found: bool = True
) -> StorageError:
    """``exc`` (one of :data:`SDK_ERRORS`) raised while trying to ``action``, as a safehold
    storage error. With ``missing_is_not_found=False`` (writes), a missing path is a plain
    :class:`StorageError`: the object was never the thing missing."""
    if isinstance(exc, StatusError):
        return _status_error(exc, ctx, action, missing_is_not_found)
    if isinstance(exc, paramiko.BadHostKeyException):
        return StorageError(
            f"{ctx.where}: the server's host key does not match the one expected",
            hint="if the server's key changed on purpose, update host_key or known_hosts",
        )
    if isinstance(exc, paramiko.AuthenticationException) and "timeout" not in str(exc).lower():
        return StoragePermissionDenied(f"{ctx.where}: the server refused the login as {ctx.user!r}")
    return TransientStorageError(
        f"{ctx.where}: the connection failed while trying to {action} "
        f"({reason(exc, ctx.timeout)}); may be temporary"
    )


def _status_error(
    exc: StatusError, ctx: Context, action: str, missing_is_not_found: bool
) -> StorageError:
    where, detail = ctx.where, exc.text or f"status {exc.code}"
    if exc.code == SFTP_NO_SUCH_FILE and missing_is_not_found:
        return ObjectNotFound(f"{where}: cannot {action}: no such object")
    if exc.code == SFTP_PERMISSION_DENIED:
        return StoragePermissionDenied(
            f"{where}: permission denied: could not {action} ({detail})",
            hint=f"check the owner and mode of the folder on the server and that "
            f"{ctx.user!r} may write there",
        )
    if exc.code in (SFTP_NO_CONNECTION, SFTP_CONNECTION_LOST):
        return TransientStorageError(f"{where}: could not {action} ({detail}); may be temporary")
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


def reason(exc: BaseException, timeout: float, option: str = "timeout") -> str:
    """Why a connection or call failed, in words for a message (the time-out named by the
    option ``option`` that set it)."""
    # paramiko reports a server that never says hello as a banner error.
    if isinstance(exc, TimeoutError) or "protocol banner" in str(exc):
        return f"no answer within {timeout:g} s (the {option} option)"
    if isinstance(exc, OSError) and exc.errno in (errno.ECONNRESET, errno.EPIPE):
        return "the connection was reset"
    text = str(exc).strip()
    return f"{exc.__class__.__name__}: {text}" if text else exc.__class__.__name__
