"""Tiny files read, hashed, compressed and sealed in forked processes
(engine/backup/tiny_procs.py): the same blobs a reader thread stores, every job answered
once, errors per file, and a child that dies or a callback that fails raised in the
parent."""

from __future__ import annotations

import errno
import os
import signal
import threading
from pathlib import Path

import pytest

from safehold.crypto.aead import Aead
from safehold.engine import xattrs as xa
from safehold.engine.backup import BackupOptions, run_backup, tiny_procs
from safehold.engine.backup import backup as backup_mod
from safehold.engine.backup.tiny_procs import (
    BLOB,
    EMPTY,
    LARGER,
    OS_ERROR,
    Result,
    Sealer,
    TinyProcs,
)
from safehold.errors import SafeholdError
from safehold.ids import BlobId
from safehold.repository.compress import decompress
from safehold.repository.repository import Repository
from safehold.storage.local import LocalStorage
from tests.conftest import FAST_KDF, PASSWORD, make_sample_tree
from tests.unit.engine.test_backup_restore import restored, tree_state

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork on this platform")

KEY = bytes(range(32))
AEAD = Aead(KEY)


def _blob_id(data: bytes | memoryview) -> BlobId:
    import blake3

    return BlobId(blake3.blake3(data, key=KEY).digest())


SEALER = Sealer(_blob_id, AEAD, 3, 1000)
Job = tuple[str, int, int, int]


def _job(path: Path) -> Job:
    st = path.stat()
    return str(path), st.st_size, st.st_mtime_ns, st.st_ctime_ns


def _set_attr(path: Path, name: str, value: bytes) -> None:
    try:
        os.setxattr(path, name, value, follow_symlinks=False)
    except OSError as exc:
        if exc.errno in (errno.ENOTSUP, errno.EOPNOTSUPP):
            pytest.skip("no user extended attributes on this file system")
        raise


def _collect(
    jobs: list[list[Job]], processes: int = 1, sealer: Sealer = SEALER
) -> dict[str, tuple[Result, bytes]]:
    got: dict[str, tuple[Result, bytes]] = {}
    lock = threading.Lock()

    def on_result(job: Job, res: Result) -> None:
        with lock:
            assert job[0] not in got  # answered once
            got[job[0]] = (res, bytes(res.sealed))

    with TinyProcs[Job](sealer, lambda j: j, on_result, processes) as procs:
        for batch in jobs:
            procs.submit(batch)
    return got


def _plain(res: Result, sealed: bytes) -> bytes:
    payload = AEAD.open(sealed, res.blob_id + bytes((res.comp_id,)))
    return decompress(res.comp_id, payload, res.size) if res.comp_id else payload


@pytest.mark.parametrize("processes", [1, 2])
def test_each_kind_of_answer(tmp_path: Path, processes: int) -> None:
    files = {}
    for i in range(40):
        p = tmp_path / f"f{i}"
        p.write_bytes(b"text %d " % i * (i + 1))
        files[str(p)] = p.read_bytes()
    (tmp_path / "empty").write_bytes(b"")
    (tmp_path / "large").write_bytes(os.urandom(1001))  # past max_size: the parent reads it
    jobs = [_job(tmp_path / n) for n in sorted(os.listdir(tmp_path))]
    jobs.append((str(tmp_path / "gone"), 10, 1, 1))
    got = _collect([jobs[:20], jobs[20:]], processes)

    assert len(got) == len(jobs)
    for path, data in files.items():
        res, sealed = got[path]
        assert (res.kind, res.size, res.changed) == (BLOB, len(data), False)
        assert res.blob_id == _blob_id(data)
        assert _plain(res, sealed) == data
    assert got[str(tmp_path / "empty")][0].kind == EMPTY
    assert got[str(tmp_path / "large")][0].kind == LARGER
    gone = got[str(tmp_path / "gone")][0]
    assert (gone.kind, gone.errno) == (OS_ERROR, errno.ENOENT)
    assert "No such file" in gone.message


