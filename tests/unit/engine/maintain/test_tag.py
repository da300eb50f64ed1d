"""The tag engine: a retagged snapshot is a new object, written before the old one goes,
and prune's sweep never loses the data they share."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from safehold.engine.backup import BackupOptions, run_backup
from safehold.engine.maintain.copy import COPIED, SKIPPED, copy_snapshots
from safehold.engine.maintain.forget import ForgetOptions, run_forget
from safehold.engine.maintain.tag import TagOptions, new_tags, run_tag
from safehold.errors import RepositoryLocked, StorageError, UsageError
from safehold.policy.retention import RetentionPolicy
from safehold.repository.check import check_repository
from safehold.repository.prune import prune, sweep
from safehold.repository.repository import Repository
from safehold.repository.snapshot import Snapshot
from safehold.repository.trash import trashed_packs
from safehold.storage.base import ObjectInfo
from safehold.storage.memory import MemoryStorage
from safehold.storage.wrappers import FaultyStorage
from tests.conftest import FAST_KDF, PASSWORD
from tests.unit.repository.test_prune_race import NO_SKEW, GatedBackup, restored, stream_backup
from tests.unit.storage.test_retention_keeper import Retaining


def backup(repo: Repository, path: Path, *tags: str) -> Snapshot:
    return run_backup(repo, BackupOptions(paths=[str(path)], tags=list(tags), threads=2)).snapshot


def ids(repo: Repository) -> set[str]:
    return set(repo.list_snapshot_ids())


def test_new_tags_adds_removes_and_sets_sorted_as_backup_stores_them() -> None:
    assert new_tags(["b", "a"], TagOptions(add=["c", "a"])) == ["a", "b", "c"]
    assert new_tags(["a", "b"], TagOptions(remove=["a", "x"])) == ["b"]
    assert new_tags(["a", "b"], TagOptions(set=["z"])) == ["z"]
    assert new_tags(["a"], TagOptions(set=[])) == []


def test_retagging_writes_a_new_snapshot_naming_the_old_and_deletes_the_old(
    mem_repo: Repository, sample_tree: Path
) -> None:
    old = backup(mem_repo, sample_tree, "nightly")
    other = backup(mem_repo, sample_tree)
    result = run_tag(mem_repo, TagOptions(add=["keep"], snapshot_ids=[old.id[:8]]))

    [change] = result.changed
    new = mem_repo.load_snapshot(change.new.id)
    assert ids(mem_repo) == {new.id, other.id}  # the old one is gone, the other untouched
    assert new.tags == ["keep", "nightly"]
    assert new.original == old.id
    # Everything else is the old snapshot's: same data, same place in its chain.
    for name in ("time", "tree", "paths", "hostname", "chain", "chain_seq", "parent", "summary"):
        assert getattr(new, name) == getattr(old, name), name
    assert [o.name for o in mem_repo.storage.list("locks/")] == []

    # Tagged again, it keeps naming the first: the field copy recognises snapshots by.
    again = run_tag(mem_repo, TagOptions(set=[], snapshot_ids=[new.id]))
    assert mem_repo.load_snapshot(again.changed[0].new.id).original == old.id
    assert mem_repo.load_snapshot(again.changed[0].new.id).tags == []


def test_a_snapshot_already_tagged_so_is_left_as_it_is(
    mem_repo: Repository, sample_tree: Path
) -> None:
    snap = backup(mem_repo, sample_tree, "a")
    result = run_tag(mem_repo, TagOptions(add=["a"], remove=["b"]))
    assert [s.id for s in result.unchanged] == [snap.id]
    assert result.changed == []
    assert ids(mem_repo) == {snap.id}


def test_without_ids_the_filters_choose(mem_repo: Repository, tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a1 = backup(mem_repo, tmp_path / "a")
    backup(mem_repo, tmp_path / "b")
    a2 = backup(mem_repo, tmp_path / "a", "x")
    result = run_tag(mem_repo, TagOptions(add=["y"], paths=[str(tmp_path / "a")]))
    assert {c.old.id for c in result.changed} == {a1.id, a2.id}
    by_paths = {tuple(s.paths): s.tags for s in mem_repo.list_snapshots()}
    assert by_paths[(str(tmp_path / "b"),)] == []
    tagged = [s.tags for s in mem_repo.list_snapshots() if s.paths == [str(tmp_path / "a")]]
    assert sorted(tagged) == [["x", "y"], ["y"]]
    # 'latest' within the filters
    result = run_tag(mem_repo, TagOptions(add=["z"], snapshot_ids=["latest"], tags=["x"]))
    assert [c.new.tags for c in result.changed] == [["x", "y", "z"]]


@pytest.mark.parametrize(
    "opts",
    [
        TagOptions(set=["a"], add=["b"]),
        TagOptions(),
        TagOptions(add=["a,b"]),
        TagOptions(add=[""]),
        TagOptions(add=[" a"]),
    ],
)
def test_bad_requests_change_nothing(
    mem_repo: Repository, sample_tree: Path, opts: TagOptions
) -> None:
    snap = backup(mem_repo, sample_tree)
    with pytest.raises(UsageError):
        run_tag(mem_repo, opts)
    assert ids(mem_repo) == {snap.id}


def test_an_interrupted_tag_leaves_both_snapshots_and_running_it_again_finishes(
    sample_tree: Path,
) -> None:
    faulty = FaultyStorage(MemoryStorage())
    repo = Repository.init(faulty, PASSWORD, kdf=FAST_KDF)
    old = backup(repo, sample_tree)
    faulty.fail_always("delete", StorageError("the storage went away"), "snapshots/")
    with pytest.raises(StorageError):
        run_tag(repo, TagOptions(add=["keep"], snapshot_ids=[old.id]))
    both = repo.list_snapshots()
    assert {s.id for s in both} >= {old.id} and len(both) == 2  # never neither
    assert all(s.tree == old.tree for s in both)

    faulty.clear()
    result = run_tag(repo, TagOptions(add=["keep"], snapshot_ids=[old.id]))
    [left] = repo.list_snapshots()
    assert left.id == result.changed[0].new.id  # the same bytes as the first attempt's
    assert left.tags == ["keep"]
    assert check_repository(Repository.open(repo.storage, PASSWORD)).ok


def test_tag_waits_for_no_backup_but_excludes_forget_and_another_tag(
    mem_repo: Repository, sample_tree: Path
) -> None:
    snap = backup(mem_repo, sample_tree)
    for kind in ("forget", "tag"):
        with mem_repo.lock(kind), pytest.raises(RepositoryLocked):
            run_tag(mem_repo, TagOptions(add=["x"]))
    with mem_repo.lock("tag"), pytest.raises(RepositoryLocked):
        run_forget(mem_repo, ForgetOptions(snapshot_ids=[snap.id]))
    with mem_repo.lock("backup"), mem_repo.lock("read"):
        assert run_tag(mem_repo, TagOptions(add=["x"])).changed


def test_an_immutable_repository_refuses_before_writing_anything(sample_tree: Path) -> None:
    repo = Repository.init(Retaining(), PASSWORD, kdf=FAST_KDF)
    snap = backup(repo, sample_tree)
    with pytest.raises(UsageError, match="immutable"):
        run_tag(repo, TagOptions(add=["x"]))
    assert ids(repo) == {snap.id}


def statuses(src: Repository, dst: Repository) -> list[str]:
    return [r.status for r in copy_snapshots(src, dst, src.list_snapshots())]


def test_copy_does_not_copy_a_retagged_snapshot_again(sample_tree: Path) -> None:
    src = Repository.init(MemoryStorage(), PASSWORD, kdf=FAST_KDF)
    dst = Repository.init(MemoryStorage(), b"other", kdf=FAST_KDF)
    snap = backup(src, sample_tree)
    assert statuses(src, dst) == [COPIED]
    run_tag(src, TagOptions(add=["x"], snapshot_ids=[snap.id]))
    assert statuses(src, dst) == [SKIPPED]
    # ... nor when the copy is retagged in the destination
    run_tag(dst, TagOptions(add=["y"]))
    assert statuses(src, dst) == [SKIPPED]
    assert len(dst.list_snapshots()) == 1


class PausingStorage(MemoryStorage):
    """A memory storage on which the thread named ``pause_thread`` stops right after
    listing the snapshots, until the test sets ``go``."""

    def __init__(self) -> None:
        super().__init__()
        self.pause_thread = ""
        self.listed = threading.Event()
        self.go = threading.Event()

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        found = list(super().list(prefix))
        if prefix == "snapshots/" and threading.current_thread().name == self.pause_thread:
            self.listed.set()
            assert self.go.wait(60), "the test never let the listing go on"
        return iter(found)


def test_a_sweep_that_listed_the_old_snapshot_keeps_what_the_new_one_needs(
    tmp_path: Path,
) -> None:
    # A snapshot saved while a prune ran needs packs of its trash record until a sweep
    # rescues them. The sweep lists the snapshots (the old one), tag writes the new one and
    # deletes the old, the sweep reads its listing: the old one is gone and the new one
    # was not listed. Tag rescued the packs before deleting: the sweep must keep them.
    storage = PausingStorage()
    repo = Repository.init(storage, PASSWORD, kdf=FAST_KDF, pack_size=256 * 1024)
    data = os.urandom(3 * 1024 * 1024)
    stream_backup(repo, data)
    stream_backup(repo, b"tiny")
    third = GatedBackup(repo, data)
    try:
        run_forget(repo, ForgetOptions(policy=RetentionPolicy(keep_last=1)))
        assert prune(repo, NO_SKEW).packs_deleted == 0
    finally:
        third.release()
    old = third.finish()
    assert trashed_packs(repo)  # its data is (also) in the trash

    outcome: dict[str, object] = {}

    def run_sweep() -> None:
        try:
            outcome["sweep"] = sweep(Repository.open(storage, PASSWORD))
        except BaseException as exc:
            outcome["error"] = exc

    storage.pause_thread = "sweeper"
    sweeper = threading.Thread(target=run_sweep, name="sweeper")
    sweeper.start()
    try:
        assert storage.listed.wait(60)
        result = run_tag(Repository.open(storage, PASSWORD), TagOptions(add=["x"]))
    finally:
        storage.go.set()
        sweeper.join(60)
    assert "error" not in outcome, outcome
    new = next(c.new for c in result.changed if c.old.id == old.id)
    assert restored(repo, new, tmp_path / "after") == data
    assert check_repository(Repository.open(storage, PASSWORD)).ok
