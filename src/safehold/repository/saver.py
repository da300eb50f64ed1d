"""Saving blobs: compress, seal, pack and upload, from many threads at once.

Workers compress and seal blobs in parallel (the libraries release the GIL); appending a
sealed blob to the open pack is a short memcpy under a lock. There is one open pack per
blob type (tree packs stay small and are read far more often), which keeps memory bounded
and leaves at most two partly filled packs per backup. Full packs are uploaded by a small
pool; a pack's blobs enter the index only after the pack is stored, so nothing is ever
indexed that is not durable.
"""

from __future__ import annotations

import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

from safehold.repository.compress import compress
from safehold.repository.format import BLOB_TREE, storage_id
from safehold.repository.index import PackRecord
from safehold.repository.pack import PackBuilder
from safehold.repository.repository import Repository, pack_name


@dataclass
class SaverStats:
    blobs_new: int = 0
    blobs_seen: int = 0
    bytes_new_raw: int = 0  # plaintext bytes of new blobs
    bytes_new_stored: int = 0  # sealed bytes of new blobs
    packs: int = 0


class BlobSaver:
    """The narrow interface the backup engine needs: ``save`` blobs, then ``finish``."""

    def __init__(
        self,
        repo: Repository,
        chain_id: bytes,
        *,
        upload_threads: int = 2,
        max_pending_packs: int = 2,
    ) -> None:
        self.repo = repo
        self.chain_id = chain_id
        self.level = repo.config.compression
        self.pack_size = repo.config.pack_size
        self.stats = SaverStats()
        self.records: list[PackRecord] = []
        self._lock = threading.Lock()
        self._pending: set[bytes] = set()
        self._builders: dict[int, PackBuilder] = {}
        self._pack_lock = threading.Lock()
        # Data pack buffers are recycled: at most max_pending_packs + 1 ever exist.
        self._free: list[bytearray] = []
        self._capacity = max(self.pack_size, 2 * repo.config.chunker.max_size)
        self._pool = ThreadPoolExecutor(upload_threads, thread_name_prefix="upload")
        self._slots = threading.BoundedSemaphore(max_pending_packs)
        self._futures: list[Future[None]] = []
        self._error: BaseException | None = None

    def save(
        self, blob_type: int, data: bytes | memoryview, blob_id: bytes | None = None
    ) -> tuple[bytes, bool]:
        """Store ``data`` unless this chain already has it. Returns ``(id, newly stored)``."""
        if self._error is not None:
            raise self._error
        bid = blob_id if blob_id is not None else self.repo.master.blob_id(data)
        with self._lock:
            self.stats.blobs_seen += 1
            if bid in self._pending or self.repo.index.has_in_chain(bid, self.chain_id):
                return bid, False
            self._pending.add(bid)
        comp_id, payload = compress(data, self.level if blob_type != BLOB_TREE else 3)
        comp = bytes((comp_id,))
        # Layout (docs/format.md, section 7): compression id | sealed payload, the id bound
        # to the ciphertext through the AAD; no copy of the payload is made to prepend it.
        head, body = self.repo.aead.seal_parts(payload, bid + comp)
        sealed_len = len(comp) + len(head) + len(body)
        full = None
        with self._pack_lock:
            builder = self._builders.get(blob_type)
            if builder is not None and not builder.fits(sealed_len, self.pack_size):
                full = self._builders.pop(blob_type)  # close it before it overflows
                builder = None
            if builder is None:
                builder = self._builders[blob_type] = self._new_builder(blob_type)
            entry = builder.add(blob_type, bid, (comp, head, body), len(data))
            self.stats.blobs_new += 1
            self.stats.bytes_new_raw += len(data)
            self.stats.bytes_new_stored += entry.length
        if full is not None:
            self._submit(full)
        return bid, True

    def _new_builder(self, blob_type: int) -> PackBuilder:
        if blob_type == BLOB_TREE:
            return PackBuilder(self.chain_id)  # trees are small: a growing buffer
        buf = self._free.pop() if self._free else None
        return PackBuilder(self.chain_id, self._capacity, buf=buf)

    def _submit(self, builder: PackBuilder) -> None:
        self._slots.acquire()  # backpressure: bounded packs in memory
        self._futures.append(self._pool.submit(self._upload, builder))

    def _upload(self, builder: PackBuilder) -> None:
        try:
            raw = builder.finish(self.repo.aead)
            pack_id = bytes.fromhex(storage_id(raw))
            self.repo.storage.put(pack_name(pack_id), raw)
            rec = PackRecord(pack_id, self.chain_id, len(raw), tuple(builder.entries))
            self.repo.index.add_pack(rec)
            with self._lock:
                self.records.append(rec)
                self.stats.packs += 1
                self._pending.difference_update(e.blob_id for e in builder.entries)
            if len(builder.buf) == self._capacity:
                del raw  # the memoryview must go before the buffer can be reused
                with self._pack_lock:
                    self._free.append(builder.buf)
        except BaseException as exc:
            if self._error is None:
                self._error = exc
            raise
        finally:
            self._slots.release()

    def flush(self) -> list[PackRecord]:
        """Upload every partly filled pack and wait for all uploads; raises the first
        upload error. Returns the records of all packs this saver stored."""
        with self._pack_lock:
            builders = [b for b in self._builders.values() if len(b)]
            self._builders.clear()
        for b in builders:
            self._submit(b)
        for f in self._futures:
            f.exception()
        self._futures.clear()
        if self._error is not None:
            raise self._error
        return list(self.records)

    def finish(self) -> str | None:
        """Flush and write one index file for everything saved; returns its name."""
        records = self.flush()
        self._pool.shutdown()
        if not records:
            return None
        return self.repo.write_index(records)

    def abort(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
