"""Tiny files read, hashed, compressed and sealed in forked processes
(engine/backup/tiny_procs.py): the same blobs a reader thread stores, every job answered
once, errors per file, and a child that dies or a callback that fails raised in the
parent."""

from __future__ import annotations

import errno
import os
import signal
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from safehold.crypto.aead import OVERHEAD, Aead
from safehold.engine import xattrs as xa
from safehold.engine.backup import BackupOptions, run_backup, tiny_procs
from safehold.engine.backup import backup as backup_mod
from safehold.engine.backup.file_reader import CHANGED_WHILE_READ, Counters, FileReader
from safehold.engine.backup.scan import node_from_stat
from safehold.engine.backup.tiny_procs import (
    BLOB,
    EMPTY,
    LARGER,
    OS_ERROR,
    Result,
    Sealer,
    TinyProcs,
)
from safehold.engine.backup.vanished import Vanished
from safehold.engine.progress import Progress
from safehold.errors import SafeholdError
from safehold.ids import BlobId
from safehold.repository import tree as t
from safehold.repository.compress import compress, decompress
from safehold.repository.repository import Repository
from safehold.repository.saver import BlobSaver
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


def each(on_result: Callable[[Job, Result], None]) -> Callable[[list[tuple[Job, Result]]], None]:
    """TinyProcs hands over the answers that came in together: one by one here."""

    def on_results(answers: list[tuple[Job, Result]]) -> None:
        for job, res in answers:
            on_result(job, res)

    return on_results


def _collect(
    jobs: list[list[Job]], processes: int = 1, sealer: Sealer = SEALER
) -> dict[str, tuple[Result, bytes]]:
    got: dict[str, tuple[Result, bytes]] = {}
    lock = threading.Lock()

    def on_result(job: Job, res: Result) -> None:
        with lock:
            assert job[0] not in got  # answered once
            got[job[0]] = (res, bytes(res.sealed))

    with TinyProcs[Job](sealer, lambda j: j, each(on_result), processes) as procs:
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
        with TinyProcs[Job](SEALER, lambda j: j, each(on_result)) as procs:
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
        with TinyProcs[Job](SEALER, lambda j: j, each(on_result)) as procs:
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


class _Tally(Progress):
    def __init__(self) -> None:
        self.items = self.bytes = 0
        self.warnings: list[tuple[str, str]] = []

    def advance(self, items: int = 0, nbytes: int = 0) -> None:
        self.items += items
        self.bytes += nbytes

    def warn(self, path: str, message: str) -> None:
        self.warnings.append((path, message))


def test_answers_in_a_batch_are_recorded_as_one_by_one(repo: Repository, tmp_path: Path) -> None:
    """FileReader.sealed_many, for every kind of answer (and the rare ones: changed while
    read, another size than the walk's, attributes not read), leaves the nodes, errors,
    counters and progress the same for a batch as answer by answer, and as FileReader.read
    records a file: sizes as read, bytes read counted, one progress item a file."""

    def sealed(data: bytes) -> tuple[BlobId, int, memoryview]:
        bid = repo.master.blob_id(data)
        comp_id, payload = compress(data, 3)
        out = bytearray(OVERHEAD + len(payload))
        repo.aead.seal_into(payload, bid + bytes((comp_id,)), memoryview(out))
        return bid, comp_id, memoryview(out)

    def answers() -> list[tuple[str, t.Node, Result]]:
        made = []
        for name, walk_size, kind, changed, data, errno_, attrs, problem in [
            ("plain", 11, BLOB, False, b"hello world", 0, {"user.a": b"1"}, ""),
            ("changed", 9, BLOB, True, b"different", 0, None, ""),
            ("grew", 4, BLOB, False, b"grown since", 0, None, ""),
            ("empty", 0, EMPTY, False, b"", 0, None, ""),
            ("emptied", 5, EMPTY, False, b"", 0, None, ""),
            ("denied", 3, OS_ERROR, False, b"", errno.EACCES, None, ""),
            ("no-attrs", 2, BLOB, False, b"hi", 0, {}, "not supported"),
        ]:
            path = tmp_path / name
            path.write_bytes(b"x" * walk_size)
            node = node_from_stat(name, os.lstat(path), str(path))
            bid, comp_id, view = sealed(data) if kind == BLOB else (BlobId(b""), 0, memoryview(b""))
            message = "Permission denied" if kind == OS_ERROR else ""
            res = Result(
                kind, changed, len(data), bid, comp_id, view, errno_, message, attrs, problem
            )
            made.append((str(path), node, res))
        return made

    outcomes = []
    for batched in (False, True):
        saver = BlobSaver(repo, bytes(16))  # type: ignore[arg-type]
        errors: list[tuple[str, str]] = []
        counters, progress = Counters(), _Tally()
        reader = FileReader(repo, saver, counters, errors, progress, Vanished())
        batch = answers()
        if batched:
            reader.sealed_many(batch)
        else:
            for answer in batch:
                reader.sealed_many([answer])
        saver.finish()
        nodes = [(n.name, n.size, n.content, n.error, n.xattrs) for _p, n, _r in batch]
        outcomes.append((nodes, errors, counters.bytes_read, progress.items, progress.bytes))
        outcomes[-1] += (sorted(progress.warnings),)
    assert outcomes[0] == outcomes[1]
    nodes, errors, bytes_read, items, *_ = outcomes[1]
    assert [n[1] for n in nodes] == [11, 9, 11, 0, 0, 3, 2]  # as read, an error's as walked
    assert (bytes_read, items) == (11 + 9 + 11 + 2, 7)
    assert nodes[0][4] == {"user.a": b"1"}
    assert [w for w, _why in errors].count(str(tmp_path / "no-attrs")) == 1
    assert [n[2] for n in nodes][3:6] == [[], [], []] and nodes[5][3] == "Permission denied"
    assert any(why == CHANGED_WHILE_READ for _w, why in errors)
    repo.load_index()
    assert repo.load_blob(bytes.fromhex(nodes[0][2][0])) == b"hello world"


def test_answers_larger_than_the_receive_buffer_arrive_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The parent reads answers into one buffer and moves a partial one to its front; an
    answer that does not fit doubles it: answers of 200-1000 bytes through 128."""
    monkeypatch.setattr(tiny_procs, "RECEIVE_BUFFER", 128)
    files = {}
    for i in range(60):
        p = tmp_path / f"f{i}"
        p.write_bytes(os.urandom(200 + 800 * i // 59))  # incompressible: sealed as large
        files[str(p)] = p.read_bytes()
    got = _collect([[_job(Path(name)) for name in files]])
    assert sorted(got) == sorted(files)
    for name, (res, sealed) in got.items():
        assert (res.kind, res.size) == (BLOB, len(files[name]))
        assert _plain(res, sealed) == files[name]
