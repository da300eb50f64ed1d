"""Hostile snapshots: what anyone holding the repository's key (a compromised client that
shares the repository) can write, for tests of every reader.

The trees are written byte for byte as given: names are not checked, nodes are neither
sorted nor deduplicated (``tree.encode_tree*`` would refuse them), and every blob is
sealed and indexed like a real backup's, so only the names tell these snapshots apart.

    snap = write_snapshot(repo, [folder("..", file("escaped", b"pwned"))])

:data:`ATTACKS` names one snapshot per kind of attack on paths, each given the victim
folder it tries to write into (see :func:`attack`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import Any

from safehold.repository.chains import new_chain_id
from safehold.repository.format import BLOB_DATA, BLOB_TREE
from safehold.repository.repository import Repository
from safehold.repository.saver import BlobSaver
from safehold.repository.snapshot import Snapshot

__all__ = ["ATTACKS", "attack", "file", "folder", "symlink", "write_snapshot"]

Spec = dict[str, Any]


def _node(name: str, kind: str, mode: int, fields: dict[str, Any]) -> Spec:
    return {"name": name, "type": kind, "mode": mode, "mtime": 0, "ctime": 0, **fields}


def file(name: str, data: bytes = b"pwned\n", **fields: Any) -> Spec:
    """A file holding ``data`` (``_data``: saved as its blob when the tree is written)."""
    return {**_node(name, "file", 0o644, fields), "_data": data}


def folder(name: str, *children: Spec, **fields: Any) -> Spec:
    """A folder holding ``children`` (``_children``: saved as its subtree)."""
    return {**_node(name, "dir", 0o755, fields), "_children": list(children)}


def symlink(name: str, target: str) -> Spec:
    return _node(name, "symlink", 0o777, {"target": target})


def write_snapshot(
    repo: Repository, nodes: list[Spec], *, paths: list[str] | None = None
) -> Snapshot:
    """Save a snapshot whose root tree holds ``nodes`` exactly in the order given."""
    if not repo.index_loaded:
        repo.load_index()
    chain = new_chain_id()
    saver = BlobSaver(repo, bytes.fromhex(chain))
    try:
        root = _save_tree(saver, nodes)
        saver.finish()
    except BaseException:
        saver.abort()
        raise
    snap = Snapshot(
        time=repo.clock.now(),
        tree=root,
        paths=paths or ["/"],
        hostname="hostile",
        chain=chain,
        source="directory",
    )
    repo.save_snapshot(snap)
    return snap


def _save_tree(saver: BlobSaver, nodes: list[Spec]) -> str:
    out = []
    for spec in nodes:
        node = {k: v for k, v in spec.items() if not k.startswith("_")}
        if "_data" in spec:
            data: bytes = spec["_data"]
            node["size"] = len(data)
            node["content"] = [saver.save(BLOB_DATA, data)[0].hex()] if data else []
        if "_children" in spec:
            node["subtree"] = _save_tree(saver, spec["_children"])
        out.append(node)
    # As the canonical encoder writes a tree, but in the given order and without checks.
    raw = json.dumps({"nodes": out}, sort_keys=True, separators=(",", ":"))
    return saver.save(BLOB_TREE, raw.encode("utf-8", "surrogatepass"))[0].hex()


# Each attack: given the victim folder's path relative to the restore target ("../../v"),
# the root tree's nodes and the name an error must quote (as its repr).
Attack = Callable[[str], tuple[list[Spec], str]]

ATTACKS: dict[str, Attack] = {
    # A name that is a path climbing out of the target.
    "dotdot-path": lambda up: ([file(f"{up}/x")], f"{up}/x"),
    # Folders named ".." and then the victim's name: each ".." climbs one folder.
    "dotdot-folder": lambda up: ([_climb(up, [file("y")])], ".."),
    # "." is the folder itself: harmless here, and refused like any non-name.
    "dot": lambda up: ([folder(".", file("z"))], "."),
    # A symlink to the victim, then a name through it.
    "slash-through-symlink": lambda up: ([symlink("s", up), file("s/w")], "s/w"),
    # NUL ends a C string: "n\0/../x" would be "n" to the kernel.
    "nul": lambda up: ([file("n\x00ul")], "n\x00ul"),
    # Two nodes of one name: a symlink to the victim and a folder holding a file.
    "duplicate": lambda up: ([symlink("x", up), folder("x", file("f"))], "x"),
    # Unsorted names (the format says sorted: a reader may rely on it).
    "unsorted": lambda up: ([file("b"), file("a")], "a"),
    # Control characters in a bad name must reach no terminal raw.
    "control-chars": lambda up: ([file(f"\x1b[31m{up}/c\r")], f"\x1b[31m{up}/c\r"),
    # The empty name is the folder itself.
    "empty": lambda up: ([file("")], ""),
}


def _climb(up: str, inner: list[Spec]) -> Spec:
    parts = up.split("/")
    node = folder(parts[-1], *inner)
    for part in reversed(parts[:-1]):
        node = folder(part, node)
    return node


def attack(name: str, target: str, victim: str) -> tuple[list[Spec], str]:
    """The root nodes of attack ``name`` aimed from ``target`` at ``victim``, and the bad
    name an error must quote (as its repr)."""
    return ATTACKS[name](os.path.relpath(victim, target))
