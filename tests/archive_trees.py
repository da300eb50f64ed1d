"""Helpers for the archive restore tests: trees with everything tar can hold, GNU tar's
extraction of the same archive, the comparison of two extractions, and archives made by
hand (as someone who can write to the destination would)."""

from __future__ import annotations

import hashlib
import io
import os
import stat
import subprocess
import tarfile
from pathlib import Path

import zstandard

from safehold.archive import ArchiveEntry, find_archive
from safehold.storage.base import Storage

NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
# A time with nanoseconds that a float would round (pax keeps them; tarfile's float not).
MTIME_NS = 1_700_000_000_123_456_789


def make_tree(root: Path, *, devices: bool) -> Path:
    """A tree with what a tar extractor is judged on. ``devices``: a character and a block
    device (needs root). Owners other than the process's are set when running as root."""
    root.mkdir(parents=True)
    for name in ("empty", "ro-dir", "closed-dir", "sticky", "setgid-dir", "private", "gw-dir"):
        (root / name).mkdir()
    files = {
        "plain.txt": 0o644,
        "ro.txt": 0o444,
        "none.txt": 0o000,
        "private.txt": 0o700,
        "gw.txt": 0o664,
        "setuid": 0o4755,
        "setgid": 0o2755,
        "ro-dir/inside.txt": 0o644,
        "closed-dir/inside.txt": 0o600,
        "private/deep.txt": 0o640,
    }
    for rel, mode in files.items():
        (root / rel).write_bytes(rel.encode() * 100)
        os.chmod(root / rel, mode)
    os.link(root / "plain.txt", root / "plain-link.txt")
    os.link(root / "plain.txt", root / "private" / "plain-link2.txt")
    os.symlink("/etc/passwd", root / "abs-link")
    os.symlink("/nonexistent/dangling", root / "dangling")
    os.symlink("plain.txt", root / "rel-link")
    os.symlink("../plain.txt", root / "private" / "up-link")
    os.mkfifo(root / "fifo", 0o640)
    if devices:
        os.mknod(root / "chardev", 0o620 | stat.S_IFCHR, os.makedev(1, 3))
        os.mknod(root / "blockdev", 0o660 | stat.S_IFBLK, os.makedev(7, 200))
    if os.geteuid() == 0:
        os.chown(root / "gw.txt", 1234, 5678)  # ids without names here
        os.chown(root / "setuid", 1234, 5678)  # chown clears set-id bits: set them again
        os.chmod(root / "setuid", 0o4755)
        os.chown(root / "fifo", 4321, 8765)
        os.chown(root / "abs-link", 2345, 6789, follow_symlinks=False)
        os.chown(root / "private", 1234, 5678)
    os.chmod(root / "ro-dir", 0o555)
    os.chmod(root / "closed-dir", 0o000)
    os.chmod(root / "sticky", 0o1777)
    os.chmod(root / "setgid-dir", 0o2775)
    os.chmod(root / "private", 0o700)
    os.chmod(root / "gw-dir", 0o775)
    for dirpath, dirnames, filenames in os.walk(root, topdown=False):
        for name in [*filenames, *dirnames]:
            os.utime(Path(dirpath) / name, ns=(MTIME_NS, MTIME_NS), follow_symlinks=False)
    os.utime(root, ns=(MTIME_NS, MTIME_NS))
    return root


def plain_tar(archive: Path, out: Path) -> Path:
    """The tar inside an unencrypted ``.tar.zst``, as ``zstd -d`` gives it."""
    with open(archive, "rb") as src, open(out, "wb") as dst:
        zstandard.ZstdDecompressor().copy_stream(src, dst)
    out.chmod(0o644)
    return out


def gnu_extract(tar_file: Path, out: Path, *, as_nobody: bool = False) -> int:
    """``tar -x`` of ``tar_file`` into ``out`` (made here), as root or as nobody with umask
    022; returns tar's exit status."""
    out.mkdir()
    cmd = ["tar", "-xf", str(tar_file), "-C", str(out)]
    if as_nobody:
        out.chmod(0o777)
        cmd = [*NOBODY, *cmd]
    return subprocess.run(cmd, capture_output=True, check=False, umask=0o022).returncode


def differences(a: Path, b: Path) -> list[str]:
    """What differs between two extractions: rsync's itemized list (content, owners,
    modes, times, links, devices, hard links), then every entry's lstat (the device
    numbers and nanoseconds rsync does not print)."""
    done = subprocess.run(
        ["rsync", "-anciH", "--numeric-ids", f"{a}/", f"{b}/"],
        capture_output=True,
        text=True,
        check=True,
    )
    # The two targets themselves were made by the tests, at different times.
    out = [line for line in done.stdout.splitlines() if line.strip() and line[12:] != "./"]
    out += [f"{rel}: {x} != {y}" for rel, x, y in _stat_differences(a, b)]
    return out


def _stats(root: Path) -> dict[str, tuple[int, ...]]:
    found = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [*dirnames, *filenames]:
            p = Path(dirpath) / name
            st = os.lstat(p)
            rel = str(p.relative_to(root))
            # The mode (type too), owner, device number, links, size and time of each entry.
            found[rel] = (
                st.st_mode,
                st.st_uid,
                st.st_gid,
                st.st_rdev,
                st.st_nlink,
                st.st_size if not stat.S_ISDIR(st.st_mode) else 0,
                st.st_mtime_ns,
            )
    return found


def _stat_differences(a: Path, b: Path) -> list[tuple[str, object, object]]:
    sa, sb = _stats(a), _stats(b)
    return [
        (rel, sa.get(rel), sb.get(rel))
        for rel in sorted(sa.keys() | sb.keys())
        if sa.get(rel) != sb.get(rel)
    ]


def member(name: str, kind: bytes = tarfile.REGTYPE, **attrs: object) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = 0o644
    info.mtime = 1_700_000_000
    for key, value in attrs.items():
        setattr(info, key, value)
    return info


def put_archive(
    storage: Storage, members: list[tuple[tarfile.TarInfo, bytes]], *, snapshot: str = "deadbeef"
) -> ArchiveEntry:
    """Store a hand-made archive of ``members`` (with their data) under a name and with a
    checksum file as a destination holds them: what someone who can write there can do."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in members:
            info.size = len(data) if info.type in (tarfile.REGTYPE, tarfile.AREGTYPE) else 0
            tar.addfile(info, io.BytesIO(data) if info.size else None)
    blob = zstandard.ZstdCompressor().compress(raw.getvalue())
    name = f"2026/01/02/evil_20260102T030405Z_{snapshot}.tar.zst"
    storage.put(name, blob)
    storage.put(
        name + ".sha256", f"{hashlib.sha256(blob).hexdigest()}  {name.rsplit('/', 1)[1]}\n".encode()
    )
    return find_archive(storage, "", snapshot)
