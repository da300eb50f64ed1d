"""The state one check run shares between its parts: structure checks
(:mod:`~safehold.repository.check.structure`), data reads
(:mod:`~safehold.repository.check.data`) and the snapshot walk
(:mod:`~safehold.repository.check.walk`)."""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

from safehold.ids import BlobId, ChainId, PackId
from safehold.repository.check.options import CheckOptions
from safehold.repository.check.report import CheckReport, Found, Problem
from safehold.repository.index import Index
from safehold.repository.progress import ProgressSink
from safehold.repository.repository import Repository

__all__ = ["CheckState"]


class CheckState:
    """What the parts of one check run share: the repository, the options, the index loaded as
    check sees it, the packs listed and what was found so far."""

    def __init__(self, repo: Repository, opts: CheckOptions, progress: ProgressSink) -> None:
        self.repo = repo
        self.opts = opts
        self.progress = progress
        self.report = CheckReport()
        self.index = Index()
        self.index_file_of: dict[PackId, str] = {}
        # Headers of readable packs no index lists: lets the walk go on past a lost index
        # file and say which pack still holds a blob the index forgot.
        self.extra = Index()
        self.needed_extra: set[PackId] = set()
        self.listed: dict[PackId, int] = {}
        self.trashed: set[PackId] = set()
        self.bad_packs: dict[PackId, tuple[str, str]] = {}  # pack id -> (code, why)
        self.bad_blobs: set[tuple[BlobId, PackId]] = set()  # (blob id, pack id), from read-data
        self.memo: dict[tuple[BlobId, ChainId], Found] = {}  # (tree id, chain id)
        # Trees walked lately: (name, type, content, subtree) of each node (check/walk.py).
        self.trees: OrderedDict[BlobId, list[tuple[str, Any, Any, Any]]] = OrderedDict()
        self.cached_nodes = 0  # in ``trees``
        self.cache_nodes = 0  # at most this many in ``trees`` (the walk decides)
        self.tree_ids: set[BlobId] = set()
        # Data blobs the walk met: those the index holds as one byte each in ``blob_marks``
        # (Index.run_marks), the rest (not found, or no marks) in ``blob_ids``.
        self.blob_marks: bytearray | None = None
        self.blob_ids: set[BlobId] = set()

    def blobs_met(self) -> int:
        """How many distinct data blobs the walk met."""
        marked = self.blob_marks.count(1) if self.blob_marks is not None else 0
        return marked + len(self.blob_ids)

    def add(self, severity: str, code: str, subject: str, message: str, **kw: str) -> None:
        """Add a problem to the report; ``kw`` are its optional fields (hint, pack)."""
        self.report.problems.append(Problem(severity, code, subject, message, **kw))
