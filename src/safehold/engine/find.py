"""The find use case: the paths of each snapshot that match restic-style patterns.

Patterns mean what they mean in ``restic find`` (and in excludes): a pattern is matched
against the whole path in the snapshot, component by component; ``*`` and ``?`` never
cross a ``/``, ``**`` spans any number of folders, a pattern without a leading ``/``
matches at any depth, one with it is anchored at the root. A match also takes in
everything below it: ``find cache`` lists the folder ``cache`` and what it holds, as
restic does. Folders that an anchored pattern can no longer reach are not entered.

Snapshots are searched oldest first; each snapshot's trees are read through the
repository's tree cache, so folders that did not change between snapshots are decoded once.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache

from safehold.engine.walk import walk
from safehold.errors import UsageError
from safehold.repository import tree as t
from safehold.repository.repository import Repository
from safehold.repository.snapshot import Snapshot

__all__ = ["FindMatcher", "find_in_snapshot"]


@dataclass(frozen=True)
class FindMatcher:
    """Several patterns: a path matches if any of them does."""

    patterns: tuple[tuple[str, ...], ...]
    ignore_case: bool = False

    @classmethod
    def compile(cls, patterns: list[str], *, ignore_case: bool = False) -> FindMatcher:
        parts = []
        for pattern in patterns:
            if not pattern.strip("/"):
                raise UsageError(
                    f"the pattern {pattern!r} names no file",
                    hint="give a name such as '*.log', a path such as 'etc/*.conf', or '/' "
                    "followed by an absolute path",
                )
            text = pattern.lower() if ignore_case else pattern
            split = _split(text)
            for part in split:
                if part not in ("/", "**"):
                    _component(part)  # refuse a malformed pattern before any reading
            parts.append(split)
        return cls(tuple(parts), ignore_case)

    def match(self, path: str) -> bool:
        """True if ``path`` (absolute, in the snapshot) or a folder above it matches."""
        strs = _split(path.lower() if self.ignore_case else path)
        return any(_match(p, strs) for p in self.patterns)

    def child_may_match(self, path: str) -> bool:
        """False when nothing below the folder ``path`` can match (only anchored patterns
        can tell)."""
        strs = _split(path.lower() if self.ignore_case else path)
        return any(_child_match(p, strs) for p in self.patterns)


def find_in_snapshot(
    repo: Repository, snap: Snapshot, matcher: FindMatcher
) -> Iterator[tuple[str, t.Node]]:
    """Every ``(path, node)`` of ``snap`` that matches, parents before children."""
    yield from _visit(repo, snap.tree, "", matcher)


def _visit(
    repo: Repository, tree_id: str, prefix: str, matcher: FindMatcher
) -> Iterator[tuple[str, t.Node]]:
    for node in repo.load_tree(tree_id):
        path = f"{prefix}/{node.name}"
        folder = node.type == t.DIR and bool(node.subtree)
        if matcher.match(path):
            yield path, node
            if folder:
                yield from walk(repo, node.subtree, path)  # below a match, all match
        elif folder and matcher.child_may_match(path):
            yield from _visit(repo, node.subtree, path, matcher)


# --- restic's filter.Match and filter.ChildMatch, component by component ---------------------
# A path and a pattern are lists of components; an absolute one starts with "/".


def _split(text: str) -> tuple[str, ...]:
    """Components of a cleaned path (``filepath.Clean`` then split, as restic does)."""
    absolute = text.startswith("/")
    parts: list[str] = []
    for part in text.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if parts and parts[-1] != "..":
                parts.pop()
            elif not absolute:
                parts.append(part)
            continue
        parts.append(part)
    return ("/", *parts) if absolute else tuple(parts)


def _match(pattern: tuple[str, ...], strs: tuple[str, ...]) -> bool:
    if "**" in pattern:
        # '**' stands for zero or more components: try each number that fits.
        pos = pattern.index("**")
        for n in range(len(strs) - len(pattern) + 2):
            if _match(pattern[:pos] + ("*",) * n + pattern[pos + 1 :], strs):
                return True
        return False
    if not pattern:
        return not strs
    if len(pattern) > len(strs):
        return False
    low, high = 0, len(strs) - len(pattern)
    if pattern[0] == "/":
        high = 0  # anchored at the root
    elif strs[0] == "/":
        low = 1  # a relative pattern never matches the root marker
    for offset in range(high, low - 1, -1):
        if all(_component(p).fullmatch(strs[offset + i]) for i, p in enumerate(pattern)):
            return True
    return False


def _child_match(pattern: tuple[str, ...], strs: tuple[str, ...]) -> bool:
    if pattern[0] != "/":
        return True  # a relative pattern may match at any depth
    if "**" in pattern:
        strs = strs[: pattern.index("**")]
    n = min(len(strs), len(pattern))
    return _match(pattern[:n], strs)


@lru_cache(maxsize=1024)
def _component(pattern: str) -> re.Pattern[str]:
    """Go's ``filepath.Match`` for one component: ``*``, ``?``, ``[...]`` (``[^...]``
    negates) and ``\\`` escapes."""
    out: list[str] = []
    i, n = 0, len(pattern)
    while i < n:
        c = pattern[i]
        i += 1
        if c == "*":
            out.append(".*")
        elif c == "?":
            out.append(".")
        elif c == "\\":
            if i >= n:
                raise _bad(pattern)
            out.append(re.escape(pattern[i]))
            i += 1
        elif c == "[":
            negate = i < n and pattern[i] == "^"
            i += negate
            ranges: list[str] = []
            while True:
                if i >= n:
                    raise _bad(pattern)
                if pattern[i] == "]" and ranges:
                    i += 1
                    break
                lo, i = _class_char(pattern, i)
                hi = lo
                if i < n and pattern[i] == "-":
                    hi, i = _class_char(pattern, i + 1)
                    if hi < lo:
                        raise _bad(pattern)
                ranges.append(re.escape(lo) if lo == hi else f"{re.escape(lo)}-{re.escape(hi)}")
            out.append(f"[{'^' if negate else ''}{''.join(ranges)}]")
        else:
            out.append(re.escape(c))
    return re.compile("".join(out), re.DOTALL)


def _class_char(pattern: str, i: int) -> tuple[str, int]:
    if i >= len(pattern) or pattern[i] in "-]":
        raise _bad(pattern)
    if pattern[i] == "\\":
        i += 1
        if i >= len(pattern):
            raise _bad(pattern)
    return pattern[i], i + 1


def _bad(pattern: str) -> UsageError:
    return UsageError(
        f"the pattern {pattern!r} is malformed",
        hint="'[' opens a character class that ']' must close; '\\' escapes the next character",
    )
