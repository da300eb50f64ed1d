"""Saving blobs: compress, seal, pack and upload, from many threads at once.

Each worker thread fills its own pack builders (one for data, one for trees: tree packs stay
small and are read far more often), so the hot path takes a lock only for the dedup check.
Full packs are uploaded by a small pool; a pack's blobs enter the index only after the pack
is stored, so nothing is ever indexed that is not durable.
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
        max_pending_packs: int = 3,
    ) -> None:
        self.repo = repo
        self.chain_id = chain_id
        self.level = repo.config.compression
        self.pack_size = repo.config.pack_size
        self.stats = SaverStats()
        self.records: list[PackRecord] = []
        self._lock = threading.Lock()
        self._pending: set[bytes] = set()
        self._local = threading.local()
        self._all_builders: list[dict[int, PackBuilder]] = []
        self._pool = ThreadPoolExecutor(upload_threads, thread_name_prefix="upload")
        self._slots = threading.BoundedSemaphore(max_pending_packs)
        self._futures: list[Future[None]] = []
        self._error: BaseException | None = None

    def _builders(self) -> dict[int, PackBuilder]:
        b: dict[int, PackBuilder] | None = getattr(self._local, "b", None)
        if b is None:
            b = self._local.b = {}
            with self._lock:
                self._all_builders.append(b)
        return b

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
        sealed = self.repo.aead.seal(bytes((comp_id,)) + bytes(payload), bid)
        builders = self._builders()
        builder = builders.get(blob_type)
        if builder is None:
            builder = builders[blob_type] = PackBuilder(self.chain_id)
        builder.add(blob_type, bid, sealed, len(data))
        with self._lock:
            self.stats.blobs_new += 1
            self.stats.bytes_new_raw += len(data)
            self.stats.bytes_new_stored += len(sealed)
        if builder.size >= self.pack_size:
            del builders[blob_type]
            self._submit(builder)
        return bid, True

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
        except BaseException as exc:
            if self._error is None:
                self._error = exc
            raise
        finally:
            self._slots.release()

    def flush(self) -> list[PackRecord]:
        """Upload every partly filled pack and wait for all uploads; raises the first
        upload error. Returns the records of all packs this saver stored."""
        with self._lock:
            builders = [b for d in self._all_builders for b in d.values() if len(b)]
            for d in self._all_builders:
                d.clear()
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
