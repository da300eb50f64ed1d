"""Prune: free the space of data no snapshot needs, while backups keep running.

Prune deletes packs in two phases, so that it never deletes data that a concurrent process
is about to reference and never makes a backup wait (docs/format.md, "Prune").

Mark
====

Under a ``prune`` lock (shared: backups, restores and checks keep running; two prunes
exclude each other), prune lists the snapshots, then loads every index file, and computes
for each chain the set of blob ids its snapshots use: every tree reached from their roots
(trees count as used) and every data blob those trees name. Deduplication only reaches
inside a chain, so a pack is judged by its own chain's usage:

* a pack is **garbage** when none of its blobs is used by a snapshot of its chain;
* a pack is **mostly garbage** when the unused share of its blob bytes exceeds
  ``max_unused`` (10 % by default); its used blobs are copied, still sealed and verified
  first, into new packs of the same chain, and the old pack becomes garbage.

A blob that a snapshot needs but that has no copy in that snapshot's chain (not something
safehold writes, but possible in a damaged or hand-made repository) counts as used in every
pack that holds it, so prune never removes the last copy of anything a snapshot names. If a
snapshot needs a blob that no pack holds, prune stops before changing anything.

Then, in this order:

1. the new packs of the repack are stored (nothing references them yet);
2. index files listing exactly the doomed packs (garbage and repacked) are written, then a
   **trash record** (``trash/<id>``, :mod:`safehold.repository.trash`) naming those packs
   and those index files; from now on writers neither deduplicate against these packs nor
   adopt them, while readers still find them through the record's index files;
3. new index files describing every live pack (all indexed packs but the doomed, plus the
   new packs) are written;
4. the index files loaded in the mark are deleted, and no others: an index file a backup
   wrote meanwhile stays, and so do trash records' own.

Let *T* be the time after step 4. The trash record is then written again, so that its
``created`` time is at least *T*, and the first copy is deleted.

Sweep
=====

A trash record may be swept once no lock other than prune's own has a ``created`` time
earlier than its **sweep-after time**, ``created + lock_skew`` (5 minutes by default, a
margin for clocks of different hosts that disagree). Stale locks (see
:func:`safehold.repository.lock.is_stale`) are ignored and removed. Sweeping a record:

* the index and all snapshots are loaded again;
* a trashed pack that some current index file lists was adopted again by a backup: it is
  kept and simply dropped from the record;
* a trashed pack that holds a blob some snapshot uses and no live pack holds (in the
  snapshot's chain) is **rescued**: an index file is written for it (from its own header)
  and it is kept;
* every other trashed pack is deleted, after the record's own index files and before the
  record. A pack or index file the storage refuses to delete because a retention period
  protects it (S3 Object Lock) stays, and so does its record: a later prune deletes it
  once the period is over.

A lock that cannot be read holds back every record (it may be a live process's, damaged).

Every prune run sweeps the records of earlier runs at its start, and the record it has just
written at its end when the condition already holds. With no other process about, one run
marks and sweeps, and the space is free at once; while a backup runs, a later prune frees
it.

On local storage, prune also removes the temporary files of interrupted writes, but only
those last written before every live lock was taken and over an hour ago
(:func:`.temp_files.remove_stale_temp_files`), so a write in progress keeps its file.

Why this is safe
================

No pack that was indexed becomes unindexed before its sweep (the doomed packs move to
the record's own index files before the old ones go), so a snapshot is complete when it
is written and stays so until a sweep deletes one of its packs. A writer takes its lock,
lists the trash, then loads the index, dropping trashed packs: a writer whose lock was
created after the record (plus the skew margin) therefore never references a trashed
blob it has not written itself. A writer whose lock was created earlier may have
deduplicated against a doomed pack; the sweep waits until its lock is gone. When it is
gone the process has finished: every snapshot it saved is stored and seen by the sweep,
which rescues any trashed pack such a snapshot needs. A backup that adopted a trashed pack
before the record existed wrote an index file for it, and a pack that an index file other
than a record's own lists is never deleted. A lock that is stale belongs to a process that
is gone or that stopped refreshing it for half an hour; like every lock-based scheme, this
one trusts that such a process no longer writes. docs/format.md, section 16, gives the
whole argument.

Crash safety: a crash before step 2 leaves new packs that no index lists (backups adopt
them) and perhaps trash index files without a record (duplicates of the old index, which
the next mark loads and replaces); between 2 and 4 both old and new index files exist; after
4 the first record (its ``created`` slightly before *T*, within the skew margin in any
realistic run) guards the packs until the next prune. A sweep writes rescue index files
before deleting anything and deletes a record's index files, then its packs, then the
record, so an interrupted sweep is finished by the next one and no index ever lists a
deleted pack.

Modules
=======

One a phase: :mod:`.mark` (with :mod:`.repack`), :mod:`.sweep`, :mod:`.rescue` (before a
forget) and :mod:`.temp_files`; :mod:`.run` puts them in order; :mod:`.usage` holds what
they share (snapshots, the live index, pack headers, the blobs each chain uses);
:mod:`.options` and :mod:`.results` what goes in and comes out.
"""

from __future__ import annotations

from safehold.repository.prune.options import DEFAULT_LOCK_SKEW, DEFAULT_MAX_UNUSED, PruneOptions
from safehold.repository.prune.rescue import rescue_for_forget
from safehold.repository.prune.results import MarkResult, PruneResult, SweepResult
from safehold.repository.prune.run import check_clock, prune
from safehold.repository.prune.sweep import sweep
from safehold.repository.prune.temp_files import TEMP_FILE_MIN_AGE, remove_stale_temp_files

__all__ = [
    "DEFAULT_LOCK_SKEW",
    "DEFAULT_MAX_UNUSED",
    "TEMP_FILE_MIN_AGE",
    "MarkResult",
    "PruneOptions",
    "PruneResult",
    "SweepResult",
    "check_clock",
    "prune",
    "remove_stale_temp_files",
    "rescue_for_forget",
    "sweep",
]
