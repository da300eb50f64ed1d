"""Export: a snapshot's file as its bytes, or a folder as a tar or zip stream (``dump``).

``dump`` picks the writer (``file.py``, ``tar.py``, ``zip.py``); ``write_tar`` is also the
plain archive destination's (``safehold.archive``).
"""

from __future__ import annotations

from safehold.engine.export.common import DumpResult
from safehold.engine.export.dump import dump
from safehold.engine.export.tar import write_tar

__all__ = ["DumpResult", "dump", "write_tar"]
