"""The trash record object (docs/format.md, "Trash records"): its fields and their parsing.

Kept apart from :mod:`safehold.repository.trash` (writing records, the writers' view of the
index) so that :class:`~safehold.repository.repository.Repository` can read records when it
loads the index without importing what imports it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime

from safehold.errors import IntegrityError
from safehold.ids import PackId

__all__ = ["TrashRecord", "parse_trash"]


@dataclass
class TrashRecord:
    """Packs prune found garbage, from ``created`` on, with the index files that keep them
    indexed until the sweep deletes them (docs/format.md, section 16)."""

    name: str
    created: datetime
    packs: list[PackId]
    index: list[str] = field(default_factory=list)  # index files that list exactly ``packs``


def parse_trash(name: str, payload: bytes) -> TrashRecord:
    """A record from its opened payload; a malformed one raises :class:`IntegrityError`."""
    try:
        doc = json.loads(payload)
        created = datetime.fromisoformat(doc["created"])
        packs = [PackId(bytes.fromhex(h)) for h in doc["packs"]]
        index = [str(n) for n in doc.get("index", [])]
        if created.tzinfo is None or any(len(p) != 32 for p in packs):
            raise ValueError("bad time zone or pack id")
        if any(not n.startswith("index/") or "/" in n[6:] for n in index):
            raise ValueError("bad index file name")
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise IntegrityError(f"{name} is not a valid trash record ({exc})") from exc
    return TrashRecord(name, created, packs, index)
