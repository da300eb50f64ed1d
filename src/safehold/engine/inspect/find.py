"""The find use case: the paths of each snapshot that match restic-style patterns.

Patterns are the backup's (:mod:`safehold.policy.patterns`, restic's syntax): matched
against the whole path in the snapshot, component by component; ``*`` and ``?`` never
cross a ``/``, ``**`` spans any number of folders, a pattern without a leading ``/``
matches at any depth, one with it is anchored at the root. A match also takes in
everything below it: ``find cache`` lists the folder ``cache`` and what it holds, as
restic does. Folders that no pattern can reach any more are not entered.

Snapshots are searched oldest first; each snapshot's trees are read through the
repository's tree cache, so folders that did not change between snapshots are decoded once.
"""

from __future__ import annotations

from collections.abc import Iterator

from safehold.engine.tree_walk import walk
from safehold.errors import UsageError
from safehold.ids import HexId
from safehold.policy.patterns import PatternList, State
from safehold.repository import tree as t
from safehold.repository.repository import Repository
from safehold.repository.snapshot import Snapshot

__all__ = ["compile_patterns", "find_in_snapshot"]


def compile_patterns(patterns: list[str], *, ignore_case: bool = False) -> PatternList:
    """The patterns of one search; a usage error for one that names nothing or is
    malformed."""
    for pattern in patterns:
        if not pattern.strip("/"):
            raise UsageError(
                f"the pattern {pattern!r} names no file",
                hint="give a name such as '*.log', a path such as 'etc/*.conf', or '/' "
                "followed by an absolute path",
            )
    return PatternList(patterns, ignore_case=ignore_case, what="find")


def find_in_snapshot(
    repo: Repository, snap: Snapshot, patterns: PatternList
) -> Iterator[tuple[str, t.Node]]:
    """Every ``(path, node)`` of ``snap`` that matches, parents before children."""
    yield from _visit(repo, snap.tree, "", patterns, patterns.root)


def _visit(
    repo: Repository, tree_id: HexId, prefix: str, patterns: PatternList, state: State
) -> Iterator[tuple[str, t.Node]]:
    for node in repo.load_tree(tree_id):
        path = f"{prefix}/{node.name}"
        inner = patterns.enter(state, node.name)
        folder = node.type == t.DIR and bool(node.subtree)
        if patterns.matched(inner):
            yield path, node
            if folder and not patterns.negated:
                yield from walk(repo, node.subtree, path)  # below a match, all match
                continue
        if folder and patterns.child_may_match(inner):
            yield from _visit(repo, node.subtree, path, patterns, inner)
