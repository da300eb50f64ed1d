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
"""

from __future__ import annotations

import json
import math
import random
import re
from collections import OrderedDict
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from safehold.crypto.keys import key_file_meta
from safehold.errors import IntegrityError, ObjectNotFound, SafeholdError, UsageError
from safehold.repository import lock as lockmod
from safehold.repository import tree as t
from safehold.repository.format import BLOB_DATA, BLOB_TREE, T_CONFIG, T_INDEX, open_object
from safehold.repository.format import storage_id as hash_name
from safehold.repository.index import Index, PackRecord, decode_index
from safehold.repository.pack import (
    TRAILER_LEN,
    PackEntry,
    check_pack_start,
    parse_header,
    parse_trailer,
)
from safehold.repository.repository import RepoConfig, Repository, pack_name
from safehold.repository.snapshot import Snapshot
from safehold.repository.trash import trashed_packs

__all__ = [
    "ERROR",
    "NOTE",
    "WARNING",
    "CheckOptions",
    "CheckReport",
    "Problem",
    "ProgressSink",
    "Subset",
    "check_repository",
    "parse_subset",
    "stale_lock_notes",
]

ERROR = "error"
WARNING = "warning"
NOTE = "note"
_SEVERITIES = (ERROR, WARNING, NOTE)

# Paths listed per snapshot; the rest are counted, so that one lost pack shared by a
# thousand files does not bury every other finding.
MAX_PATHS = 20
TREE_CACHE = 4096
MAX_GROUPS = 256  # groups are chosen by the first byte of the pack id

_BLOCKING = frozenset({"blob-missing", "pack-missing", "blob-damaged"})
_TYPE_NAMES = {BLOB_DATA: "data blob", BLOB_TREE: "tree"}

_LOST_HINT = (
    "restore this path from another snapshot or another copy of the repository; "
    "'safehold forget' snapshots that cannot be repaired"
)
_HINTS = {
    "blob-unindexed": "run 'safehold repair index'",
    "blob-missing": _LOST_HINT,
    "pack-missing": _LOST_HINT,
    "pack-size": _LOST_HINT,
    "blob-damaged": _LOST_HINT,
    "tree-damaged": _LOST_HINT,
    "blob-type": _LOST_HINT,
    "blob-other-chain": "keep the other chain's snapshots until this snapshot is forgotten; "
    "the next backup in this chain stores its own copy of changed files only",
}


class ProgressSink(Protocol):
    """The part of the engine's progress events that checking and repairing need."""

    def start(self, phase: str, total_items: int = 0, total_bytes: int = 0) -> None: ...

    def advance(self, items: int = 0, nbytes: int = 0) -> None: ...

    def finish(self) -> None: ...


class _NoProgress:
    def start(self, phase: str, total_items: int = 0, total_bytes: int = 0) -> None:
        pass

    def advance(self, items: int = 0, nbytes: int = 0) -> None:
        pass

    def finish(self) -> None:
        pass


# --- options -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Subset:
    """Which packs a partial ``--read-data`` reads.

    ``n/t`` (``group``/``groups``): the packs whose first id byte modulo t is n - 1, so that
    running 1/t, 2/t ... t/t (say one a day) reads every pack exactly once; pack ids are
    hashes, so the groups are about equal. ``percent``: that share of the packs, at random,
    rounded up.
    """

    group: int = 0
    groups: int = 0
    percent: float = 0.0

    def selects(self, pack_id: bytes) -> bool:
        """Whether the ``n/t`` group holds ``pack_id`` (always False for a percentage)."""
        return bool(self.groups) and pack_id[0] % self.groups == self.group - 1

    def select(self, pack_ids: Iterable[bytes]) -> list[bytes]:
        ids = sorted(pack_ids)
        if self.groups:
            return [p for p in ids if self.selects(p)]
        k = math.ceil(len(ids) * self.percent / 100)
        return sorted(random.sample(ids, k))

    def describe(self) -> str:
        return f"{self.group}/{self.groups}" if self.groups else f"{self.percent:g}%"


_GROUP_RE = re.compile(r"(\d+)/(\d+)")
_PERCENT_RE = re.compile(r"(\d+(?:\.\d*)?|\.\d+)%")


