"""Backup and restore through the engine on real files and an in-memory repository."""

from __future__ import annotations

import hashlib
import io
import os
import random
import sys
from pathlib import Path

import pytest

from safehold.engine.backup import BackupOptions, run_backup
from safehold.engine.backup.plan import DirPlan, Planner
from safehold.engine.backup.scan import Excluder
from safehold.engine.restore import RestoreOptions, run_restore
from safehold.errors import SourceError, SourceNotFound, UsageError
from safehold.repository import tree as t
from safehold.repository.index import Index
from safehold.repository.repository import Repository
from safehold.repository.snapshot import Snapshot
from tests.conftest import make_sample_tree


def tree_state(root: Path) -> dict[str, tuple[object, ...]]:
    """Everything a restore must reproduce, keyed by relative path."""
    out: dict[str, tuple[object, ...]] = {}
    inodes: dict[int, str] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            rel = str(p.relative_to(root))
            st = p.lstat()
            if p.is_symlink():
                out[rel] = ("link", os.readlink(p))
            elif p.is_dir():
                out[rel] = ("dir", st.st_mode, st.st_mtime_ns)
            else:
                link = inodes.setdefault(st.st_ino, rel) if st.st_nlink > 1 else rel
                digest = hashlib.sha256(p.read_bytes()).hexdigest()
                out[rel] = ("file", st.st_mode, st.st_mtime_ns, digest, link)
    return out


def backup(repo: Repository, *paths: Path, **kw: object) -> Snapshot:
    return run_backup(repo, BackupOptions(paths=[str(p) for p in paths], **kw)).snapshot  # type: ignore[arg-type]


def restored(repo: Repository, snap: Snapshot, target: Path, src: Path, **kw: object) -> Path:
    run_restore(repo, snap, RestoreOptions(target=str(target), **kw))  # type: ignore[arg-type]
    return target / str(src).lstrip("/")


def test_roundtrip_keeps_content_and_metadata(mem_repo: Repository, tmp_path: Path) -> None:
    src = make_sample_tree(tmp_path / "src")
    snap = backup(mem_repo, src)
    out = restored(mem_repo, snap, tmp_path / "out", src)
    assert tree_state(out) == tree_state(src)
    assert (out / "empty-dir").is_dir()
    assert os.stat(out / "hello.txt").st_ino == os.stat(out / "hardlink.txt").st_ino


def test_unchanged_files_are_not_read_again(mem_repo: Repository, tmp_path: Path) -> None:
    src = make_sample_tree(tmp_path / "src")
    first = run_backup(mem_repo, BackupOptions(paths=[str(src)]))
    assert first.summary["bytes_read"] > 3_000_000
    second = run_backup(mem_repo, BackupOptions(paths=[str(src)]))
    assert second.summary["bytes_read"] == 0
    assert second.summary["blobs_new"] == 0
    assert _own(mem_repo, second.snapshot.tree, src) == _own(mem_repo, first.snapshot.tree, src)
    assert second.snapshot.parent == first.snapshot.id
    (src / "sub" / "data.bin").write_bytes(b"changed")
    third = run_backup(mem_repo, BackupOptions(paths=[str(src)]))
    assert third.summary["files_changed"] == 1
    assert third.summary["bytes_read"] == len(b"changed")
    out = restored(mem_repo, third.snapshot, tmp_path / "out", src)
    assert (out / "sub" / "data.bin").read_bytes() == b"changed"
    # The earlier snapshot still restores the old content.
    old = restored(mem_repo, first.snapshot, tmp_path / "old", src)
    assert len((old / "sub" / "data.bin").read_bytes()) == 3 * 1024 * 1024 + 17


def _subtree(repo: Repository, tree_id: str, *names: str) -> str:
    for name in names:
        tree_id = next(n.subtree for n in repo.load_tree(tree_id) if n.name == name)
    return tree_id


def _own(repo: Repository, tree_id: str, src: Path) -> str:
    """The tree of ``src`` itself in a snapshot's tree: the folders above it (/tmp) are
    saved with times that other processes change between two backups."""
    return _subtree(repo, tree_id, *str(src).strip("/").split("/"))


