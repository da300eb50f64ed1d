"""Tree names (docs/format.md section 10): one path component each, strictly increasing.
Decoding refuses anything else with a FormatError naming the tree and the name (as its
repr); encoding never writes such a tree."""

from __future__ import annotations

import json

import pytest

from safehold.errors import FormatError, IntegrityError
from safehold.repository import tree as t

GOOD = ["...", ".hidden", "a b", "caf\u00e9", "bad-\udce9", "x..y", "\\", "\U0001f600", "-"]


def _raw(names: list[object]) -> bytes:
    nodes = [{"name": n, "type": "file", "mode": 0o644} for n in names]
    return json.dumps({"nodes": nodes}).encode("utf-8", "surrogatepass")


def _decoders() -> list[object]:
    return [t.decode_tree, t.decode_tree_json]


@pytest.mark.parametrize("decode", _decoders())
def test_good_names_decode(decode: object) -> None:
    names = sorted(GOOD)
    got = decode(_raw(names), "tree 12345678")  # type: ignore[operator]
    assert [n.name if isinstance(n, t.Node) else n["name"] for n in got] == names
    assert decode(b'{"nodes":[]}') == []  # type: ignore[operator]


BAD = [
    (["../../victim/x"], "'../../victim/x' is a path"),
    (["a/b"], "'a/b' is a path"),
    (["/abs"], "'/abs' is a path"),
    ([".."], "'..', which is not a file name"),
    (["."], "'.', which is not a file name"),
    ([""], "'', which is not a file name"),
    (["n\x00ul"], "'n\\x00ul' holds a NUL"),
    (["x", "x"], "'x' twice"),
    (["b", "a"], "not sorted ('a' after 'b')"),
    (["a", 5], "not a string (5)"),
    (["\x1b[2J\r/x"], "'\\x1b[2J\\r/x'"),
]


@pytest.mark.parametrize("decode", _decoders())
@pytest.mark.parametrize(("names", "said"), BAD)
def test_bad_names_are_refused_naming_tree_and_name(
    decode: object, names: list[object], said: str
) -> None:
    with pytest.raises(FormatError) as err:
        decode(_raw(names), "tree 12345678")  # type: ignore[operator]
    assert isinstance(err.value, IntegrityError)  # exit 4: damaged data
    assert err.value.message.startswith("tree 12345678 is damaged or hostile: ")
    assert said in err.value.message
    assert "\x1b" not in err.value.message and "\x00" not in err.value.message


def test_a_node_without_a_name_or_not_an_object_is_refused() -> None:
    for raw in (b'{"nodes":[{"type":"file"}]}', b'{"nodes":["x"]}', b'{"nodes":3}'):
        for decode in (t.decode_tree, t.decode_tree_json):
            with pytest.raises(FormatError, match="not a valid tree"):
                decode(raw)


def test_unchecked_decoding_for_collecting_blob_ids() -> None:
    nodes = t.decode_tree(_raw(["..", "a/b", "a/b"]), check=False)
    assert [n.name for n in nodes] == ["..", "a/b", "a/b"]


# (Writers sort; a name that is not a string is a bug of the caller's, not of a tree.)
@pytest.mark.parametrize(
    ("names", "said"),
    [b for b in BAD if b[0] != ["b", "a"] and all(isinstance(n, str) for n in b[0])],
)
def test_a_tree_with_bad_names_is_never_written(names: list[str], said: str) -> None:
    with pytest.raises(FormatError, match="the tree to write is damaged or hostile") as err:
        t.encode_tree([t.Node(name=n, type=t.FILE) for n in names])
    assert said in err.value.message
    with pytest.raises(FormatError):
        t.encode_tree_parts([(n, "{}") for n in names])
