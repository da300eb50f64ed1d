"""The mount use case: serve :class:`~safehold.engine.inspect.mount_view.MountView` through FUSE.

The binding is mfusepy (a maintained fork of fusepy: ctypes over the high-level libfuse
API, version 2 or 3, found at run time). pyfuse3 was the other candidate: it is compiled
against libfuse3's headers (libfuse3-dev and a C compiler at install time) and brings trio
for its async API, for throughput that a browse-and-copy tool over a decrypting,
verifying blob reader does not need; mfusepy installs as one pure-Python file and needs
only the libfuse library on the machine where ``mount`` is used, so every other command
keeps working where there is none.

The mount is read-only, ``nosuid`` and ``nodev`` whoever runs it (a snapshot may hold
set-user-id programs and device nodes: they are shown, never honoured), and
``default_permissions``: the kernel checks each access against the modes and owners
stored in the snapshot, so ``--allow-other`` shows other users only what the snapshot let
them read. The command runs in the foreground until the file system is unmounted
(``fusermount -u DIR``, ``umount DIR``) or it gets SIGINT/SIGTERM/SIGHUP (libfuse then
unmounts); the repository lock is held meanwhile.
"""

from __future__ import annotations

import errno
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from safehold.engine.inspect.mount_view import MountView
from safehold.errors import SafeholdError, UsageError
from safehold.repository.repository import Repository

__all__ = ["MountOptions", "check_fuse", "serve"]


@dataclass(kw_only=True)
class MountOptions:
    """How a snapshot mount behaves: other users let in, libfuse's trace on."""

    allow_other: bool = False  # let other users in (the kernel still checks modes)
    debug: bool = False  # libfuse's own trace of every call, on standard error


def check_fuse(mountpoint: str) -> Any:
    """The mfusepy module, once FUSE is known to be usable here; else a
    :class:`UsageError` (exit 2) that says what is missing."""
    if not os.path.isdir(mountpoint):
        raise UsageError(
            f"the mount point {mountpoint} is not a folder",
            hint="create an empty folder for it (mkdir), then mount there",
        )
    if not os.path.exists("/dev/fuse"):
        raise UsageError(
            "FUSE is not available on this machine: there is no /dev/fuse",
            hint="load the fuse kernel module (modprobe fuse); in a container, give it the "
            "device (docker run --device /dev/fuse --cap-add SYS_ADMIN); or restore with "
            "'safehold restore' or 'safehold dump' instead",
        )
    # libfuse opens /dev/fuse itself before it tries the set-user-id fusermount, and gives
    # up if it cannot (most systems make it 0666; containers often 0600).
    if not os.access("/dev/fuse", os.R_OK | os.W_OK):
        raise UsageError(
            "FUSE is not available to this user: no permission to open /dev/fuse",
            hint="mount as root, or have /dev/fuse made usable by everyone (mode 0666, as "
            "most distributions ship it); or restore with 'safehold restore' instead",
        )
    if os.geteuid() != 0 and not (shutil.which("fusermount3") or shutil.which("fusermount")):
        raise UsageError(
            "FUSE is not available to this user: there is no fusermount to mount through",
            hint="install fuse3 (Debian: apt-get install fuse3), or mount as root",
        )
    try:
        import mfusepy
    except (OSError, ImportError) as exc:  # mfusepy loads libfuse when imported
        raise UsageError(
            f"FUSE is not available on this machine: the libfuse library cannot be loaded ({exc})",
            hint="install it (Debian: apt-get install fuse3), or restore with "
            "'safehold restore' or 'safehold dump' instead",
        ) from None
    return mfusepy


