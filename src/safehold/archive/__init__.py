"""Plain archives: a destination that receives each snapshot as one ``.tar.zst`` (optionally
``openssl enc``-encrypted) that stock tools restore without safehold.

This is not the backup (restic's "archiver"): it is a *destination* a configured run
replicates to after its repository backup. ``layout`` names and lists the stored objects,
``write`` makes an archive from a snapshot (through the export's tar writer), ``restore``
downloads, checks and unpacks one with ``extract`` (GNU tar's behaviour, never outside the
target), ``forget`` applies a retention policy. The cipher is ``crypto/openssl_enc.py``.
"""

from __future__ import annotations

from safehold.archive.extract import ExtractOptions, ExtractResult
from safehold.archive.forget import forget_archives
from safehold.archive.layout import ArchiveEntry, find_archive, list_archives
from safehold.archive.restore import restore_archive
from safehold.archive.write import ArchiveOptions, write_archive

__all__ = [
    "ArchiveEntry",
    "ArchiveOptions",
    "ExtractOptions",
    "ExtractResult",
    "find_archive",
    "forget_archives",
    "list_archives",
    "restore_archive",
    "write_archive",
]
