"""Identifiers: raw ids inside the program, hex where the format writes them as text.

The convention (docs/architecture.md, "Ids"): an id the format stores in binary (pack
headers, index files) is raw ``bytes`` in every signature: :data:`BlobId`, :data:`PackId`,
:data:`ChainId`. An id the format stores as text (in the JSON of trees and snapshots, in
object names) is carried as that text, :data:`HexId`, and turned into its raw form where
it meets the index or a pack (:func:`blob_from_hex`, :func:`chain_from_hex`): a tree
node's contents and subtree, a snapshot's tree, parent and chain. A snapshot has no raw
form at all: it is only ever found by its object name, :data:`SnapshotId`.

These are ``NewType``s, checked by mypy, so a raw id cannot be handed where its hex text is
expected (or a pack id where a blob id is) without a conversion. At run time they are the
plain types: calling one returns its argument.
"""

from __future__ import annotations

import os
from typing import NewType

ID_LEN = 32

BlobId = NewType("BlobId", bytes)
"""A blob's id: the keyed BLAKE3 of its plain bytes (32 bytes); trees are blobs too."""

PackId = NewType("PackId", bytes)
"""A pack's id: the unkeyed BLAKE3 of its stored bytes (32 bytes); named by its hex."""

ChainId = NewType("ChainId", bytes)
"""A chain's id (16 bytes), as pack headers and the index hold it; snapshots hold its hex."""

HexId = NewType("HexId", str)
"""An id as lowercase hex, the way trees, snapshots and object names store it."""

SnapshotId = NewType("SnapshotId", str)
"""A snapshot's id: the hex name of its object (the hash of its stored bytes)."""


# An id field that names nothing: a file's subtree, a first snapshot's parent, an issue
# that no pack is to blame for (the format writes "" for the hex ones).
NO_HEX_ID = HexId("")
NO_SNAPSHOT = SnapshotId("")
NO_PACK = PackId(b"")


def to_hex(raw: bytes) -> HexId:
    """The stored text form of a raw id."""
    return HexId(raw.hex())


def from_hex(text: str) -> bytes:
    """The raw form of a 32-byte hex id; raises ValueError for anything else."""
    raw = bytes.fromhex(text)
    if len(raw) != ID_LEN:
        raise ValueError(f"an id is {ID_LEN} bytes ({2 * ID_LEN} hex digits), got {len(raw)}")
    return raw


def blob_from_hex(text: str) -> BlobId:
    """A blob id from the hex a tree or snapshot holds. No length check (it runs once per
    blob read); a malformed id raises ValueError, and a wrong length finds no blob."""
    return BlobId(bytes.fromhex(text))


def chain_from_hex(text: str) -> ChainId:
    """A chain id from the hex a snapshot holds."""
    return ChainId(bytes.fromhex(text))


def random_id() -> bytes:
    """A random 32-byte id for an object whose name is not its content's hash."""
    # os.urandom is what secrets.token_bytes returns; importing secrets loads hmac and OpenSSL's
    # libcrypto (4.5 MB in every command), which nothing else needs.
    return os.urandom(ID_LEN)


def short(hex_id: str) -> str:
    """The 8-digit prefix people type and see in listings."""
    return hex_id[:8]