def parse_subset(spec: str) -> Subset:
    """``n/t`` or ``x%``; anything else is a :class:`UsageError` that says what to write."""
    text = spec.strip()
    hint = (
        "give n/t to read the n-th of t groups of packs (1/7 ... 7/7 over a week read "
        "everything), or a percentage such as 10% to read that share at random"
    )
    if m := _GROUP_RE.fullmatch(text):
        n, total = int(m[1]), int(m[2])
        if not 1 <= total <= MAX_GROUPS:
            raise UsageError(
                f"invalid --read-data-subset {spec!r}: t must be 1 to {MAX_GROUPS}", hint=hint
            )
        if not 1 <= n <= total:
            raise UsageError(
                f"invalid --read-data-subset {spec!r}: n must be 1 to {total}", hint=hint
            )
        return Subset(group=n, groups=total)
    if m := _PERCENT_RE.fullmatch(text):
        pct = float(m[1])
        if not 0 < pct <= 100:
            raise UsageError(
                f"invalid --read-data-subset {spec!r}: the percentage must be above 0 and "
                "at most 100",
                hint=hint,
            )
        return Subset(percent=pct)
    raise UsageError(f"invalid --read-data-subset {spec!r}", hint=hint)


@dataclass(frozen=True, kw_only=True)
class CheckOptions:
    read_data: bool = False
    subset: Subset | None = None  # implies read_data
    threads: int = 4  # packs downloaded at once


# --- results -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Problem:
    """One finding: the object it is about, what is wrong and what it means."""

    severity: str  # ERROR, WARNING or NOTE
    code: str  # stable, for scripts: "pack-missing", "index-damaged", ...
    subject: str  # the object as a person looks for it: "data/ab/ab12...", "snapshot 1a2b3c4d /x"
    message: str
    hint: str = ""  # what to do about it
    pack: str = ""  # hex id of the pack involved, if any
    snapshot: str = ""  # id of the snapshot involved, if any
    path: str = ""  # path inside that snapshot

    def __str__(self) -> str:
        return f"{self.subject}: {self.message}"

    def to_json(self) -> dict[str, str]:
        return {k: v for k, v in asdict(self).items() if v}


@dataclass
class CheckReport:
    problems: list[Problem] = field(default_factory=list)
    snapshots: int = 0
    trees: int = 0  # distinct trees loaded and decoded
    blobs: int = 0  # distinct data blobs referenced by those trees
    packs: int = 0  # packs stored
    index_files: int = 0
    read_data: str = ""  # "" (structure only), "all", or the subset, e.g. "1/7"
    packs_read: int = 0
    bytes_read: int = 0
    read_pack_ids: list[bytes] = field(default_factory=list)  # kept out of JSON: long

    def _of(self, severity: str) -> list[Problem]:
        return [p for p in self.problems if p.severity == severity]

    @property
    def errors(self) -> list[Problem]:
        return self._of(ERROR)

    @property
    def warnings(self) -> list[Problem]:
        return self._of(WARNING)

    @property
    def notes(self) -> list[Problem]:
        return self._of(NOTE)

    @property
    def ok(self) -> bool:
        return not self.errors

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "errors": [p.to_json() for p in self.errors],
            "warnings": [p.to_json() for p in self.warnings],
            "notes": [p.to_json() for p in self.notes],
            "counts": {
                "snapshots": self.snapshots,
                "trees": self.trees,
                "blobs": self.blobs,
                "packs": self.packs,
                "index_files": self.index_files,
                "packs_read": self.packs_read,
                "bytes_read": self.bytes_read,
            },
            "read_data": self.read_data or None,
        }


# --- locks ---------------------------------------------------------------------------------


def stale_lock_notes(repo: Repository) -> list[Problem]:
    """Notes about stale locks. Call before taking a lock: taking one removes them."""
    now = repo.clock.now()
    return [
        Problem(
            NOTE,
            "lock-stale",
            info.name,
            f"stale {info.describe()}: that process is gone or stopped refreshing its "
            "lock, so the lock was removed",
        )
        for info in lockmod.list_locks(repo.storage, repo.aead)
        if lockmod.is_stale(info, now)
    ]


