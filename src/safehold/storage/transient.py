"""What every backend counts as worth another try, in one place.

Backends only classify their failures (STYLE.md, habit 3); :class:`RetryingStorage` retries
what they call :class:`TransientStorageError`. So that "transient" means the same thing on
every backend, the HTTP statuses and socket errors that make a failure transient are listed
here once; a backend adds only what its own service documents on top (Swift's 498/499,
S3's ``SlowDown`` codes).
"""

from __future__ import annotations

import errno

from safehold.errors import StorageError, TransientStorageError

__all__ = ["TRANSIENT_ERRNOS", "TRANSIENT_STATUS", "status_error", "transient_status"]

#: HTTP answers worth another try: a request timeout (408), throttling (429), or a failure
#: on the server's side that a later request may not meet (500, 502, 503, 504). Other 5xx
#: (501 Not Implemented, 505, 507 Insufficient Storage...) answer every retry the same way.
TRANSIENT_STATUS = frozenset({408, 429, 500, 502, 503, 504})

#: Socket errors of a connection that broke or could not be made: the next connection may
#: work (a restarted server, a network that came back). File-system errors a retry may cure
#: are the local backend's own addition.
TRANSIENT_ERRNOS = frozenset(
    getattr(errno, code)
    for code in (
        "ECONNRESET", "ECONNABORTED", "ECONNREFUSED", "ETIMEDOUT", "EPIPE", "ENETDOWN",
        "ENETUNREACH", "ENETRESET", "EHOSTDOWN", "EHOSTUNREACH",
    )
    if hasattr(errno, code)
)  # fmt: skip


def transient_status(status: int | None) -> bool:
    """Whether an HTTP answer with ``status`` is worth another try."""
    return status in TRANSIENT_STATUS


def status_error(where: str, action: str, status: int, detail: str) -> StorageError:
    """An HTTP error answer not handled more specifically: transient or final by status."""
    if transient_status(status):
        return TransientStorageError(f"{where}: could not {action} ({detail}); may be temporary")
    return StorageError(f"{where}: could not {action} ({detail})")