@pytest.mark.parametrize(
    "change",
    ["delete", "symlink", "empty-dir", "rename", "chmod-dir", "new-file", "edit"],
)
def test_deep_changes_reach_the_root_and_untouched_folders_keep_their_trees(
    mem_repo: Repository, tmp_path: Path, change: str
) -> None:
    # Folders with nothing to read are saved during the walk: a change deep down must still
    # give every folder above it a new tree, and leave the untouched sibling's tree as it was.
    src = tmp_path / "src"
    deep = src / "a" / "b" / "c"
    deep.mkdir(parents=True)
    (deep / "f.txt").write_text("deep")
    (src / "a" / "b" / "g.txt").write_text("middle")
    (src / "other" / "x").mkdir(parents=True)
    (src / "other" / "x" / "y.txt").write_text("untouched")
    first = backup(mem_repo, src)
    prefix = str(src).strip("/").split("/")
    if change == "delete":
        (deep / "f.txt").unlink()
    elif change == "symlink":
        (deep / "link").symlink_to("f.txt")
    elif change == "empty-dir":
        (deep / "new-dir").mkdir()
    elif change == "rename":
        (deep / "f.txt").rename(deep / "renamed.txt")
    elif change == "chmod-dir":
        deep.chmod(0o700)
    elif change == "new-file":
        (deep / "new.txt").write_text("new")
    else:
        (deep / "f.txt").write_text("edited!")
    second = backup(mem_repo, src)
    assert second.parent == first.id
    changed = [["a"], ["a", "b"]] + ([] if change == "chmod-dir" else [["a", "b", "c"]])
    for path in changed:  # (a chmod changes c's node in b's tree, not c's own tree)
        assert _subtree(mem_repo, second.tree, *prefix, *path) != _subtree(
            mem_repo, first.tree, *prefix, *path
        ), path
    assert _subtree(mem_repo, second.tree, *prefix, "other") == _subtree(
        mem_repo, first.tree, *prefix, "other"
    )
    third = backup(mem_repo, src)
    # And nothing changed is nothing new.
    assert _own(mem_repo, third.tree, src) == _own(mem_repo, second.tree, src)
    assert tree_state(restored(mem_repo, second, tmp_path / "out", src)) == tree_state(src)


def test_a_rebackup_writes_the_same_trees_as_a_full_rescan(
    mem_repo: Repository, tmp_path: Path
) -> None:
    # Folders waiting for file contents keep their unchanged nodes as JSON text: the trees
    # they make must be byte for byte those of a backup that reuses nothing.
    src = tmp_path / "src"
    for folder in ("a", "a/sub", "b"):
        (src / folder).mkdir(parents=True)
        for i in range(20):
            (src / folder / f"f{i:02}-caf\u00e9.txt").write_text(f"{folder} {i}\n" * 50)
    (src / "a" / "link").symlink_to("f00-caf\u00e9.txt")
    first = backup(mem_repo, src)
    (src / "a" / "f03-caf\u00e9.txt").write_text("edited\n")
    (src / "a" / "sub" / "new.txt").write_text("new\n")
    again = backup(mem_repo, src)
    rescan = backup(mem_repo, src, force=True)
    assert again.parent == first.id and again.tree != first.tree
    assert _own(mem_repo, again.tree, src) == _own(mem_repo, rescan.tree, src)
    prefix = str(src).strip("/").split("/")
    assert _subtree(mem_repo, again.tree, *prefix, "b") == _subtree(
        mem_repo, first.tree, *prefix, "b"
    )


