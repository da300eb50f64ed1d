"""Trees: one folder's listing, stored as a deduplicated blob of type tree.

A tree is canonical JSON (sorted keys, nodes sorted by name, no whitespace) so that an
unchanged folder produces the same bytes, hence the same blob id, and is stored once.
Names that are not valid UTF-8 survive through Python's surrogate escapes, which JSON keeps
as ``\\udcXX`` escapes. Access times are not stored: reading a file changes them, and
storing them would make every backup write every tree again.

Extended attributes (POSIX ACLs and file capabilities among them: Linux shows both as
attributes) are kept as ``xattrs``, an object from attribute name to the value in base64,
written only when an item has any: a node without them encodes as it did before they were
stored, so trees of folders without attributes keep their bytes and their ids.

Every name is one path component, and the names of a tree are strictly increasing
(:func:`check_names`, docs/format.md section 10). Restore, dump and everything else build
paths by joining names, so a tree written with the repository's key by someone hostile
(``../../etc/x``, ``..``, a name with ``/``, a symlink and a folder of the same name) must
fail to decode rather than reach them: decoding checks the names, every reader gets them
checked.
"""

from __future__ import annotations

import base64
import binascii
import json
import operator
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import orjson

from safehold.errors import FormatError
from safehold.ids import NO_HEX_ID, HexId

# Node types.
FILE = "file"
DIR = "dir"
SYMLINK = "symlink"
FIFO = "fifo"
CHARDEV = "chardev"
BLOCKDEV = "blockdev"
SOCKET = "socket"

# The attributes of every node without any (most nodes): one shared, read-only mapping
# rather than an empty dict per node (64 bytes each, a million in a large first backup).
NO_XATTRS: Mapping[str, bytes] = MappingProxyType({})


@dataclass(slots=True)
class Node:
    """One item of a folder as a tree stores it (docs/format.md, "Trees"); ids are the hex that
    the tree's JSON holds."""

    name: str
    type: str
    mode: int = 0
    uid: int = 0
    gid: int = 0
    user: str = ""
    group: str = ""
    mtime_ns: int = 0
    ctime_ns: int = 0
    size: int = 0
    inode: int = 0
    dev: int = 0
    links: int = 1
    rdev: int = 0
    target: str = ""  # symlink target
    subtree: HexId = NO_HEX_ID  # the folder's tree ("" for anything else)
    content: list[HexId] = field(default_factory=list)  # data blobs, in order
    sparse: bool = False
    error: str = ""  # why the file could not be read (the node keeps its metadata)
    # Extended attributes by name (ACLs are ``system.posix_acl_access``/``_default``).
    xattrs: Mapping[str, bytes] = field(default_factory=lambda: NO_XATTRS)

    def to_json(self) -> dict[str, Any]:
        """The node as a tree stores it (optional fields only when set)."""
        d: dict[str, Any] = {"name": self.name, "type": self.type, "mode": self.mode}
        if self.type != SYMLINK or self.uid or self.gid:
            d.update(uid=self.uid, gid=self.gid)
        if self.user:
            d["user"] = self.user
        if self.group:
            d["group"] = self.group
        d["mtime"] = self.mtime_ns
        d["ctime"] = self.ctime_ns
        if self.type == FILE:
            d["size"] = self.size
            d["inode"] = self.inode
            d["content"] = self.content
            if self.sparse:
                d["sparse"] = True
        if self.links > 1:
            d.update(links=self.links, inode=self.inode, dev=self.dev)
            # (files always carry their inode: it is part of change detection)
        if self.rdev:
            d["rdev"] = self.rdev
        if self.target:
            d["target"] = self.target
        if self.subtree:
            d["subtree"] = self.subtree
        if self.error:
            d["error"] = self.error
        if self.xattrs:
            d["xattrs"] = encode_xattrs(self.xattrs)
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any], *, strict: bool = True) -> Node:
        """The node of a tree's JSON object; ``strict=False`` leaves out attributes that
        are not valid (:func:`decode_xattrs`) instead of raising ValueError."""
        return cls(
            name=d["name"],
            type=d["type"],
            mode=d.get("mode", 0),
            uid=d.get("uid", 0),
            gid=d.get("gid", 0),
            user=d.get("user", ""),
            group=d.get("group", ""),
            mtime_ns=d.get("mtime", 0),
            ctime_ns=d.get("ctime", 0),
            size=d.get("size", 0),
            inode=d.get("inode", 0),
            dev=d.get("dev", 0),
            links=d.get("links", 1),
            rdev=d.get("rdev", 0),
            target=d.get("target", ""),
            subtree=d.get("subtree", ""),
            content=list(d.get("content", ())),
            sparse=bool(d.get("sparse", False)),
            error=d.get("error", ""),
            xattrs=_xattrs(d["xattrs"], strict) if "xattrs" in d else NO_XATTRS,
        )


def _xattrs(raw: Any, strict: bool) -> Mapping[str, bytes]:
    try:
        return decode_xattrs(raw)
    except ValueError:
        if strict:
            raise
        return NO_XATTRS


def encode_xattrs(attrs: Mapping[str, bytes]) -> dict[str, str]:
    """A node's ``xattrs`` field: each value in standard base64 (with padding)."""
    return {name: base64.b64encode(value).decode("ascii") for name, value in attrs.items()}


