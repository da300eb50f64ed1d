"""The state one check run shares between its parts: structure checks
(:mod:`~safehold.repository.check.structure`), data reads
(:mod:`~safehold.repository.check.data`) and the snapshot walk
(:mod:`~safehold.repository.check.walk`)."""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

from safehold.repository.check.options import CheckOptions
from safehold.repository.check.report import CheckReport, Found, Problem
from safehold.repository.index import Index
from safehold.repository.progress import ProgressSink
from safehold.repository.repository import Repository

__all__ = ["CheckState"]


class CheckState:
    def __init__(self, repo: Repository, opts: CheckOptions, progress: ProgressSink) -> None:
        self.repo = repo
        self.opts = opts
        self.progress = progress
        self.report = CheckReport()
        self.index = Index()
        self.index_file_of: dict[bytes, str] = {}
        # Headers of readable packs no index lists: lets the walk go on past a lost index
        # file and say which pack still holds a blob the index forgot.
        self.extra = Index()
        self.needed_extra: set[bytes] = set()
        self.listed: dict[bytes, int] = {}
        self.trashed: set[bytes] = set()
        self.bad_packs: dict[bytes, tuple[str, str]] = {}  # pack id -> (code, why)
        self.bad_blobs: set[tuple[bytes, bytes]] = set()  # (blob id, pack id), from read-data
        self.memo: dict[tuple[bytes, bytes], Found] = {}  # (tree id, chain id)
        # Trees walked lately: (name, type, content, subtree) of each node (check/walk.py).
        self.trees: OrderedDict[bytes, list[tuple[str, Any, Any, Any]]] = OrderedDict()
        self.cached_nodes = 0  # in ``trees``
        self.tree_ids: set[bytes] = set()
        self.blob_ids: set[bytes] = set()

    def add(self, severity: str, code: str, subject: str, message: str, **kw: str) -> None:
        self.report.problems.append(Problem(severity, code, subject, message, **kw))
