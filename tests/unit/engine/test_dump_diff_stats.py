"""The engines behind ls/diff/dump/stats/chain, run in-process on an in-memory repository."""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import stat
import tarfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from safehold.engine.backup import BackupOptions, run_backup
from safehold.engine.export import dump
from safehold.engine.export.tar import pax_time
from safehold.engine.inspect.diff import (
    ADDED,
    METADATA,
    MODIFIED,
    REMOVED,
    TYPE_CHANGED,
    diff_trees,
)
from safehold.engine.inspect.stats import compute_stats, list_chains, raw_data, restore_size
from safehold.engine.tree_walk import find
from safehold.errors import IntegrityError, UsageError
from safehold.repository.chunker import ChunkerParams
from safehold.repository.repository import Repository, pack_name
from safehold.repository.snapshot import Snapshot
from safehold.storage.memory import MemoryStorage
from tests.conftest import FAST_KDF, PASSWORD, make_sample_tree

# Small chunks, so that a file of a few hundred KiB is many blobs.
SMALL_CHUNKS = ChunkerParams(min_size=4096, avg_size=16384, max_size=65536, seed=7)


@pytest.fixture
def repo() -> Repository:
    return Repository.init(MemoryStorage(), PASSWORD, kdf=FAST_KDF, chunker=SMALL_CHUNKS)


def backup(repo: Repository, path: Path) -> Snapshot:
    return run_backup(repo, BackupOptions(paths=[str(path)], threads=2)).snapshot


def by_kind(changes: list[tuple[str, str]], root: Path) -> dict[str, set[str]]:
    """Changes at or below ``root``, as paths relative to it ("." for root itself)."""
    out: dict[str, set[str]] = {}
    for path, kind in changes:
        if path == str(root) or path.startswith(f"{root}/"):
            out.setdefault(kind, set()).add(os.path.relpath(path, root))
    return out


