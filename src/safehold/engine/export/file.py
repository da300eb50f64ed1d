"""One file's bytes, as they were saved: its blobs go to the output one at a time as
:meth:`~safehold.repository.repository.Repository.load_blob` returns them (which verifies
each blob against its id), so a whole file is never held in memory or on disk."""

from __future__ import annotations

from typing import IO

from safehold.engine.export.common import content_size
from safehold.errors import UsageError
from safehold.ids import blob_from_hex
from safehold.repository import tree as t
from safehold.repository.repository import Repository


def write_file(repo: Repository, path: str, node: t.Node, out: IO[bytes]) -> int:
    """Write one file's content; returns its size."""
    if node.error:
        raise UsageError(
            f"{path} could not be read when the snapshot was taken ({node.error}); "
            "the snapshot holds no content for it"
        )
    content_size(repo, path, node)  # fail before the first byte, not halfway
    written = 0
    for hex_id in node.content:
        data = repo.load_blob(blob_from_hex(hex_id))
        out.write(data)
        written += len(data)
    return written
