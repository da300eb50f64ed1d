"""Repair: make the index describe what is stored again, losing nothing that still opens.

``safehold repair index`` (:mod:`.rebuild`, whose docstring gives the guarantee and the
steps of a run) and what it reports, pack by pack and blob by blob (:mod:`.report`).
Beside :mod:`safehold.repository.check`, which only reads, and
:mod:`safehold.repository.prune`, which frees space, this is the one maintenance command
that rewrites the index from the packs themselves.
"""

from __future__ import annotations

from safehold.repository.repair.rebuild import RepairOptions, repair_index
from safehold.repository.repair.report import (
    BLOBS_DAMAGED,
    HEADER_DAMAGED,
    MISMATCH,
    MISSING,
    UNREADABLE,
    PackFinding,
    RepairReport,
)

__all__ = [
    "BLOBS_DAMAGED",
    "HEADER_DAMAGED",
    "MISMATCH",
    "MISSING",
    "UNREADABLE",
    "PackFinding",
    "RepairOptions",
    "RepairReport",
    "repair_index",
]
