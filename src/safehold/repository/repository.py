"""The Repository: opening, keys, objects, the index, blobs, snapshots and chains.

Object names (docs/format.md, "Layout")::

    config                  sealed repository configuration
    keys/<id>               key files (the master key wrapped by a password)
    data/<id[:2]>/<id>      packs
    index/<id>              index files
    snapshots/<id>          snapshots
    locks/<random>          locks
    chains/<chain id>       chain markers (a finished chain)
    trash/<id>              prune's deletion records (two-phase delete)

``<id>`` is the unkeyed BLAKE3 of the stored bytes, except for locks and chain markers.
"""

from __future__ import annotations

import contextlib
import getpass
import json
import os
import socket
import threading
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from safehold.clock import SYSTEM_CLOCK, Clock
from safehold.crypto.aead import Aead
from safehold.crypto.keys import KdfParams, MasterKey, make_key_file
from safehold.errors import (
    FormatError,
    IntegrityError,
    ObjectNotFound,
    RepositoryExists,
    RepositoryNotFound,
    SafeholdError,
    SnapshotNotFound,
    UsageError,
)
from safehold.ids import BlobId, HexId, PackId, SnapshotId, blob_from_hex
from safehold.repository import key_files
from safehold.repository import lock as lockmod
from safehold.repository.chunker import ChunkerParams
from safehold.repository.compress import COMP_NONE, DEFAULT_LEVEL, decompress, decompress_into
from safehold.repository.format import (
    T_CHAIN,
    T_CONFIG,
    T_INDEX,
    T_SNAPSHOT,
    T_TRASH,
    open_object,
    seal_object,
    storage_id,
)
from safehold.repository.index import (
    Index,
    IndexLoader,
    Location,
    PackRecord,
    decode_index,
    encode_section,
    index_file,
)
from safehold.repository.index_cache import CachedIndex, IndexCache
from safehold.repository.pack import TRAILER_LEN, check_pack_start, parse_header, parse_trailer
from safehold.repository.snapshot import Snapshot
from safehold.repository.trash_record import TrashRecord, parse_trash
from safehold.repository.tree import Node, decode_tree, decode_tree_json
from safehold.storage.base import Storage

REPO_VERSION = 1
DEFAULT_PACK_SIZE = 16 * 1024 * 1024
# Decoded trees kept: at most this many, holding at most TREE_CACHE_NODES nodes in all. The
# count of trees alone let a walk of 2,000 folders of 100 small files keep every node of
# the snapshot (200,000, about 160 MB: `ls` peaked at 215 MB against restic's 124); a
# node is about 800 bytes decoded. A tree larger than the whole budget is not kept.
TREE_CACHE = 4096
TREE_CACHE_NODES = 32_768
TREE_PACK_CACHE = 64 << 20  # bytes of tree packs kept


