"""Maintain: the use cases that keep a repository healthy and its history in shape.

``forget`` removes snapshots by id or retention policy (then prune, in the repository,
frees what nothing needs), ``verify`` runs the repository's check and index repair with
the engine's progress, ``copy`` copies snapshots between repositories blob by verified
blob, ``tag`` rewrites snapshots' tags (a new snapshot, then the old one removed).
"""

from __future__ import annotations

from safehold.engine.maintain.copy import CopyOptions, CopyResult, copy_snapshots
from safehold.engine.maintain.forget import ForgetOptions, ForgetResult, run_forget
from safehold.engine.maintain.tag import TagOptions, run_tag
from safehold.engine.maintain.verify import run_check, run_repair_index

__all__ = [
    "CopyOptions",
    "CopyResult",
    "ForgetOptions",
    "ForgetResult",
    "TagOptions",
    "copy_snapshots",
    "run_check",
    "run_forget",
    "run_repair_index",
    "run_tag",
]
