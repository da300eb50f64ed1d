"""Identifiers: 32-byte ids shown as lowercase hex, and random ids for new objects."""

from __future__ import annotations

import secrets

ID_LEN = 32


def to_hex(raw: bytes) -> str:
    return raw.hex()


def from_hex(text: str) -> bytes:
    raw = bytes.fromhex(text)
    if len(raw) != ID_LEN:
        raise ValueError(f"an id is {ID_LEN} bytes ({2 * ID_LEN} hex digits), got {len(raw)}")
    return raw


def random_id() -> bytes:
    return secrets.token_bytes(ID_LEN)


def short(hex_id: str) -> str:
    """The 8-digit prefix people type and see in listings."""
    return hex_id[:8]
