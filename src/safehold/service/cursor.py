"""Opaque cursors for keyset pagination on ``(time, id)``, newest first: the one
encoding of every listing that pages (runs, slots, restore points), in the API and the CLI.

A cursor is the last item's sort key, base64url of its JSON: opaque to clients (they pass
it back as given), stable under inserts (a new run lands before the first page, never
twice on a later one), and one index range scan per page however deep, where an OFFSET
would read every row before it.
"""

from __future__ import annotations

import base64
import binascii
import json
from datetime import datetime

from safehold.errors import UsageError

__all__ = ["CURSOR_PATTERN", "decode_cursor", "encode_cursor", "foreign_cursor"]

CURSOR_PATTERN = r"^[A-Za-z0-9_-]+$"  # base64url without padding


def encode_cursor(at: datetime, key: str) -> str:
    """The cursor after the item sorted at ``(at, key)``."""
    raw = json.dumps([at.isoformat(), key], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    """The sort key a cursor stands for; a cursor this API did not give is a 400."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        at, key = json.loads(raw)
        when = datetime.fromisoformat(at)
        if when.tzinfo is None or not isinstance(key, str):
            raise ValueError
        return when, key
    except (ValueError, TypeError, binascii.Error, UnicodeDecodeError):
        raise foreign_cursor() from None


def foreign_cursor() -> UsageError:
    """The error for a cursor this API did not give."""
    return UsageError(
        "the cursor is not one this API gave",
        hint="pass next_cursor from the previous page as it is, or start without cursor",
    )
