"""``archive restore`` gives back what GNU tar gives back, and writes nothing outside its
target: compared with ``tar -x`` of the same archive by ``rsync -anciH`` and ``lstat``."""

from __future__ import annotations

import os
import pwd
import resource
import shutil
import tarfile
from pathlib import Path

import pytest

from safehold.archive import ArchiveOptions, restore_archive, write_archive
from safehold.archive.extract import ExtractOptions, member_path
from safehold.engine.backup import BackupOptions, run_backup
from safehold.engine.restore.folders import folder_budget
from safehold.errors import IntegrityError, TargetError
from safehold.repository.repository import Repository
from safehold.storage.local import LocalStorage
from safehold.storage.memory import MemoryStorage
from tests.archive_trees import differences, gnu_extract, make_tree, member, plain_tar, put_archive

root_only = pytest.mark.skipif(
    os.geteuid() != 0 or not all(shutil.which(t) for t in ("tar", "rsync")),
    reason="needs root, GNU tar and rsync",
)


@root_only
def test_restore_as_root_matches_gnu_tar(mem_repo: Repository, tmp_path: Path) -> None:
    src = make_tree(tmp_path / "src", devices=True)
    snap = run_backup(mem_repo, BackupOptions(paths=[str(src)])).snapshot
    dest = tmp_path / "dest"
    store = LocalStorage(dest, create=True)
    entry = write_archive(mem_repo, snap, store, ArchiveOptions())

    result = restore_archive(store, entry, str(tmp_path / "ours"))
    assert gnu_extract(plain_tar(dest / entry.name, tmp_path / "a.tar"), tmp_path / "gnu") == 0

    assert differences(tmp_path / "ours", tmp_path / "gnu") == []
    assert result.errors == []
    # And both are the source: owners, set-id and sticky bits, 0444/000, devices, FIFO.
    ours = tmp_path / "ours" / src.relative_to("/")
    assert differences(src, ours) == []
    assert (ours / "setuid").stat().st_mode & 0o7777 == 0o4755
    assert (ours / "setuid").stat().st_uid == 1234
    assert (ours / "sticky").stat().st_mode & 0o7777 == 0o1777
    assert os.readlink(ours / "abs-link") == "/etc/passwd"
    assert (ours / "chardev").lstat().st_rdev == os.makedev(1, 3)


@root_only
def test_owner_by_name_where_it_exists_else_by_id(tmp_path: Path) -> None:
    # As GNU tar does as root: the archive's user name wins where this machine has it.
    daemon = pwd.getpwnam("daemon")
    store = MemoryStorage()
    entry = put_archive(
        store,
        [
            (member("named", uname="daemon", uid=4242, gname="no-such-group-x", gid=4343), b"n"),
            (member("numeric", uname="no-such-user-x", uid=4444, gname="", gid=4545), b"i"),
        ],
    )
    restore_archive(store, entry, str(tmp_path / "ours"))
    raw = tmp_path / "a.tar"
    raw.write_bytes(_plain(store, entry.name))
    assert gnu_extract(raw, tmp_path / "gnu") == 0
    assert differences(tmp_path / "ours", tmp_path / "gnu") == []
    named = (tmp_path / "ours" / "named").stat()
    assert (named.st_uid, named.st_gid) == (daemon.pw_uid, 4343)
    numeric = (tmp_path / "ours" / "numeric").stat()
    assert (numeric.st_uid, numeric.st_gid) == (4444, 4545)


def _plain(store: MemoryStorage, name: str) -> bytes:
    import zstandard

    return zstandard.ZstdDecompressor().decompressobj().decompress(store.get(name))