class Sink:
    """A write-only, unseekable output that records each write, as a pipe would see it."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []

    def write(self, data: bytes) -> int:
        self.writes.append(bytes(data))
        return len(data)

    def flush(self) -> None:
        pass

    def getvalue(self) -> bytes:
        return b"".join(self.writes)


# --- diff ----------------------------------------------------------------------------------


def test_diff_reports_each_kind_of_change(repo: Repository, tmp_path: Path) -> None:
    src = make_sample_tree(tmp_path / "src")
    a = backup(repo, src)
    (src / "new.txt").write_text("new\n")
    (src / "newdir").mkdir()
    (src / "newdir" / "inner.txt").write_text("inner\n")
    (src / "empty.txt").unlink()
    shutil.rmtree(src / "sub" / "deeper")
    with open(src / "sub" / "data.bin", "r+b") as f:
        f.write(b"x" * 100)  # same size, different content
    os.chmod(src / "hello.txt", 0o600)  # hardlink.txt is the same inode
    (src / "link").unlink()
    (src / "link").write_text("now a file\n")
    b = backup(repo, src)

    result = diff_trees(repo, a.tree, b.tree)
    kinds = by_kind([(c.path, c.kind) for c in result.changes], src)
    assert kinds == {
        ADDED: {"new.txt", "newdir", "newdir/inner.txt"},
        REMOVED: {"empty.txt", "sub/deeper", "sub/deeper/notes.md"},
        MODIFIED: {"sub/data.bin"},
        METADATA: {".", "sub", "hello.txt", "hardlink.txt"},
        TYPE_CHANGED: {"link"},
    }
    # Outside the backed-up folder only its parents may differ (their times), never content.
    outside = [c for c in result.changes if not c.path.startswith(str(src))]
    assert all(c.kind == METADATA and c.node.type == "dir" for c in outside)
    s = result.stats
    assert (s.added, s.removed, s.modified, s.type_changed) == (3, 3, 1, 1)
    assert s.metadata == 4 + len(outside)
    order = [c.path for c in result.changes]
    assert order.index(f"{src}/newdir") < order.index(f"{src}/newdir/inner.txt")
    assert order.index(f"{src}/sub/data.bin") < order.index(f"{src}/sub/deeper/notes.md")

    # Bytes count content at the same path: whole files added or removed, and only the
    # blobs of data.bin that differ (the first one: 100 bytes changed at its start).
    old_data = find(repo, a.tree, f"{src}/sub/data.bin")
    new_data = find(repo, b.tree, f"{src}/sub/data.bin")
    assert old_data is not None and new_data is not None
    old_blobs, new_blobs = old_data[1].content, new_data[1].content
    assert old_blobs[1:] == new_blobs[1:] and old_blobs[0] != new_blobs[0]
    changed_new = repo.index.lookup(bytes.fromhex(new_blobs[0]))
    changed_old = repo.index.lookup(bytes.fromhex(old_blobs[0]))
    assert changed_new is not None and changed_old is not None
    # new.txt, newdir/inner.txt and the file that replaced the symlink; notes.md.
    assert s.bytes_added == 4 + 6 + 11 + changed_new.raw_length
    assert s.bytes_removed == 8000 + changed_old.raw_length


def test_diff_does_not_read_identical_subtrees(repo: Repository, tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "same" / "deep").mkdir(parents=True)
    (src / "same" / "deep" / "f").write_bytes(os.urandom(1000))
    (src / "changed").mkdir()
    (src / "changed" / "g").write_bytes(b"one")
    a = backup(repo, src)
    (src / "changed" / "g").write_bytes(b"two, longer")
    b = backup(repo, src)
    same = find(repo, b.tree, f"{src}/same")
    assert same is not None
    same_subtree = same[1].subtree
    found_a = find(repo, a.tree, f"{src}/same")
    assert found_a is not None and found_a[1].subtree == same_subtree

    repo._tree_cache.clear()  # the trees a diff loads are what it reads
    result = diff_trees(repo, a.tree, b.tree)
    assert by_kind([(c.path, c.kind) for c in result.changes], src) == {MODIFIED: {"changed/g"}}
    assert same_subtree not in repo._tree_cache
    changed = find(repo, b.tree, f"{src}/changed")
    assert changed is not None and changed[1].subtree in repo._tree_cache


def test_diff_of_a_snapshot_with_itself_is_empty(repo: Repository, tmp_path: Path) -> None:
    snap = backup(repo, make_sample_tree(tmp_path / "src"))
    result = diff_trees(repo, snap.tree, snap.tree)
    assert result.changes == []
    assert result.stats.bytes_added == result.stats.bytes_removed == 0


# --- dump ----------------------------------------------------------------------------------


def test_dump_file_streams_its_bytes(repo: Repository, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    data = os.urandom(300_000)
    (src / "big").write_bytes(data)
    snap = backup(repo, src)
    node = find(repo, snap.tree, f"{src}/big")
    assert node is not None and len(node[1].content) > 5

    sink = Sink()
    result = dump(repo, snap, f"{src}/big", sink)  # type: ignore[arg-type]
    assert (result.kind, result.files, result.bytes) == ("file", 1, len(data))
    assert sink.getvalue() == data
    assert len(sink.writes) == len(node[1].content)  # one write per blob, nothing staged


def test_dump_folder_is_a_streamed_tar_of_the_tree(repo: Repository, tmp_path: Path) -> None:
    src = make_sample_tree(tmp_path / "src")
    snap = backup(repo, src)
    sink = Sink()
    result = dump(repo, snap, str(src), sink)  # type: ignore[arg-type]
    assert result.kind == "tar" and not result.skipped
    assert (result.files, result.dirs, result.others) == (5, 4, 1)
    # Written as it was produced, in pieces far smaller than the 3 MiB file inside it.
    assert len(sink.writes) > 100 and max(len(w) for w in sink.writes) < 64 * 1024

    base = str(src).lstrip("/")
    with tarfile.open(fileobj=io.BytesIO(sink.getvalue()), mode="r|") as tar:
        seen: dict[str, tarfile.TarInfo] = {}
        for member in tar:
            seen[member.name] = member
            rel = os.path.relpath(member.name, base)
            st = os.lstat(src / rel)
            assert member.mode == stat.S_IMODE(st.st_mode), rel
            assert (member.uid, member.gid) == (st.st_uid, st.st_gid), rel
            assert member.pax_headers["mtime"] == pax_time(st.st_mtime_ns), rel
            if member.isreg():
                f = tar.extractfile(member)
                assert f is not None
                assert f.read() == (src / rel).read_bytes(), rel
    expected = {base} | {
        f"{base}/{os.path.relpath(os.path.join(d, n), src)}"
        for d, dirs, files in os.walk(src)
        for n in dirs + files
    }
    assert set(seen) == expected
    assert seen[f"{base}/link"].issym() and seen[f"{base}/link"].linkname == "hello.txt"
    # hardlink.txt sorts first, so it carries the data and hello.txt links to it.
    assert seen[f"{base}/hello.txt"].islnk()
    assert seen[f"{base}/hello.txt"].linkname == f"{base}/hardlink.txt"
    assert seen[f"{base}/empty-dir"].isdir()


def test_dump_verifies_every_blob(repo: Repository, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_bytes(os.urandom(100_000))
    snap = backup(repo, src)
    node = find(repo, snap.tree, f"{src}/f")
    assert node is not None
    loc = repo.index.lookup(bytes.fromhex(node[1].content[-1]))
    assert loc is not None
    name = pack_name(loc.pack_id)
    raw = bytearray(repo.storage.get(name))
    raw[loc.offset + loc.length // 2] ^= 0x01
    repo.storage.put(name, bytes(raw))
    with pytest.raises(IntegrityError):
        dump(repo, snap, f"{src}/f", Sink())  # type: ignore[arg-type]
    with pytest.raises(IntegrityError):
        dump(repo, snap, str(src), Sink())  # type: ignore[arg-type]


def test_dump_of_a_missing_path_is_a_usage_error(repo: Repository, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_bytes(b"x")
    snap = backup(repo, src)
    sink = Sink()
    with pytest.raises(UsageError, match="is not in snapshot"):
        dump(repo, snap, f"{src}/nope", sink)  # type: ignore[arg-type]
    assert sink.writes == []


@pytest.mark.parametrize(
    ("ns", "text"),
    [(0, "0.000000000"), (1_500_000_001, "1.500000001"), (-1_500_000_000, "-1.500000000")],
)
def test_pax_time_is_exact(ns: int, text: str) -> None:
    assert pax_time(ns) == text


# --- stats ---------------------------------------------------------------------------------


def test_stats_agree_with_the_file_system(repo: Repository, tmp_path: Path) -> None:
    src = make_sample_tree(tmp_path / "src")
    (src / "copy.bin").write_bytes((src / "sub" / "data.bin").read_bytes())  # deduplicated
    first = backup(repo, src)
    second = backup(repo, src)

    files = dirs = others = 0
    sizes: dict[tuple[int, int], int] = {}
    contents: dict[bytes, int] = {}
    for d, dnames, fnames in os.walk(src):
        dirs += len(dnames)
        for n in fnames:
            st = os.lstat(os.path.join(d, n))
            if stat.S_ISREG(st.st_mode):
                files += 1
                sizes[(st.st_dev, st.st_ino)] = st.st_size
                data = Path(d, n).read_bytes()
                contents[hashlib.sha256(data).digest()] = len(data)
            else:
                others += 1
    ancestors = len(src.parts) - 1  # "/tmp", ..., "src" itself are folders in the snapshot

    one = restore_size(repo, [first])
    assert (one.files, one.dirs, one.others) == (files, dirs + ancestors, others)
    assert one.bytes == sum(sizes.values())  # hello.txt and hardlink.txt count once

    raw = raw_data(repo, [first, second])
    assert raw.data_raw_bytes == sum(contents.values())  # copy.bin stored once
    assert raw.missing_blobs == 0 and raw.stored_bytes > 0

    st = compute_stats(repo, [first, second], whole_repository=True)
    assert st.restore_size is not None and st.restore_size.bytes == 2 * one.bytes
    assert st.repository is not None
    assert (st.repository.snapshots, st.repository.chains) == (2, 1)
    packs = list(repo.storage.list("data/"))
    assert st.repository.packs == len(packs)
    assert st.repository.pack_bytes == sum(p.size for p in packs)
    assert st.dedup_ratio == pytest.approx(2 * one.bytes / sum(contents.values()))
    assert st.dedup_ratio is not None and st.dedup_ratio > 2
    assert st.compression_ratio == pytest.approx(raw.raw_bytes / raw.stored_bytes)

    only_size = compute_stats(repo, [first], mode="restore-size")
    assert only_size.raw_data is None and only_size.repository is None
    assert only_size.dedup_ratio is None and only_size.compression_ratio is None


# --- chains --------------------------------------------------------------------------------


def _snap(sid: str, chain: str, seq: int, minutes: int, *, isolated: bool = False) -> Snapshot:
    when = datetime(2025, 1, 1, tzinfo=UTC) + timedelta(minutes=minutes)
    s = Snapshot(when, "t", ["/x"], "h", chain, chain_seq=seq, isolated=isolated)
    s.id = sid
    return s


def test_list_chains_groups_orders_and_marks_status() -> None:
    snaps = [
        _snap("a0", "c1", 0, 0),
        _snap("i0", "c3", 0, 1, isolated=True),
        _snap("b0", "c2", 0, 3),
        _snap("a1", "c1", 1, 2),
        _snap("b1", "c2", 1, 4),
    ]
    chains = list_chains(snaps, finished={"c2", "gone"})
    assert [c.id for c in chains] == ["c1", "c3", "c2"]
    assert [[s.id for s in c.snapshots] for c in chains] == [["a0", "a1"], ["i0"], ["b0", "b1"]]
    assert [c.status for c in chains] == ["open", "isolated", "finished"]
