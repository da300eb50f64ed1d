"""The API's page sizes, and its cursors (:mod:`safehold.service.cursor`)."""

from __future__ import annotations

from safehold.service.cursor import CURSOR_PATTERN, decode_cursor, encode_cursor, foreign_cursor

__all__ = [
    "CURSOR_PATTERN",
    "DEFAULT_LIMIT",
    "MAX_LIMIT",
    "decode_cursor",
    "encode_cursor",
    "foreign_cursor",
]

DEFAULT_LIMIT = 50
MAX_LIMIT = 500
