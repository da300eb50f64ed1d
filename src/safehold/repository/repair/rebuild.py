"""``safehold repair index``: make the index describe what is stored, losing nothing.

The guarantee
=============

**Repair never makes unreachable a blob that was reachable.** An index entry whose blob
still opens (authenticates under its id, decompresses, hashes to its id) keeps a place in
the index: where it is, or in a new pack. Only what is wrong is rewritten, and everything
that could not be saved is reported, blob by blob (exit code 4).

Every pack carries a sealed header listing its blobs (:mod:`safehold.repository.pack`), so
the index is mostly derived data. But a header is one authenticated message: one flipped
byte makes all of it unreadable, while every blob in the pack is sealed on its own and
still opens. An index entry is therefore worth more than the header it was made from, and
repair starts from the index files, not from the headers.

What a run does
===============

1. List the index files, the trash records and the packs. Index files a trash record names
   (``TrashRecord.index``: they list exactly the record's packs until prune's sweep) and
   the packs the records name are prune's: repair neither rewrites nor deletes those files
   and does not adopt those packs (unless ``--include-trash``).
2. Load every other index file. One that fails to load (damaged, junk) is replaced; the
   packs it listed are found again below as packs no index lists.
3. Read the header of every indexed pack and of every stored pack no index lists (with
   ``--read-all-packs``: read the whole pack and open every blob its header lists).

   * Header opens and agrees with the index: nothing to do.
   * Header opens but the index says otherwise: the header is the pack's own authenticated
     description, so the pack is indexed as its header says; blobs the index placed there
     that the header does not list are verified and salvaged (below).
   * Header does not open (**damaged header**): every blob any index lists in that pack is
     read and verified; those that open are copied, still sealed, into a new pack of the
     same chain and type (*salvaged*). The damaged pack leaves the index but is **not
     deleted**: it is reported. Where the entries come from: the index files (any of them
     that lists the pack) and this machine's index cache, which is a sealed copy of the
     index as some earlier command loaded it. A pack no index lists and no cache knows,
     whose header does not open, cannot be salvaged: its blob ids are unknown (the AAD of
     a sealed blob is its id). It is reported as *unreadable*.
   * Pack missing: its entries are dropped and reported; that data is gone.
   * Pack no index lists, header opens: adopted (an index file is written for it).
   * ``--read-all-packs`` only: a pack whose header opens but some of whose blobs do not
     (**damaged blobs**) is *retired*: the blobs that open are salvaged, and the pack stays
     in the index with an empty entry list (docs/format.md section 17).

   A blob is not salvaged when an intact copy is already indexed in another pack of its
   chain (a fast run reads and opens that copy to be sure; a thorough run has already
   opened every indexed blob). That makes a second run after an interrupted one cheap and
   keeps salvage from duplicating data.
4. Store the new packs, write index files for every pack that is not described correctly
   by an index file being kept, and only then delete the old index files they replace:
   the damaged ones and those that listed something wrong.

Why salvaged blobs are re-packed, not left where they are
=========================================================

An index entry may point into a pack with a damaged header, and restore would read it.
But then the index could never again be checked against that pack's header, ``check
--read-data`` would report the pack forever, and no repair could tell a later change from
that damage. A new pack of the same chain (blobs copied sealed, byte for byte, after they
were verified) makes the repository healthy: afterwards ``check`` exits 0, with a warning
naming the damaged pack, which no index lists any more. It costs writing once what
survived of the damaged packs, which are few.

The damaged pack is left in place: repair deletes no data. It is inert (no backup adopts a
pack whose header does not open; prune leaves packs alone that no index lists). Keep it
for analysis or delete it by hand (``data/xx/<id>``) once ``check`` is clean otherwise.

Why a pack with damaged blobs is retired, not dropped
=====================================================

A pack no index lists is adopted again from its header by the next backup (and the next
repair) if that header opens, damaged blobs included: the damaged blob would be back in the
index, and every later backup would deduplicate against it instead of storing that data
again. An index record with no entries keeps the pack indexed, so nobody adopts it, while
no blob in it is used; prune then removes it as a pack with nothing in use.

Locks and crashes
=================

The caller holds an exclusive lock: no pack appears or vanishes while repair works, and no
backup writes an index file that the deletion of old ones could take away. Writes are
ordered so that a crash at any point keeps every reachable blob reachable: new packs first
(nothing references them; the next backup or repair adopts them), then new index files
(old and new side by side are harmless: the index keeps the first copy it loads, and
every salvaged copy is intact), and deletions of old index files last.
"""

