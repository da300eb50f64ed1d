"""restic's patterns (policy/patterns.py): components as Go's filepath.Match reads them, and
lists matched as restic's filter.List reads them, against a plain reference written from
restic's rule (every run of a path's components is tried), for generated patterns and paths.
What restic itself selects on a real tree is compared in tests/integration/test_excludes_restic.py.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from safehold.errors import UsageError
from safehold.policy.patterns import (
    PatternList,
    decode_text,
    every_name,
    expand_env,
    go_match,
    parse_pattern_lines,
    parse_size,
    text_lines,
)

PROPERTY = settings(deadline=None, max_examples=400)


@pytest.mark.parametrize(
    ("pattern", "name", "expected"),
    [
        ("abc", "abc", True),
        ("*", "abc", True),
        ("*", ".hidden", True),  # no special case for a leading dot, unlike a shell
        ("*c", "abc", True),
        ("a*", "a", True),
        ("a*b*c*d", "axbxcxd", True),
        ("a*b?c*x", "abxbbxdbxebxczzx", True),
        ("a*b?c*x", "abxbbxdbxebxczzy", False),
        ("ab[c]", "abc", True),
        ("ab[b-d]", "abc", True),
        ("ab[e-g]", "abc", False),
        ("ab[^c]", "abc", False),
        ("ab[^e-g]", "abc", True),
        ("ab[!c]", "ab!", True),  # '!' does not negate a class in Go (fnmatch: it does)
        ("ab[!c]", "abd", False),
        ("a\\*b", "a*b", True),
        ("a\\*b", "axb", False),
        ("a?b", "a\u263ab", True),  # one character, not one byte
        ("a[^a]b", "a\u263ab", True),
        ("[\\]a]", "]", True),
        ("[\\-]", "-", True),
        ("[x\\-]", "-", True),
        ("[x\\-]", "z", False),
        ("[z-a]", "m", False),  # an inverted range matches nothing
        ("[^z-a]", "m", True),
        ("a.b", "axb", False),  # regular-expression characters are plain
        ("(a|b)", "(a|b)", True),
        ("*x", "xxx", True),
        ("a*", "a\nb", True),  # names may hold newlines
    ],
)
def test_components_match_as_go_does(pattern: str, name: str, expected: bool) -> None:
    assert go_match(pattern, name) is expected


@pytest.mark.parametrize(
    "pattern", ["[]a]", "[-]", "[x-]", "[-x]", "\\", "[a-b-c]", "[", "[^", "a["]
)
def test_malformed_components_are_refused(pattern: str) -> None:
    with pytest.raises(ValueError):
        go_match(pattern, "a")
    with pytest.raises(UsageError, match="invalid --exclude pattern"):
        PatternList([f"/x/{pattern}"], what="--exclude")


# --- lists, against the reference ---------------------------------------------------------


def _split(path: str) -> list[str]:
    parts = [p for p in path.split("/") if p]
    return ["/", *parts] if path.startswith("/") else parts


def _ref_pattern(pattern: str) -> tuple[bool, list[str]]:
    from safehold.policy.patterns import _clean

    negated = pattern.startswith("!")
    text = pattern[1:] if negated else pattern
    parts = _split(_clean(text))
    if text.rstrip("/") == "" and text.startswith("/"):
        parts = ["/", "**"]
    return negated, parts


def _seq(parts: list[str], comps: list[str]) -> bool:
    """``parts`` (with "**" for any number of components) match all of ``comps``."""
    if not parts:
        return not comps
    if parts[0] == "**":
        return any(_seq(parts[1:], comps[k:]) for k in range(len(comps) + 1))
    if not comps:
        return False
    head = (
        parts[0] == comps[0]
        if parts[0] == "/"
        else comps[0] != "/" and go_match(parts[0], comps[0])
    )
    return head and _seq(parts[1:], comps[1:])


def _ref_match(parts: list[str], path: str) -> bool:
    """restic's rule: a pattern matches when it matches some run of the path's components
    (from the root, if the pattern is; never including the root, if it is not)."""
    comps = _split(path)
    first = 1 if comps[:1] == ["/"] else 0
    starts = [0] if parts[0] == "/" else list(range(first, len(comps)))
    # a run is never empty ("**" alone takes at least one component in restic)
    return any(_seq(parts, comps[i:j]) for i in starts for j in range(i + 1, len(comps) + 1))


def _ref_list(patterns: list[str], path: str) -> bool:
    result = False
    for pattern in patterns:
        negated, parts = _ref_pattern(pattern)
        if _ref_match(parts, path):
            result = not negated
    return result


def _ref_child(patterns: list[str], path: str) -> bool:
    """restic's ListWithChild: a relative pattern may always match below; an anchored one
    while its components, up to a "**", agree with the path's (or once it matched)."""
    result = False
    comps = _split(path)
    for pattern in patterns:
        negated, parts = _ref_pattern(pattern)
        m = _ref_match(parts, path)
        if negated:
            result = result and not m
            continue
        if parts[0] != "/":
            result = True
            continue
        cut = parts.index("**") if "**" in parts else len(parts)
        strs = comps[:cut] if len(comps) >= cut else comps
        n = min(len(strs), cut)
        if _seq(parts[:n], strs[:n]) or m:
            result = True
    return result