def test_the_child_reads_the_attributes_it_is_asked_for(tmp_path: Path) -> None:
    """With ``Sealer.attrs`` the child sends each file's extended attributes back with its
    answer, whatever the answer's kind; without, none (the walk reads them)."""
    tagged, plain, large = tmp_path / "tagged", tmp_path / "plain", tmp_path / "large"
    tagged.write_bytes(b"mail " * 20)
    plain.write_bytes(b"other " * 20)
    large.write_bytes(os.urandom(1001))
    _set_attr(tagged, "user.origin", b"imap\x00\xff")
    _set_attr(tagged, "user.empty", b"")
    _set_attr(large, "user.big", b"v" * 3000)
    jobs = [_job(tagged), _job(plain), _job(large), (str(tmp_path / "gone"), 3, 1, 1)]
    reading = Sealer(_blob_id, AEAD, 3, 1000, attrs=xa.Choice())
    got = _collect([jobs], sealer=reading)
    res, sealed = got[str(tagged)]
    assert res.attrs == {"user.origin": b"imap\x00\xff", "user.empty": b""}
    assert res.attrs_problem == ""
    assert _plain(res, sealed) == tagged.read_bytes()  # the content after the attributes
    assert got[str(plain)][0].attrs == {}
    big = got[str(large)][0]
    assert big.kind == LARGER and big.attrs == {"user.big": b"v" * 3000}
    gone = got[str(tmp_path / "gone")][0]
    assert gone.kind == OS_ERROR and gone.attrs == {}
    # ACLs only: the user attributes are not the kind asked for.
    acls_only = Sealer(_blob_id, AEAD, 3, 1000, attrs=xa.Choice(xattrs=False))
    assert _collect([[_job(tagged)]], sealer=acls_only)[str(tagged)][0].attrs == {}
    # Not asked: None, and the walk reads them.
    assert all(res.attrs is None for res, _ in _collect([jobs]).values())


def test_attributes_travel_whole() -> None:
    """Names that are not UTF-8, any bytes as values, and a problem's text, across the
    pipe's encoding; nothing at all for no attributes and no problem."""
    attrs = {"user.a": b"", os.fsdecode(b"user.\xff\xfe"): bytes(range(256)) * 3}
    raw = tiny_procs._encode_attrs(attrs, "user.x: Permission denied")
    assert tiny_procs._decode_attrs(memoryview(raw)) == (attrs, "user.x: Permission denied")
    assert tiny_procs._encode_attrs({}, "") == b""
    assert tiny_procs._decode_attrs(memoryview(b"")) == ({}, "")
    assert tiny_procs._decode_attrs(memoryview(tiny_procs._encode_attrs({}, "why"))) == ({}, "why")


def test_a_file_whose_times_differ_from_the_walk_is_read_again(tmp_path: Path) -> None:
    p = tmp_path / "f"
    p.write_bytes(b"now this" * 10)
    path, size, mtime, ctime = _job(p)
    res, sealed = _collect([[(path, 3, mtime - 5, ctime)]])[path]
    # Read again after the first fstat disagreed; stable since, so not "changed".
    assert (res.kind, res.size, res.changed) == (BLOB, size, False)
    assert _plain(res, sealed) == p.read_bytes()


def test_a_child_that_dies_is_an_error(tmp_path: Path) -> None:
    p = tmp_path / "f"
    p.write_bytes(b"x" * 100)
    gate = threading.Event()

    def on_result(job: Job, res: Result) -> None:
        gate.wait(5)

    with pytest.raises(SafeholdError, match="reader process of small files"):
        with TinyProcs[Job](SEALER, lambda j: j, on_result) as procs:
            procs.submit([_job(p)])
            os.kill(procs._children[0].pid, signal.SIGKILL)
            gate.set()
            procs.submit([_job(p)] * 2000)  # answered by no one