from __future__ import annotations

from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from safehold.errors import IntegrityError, ObjectNotFound, ObjectRetained
from safehold.ids import BlobId, ChainId, PackId
from safehold.repository.format import T_INDEX
from safehold.repository.index import Index, PackRecord, decode_index
from safehold.repository.index_cache import CachedIndex
from safehold.repository.pack import (
    TRAILER_LEN,
    PackEntry,
    check_pack_start,
    parse_header,
    parse_trailer,
)
from safehold.repository.progress import NoProgress, ProgressSink
from safehold.repository.repair.report import (
    BLOBS_DAMAGED,
    HEADER_DAMAGED,
    MISMATCH,
    MISSING,
    UNREADABLE,
    PackFinding,
    RepairReport,
)
from safehold.repository.repository import Repository, fetch_each, pack_name
from safehold.repository.sealed_packs import SealedPackWriter
from safehold.repository.trash import list_trash

__all__ = ["INDEX_BATCH", "READ_THREADS", "RepairOptions", "RepairReport", "repair_index"]

# Packs per index file: small enough that one damaged file loses little and a reader's
# memory peak stays low, large enough that there are few files to list and load.
INDEX_BATCH = 5000
READ_THREADS = 4


@dataclass(frozen=True, kw_only=True)
class RepairOptions:
    """How ``repair index`` reads packs: headers only or every blob, whether trashed packs are
    taken in, and how many packs go into one new index file."""

    read_all_packs: bool = False
    """Read every pack whole and open every blob, not only the headers (slow)."""
    include_trash: bool = False
    """Also index packs that prune has put in the trash (and that no index lists)."""
    threads: int = READ_THREADS
    batch: int = INDEX_BATCH
    """Packs per new index file."""

    def __post_init__(self) -> None:
        if self.batch < 1:
            raise ValueError("batch must be at least 1")
        if self.threads < 1:
            raise ValueError("threads must be at least 1")


def repair_index(
    repo: Repository, opts: RepairOptions | None = None, *, progress: ProgressSink | None = None
) -> RepairReport:
    """Repair the index of ``repo`` (the caller holds an exclusive lock); see the module
    docstring. Afterwards ``repo.index`` is the index the remaining index files hold."""
    return _Repair(repo, opts or RepairOptions(), progress or NoProgress()).run()


@dataclass
class _Seen:
    """What reading a pack showed."""

    header: PackRecord | None = None  # None: missing, or its header does not open
    error: str = ""
    missing: bool = False
    bad: set[PackEntry] = field(default_factory=set)  # header entries that did not open


@dataclass
class _Job:
    """Blobs to verify and copy out of one pack."""

    pack_id: PackId
    chain_id: ChainId
    entries: list[PackEntry]
    finding: PackFinding


_Key = tuple[BlobId, ChainId]  # a blob as a chain needs it


