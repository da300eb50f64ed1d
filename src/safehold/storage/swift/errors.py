"""Swift errors: every swiftclient, requests and socket failure as a safehold storage
error, translated once; the token and keys never appear in messages.

:func:`translate` is the one place that reads them; :data:`SDK_ERRORS` are the roots the
backend catches around every request.
"""

from __future__ import annotations

import http.client
import re
from dataclasses import dataclass

import requests
import urllib3
from swiftclient import client as swift  # type: ignore[import-untyped]

from safehold.errors import (
    ObjectExists,
    ObjectNotFound,
    StorageError,
    StorageFull,
    StoragePermissionDenied,
    TransientStorageError,
)
from safehold.storage.location import redact
from safehold.storage.swift.settings import SwiftOptions
from safehold.storage.transient import transient_status

__all__ = [
    "NETWORK_ERRORS", "SDK_ERRORS", "AuthFailed", "Context", "CredentialsRefused",
    "auth_error", "translate",
]  # fmt: skip

#: Failures below HTTP: no answer, or a broken one (and a proxy of a scheme urllib3
#: cannot use, a ValueError).
NETWORK_ERRORS: tuple[type[BaseException], ...] = (
    requests.exceptions.RequestException,
    urllib3.exceptions.HTTPError,
    urllib3.exceptions.ProxySchemeUnsupported,
    http.client.HTTPException,
    OSError,
)
#: What a request through swiftclient raises.
SDK_ERRORS: tuple[type[BaseException], ...] = (swift.ClientException, *NETWORK_ERRORS)
# Swift's own answers worth another try, beyond the shared ones: 422 (the body did not match
# its ETag on the way; sending it again may work), 498 (the ratelimit middleware) and 499
# (the proxy saw the client go away).
_SWIFT_TRANSIENT = frozenset({422, 498, 499})


class AuthFailed(Exception):
    """Credentials were refused (401 from the auth service or a storage call)."""


class CredentialsRefused(StoragePermissionDenied):
    """The auth service or the cluster refused the credentials (not a missing right)."""


@dataclass(frozen=True)
class Context:
    """What a message names: the location and where the credentials came from."""

    where: str
    opts: SwiftOptions


def auth_error(ctx: Context) -> CredentialsRefused:
    """The credentials (or the pre-authenticated token) were refused."""
    opts = ctx.opts
    if opts.storage_url is not None:  # a given token cannot be renewed
        what = "the token (auth_token) was refused or has expired"
        fix = f"get a new token, or give auth_url and credentials instead ({opts.source})"
    else:
        what = f"authentication at {redact(opts.auth_url or '')} failed"
        names = "user and key" if opts.auth_version == "1" else "username and password"
        fix = f"check the {names} ({opts.source})"
    return CredentialsRefused(f"{ctx.where}: {what}", hint=fix)


def translate(exc: BaseException, ctx: Context, action: str) -> StorageError:
    """``exc`` (one of :data:`SDK_ERRORS`) raised while trying to ``action``, as a
    safehold storage error."""
    if isinstance(exc, urllib3.exceptions.ProxySchemeUnsupported):
        return StorageError(f"{ctx.where}: could not {action} ({_safe(exc)})")
    if not isinstance(exc, swift.ClientException):
        # No answer, or a broken one: the connection failed.
        return TransientStorageError(
            f"{ctx.where}: could not {action} ({type(exc).__name__}: "
            f"{_safe(exc)}); may be temporary"
        )
    status = exc.http_status
    reason = f"{status} {exc.http_reason}".strip() if status else _safe(exc)
    message = f"{ctx.where}: could not {action} ({reason})"
    if status == 401:
        return auth_error(ctx)
    if status == 403:
        return StoragePermissionDenied(
            message + ": permission denied",
            hint="the account may not do this; ask its admin for the role or a container ACL",
        )
    if status == 404:
        return ObjectNotFound(message)
    if status == 412:
        return ObjectExists(f"{ctx.where}: could not {action}: it already exists")
    if status == 413:
        return StorageFull(
            message + ": the object is too large, or the account is over its quota",
            hint="raise the quota, or set segment_size below the server's max_file_size",
        )
    if status == 507:
        return StorageFull(message, hint="the Swift cluster is out of space")
    if status is None or transient_status(status) or status in _SWIFT_TRANSIENT:
        return TransientStorageError(message + "; may be temporary")
    return StorageError(message)


def _safe(exc: BaseException) -> str:
    """An exception's text without URLs' query strings (where tokens could hide)."""
    return re.sub(r"\?\S*", "?…", str(exc))[:300]
