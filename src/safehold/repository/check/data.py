"""Data checks (``--read-data``): download packs, compare each with its name and the
index, and open every blob (authenticate, decompress, re-hash against its id)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from safehold.errors import IntegrityError, ObjectNotFound
from safehold.ids import BlobId, ChainId, PackId
from safehold.repository.check.report import ERROR, WARNING, Problem
from safehold.repository.check.state import CheckState
from safehold.repository.format import storage_id as hash_name
from safehold.repository.index import PackRecord
from safehold.repository.pack import (
    TRAILER_LEN,
    PackEntry,
    check_pack_start,
    parse_header,
    parse_trailer,
)
from safehold.repository.repository import pack_name

__all__ = ["DataChecks"]


@dataclass
class _PackResult:
    pack_id: PackId
    nbytes: int = 0
    problems: list[Problem] = field(default_factory=list)
    damaged: list[BlobId] = field(default_factory=list)  # ids of blobs that failed to open

    def problem(self, code: str, name: str, message: str, hint: str = "") -> None:
        self.problems.append(Problem(ERROR, code, name, message, hint, self.pack_id.hex()))


class DataChecks(CheckState):
    """The ``--read-data`` part of check: reads the chosen packs whole, in parallel, and opens
    every blob against the index and the pack's own header."""

    def read_data(self) -> None:
        """Read the chosen packs (all, or ``--read-data-subset``) and report every damaged or
        mismatching blob; unindexed garbage and packs already reported are skipped."""
        # Packs in the trash and in no index are garbage waiting for prune, and an unindexed
        # pack whose header does not open was already reported (nothing reads it, and
        # repair has salvaged what any index knew of it): neither is worth reading.
        candidates = [p for p in self.listed if p in self.index.packs or p in self.extra.packs]
        subset = self.opts.subset
        chosen = subset.select(candidates) if subset else sorted(candidates)
        self.report.read_data = subset.describe() if subset else "all"
        self.progress.start("read", len(chosen), sum(self.listed[p] for p in chosen))
        try:
            with ThreadPoolExecutor(max(1, self.opts.threads), thread_name_prefix="check") as pool:
                for res in pool.map(self._read_pack, chosen):
                    self.report.problems.extend(res.problems)
                    self.bad_blobs.update((b, res.pack_id) for b in res.damaged)
                    self.report.packs_read += 1
                    self.report.bytes_read += res.nbytes
                    self.report.read_pack_ids.append(res.pack_id)
        finally:
            self.progress.finish()

    def _read_pack(self, pack_id: PackId) -> _PackResult:
        """Runs in a worker thread: touches only its own result and read-only state."""
        name = pack_name(pack_id)
        res = _PackResult(pack_id)
        try:
            raw = self.repo.storage.get(name)
        except ObjectNotFound:
            res.problem("pack-missing", name, "the pack vanished while being checked")
            return res
        res.nbytes = len(raw)
        rec = self.index.packs.get(pack_id)
        if rec is not None and not rec.entries:
            # Retired by 'repair index --read-all-packs': it held damaged blobs, its good
            # ones were copied out, and it stays indexed (so no backup adopts it again) until
            # prune deletes it.
            msg = "retired by 'repair index': no index entry refers to it any more"
            hint = "'safehold prune' deletes it"
            res.problems.append(Problem(WARNING, "pack-retired", name, msg, hint, pack_id.hex()))
            self.progress.advance(1, len(raw))
            return res
        if hash_name(raw) != pack_id.hex():
            msg = (
                "the pack's content does not match its name (its BLAKE3 hash): "
                "it was damaged after it was written"
            )
            res.problem("pack-hash", name, msg)
        chain_id, header = self._parse_pack(raw, name, res)
        if rec is not None and header is not None:
            _compare(rec, chain_id, header, name, res)
        entries: dict[tuple[bytes, int], PackEntry] = {}
        for e in (*(rec.entries if rec else ()), *(header or ())):
            entries.setdefault((e.blob_id, e.offset), e)
        view = memoryview(raw)
        first = ""
        for e in entries.values():
            end = e.offset + e.length
            try:
                if end > len(raw):
                    raise IntegrityError(f"blob {e.blob_id.hex()[:8]} lies beyond the pack's end")
                self.repo.open_blob(e.blob_id, view[e.offset : end], e.raw_length, name)
            except IntegrityError as exc:
                res.damaged.append(e.blob_id)
                first = first or exc.message
        if res.damaged:
            msg = (
                f"{len(res.damaged)} of {len(entries)} blobs in the pack are damaged "
                f"(first: {first}); the snapshots and paths that need them are listed"
            )
            res.problem("blob-damaged", name, msg)
        self.progress.advance(1, len(raw))
        return res

    def _parse_pack(
        self, raw: bytes, name: str, res: _PackResult
    ) -> tuple[ChainId, list[PackEntry] | None]:
        try:
            check_pack_start(raw[:4], name)
            hlen = parse_trailer(raw[-TRAILER_LEN:], len(raw), name)
            end = len(raw) - TRAILER_LEN
            return parse_header(self.repo.aead, raw[end - hlen : end], name)
        except IntegrityError as exc:
            msg = (
                f"the pack's header is damaged ({exc.message}); its blobs are still read "
                "through the index, but the index can no longer be rebuilt from this pack"
            )
            res.problem("pack-header", name, msg)
            return ChainId(b""), None


def _compare(
    rec: PackRecord, chain_id: ChainId, header: list[PackEntry], name: str, res: _PackResult
) -> None:
    """The index and the pack's own header must describe the pack the same way."""
    differences = []
    if chain_id != rec.chain_id:
        differences.append(
            f"the header says chain {chain_id.hex()[:8]}, the index {rec.chain_id.hex()[:8]}"
        )
    in_header, in_index = set(header), set(rec.entries)
    if in_header - in_index:
        differences.append(f"{len(in_header - in_index)} header entries are not in the index")
    if in_index - in_header:
        differences.append(f"{len(in_index - in_header)} index entries are not in the header")
    if differences:
        msg = f"the pack's header and the index disagree: {'; '.join(differences)}"
        hint = "run 'safehold repair index' to rebuild the index from the packs"
        res.problem("pack-index-mismatch", name, msg, hint)
