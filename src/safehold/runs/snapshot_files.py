"""A snapshot's root files handed to a stream source for restoring.

:func:`snapshot_files` gives a source (``sources.base.SnapshotFiles``) the files a stream
backup saved. Reading one streams its blobs in order; each blob is checked against its id
as it is loaded (``Repository.load_blob``), and the next few are fetched in parallel so a
large dump restores at storage speed rather than one round trip per blob.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from typing import BinaryIO, cast

from safehold.errors import UsageError
from safehold.ids import HexId, blob_from_hex
from safehold.repository import tree as t
from safehold.repository.repository import Repository
from safehold.repository.snapshot import Snapshot

__all__ = ["BlobStreamReader", "snapshot_files"]


class BlobStreamReader:
    """A read-only binary stream over a list of blob ids, fetched ``ahead`` at a time."""

    def __init__(self, repo: Repository, content: list[HexId], *, ahead: int = 8) -> None:
        self._repo = repo
        self._ids = iter(content)
        self._pool = ThreadPoolExecutor(max(1, ahead), thread_name_prefix="restore-read")
        self._pending: deque[Future[bytes]] = deque()
        self._ahead = max(1, ahead)
        self._blob = memoryview(b"")
        self._closed = False
        self._fill()

    def _fill(self) -> None:
        while len(self._pending) < self._ahead:
            hex_id = next(self._ids, None)
            if hex_id is None:
                return
            self._pending.append(self._pool.submit(self._repo.load_blob, blob_from_hex(hex_id)))

    def _next_blob(self) -> bool:
        if not self._pending:
            return False
        self._blob = memoryview(self._pending.popleft().result())
        self._fill()
        return True

    def readable(self) -> bool:
        """Always: the stream is read, never written or sought."""
        return True

    def readinto(self, buf: bytearray | memoryview) -> int:
        """Fill ``buf`` from the blobs in order; returns the bytes read, 0 at the end."""
        view = memoryview(buf).cast("B")
        done = 0
        while done < len(view):
            if not self._blob and not self._next_blob():
                break
            take = min(len(view) - done, len(self._blob))
            view[done : done + take] = self._blob[:take]
            self._blob = self._blob[take:]
            done += take
        return done

    def read(self, n: int = -1) -> bytes:
        """Up to ``n`` bytes (all that is left when ``n`` is negative); ``b""`` at the end."""
        if n is None or n < 0:
            parts = [bytes(self._blob)]
            self._blob = memoryview(b"")
            while self._next_blob():
                parts.append(bytes(self._blob))
                self._blob = memoryview(b"")
            return b"".join(parts)
        buf = bytearray(n)
        got = self.readinto(buf)
        del buf[got:]
        return bytes(buf)

    def close(self) -> None:
        """Stop fetching ahead and wait for the fetches under way."""
        if not self._closed:
            self._closed = True
            for f in self._pending:
                f.cancel()
            self._pool.shutdown(wait=True)

    def __enter__(self) -> BlobStreamReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Files:
    def __init__(self, repo: Repository, snap: Snapshot) -> None:
        self._repo = repo
        self._snap = snap
        self._nodes = {n.name: n for n in repo.load_tree(snap.tree) if n.type == t.FILE}
        self._order = [n.name for n in repo.load_tree(snap.tree) if n.type == t.FILE]

    def names(self) -> list[str]:
        return list(self._order)

    def _node(self, name: str) -> t.Node:
        node = self._nodes.get(name)
        if node is None:
            raise UsageError(
                f"snapshot {self._snap.short_id} has no file {name!r} at its root",
                hint=f"it holds: {', '.join(self._order) or 'nothing'}",
            )
        return node

    def size(self, name: str) -> int:
        return self._node(name).size

    @contextmanager
    def open(self, name: str) -> Iterator[BinaryIO]:
        reader = BlobStreamReader(self._repo, list(self._node(name).content))
        try:
            yield cast(BinaryIO, reader)
        finally:
            reader.close()


def snapshot_files(repo: Repository, snap: Snapshot) -> _Files:
    """The root files of ``snap`` (a stream source's backup), for ``Source.restore``."""
    repo.load_index()
    return _Files(repo, snap)