NAMES = st.sampled_from(["a", "b", "ab", "ba", "c"])
GLOBS = st.sampled_from(["a", "b", "ab", "*", "?", "a*", "*b", "[ab]", "[^a]", "**"])
PATHS = st.lists(NAMES, min_size=1, max_size=5).map(lambda parts: "/" + "/".join(parts))
PATTERNS = st.builds(
    lambda absolute, parts, slash: (
        ("/" if absolute else "") + "/".join(parts) + ("/" if slash else "")
    ),
    st.booleans(),
    st.lists(GLOBS, min_size=1, max_size=4),
    st.booleans(),
)
NEGATABLE = st.builds(lambda neg, p: ("!" + p) if neg else p, st.booleans(), PATTERNS)


@PROPERTY
@given(st.lists(PATTERNS, min_size=1, max_size=3), PATHS)
def test_a_list_matches_as_restic_does(patterns: list[str], path: str) -> None:
    plist = PatternList(patterns)
    assert plist.match(path) == _ref_list(patterns, path)


@PROPERTY
@given(st.lists(NEGATABLE, min_size=1, max_size=3), PATHS)
def test_negated_patterns_take_back_earlier_matches(patterns: list[str], path: str) -> None:
    plist = PatternList(patterns)
    assert plist.match(path) == _ref_list(patterns, path)
    assert plist.child_may_match(plist.state_of(path)) == _ref_child(patterns, path)


@PROPERTY
@given(st.lists(NEGATABLE, min_size=1, max_size=3), PATHS, NAMES)
def test_the_test_of_a_folder_s_names_is_the_match_of_its_items(
    patterns: list[str], folder: str, name: str
) -> None:
    """What a walk asks once per folder answers for each item as the whole path would."""
    plist = PatternList(patterns)
    test = plist.names(plist.state_of(folder))
    got = test(name) if test is not None else False
    assert got == _ref_list(patterns, f"{folder}/{name}")


@PROPERTY
@given(st.lists(PATTERNS, min_size=1, max_size=3), PATHS, st.sampled_from(["A", "Ab", "B"]))
def test_ignoring_case_lower_cases_patterns_and_paths(
    patterns: list[str], folder: str, name: str
) -> None:
    upper = [p.upper() for p in patterns]
    plist = PatternList(upper, ignore_case=True)
    path = f"{folder.upper()}/{name}"
    assert plist.match(path) == _ref_list(patterns, path.lower())
    test = plist.names(plist.state_of(folder.upper()))
    assert (test(name) if test else False) == plist.match(path)


@pytest.mark.parametrize(
    ("pattern", "matches", "misses"),
    [
        ("docs/sources", ["/srv/docs/sources", "/docs/sources/x.md"], ["/srv/docs", "/sources"]),
        ("deep/*.log", ["/x/deep/a.log"], ["/x/deep/a/b.log", "/x/a.log"]),
        ("/srv/*.md", ["/srv/a.md", "/srv/a.md/inner"], ["/srv/sub/b.md", "/x/srv/a.md"]),
        ("cache/", ["/a/cache", "/cache/f"], ["/a/cached"]),
        ("**/y/*.log", ["/x/y/q.log", "/y/q.log"], ["/x/y/z/q.log"]),
        ("x/**/*.log", ["/x/a.log", "/x/y/z/a.log", "/p/x/y/a.log"], ["/x.log"]),
        ("/", ["/", "/a"], []),
        ("**", ["/a", "/a/b"], []),
        ("./a/../b", ["/x/b"], ["/x/a"]),
    ],
)
def test_what_the_issue_names(pattern: str, matches: list[str], misses: list[str]) -> None:
    plist = PatternList([pattern])
    for path in matches:
        assert plist.match(path), path
    for path in misses:
        assert not plist.match(path), path


def test_a_matched_folder_takes_every_name_below_it() -> None:
    plist = PatternList(["cache", "*.tmp"])
    assert plist.names(plist.state_of("/srv/cache")) is every_name
    test = plist.names(plist.state_of("/srv"))
    assert test is not None and test("cache") and test("x.tmp") and not test("x.txt")
    assert PatternList(["/srv/a"]).names(PatternList(["/srv/a"]).state_of("/etc")) is None


# --- files and sizes ------------------------------------------------------------------------


def test_exclude_files_read_as_restic_reads_them() -> None:
    text = decode_text(
        b"\xef\xbb\xbf# comment\n  *.tmp  \r\n\n$HOME/.cache\n${HOME}x\n$$RECYCLE.BIN\n"
        b"$UNSET/a\n$/b\n${}c\n"
    )
    env = {"HOME": "/home/u"}
    assert parse_pattern_lines(text, env) == [
        "*.tmp",
        "/home/u/.cache",
        "/home/ux",
        "$RECYCLE.BIN",
        "/a",
        "$/b",
        "c",
    ]
    assert decode_text("a\nb".encode("utf-16")) == "a\nb"
    assert text_lines("a\r\nb\x0bc\n\nd") == ["a", "b\x0bc", "", "d"]
    assert expand_env("$1x$", {"1": "one"}) == "onex$"


@pytest.mark.parametrize(
    ("text", "size"),
    [("2048", 2048), ("10b", 10), ("1k", 1024), ("1K", 1024), ("3m", 3 << 20), ("1G", 1 << 30)],
)
def test_sizes_are_restic_s(text: str, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "1.5k", "k", "1kb", "-1", "1 x"])
def test_bad_sizes_are_refused(text: str) -> None:
    with pytest.raises(UsageError, match="is not a size"):
        parse_size(text)