# --- the check -----------------------------------------------------------------------------


@dataclass(slots=True)
class _Issue:
    path: str  # relative to the tree it was found under; "" is that tree itself
    code: str
    message: str
    pack: bytes = b""


class _Found:
    """Problems found below one tree: the first :data:`MAX_PATHS`, and how many in all."""

    __slots__ = ("items", "total")

    def __init__(self) -> None:
        self.items: list[_Issue] = []
        self.total = 0

    def add(self, issue: _Issue) -> None:
        self.total += 1
        if len(self.items) < MAX_PATHS:
            self.items.append(issue)

    def extend(self, other: _Found, prefix: str) -> None:
        room = MAX_PATHS - len(self.items)
        self.items.extend(
            _Issue(prefix + i.path, i.code, i.message, i.pack) for i in other.items[:room]
        )
        self.total += other.total


_CLEAN = _Found()


@dataclass
class _PackResult:
    pack_id: bytes
    nbytes: int = 0
    problems: list[Problem] = field(default_factory=list)
    damaged: list[bytes] = field(default_factory=list)  # ids of blobs that failed to open

    def problem(self, code: str, name: str, message: str, hint: str = "") -> None:
        self.problems.append(Problem(ERROR, code, name, message, hint, self.pack_id.hex()))


def check_repository(
    repo: Repository, opts: CheckOptions | None = None, progress: ProgressSink | None = None
) -> CheckReport:
    """Check ``repo`` (the caller holds a lock). Never changes the repository.

    Damage is reported, never raised. A storage failure that outlasts the retries is
    raised: a check that could not read everything must not look like a clean one.
    """
    return _Checker(repo, opts or CheckOptions(), progress or _NoProgress()).run()


