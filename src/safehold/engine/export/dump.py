"""The dump use case: one file's bytes, or anything else in a snapshot as a tar or zip
stream (``file.py``, ``tar.py``, ``zip.py``; what they share is in ``common.py``).

Nothing is staged: blobs go to the output one at a time as they are loaded and verified,
so the output may be a pipe and neither an archive nor a whole file is ever held in memory
or on disk.
"""

from __future__ import annotations

from typing import IO

from safehold.engine.export.common import DumpResult
from safehold.engine.export.file import write_file
from safehold.engine.export.tar import write_tar
from safehold.engine.tree_walk import locate
from safehold.errors import IntegrityError, ObjectNotFound
from safehold.repository import tree as t
from safehold.repository.repository import Repository
from safehold.repository.snapshot import Snapshot


def dump(
    repo: Repository, snap: Snapshot, path: str, out: IO[bytes], *, archive: str = "tar"
) -> DumpResult:
    """Write the file at ``path`` as its bytes, or anything else at ``path`` as an archive
    (``tar``, or ``zip``)."""
    try:
        path, node = locate(repo, snap, path)
        if node.type == t.FILE:
            result = DumpResult(path, "file", files=1)
            result.bytes = write_file(repo, path, node, out)
            return result
        if archive == "zip":
            # Imported when asked for: zipfile (with its bz2/lzma imports) would add several
            # milliseconds to every dump of a file or a tar, for the rare zip.
            from safehold.engine.export.zip import write_zip

            return write_zip(repo, path, node, out)
        return write_tar(repo, path, node, out)
    except ObjectNotFound as exc:
        # Only packs are read here: one the index lists is gone. That is damage (exit 4,
        # as check says), not a failing storage.
        raise IntegrityError(
            f"a pack listed in the index is missing from the storage: {exc.message}",
            hint="run 'safehold check' to see which snapshots and files it affects; "
            "'safehold repair index' makes the index match the packs that remain",
        ) from exc
