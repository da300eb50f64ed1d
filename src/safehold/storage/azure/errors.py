"""Azure errors: every azure-core failure as a safehold storage error, translated once.

:func:`translate` is the one place that reads the SDK's exceptions; :data:`SDK_ERRORS` are
the roots the backend catches around every SDK call. SDK error texts can quote request
URLs, whose query holds a SAS signature, so messages are built from status codes and error
codes only (:func:`_scrub` guards the rest).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from azure.core.exceptions import (
    AzureError,
    ClientAuthenticationError,
    DecodeError,
    DeserializationError,
    ResourceNotFoundError,
    SerializationError,
    ServiceRequestError,
    ServiceRequestTimeoutError,
    ServiceResponseError,
    ServiceResponseTimeoutError,
)

from safehold.errors import (
    ObjectNotFound,
    StorageError,
    StoragePermissionDenied,
    TransientStorageError,
)
from safehold.storage.transient import status_error

__all__ = ["SDK_ERRORS", "Context", "translate"]

#: What the SDK raises: its own hierarchy, and the (de)serialization errors it derives
#: from ValueError instead.
SDK_ERRORS = (AzureError, SerializationError, DeserializationError)
# Whatever follows a '?' in an SDK message may be a SAS token; an account key never
# appears in requests, only signatures made with it.
_QUERY = re.compile(r"\?[^\s'\"]*")
_SIG = re.compile(r"(sig=)[^&\s'\"]+", re.IGNORECASE)


@dataclass(frozen=True)
class Context:
    """What a message names: the location, the endpoint (never its SAS query), the
    timeouts that may have struck, where the credentials came from."""

    where: str
    endpoint: str
    container: str
    connect_timeout: float = 10.0
    read_timeout: float = 60.0
    credential_source: str = "the configured credentials"


def _no_answer(exc: AzureError, ctx: Context) -> str:
    """What went wrong when no HTTP answer came, naming the timeout that struck."""
    endpoint = ctx.endpoint
    if isinstance(exc, ServiceRequestTimeoutError):
        return (
            f"{endpoint} did not accept a connection in time "
            f"(connect_timeout={ctx.connect_timeout:g} s)"
        )
    if isinstance(exc, ServiceResponseTimeoutError):
        return f"{endpoint} did not answer in time (read_timeout={ctx.read_timeout:g} s)"
    if isinstance(exc, ServiceRequestError):
        return f"cannot connect to {endpoint} ({_scrub(exc)})"
    return f"the connection to {endpoint} broke ({_scrub(exc)})"


def translate(exc: BaseException, ctx: Context, action: str, *, missing: str = "") -> StorageError:
    """One SDK exception as a safehold storage error (see the module docstring)."""
    where = ctx.where
    if isinstance(exc, SerializationError):
        # The request could not be built: another try builds the same.
        return StorageError(f"{where}: could not {action} ({type(exc).__name__})")
    if isinstance(exc, ServiceRequestError | ServiceResponseError):
        return TransientStorageError(
            f"{where}: could not {action}: {_no_answer(exc, ctx)}; may be temporary"
        )
    if isinstance(exc, DecodeError | DeserializationError):
        # The answer was cut short or garbled in transit (IncompleteReadError...).
        return TransientStorageError(
            f"{where}: could not {action}: the answer from {ctx.endpoint} was cut "
            f"short ({type(exc).__name__}); may be temporary"
        )
    status = getattr(exc, "status_code", None)
    code = _code(exc)
    detail = f"HTTP {status}{f' {code}' if code else ''}" if status else type(exc).__name__
    if isinstance(exc, ResourceNotFoundError) or status == 404:
        if code == "ContainerNotFound" or missing == "container":
            text = f"the container {ctx.container!r} does not exist"
            if missing == "object":
                return ObjectNotFound(f"{where}: cannot {action}: {text}")
            return StorageError(
                f"{where}: could not {action}: {text}",
                hint="run `safehold init` to create it, or check the container name",
            )
        return ObjectNotFound(f"{where}: cannot {action}: no such object")
    if isinstance(exc, ClientAuthenticationError) or status in (401, 403):
        if code.startswith(("AuthorizationPermission", "AuthorizationResourceType")):
            return StoragePermissionDenied(
                f"{where}: permission denied: could not {action} ({detail})",
                hint=f"the credentials from {ctx.credential_source} may not do this; "
                "give the SAS token or the account role the missing permission",
            )
        return StoragePermissionDenied(
            f"{where}: authentication failed: could not {action} ({detail})",
            hint=f"check the account name and key (or SAS token) from "
            f"{ctx.credential_source}, and that a SAS token has not expired",
        )
    if status is None:
        # Decoding errors, broken streams: the transfer was cut, worth another try.
        return TransientStorageError(f"{where}: could not {action} ({_scrub(exc)})")
    return status_error(where, action, status, detail)


def _code(exc: BaseException) -> str:
    code = getattr(exc, "error_code", None)
    # error_code is a str enum (StorageErrorCode) or a plain string from the header.
    return str(getattr(code, "value", code) or "")


def _scrub(exc: BaseException) -> str:
    """A one-line description of ``exc`` without query strings (SAS signatures)."""
    text = str(getattr(exc, "message", None) or exc).splitlines()[0] if str(exc) else ""
    text = _SIG.sub(r"\1***", _QUERY.sub("?***", text))
    return f"{type(exc).__name__}: {text[:200]}" if text else type(exc).__name__
