"""What the file, tar and zip writers share (so that none imports another): the result,
member names, and the check that a file's blobs are all indexed and add up to its size
before its first byte is written.

Member names are made of node names, which the tree decoder has checked to be single path
components (``repository/tree.check_names``), so every name and hard-link name is relative
and free of ``..``; :func:`member_name` checks it again where a name is made, so that an
archive never holds a member that an extractor would write outside its folder. A tree that
fails those checks stops the dump (exit 4).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from safehold.errors import IntegrityError
from safehold.ids import blob_from_hex
from safehold.repository import tree as t
from safehold.repository.repository import Repository


@dataclass
class DumpResult:
    """What a dump wrote: the path, the kind of output, counts, and what it skipped (why)."""

    path: str  # the normalized path that was dumped
    kind: str  # "file" (its bytes), "tar" or "zip"
    files: int = 0
    dirs: int = 0
    others: int = 0  # symlinks, FIFOs, devices
    bytes: int = 0  # file content written (before tar framing)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, why)


def member_name(path: str) -> str:
    """The archive member name of the snapshot path ``path``: relative, and without an
    empty, ``.`` or ``..`` component (which checked tree names never give)."""
    name = path.lstrip("/")
    parts = name.split("/")
    if not name or "" in parts or "." in parts or ".." in parts or "\0" in name:
        raise IntegrityError(f"refusing to archive the path {path!r}: it is not a plain path")
    return name


def content_size(repo: Repository, path: str, node: t.Node) -> int:
    """Check that the index holds every blob of ``node`` and that they add up to its size.

    A tar header states the size before the data, so a mismatch found later could only
    leave a corrupt archive behind.
    """
    total = 0
    for hex_id in node.content:
        loc = repo.index.lookup(blob_from_hex(hex_id))
        if loc is None:
            raise IntegrityError(
                f"{path}: blob {hex_id[:8]} is not in the index",
                hint="run 'safehold repair index', then 'safehold check'",
            )
        total += loc.raw_length
    if total != node.size:
        raise IntegrityError(
            f"{path}: the snapshot records {node.size} bytes but its blobs hold {total}",
            hint="run 'safehold check'",
        )
    return total
