"""Plain value types shared by several layers."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    """What a storage backend knows about one stored object."""

    name: str
    size: int