def serve(
    repo: Repository,
    mountpoint: str,
    opts: MountOptions | None = None,
    *,
    on_ready: Callable[[MountView], None] | None = None,
    on_error: Callable[[str, str], None] | None = None,
) -> MountView:
    """Mount the repository's snapshots at ``mountpoint`` and serve them until unmounted.
    ``on_ready`` is called once the file system answers; ``on_error`` with each damaged
    object a read met. Returns the view (its snapshots) after unmounting."""
    opts = opts or MountOptions()
    fuse = check_fuse(mountpoint)
    with repo.lock("mount"):
        repo.load_index()
        view = MountView(repo, on_error=on_error)
        # Listed under the lock: each snapshot shown keeps its data until we unmount.
        view.refresh(force=True)
        started: list[bool] = []
        operations = _operations(fuse, view, lambda v: _started(started, v, on_ready))
        options: dict[str, Any] = {
            "foreground": True,
            "ro": True,
            "nosuid": True,
            "nodev": True,
            "default_permissions": True,
            # Snapshots never change: the kernel may keep what it read across opens.
            "kernel_cache": True,
            "fsname": "safehold",
            "subtype": "safehold",
            "debug": opts.debug,
        }
        if opts.allow_other:
            options["allow_other"] = True
        if fuse.fuse_version_major == 3:
            # libfuse 3.14 warns of its own default ("invalid max threads value") without.
            options["max_idle_threads"] = 10
        try:
            fuse.FUSE(operations, mountpoint, **options)
        except RuntimeError as exc:
            if started:
                # libfuse 3 reports a loop ended by SIGINT/SIGTERM as a failure (status 8),
                # after unmounting: for us that is how a mount ends.
                return view
            # libfuse said why on standard error (not mounted, busy, not permitted).
            raise UsageError(
                f"could not mount at {mountpoint} (libfuse status {exc})",
                hint="see libfuse's message above; the folder must exist and not be mounted "
                "already, and --allow-other needs user_allow_other in /etc/fuse.conf",
            ) from None
    return view


def _started(
    started: list[bool], view: MountView, on_ready: Callable[[MountView], None] | None
) -> None:
    started.append(True)
    if on_ready is not None:
        on_ready(view)


def _operations(fuse: Any, view: MountView, on_ready: Callable[[MountView], None] | None) -> Any:
    """The FUSE callbacks over ``view``: each turns a repository error into ``EIO``."""

    def guarded(call: Callable[..., Any]) -> Callable[..., Any]:
        def run(self: Any, path: str, *args: Any) -> Any:
            try:
                return call(self, path, *args)
            except OSError:
                raise
            except SafeholdError as exc:
                if view.on_error is not None:
                    view.on_error(path, exc.message)
                raise OSError(errno.EIO, os.strerror(errno.EIO)) from exc

        return run

    class Operations(fuse.Operations):  # type: ignore[misc]
        use_ns = True  # times in integer nanoseconds

        def init(self, path: str) -> None:
            if on_ready is not None:
                on_ready(view)

        @guarded
        def getattr(self, path: str, fh: int | None = None) -> dict[str, int]:
            return view.attributes(path)

        @guarded
        def readdir(self, path: str, fh: int) -> list[str]:
            return [".", "..", *view.listdir(path)]

        @guarded
        def listxattr(self, path: str) -> list[str]:
            return list(view.xattrs(path))

        @guarded
        def getxattr(self, path: str, name: str, position: int = 0) -> bytes:
            value = view.xattrs(path).get(name)
            if value is None:
                raise OSError(errno.ENODATA, os.strerror(errno.ENODATA))
            return value

        @guarded
        def readlink(self, path: str) -> str:
            return view.readlink(path)

        @guarded
        def open(self, path: str, flags: int) -> int:
            if flags & (os.O_WRONLY | os.O_RDWR | os.O_TRUNC | os.O_APPEND):
                raise OSError(errno.EROFS, os.strerror(errno.EROFS))
            return view.open(path)

        @guarded
        def read(self, path: str, size: int, offset: int, fh: int) -> bytes:
            return view.read(fh, size, offset, path)

        def release(self, path: str, fh: int) -> int:
            view.release(fh)
            return 0

        def statfs(self, path: str) -> dict[str, int]:
            return {"f_bsize": 4096, "f_frsize": 4096, "f_namemax": 255}

    return Operations()