def decode_xattrs(raw: Any) -> dict[str, bytes]:
    """The attributes of a node's ``xattrs`` field; ValueError if it is not one (a damaged
    or hostile tree: an object of names, each without NUL, to base64 strings)."""
    if not isinstance(raw, dict):
        raise ValueError("its xattrs are not an object")
    out = {}
    for name, value in raw.items():
        if not isinstance(value, str) or not name or "\0" in name:
            raise ValueError(f"its extended attribute {name!r} is invalid")
        try:
            out[name] = base64.b64decode(value, validate=True)
        except binascii.Error as exc:
            raise ValueError(f"its extended attribute {name!r} is not base64") from exc
    return out


def encode_tree(nodes: list[Node]) -> bytes:
    """The canonical bytes of a tree of ``nodes``, whatever their order."""
    return encode_tree_json([n.to_json() for n in nodes])


def encode_tree_json(nodes: list[dict[str, Any]]) -> bytes:
    """Canonical bytes of a tree given its nodes' JSON objects (in any order)."""
    return encode_tree_parts([(str(n["name"]), node_json(n)) for n in nodes])


def node_json(node: dict[str, Any]) -> str:
    """One node's canonical JSON text, as it appears inside its tree's bytes.

    The canonical form is the standard library's (sorted keys, no spaces, everything but
    printable ASCII escaped). orjson writes the same text 5x faster whenever that text is
    printable ASCII, which is every node whose names are: it differs only in writing
    non-ASCII characters and DEL unescaped, and in refusing lone surrogates and integers
    past 64 bits. Any of those takes the standard path, so the bytes never change.
    """
    try:
        out = orjson.dumps(node, option=orjson.OPT_SORT_KEYS)
    except (orjson.JSONEncodeError, TypeError):
        pass
    else:
        if out.isascii() and b"\x7f" not in out:
            return out.decode("ascii")
    return json.dumps(node, sort_keys=True, separators=(",", ":"))


def encode_tree_parts(parts: list[tuple[str, str]]) -> bytes:
    """Canonical bytes of a tree given ``(name, node_json(node))`` of each node (in any
    order): the same bytes as ``encode_tree_json`` of the nodes themselves, so a caller
    can keep a node's text instead of the larger object until its tree is saved.
    Refuses (FormatError) names that readers would refuse: no tree is written that no one
    can read back."""
    parts.sort(key=lambda p: p[0])
    check_names([p[0] for p in parts], "the tree to write")
    body = ",".join(text for _, text in parts)
    return ('{"nodes":[' + body + "]}").encode("utf-8", "surrogatepass")


def _loads(raw: bytes) -> Any:
    # orjson parses trees about 2.5x faster (a no-change backup decodes every tree). It
    # refuses the lone-surrogate escapes that encode names which are not UTF-8; the
    # standard parser takes those, and any other document orjson refuses.
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return json.loads(raw.decode("utf-8", "surrogatepass"))


def decode_tree_json(raw: bytes, what: str = "tree") -> list[dict[str, Any]]:
    """The nodes' JSON objects, without building :class:`Node` objects (backup's and
    restore's fast path); names checked as by :func:`check_names`."""
    try:
        nodes: list[dict[str, Any]] = _loads(raw)["nodes"]
        names = [n["name"] for n in nodes]
    except (ValueError, KeyError, TypeError) as exc:
        raise FormatError(f"{what} is not a valid tree: {exc}") from exc
    check_names(names, what)
    return nodes


def decode_tree(raw: bytes, what: str = "tree", *, check: bool = True) -> list[Node]:
    """The nodes of a tree; ``check=False`` skips the name rules and invalid attributes,
    for a caller that only collects the blob ids a tree names (prune's mark must keep a
    hostile tree's blobs as surely as any other's, and must not stop at it)."""
    try:
        nodes = [Node.from_json(n, strict=check) for n in _loads(raw)["nodes"]]
    except (ValueError, KeyError, TypeError) as exc:
        raise FormatError(f"{what} is not a valid tree: {exc}") from exc
    if check:
        check_names([n.name for n in nodes], what)
    return nodes


def check_names(names: list[Any], what: str = "tree") -> None:
    """Raise FormatError unless every name is one path component (a non-empty string
    without ``/`` or NUL, neither ``.`` nor ``..``) and the names are strictly increasing
    (sorted, so no name twice: a symlink and a folder of one name would let the second
    be written through the first).

    Restore and backup decode tens of thousands of trees, so the common case is checked
    by a few calls into C over the joined names (2.5 µs for a tree of 30 names, which
    takes 13 µs to parse); only a tree that fails is looked at name by name, to say
    which name and why.
    """
    if not names:
        return
    try:
        joined = "/".join(names)  # TypeError unless every name is a string
    except TypeError:
        joined = ""
    wrapped = "/" + joined + "/"
    if (
        joined
        and joined.count("/") == len(names) - 1  # no name holds a "/"
        and "\0" not in joined
        and "//" not in wrapped  # no empty name
        and "/./" not in wrapped
        and "/../" not in wrapped
        and all(map(operator.lt, names, names[1:]))
    ):
        return
    raise FormatError(f"{what} is damaged or hostile: {_name_problem(names)}")


def _name_problem(names: list[Any]) -> str:
    previous: str | None = None
    for name in names:
        if not isinstance(name, str):
            return f"a name is not a string ({name!r})"
        if name in ("", ".", ".."):
            return f"it holds the name {name!r}, which is not a file name"
        if "/" in name:
            return f"the name {name!r} is a path, not one file name (it holds a '/')"
        if "\0" in name:
            return f"the name {name!r} holds a NUL, which no file name can"
        if previous is not None and name <= previous:
            if name == previous:
                return f"it holds the name {name!r} twice"
            return f"its names are not sorted ({name!r} after {previous!r})"
        previous = name
    return "its names are invalid"  # (not reached: check_names found a problem)
