"""Checking a repository: does every stored object hold what its name and the index say?

Two depths:

* **structure** (always): the config and the key files; every index file (its name is the
  BLAKE3 of its bytes); every pack an index names is stored with the recorded size (one
  listing, no stat per pack); every snapshot; every tree reachable from a snapshot; every
  blob a tree references is indexed *and* stored in a pack of the snapshot's own chain.
  That last rule is the chain invariant: a chain is self-contained, so forgetting every
  snapshot of one chain can never take data another chain needs.
* **data** (``read_data``, optionally a :class:`Subset`): download packs, compare their
  hash with their name, parse their header and compare it with the index, and open every
  blob (authenticate, decompress, re-hash against its id).

Each finding is a :class:`Problem`. An *error* means data cannot be read as things stand
(``safehold check`` exits 4); a *warning* is something the next backup or ``safehold repair
index`` tidies up; a *note* is information (a stale lock that was removed).

The order of work matters for concurrent writers, who save packs -> index -> snapshot:
snapshots are listed first, then the index is loaded, then packs are listed, so that every
listed snapshot's index and every indexed pack are already visible.

The parts live in their own modules: options (:mod:`.options`), findings and the report
(:mod:`.report`), the state a run shares (:mod:`.state`), one class per kind of check over
that state: structure (:mod:`.structure`), data (:mod:`.data`) and the snapshot walk
(:mod:`.walk`), combined in :mod:`.run`; and whether every backup is recent (:mod:`.age`).
"""

from __future__ import annotations

from safehold.repository.check.age import OVERDUE
from safehold.repository.check.options import (
    CheckOptions,
    MaxAge,
    Subset,
    parse_pack_list,
    parse_subset,
)
from safehold.repository.check.report import (
    ERROR,
    NOTE,
    WARNING,
    CheckReport,
    Problem,
    stale_lock_notes,
)
from safehold.repository.check.run import check_repository
from safehold.repository.progress import ProgressSink

__all__ = [
    "ERROR",
    "NOTE",
    "OVERDUE",
    "WARNING",
    "CheckOptions",
    "CheckReport",
    "MaxAge",
    "Problem",
    "ProgressSink",
    "Subset",
    "check_repository",
    "parse_pack_list",
    "parse_subset",
    "stale_lock_notes",
]
