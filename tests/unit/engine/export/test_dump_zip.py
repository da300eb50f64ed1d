"""``dump --archive zip``: a streamed zip that unzip tools read back."""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import subprocess
import zipfile
from pathlib import Path

import pytest

from safehold.engine.backup import BackupOptions, run_backup
from safehold.engine.export import dump
from safehold.repository.repository import Repository
from tests.conftest import make_sample_tree


class _Pipe:
    """An output that cannot seek, as standard output into a pipe."""

    def __init__(self) -> None:
        self.data = bytearray()

    def write(self, b: bytes) -> int:
        self.data += b
        return len(b)

    def flush(self) -> None:
        pass

    def seekable(self) -> bool:
        return False

    def tell(self) -> int:
        raise OSError("not seekable")


def test_zip_of_a_folder_holds_contents_modes_links(mem_repo: Repository, tmp_path: Path) -> None:
    src = make_sample_tree(tmp_path / "src")
    os.mkfifo(src / "fifo")
    snap = run_backup(mem_repo, BackupOptions(paths=[str(src)])).snapshot
    out = _Pipe()
    result = dump(mem_repo, snap, str(src), out, archive="zip")  # type: ignore[arg-type]
    assert result.kind == "zip"
    assert [p for p, _ in result.skipped] == [str(src / "fifo")]
    zpath = tmp_path / "d.zip"
    zpath.write_bytes(out.data)
    rel = str(src).lstrip("/")
    with zipfile.ZipFile(zpath) as zf:
        assert zf.testzip() is None
        names = set(zf.namelist())
        assert f"{rel}/sub/deeper/notes.md" in names and f"{rel}/empty-dir/" in names
        data = zf.read(f"{rel}/sub/data.bin")
        assert (
            hashlib.sha256(data).digest()
            == hashlib.sha256((src / "sub" / "data.bin").read_bytes()).digest()
        )
        assert zf.read(f"{rel}/hardlink.txt") == b"hello world\n"  # a copy: zip has no links
        notes = zf.getinfo(f"{rel}/sub/deeper/notes.md")
        assert stat.S_IMODE(notes.external_attr >> 16) == 0o640
        link = zf.getinfo(f"{rel}/link")
        assert stat.S_ISLNK(link.external_attr >> 16) and zf.read(link) == b"hello.txt"
    if shutil.which("unzip"):
        subprocess.run(["unzip", "-q", "-t", str(zpath)], check=True)


@pytest.mark.parametrize("archive", ["tar", "zip"])
def test_dump_of_a_file_is_its_bytes_whatever_the_archive(
    mem_repo: Repository, tmp_path: Path, archive: str
) -> None:
    src = make_sample_tree(tmp_path / "src")
    snap = run_backup(mem_repo, BackupOptions(paths=[str(src)])).snapshot
    out = _Pipe()
    dump(mem_repo, snap, str(src / "hello.txt"), out, archive=archive)  # type: ignore[arg-type]
    assert bytes(out.data) == b"hello world\n"