class _Repair:
    def __init__(self, repo: Repository, opts: RepairOptions, progress: ProgressSink) -> None:
        self.repo = repo
        self.opts = opts
        self.progress = progress
        self.report = RepairReport(read_all_packs=opts.read_all_packs)
        self.listed: dict[PackId, int] = {}
        self.files: dict[str, list[PackRecord]] = {}  # index files that loaded, not prune's
        self.prune_files: dict[str, list[PackRecord]] = {}  # named by trash records, loaded
        self.prune_recs: dict[PackId, list[PackRecord]] = {}  # pack -> records in those
        self.live: dict[PackId, list[PackRecord]] = {}  # pack -> its records in self.files
        self.final: dict[PackId, PackRecord] = {}  # packs indexed afterwards, as they will be
        self.jobs: list[_Job] = []
        self.missing: list[tuple[PackFinding, ChainId, list[PackEntry]]] = []
        self._cache: CachedIndex | None = None
        self._cache_read = False
        self._elsewhere: dict[_Key, list[tuple[PackId, PackEntry]]] = {}
        self._intact: dict[tuple[BlobId, PackId], bool] = {}  # (blob, the pack of the copy)
        self._salvaged: set[_Key] = set()

    def run(self) -> RepairReport:
        repo = self.repo
        # Listed before anything is written: exactly these files may be replaced.
        names = repo.list_index_files()
        trash = list_trash(repo)
        self.listed = repo.list_packs()
        for_prune = {n for rec in trash for n in rec.index}
        trashed = {p for rec in trash for p in rec.packs}
        self._load(names, for_prune)

        todo = sorted(self.live)
        for pack_id in sorted(self.listed):
            if pack_id in self.live:
                continue
            if pack_id in trashed and not self.opts.include_trash:
                self.report.trash_skipped += 1
            else:
                todo.append(pack_id)
        seen = self._inspect(todo)
        for pack_id in todo:
            self._decide(pack_id, seen[pack_id])

        writer = SealedPackWriter(repo)
        self._salvage(writer)
        new_packs = writer.finish()
        self.report.new_packs = [pack_name(r.pack_id) for r in new_packs]
        self._account_missing()
        self._write(new_packs)
        return self.report

    # --- reading -----------------------------------------------------------------------

    def _load(self, names: list[str], for_prune: set[str]) -> None:
        def load(name: str) -> list[PackRecord]:
            return decode_index(self.repo.load_object(name, T_INDEX), name)

        self.progress.start("index", len(names))
        try:
            for name, got in fetch_each(names, load):
                self.progress.advance(1)
                if name in for_prune:
                    self.report.left_for_prune.append(name)
                    if isinstance(got, list):
                        self.prune_files[name] = got
                        for rec in got:
                            self.prune_recs.setdefault(rec.pack_id, []).append(rec)
                elif isinstance(got, list):
                    self.files[name] = got
                    for rec in got:
                        self.live.setdefault(rec.pack_id, []).append(rec)
                elif isinstance(got, IntegrityError):
                    self.report.damaged_index.append((name, got.message))
                elif not isinstance(got, ObjectNotFound):
                    raise got
        finally:
            self.progress.finish()

    def _inspect(self, todo: list[PackId]) -> dict[PackId, _Seen]:
        read_all = self.opts.read_all_packs
        stored = [p for p in todo if p in self.listed]
        total = sum(self.listed[p] for p in stored) if read_all else 0
        out = {p: _Seen(missing=True) for p in todo if p not in self.listed}
        self.progress.start("read" if read_all else "headers", len(stored), total)
        try:
            with ThreadPoolExecutor(self.opts.threads, thread_name_prefix="repair") as pool:
                for pack_id, got in zip(stored, pool.map(self._read_pack, stored), strict=True):
                    out[pack_id] = got
                    self.progress.advance(1, self.listed[pack_id] if read_all else 0)
        finally:
            self.progress.finish()
        return out

    def _read_pack(self, pack_id: PackId) -> _Seen:
        """Runs in a worker thread."""
        size = self.listed[pack_id]
        try:
            if not self.opts.read_all_packs:
                return _Seen(self.repo.read_pack_header(pack_id, size))
            raw = self.repo.storage.get(pack_name(pack_id))
        except ObjectNotFound:
            return _Seen(missing=True)
        except IntegrityError as exc:
            return _Seen(error=exc.message)
        name = pack_name(pack_id)
        try:
            check_pack_start(raw[:4], name)
            hlen = parse_trailer(raw[-TRAILER_LEN:], len(raw), name)
            end = len(raw) - TRAILER_LEN
            chain_id, entries = parse_header(self.repo.aead, raw[end - hlen : end], name)
        except IntegrityError as exc:
            return _Seen(error=exc.message)
        seen = _Seen(PackRecord(pack_id, chain_id, len(raw), tuple(entries)))
        view = memoryview(raw)
        for e in entries:
            if not _opens(self.repo, e, view, name):
                seen.bad.add(e)
        return seen

    # --- deciding ----------------------------------------------------------------------

    def _decide(self, pack_id: PackId, seen: _Seen) -> None:
        name = pack_name(pack_id)
        recs = self.live.get(pack_id, [])
        if seen.missing:
            if recs:
                entries = _entries(recs)
                finding = PackFinding(name, MISSING, "the pack is not stored", len(entries))
                self.missing.append((finding, recs[0].chain_id, entries))
            return
        size = self.listed[pack_id]
        if any(not r.entries for r in recs):
            # Retired by an earlier repair: stays so, whatever its header says now.
            self.final[pack_id] = PackRecord(pack_id, recs[0].chain_id, size, ())
            return
        header = seen.header
        if header is None:
            known = self._known(pack_id)
            if not known:
                self._find(PackFinding(name, UNREADABLE, seen.error))
                return
            chain_id, entries = known
            finding = PackFinding(name, HEADER_DAMAGED, seen.error, len(entries))
            self._job(_Job(pack_id, chain_id, entries, finding))
            return
        header = PackRecord(pack_id, header.chain_id, size, header.entries)
        in_header = set(header.entries)
        extra = [e for e in _entries(recs) if e not in in_header]
        if seen.bad:
            self.final[pack_id] = PackRecord(pack_id, header.chain_id, size, ())
            why = f"{len(seen.bad)} of {len(header.entries)} blobs do not open"
            finding = PackFinding(name, BLOBS_DAMAGED, why, len(header.entries) + len(extra))
            self._job(_Job(pack_id, header.chain_id, [*header.entries, *extra], finding))
            return
        self.final[pack_id] = header
        if not recs:
            self.report.adopted += 1
        elif any(not _same(r, header) for r in recs):
            self.report.corrected += 1
        if extra:
            why = f"the index lists {len(extra)} blob(s) there that the pack's header does not"
            self._job(
                _Job(pack_id, header.chain_id, extra, PackFinding(name, MISMATCH, why, len(extra)))
            )

    def _known(self, pack_id: PackId) -> tuple[ChainId, list[PackEntry]] | None:
        """Every entry an index file or the index cache gives for the pack, and its chain."""
        recs = [*self.live.get(pack_id, []), *self.prune_recs.get(pack_id, [])]
        cached = self._cached()
        if cached is not None and pack_id in cached.index.packs:
            recs.append(cached.index.packs[pack_id])
        entries = _entries(recs)
        return (recs[0].chain_id, entries) if entries else None

    def _cached(self) -> CachedIndex | None:
        if not self._cache_read:
            cache = self.repo.index_cache
            self._cache = cache.load(self.repo.aead) if cache is not None else None
            self._cache_read = True
        return self._cache

    def _job(self, job: _Job) -> None:
        self.jobs.append(job)
        self._find(job.finding)

    def _find(self, finding: PackFinding) -> None:
        self.report.findings.append(finding)

    # --- salvaging ---------------------------------------------------------------------

    def _salvage(self, writer: SealedPackWriter) -> None:
        wanted = {e.blob_id for job in self.jobs for e in job.entries}
        wanted |= {e.blob_id for _f, _c, entries in self.missing for e in entries}
        for pack_id, rec in self.final.items():
            for e in rec.entries:
                if e.blob_id in wanted:
                    self._elsewhere.setdefault((e.blob_id, rec.chain_id), []).append((pack_id, e))
        if not self.jobs:
            return
        self.progress.start(
            "salvage", len(self.jobs), sum(self.listed[j.pack_id] for j in self.jobs)
        )
        try:
            for job in self.jobs:
                self._salvage_pack(job, writer)
                self.progress.advance(1, self.listed[job.pack_id])
        finally:
            self.progress.finish()

    def _salvage_pack(self, job: _Job, writer: SealedPackWriter) -> None:
        name = pack_name(job.pack_id)
        finding = job.finding
        try:
            raw = memoryview(self.repo.storage.get(name))
        except ObjectNotFound:
            raw = memoryview(b"")
        done: set[BlobId] = set()
        for e in job.entries:
            if e.blob_id in done:
                continue
            key = (e.blob_id, job.chain_id)
            if key in self._salvaged or self._intact_elsewhere(key, job.pack_id):
                finding.elsewhere += 1
                done.add(e.blob_id)
            elif _opens(self.repo, e, raw, name):
                writer.add(job.chain_id, e, raw[e.offset : e.offset + e.length])
                self._salvaged.add(key)
                finding.salvaged += 1
                done.add(e.blob_id)
        # An entry that did not open may have another entry for the same blob that did.
        for e in job.entries:
            if e.blob_id not in done:
                done.add(e.blob_id)
                finding.damaged.append(e.blob_id.hex())
                finding.lost.append(e.blob_id.hex())

    def _intact_elsewhere(self, key: _Key, pack_id: PackId) -> bool:
        """Whether another pack the new index lists holds an intact copy of the blob."""
        for other, e in self._elsewhere.get(key, []):
            if other == pack_id:
                continue
            if self.opts.read_all_packs:
                return True  # every blob of an indexed pack was opened by _read_pack
            if self._check_copy(other, e):
                return True
        return False

    def _check_copy(self, pack_id: PackId, e: PackEntry) -> bool:
        key = (e.blob_id, pack_id)
        got = self._intact.get(key)
        if got is None:
            name = pack_name(pack_id)
            try:
                sealed = self.repo.storage.get(name, e.offset, e.length)
            except ObjectNotFound:
                sealed = b""
            got = self._intact[key] = _opens(self.repo, e, memoryview(sealed), name, at=0)
            if not got:
                self.report.suspect.append((name, e.blob_id.hex()))
        return got

    def _account_missing(self) -> None:
        for finding, chain_id, entries in self.missing:
            for blob_id in dict.fromkeys(e.blob_id for e in entries):
                key = (blob_id, chain_id)
                if key in self._salvaged or key in self._elsewhere:
                    finding.elsewhere += 1
                else:
                    finding.lost.append(blob_id.hex())
            self._find(finding)

    # --- writing -----------------------------------------------------------------------

    def _write(self, new_packs: list[PackRecord]) -> None:
        report = self.report
        kept = [
            name
            for name, recs in self.files.items()
            if all(r.pack_id in self.final and _same(r, self.final[r.pack_id]) for r in recs)
        ]
        covered = {r.pack_id for name in kept for r in self.files[name]}
        records = [*new_packs, *(r for p, r in sorted(self.final.items()) if p not in covered)]
        replaced = [n for n in self.files if n not in kept]
        replaced += [n for n, _why in report.damaged_index]
        batch = self.opts.batch
        for i in range(0, len(records), batch):
            report.written.append(self.repo.write_index(records[i : i + batch]))
        # Only now that every replacement is stored: see "Locks and crashes".
        for name in sorted(replaced):
            try:
                self.repo.storage.delete(name)
            except ObjectNotFound:
                pass
            except ObjectRetained:
                # Under retention (immutable mode) it stays: a duplicate, or a damaged file
                # every reader skips with a warning, until its period is over.
                report.retained.append(name)
                continue
            report.removed.append(name)
        report.kept = sorted(kept)

        index = Index()
        for rec in _flatten([self.files[n] for n in kept], [records], self.prune_files.values()):
            index.add_pack(rec)
        self.repo.index = index
        self.repo.index_loaded = True
        report.packs = len(self.final) + len(new_packs)
        report.blobs = index.blob_count()


def _flatten(*groups: Iterable[list[PackRecord]]) -> Iterable[PackRecord]:
    for group in groups:
        for recs in group:
            yield from recs


def _entries(recs: list[PackRecord]) -> list[PackEntry]:
    """The distinct entries of several records of one pack, in offset order."""
    return sorted({e for r in recs for e in r.entries}, key=lambda e: (e.offset, e.blob_id))


def _same(a: PackRecord, b: PackRecord) -> bool:
    return a.chain_id == b.chain_id and a.size == b.size and set(a.entries) == set(b.entries)


def _opens(repo: Repository, e: PackEntry, raw: memoryview, where: str, *, at: int = -1) -> bool:
    """Whether the blob ``e`` describes opens: from ``raw`` (the whole pack) at its offset,
    or, with ``at=0``, ``raw`` being exactly its sealed bytes."""
    start = e.offset if at < 0 else at
    end = start + e.length
    if e.length == 0 or end > len(raw):
        return False
    try:
        repo.open_blob(e.blob_id, raw[start:end], e.raw_length, where)
    except IntegrityError:
        return False
    return True
