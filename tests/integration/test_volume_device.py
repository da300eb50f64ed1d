"""The volume source on the block device of a mounted file system, frozen while read.

A loop device holds an ext4 file system mounted in a temporary folder; files are written
through the mount, the device is backed up with ``freeze`` (the real fsfreeze, on that
file system only), the image restored to a file and mounted read-only, and what the
mount held at the freeze must be in it. Needs root and loop devices: skipped without
root, and a failure under CI when loop devices are missing (tests/servers: unavailable).
"""

from __future__ import annotations

import logging
import mmap
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from safehold.errors import ConfigError, ExitCode, TargetError
from safehold.repository.repository import Repository
from safehold.sources.base import RestoreRequest
from tests.integration.test_source_files import backup, configured, restore
from tests.servers import unavailable
from tests.unit.sources.memfiles import MemoryFiles, read_stream
from tests.unit.sources.test_sqlite import busy_writer, check_copy, count, make_db

MIB = 1 << 20


def run(*argv: str) -> str:
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise AssertionError(f"{' '.join(argv)}: {done.stderr.strip() or done.returncode}")
    return done.stdout.strip()


@dataclass
class Ext4:
    device: str
    mount: Path


@pytest.fixture
def ext4(tmp_path: Path) -> Iterator[Ext4]:
    """A 64 MiB ext4 file system on a loop device, mounted at ``tmp_path/mnt``."""
    if os.geteuid() != 0:
        pytest.skip("loop devices and mounts need root")
    for tool in ("losetup", "mkfs.ext4", "fsfreeze", "mount"):
        if shutil.which(tool) is None:
            unavailable(f"{tool} is missing (scripts/test-deps.sh installs e2fsprogs)")
    image = tmp_path / "fs.img"
    with open(image, "wb") as f:
        f.truncate(64 * MIB)
    run("mkfs.ext4", "-q", "-F", str(image))
    setup = subprocess.run(
        ["losetup", "--find", "--show", str(image)], capture_output=True, text=True, check=False
    )
    if setup.returncode != 0:
        unavailable(f"no loop device here: {setup.stderr.strip()}")
    device = setup.stdout.strip()
    mount = tmp_path / "mnt"
    mount.mkdir()
    try:
        run("mount", device, str(mount))
        try:
            yield Ext4(device, mount)
        finally:
            # A test that failed half-way may have left it frozen; thawing a thawed file
            # system fails harmlessly.
            subprocess.run(["fsfreeze", "-u", str(mount)], capture_output=True, check=False)
            run("umount", str(mount))
    finally:
        run("losetup", "--detach", device)


@contextmanager
def mounted(image: Path) -> Iterator[Path]:
    """``image`` mounted read-only: it must hold a clean file system (no journal replay)."""
    where = Path(tempfile.mkdtemp(dir=image.parent))
    run("mount", "-o", "loop,ro", str(image), str(where))
    try:
        yield where
    finally:
        run("umount", str(where))
        where.rmdir()


def test_each_backup_holds_what_was_written_through_the_mount(
    ext4: Ext4, mem_repo: Repository, tmp_path: Path
) -> None:
    source = configured("volume", path=ext4.device, name="fs.img", freeze=str(ext4.mount))
    for round_ in range(3):
        data = os.urandom(4096)
        (ext4.mount / "file").write_bytes(data)  # no sync: the freeze must flush it
        snap = backup(mem_repo, source, "fs")
        out = tmp_path / f"restored-{round_}.img"
        restore(mem_repo, source, snap, target=str(out))
        with mounted(out) as fs:
            assert (fs / "file").read_bytes() == data, f"backup {round_ + 1} of 3"


