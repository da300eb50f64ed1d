"""The tampering campaign's repository (tests/integration/test_tamper_campaign.py): built
once through the real command line, kept in memory as ``name -> bytes``, and written afresh
for every case.

What it holds, and why each piece is there:

* two key files (passwords ``pw1`` and ``pw2``); a third (``pw3``) was added and removed, so
  a *removed key file* can be replayed;
* chain A: ``A0`` (forgotten; the prune that freed it repacked the pack it shared with
  ``A1``), ``A1``, ``A2``; chain B: ``B1``, ``B2``, then ``chain finish`` (a chain marker);
  ``I`` (``--isolated``); ``S`` (a stream, ``--stdin-name``);
* ``G``, forgotten and swept with ``A0`` by a first prune whose trash record was held back by
  a lock and then swept by a second prune: its snapshot, packs, trash record and the index
  files both prunes replaced are gone, kept here for replays;
* ``F`` and ``H``, each forgotten and pruned while this process holds a lock (the *live
  lock*, a real lock of a live process): two trash records wait, with their own index
  files, and their packs are still stored;
* a lock left by a process that died (written by a child process that exits without
  releasing it), removed again: the *old lock* for replays;
* a small foreign repository with the same password, whose objects are swapped in.

Every object present at the end gets a *role* (which step wrote it: "backup A1: data pack")
so that a case is named the same way in every build, whatever the random ids are; every
object removed by a later step is kept in :attr:`Scene.history`.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from safehold.engine.tree_walk import walk
from safehold.repository.format import BLOB_TREE, T_INDEX
from safehold.repository.index import decode_index
from safehold.repository.lock import Lock
from safehold.repository.repository import Repository, pack_name
from safehold.repository.trash import list_trash
from safehold.storage.local import TEMP_PREFIX, LocalStorage
from tests.conftest import CliResult
from tests.integration.helpers import Manifest, tree_manifest

KINDS = ("config", "keys", "index", "snapshots", "data", "locks", "trash", "chains")
PASSWORDS = {"pw1": "tamper campaign one", "pw2": "tamper campaign two", "pw3": "removed key"}
KDF = ("--kdf-log2n", "10")
MiB = 1024 * 1024


def kind_of(name: str) -> str:
    return "config" if name == "config" else name.split("/", 1)[0]


# --- the command line ------------------------------------------------------------------------


class Cli:
    """``python -m safehold`` as a real process, with one of :data:`PASSWORDS`."""

    def __init__(self, home: Path) -> None:
        home.mkdir(parents=True, exist_ok=True)
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("SAFEHOLD_")}
        self.env["HOME"] = str(home)
        self.env["AWS_EC2_METADATA_DISABLED"] = "true"

    def __call__(
        self,
        *args: str,
        password: str = "pw1",
        input: bytes | None = None,
        extra_env: dict[str, str] | None = None,
        timeout: float = 120,
    ) -> CliResult:
        env = dict(self.env, SAFEHOLD_PASSWORD=PASSWORDS[password], **(extra_env or {}))
        proc = subprocess.run(
            [sys.executable, "-m", "safehold", *args],
            input=input,
            capture_output=True,
            env=env,
            timeout=timeout,
            check=False,
        )
        return CliResult(
            proc.returncode,
            proc.stdout.decode(errors="replace"),
            proc.stderr.decode(errors="replace"),
        )

    def ok(self, *args: str, **kw: object) -> CliResult:
        res = self(*args, **kw)  # type: ignore[arg-type]
        assert res.code == 0, f"safehold {' '.join(args)} failed ({res.code}): {res.output}"
        return res


# --- what the scene is made of ---------------------------------------------------------------


@dataclass(frozen=True)
class StoredObject:
    name: str
    kind: str
    role: str  # stable across builds: which step wrote it, and what it is


@dataclass(frozen=True)
class SnapRef:
    """A snapshot and what restoring it gives: the manifest of the whole restore target
    (the parent folders of the backed-up path included)."""

    label: str
    id: str
    baseline: Manifest
    # Stored objects it needs besides a key file: config, its snapshot object, every index
    # file that lists one of its blobs and every pack that holds one (any copy).
    deps: frozenset[str] = frozenset()


@dataclass
class Scene:
    root: Path  # the built repository (cases write their own copy of ``files``)
    files: dict[str, bytes]
    objects: list[StoredObject]
    snaps: list[SnapRef]  # listed: every case restores each
    forgotten: dict[str, SnapRef]  # by id: forgotten snapshots a replay may bring back
    history: list[tuple[StoredObject, bytes]]  # objects later steps removed
    foreign: dict[str, list[bytes]]  # kind -> objects of another repository (same password)
    keys: dict[str, str]  # key file name -> password label ("pw1"), the removed one too
    live_lock: Lock | None = None
    chain_of: dict[str, str] = field(default_factory=dict)  # snapshot label -> chain id

    def key_of(self, password: str) -> str:
        return next(name for name, pw in self.keys.items() if pw == password)

    def object(self, name: str) -> StoredObject:
        return next(o for o in self.objects if o.name == name)


def read_files(root: Path) -> dict[str, bytes]:
    """Every stored object under ``root`` (not temporary files of writes in progress)."""
    out: dict[str, bytes] = {}
    for dirpath, _dirs, names in os.walk(root):
        for n in names:
            if n.startswith(TEMP_PREFIX):
                continue
            path = Path(dirpath) / n
            out[path.relative_to(root).as_posix()] = path.read_bytes()
    return out


def write_files(root: Path, files: dict[str, bytes]) -> None:
    """A repository folder holding exactly ``files`` (and the usual empty folders)."""
    if root.exists():
        shutil.rmtree(root)
    for sub in ("keys", "index", "snapshots", "data", "locks", "trash", "chains"):
        (root / sub).mkdir(parents=True)
    for name, raw in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(raw)


def restored_manifest(target: Path) -> Manifest:
    """What a restore wrote under ``target``; the target folder's own entry is left out
    (restore creates it: its time is the restore's)."""
    got = tree_manifest(target)
    got.pop(".", None)
    return got


# --- building -----------------------------------------------------------------------------


class _Builder:
    """Runs the steps and remembers, for every object, the step that wrote it and, for every
    object a later step removed, its last bytes."""

    def __init__(self, work: Path) -> None:
        self.work = work
        self.repo = work / "repo"
        self.cli = Cli(work / "home")
        self.born: dict[str, str] = {}  # name -> step that wrote it
        self.seen: dict[str, bytes] = {}
        self.gone: dict[str, tuple[str, bytes]] = {}  # name -> (removed by, last bytes)
        self.ids: dict[str, str] = {}  # snapshot label -> id
        self.chains: dict[str, str] = {}  # snapshot label -> chain id
        self.baselines: dict[str, Manifest] = {}
        self.sources: dict[str, Path] = {}

    def r(self, *args: str, **kw: object) -> CliResult:
        return self.cli.ok("-r", str(self.repo), *args, **kw)

    @contextlib.contextmanager
    def step(self, label: str) -> Iterator[None]:
        yield
        now = read_files(self.repo)
        for name in now.keys() - self.seen.keys():
            self.born[name] = label
        for name in self.seen.keys() - now.keys():
            self.gone[name] = (label, self.seen[name])
        self.seen = now

    def source(self, label: str, files: dict[str, bytes]) -> Path:
        root = self.sources.get(label) or self.work / "src" / label
        self.sources[label] = root
        for rel, data in files.items():
            path = root / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
        return root

    def backup(self, label: str, *args: str, input: bytes | None = None) -> str:
        with self.step(f"backup {label}"):
            doc = json.loads(self.r("backup", "--json", *args, input=input).stdout)
        self.ids[label] = doc["snapshot"]
        self.chains[label] = doc["chain"]
        target = self.work / "baseline" / label
        self.r("restore", doc["snapshot"], "--target", str(target))
        self.baselines[label] = restored_manifest(target)
        return str(doc["snapshot"])

    def folder_backup(self, label: str, src: str, *extra: str) -> str:
        root = self.sources[src]
        snap = self.backup(label, *extra, str(root))
        # The restore gives back exactly the source (a sanity check of the baseline).
        restored = tree_manifest(self.work / "baseline" / label / root.relative_to("/"))
        assert restored == tree_manifest(root), f"backup {label} does not restore its source"
        return snap


def _random(n: int, seed: int) -> bytes:
    import hashlib

    return hashlib.shake_256(seed.to_bytes(8, "little")).digest(n)


def _text(n: int, word: str) -> bytes:
    return "".join(f"{i:06d} {word} line\n" for i in range(n // 20 + 1)).encode()[:n]


def dead_lock(cli: Cli, repo: Path) -> None:
    """A lock written by a process that then died without releasing it."""
    code = textwrap.dedent(
        f"""
        import os
        from safehold.repository.repository import Repository
        from safehold.storage.local import LocalStorage
        repo = Repository.open(LocalStorage({str(repo)!r}), {PASSWORDS["pw1"].encode()!r})
        repo.lock("backup")
        os._exit(0)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, env=cli.env, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr.decode()


def build_scene(work: Path) -> Scene:
    b = _Builder(work)
    pw1 = PASSWORDS["pw1"].encode()
    with b.step("init"):
        b.cli.ok("-r", str(b.repo), "init", *KDF)
    for pw in ("pw2", "pw3"):
        with b.step(f"key add {pw}"):
            b.r("key", "add", *KDF, extra_env={"SAFEHOLD_NEW_PASSWORD": PASSWORDS[pw]})

    # Chain A: a large file kept throughout, and a file rewritten each time (so that
    # forgetting A0 leaves its pack mostly unused: the first prune repacks it).
    b.source(
        "A",
        {
            "big.bin": _random(MiB + 300_000, 1),
            "state.bin": _random(400_000, 2),
            "notes.txt": _text(30_000, "alpha"),
            "sub/deeper/small.bin": _random(40_000, 3),
            "empty.txt": b"",
        },
    )
    (b.sources["A"] / "empty-dir").mkdir()
    os.symlink("notes.txt", b.sources["A"] / "link")
    b.folder_backup("A0", "A")
    b.source("G", {"g.bin": _random(300_000, 4), "g.txt": _text(5_000, "gamma")})
    b.folder_backup("G", "G")
    b.source("A", {"state.bin": _random(400_000, 5)})
    b.folder_backup("A1", "A")
    b.source("B", {"b.bin": _random(500_000, 6), "docs/b.txt": _text(20_000, "beta")})
    b.folder_backup("B1", "B")

    # First prune: its trash record waits for a lock, then a second prune sweeps it.
    local = Repository.open(LocalStorage(b.repo), pw1)
    with b.step("forget A0 G"):
        b.r("forget", b.ids["A0"], b.ids["G"])
    with b.step("lock taken"):
        held = local.lock("backup")
    with b.step("prune 1 (held back)"):
        b.r("prune")
    with b.step("lock released"):
        held.release()
    with b.step("prune 1 sweep"):
        b.r("prune")

    b.source("A", {"state.bin": _random(400_000, 7), "notes.txt": _text(31_000, "alpha2")})
    b.folder_backup("A2", "A")
    b.source("B", {"docs/new.txt": _text(3_000, "beta2")})
    b2 = b.folder_backup("B2", "B")
    with b.step("chain finish B"):
        b.r("chain", "finish", b2)
    # Before the live lock: removing a key takes an exclusive lock.
    with b.step("key remove pw3"):
        keys = {n: b.born[n] for n in b.seen if n.startswith("keys/")}
        pw3 = next(n for n, step in keys.items() if step == "key add pw3")
        b.r("key", "remove", pw3.removeprefix("keys/"))
    b.source("F", {"f.bin": _random(200_000, 8)})
    b.folder_backup("F", "F")
    b.source("H", {"h.bin": _random(150_000, 9)})
    b.folder_backup("H", "H")

    # Two trash records that wait for the live lock (this process's; kept until the end).
    with b.step("live lock taken"):
        live = local.lock("backup")
    for label in ("F", "H"):
        with b.step(f"forget {label}"):
            b.r("forget", b.ids[label])
        with b.step(f"prune {label} (held back)"):
            b.r("prune")
    b.source("I", {"i.bin": _random(350_000, 10), "i.txt": _text(8_000, "iota")})
    b.folder_backup("I", "I", "--isolated")
    stream = _random(700_000, 11) + _text(200_000, "dump")
    b.backup("S", "--stdin-name", "db.dump", input=stream)
    assert (work / "baseline" / "S" / "db.dump").read_bytes() == stream

    with b.step("a backup process died"):
        dead_lock(b.cli, b.repo)
    with b.step("dead lock removed"):
        for name in list(b.seen):
            if name.startswith("locks/") and name != live.info.name:
                (b.repo / name).unlink()

    files = read_files(b.repo)
    assert {kind_of(n) for n in files} == set(KINDS), sorted(files)
    assert len([n for n in files if n.startswith("trash/")]) == 2
    assert files.keys() == b.seen.keys()

    listed = ("A1", "A2", "B1", "B2", "I", "S")
    deps = _dependencies(b.repo, pw1, {label: b.ids[label] for label in listed})
    snaps = [SnapRef(x, b.ids[x], b.baselines[x], frozenset(deps[x])) for x in listed]
    forgotten = {b.ids[x]: SnapRef(x, b.ids[x], b.baselines[x]) for x in ("A0", "G", "F", "H")}
    roles = _roles(b, files, live.info.name)
    objects = sorted(
        (StoredObject(n, kind_of(n), roles[n]) for n in files),
        key=lambda o: (KINDS.index(o.kind), o.role),
    )
    history = [
        (StoredObject(n, kind_of(n), f"{b.born[n]}: {_what(n)} removed by {step}"), raw)
        for n, (step, raw) in sorted(b.gone.items())
        if n not in files
    ]
    history.sort(key=lambda h: (KINDS.index(h[0].kind), h[0].role))
    key_pw = {n: _password_of(b.born[n]) for n in b.born if n.startswith("keys/")}
    return Scene(
        root=b.repo,
        files=files,
        objects=objects,
        snaps=snaps,
        forgotten=forgotten,
        history=history,
        foreign=_foreign(work / "foreign", b.cli),
        keys=key_pw,
        live_lock=live,
        chain_of=dict(b.chains),
    )


def _what(name: str) -> str:
    return {
        "config": "config",
        "keys": "key file",
        "index": "index file",
        "snapshots": "snapshot",
        "data": "pack",
        "locks": "lock",
        "trash": "trash record",
        "chains": "chain marker",
    }[kind_of(name)]


def _password_of(step: str) -> str:
    """The password of the key file a step wrote: ``init``'s is pw1, ``key add pwN``'s pwN."""
    return "pw1" if step == "init" else step.rsplit(maxsplit=1)[-1]


def _roles(b: _Builder, files: dict[str, bytes], live_lock: str) -> dict[str, str]:
    """A stable label per object: the step that wrote it and what it is; several objects of
    one step and kind are told apart by what they hold, then numbered."""
    repo = Repository.open(LocalStorage(b.repo), PASSWORDS["pw1"].encode())
    own_index = {n: rec.name for rec in list_trash(repo) for n in rec.index}
    roles: dict[str, str] = {}
    for name, raw in files.items():
        kind = kind_of(name)
        what = _what(name)
        if kind == "data":
            pack_id = bytes.fromhex(name.rsplit("/", 1)[1])
            rec = repo.read_pack_header(pack_id, len(raw))
            tree = all(e.blob_type == BLOB_TREE for e in rec.entries)
            what = "tree pack" if tree else "data pack"
        elif name in own_index:
            what = "trash record's own index file"
        elif name == live_lock:
            what = "live lock (this test's process)"
        elif kind == "keys":
            what = f"key file of {_password_of(b.born[name])}"
        roles[name] = f"{b.born[name]}: {what}"
    counts: dict[str, list[str]] = {}
    for name in sorted(roles):
        counts.setdefault(roles[name], []).append(name)
    for role, names in counts.items():
        if len(names) > 1:
            for i, name in enumerate(names, 1):
                roles[name] = f"{role} #{i}"
    return roles


def _dependencies(root: Path, password: bytes, ids: dict[str, str]) -> dict[str, set[str]]:
    """Per snapshot label: config, its snapshot object, and every index file and pack that
    lists or holds one of its blobs (trees and data)."""
    repo = Repository.open(LocalStorage(root), password)
    repo.load_index()
    where: dict[bytes, set[str]] = {}  # blob id -> index files and packs
    for name in repo.list_index_files():
        for rec in decode_index(repo.load_object(name, T_INDEX), name):
            for e in rec.entries:
                where.setdefault(e.blob_id, set()).update({name, pack_name(rec.pack_id)})
    out: dict[str, set[str]] = {}
    for label, snap_id in ids.items():
        snap = repo.load_snapshot(snap_id)
        blobs = {bytes.fromhex(snap.tree)}
        for _path, node in walk(repo, snap.tree):
            if node.subtree:
                blobs.add(bytes.fromhex(node.subtree))
            blobs.update(bytes.fromhex(c) for c in node.content)
        deps = {"config", "snapshots/" + snap_id}
        for blob in blobs:
            assert blob in where, f"{label}: blob {blob.hex()} in no index file"
            deps |= where[blob]
        out[label] = deps
    return out


def _foreign(work: Path, cli: Cli) -> dict[str, list[bytes]]:
    """Objects of another repository opened by the same password ``pw1``."""
    repo = work / "repo"
    src = work / "src"
    src.mkdir(parents=True)
    (src / "x.bin").write_bytes(_random(100_000, 12))
    cli.ok("-r", str(repo), "init", *KDF)
    snap = json.loads(cli.ok("-r", str(repo), "backup", "--json", str(src)).stdout)["snapshot"]
    cli.ok("-r", str(repo), "chain", "finish", snap)
    out: dict[str, list[bytes]] = {}
    for name, raw in sorted(read_files(repo).items()):
        out.setdefault(kind_of(name), []).append(raw)
    return out