def test_a_failing_callback_is_raised_and_the_children_end(tmp_path: Path) -> None:
    p = tmp_path / "f"
    p.write_bytes(b"x" * 100)

    def on_result(job: Job, res: Result) -> None:
        raise ValueError("no room")

    with pytest.raises(ValueError, match="no room"):
        with TinyProcs[Job](SEALER, lambda j: j, on_result) as procs:
            pid = procs._children[0].pid
            procs.submit([_job(p)] * 10)
    with pytest.raises(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)  # reaped


@pytest.fixture
def repo(tmp_path: Path) -> Repository:
    storage = LocalStorage(tmp_path / "repo", create=True)
    return Repository.init(storage, PASSWORD, kdf=FAST_KDF)


@pytest.mark.usefixtures("allow_fork")
def test_a_backup_through_the_child_stores_what_threads_store(
    repo: Repository, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = make_sample_tree(tmp_path / "src")
    for i in range(300):
        (src / f"mail-{i}").write_text(f"message {i}\n" * (i % 40 + 1))
    (src / "same-a").write_text("twice\n")
    (src / "same-b").write_text("twice\n")
    # Attributes of tiny files are read by the child, not by the walk: the same nodes.
    _set_attr(src / "mail-7", "user.folder", b"INBOX")
    _set_attr(src / "same-b", "user.flags", b"\\Seen")
    (src / "big").write_bytes(os.urandom(40_000))  # past TINY_FILE: the walk reads its
    _set_attr(src / "big", "user.kind", b"blob")
    walk_read: list[str] = []
    real_read = xa.read

    def reading(path: str, choice: xa.Choice) -> object:
        walk_read.append(os.path.basename(path))
        return real_read(path, choice)

    sent: list[int] = []
    real = TinyProcs.submit

    def counting(self: TinyProcs[object], jobs: list[object]) -> None:
        sent.append(len(jobs))
        real(self, jobs)

    monkeypatch.setattr(TinyProcs, "submit", counting)
    monkeypatch.setattr("safehold.engine.backup.plan.xa.read", reading)
    forked = run_backup(repo, BackupOptions(paths=[str(src)]))
    assert sum(sent) >= 300
    assert "big" in walk_read and "mail-7" not in walk_read and "same-b" not in walk_read
    monkeypatch.setattr(backup_mod, "TINY_PROCS", 0)
    threads = run_backup(repo, BackupOptions(paths=[str(src)], force=True))
    assert "mail-7" in walk_read  # the walk read it this time
    # The same content, stored the same way: the same trees, down to the root.
    assert forked.snapshot.tree == threads.snapshot.tree
    assert threads.summary["blobs_new"] == 0  # every blob was stored by the first
    out = restored(repo, forked.snapshot, tmp_path / "out", src)
    assert tree_state(out) == tree_state(src)
    restored_src = out / "mail-7"
    assert os.getxattr(restored_src, "user.folder") == b"INBOX"
    assert os.getxattr(out / "same-b", "user.flags") == b"\\Seen"
    assert os.getxattr(out / "big", "user.kind") == b"blob"


@pytest.mark.usefixtures("allow_fork")
def test_a_first_backup_forks_two_children_and_a_rebackup_one(
    repo: Repository, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without a parent snapshot every file is read: two children share the tiny ones;
    a re-backup sends them only what changed, and one child does."""
    src = tmp_path / "src"
    src.mkdir()
    for i in range(200):
        (src / f"mail-{i}").write_text(f"message {i}\n" * (i % 30 + 1))
    forked: list[int] = []
    real_fork = TinyProcs._fork

    def fork(self: TinyProcs[object]) -> object:
        forked.append(len(self._children))
        return real_fork(self)

    monkeypatch.setattr(TinyProcs, "_fork", fork)
    first = run_backup(repo, BackupOptions(paths=[str(src)]))
    assert forked == [0, 1]  # two children
    (src / "mail-3").write_text("changed\n")
    forked.clear()
    again = run_backup(repo, BackupOptions(paths=[str(src)]))
    assert forked == [0]
    assert again.summary["files_changed"] == 1
    out = restored(repo, again.snapshot, tmp_path / "out", src)
    assert tree_state(out) == tree_state(src)
    assert first.snapshot.tree != again.snapshot.tree
