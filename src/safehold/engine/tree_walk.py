"""Walking a snapshot's trees (not the file system: that is ``engine/backup``'s scan): the
shared helper of restore, ls, diff, dump, find and stats; and restore's selection of what
to write."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from safehold.errors import UsageError
from safehold.ids import HexId
from safehold.policy.patterns import PatternList, State, every_name
from safehold.repository import tree as t
from safehold.repository.repository import Repository
from safehold.repository.snapshot import Snapshot


def walk(repo: Repository, tree_id: HexId, prefix: str = "") -> Iterator[tuple[str, t.Node]]:
    """Yields ``(absolute path, node)`` for every node, parents before children."""
    for node in repo.load_tree(tree_id):
        path = f"{prefix}/{node.name}"
        yield path, node
        if node.type == t.DIR and node.subtree:
            yield from walk(repo, node.subtree, path)


def normalize(path: str) -> str:
    """``path`` as an absolute snapshot path without ``.`` or empty parts; raises
    :class:`UsageError` for ``..``."""
    parts = [p for p in path.split("/") if p and p != "."]
    if ".." in parts:
        raise UsageError(f"path {path!r} must not contain '..'")
    return "/" + "/".join(parts)


def find(repo: Repository, root_tree: HexId, path: str) -> tuple[str, t.Node] | None:
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


# Where a folder of a snapshot stands in each list of a Selection (policy/patterns.py).
Where = tuple[State, State, State, State]
# A test of the names of a folder's items that are not folders: True = restore it.
Pick = Callable[[str], bool]


def locate(repo: Repository, snap: Snapshot, path: str) -> tuple[str, t.Node]:
    """The node at ``path`` in ``snap``, or a usage error naming what is missing."""
    found = find(repo, snap.tree, path)
    if found is None:
        raise UsageError(
            f"{normalize(path)} is not in snapshot {snap.short_id}",
            hint=f"see 'safehold ls {snap.short_id}'",
        )
    return found


def _nothing(_name: str) -> bool:
    return False


@dataclass(frozen=True, slots=True)
class Chosen:
    """A folder the selection takes itself, and where its contents stand (None: all of
    them are taken)."""

    where: Where | None


class Selection:
    """What restore writes of a snapshot: ``--include``/``--iinclude`` and
    ``--exclude``/``--iexclude`` patterns (policy/patterns.py), as restic's restore reads
    them. A node is restored when the includes (if any) match it and the excludes do not;
    a folder is entered while an include may match below it and no exclude matches it.

    A restore steps through folders with :meth:`enter` and asks :meth:`pick` once per
    folder for a test of its other items' names."""

    def __init__(
        self,
        includes: Sequence[str] = (),
        excludes: Sequence[str] = (),
        *,
        iincludes: Sequence[str] = (),
        iexcludes: Sequence[str] = (),
    ) -> None:
        self.lists = (
            PatternList(includes, what="--include"),
            PatternList(iincludes, ignore_case=True, what="--iinclude"),
            PatternList(excludes, what="--exclude"),
            PatternList(iexcludes, ignore_case=True, what="--iexclude"),
        )
        self.includes = bool(includes or iincludes)
        self.active = any(self.lists)
        self.root: Where = (
            self.lists[0].root,
            self.lists[1].root,
            self.lists[2].root,
            self.lists[3].root,
        )

    def describe(self) -> str:
        """The options, as given, for messages."""
        flags = ("--include", "--iinclude", "--exclude", "--iexclude")
        return " ".join(
            f"{flag} {p.original!r}"
            for flag, plist in zip(flags, self.lists, strict=True)
            for p in plist.patterns
        )

    def enter(self, where: Where, name: str) -> tuple[bool, bool, Where]:
        """For the folder ``name`` in a folder at ``where``: (restore it, enter it, its
        own ``where``)."""
        inc, iinc, exc, iexc = self.lists
        sub = (
            inc.enter(where[0], name) if inc else where[0],
            iinc.enter(where[1], name) if iinc else where[1],
            exc.enter(where[2], name) if exc else where[2],
            iexc.enter(where[3], name) if iexc else where[3],
        )
        if (exc and exc.matched(sub[2])) or (iexc and iexc.matched(sub[3])):
            return False, False, sub
        if not self.includes:
            return True, True, sub
        chosen = bool(inc and inc.matched(sub[0])) or bool(iinc and iinc.matched(sub[1]))
        below = bool(inc and inc.child_may_match(sub[0])) or bool(
            iinc and iinc.child_may_match(sub[1])
        )
        return chosen, chosen or below, sub

    def below(self, where: Where, chosen: bool) -> Where | Chosen | None:
        """What :meth:`enter` found, for the restore to pass down: ``where``, or None when
        everything below is taken (no excludes, and an include took the folder)."""
        inc, iinc, exc, iexc = self.lists
        whole = not (exc or iexc) and (
            (bool(inc) and not inc.negated and inc.matched(where[0]))
            or (bool(iinc) and not iinc.negated and iinc.matched(where[1]))
        )
        nested = None if whole else where
        return Chosen(nested) if chosen else nested

    def pick(self, where: Where) -> Pick | None:
        """A test for the names of the items (not folders) of a folder at ``where``; None
        when all of them are restored."""
        tests = [
            plist.names(state) if plist else None
            for plist, state in zip(self.lists, where, strict=True)
        ]
        inc = [x for x in tests[:2] if x is not None]
        exc = [x for x in tests[2:] if x is not None]
        if self.includes and not inc:
            return _nothing
        if every_name in exc:
            return _nothing
        if (not self.includes or every_name in inc) and not exc:
            return None

        def pick(name: str) -> bool:
            if self.includes and not any(x(name) for x in inc):
                return False
            return not any(x(name) for x in exc)

        return pick
