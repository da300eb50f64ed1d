"""Path patterns as restic 0.14 reads them: backup excludes, restore includes and excludes.

A pattern is a path whose components are globs; it is matched against a whole path (always
absolute here: a backup's items, a snapshot's nodes), component by component:

- ``*`` and ``?`` never cross a ``/``; ``[a-z]``, ``[^a-z]`` and ``\\*`` are as in Go's
  ``filepath.Match`` (``^`` negates a class, a backslash escapes);
- ``**`` as a whole component spans any number of folders, none included;
- a pattern without a leading ``/`` matches at any depth, one with it is anchored at the root;
- a pattern matches a path when it matches any run of the path's components, so it takes
  in everything below what it names: ``docs/sources`` matches ``/srv/docs/sources`` and
  ``/srv/docs/sources/x.md``, ``deep/*.log`` matches ``/x/deep/a.log`` but not
  ``/x/deep/a/b.log``, ``/srv/*.md`` matches ``/srv/a.md`` only;
- the pattern is first cleaned as a path (Go's ``filepath.Clean``): a trailing ``/`` goes,
  so ``cache/`` also matches a file named ``cache``, as in restic;
- in a list, a pattern starting with ``!`` takes back what the patterns before it matched
  (restic's negated patterns); an empty pattern is ignored.

Case-insensitive lists (``--iexclude``) lower-case both the patterns and the paths.

How it is matched: restic tries every run of components for every path. Here a list is an
automaton over components. A folder's :class:`State` says which patterns matched the folder
or a folder above it, and how far each pattern's components have matched into the
folder's path; :meth:`PatternList.enter` steps into a sub-folder (a few comparisons per
pattern), and :meth:`PatternList.names` gives, once per folder, a test for the names of its
items: a set lookup for plain names, one compiled expression for globs, nothing at all when
no pattern can match there. A walk thus pays per folder, not per item, for what it cannot
answer from a name.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from safehold.errors import UsageError

__all__ = [
    "SIZE_SYNTAX",
    "SYNTAX",
    "NameTest",
    "PatternList",
    "State",
    "decode_text",
    "every_name",
    "expand_env",
    "go_match",
    "parse_pattern_lines",
    "parse_size",
    "text_lines",
]

# For --help texts and error hints: the syntax in one line.
SYNTAX = (
    "restic's pattern syntax: '*' and '?' stay within one name, '**' spans folders, a "
    "pattern without a leading '/' matches at any depth, one with it from the root, "
    "'!PATTERN' takes back an earlier match"
)
SIZE_SYNTAX = "bytes, or with a suffix k, m, g or t (powers of 1024, as restic reads them)"

# A test for the names of a folder's items: True for a name the list matches.
NameTest = Callable[[str], bool]


_META = "*?[]\\"  # what makes a component a glob (restic's isSimple)


def _either(tests: list[NameTest]) -> NameTest | None:
    """One test for "any of ``tests``" (at most three: names, prefixes, globs)."""
    if len(tests) < 2:
        return tests[0] if tests else None
    a, b, *more = tests
    if not more:
        return lambda name: a(name) or b(name)
    rest = _either(more)
    assert rest is not None
    return lambda name: a(name) or b(name) or rest(name)


def every_name(_name: str) -> bool:
    """The test :meth:`PatternList.names` gives where every name matches."""
    return True


@dataclass(frozen=True, slots=True)
class _Part:
    text: str  # compared as is when ``rx`` is None
    rx: re.Pattern[str] | None
    double: bool  # "**"

    def matches(self, name: str) -> bool:
        if self.rx is None:
            return name == self.text
        return self.rx.match(name) is not None


_DOUBLE = _Part("**", None, True)


@dataclass(frozen=True, slots=True)
class _Pattern:
    original: str
    negated: bool
    absolute: bool
    parts: tuple[_Part, ...]  # after the root marker of an absolute pattern


@dataclass(frozen=True, slots=True)
class State:
    """Where a list's patterns stand at a folder: ``matched``, a bit per pattern that
    matched the folder or a folder above it; ``live``, the (pattern, components matched)
    pairs still under way (those of relative patterns that start here are implied)."""

    matched: int
    live: frozenset[tuple[int, int]]


def _bad(pattern: str, why: str, what: str) -> UsageError:
    return UsageError(f"invalid {what} pattern {pattern!r}: {why}", hint=SYNTAX)


def _class_char(part: str, i: int) -> tuple[str, int]:
    """One character of a ``[...]`` class at ``part[i]`` (Go's ``getEsc``)."""
    if i >= len(part):
        raise ValueError("unterminated '['")
    c = part[i]
    if c in "-]":
        raise ValueError(f"'{c}' must be escaped in a class")
    if c == "\\":
        i += 1
        if i >= len(part):
            raise ValueError("a class ends in a backslash")
        c = part[i]
    return c, i + 1


def _translate(part: str) -> str:
    """A regular expression for one glob component, as Go's ``filepath.Match`` reads it;
    ValueError for what Go rejects as a bad pattern."""
    out: list[str] = []
    i, n = 0, len(part)
    while i < n:
        c = part[i]
        i += 1
        if c == "*":
            if not out or out[-1] != ".*":
                out.append(".*")
        elif c == "?":
            out.append(".")
        elif c == "\\":
            if i >= n:
                raise ValueError("it ends in a backslash")
            out.append(re.escape(part[i]))
            i += 1
        elif c == "[":
            negated = i < n and part[i] == "^"
            if negated:
                i += 1
            ranges: list[str] = []
            count = 0
            while True:
                if i < n and part[i] == "]" and count:
                    i += 1
                    break
                lo, i = _class_char(part, i)
                hi = lo
                if i < n and part[i] == "-":
                    hi, i = _class_char(part, i + 1)
                count += 1
                if lo <= hi:  # Go: an inverted range matches nothing
                    ranges.append(re.escape(lo) if lo == hi else f"{re.escape(lo)}-{re.escape(hi)}")
            if ranges:
                out.append(f"[{'^' if negated else ''}{''.join(ranges)}]")
            else:
                out.append("." if negated else "(?!)")
        else:
            out.append(re.escape(c))
    return "".join(out)


def _part(text: str) -> _Part:
    if text == "**":
        return _DOUBLE
    if not any(c in text for c in _META):
        return _Part(text, None, False)
    return _Part(text, re.compile(f"(?s:{_translate(text)})\\Z"), False)


def go_match(pattern: str, name: str) -> bool:
    """Go's ``filepath.Match`` for one component (no ``/`` in ``name``); ValueError for a
    malformed pattern."""
    return _part(pattern).matches(name)


def _clean(path: str) -> str:
    """Go's ``filepath.Clean``: no empty or ``.`` components, ``..`` resolved lexically,
    no trailing ``/``."""
    rooted = path.startswith("/")
    out: list[str] = []
    for comp in path.split("/"):
        if comp in ("", "."):
            continue
        if comp == "..":
            if out and out[-1] != "..":
                out.pop()
            elif not rooted:
                out.append("..")
            continue
        out.append(comp)
    joined = "/".join(out)
    if rooted:
        return "/" + joined
    return joined or "."


def _compile(original: str, *, ignore_case: bool, what: str) -> _Pattern:
    text = original.lower() if ignore_case else original
    negated = text.startswith("!")
    if negated:
        text = text[1:]
    cleaned = _clean(text)
    absolute = cleaned.startswith("/")
    comps = [c for c in cleaned.split("/") if c]
    # "X/**" matches what "X" matches: a match takes in everything below it anyway.
    while comps and comps[-1] == "**":
        comps.pop()
    if not comps and not absolute:
        comps = ["*"]  # "**" alone: every path but the root
    try:
        parts = tuple(_part(c) for c in comps)
    except ValueError as exc:
        raise _bad(original, str(exc), what) from None
    return _Pattern(original, negated, absolute, parts)


class PatternList:
    """An ordered list of patterns, as restic's ``filter.List`` reads it: a path matches
    when the last pattern that matches it is not negated."""

    def __init__(
        self, patterns: Iterable[str], *, ignore_case: bool = False, what: str = "exclude"
    ) -> None:
        self.ignore_case = ignore_case
        self.patterns = tuple(
            _compile(p, ignore_case=ignore_case, what=what) for p in patterns if p
        )
        self.negated = any(p.negated for p in self.patterns)
        # Relative patterns may start at any folder: their first components, closed over
        # a leading "**", are live everywhere.
        self._starts = frozenset(
            s for i, p in enumerate(self.patterns) if not p.absolute for s in self._closure(i, 0)
        )
        anchored: set[tuple[int, int]] = set()
        for i, p in enumerate(self.patterns):
            if p.absolute:
                anchored.update(self._closure(i, 0))
        self.root = self._state(0, anchored)
        self._tests: dict[State, NameTest | None] = {}

    def __bool__(self) -> bool:
        return bool(self.patterns)

    def _closure(self, i: int, k: int) -> list[tuple[int, int]]:
        """(i, k), and the states a "**" at k lets through without a component."""
        parts = self.patterns[i].parts
        out = [(i, k)]
        while k < len(parts) and parts[k].double:
            k += 1
            out.append((i, k))
        return out

    def _state(self, matched: int, live: Iterable[tuple[int, int]]) -> State:
        keep = set()
        for i, k in live:
            if k == len(self.patterns[i].parts):
                matched |= 1 << i
            else:
                keep.add((i, k))
        return State(matched, frozenset(keep))

    def _fold(self, matched: int) -> bool:
        """restic's rule: a match counts unless a later negated pattern matches too."""
        if not matched:
            return False
        if not self.negated:
            return True
        result = False
        for i, p in enumerate(self.patterns):
            if matched >> i & 1:
                result = not p.negated
        return result

    def enter(self, state: State, name: str) -> State:
        """The state of the folder (or item) ``name`` inside a folder in ``state``."""
        if self.ignore_case:
            name = name.lower()
        live: list[tuple[int, int]] = []
        for i, k in state.live | self._starts:
            part = self.patterns[i].parts[k]
            if part.double:
                live.extend(self._closure(i, k))  # "**" takes this one, may take more
            elif part.matches(name):
                live.extend(self._closure(i, k + 1))
        return self._state(state.matched, live)

    def state_of(self, path: str) -> State:
        """The state of an absolute path, stepped from the root."""
        state = self.root
        for comp in path.split("/"):
            if comp:
                state = self.enter(state, comp)
        return state

    def matched(self, state: State) -> bool:
        """Whether the path in ``state`` matches the list (restic's ``filter.List``)."""
        return self._fold(state.matched)

    def match(self, path: str) -> bool:
        """Whether ``path`` (absolute) matches the list."""
        return self.matched(self.state_of(path))

    def matching(self, path: str) -> list[str]:
        """The patterns (as given) that match ``path`` or a folder above it."""
        bits = self.state_of(path).matched
        return [p.original for i, p in enumerate(self.patterns) if bits >> i & 1]

    def child_may_match(self, state: State) -> bool:
        """Whether something below the path in ``state`` may match (restic's
        ``ListWithChild``): always, for a relative pattern; for an anchored one, while its
        components still match the path, or once it matched."""
        result = False
        for i, p in enumerate(self.patterns):
            m = bool(state.matched >> i & 1)
            if p.negated:
                result = result and not m
            elif not p.absolute or m or any(j == i for j, _k in state.live):
                result = True
        return result

    def names(self, state: State) -> NameTest | None:
        """A test for the names of the items of a folder in ``state`` (None: no item can
        match). Built once per distinct state."""
        try:
            return self._tests[state]
        except KeyError:
            pass
        test = self._names(state)
        if len(self._tests) < 4096:
            self._tests[state] = test
        return test

    def _names(self, state: State) -> NameTest | None:
        # The patterns whose last component is all that is left to match.
        last: list[int] = sorted(
            i for i, k in state.live | self._starts if k == len(self.patterns[i].parts) - 1
        )
        if self.negated:
            return self._fold_test(state, last)
        if state.matched:
            return every_name
        # The cheapest test for each: a set of plain names, str.endswith / startswith for
        # "*.log" / "core*" (one C call for all of them), one expression for other globs.
        plain: set[str] = set()
        suffixes: list[str] = []
        prefixes: list[str] = []
        bodies: set[str] = set()
        for i in last:
            part = self.patterns[i].parts[-1]
            text = part.text
            if part.rx is None:
                plain.add(text)
            elif text.startswith("*") and not any(c in text[1:] for c in _META):
                suffixes.append(text[1:])
            elif text.endswith("*") and not any(c in text[:-1] for c in _META):
                prefixes.append(text[:-1])
            else:
                bodies.add(part.rx.pattern)
        tests: list[NameTest] = []
        names, ends = frozenset(plain), tuple(suffixes)
        if plain and suffixes:  # the usual list ("cache", "*.tmp"): one call per name
            tests.append(lambda name: name in names or name.endswith(ends))
        elif plain:
            tests.append(names.__contains__)
        elif suffixes:
            tests.append(lambda name: name.endswith(ends))
        if prefixes:
            starts = tuple(prefixes)
            tests.append(lambda name: name.startswith(starts))
        if bodies:
            match = re.compile("|".join(f"(?:{b})" for b in sorted(bodies))).match
            tests.append(lambda name: match(name) is not None)
        test = _either(tests)
        if test is None or not self.ignore_case:
            return test
        cased = test
        return lambda name: cased(name.lower())

    def _fold_test(self, state: State, last: list[int]) -> NameTest | None:
        """With negated patterns, each name is folded through the list in order."""
        live = set(last)
        order = [
            (p.negated, bool(state.matched >> i & 1), p.parts[-1] if i in live else None)
            for i, p in enumerate(self.patterns)
        ]
        order = [o for o in order if o[1] or o[2] is not None]
        if not order:
            return None
        lower = self.ignore_case

        def test(name: str) -> bool:
            if lower:
                name = name.lower()
            result = False
            for negated, matched, part in order:
                if matched or (part is not None and part.matches(name)):
                    result = not negated
            return result

        return test


def decode_text(data: bytes) -> str:
    """A text file as restic reads one (``textfile.Read``): a UTF-8 byte order mark is
    dropped, one of UTF-16 decodes it; otherwise UTF-8, with bytes that are not UTF-8 kept
    as surrogate escapes (so that a path holding such bytes still names its file)."""
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    elif data.startswith((b"\xfe\xff", b"\xff\xfe")):
        return data.decode("utf-16")
    return data.decode("utf-8", "surrogateescape")


def text_lines(text: str) -> list[str]:
    """Lines as Go's ``bufio.Scanner`` splits them: at ``\\n``, a ``\\r`` before it dropped
    (unlike ``str.splitlines``, which also splits at other control characters a file name
    may hold)."""
    lines = text.split("\n")
    if lines and not lines[-1]:
        lines.pop()
    return [line[:-1] if line.endswith("\r") else line for line in lines]


def parse_pattern_lines(text: str, env: Mapping[str, str]) -> list[str]:
    """The patterns of an ``--exclude-file``, as restic reads one: a line per pattern,
    surrounding white space, blank lines and ``#`` comments dropped, ``$VAR`` and ``${VAR}``
    replaced from ``env`` (``$$`` for a literal ``$``: ``$$RECYCLE.BIN``)."""
    out = []
    for raw in text_lines(text):
        line = raw.strip()
        if line and not line.startswith("#"):
            out.append(expand_env(line, env))
    return out


_SPECIAL = frozenset("*#$@!?-0123456789")


def _shell_name(s: str) -> tuple[str, int]:
    """Go's ``getShellName``: the variable name after a ``$``, and the characters it takes."""
    if s[0] == "{":
        if len(s) > 2 and s[1] in _SPECIAL and s[2] == "}":
            return s[1], 3
        end = s.find("}", 1)
        if end == 1:
            return "", 2  # "${}": dropped
        if end < 0:
            return "", 1  # "${" unclosed: dropped
        return s[1:end], end + 1
    if s[0] in _SPECIAL:
        return s[0], 1
    i = 0
    while i < len(s) and (s[i].isascii() and (s[i].isalnum() or s[i] == "_")):
        i += 1
    return s[:i], i


def expand_env(s: str, env: Mapping[str, str]) -> str:
    """Go's ``os.Expand`` with restic's mapping: ``$$`` is ``$``, an unset variable is
    empty, a ``$`` before no name stays."""
    out: list[str] = []
    i = j = 0
    while j < len(s):
        if s[j] == "$" and j + 1 < len(s):
            out.append(s[i:j])
            name, width = _shell_name(s[j + 1 :])
            if not name and width == 0:
                out.append("$")
            elif name:
                out.append("$" if name == "$" else env.get(name, ""))
            j += width
            i = j + 1
        j += 1
    out.append(s[i:])
    return "".join(out)


_SIZE = re.compile(r"([0-9]+)([bkmgt]?)", re.IGNORECASE)
_UNITS = {"": 1, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def parse_size(text: str, *, what: str = "--exclude-larger-than") -> int:
    """A size as restic's ``--exclude-larger-than`` reads it: ``2048``, ``500k``, ``1G``."""
    m = _SIZE.fullmatch(text.strip())
    if m is None:
        raise UsageError(f"{what}: {text!r} is not a size", hint=f"give {SIZE_SYNTAX}")
    return int(m.group(1)) * _UNITS[m.group(2).lower()]
