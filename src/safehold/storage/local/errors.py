"""Local errors: every ``OSError`` as a safehold storage error, translated once, keeping
the original as ``__cause__``."""

from __future__ import annotations

import errno

from safehold.errors import (
    ObjectNotFound,
    StorageError,
    StorageFull,
    StoragePermissionDenied,
    TransientStorageError,
)
from safehold.storage.transient import TRANSIENT_ERRNOS

__all__ = ["MISSING", "SDK_ERRORS", "translate_os_error"]

#: What the file system raises (the local backend's "SDK" is the os module).
SDK_ERRORS = (OSError,)

# ENOTDIR/EISDIR: a path through (or onto) a file or folder where the other was expected
# means no object of that name exists.
MISSING = {errno.ENOENT, errno.ENOTDIR, errno.EISDIR}
_FULL = {errno.ENOSPC, errno.EDQUOT}
_DENIED = {errno.EACCES, errno.EPERM, errno.EROFS}
# Errors a retry may cure: the shared socket errors (a network file system's connection),
# and these. EIO is here because on network filesystems (NFS, SMB, FUSE mounts of cloud
# storage) it usually means a dropped connection; a disk that really fails will keep
# failing and the retry wrapper gives up after its last attempt.
_TRANSIENT = TRANSIENT_ERRNOS | {
    getattr(errno, code)
    for code in ("EIO", "EAGAIN", "EINTR", "EBUSY", "ESTALE", "ENOLCK")
    if hasattr(errno, code)
}


def translate_os_error(
    exc: OSError, *, where: str, action: str, missing_is_not_found: bool = True
) -> StorageError:
    """Classify ``exc`` (raised while trying to ``action`` in ``where``) as a storage error.

    With ``missing_is_not_found=False`` (writes), a vanished path is a plain
    :class:`StorageError`: the object was never the thing missing.
    """
    code = exc.errno
    detail = exc.strerror or str(exc)
    if code in MISSING and missing_is_not_found:
        return ObjectNotFound(f"{where}: cannot {action}: no such object")
    if code in _FULL:
        return StorageFull(
            f"{where} is full: could not {action} ({detail})",
            hint="free space on that filesystem (or raise the quota), then run the command again",
        )
    if code in _DENIED:
        return StoragePermissionDenied(
            f"{where}: permission denied: could not {action} ({detail})",
            hint="check the owner and mode of the folder and whether it is mounted read-only",
        )
    if code in _TRANSIENT:
        return TransientStorageError(f"{where}: could not {action} ({detail}); may be temporary")
    return StorageError(f"{where}: could not {action} ({detail})")
