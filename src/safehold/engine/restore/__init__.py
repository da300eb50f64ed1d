"""Restore: a snapshot (or parts of it) back into a folder.

``restore`` plans and runs it (docs/architecture.md, "Restore pipeline"); ``folders``
holds the guarantee that nothing is written outside the target (every folder created and
opened relative to its parent's descriptor); ``write`` writes blobs into files (direct
I/O for large ones); ``workers`` shares packs out among forked processes for the command
line's large local restores; ``preview`` (``--dry-run``) lists what would be written.
A stream source (a database dump) restores itself with its own tool, from the files
:mod:`safehold.runs.snapshot_files` hands it.
"""

from __future__ import annotations

from safehold.engine.restore.folders import raise_open_files_limit
from safehold.engine.restore.preview import RestorePreview, preview_restore
from safehold.engine.restore.restore import (
    RestoreOptions,
    RestoreResult,
    refuse_nothing_chosen,
    run_restore,
    selection_of,
)

__all__ = [
    "RestoreOptions",
    "RestorePreview",
    "RestoreResult",
    "preview_restore",
    "raise_open_files_limit",
    "refuse_nothing_chosen",
    "run_restore",
    "selection_of",
]