HOSTILE = {
    "dotdot": [(member("../x"), b"x")],
    "absolute": [(member("/abs"), b"x")],
    "dotdot-inside": [(member("a/../../x"), b"x")],
    "through-symlink": [
        (member("l", tarfile.SYMTYPE, linkname="OUTSIDE"), b""),
        (member("l/f"), b"through the link"),
    ],
    "through-relative-symlink": [
        (member("up", tarfile.SYMTYPE, linkname=".."), b""),
        (member("up/f"), b"through the link"),
    ],
    "hardlink-out": [(member("h", tarfile.LNKTYPE, linkname="../outside/victim"), b"")],
    "hardlink-abs": [(member("h", tarfile.LNKTYPE, linkname="OUTSIDE/victim"), b"")],
    "hardlink-below-a-later-symlink": [
        (member("a", tarfile.DIRTYPE), b""),
        (member("a/f"), b"f"),
        (member("a", tarfile.SYMTYPE, linkname="OUTSIDE"), b""),
        (member("h", tarfile.LNKTYPE, linkname="a/f"), b""),
    ],
    "hardlink-through-symlink": [
        (member("l", tarfile.SYMTYPE, linkname="OUTSIDE"), b""),
        (member("h", tarfile.LNKTYPE, linkname="l/victim"), b""),
    ],
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_archive_is_refused_before_anything_is_written(case: str, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "victim").write_text("keep me")
    target = tmp_path / "box" / "target"
    target.mkdir(parents=True)
    members = [(member("first.txt"), b"a harmless member before the hostile one")]
    for info, data in HOSTILE[case]:
        info.linkname = info.linkname.replace("OUTSIDE", str(outside))
        members.append((info, data))
    members.append((member("last.txt"), b"and one after"))
    store = MemoryStorage()
    entry = put_archive(store, members)

    with pytest.raises(IntegrityError, match=r"outside the target.*nothing was extracted"):
        restore_archive(store, entry, str(target))

    assert list(target.iterdir()) == []  # not even the harmless member
    assert sorted(p.name for p in (tmp_path / "box").iterdir()) == ["target"]
    assert [p.name for p in outside.iterdir()] == ["victim"]
    assert (outside / "victim").read_text() == "keep me"


def test_symlink_already_in_the_target_is_replaced_not_followed(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    target = tmp_path / "target"
    target.mkdir()
    (target / "sub").symlink_to(outside)  # planted where the archive has a folder
    (target / "file").symlink_to(outside / "file")  # and where it has a file
    store = MemoryStorage()
    entry = put_archive(
        store,
        [
            (member("sub", tarfile.DIRTYPE, mode=0o755), b""),
            (member("sub/f"), b"inside"),
            (member("file"), b"a file"),
        ],
    )
    restore_archive(store, entry, str(target))
    assert list(outside.iterdir()) == []
    assert (target / "sub").is_dir() and not (target / "sub").is_symlink()
    assert (target / "sub" / "f").read_bytes() == b"inside"
    assert not (target / "file").is_symlink() and (target / "file").read_bytes() == b"a file"


def test_a_member_that_cannot_be_written_says_how_far_the_extraction_got(tmp_path: Path) -> None:
    target = tmp_path / "target"
    (target / "b" / "full").mkdir(parents=True)  # a folder with something in it where
    (target / "b" / "full" / "x").write_text("x")  # the archive has a file
    store = MemoryStorage()
    entry = put_archive(
        store,
        [(member("a"), b"a"), (member("b", tarfile.DIRTYPE), b""), (member("b/full"), b"f")],
    )
    with pytest.raises(TargetError, match=r"'b/full'.*the 2 member\(s\) before it"):
        restore_archive(store, entry, str(target))
    assert (target / "a").read_bytes() == b"a"


def test_read_only_files_and_folders_are_written_then_closed(tmp_path: Path) -> None:
    # Created writable, given their mode last: as a user whose permissions apply too
    # (the unprivileged run is in tests/e2e/test_archive_cli.py); here the modes as root.
    store = MemoryStorage()
    entry = put_archive(
        store,
        [
            (member("ro", tarfile.DIRTYPE, mode=0o555), b""),
            (member("ro/f", mode=0o444), b"read only"),
            (member("ro/closed", tarfile.DIRTYPE, mode=0o000), b""),
            (member("ro/closed/g", mode=0o000), b"no access"),
        ],
    )
    opts = ExtractOptions(owner=False, umask=0)
    result = restore_archive(store, entry, str(tmp_path / "t"), extract_opts=opts)
    assert (tmp_path / "t" / "ro").stat().st_mode & 0o7777 == 0o555
    assert (tmp_path / "t" / "ro" / "f").stat().st_mode & 0o7777 == 0o444
    assert (tmp_path / "t" / "ro" / "closed").stat().st_mode & 0o7777 == 0
    assert (tmp_path / "t" / "ro" / "closed" / "g").read_bytes() == b"no access"
    assert (result.files, result.dirs, result.bytes) == (2, 2, 18)


def test_member_paths() -> None:
    assert member_path("a/b") == "a/b"
    assert member_path("./a//b/") == "a/b"
    assert member_path("./") == ""
    assert member_path("/etc/passwd") is None
    assert member_path("a/../b") is None
    assert member_path("..") is None


@root_only
def test_past_the_budget_of_open_folders(tmp_path: Path) -> None:
    # Few descriptors: most folders are opened again, component by component, per use;
    # the result is the same, read-only and closed folders included.
    members = []
    for i in range(12):
        top = f"d{i}"
        members.append((member(top, tarfile.DIRTYPE, mode=0o555 if i % 3 else 0o000), b""))
        for j in range(4):
            sub = f"{top}/s{j}"
            members.append((member(sub, tarfile.DIRTYPE, mode=0o700), b""))
            members.append((member(f"{sub}/f", mode=0o444), sub.encode()))
        members.append((member(f"{top}/late", tarfile.LNKTYPE, linkname="d0/s0/f"), b""))
    store = MemoryStorage()
    entry = put_archive(store, members)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (96, hard))  # a budget of no folder at all
    try:
        assert folder_budget() == 0
        restore_archive(store, entry, str(tmp_path / "ours"))
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    raw = tmp_path / "a.tar"
    raw.write_bytes(_plain(store, entry.name))
    assert gnu_extract(raw, tmp_path / "gnu") == 0
    assert differences(tmp_path / "ours", tmp_path / "gnu") == []
    assert os.stat(tmp_path / "ours" / "d0" / "s0" / "f").st_nlink == 13
