"""Saving blobs: compress, seal, pack and upload, from many threads at once.

Workers compress blobs in parallel (the libraries release the GIL), then claim room for the
sealed blob in the open pack under a short lock and seal it straight into that room, still
in parallel: no sealed copy is ever made. There is one open pack per blob type (tree packs
stay small and are read far more often), which leaves at most two partly filled packs per
backup. A full pack is closed to new blobs and uploaded once the last blob being sealed
into it is written; a pack's blobs enter the index only after the pack is stored, so
nothing is ever indexed that is not durable.

Memory is bounded by buffers, not by counting: data packs are assembled in at most
``max_pending_packs + 1`` recycled buffers of ``pack_size`` bytes (by default two: one
filling, one uploading), and a worker that needs a fresh pack waits for one to come back.
Tree packs grow from a small buffer; at most ``max_pending_packs`` of them wait for upload.
``close_packs(BLOB_DATA)`` after the last file gives the data buffers back before trees
are saved.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

from safehold.crypto.aead import OVERHEAD
from safehold.ids import BlobId, ChainId, PackId
from safehold.repository.compress import compress
from safehold.repository.format import BLOB_TREE, storage_id
from safehold.repository.index import PackRecord, decode_sections, encode_section
from safehold.repository.pack import PackBuilder, PackEntry, pack_length
from safehold.repository.repository import Repository, pack_name


@dataclass
class SaverStats:
    """What a :class:`BlobSaver` stored (bytes as plaintext and as sealed) and how many blobs it
    was asked to save."""

    blobs_new: int = 0
    blobs_seen: int = 0
    bytes_new_raw: int = 0  # plaintext bytes of new blobs
    bytes_new_stored: int = 0  # sealed bytes of new blobs
    packs: int = 0


class _Buffers:
    """At most ``count`` pack buffers of ``size`` bytes, allocated on first use, recycled
    until ``trim`` (and again from the next ``take``)."""

    def __init__(self, count: int, size: int) -> None:
        self.size = size
        self._free: list[bytearray] = []
        self._keep = True
        self._lock = threading.Lock()
        self._available = threading.Semaphore(count)

    def take(self, *, wait: bool) -> bytearray | None:
        if not self._available.acquire(blocking=wait):
            return None
        with self._lock:
            self._keep = True
            if self._free:
                return self._free.pop()
        return bytearray(self.size)

    def give(self, buf: bytearray) -> None:
        with self._lock:
            if self._keep:
                self._free.append(buf)
        self._available.release()

    def trim(self) -> None:
        """Free the buffers no pack uses, and those in use once they come back."""
        with self._lock:
            self._keep = False
            self._free.clear()


class _Pack:
    """A pack being assembled: how many blobs are being sealed into it right now, and
    whether it is closed (it takes no more blobs and is stored after the last write)."""

    __slots__ = ("builder", "closed", "failed", "pooled", "writers")

    def __init__(self, builder: PackBuilder, *, pooled: bool) -> None:
        self.builder = builder
        self.pooled = pooled  # its buffer goes back to the pool afterwards
        self.writers = 0
        self.closed = False
        self.failed = False


class BlobSaver:
    """The narrow interface the backup engine needs: ``save`` blobs, then ``finish``."""

    def __init__(
        self,
        repo: Repository,
        chain_id: ChainId,
        *,
        upload_threads: int = 2,
        max_pending_packs: int = 1,
    ) -> None:
        self.repo = repo
        self.chain_id = chain_id
        self.level = repo.config.compression
        self.pack_size = repo.config.pack_size
        self.stats = SaverStats()
        # Each stored pack's index section, for the index file written at the end: the pack
        # records themselves would keep a PackEntry and its integers alive per blob.
        self._sections: list[bytes] = []
        self._lock = threading.Lock()
        self._pending: set[BlobId] = set()
        self._open: dict[int, _Pack] = {}
        self._pack_lock = threading.Lock()
        self._idle = threading.Condition(self._pack_lock)
        self._sealing = 0  # reservations not yet written (and their pack submitted if due)
        self._buffers = _Buffers(max_pending_packs + 1, self.pack_size)
        self._pool = ThreadPoolExecutor(upload_threads, thread_name_prefix="upload")
        self._slots = threading.BoundedSemaphore(max_pending_packs)
        self._futures: list[Future[None]] = []
        self._error: BaseException | None = None

    def save(
        self, blob_type: int, data: bytes | memoryview, blob_id: BlobId | None = None
    ) -> tuple[BlobId, bool]:
        """Store ``data`` unless this chain already has it. Returns ``(id, newly stored)``."""
        bid = blob_id if blob_id is not None else self.repo.master.blob_id(data)
        if not self._claim(bid):
            return bid, False
        comp_id, payload = compress(data, self.level if blob_type != BLOB_TREE else 3)
        aead = self.repo.aead

        def seal(out: memoryview) -> None:
            aead.seal_into(payload, bid + bytes((comp_id,)), out)

        self._put(blob_type, bid, comp_id, OVERHEAD + len(payload), len(data), seal)
        return bid, True

    def save_sealed(
        self, blob_type: int, bid: BlobId, comp_id: int, sealed: memoryview, raw_length: int
    ) -> bool:
        """Store a blob sealed elsewhere (compressed with ``comp_id``, sealed with its id
        and ``comp_id`` as AAD, as :meth:`save` seals) unless this chain already has it;
        whether it was stored. For a forked reader (engine/backup/tiny_procs.py), whose
        answers come in batches: :meth:`save_sealed_many`."""
        return self.save_sealed_many(blob_type, [(bid, comp_id, sealed, raw_length)])[0]

    def save_sealed_many(
        self, blob_type: int, blobs: Sequence[tuple[BlobId, int, memoryview, int]]
    ) -> list[bool]:
        """:meth:`save_sealed` for several blobs ``(id, comp_id, sealed, raw length)``, in
        order; whether each was stored. One claim for all, and the blobs that go into the
        same pack reserved under one hold of the pack lock and copied in one go: per blob,
        those locks were most of what the tiny-file children's receivers waited for."""
        stored = self._claim_many([b[0] for b in blobs])
        todo = [b for b, new in zip(blobs, stored, strict=True) if new]
        while todo:
            pack, entries = self._reserve_run(blob_type, todo)
            run = todo[: len(entries)]
            self._fill(pack, functools.partial(_copy_sealed, pack.builder, entries, run))
            todo = todo[len(entries) :]
        return stored

    def _claim_many(self, bids: Sequence[BlobId]) -> list[bool]:
        """:meth:`_claim` for several ids under one hold of the lock (a repeated id is
        claimed once, by its first place)."""
        if self._error is not None:
            raise self._error
        has = self.repo.index.has_in_chain
        chain, pending = self.chain_id, self._pending
        claimed = []
        with self._lock:
            self.stats.blobs_seen += len(bids)
            for bid in bids:
                new = bid not in pending and not has(bid, chain)
                if new:
                    pending.add(bid)
                claimed.append(new)
        return claimed

    def _reserve_run(
        self, blob_type: int, blobs: Sequence[tuple[BlobId, int, memoryview, int]]
    ) -> tuple[_Pack, list[PackEntry]]:
        """Room for the first of ``blobs`` (as :meth:`_reserve` claims it), and for as many
        of those after it as the same pack takes without growing, in one hold of the lock.
        The caller writes them all and calls :meth:`_written` once."""
        bid, _comp, sealed, raw = blobs[0]
        pack, entry = self._reserve(blob_type, bid, 1 + len(sealed), raw)
        entries = [entry]
        if len(blobs) == 1 or not pack.pooled:
            return pack, entries
        with self._pack_lock:
            if pack.closed:
                return pack, entries
            for bid, _comp, sealed, raw in blobs[1:]:
                length = 1 + len(sealed)
                if not self._takes(pack, length):  # (we are its writer: it cannot grow)
                    break
                entries.append(pack.builder.reserve(blob_type, bid, length, raw))
                self._count_new(length, raw)
        return pack, entries

    def _count_new(self, length: int, raw_length: int) -> None:
        """A new blob of ``length`` stored bytes was reserved (caller holds the pack lock)."""
        self.stats.blobs_new += 1
        self.stats.bytes_new_raw += raw_length
        self.stats.bytes_new_stored += length

    def _claim(self, bid: BlobId) -> bool:
        """Whether ``bid`` is to be stored by the caller: this chain has it neither stored
        nor being stored. Raises the error that stopped an earlier save."""
        if self._error is not None:
            raise self._error
        with self._lock:
            self.stats.blobs_seen += 1
            if bid in self._pending or self.repo.index.has_in_chain(bid, self.chain_id):
                return False
            self._pending.add(bid)
        return True

    def _put(
        self,
        blob_type: int,
        bid: BlobId,
        comp_id: int,
        sealed_length: int,
        raw_length: int,
        fill: Callable[[memoryview], None],
    ) -> None:
        """Claim room for the blob in its pack and have ``fill`` write its sealed payload
        (``sealed_length`` bytes) there. Layout (docs/format.md, section 7): compression
        id | sealed payload, the id bound to the ciphertext through the AAD."""
        pack, entry = self._reserve(blob_type, bid, 1 + sealed_length, raw_length)

        def write() -> None:
            out = pack.builder.view(entry)
            out[0] = comp_id
            fill(out[1:])

        self._fill(pack, write)

    def _fill(self, pack: _Pack, write: Callable[[], None]) -> None:
        """Run ``write``, which fills room reserved in ``pack``, then hand the pack back
        (:meth:`_written`: a pack with a blob never written is never stored); a failure is
        the saver's error from then on."""
        written = False
        try:
            write()
            written = True
        except BaseException as exc:
            if self._error is None:
                self._error = exc
            raise
        finally:
            self._written(pack, written)

    def _reserve(
        self, blob_type: int, bid: BlobId, length: int, raw_length: int
    ) -> tuple[_Pack, PackEntry]:
        """Claim room for one sealed blob in the open pack of its type, closing a pack that
        cannot take it and waiting for a free buffer when all are in use."""
        while True:
            full = None
            with self._pack_lock:
                pack = self._open.get(blob_type)
                if pack is not None and not self._takes(pack, length):
                    full = self._close(pack)
                    pack = None
                if pack is None:
                    pack = self._new_pack(blob_type, length)
                if pack is not None:
                    entry = pack.builder.reserve(blob_type, bid, length, raw_length)
                    pack.writers += 1
                    self._sealing += 1
                    if not pack.pooled and blob_type != BLOB_TREE:
                        self._close(pack)  # a blob too large for a pooled buffer: alone
                    self._count_new(length, raw_length)
            if full is not None:
                self._submit(full)
            if pack is not None:
                return pack, entry
            # Every buffer is filling or uploading: wait for one outside the lock, so that
            # writers can finish their blobs and hand their packs to the uploaders.
            buf = self._buffers.take(wait=True)
            assert buf is not None
            with self._pack_lock:
                if blob_type in self._open:
                    self._buffers.give(buf)  # another worker opened one meanwhile
                else:
                    builder = PackBuilder(self.chain_id, buf=buf)
                    self._open[blob_type] = _Pack(builder, pooled=True)

    def _takes(self, pack: _Pack, length: int) -> bool:
        if not pack.builder.fits(length, self.pack_size):
            return False
        # A buffer being written into cannot grow (only tree packs ever grow).
        return pack.writers == 0 or pack.builder.room() >= pack_length(length, 1)

    def _new_pack(self, blob_type: int, length: int) -> _Pack | None:
        """Open a pack (caller holds the pack lock); None if no pooled buffer is free."""
        if blob_type == BLOB_TREE:
            pack = _Pack(PackBuilder(self.chain_id), pooled=False)  # small: a growing buffer
        elif pack_length(length, 1) > self._buffers.size:
            return _Pack(PackBuilder(self.chain_id, pack_length(length, 1)), pooled=False)
        else:
            buf = self._buffers.take(wait=False)
            if buf is None:
                return None
            pack = _Pack(PackBuilder(self.chain_id, buf=buf), pooled=True)
        self._open[blob_type] = pack
        return pack

    def _close(self, pack: _Pack) -> _Pack | None:
        """No more blobs for ``pack`` (caller holds the pack lock). Returns it if it is ready
        to be stored now; otherwise its last writer submits it."""
        pack.closed = True
        for blob_type, open_pack in list(self._open.items()):
            if open_pack is pack:
                del self._open[blob_type]
        return pack if pack.writers == 0 else None

    def _written(self, pack: _Pack, ok: bool) -> None:
        with self._idle:
            pack.writers -= 1
            if not ok:
                pack.failed = True
                self._close(pack)
            ready = pack.closed and pack.writers == 0
            if not ready:
                self._done_sealing()
                return
        try:
            self._submit(pack)
        finally:
            with self._idle:
                self._done_sealing()

    def _done_sealing(self) -> None:
        # Only after its pack is handed to the uploaders: flush waits for this.
        self._sealing -= 1
        if not self._sealing:
            self._idle.notify_all()

    def _submit(self, pack: _Pack) -> None:
        if pack.failed:  # a blob in it was never written: it must not be stored
            self._release(pack)
            return
        if not pack.pooled:  # pooled packs are bounded by their buffers, the others here
            self._slots.acquire()
        future = self._pool.submit(self._upload, pack)
        with self._lock:
            self._futures.append(future)

    def _release(self, pack: _Pack) -> None:
        if pack.pooled:
            self._buffers.give(pack.builder.buf)

    def _upload(self, pack: _Pack) -> None:
        builder = pack.builder
        try:
            try:
                raw = builder.finish(self.repo.aead)
                pack_id = PackId(bytes.fromhex(storage_id(raw)))
                self.repo.storage.put(pack_name(pack_id), raw)
                del raw
            finally:
                self._release(pack)  # stored or not, its buffer can take the next pack
            rec = PackRecord(pack_id, self.chain_id, builder.size, tuple(builder.entries))
            section = encode_section(rec)
            self.repo.index.add_pack(rec)
            with self._lock:
                self._sections.append(section)
                self.stats.packs += 1
                self._pending.difference_update(e.blob_id for e in builder.entries)
        except BaseException as exc:
            if self._error is None:
                self._error = exc
            raise
        finally:
            if not pack.pooled:
                self._slots.release()

    def close_packs(self, blob_type: int) -> None:
        """No more blobs of ``blob_type`` are coming for a while (all files are read, only
        trees follow): store its open pack now and free the pack buffers once they are
        stored, instead of holding them to the end. Later blobs open a new pack."""
        with self._pack_lock:
            pack = self._open.get(blob_type)
            ready = self._close(pack) if pack is not None else None
            if blob_type != BLOB_TREE:  # the pooled buffers are data packs'
                self._buffers.trim()
        if ready is not None:
            self._submit(ready)

    @property
    def records(self) -> list[PackRecord]:
        """The records of the packs this saver stored so far (rebuilt from their sections)."""
        with self._lock:
            sections = list(self._sections)
        return decode_sections(sections)

    def flush(self) -> list[PackRecord]:
        """Upload every partly filled pack and wait for all uploads; raises the first
        upload error. Returns the records of all packs this saver stored."""
        self._flush()
        return self.records

    def _flush(self) -> None:
        with self._pack_lock:
            ready = [self._close(p) for p in list(self._open.values())]
            self._buffers.trim()
        for pack in ready:
            if pack is not None and len(pack.builder):
                self._submit(pack)
            elif pack is not None:
                self._release(pack)
        with self._idle:  # blobs still being sealed: their writers submit their packs
            self._idle.wait_for(lambda: not self._sealing)
        with self._lock:
            futures, self._futures = self._futures, []
        for f in futures:
            f.exception()
        if self._error is not None:
            raise self._error

    def finish(self) -> str | None:
        """Flush and write one index file for everything saved; returns its name."""
        self._flush()
        self._pool.shutdown()
        with self._lock:
            sections = list(self._sections)
        if not sections:
            return None
        return self.repo.write_index_sections(sections)

    def abort(self) -> None:
        """Cancel the uploads not yet started and wait for the running ones: after a failure,
        instead of :meth:`finish`."""
        self._pool.shutdown(wait=True, cancel_futures=True)


def _copy_sealed(
    builder: PackBuilder,
    entries: Sequence[PackEntry],
    blobs: Sequence[tuple[BlobId, int, memoryview, int]],
) -> None:
    """Each blob's compression id and sealed bytes into the room reserved for it."""
    for entry, (_bid, comp_id, sealed, _raw) in zip(entries, blobs, strict=True):
        out = builder.view(entry)
        out[0] = comp_id
        out[1:] = sealed