def test_sparse_file_is_restored_with_holes(mem_repo: Repository, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    size = 64 * 1024 * 1024
    with open(src / "disk.img", "wb") as f:
        f.write(b"start")
        f.seek(size - 3)
        f.write(b"end")
    snap = backup(mem_repo, src)
    out = restored(mem_repo, snap, tmp_path / "out", src)
    data = (out / "disk.img").read_bytes()
    assert len(data) == size and data[:5] == b"start" and data[-3:] == b"end"
    assert os.stat(out / "disk.img").st_blocks * 512 < size // 4


def test_chains_length_and_isolation(mem_repo: Repository, tmp_path: Path) -> None:
    src = make_sample_tree(tmp_path / "src")
    seqs = []
    chains = []
    for _ in range(4):
        s = backup(mem_repo, src, chain_length=2)
        seqs.append(s.chain_seq)
        chains.append(s.chain)
    assert seqs == [0, 1, 2, 0]
    assert chains[0] == chains[1] == chains[2] != chains[3]
    iso = backup(mem_repo, src, isolated=True)
    assert iso.isolated and iso.chain not in chains
    after = backup(mem_repo, src)
    assert after.chain == chains[3] and after.chain_seq == 1
    mem_repo.finish_chain(after.chain)
    fresh = run_backup(mem_repo, BackupOptions(paths=[str(src)]))
    assert fresh.snapshot.chain_seq == 0 and fresh.snapshot.chain != after.chain
    # A new chain uploads everything again: no deduplication across chains.
    assert fresh.summary["data_added"] >= 3 * 1024 * 1024


def test_stdin_stream_and_include(mem_repo: Repository, tmp_path: Path) -> None:
    payload = os.urandom(5_000_000) + b"tail"
    res = run_backup(mem_repo, BackupOptions(stdin_name="dump.sql", stdin=io.BytesIO(payload)))
    out = restored(mem_repo, res.snapshot, tmp_path / "out", Path("/"))
    assert (out / "dump.sql").read_bytes() == payload
    assert res.snapshot.source == "stdin"


def test_command_stream_and_failure(mem_repo: Repository, tmp_path: Path) -> None:
    cmd = [sys.executable, "-c", "import sys; sys.stdout.buffer.write(b'row\\n' * 500000)"]
    res = run_backup(mem_repo, BackupOptions(stdin_name="rows", command=cmd))
    out = restored(mem_repo, res.snapshot, tmp_path / "out", Path("/"))
    assert (out / "rows").read_bytes() == b"row\n" * 500000
    before = len(mem_repo.list_snapshots())
    bad = [sys.executable, "-c", "import sys; print('partial'); sys.exit(3)"]
    with pytest.raises(SourceError, match="status 3"):
        run_backup(mem_repo, BackupOptions(stdin_name="rows", command=bad))
    assert len(mem_repo.list_snapshots()) == before


def test_excludes_and_restore_include(mem_repo: Repository, tmp_path: Path) -> None:
    src = make_sample_tree(tmp_path / "src")
    snap = backup(mem_repo, src, excludes=["*.md", str(src / "empty-dir")])
    out = restored(mem_repo, snap, tmp_path / "out", src)
    assert not (out / "sub" / "deeper" / "notes.md").exists()
    assert not (out / "empty-dir").exists()
    assert (out / "hello.txt").exists()
    part = restored(
        mem_repo, snap, tmp_path / "part", src, includes=[str(src / "sub" / "data.bin")]
    )
    assert (part / "sub" / "data.bin").exists()
    assert not (part / "hello.txt").exists()
    with pytest.raises(UsageError, match="nothing in snapshot"):
        run_restore(
            mem_repo, snap, RestoreOptions(target=str(tmp_path / "x"), includes=["/no/such"])
        )


def test_missing_source_and_bad_arguments(mem_repo: Repository, tmp_path: Path) -> None:
    with pytest.raises(SourceNotFound, match="does not exist"):
        run_backup(mem_repo, BackupOptions(paths=[str(tmp_path / "nope")]))
    with pytest.raises(UsageError):
        run_backup(mem_repo, BackupOptions(command=["true"]))
    with pytest.raises(UsageError):
        run_backup(mem_repo, BackupOptions())
    assert mem_repo.list_snapshots() == []


def test_two_paths_share_the_root(mem_repo: Repository, tmp_path: Path) -> None:
    a = make_sample_tree(tmp_path / "a")
    b = tmp_path / "b"
    b.mkdir()
    (b / "f").write_text("b file")
    snap = backup(mem_repo, a, b, a / "sub")  # a/sub is inside a: backed up once
    out = tmp_path / "out"
    run_restore(mem_repo, snap, RestoreOptions(target=str(out)))
    base = out / str(tmp_path).lstrip("/")
    assert tree_state(base / "a") == tree_state(a)
    assert (base / "b" / "f").read_text() == "b file"
    assert sorted(snap.paths) == sorted([str(a), str(b)])


def test_the_walk_finds_files_in_name_order(tmp_path: Path) -> None:
    src = tmp_path / "src"
    names = [f"{n:02d}" for n in range(40)]
    random.Random(3).shuffle(names)  # created out of order: no file system lists them sorted
    for name in names:
        (src / name).mkdir(parents=True)
        for leaf in ("b", "a", "c"):
            (src / name / leaf).write_text(leaf)
    planner = Planner(
        index=Index(), chain=b"", load_tree=None, excluder=Excluder([]), one_file_system=False
    )
    planner.walk(str(src), DirPlan(), os.lstat(src).st_dev, t.Node(name="", type=t.DIR))
    paths = [os.path.relpath(path, src) for path, _node in planner.jobs]
    assert paths == [f"{n:02d}/{leaf}" for n in range(40) for leaf in ("a", "b", "c")]
