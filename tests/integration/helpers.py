"""Helpers for the integration tests: tree manifests, restore comparison, repository state.

A *manifest* records what a backup must give back: for every item below a root, its kind,
mode, modification time and, for files, size and BLAKE2b of the content (hashlib, not
safehold's own hashing, so a bug there cannot hide itself). Manifests are taken from the
source when a snapshot is made and compared with a restore of that snapshot later.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from safehold.errors import ExitCode
from safehold.repository import tree as t
from safehold.repository.format import BLOB_TREE
from safehold.repository.repository import Repository, pack_name
from safehold.repository.snapshot import Snapshot
from safehold.storage.local import TEMP_PREFIX, LocalStorage
from tests.conftest import CliResult, CliRunner


@dataclass(frozen=True)
class Item:
    kind: str  # file, dir, symlink, fifo, other
    mode: int
    mtime_ns: int = 0
    size: int = 0
    digest: str = ""
    target: str = ""


Manifest = dict[str, Item]


def file_digest(path: Path | str) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "blake2b").hexdigest()


def tree_manifest(root: Path) -> Manifest:
    """Everything below ``root`` (and ``root`` itself as ``"."``), without following links."""
    out: Manifest = {}

    def visit(path: Path, rel: str) -> None:
        st = os.lstat(path)
        mode = st.st_mode
        perm = stat.S_IMODE(mode)
        if stat.S_ISDIR(mode):
            out[rel] = Item("dir", perm, st.st_mtime_ns)
            for name in sorted(os.listdir(path)):
                visit(path / name, name if rel == "." else f"{rel}/{name}")
        elif stat.S_ISREG(mode):
            out[rel] = Item("file", perm, st.st_mtime_ns, st.st_size, file_digest(path))
        elif stat.S_ISLNK(mode):
            out[rel] = Item("symlink", 0, target=os.readlink(path))
        elif stat.S_ISFIFO(mode):
            out[rel] = Item("fifo", perm)
        else:
            out[rel] = Item("other", perm)

    visit(root, ".")
    return out


def diff_manifests(expected: Manifest, actual: Manifest, *, mtimes: bool = True) -> list[str]:
    """Human-readable differences; empty when ``actual`` gives back ``expected``."""
    problems: list[str] = []
    for rel in sorted(expected.keys() - actual.keys()):
        problems.append(f"missing: {rel}")
    for rel in sorted(actual.keys() - expected.keys()):
        problems.append(f"unexpected: {rel}")
    for rel in sorted(expected.keys() & actual.keys()):
        want, got = expected[rel], actual[rel]
        if not mtimes or want.kind not in ("file", "dir"):
            want = Item(want.kind, want.mode, 0, want.size, want.digest, want.target)
            got = Item(got.kind, got.mode, 0, got.size, got.digest, got.target)
        if want != got:
            problems.append(f"differs: {rel}: expected {want}, got {got}")
    return problems


def assert_same_tree(expected: Manifest, root: Path, *, mtimes: bool = True) -> None:
    problems = diff_manifests(expected, tree_manifest(root), mtimes=mtimes)
    assert not problems, f"{root} differs from the source ({len(problems)}):\n" + "\n".join(
        problems[:20]
    )


def restored_root(target: Path, source: Path) -> Path:
    """Where ``restore`` puts ``source`` (an absolute path) below ``target``."""
    return target / source.resolve().relative_to("/")


def restore_and_compare(
    cli: CliRunner,
    repo: str | Path,
    snapshot: str,
    source: Path,
    expected: Manifest,
    target: Path,
    *,
    mtimes: bool = True,
) -> None:
    """``safehold restore SNAPSHOT`` into ``target`` (a fresh folder), compare with
    ``expected``, then remove what was restored."""
    res = cli("-r", str(repo), "restore", snapshot, "--target", str(target))
    assert res.code == 0, f"restore of {snapshot[:8]} failed: {res.output}"
    try:
        assert_same_tree(expected, restored_root(target, source), mtimes=mtimes)
    finally:
        remove_tree(target)


def remove_tree(path: Path) -> None:
    if not path.exists() and not path.is_symlink():
        return
    shutil.rmtree(path)


# --- the CLI -----------------------------------------------------------------------------


def backup_json(cli: CliRunner, repo: str | Path, *args: str, **kw: Any) -> dict[str, Any]:
    """``safehold backup --json ARGS``; asserts success and returns the parsed reply."""
    res = cli("-r", str(repo), "backup", "--json", *args, **kw)
    assert res.code == 0, f"backup failed ({res.code}): {res.output}"
    doc: dict[str, Any] = json.loads(res.stdout)
    return doc


def snapshot_ids(cli: CliRunner, repo: str | Path) -> list[str]:
    res = cli("-r", str(repo), "snapshots", "--json")
    assert res.code == 0, res.output
    return [s["id"] for s in json.loads(res.stdout)]


def check_passes(cli: CliRunner, repo: str | Path) -> bool:
    """``safehold check`` must exit 0. Returns False (and asserts nothing) only while
    ``check`` is still the stub that says it is not available; callers then verify the
    structure themselves with :func:`verify_structure`."""
    return check_ok(cli("-r", str(repo), "check"))


def check_ok(res: CliResult) -> bool:
    """See :func:`check_passes`; for a ``check`` run started some other way."""
    if res.code == ExitCode.USAGE and "not available yet" in res.stderr:
        return False
    assert res.code == 0, f"check failed ({res.code}): {res.output}"
    return True


def assert_error(res: CliResult, code: int, *words: str) -> None:
    """The command failed with ``code`` and its message contains every word (any case)."""
    assert res.code == code, f"expected exit {code}, got {res.code}: {res.output}"
    text = res.stderr.lower()
    missing = [w for w in words if w.lower() not in text]
    assert not missing, f"message lacks {missing}: {res.stderr!r}"
    assert "Traceback" not in res.output, res.output


# --- the repository on disk --------------------------------------------------------------


def repo_files(repo: Path) -> dict[str, tuple[int, int, int]]:
    """Every stored object except locks: name -> (size, inode, mtime_ns). A rewrite or a
    deletion shows as a change of inode or mtime."""
    out: dict[str, tuple[int, int, int]] = {}
    for dirpath, _dirs, files in os.walk(repo):
        for name in files:
            if name.startswith(TEMP_PREFIX):
                continue
            path = os.path.join(dirpath, name)
            rel = os.path.relpath(path, repo)
            if rel.startswith("locks/"):
                continue
            st = os.lstat(path)
            out[rel] = (st.st_size, st.st_ino, st.st_mtime_ns)
    return out


def pack_files(repo: Path) -> set[str]:
    """Names (``data/ab/ab...``) of the finished packs under ``repo``."""
    out = set()
    data = repo / "data"
    if not data.is_dir():
        return out
    for sub in data.iterdir():
        for f in sub.iterdir():
            if not f.name.startswith(TEMP_PREFIX) and len(f.name) == 64:
                out.add(f"data/{sub.name}/{f.name}")
    return out


def lock_files(repo: Path) -> list[str]:
    """Lock objects (not the hidden temporary file of a lock write that was cut short)."""
    locks = repo / "locks"
    if not locks.is_dir():
        return []
    return sorted(p.name for p in locks.iterdir() if not p.name.startswith(TEMP_PREFIX))


def open_repo(repo: Path, password: bytes) -> Repository:
    r = Repository.open(LocalStorage(repo), password)
    r.load_index()
    return r


@dataclass
class PackContent:
    chain: bytes
    data_blobs: dict[bytes, int] = field(default_factory=dict)  # blob id -> raw length
    tree_blobs: set[bytes] = field(default_factory=set)


def read_packs(r: Repository, names: set[str]) -> dict[str, PackContent]:
    """Decrypt the headers of the packs ``names`` (``data/xx/<id>``)."""
    out: dict[str, PackContent] = {}
    for name in names:
        pack_id = bytes.fromhex(name.rsplit("/", 1)[-1])
        size = r.storage.stat(name).size
        rec = r.read_pack_header(pack_id, size)
        pc = PackContent(rec.chain_id)
        for e in rec.entries:
            if e.blob_type == BLOB_TREE:
                pc.tree_blobs.add(e.blob_id)
            else:
                pc.data_blobs[e.blob_id] = e.raw_length
        out[name] = pc
    return out


def _walk(r: Repository, tree_id: str, prefix: str) -> Iterator[tuple[str, t.Node]]:
    for node in r.load_tree(tree_id):
        path = f"{prefix}/{node.name}"
        yield path, node
        if node.type == t.DIR and node.subtree:
            yield from _walk(r, node.subtree, path)


def verify_structure(r: Repository) -> list[Snapshot]:
    """What ``check`` (structure) must establish, done through the library: every snapshot
    loads, every tree it reaches loads, every data blob it names is in the index, in a pack
    that exists and is long enough. Returns the snapshots, oldest first."""
    packs = r.list_packs()
    snaps = r.list_snapshots()
    seen_trees: set[str] = set()
    for snap in snaps:
        stack = [snap.tree]
        while stack:
            tree_id = stack.pop()
            if tree_id in seen_trees:
                continue
            seen_trees.add(tree_id)
            for node in r.load_tree(tree_id):
                if node.type == t.DIR and node.subtree:
                    stack.append(node.subtree)
                for hex_id in node.content:
                    loc = r.index.lookup(bytes.fromhex(hex_id))
                    assert loc is not None, f"snapshot {snap.short_id}: blob {hex_id} not indexed"
                    size = packs.get(loc.pack_id)
                    assert size is not None, f"blob {hex_id[:8]}: {pack_name(loc.pack_id)} gone"
                    assert loc.offset + loc.length <= size, f"{pack_name(loc.pack_id)} too short"
    return snaps


def snapshot_manifest(
    r: Repository, snap: Snapshot, source: Path, digests: dict[tuple[str, ...], str]
) -> Manifest:
    """The manifest of ``source`` as stored in ``snap``, reading and verifying every blob
    through the library (what a restore would write, without writing it). ``digests``
    caches file digests by content list across snapshots."""
    parts = [p for p in source.resolve().parts if p != "/"]
    nodes = r.load_tree(snap.tree)
    node: t.Node | None = None
    for part in parts:
        node = next((n for n in nodes if n.name == part), None)
        assert node is not None, f"snapshot {snap.short_id} has no {part}"
        if node.type == t.DIR:
            nodes = r.load_tree(node.subtree) if node.subtree else []
    assert node is not None and node.type == t.DIR
    out: Manifest = {".": Item("dir", node.mode, node.mtime_ns)}
    for path, n in _walk(r, node.subtree, "") if node.subtree else iter(()):
        rel = path.lstrip("/")
        if n.type == t.DIR:
            out[rel] = Item("dir", n.mode, n.mtime_ns)
        elif n.type == t.FILE:
            key = tuple(n.content)
            digest = digests.get(key)
            if digest is None:
                h = hashlib.blake2b()
                for hex_id in n.content:
                    h.update(r.load_blob(bytes.fromhex(hex_id)))
                digest = digests[key] = h.hexdigest()
            out[rel] = Item("file", n.mode, n.mtime_ns, n.size, digest)
        elif n.type == t.SYMLINK:
            out[rel] = Item("symlink", 0, target=n.target)
        elif n.type == t.FIFO:
            out[rel] = Item("fifo", n.mode)
        else:
            out[rel] = Item("other", n.mode)
    return out
