"""Extended attributes: read at backup, set again at restore, shown by ``ls``.

Linux keeps more than mode and owner in extended attributes: ``user.*`` (anyone's, on
files and folders), ``trusted.*`` (root's), ``security.*`` (file capabilities in
``security.capability``, SELinux labels) and POSIX ACLs, which the kernel shows as the
attributes ``system.posix_acl_access`` and ``system.posix_acl_default``. A node stores
them all by name with their raw values (docs/format.md section 10), as restic and borg
do: the ACL values are the kernel's own encoding, so restore hands them back unchanged.

Backup reads them for new and changed items only: one ``listxattr`` each, and a
``getxattr`` per name only when it lists something. An unchanged item (same size, inode,
mtime and ctime: setting an attribute moves ctime) keeps its parent node and costs
nothing more; but only when the parent snapshot read the same kinds of attributes
(:func:`kinds`, recorded in the snapshot): after an older parent, or another choice of
``--no-xattrs``/``--no-acls``, every item is listed once more.

Restore sets them after the owner (a change of owner clears ``security.capability``, as
it clears set-id bits) and before the mode (an access ACL's mask is the group bits: the
mode set last is the saved one, which agrees with the saved ACL). What the kernel refuses
(``trusted.*`` and capabilities for a user who is not root, anything on a file system
without attributes) is collected by kind and reason into a few lines, however many items
it concerns (:class:`NotSet`).
"""

from __future__ import annotations

import base64
import bisect
import errno
import os
import struct
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from safehold.repository.tree import NO_XATTRS

__all__ = [
    "ACL_ACCESS",
    "ACL_DEFAULT",
    "AttrSetter",
    "Choice",
    "NotSet",
    "acl_text",
    "kinds",
    "read",
]

ACL_ACCESS = "system.posix_acl_access"
ACL_DEFAULT = "system.posix_acl_default"
_ACLS = (ACL_ACCESS, ACL_DEFAULT)
# The file system keeps no attributes, or the item went away since it was listed.
_NONE = (errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOENT, errno.ENODATA)
# How many paths each kind of failure names.
FIRST_PATHS = 5


@dataclass(frozen=True, slots=True)
class Choice:
    """Which attributes a backup reads or a restore sets: ACLs, and all the others."""

    xattrs: bool = True
    acls: bool = True

    @property
    def any(self) -> bool:
        """Whether any attribute is read or set."""
        return self.xattrs or self.acls

    def wants(self, name: str) -> bool:
        """Whether the attribute ``name`` is of a kind chosen (ACLs are by their name)."""
        return self.acls if name in _ACLS else self.xattrs


def kinds(choice: Choice) -> list[str]:
    """What a snapshot records of ``choice`` (its ``attrs``): a parent with the same list
    read the same attributes, so its nodes of unchanged items can be kept as they are."""
    return [k for k, on in (("acls", choice.acls), ("xattrs", choice.xattrs)) if on]


def read(path: str, choice: Choice) -> tuple[Mapping[str, bytes], str]:
    """The attributes of the item at ``path`` (never following a symlink) that ``choice``
    wants, and why some could not be read ("" if all were)."""
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError as exc:
        return NO_XATTRS, "" if exc.errno in _NONE else (exc.strerror or str(exc))
    if not names:
        return NO_XATTRS, ""
    out = {}
    problem = ""
    for name in names:
        if not choice.wants(name):
            continue
        try:
            out[name] = os.getxattr(path, name, follow_symlinks=False)
        except OSError as exc:
            # EACCES: ``user.*`` needs read permission, so the item's content or listing
            # fails as well and is reported for itself; one message per item is enough.
            if exc.errno not in _NONE and exc.errno != errno.EACCES:
                problem = f"{name}: {exc.strerror or exc}"
    return out or NO_XATTRS, problem


def not_saved(problem: str) -> str:
    """The warning for an item whose attributes could not all be read (``read``'s problem),
    wherever they were read."""
    return f"extended attributes not saved: {problem}"


def what(name: str) -> str:
    """The kind of an attribute, as failures are grouped and named."""
    if name == ACL_ACCESS:
        return "ACL"
    if name == ACL_DEFAULT:
        return "default ACL"
    if name == "security.capability":
        return "capabilities (security.capability)"
    namespace = name.split(".", 1)[0]
    return f"{namespace}.* attributes"


@dataclass(slots=True)
class NotSet:
    """Items whose attributes of one kind could not be set, for one reason."""

    what: str
    reason: str
    # Refused for want of a privilege this restore does not claim (it does not run as
    # root): expected, as owners are, which only root restores either.
    expected: bool
    count: int = 0
    # The first FIRST_PATHS in name order (not in the order workers met them: the same
    # restore names the same paths).
    paths: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        """The failure as ``--json`` output prints it."""
        return {
            "what": self.what,
            "reason": self.reason,
            "expected": self.expected,
            "count": self.count,
            "paths": self.paths,
        }

    def describe(self) -> str:
        """The failure in words: what, on how many items (the first paths named), and why."""
        items = f"{self.count} item{'s' if self.count != 1 else ''}"
        more = ", ..." if self.count > len(self.paths) else ""
        return f"{self.what} not set on {items} ({self.reason}): {', '.join(self.paths)}{more}"