def test_a_sqlite_ledger_written_during_the_backups(
    ext4: Ext4, mem_repo: Repository, tmp_path: Path
) -> None:
    db = ext4.mount / "ledger.db"
    make_db(db, "delete")
    source = configured("volume", path=ext4.device, name="fs.img", freeze=str(ext4.mount))
    with busy_writer(db):
        for round_ in range(3):
            before = count(db)
            snap = backup(mem_repo, source, "fs")
            after = count(db)
            out = tmp_path / f"restored-{round_}.img"
            restore(mem_repo, source, snap, target=str(out))
            copy = tmp_path / f"ledger-{round_}"
            copy.mkdir()
            with mounted(out) as fs:
                for name in ("ledger.db", "ledger.db-journal"):  # a hot journal rolls back
                    if (fs / name).exists():
                        shutil.copy(fs / name, copy / name)
            rows = check_copy(copy / "ledger.db")
            # Every transaction committed before the backup began is in the image.
            assert before <= rows <= after, f"backup {round_ + 1} of 3"


def fake_fsfreeze(folder: Path) -> tuple[dict[str, list[str]], Path]:
    """Freeze and thaw commands run by a stand-in named fsfreeze, which only logs: the
    checks apply to it, and nothing is frozen if they let a wrong path through."""
    fake = folder / "bin" / "fsfreeze"
    fake.parent.mkdir()
    log = folder / "fsfreeze.log"
    fake.write_text(f'#!/bin/sh\necho "$@" >> {log}\n')
    fake.chmod(0o755)
    return {
        "freeze_command": [str(fake), "-f", "{mountpoint}"],
        "thaw_command": [str(fake), "-u", "{mountpoint}"],
    }, log


def test_freeze_must_be_the_mount_point_of_the_mounted_device(ext4: Ext4, tmp_path: Path) -> None:
    commands, log = fake_fsfreeze(tmp_path)
    (ext4.mount / "sub").mkdir()
    sub = configured("volume", path=ext4.device, freeze=f"{ext4.mount}/sub", **commands)
    with pytest.raises(ConfigError, match="is not a mount point") as err:
        read_stream(sub.content().streams[0])
    assert f"mounted at {str(ext4.mount)!r}" in err.value.message
    assert f"the volume is mounted at {str(ext4.mount)!r}" in str(err.value.hint)
    # "/" is a mount point, but not the device's: freezing it would not stop the writes.
    root = configured("volume", path=ext4.device, freeze="/", **commands)
    with pytest.raises(ConfigError, match="is not where the volume") as err:
        read_stream(root.content().streams[0])
    assert err.value.exit_code == ExitCode.USAGE
    assert not log.exists()  # nothing was frozen
    own = configured("volume", path=ext4.device, freeze=str(ext4.mount), **commands)
    assert len(read_stream(own.content().streams[0])) == 64 * MIB
    assert log.read_text() == f"-f {ext4.mount}\n-u {ext4.mount}\n"


def test_a_mounted_device_read_without_freeze_is_warned_about(
    ext4: Ext4, caplog: pytest.LogCaptureFixture
) -> None:
    source = configured("volume", path=ext4.device)
    with caplog.at_level(logging.WARNING, logger="safehold.sources.volume"):
        assert len(read_stream(source.content().streams[0])) == 64 * MIB
    assert f"is mounted at {ext4.mount} and not frozen" in caplog.text
    assert f"set freeze: {ext4.mount}" in caplog.text


def read_direct(device: str, n: int) -> bytes:
    """The device's first ``n`` bytes as the device holds them (past the page cache)."""
    fd = os.open(device, os.O_RDONLY | os.O_DIRECT)
    try:
        buf = mmap.mmap(-1, n)
        assert os.preadv(fd, [buf], 0) == n
        return bytes(buf)
    finally:
        os.close(fd)


def test_restore_over_a_mounted_device_is_refused(ext4: Ext4) -> None:
    source = configured("volume", path=ext4.device, name="fs.img")
    (ext4.mount / "file").write_bytes(b"still here")
    run("sync")
    head = read_direct(ext4.device, MIB)
    with pytest.raises(TargetError, match="in use") as err:
        source.restore(
            MemoryFiles({"fs.img": bytes(MIB)}), RestoreRequest(target=ext4.device, replace=True)
        )
    assert err.value.exit_code == ExitCode.TARGET
    assert read_direct(ext4.device, MIB) == head
