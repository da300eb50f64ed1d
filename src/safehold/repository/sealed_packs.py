"""Writing blobs that are already sealed into new packs (repair's salvage; prune's repack).

A blob's sealed form does not depend on the pack that holds it (its AAD is its own id and
compression id, docs/format.md sections 7 and 8), so a blob read from one pack is copied
into another byte for byte, without decrypting it again. The caller verifies what it copies
(:meth:`Repository.open_blob`): a writer must never put a blob it has not authenticated
into a pack that an index will vouch for.
"""

from __future__ import annotations

from safehold.ids import ChainId, PackId
from safehold.repository.format import storage_id
from safehold.repository.index import PackRecord
from safehold.repository.pack import PackBuilder, PackEntry
from safehold.repository.repository import Repository, pack_name

__all__ = ["SealedPackWriter"]


class SealedPackWriter:
    """Fills packs with sealed blobs, one open pack per chain and blob type (a pack holds
    blobs of one chain and one type, docs/format.md section 8), and stores each pack as
    it reaches the repository's pack size. Packs are stored, never indexed: the caller
    writes index files for :attr:`records` once it has them all. Not thread-safe."""

    def __init__(self, repo: Repository) -> None:
        self.repo = repo
        self._builders: dict[tuple[ChainId, int], PackBuilder] = {}
        self.records: list[PackRecord] = []  # the packs stored so far

    def add(self, chain_id: ChainId, entry: PackEntry, sealed: bytes | memoryview) -> None:
        """Append the blob ``entry`` describes (its type, id and raw length; its offset is
        where it was read from) to the open pack of ``chain_id``."""
        key = (chain_id, entry.blob_type)
        builder = self._builders.get(key)
        if builder is None:
            builder = self._builders[key] = PackBuilder(chain_id, min(len(sealed) + 4096, 1 << 20))
        builder.add(entry.blob_type, entry.blob_id, bytes(sealed), entry.raw_length)
        if builder.size >= self.repo.config.pack_size:
            del self._builders[key]
            self._store(builder)

    def _store(self, builder: PackBuilder) -> None:
        raw = builder.finish(self.repo.aead)
        pack_id = PackId(bytes.fromhex(storage_id(raw)))
        self.repo.storage.put(pack_name(pack_id), raw)
        self.records.append(PackRecord(pack_id, builder.chain_id, len(raw), tuple(builder.entries)))

    def finish(self) -> list[PackRecord]:
        """Store the packs still open; returns every pack stored."""
        for builder in self._builders.values():
            if len(builder):
                self._store(builder)
        self._builders.clear()
        return self.records
