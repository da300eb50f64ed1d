"""GCS errors: every google-cloud-storage, google-auth and requests failure as a safehold
storage error, translated once.

:func:`translate` is the one place that reads the SDK's exceptions; :data:`SDK_ERRORS` are
the roots the backend catches around every SDK call (anything else is a bug and
propagates).
"""

from __future__ import annotations

from dataclasses import dataclass

import google.auth.exceptions
import requests
import urllib3.exceptions
from google.api_core import exceptions as api_exceptions
from google.cloud.storage import exceptions as gcs_exceptions  # type: ignore[import-untyped]

from safehold.errors import (
    ObjectNotFound,
    StorageError,
    StoragePermissionDenied,
    TransientStorageError,
)
from safehold.storage.transient import status_error

__all__ = ["SDK_ERRORS", "Context", "translate"]

#: What the SDK and its transport raise: requests wraps most urllib3 errors, not all (one
#: met while a body streams can come through as it is).
SDK_ERRORS: tuple[type[BaseException], ...] = (
    api_exceptions.GoogleAPIError,
    google.auth.exceptions.GoogleAuthError,
    gcs_exceptions.InvalidResponse,
    gcs_exceptions.DataCorruption,
    gcs_exceptions.InvalidPathError,
    requests.RequestException,
    urllib3.exceptions.HTTPError,
    urllib3.exceptions.ProxySchemeUnsupported,
    OSError,
)


@dataclass(frozen=True)
class Context:
    """What a message names: the location, the endpoint, the bucket, the timeouts that may
    have struck, where the credentials came from."""

    where: str
    endpoint: str
    bucket: str
    connect_timeout: float = 10.0
    read_timeout: float = 60.0
    credential_source: str = "the configured credentials"


def _no_answer(exc: BaseException, ctx: Context) -> str:
    """What went wrong when no HTTP answer came, naming the timeout that struck."""
    endpoint = ctx.endpoint
    connect, read = ctx.connect_timeout, ctx.read_timeout
    if isinstance(exc, requests.ConnectTimeout):
        return f"{endpoint} did not accept a connection in time (connect_timeout={connect:g} s)"
    if isinstance(exc, requests.Timeout):
        return f"{endpoint} did not answer in time (read_timeout={read:g} s)"
    if isinstance(exc, requests.ConnectionError) and _refused(exc):
        return f"cannot connect to {endpoint}"
    return f"the connection to {endpoint} broke ({type(exc).__name__})"


def translate(exc: BaseException, ctx: Context, action: str, *, missing: str = "") -> StorageError:
    """``exc`` (one of :data:`SDK_ERRORS`) as a safehold storage error; ``missing`` says
    what a 404 means: ``"object"`` (no such object) or else the bucket."""
    where = ctx.where
    if isinstance(exc, google.auth.exceptions.RefreshError):
        if getattr(exc, "retryable", False):
            return TransientStorageError(
                f"{where}: could not {action}: the token service did not answer; may be temporary"
            )
        return StoragePermissionDenied(
            f"{where}: authentication failed: could not {action} (the access token was refused)",
            hint=f"check the service-account key from {ctx.credential_source}: it may "
            "have been deleted or disabled",
        )
    if isinstance(
        exc,
        requests.RequestException
        | google.auth.exceptions.TransportError
        | urllib3.exceptions.HTTPError
        | OSError,
    ):
        return TransientStorageError(
            f"{where}: could not {action}: {_no_answer(exc, ctx)}; may be temporary"
        )
    if isinstance(exc, gcs_exceptions.DataCorruption):
        return TransientStorageError(
            f"{where}: could not {action}: the download failed its checksum; may be temporary"
        )
    status = _status(exc)
    if status is None:
        # An SDK error without an HTTP answer that none of the above covers (a RetryError,
        # a response the client could not use): retrying would meet the same.
        return StorageError(f"{where}: could not {action} ({type(exc).__name__})")
    detail = f"HTTP {status}"
    if status == 404:
        if missing == "object":
            return ObjectNotFound(f"{where}: cannot {action}: no such object (or bucket)")
        return StorageError(
            f"{where}: could not {action}: the bucket {ctx.bucket!r} does not exist",
            hint="run `safehold init` to create it, or check the bucket name",
        )
    if status == 401:
        return StoragePermissionDenied(
            f"{where}: authentication failed: could not {action} ({detail})",
            hint=f"check the credentials from {ctx.credential_source}",
        )
    if status == 403:
        return StoragePermissionDenied(
            f"{where}: permission denied: could not {action} ({detail})",
            hint=f"give the account from {ctx.credential_source} a role that allows it "
            "(Storage Object Admin on the bucket)",
        )
    return status_error(where, action, status, detail)


def _refused(exc: BaseException) -> bool:
    """Whether a connection could not be opened at all (as opposed to one that broke)."""
    seen: BaseException | None = exc
    for _ in range(8):  # requests wraps urllib3, which wraps the socket error
        if seen is None:
            return False
        if isinstance(seen, ConnectionRefusedError) or type(seen).__name__ == "NewConnectionError":
            return True
        nested = seen.args[0] if seen.args and isinstance(seen.args[0], BaseException) else None
        seen = nested or getattr(seen, "reason", None) or seen.__cause__ or seen.__context__
    return False


def _status(exc: BaseException) -> int | None:
    if isinstance(exc, api_exceptions.GoogleAPICallError):
        return int(exc.code) if exc.code is not None else None
    if isinstance(exc, gcs_exceptions.InvalidResponse):
        response = getattr(exc, "response", None)
        code = getattr(response, "status_code", None)
        return int(code) if isinstance(code, int) else None
    return None
