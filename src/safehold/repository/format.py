"""Object headers and sealed objects: the outermost layer of every stored object.

Every stored object except key files starts with a 4-byte header::

    'S' 'H' | format version (1) | object type (1)

followed, for sealed objects, by one sealed message (see :mod:`safehold.crypto.aead`)
whose plaintext is ``compression id (1) | payload`` and whose associated data is the header.
"""

from __future__ import annotations

import blake3

from safehold.crypto.aead import Aead
from safehold.errors import FormatError
from safehold.repository.compress import compress, decompress

MAGIC = b"SH"
FORMAT_VERSION = 1

T_CONFIG = 1
T_INDEX = 3
T_SNAPSHOT = 4
T_PACK = 5
T_LOCK = 6
T_CHAIN = 7
T_TRASH = 8

TYPE_NAMES = {
    T_CONFIG: "config",
    T_INDEX: "index",
    T_SNAPSHOT: "snapshot",
    T_PACK: "pack",
    T_LOCK: "lock",
    T_CHAIN: "chain",
    T_TRASH: "trash",
}

# Blob types, stored in pack headers and index entries.
BLOB_DATA = 1
BLOB_TREE = 2


def header(obj_type: int) -> bytes:
    """The four bytes every stored object starts with: magic, format version, ``obj_type``."""
    return MAGIC + bytes((FORMAT_VERSION, obj_type))


def check_header(raw: bytes | memoryview, obj_type: int, what: str) -> None:
    """Raise :class:`FormatError` unless ``raw`` starts with the header of ``obj_type`` in this
    format version; ``what`` names the object in the message."""
    if len(raw) < 4 or bytes(raw[:2]) != MAGIC:
        raise FormatError(f"{what} is not a safehold object (bad magic)")
    if raw[2] != FORMAT_VERSION:
        raise FormatError(
            f"{what} has format version {raw[2]}, this safehold reads version {FORMAT_VERSION}",
            hint="upgrade safehold",
        )
    if raw[3] != obj_type:
        raise FormatError(
            f"{what} has object type {raw[3]}, expected {obj_type} ({TYPE_NAMES[obj_type]})"
        )


def seal_object(aead: Aead, obj_type: int, payload: bytes, level: int | None = 3) -> bytes:
    """A stored object: its header, then the compressed ``payload`` sealed with the header as
    associated data (``level`` None: uncompressed)."""
    head = header(obj_type)
    comp_id, body = compress(payload, level)
    return head + aead.seal(bytes((comp_id,)) + bytes(body), head)


def open_object(aead: Aead, raw: bytes, obj_type: int, what: str) -> bytes:
    """The payload of a stored object of ``obj_type``, checked, opened and decompressed; raises
    :class:`FormatError` or an integrity error (wrong key, damage) naming ``what``."""
    check_header(raw, obj_type, what)
    head = bytes(raw[:4])
    plain = aead.open(memoryview(raw)[4:], head, what=what)
    if not plain:
        raise FormatError(f"{what} has an empty payload")
    return decompress(plain[0], memoryview(plain)[1:])


def storage_id(raw: bytes | memoryview) -> str:
    """Names of stored objects: the unkeyed BLAKE3 of their bytes, so that damage is
    detectable without the key (``check`` compares name and content)."""
    return blake3.blake3(raw, max_threads=1).hexdigest()
