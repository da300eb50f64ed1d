"""Walking a snapshot's trees: the shared helper of restore, ls, diff, dump and stats."""

from __future__ import annotations

from collections.abc import Iterator

from safehold.errors import UsageError
from safehold.repository import tree as t
from safehold.repository.repository import Repository


def walk(repo: Repository, tree_id: str, prefix: str = "") -> Iterator[tuple[str, t.Node]]:
    """Yields ``(absolute path, node)`` for every node, parents before children."""
    for node in repo.load_tree(tree_id):
        path = f"{prefix}/{node.name}"
        yield path, node
        if node.type == t.DIR and node.subtree:
            yield from walk(repo, node.subtree, path)


def normalize(path: str) -> str:
    parts = [p for p in path.split("/") if p and p != "."]
    if ".." in parts:
        raise UsageError(f"path {path!r} must not contain '..'")
    return "/" + "/".join(parts)


def find(repo: Repository, root_tree: str, path: str) -> tuple[str, t.Node] | None:
    """The node at ``path`` inside a snapshot, or None."""
    path = normalize(path)
    if path == "/":
        return "/", t.Node(name="", type=t.DIR, subtree=root_tree)
    tree_id = root_tree
    node: t.Node | None = None
    parts = path.strip("/").split("/")
    for i, part in enumerate(parts):
        node = next((n for n in repo.load_tree(tree_id) if n.name == part), None)
        if node is None:
            return None
        if i < len(parts) - 1:
            if node.type != t.DIR or not node.subtree:
                return None
            tree_id = node.subtree
    assert node is not None
    return path, node


def selected(path: str, includes: list[str]) -> tuple[bool, bool]:
    """For restore ``--include``: (restore this node entirely, descend into it)."""
    if not includes:
        return True, True
    for inc in includes:
        if path == inc or path.startswith(inc + "/"):
            return True, True
    descend = any(inc.startswith(path + "/") for inc in includes)
    return False, descend