@dataclass(frozen=True)
class RepoConfig:
    """The repository's config object: its id, chunking, compression level (None: off) and
    pack size in bytes; fixed at ``init``."""

    repo_id: str
    chunker: ChunkerParams
    compression: int | None  # zstd level, None = off
    pack_size: int
    created: str

    def to_json(self) -> dict[str, Any]:
        """The config as its stored object holds it."""
        return {
            "version": REPO_VERSION,
            "id": self.repo_id,
            "chunker": self.chunker.to_json(),
            "compression": self.compression,
            "pack_size": self.pack_size,
            "created": self.created,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> RepoConfig:
        """A config from its stored JSON; raises :class:`FormatError` for another repository
        version."""
        if d.get("version") != REPO_VERSION:
            raise FormatError(
                f"repository version {d.get('version')!r} is not supported "
                f"(this safehold reads version {REPO_VERSION})",
                hint="upgrade safehold",
            )
        return cls(
            repo_id=d["id"],
            chunker=ChunkerParams(**d["chunker"]),
            compression=d.get("compression", DEFAULT_LEVEL),
            pack_size=int(d.get("pack_size", DEFAULT_PACK_SIZE)),
            created=d.get("created", ""),
        )


def pack_name(pack_id: PackId) -> str:
    """The object name of a pack: ``data/<first two hex digits>/<hex id>``."""
    h = pack_id.hex()
    return f"data/{h[:2]}/{h}"


def _default_key_meta(clock: Clock) -> dict[str, str]:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = ""
    return {"created": clock.now().isoformat(), "hostname": socket.gethostname(), "username": user}


class Repository:
    """An opened repository. Thread-safe for reading blobs and saving objects."""

    def __init__(
        self,
        storage: Storage,
        master: MasterKey,
        config: RepoConfig,
        *,
        key_name: str = "",
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.storage = storage
        self.master = master
        self.aead: Aead = master.aead()
        self.config = config
        self.key_name = key_name
        self.clock = clock
        self.index = Index()
        self.index_loaded = False
        # Packs a writer keeps out of its index (prune's trash: never deduplicated against)
        # but must still read from: the trees of a parent snapshot saved during a prune.
        self.read_only_packs: Index | None = None
        # Packs found missing while reading, and the index files loaded again then.
        self._relocate_lock = threading.Lock()
        self._missing_packs: set[PackId] = set()
        self._fresh_index: Index | None = None
        self.index_cache: IndexCache | None = None
        # With a cache: the index files loaded or written by this process, and the index
        # they hold (without packs added in memory only), for update_index_cache.
        self._index_base: tuple[set[str], Index] | None = None
        self._index_written = False
        self._tree_cache: OrderedDict[HexId, list[Node]] = OrderedDict()
        self._tree_cache_nodes = 0  # nodes held by _tree_cache
        self._tree_lock = threading.Lock()
        # Whole tree packs, so that walking a tree costs one read per pack, not per folder.
        self._tree_packs: OrderedDict[PackId, bytes] = OrderedDict()
        self._tree_pack_bytes = 0
        self._tree_pack_lock = threading.Lock()
        # Damaged objects that a command skipped (a junk lock, a damaged trash record or
        # snapshot): one damaged object costs only what depends on it, and is named here.
        self.warnings: list[tuple[str, str]] = []
        self.on_warning: Callable[[str, str], None] | None = None

    def warn(self, name: str, message: str) -> None:
        """Report a damaged object that was skipped: once per object and message, to
        :attr:`on_warning` (the front end's listener) and into :attr:`warnings`."""
        if (name, message) in self.warnings:
            return
        self.warnings.append((name, message))
        if self.on_warning is not None:
            self.on_warning(name, message)

    # --- creating and opening ------------------------------------------------------------

    @classmethod
    def init(
        cls,
        storage: Storage,
        password: bytes,
        *,
        chunker: ChunkerParams | None = None,
        compression: int | None = DEFAULT_LEVEL,
        pack_size: int = DEFAULT_PACK_SIZE,
        kdf: KdfParams | None = None,
        clock: Clock = SYSTEM_CLOCK,
    ) -> Repository:
        """Create a repository on ``storage`` (config and a first key file for ``password``) and
        return it opened; raises :class:`RepositoryExists` if one is there."""
        if _exists(storage, "config"):
            raise RepositoryExists(
                f"a repository already exists at {storage.describe()}",
                hint="use it as it is (no init needed), or choose an empty or new location",
            )
        if any(True for _ in storage.list("")):
            raise RepositoryExists(
                f"{storage.describe()} is not empty and holds no repository",
                hint="choose an empty or new location",
            )
        master = MasterKey.generate()
        # os.urandom is what secrets.token_bytes returns; importing secrets loads hmac and OpenSSL's
        # libcrypto (4.5 MB in every command), which nothing else needs.
        seed = int.from_bytes(os.urandom(7), "little") or 1  # < 2**63 for pyfastcdc
        config = RepoConfig(
            repo_id=os.urandom(32).hex(),
            chunker=chunker or ChunkerParams(seed=seed),
            compression=compression,
            pack_size=pack_size,
            created=clock.now().isoformat(),
        )
        repo = cls(storage, master, config, clock=clock)
        repo.key_name = repo.add_key(password, kdf=kdf)
        # The config is written last: its presence is what makes a location a repository.
        storage.put(
            "config",
            seal_object(repo.aead, T_CONFIG, json.dumps(config.to_json()).encode()),
            exclusive=True,
        )
        return repo

    @classmethod
    def open(
        cls,
        storage: Storage,
        password: bytes,
        *,
        clock: Clock = SYSTEM_CLOCK,
        on_warning: Callable[[str, str], None] | None = None,
    ) -> Repository:
        """Open with the first key file that ``password`` opens (repository/key_files.py).
        Key files that are damaged or another repository's are skipped, each reported
        through :meth:`warn` (to ``on_warning``, which the opened repository keeps)."""
        try:
            raw_config = storage.get("config")
        except ObjectNotFound:
            if any(True for _ in storage.list("")):
                raise RepositoryNotFound(
                    f"{storage.describe()} is not a safehold repository (it has no config)",
                    hint="check the --repo location",
                ) from None
            raise RepositoryNotFound(
                f"there is no repository at {storage.describe()}",
                hint="create one with 'safehold init', or check the --repo location",
            ) from None
        found = key_files.unlock(
            storage, password, lambda m: open_object(m.aead(), raw_config, T_CONFIG, "config")
        )
        config = RepoConfig.from_json(json.loads(found.opened))
        repo = cls(storage, found.master, config, key_name=found.name, clock=clock)
        repo.on_warning = on_warning
        for skipped in found.skipped:
            repo.warn(skipped.name, f"key file skipped: {skipped.reason}")
        return repo

    # --- keys ------------------------------------------------------------------------------

    def add_key(self, password: bytes, *, kdf: KdfParams | None = None) -> str:
        """Store a key file for ``password`` that opens this repository; returns its name."""
        raw = make_key_file(self.master, password, params=kdf, meta=_default_key_meta(self.clock))
        name = "keys/" + storage_id(raw)
        self.storage.put(name, raw, exclusive=True)
        return name

    def list_keys(self) -> list[dict[str, Any]]:
        """Every key file in name order: its unencrypted fields, ``id`` and ``current``;
        one that cannot be read has only ``damaged``, saying why, instead of the fields."""
        out: list[dict[str, Any]] = []
        for name, got in key_files.read_key_files(self.storage):
            entry: dict[str, Any] = (
                {"damaged": got.message} if isinstance(got, FormatError) else dict(got.meta)
            )
            entry["id"] = name.removeprefix("keys/")
            entry["current"] = name == self.key_name
            out.append(entry)
        return out

    def find_key(self, prefix: str) -> str:
        """The key file whose id starts with ``prefix``; raises :class:`UsageError` unless exactly
        one does."""
        matches: list[str] = [k["id"] for k in self.list_keys() if k["id"].startswith(prefix)]
        if len(matches) != 1:
            what = "no key" if not matches else f"{len(matches)} keys"
            raise UsageError(f"{what} match {prefix!r}", hint="see 'safehold key list'")
        return "keys/" + matches[0]

    def remove_key(self, name: str) -> None:
        """Delete key file ``name``; refuses (UsageError) the one this repository was opened
        with."""
        if name == self.key_name:
            raise UsageError(
                "refusing to remove the key this command was opened with",
                hint="open the repository with another password to remove this key",
            )
        self.storage.delete(name)

    # --- sealed objects ------------------------------------------------------------------

    def save_object(self, prefix: str, obj_type: int, payload: bytes) -> str:
        """Seal ``payload`` as an object of ``obj_type`` under ``prefix``, named by its hash;
        returns its name."""
        raw = seal_object(self.aead, obj_type, payload, self.config.compression or 3)
        name = prefix + storage_id(raw)
        self.storage.put(name, raw)
        return name

    def load_object(self, name: str, obj_type: int) -> bytes:
        """The payload of object ``name``, checked against its name (a mismatch is damage:
        :class:`IntegrityError`)."""
        raw = self.storage.get(name)
        if storage_id(raw) != name.rsplit("/", 1)[-1]:
            raise IntegrityError(f"{name} does not match its name: it was damaged")
        return open_object(self.aead, raw, obj_type, name)

    # --- locks -----------------------------------------------------------------------------

    def lock(self, kind: str, *, exclusive: bool = False) -> lockmod.Lock:
        """Take a lock of ``kind`` (refreshed in the background until released); raises
        :class:`RepositoryLocked` when a live conflicting lock is held. A context manager."""
        return lockmod.acquire(
            self.storage,
            self.aead,
            kind=kind,
            exclusive=exclusive,
            clock=self.clock,
            warn=self.warn,
        )

    # --- index -----------------------------------------------------------------------------

    def list_index_files(self) -> list[str]:
        """The names of every index file, sorted."""
        return sorted(o.name for o in self.storage.list("index/"))

    def list_trash(self, *, damaged: list[str] | None = None) -> list[TrashRecord]:
        """Prune's trash records (docs/format.md, "Trash records"), oldest first. One that
        cannot be read is skipped with a warning (it can only name garbage: losing it
        costs space, never data); its name goes to ``damaged`` if given."""
        out = []
        for obj in self.storage.list("trash/"):
            try:
                out.append(parse_trash(obj.name, self.load_object(obj.name, T_TRASH)))
            except ObjectNotFound:
                continue  # swept while we listed
            except IntegrityError as exc:
                if damaged is not None:
                    damaged.append(obj.name)
                self.warn(obj.name, f"skipped a damaged trash record ({exc.message})")
        out.sort(key=lambda r: r.created)
        return out

    def _prefer_live(self, trashed: set[PackId] | None) -> None:
        """Move trashed packs behind every other copy of their blobs: readers then take a
        live copy where one exists (the sweep may delete a trashed pack once no snapshot
        needs it from there), and still find blobs that only a trashed pack holds (a
        snapshot saved during the prune, until the sweep rescues the pack)."""
        if trashed is None:
            trashed = {p for rec in self.list_trash() for p in rec.packs}
        for pack_id in trashed:
            rec = self.index.packs.get(pack_id)
            if rec is not None:
                self.index.remove_pack(pack_id)
                self.index.add_pack(rec)  # added last: its copies come after the others

    def load_index(
        self, *, strict: bool = False, use_cache: bool = True, trashed: set[PackId] | None = None
    ) -> list[str]:
        """Load every index file. A file deleted meanwhile (prune replaced it) is skipped:
        prune writes the replacement before deleting, so a fresh listing covers it.
        A damaged file is skipped with a warning (raised instead when ``strict``): it
        costs the blobs only it lists, which a backup then adopts again from their packs'
        headers. Returns the names of damaged index files.

        With an index cache (``use_index_cache``), a load starts from the cache when every
        index file it was built from is still listed (see
        :mod:`safehold.repository.index_cache`), unless ``use_cache`` is off (a load that
        must read every file).

        Packs in prune's trash (``trashed``, else listed here) come after every other copy
        of their blobs (:meth:`_prefer_live`)."""
        cache = self.index_cache if use_cache else None
        listed: list[str] | None = None  # a listing the first attempt below may reuse
        if cache is not None:
            cached = cache.load(self.aead)
            if cached is not None:
                listed = self.list_index_files()
                if self._load_on_top(cached, listed):
                    self._prefer_live(trashed)
                    return []
        loader = IndexLoader()
        damaged: list[str] = []
        exact = True  # the index is exactly what the listed files hold
        for _attempt in range(3):
            missing = False
            names = listed if listed is not None else self.list_index_files()
            listed = None
            for name, got in fetch_each(names, lambda n: self.load_object(n, T_INDEX)):
                try:
                    if isinstance(got, BaseException):
                        raise got
                    loader.add_file(got, name)
                except ObjectNotFound:
                    missing = True
                    continue
                except IntegrityError as exc:
                    if strict:
                        raise
                    damaged.append(name)
                    self.warn(
                        name,
                        f"skipped a damaged index file ({exc.message}); "
                        "'safehold repair index' rebuilds it",
                    )
                    exact = False  # never cache an index that lacks a file's packs
                    continue
            if not missing:
                break
            # Packs of the vanished files stay loaded (harmless for this process), so this
            # index is no longer the one the listed files describe: do not cache it.
            exact = False
        self.index = loader.finish()
        self.index_loaded = True
        if cache is not None and exact:
            self._cache_index(names)
        self._prefer_live(trashed)
        return damaged

    def _load_on_top(self, cached: CachedIndex, names: list[str]) -> bool:
        """Use the cached index plus the index files listed since (``names`` is the
        listing); False when one of its files is gone or one listed since vanished before
        it was read."""
        if not cached.names.issubset(names):
            return False
        index = cached.index
        extra = [n for n in names if n not in cached.names]
        for name, got in fetch_each(extra, lambda n: self.load_object(n, T_INDEX)):
            if isinstance(got, (ObjectNotFound, IntegrityError)):
                return False  # the full load skips (and names) a damaged file
            if isinstance(got, BaseException):
                raise got
            try:
                records = decode_index(got, name)
            except IntegrityError:
                return False
            for rec in records:
                index.add_pack(rec)
        self.index = index
        self.index_loaded = True
        if extra:
            self._cache_index(names)
        else:
            self._index_base = (set(names), index.copy())
        return True

    def _cache_index(self, names: Iterable[str]) -> None:
        assert self.index_cache is not None
        self.index_cache.save(self.aead, names, self.index)
        self._index_base = (set(names), self.index.copy())

    def use_index_cache(self, root: Path) -> None:
        """Keep the loaded index in ``root`` (see :mod:`safehold.repository.index_cache`)."""
        self.index_cache = IndexCache(root, self.config.repo_id)

    def update_index_cache(self) -> None:
        """Cache the index as loaded plus the index files this process wrote since (the
        end of a backup), so that the next command finds it whole. Packs this process added
        to its index without writing an index file for them are not included."""
        if self.index_cache is None or self._index_base is None or not self._index_written:
            return
        names, base = self._index_base
        self.index_cache.save(self.aead, names, base)
        self._index_written = False

    def write_index(self, records: Iterable[PackRecord]) -> str:
        """Store an index file listing ``records``; returns its name."""
        return self.write_index_sections([encode_section(rec) for rec in records])

    def write_index_sections(self, sections: list[bytes]) -> str:
        """Store an index file of these packs' sections (:func:`encode_section`); returns
        its name."""
        name = self.save_object("index/", T_INDEX, index_file(sections))
        if self._index_base is not None:
            names, base = self._index_base
            for section in sections:
                base.add_section(section)
            names.add(name)
            self._index_written = True
        return name

    def list_packs(self) -> dict[PackId, int]:
        """Every stored pack and its size in bytes (objects not named like a pack are left out)."""
        out = {}
        for obj in self.storage.list("data/"):
            name = obj.name.rsplit("/", 1)[-1]
            if obj.name.startswith(".") or len(name) != 64:
                continue
            with contextlib.suppress(ValueError):
                out[PackId(bytes.fromhex(name))] = obj.size
        return out

    def read_pack_header(self, pack_id: PackId, size: int) -> PackRecord:
        """A pack's record read from its own header (for packs no index lists); raises
        :class:`FormatError` or :class:`IntegrityError` for a damaged one."""
        name = pack_name(pack_id)
        tail_len = min(size, 64 * 1024)
        tail = self.storage.get(name, size - tail_len, tail_len)
        hlen = parse_trailer(tail[-TRAILER_LEN:], size, name)
        if hlen + TRAILER_LEN <= len(tail):
            sealed = tail[len(tail) - TRAILER_LEN - hlen : len(tail) - TRAILER_LEN]
        else:
            sealed = self.storage.get(name, size - TRAILER_LEN - hlen, hlen)
        if size == len(tail):
            check_pack_start(tail[:4], name)
        chain_id, entries = parse_header(self.aead, sealed, name)
        return PackRecord(pack_id, chain_id, size, tuple(entries))

    def index_unindexed_packs(
        self,
        *,
        exclude: set[PackId] | None = None,
        on_error: Callable[[str, Exception], None] | None = None,
    ) -> int:
        """Find packs that no index lists (left by an interrupted or concurrent backup),
        add them to the index and write an index file for them, so their blobs are reused.
        Returns how many packs were added."""
        found = []
        for pack_id, size in self.list_packs().items():
            if pack_id in self.index.packs or (exclude and pack_id in exclude):
                continue
            try:
                rec = self.read_pack_header(pack_id, size)
            except (SafeholdError, ValueError) as exc:
                # A damaged pack is ignored for reuse; check reports it.
                if on_error:
                    on_error(pack_name(pack_id), exc)
                continue
            found.append(rec)
            self.index.add_pack(rec)
        if found:
            self.write_index(found)
        return len(found)

    # --- blobs -----------------------------------------------------------------------------

    def blob_id(self, data: bytes | memoryview) -> BlobId:
        """The id of a blob of ``data``: the keyed hash, as the saver computes it."""
        return self.master.blob_id(data)

    def open_blob(
        self, blob_id: BlobId, sealed: bytes | memoryview, raw_length: int, where: str
    ) -> bytes:
        """Decrypt, decompress and verify one blob read from ``where``."""
        if not sealed:
            raise IntegrityError(f"blob {blob_id.hex()[:8]} in {where} is empty")
        comp = bytes(sealed[:1])
        plain = self.aead.open(
            memoryview(sealed)[1:], blob_id + comp, what=f"blob {blob_id.hex()[:8]} in {where}"
        )
        data = decompress(comp[0], plain, raw_length)
        self._verify(blob_id, data, where)
        return data

    def open_blob_into(
        self,
        blob_id: BlobId,
        sealed: bytes | memoryview,
        raw_length: int,
        where: str,
        scratch: bytearray,
    ) -> bytes | memoryview:
        """:meth:`open_blob`, decrypting into ``scratch``, a buffer the caller owns of at
        least ``len(sealed)`` bytes: no plaintext object is allocated per blob. A blob
        stored uncompressed comes back as a view of ``scratch``, valid until the caller
        reuses it. Same checks, same errors."""
        if not sealed:
            raise IntegrityError(f"blob {blob_id.hex()[:8]} in {where} is empty")
        comp = bytes(sealed[:1])
        plain = self.aead.open_into(
            memoryview(sealed)[1:],
            blob_id + comp,
            scratch,
            what=f"blob {blob_id.hex()[:8]} in {where}",
        )
        data = plain if comp[0] == COMP_NONE else decompress(comp[0], plain, raw_length)
        self._verify(blob_id, data, where)
        return data

    def open_blob_exact(
        self,
        blob_id: BlobId,
        sealed: bytes | memoryview,
        where: str,
        scratch: bytearray,
        out: memoryview,
    ) -> memoryview:
        """:meth:`open_blob_into` for a blob whose plaintext is ``len(out)`` bytes (the
        index's raw length), put exactly in ``out``: the caller chooses where it lands
        (restore aligns large blobs for direct writes). Returns ``out``. Same checks."""
        if not sealed:
            raise IntegrityError(f"blob {blob_id.hex()[:8]} in {where} is empty")
        comp = bytes(sealed[:1])
        what = f"blob {blob_id.hex()[:8]} in {where}"
        if comp[0] == COMP_NONE:
            plain = self.aead.open_into(memoryview(sealed)[1:], blob_id + comp, out, what=what)
            if len(plain) != len(out):  # (so ``plain`` is ``out``)
                raise IntegrityError(f"{what} has {len(plain)} bytes, the index says {len(out)}")
        else:
            plain = self.aead.open_into(memoryview(sealed)[1:], blob_id + comp, scratch, what=what)
            decompress_into(comp[0], plain, out)
        self._verify(blob_id, out, where)
        return out

    def _verify(self, blob_id: BlobId, data: bytes | memoryview, where: str) -> None:
        if self.master.blob_id(data) != blob_id:
            raise IntegrityError(f"blob {blob_id.hex()[:8]} in {where} does not match its id")

    def locate(self, blob_id: BlobId) -> Location | None:
        """Where a blob is: its first copy in the index, else in packs kept apart for
        reading only (a writer's view leaves prune's trash out of its index), else in the
        index files loaded again after a pack went missing (:meth:`relocate`)."""
        loc = self.index.lookup(blob_id)
        if loc is None and self.read_only_packs is not None:
            loc = self.read_only_packs.lookup(blob_id)
        fresh = self._fresh_index
        if loc is None and fresh is not None:
            loc = fresh.lookup(blob_id)
        return loc

    def load_blob(self, blob_id: BlobId) -> bytes:
        """A blob's plaintext, verified; raises :class:`IntegrityError` if no index lists it or no
        copy is left."""
        loc = self.locate(blob_id)
        if loc is None:
            raise IntegrityError(
                f"blob {blob_id.hex()[:8]} is not in the index",
                hint="run 'safehold repair index', then 'safehold check'",
            )
        try:
            sealed = self.storage.get(pack_name(loc.pack_id), loc.offset, loc.length)
        except ObjectNotFound:
            loc = self.relocate(blob_id, loc.pack_id)
            sealed = self.storage.get(pack_name(loc.pack_id), loc.offset, loc.length)
        return self.open_blob(blob_id, sealed, loc.raw_length, pack_name(loc.pack_id))

    def relocate(self, blob_id: BlobId, missing: PackId) -> Location:
        """Another copy of a blob whose pack ``missing`` is gone, from the index files as
        they are now; raises :class:`IntegrityError` (damage: exit 4) if none is indexed.

        A pack can vanish under a reader whose index is older than the copy it should now
        read: prune's sweep deletes a trashed pack once every blob a snapshot needs from
        it has a live copy, and a backup may have written that copy after this process
        loaded its index. Index files listing the live copy exist before the sweep decides
        (docs/format.md, "Prune"), so loading them again finds it.
        """
        with self._relocate_lock:
            if missing not in self._missing_packs or self._fresh_index is None:
                self._missing_packs.add(missing)
                self.index.remove_pack(missing)
                fresh = Index()
                for name, got in fetch_each(
                    self.list_index_files(), lambda n: self.load_object(n, T_INDEX)
                ):
                    if isinstance(got, SafeholdError):
                        continue  # gone or damaged: what is left is all there is
                    try:
                        records = decode_index(got, name)
                    except IntegrityError:
                        continue
                    for rec in records:
                        if rec.pack_id not in self._missing_packs:
                            fresh.add_pack(rec)
                self._fresh_index = fresh
            for pack_id in self._missing_packs:
                self._fresh_index.remove_pack(pack_id)
            loc = self._fresh_index.lookup(blob_id)
        if loc is None:
            raise IntegrityError(
                f"blob {blob_id.hex()[:8]}: its pack {pack_name(missing)} is missing from the "
                "storage, and no index lists another copy",
                hint="run 'safehold check' to see what depends on it, then 'safehold repair index'",
            )
        return loc

    def load_tree_blob(self, blob_id: BlobId) -> bytes:
        """A tree blob, read through a cache of whole tree packs.

        Trees live in packs of their own (the saver keeps one open pack per blob type), and
        a walk visits many trees of few packs: on remote storage one read per folder is
        what made a re-backup slow, one read per pack is cheap (packs are closed near the
        repository's pack size). The cache holds at most TREE_PACK_CACHE bytes.
        """
        loc = self.locate(blob_id)
        if loc is None:
            return self.load_blob(blob_id)  # raises the usual "not in the index" error
        name = pack_name(loc.pack_id)
        with self._tree_pack_lock:
            pack = self._tree_packs.get(loc.pack_id)
            if pack is not None:
                self._tree_packs.move_to_end(loc.pack_id)
        if pack is None:
            try:
                pack = self.storage.get(name)
            except ObjectNotFound:
                return self.load_blob(blob_id)  # finds another copy, or says none is left
            with self._tree_pack_lock:
                if loc.pack_id not in self._tree_packs:
                    self._tree_packs[loc.pack_id] = pack
                    self._tree_pack_bytes += len(pack)
                while self._tree_pack_bytes > TREE_PACK_CACHE and len(self._tree_packs) > 1:
                    _old, dropped = self._tree_packs.popitem(last=False)
                    self._tree_pack_bytes -= len(dropped)
        if loc.offset + loc.length > len(pack):
            return self.load_blob(blob_id)  # the pack changed under us; read it exactly
        sealed = pack[loc.offset : loc.offset + loc.length]
        try:
            return self.open_blob(blob_id, sealed, loc.raw_length, name)
        except IntegrityError:
            # Damaged in the cached copy (or in transit): forget it, read this blob again.
            with self._tree_pack_lock:
                self._tree_pack_bytes -= len(self._tree_packs.pop(loc.pack_id, b""))
            return self.load_blob(blob_id)

    def load_tree(self, tree_id: HexId) -> list[Node]:
        """A tree's nodes, decoded and checked (names included), through a small cache
        (bounded in trees and in nodes: :data:`TREE_CACHE`, :data:`TREE_CACHE_NODES`)."""
        cache = self._tree_cache
        with self._tree_lock:
            cached = cache.get(tree_id)
            if cached is not None:
                cache.move_to_end(tree_id)
                return cached
        nodes = decode_tree(self.load_tree_blob(blob_from_hex(tree_id)), f"tree {tree_id[:8]}")
        if len(nodes) > TREE_CACHE_NODES:
            return nodes
        with self._tree_lock:
            if tree_id in cache:  # another thread decoded it meanwhile
                return cache[tree_id]
            cache[tree_id] = nodes
            self._tree_cache_nodes += len(nodes)
            while len(cache) > TREE_CACHE or self._tree_cache_nodes > TREE_CACHE_NODES:
                self._tree_cache_nodes -= len(cache.popitem(last=False)[1])
        return nodes

    def load_tree_json(self, tree_id: HexId) -> list[dict[str, Any]]:
        """A tree's nodes as JSON objects, uncached (each is read once by a backup)."""
        return decode_tree_json(self.load_tree_blob(blob_from_hex(tree_id)), f"tree {tree_id[:8]}")

    # --- snapshots -------------------------------------------------------------------------

    def save_snapshot(self, snap: Snapshot) -> SnapshotId:
        """Store ``snap`` (its packs and index must be stored already); sets and returns its id."""
        name = self.save_object("snapshots/", T_SNAPSHOT, snap.encode())
        snap.id = SnapshotId(name.removeprefix("snapshots/"))
        return snap.id

    def list_snapshot_ids(self) -> list[SnapshotId]:
        """The ids of every stored snapshot, readable or not."""
        return [
            SnapshotId(o.name.removeprefix("snapshots/")) for o in self.storage.list("snapshots/")
        ]

    def load_snapshot(self, snap_id: SnapshotId) -> Snapshot:
        """Snapshot ``snap_id``; raises :class:`ObjectNotFound` if it is gone,
        :class:`IntegrityError` if it cannot be read."""
        raw = self.load_object("snapshots/" + snap_id, T_SNAPSHOT)
        return Snapshot.decode(raw, snap_id)

    def list_snapshots(self, *, damaged: list[SnapshotId] | None = None) -> list[Snapshot]:
        """Every readable snapshot, oldest first. One that cannot be read (damaged, junk)
        is skipped with a warning: it costs its own restore, not everyone else's. Its id
        goes to ``damaged`` for callers that must not go on without it (prune)."""
        snaps = []
        for sid, got in fetch_each(self.list_snapshot_ids(), self.load_snapshot):
            if isinstance(got, ObjectNotFound):  # forgotten while we listed
                continue
            if isinstance(got, IntegrityError):
                if damaged is not None:
                    damaged.append(sid)
                self.warn(f"snapshots/{sid}", f"skipped a damaged snapshot ({got.message})")
                continue
            if isinstance(got, BaseException):
                raise got
            snaps.append(got)
        snaps.sort(key=lambda s: (s.time, s.id))
        return snaps

    def find_snapshot(
        self,
        ref: str,
        *,
        host: str | None = None,
        paths: list[str] | None = None,
        tags: list[str] | None = None,
        snapshots: list[Snapshot] | None = None,
    ) -> Snapshot:
        """``ref`` is ``latest`` (newest matching the filters) or an id prefix."""
        snaps = snapshots if snapshots is not None else self.list_snapshots()
        if ref == "latest":
            cands = [s for s in snaps if _matches(s, host, paths, tags)]
            if not cands:
                raise SnapshotNotFound("no snapshot matches", hint="see 'safehold snapshots'")
            return cands[-1]
        found = [s for s in snaps if s.id.startswith(ref)]
        if not found:
            # Skipped because it cannot be read? Then it is damage (exit 4), not a typo.
            damaged = [i for i in self.list_snapshot_ids() if i.startswith(ref)]
            if len(damaged) == 1:
                try:
                    self.load_snapshot(damaged[0])
                except IntegrityError as exc:
                    raise IntegrityError(
                        f"snapshots/{damaged[0]} cannot be read: {exc.message}",
                        hint="restore it from a copy of the repository ('safehold copy'); "
                        "'safehold forget' removes it",
                    ) from exc
                except ObjectNotFound:
                    pass
            raise SnapshotNotFound(f"no snapshot with id {ref!r}", hint="see 'safehold snapshots'")
        if len(found) > 1:
            raise UsageError(f"snapshot id {ref!r} is ambiguous", hint="give more digits")
        return found[0]

    def confirm_snapshot(self, snap: Snapshot) -> None:
        """Raise :class:`SnapshotNotFound` if ``snap`` is no longer stored. A reader calls
        this once it holds its lock: a snapshot that exists then keeps its data until the
        lock is released (docs/format.md, "Prune"); one chosen before the lock may have
        been forgotten, and its data pruned, meanwhile."""
        try:
            self.storage.stat("snapshots/" + snap.id)
        except ObjectNotFound:
            raise SnapshotNotFound(
                f"snapshot {snap.short_id} was forgotten before it could be read",
                hint="see 'safehold snapshots' for what is there now",
            ) from None

    def delete_snapshot(self, snap_id: SnapshotId) -> None:
        """Delete snapshot ``snap_id`` (its data stays until a prune)."""
        self.storage.delete("snapshots/" + snap_id)

    # --- chains ----------------------------------------------------------------------------

    def finish_chain(self, chain: HexId) -> None:
        """Mark ``chain`` finished: the next backup of its source starts a new chain."""
        doc = {"finished": self.clock.now().isoformat()}
        self.storage.put(
            f"chains/{chain}", seal_object(self.aead, T_CHAIN, json.dumps(doc).encode())
        )

    def finished_chains(self) -> set[HexId]:
        """The ids of every finished chain."""
        return {HexId(o.name.removeprefix("chains/")) for o in self.storage.list("chains/")}


# Remote stores answer one small read in tens of milliseconds: index files and snapshots
# are fetched this many at a time, so opening a repository costs a few round trips, not
# one per object.
FETCHERS = 8
T = TypeVar("T")
K = TypeVar("K", bound=str)


def fetch_each(
    names: Sequence[K], fetch: Callable[[K], T], *, workers: int = FETCHERS
) -> Iterator[tuple[K, T | SafeholdError]]:
    """``fetch(name)`` for every name, in order, at most ``2 * workers`` ahead of the
    consumer (so memory stays bounded). A SafeholdError is returned in place of its
    result, for the caller to skip or raise; anything else propagates."""

    def attempt(name: K) -> T | SafeholdError:
        try:
            return fetch(name)
        except SafeholdError as exc:
            return exc

    if len(names) <= 1:
        for name in names:
            yield name, attempt(name)
        return
    window: deque[tuple[K, Future[T | SafeholdError]]] = deque()
    with ThreadPoolExecutor(min(workers, len(names)), thread_name_prefix="fetch") as pool:
        todo = iter(names)
        try:
            for name in todo:
                window.append((name, pool.submit(attempt, name)))
                if len(window) >= 2 * workers:
                    done_name, future = window.popleft()
                    yield done_name, future.result()
            while window:
                done_name, future = window.popleft()
                yield done_name, future.result()
        finally:
            for _name, future in window:
                future.cancel()


def _matches(
    s: Snapshot, host: str | None, paths: list[str] | None, tags: list[str] | None
) -> bool:
    if host and s.hostname != host:
        return False
    if paths and sorted(s.paths) != sorted(paths):
        return False
    return not (tags and not set(tags) <= set(s.tags))


def _exists(storage: Storage, name: str) -> bool:
    try:
        storage.stat(name)
    except ObjectNotFound:
        return False
    return True