class _Checker:
    def __init__(self, repo: Repository, opts: CheckOptions, progress: ProgressSink) -> None:
        self.repo = repo
        self.opts = opts
        self.progress = progress
        self.report = CheckReport()
        self.index = Index()
        self.index_file_of: dict[bytes, str] = {}
        # Headers of readable packs no index lists: lets the walk go on past a lost index
        # file and say which pack still holds a blob the index forgot.
        self.extra = Index()
        self.needed_extra: set[bytes] = set()
        self.listed: dict[bytes, int] = {}
        self.trashed: set[bytes] = set()
        self.bad_packs: dict[bytes, tuple[str, str]] = {}  # pack id -> (code, why)
        self.bad_blobs: set[tuple[bytes, bytes]] = set()  # (blob id, pack id), from read-data
        self.memo: dict[tuple[bytes, bytes], _Found] = {}  # (tree id, chain id)
        self.trees: OrderedDict[bytes, list[t.Node]] = OrderedDict()
        self.tree_ids: set[bytes] = set()
        self.blob_ids: set[bytes] = set()

    def add(self, severity: str, code: str, subject: str, message: str, **kw: str) -> None:
        self.report.problems.append(Problem(severity, code, subject, message, **kw))

    def run(self) -> CheckReport:
        self.check_config_and_keys()
        snap_ids = sorted(self.repo.list_snapshot_ids())
        self.load_index()
        self.check_packs()
        if self.opts.read_data or self.opts.subset is not None:
            self.read_data()
        self.check_snapshots(snap_ids)
        self.unindexed_warnings()
        self.report.trees = len(self.tree_ids)
        self.report.blobs = len(self.blob_ids)
        order = {s: i for i, s in enumerate(_SEVERITIES)}
        self.report.problems.sort(key=lambda p: order[p.severity])  # stable within a severity
        return self.report

    # --- config, keys, index, packs --------------------------------------------------------

    def check_config_and_keys(self) -> None:
        storage = self.repo.storage
        try:
            raw = storage.get("config")
            RepoConfig.from_json(json.loads(open_object(self.repo.aead, raw, T_CONFIG, "config")))
        except (IntegrityError, ObjectNotFound, ValueError, KeyError, TypeError) as exc:
            msg = f"the repository config cannot be read: {_why(exc)}"
            hint = "restore the config object from a copy of the repository"
            self.add(ERROR, "config-damaged", "config", msg, hint=hint)
        names = sorted(o.name for o in storage.list("keys/"))
        if self.repo.key_name and self.repo.key_name not in names:
            msg = "the key file this check was opened with is gone"
            hint = "add a key with 'safehold key add' while the repository still opens"
            self.add(ERROR, "key-missing", self.repo.key_name, msg, hint=hint)
        for name in names:
            try:
                raw = storage.get(name)
                if hash_name(raw) != name.removeprefix("keys/"):
                    raise IntegrityError(f"{name} does not match its name")
                key_file_meta(raw)
            except ObjectNotFound:
                continue  # removed while we listed
            except IntegrityError as exc:
                msg = f"the key file is damaged ({exc.message}): its password no longer opens it"
                hint = "add a new key with 'safehold key add', then remove this one"
                self.add(ERROR, "key-damaged", name, msg, hint=hint)

    def load_index(self) -> None:
        loaded: set[str] = set()
        # Prune writes a replacement index before deleting the old file: when a file
        # vanishes under us, a fresh listing shows what replaced it.
        for _attempt in range(3):
            vanished = False
            for name in self.repo.list_index_files():
                if name in loaded:
                    continue
                try:
                    records = decode_index(self.repo.load_object(name, T_INDEX), name)
                except ObjectNotFound:
                    vanished = True
                    continue
                except IntegrityError as exc:
                    records = []
                    msg = (
                        f"the index file is damaged ({exc.message}); "
                        "the packs it lists are unknown until the index is rebuilt"
                    )
                    hint = "run 'safehold repair index': it rebuilds the index from the packs"
                    self.add(ERROR, "index-damaged", name, msg, hint=hint)
                loaded.add(name)
                for rec in records:
                    self.index.add_pack(rec)
                    self.index_file_of.setdefault(rec.pack_id, name)
            if not vanished:
                break
        self.report.index_files = len(loaded)

    def check_packs(self) -> None:
        self.listed = self.repo.list_packs()
        self.report.packs = len(self.listed)
        try:
            self.trashed = trashed_packs(self.repo)
        except IntegrityError as exc:
            msg = f"a trash record is damaged ({exc.message}); its packs show up as unindexed"
            self.add(ERROR, "trash-damaged", "trash/", msg)
        for pack_id, rec in sorted(self.index.packs.items()):
            where = self.index_file_of.get(pack_id, "the index")
            size = self.listed.get(pack_id)
            if size is None:
                self.bad_packs[pack_id] = ("pack-missing", "is missing")
                msg = (
                    f"the pack is missing; {where} lists it with {len(rec.entries)} blobs, "
                    "lost unless another pack holds them (the snapshots and paths that need "
                    "them are listed)"
                )
                self.add(ERROR, "pack-missing", pack_name(pack_id), msg, pack=pack_id.hex())
            elif size != rec.size:
                self.bad_packs[pack_id] = ("pack-size", "has the wrong size")
                msg = (
                    f"the pack is {size} bytes but {where} records {rec.size}: "
                    "it was truncated or overwritten"
                )
                hint = "run 'safehold check --read-data' to see which blobs survive"
                self.add(ERROR, "pack-size", pack_name(pack_id), msg, hint=hint, pack=pack_id.hex())
        for pack_id in sorted(self.listed):
            if pack_id not in self.index.packs and pack_id not in self.trashed:
                self._unindexed(pack_id)

    def _unindexed(self, pack_id: bytes) -> None:
        name = pack_name(pack_id)
        try:
            rec = self.repo.read_pack_header(pack_id, self.listed[pack_id])
        except ObjectNotFound:
            return  # deleted since the listing
        except IntegrityError as exc:
            msg = (
                f"the pack is in no index and its header cannot be read ({exc.message}); "
                "'safehold repair index' leaves it out"
            )
            self.add(WARNING, "pack-unindexed-damaged", name, msg, pack=pack_id.hex())
            return
        self.extra.add_pack(rec)

    def unindexed_warnings(self) -> None:
        """After the walk, which tells a lost index (snapshots need the pack) from an
        interrupted backup (nothing does yet)."""
        for pack_id, rec in sorted(self.extra.packs.items()):
            if pack_id in self.needed_extra:
                why = "its index file was lost or damaged: snapshots need its blobs"
                hint = "'safehold repair index' adds it back"
            else:
                why = "left by an interrupted backup"
                hint = "the next backup or 'safehold repair index' adopts it"
            msg = f"the pack is in no index ({why}); it holds {len(rec.entries)} blob(s); {hint}"
            self.add(WARNING, "pack-unindexed", pack_name(pack_id), msg, pack=pack_id.hex())

    # --- reading data ----------------------------------------------------------------------

    def read_data(self) -> None:
        # Packs in the trash and in no index are garbage waiting for prune: not worth reading.
        candidates = [p for p in self.listed if p in self.index.packs or p not in self.trashed]
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

    def _read_pack(self, pack_id: bytes) -> _PackResult:
        """Runs in a worker thread: touches only its own result and read-only state."""
        name = pack_name(pack_id)
        res = _PackResult(pack_id)
        try:
            raw = self.repo.storage.get(name)
        except ObjectNotFound:
            res.problem("pack-missing", name, "the pack vanished while being checked")
            return res
        res.nbytes = len(raw)
        if hash_name(raw) != pack_id.hex():
            msg = (
                "the pack's content does not match its name (its BLAKE3 hash): "
                "it was damaged after it was written"
            )
            res.problem("pack-hash", name, msg)
        chain_id, header = self._parse_pack(raw, name, res)
        rec = self.index.packs.get(pack_id)
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
    ) -> tuple[bytes, list[PackEntry] | None]:
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
            return b"", None

    # --- snapshots and trees ---------------------------------------------------------------

    def check_snapshots(self, snap_ids: list[str]) -> None:
        self.progress.start("check", len(snap_ids))
        try:
            for sid in snap_ids:
                try:
                    snap = self.repo.load_snapshot(sid)
                    chain, root = bytes.fromhex(snap.chain), bytes.fromhex(snap.tree)
                except ObjectNotFound:
                    continue  # forgotten while we worked
                except (IntegrityError, ValueError) as exc:
                    msg = f"the snapshot is damaged ({_why(exc)}); its data cannot be found"
                    self.add(ERROR, "snapshot-damaged", f"snapshots/{sid}", msg, snapshot=sid)
                    continue
                self.report.snapshots += 1
                self.check_snapshot(snap, chain, root)
                self.progress.advance(1)
        finally:
            self.progress.finish()

    def check_snapshot(self, snap: Snapshot, chain: bytes, root: bytes) -> None:
        found = self.tree(root, chain)
        for issue in found.items:
            path = issue.path or "/"
            self.add(
                ERROR,
                issue.code,
                f"snapshot {snap.short_id} {path}",
                issue.message,
                hint=_HINTS.get(issue.code, ""),
                pack=issue.pack.hex(),
                snapshot=snap.id,
                path=path,
            )
        if found.total > len(found.items):
            msg = f"{found.total - len(found.items)} more problems in this snapshot are not listed"
            self.add(ERROR, "more", f"snapshot {snap.short_id}", msg, snapshot=snap.id)

    def tree(self, tree_id: bytes, chain: bytes) -> _Found:
        """Problems under one tree for a snapshot of ``chain``, each tree walked once per
        chain (the chain invariant depends on the chain; the rest does not)."""
        key = (tree_id, chain)
        memo = self.memo.get(key)
        if memo is not None:
            return memo
        found = _Found()
        issues = self.blob_issues(tree_id, chain, BLOB_TREE)
        for issue in issues:
            found.add(issue)
        nodes: list[t.Node] = []
        if not any(i.code in _BLOCKING for i in issues):
            try:
                nodes = self.load_tree(tree_id)
            except (IntegrityError, ObjectNotFound) as exc:
                msg = f"the folder's tree cannot be read: {exc.message}"
                found.add(_Issue("", "tree-damaged", msg))
        for node in nodes:
            path = "/" + node.name
            if node.type == t.FILE:
                self.file(node, chain, path, found)
            elif node.type == t.DIR and node.subtree:
                try:
                    sub = bytes.fromhex(node.subtree)
                except ValueError:
                    found.add(_Issue(path, "tree-damaged", "the folder names an invalid tree id"))
                    continue
                found.extend(self.tree(sub, chain), path)
        self.memo[key] = found if found.total else _CLEAN
        return found

    def file(self, node: t.Node, chain: bytes, path: str, found: _Found) -> None:
        """One issue per kind of problem per file: the first blob, and how many share it."""
        first: dict[str, _Issue] = {}
        count: dict[str, int] = {}
        for hex_id in node.content:
            try:
                blob_id = bytes.fromhex(hex_id)
            except ValueError:
                blob_id = b""
            if len(blob_id) != 32:
                msg = f"the file names an invalid blob id {hex_id!r}"
                found.add(_Issue(path, "tree-damaged", msg))
                return
            self.blob_ids.add(blob_id)
            for issue in self.blob_issues(blob_id, chain, BLOB_DATA):
                first.setdefault(issue.code, issue)
                count[issue.code] = count.get(issue.code, 0) + 1
        for code, issue in first.items():
            more = count[code] - 1
            extra = f" (and {more} more blobs of this file)" if more else ""
            found.add(_Issue(path, code, issue.message + extra, issue.pack))

    def blob_issues(self, blob_id: bytes, chain: bytes, kind: int) -> list[_Issue]:
        what = f"{_TYPE_NAMES[kind]} {blob_id.hex()[:8]}"
        loc = self.index.lookup(blob_id)
        if loc is None:
            other = self.extra.lookup(blob_id)
            if other is None:
                return [
                    _Issue("", "blob-missing", f"{what} is in no index and no pack: it is lost")
                ]
            msg = (
                f"{what} is in no index; it is stored in pack {other.pack_id.hex()[:8]}, "
                "which 'safehold repair index' adds back"
            )
            self.needed_extra.add(other.pack_id)
            return [_Issue("", "blob-unindexed", msg, other.pack_id)]
        pack = loc.pack_id
        short = pack.hex()[:8]
        out = []
        if loc.blob_type != kind:
            stored = _TYPE_NAMES.get(loc.blob_type, "blob of unknown type")
            out.append(_Issue("", "blob-type", f"{what} is stored as a {stored}", pack))
        if not self.index.has_in_chain(blob_id, chain):
            msg = (
                f"{what} is stored only in packs of other chains (pack {short} of chain "
                f"{self.index.chain_of(pack).hex()[:8]}), not in this snapshot's chain "
                f"{chain.hex()[:8]}: the chain is not self-contained, and forgetting the "
                "other chain would lose it"
            )
            out.append(_Issue("", "blob-other-chain", msg, pack))
        bad = self.bad_packs.get(pack)
        if bad is not None:
            out.append(_Issue("", bad[0], f"{what} is in pack {short}, which {bad[1]}", pack))
        elif (blob_id, pack) in self.bad_blobs:
            out.append(_Issue("", "blob-damaged", f"{what} in pack {short} is damaged", pack))
        return out

    def load_tree(self, tree_id: bytes) -> list[t.Node]:
        nodes = self.trees.get(tree_id)
        if nodes is not None:
            self.trees.move_to_end(tree_id)
            return nodes
        loc = self.index.lookup(tree_id) or self.extra.lookup(tree_id)
        assert loc is not None  # blob_issues reported it as missing otherwise
        name = pack_name(loc.pack_id)
        sealed = self.repo.storage.get(name, loc.offset, loc.length)
        data = self.repo.open_blob(tree_id, sealed, loc.raw_length, name)
        nodes = t.decode_tree(data, f"tree {tree_id.hex()[:8]}")
        self.tree_ids.add(tree_id)
        self.trees[tree_id] = nodes
        if len(self.trees) > TREE_CACHE:
            self.trees.popitem(last=False)
        return nodes


def _why(exc: Exception) -> str:
    return exc.message if isinstance(exc, SafeholdError) else f"{type(exc).__name__}: {exc}"


def _compare(
    rec: PackRecord, chain_id: bytes, header: list[PackEntry], name: str, res: _PackResult
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