class AttrSetter:
    """Sets the saved attributes of restored items and collects what failed; thread-safe.
    ``privileged``: the restore runs as root (and sets owners)."""

    def __init__(self, choice: Choice, *, privileged: bool) -> None:
        self.choice = choice
        self.privileged = privileged
        self._lock = threading.Lock()
        self._failed: dict[tuple[str, str], NotSet] = {}

    def set(self, target: int | str, attrs: Any, path: str, *, follow: bool = True) -> None:
        """Set ``attrs`` (a node's ``xattrs`` field: names to base64) on ``target``, a
        descriptor or a path (``follow=False``: a symlink itself). Raises only EBADF for a
        descriptor that takes no attributes (an ``O_PATH`` one: the caller retries with its
        path); every other failure is collected for ``path``."""
        if not self.choice.any:
            return
        if not isinstance(attrs, dict):
            self._fail(path, "extended attributes", "the node's record of them is damaged", False)
            return
        failed: dict[tuple[str, str], bool] = {}  # one count per kind and item
        for name, value in attrs.items():
            if not self.choice.wants(name):
                continue
            try:
                raw = base64.b64decode(value, validate=True)
                os.setxattr(target, name, raw, follow_symlinks=follow)
            except OSError as exc:
                if exc.errno == errno.EBADF and isinstance(target, int):
                    raise  # nothing counted yet: the retry with the path counts it
                expected = not self.privileged and exc.errno in (errno.EPERM, errno.EACCES)
                failed.setdefault((what(name), exc.strerror or str(exc)), expected)
            except (ValueError, TypeError):  # not base64, or a NUL in the name
                failed.setdefault((what(str(name)), "the saved value is damaged"), False)
        for (kind, reason), expected in failed.items():
            self._fail(path, kind, reason, expected)

    def _fail(self, path: str, kind: str, reason: str, expected: bool) -> None:
        # Several attributes of one kind on one item count once: set() gathers an item's
        # failures first (counting by the last item seen miscounted when threads set
        # attributes of several items at once).
        key = (kind, reason)
        with self._lock:
            entry = self._failed.get(key)
            if entry is None:
                entry = self._failed[key] = NotSet(kind, reason, expected)
            entry.count += 1
            if len(entry.paths) < FIRST_PATHS or path < entry.paths[-1]:
                bisect.insort(entry.paths, path)
                del entry.paths[FIRST_PATHS:]

    def failures(self) -> list[NotSet]:
        """Every kind of failure so far, with its count and first paths, sorted."""
        with self._lock:
            return sorted(self._failed.values(), key=lambda n: (n.what, n.reason))

    def reset(self) -> None:
        """Forget what failed (a forked worker starts with its parent's collection)."""
        with self._lock:
            self._failed = {}

    def merge(self, docs: list[dict[str, Any]]) -> None:
        """Add failures a worker process collected (``NotSet.to_json`` each)."""
        with self._lock:
            for d in docs:
                key = (str(d["what"]), str(d["reason"]))
                entry = self._failed.get(key)
                if entry is None:
                    entry = self._failed[key] = NotSet(key[0], key[1], bool(d["expected"]))
                entry.count += int(d["count"])
                entry.paths = sorted({*entry.paths, *map(str, d["paths"])})[:FIRST_PATHS]


# POSIX ACLs as Linux stores them in the attributes: a 4-byte version (2), then entries of
# tag (2 bytes), permissions (2), id (4; 0xffffffff where the tag has none), little-endian.
_ACL_HEAD = struct.Struct("<I")
_ACL_ENTRY = struct.Struct("<HHI")
_ACL_TAGS = {0x01: "user", 0x02: "user", 0x04: "group", 0x08: "group", 0x10: "mask", 0x20: "other"}
_NAMED = (0x02, 0x08)


def acl_text(value: bytes) -> list[str] | None:
    """The entries of an ACL attribute as ``getfacl -n`` writes them (``user::rw-``,
    ``user:1000:rwx``, ``mask::r-x``), or None if ``value`` is not one."""
    if len(value) < _ACL_HEAD.size or (len(value) - _ACL_HEAD.size) % _ACL_ENTRY.size:
        return None
    if _ACL_HEAD.unpack_from(value)[0] != 2:
        return None
    out = []
    for tag, perm, ident in _ACL_ENTRY.iter_unpack(value[_ACL_HEAD.size :]):
        kind = _ACL_TAGS.get(tag)
        if kind is None:
            return None
        who = str(ident) if tag in _NAMED else ""
        bits = "".join(c if perm & b else "-" for c, b in (("r", 4), ("w", 2), ("x", 1)))
        out.append(f"{kind}:{who}:{bits}")
    return out
