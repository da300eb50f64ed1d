"""Tree encoding: canonical bytes, and names that are not valid UTF-8 surviving a round trip."""

from __future__ import annotations

import json

import pytest

from safehold.errors import FormatError
from safehold.repository import tree as t

NAMES = ["plain.txt", "caf\u00e9", "\u65e5\u672c", "bad-\udce9-byte", "\udcff"]


def _node(name: str) -> t.Node:
    return t.Node(
        name=name,
        type=t.FILE,
        mode=0o100644,
        mtime_ns=1_763_800_000_123_456_789,
        ctime_ns=1_763_800_000_123_456_789,
        size=12,
        inode=2**64 - 1,  # the largest inode a file system can report
        content=["ab" * 32],
    )


@pytest.mark.parametrize("name", NAMES)
def test_round_trip_of_every_kind_of_name(name: str) -> None:
    raw = t.encode_tree([_node(name), _node("z")])
    back = t.decode_tree(raw)
    assert [n.name for n in back] == sorted([name, "z"])
    assert back[[n.name for n in back].index(name)] == _node(name)
    as_json = t.decode_tree_json(raw)
    assert [n["name"] for n in as_json] == [n.name for n in back]
    assert t.encode_tree_json(as_json) == raw  # decoding and encoding again is canonical


def test_encoding_from_node_texts_is_the_canonical_document() -> None:
    nodes = [_node(n).to_json() for n in NAMES]
    doc = {"nodes": sorted(nodes, key=lambda n: str(n["name"]))}
    canonical = json.dumps(doc, sort_keys=True, separators=(",", ":")).encode(
        "utf-8", "surrogatepass"
    )
    assert t.encode_tree_json(nodes) == canonical
    parts = [(str(n["name"]), t.node_json(n)) for n in reversed(nodes)]
    assert t.encode_tree_parts(parts) == canonical
    assert t.encode_tree_parts([]) == b'{"nodes":[]}' == t.encode_tree_json([])


def test_encoding_is_ascii_and_order_independent() -> None:
    a = t.encode_tree([_node(n) for n in NAMES])
    b = t.encode_tree([_node(n) for n in reversed(NAMES)])
    assert a == b
    a.decode("ascii")


@pytest.mark.parametrize("raw", [b"", b"{", b"[]", b'{"nodes": 3}', b'{"x": []}', b"\xff\xfe"])
def test_damaged_trees_are_format_errors(raw: bytes) -> None:
    with pytest.raises(FormatError, match="not a valid tree"):
        t.decode_tree(raw)
    if raw != b'{"nodes": 3}':  # a number where the list belongs is only found on use
        with pytest.raises(FormatError, match="not a valid tree"):
            t.decode_tree_json(raw)


@pytest.mark.parametrize(
    "value",
    [
        "plain",
        "tab\tnew\nline\r\x00\x1f",
        "del\x7f",
        "caf\u00e9",
        "\U0001f600",
        "bad-\udce9",
        'quote" back\\ slash /',
    ],
)
@pytest.mark.parametrize("number", [0, -1, 2**63 - 1, 2**64 - 1, 2**70, -(2**63)])
def test_node_text_is_the_standard_canonical_json(value: str, number: int) -> None:
    # node_json takes a faster encoder when it can; its text must never differ.
    node = {"name": value, "type": "file", "size": number, "target": value, "sparse": True}
    node["content"] = ["ab" * 32, value]
    assert t.node_json(node) == json.dumps(node, sort_keys=True, separators=(",", ":"))
