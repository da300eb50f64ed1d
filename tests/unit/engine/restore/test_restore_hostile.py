"""Restore never writes outside its target: not for a hostile snapshot (names that climb
out, pass through a link, or appear twice; tests/hostile.py), not through a symlink that
was in the target before, not through one put there while the restore runs; in threads
and in worker processes. A hostile tree is left out, reported as damaged, and the rest of
the snapshot is restored. A pack missing from the storage is damage (IntegrityError)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from safehold.engine.backup import BackupOptions, run_backup
from safehold.engine.progress import Progress
from safehold.engine.restore import RestoreOptions, RestoreResult, run_restore
from safehold.engine.restore import restore as restore_mod
from safehold.engine.restore import workers as restore_procs
from safehold.errors import IntegrityError
from safehold.repository.repository import Repository
from safehold.repository.snapshot import Snapshot
from safehold.storage.local import LocalStorage
from tests.conftest import FAST_KDF, PASSWORD, make_sample_tree
from tests.hostile import ATTACKS, attack, file, folder, symlink, write_snapshot
from tests.unit.engine.test_backup_restore import tree_state

FORK = pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork on this platform")
MODES = [pytest.param(1, id="threads"), pytest.param(2, id="processes", marks=FORK)]
# Worker processes where asked for, as the command line allows (safehold.runtime).
pytestmark = pytest.mark.usefixtures("allow_fork")


@pytest.fixture
def repo(tmp_path: Path) -> Repository:
    """Packs of 256 KiB, so that a few files make enough packs for worker processes."""
    storage = LocalStorage(tmp_path / "repo", create=True)
    return Repository.init(storage, PASSWORD, kdf=FAST_KDF, pack_size=256 * 1024)


@pytest.fixture
def forks(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts restores that shared their packs out among worker processes."""
    calls: list[int] = []
    real = restore_procs.run_forked

    def counting(*args: object, **kw: object) -> None:
        calls.append(1)
        real(*args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(restore_mod, "run_forked", counting)
    return calls


def outside(root: Path, *inside: Path) -> dict[str, tuple[object, ...]]:
    """Everything under ``root`` but the ``inside`` folders: what a restore must not touch."""
    state = tree_state(root)
    skip = [str(p.relative_to(root)) for p in inside]
    return {
        k: v for k, v in state.items() if not any(k == s or k.startswith(s + "/") for s in skip)
    }


def _many_files() -> list[dict[str, object]]:
    # Incompressible, 100 KB each: a dozen packs of 256 KiB, enough for two processes.
    return [file(f"f{i:02d}", os.urandom(100_000)) for i in range(30)]


@pytest.fixture
def victim(tmp_path: Path) -> Path:
    v = tmp_path / "victim"
    v.mkdir()
    (v / "keep").write_text("the victim's own file\n")
    v.chmod(0o755)
    return v


@pytest.mark.parametrize("processes", MODES)
@pytest.mark.parametrize("kind", sorted(ATTACKS))
def test_a_hostile_tree_is_left_out_and_the_rest_restored(
    repo: Repository,
    tmp_path: Path,
    victim: Path,
    kind: str,
    processes: int,
    forks: list[int],
) -> None:
    target = tmp_path / "deep" / "target"
    target.mkdir(parents=True)
    nodes, bad = attack(kind, str(target / "bad"), str(victim))
    ok = _many_files()
    snap = write_snapshot(repo, [folder("bad", *nodes), folder("ok", *ok)])
    before = outside(tmp_path, target, tmp_path / "repo")

    result = run_restore(repo, snap, RestoreOptions(target=str(target), processes=processes))

    assert outside(tmp_path, target, tmp_path / "repo") == before
    assert [p for p, _ in result.damaged] == [str(target / "bad")]
    [(_, why)] = result.damaged
    assert repr(bad) in why and "tree " in why
    assert "\x1b" not in why and "\r" not in why  # control characters only escaped
    assert list((target / "bad").iterdir()) == []  # nothing of the hostile tree
    assert sorted(p.name for p in (target / "ok").iterdir()) == [n["name"] for n in ok]
    assert result.files == len(ok)
    assert len(forks) == (1 if processes > 1 else 0)


@pytest.mark.parametrize("processes", MODES)
def test_a_hostile_root_tree_restores_nothing(
    repo: Repository, tmp_path: Path, victim: Path, processes: int
) -> None:
    target = tmp_path / "deep" / "target"
    target.mkdir(parents=True)
    nodes, bad = attack("dotdot-folder", str(target), str(victim))
    snap = write_snapshot(repo, [*nodes, *_many_files()])
    before = outside(tmp_path, target, tmp_path / "repo")
    result = run_restore(repo, snap, RestoreOptions(target=str(target), processes=processes))
    assert outside(tmp_path, target, tmp_path / "repo") == before
    assert [p for p, _ in result.damaged] == [str(target)]
    assert repr(bad) in result.damaged[0][1]
    assert list(target.iterdir()) == []


@pytest.mark.parametrize("processes", MODES)
def test_a_symlink_in_the_target_beforehand_is_replaced_not_followed(
    repo: Repository, tmp_path: Path, victim: Path, processes: int, forks: list[int]
) -> None:
    """target/srv -> victim (absolute) exists before a restore of srv/...: the folder
    replaces the link; nothing goes to the victim, neither files nor modes nor times."""
    target = tmp_path / "target"
    target.mkdir()
    (target / "srv").symlink_to(victim)
    ok = _many_files()
    snap = write_snapshot(repo, [folder("srv", *ok, mode=0o700, mtime=10**18)])
    before = outside(tmp_path, target, tmp_path / "repo")
    result = run_restore(repo, snap, RestoreOptions(target=str(target), processes=processes))
    assert outside(tmp_path, target, tmp_path / "repo") == before
    assert not result.errors
    assert not (target / "srv").is_symlink()
    assert stat.S_IMODE((target / "srv").stat().st_mode) == 0o700
    assert len(list((target / "srv").iterdir())) == len(ok)
    assert len(forks) == (1 if processes > 1 else 0)


@pytest.mark.parametrize("processes", MODES)
def test_a_name_through_a_symlink_in_the_target_beforehand_is_refused(
    repo: Repository, tmp_path: Path, victim: Path, processes: int
) -> None:
    """target/srv -> victim exists before; the snapshot names "srv/f" at the root."""
    target = tmp_path / "target"
    target.mkdir()
    (target / "srv").symlink_to(victim)
    snap = write_snapshot(repo, [*_many_files(), file("srv/f")])
    before = outside(tmp_path, target, tmp_path / "repo")
    result = run_restore(repo, snap, RestoreOptions(target=str(target), processes=processes))
    assert outside(tmp_path, target, tmp_path / "repo") == before
    assert [p for p, _ in result.damaged] == [str(target)]
    assert "'srv/f'" in result.damaged[0][1]


class _SwapBeforeWriting(Progress):
    """When writing begins (planning is done, every folder exists), replaces the folder
    ``d`` with a symlink to the victim, as another user of the target could."""

    def __init__(self, target: Path, victim: Path) -> None:
        self.target = target
        self.victim = victim
        self.swapped = False

    def start(self, phase: str, total_items: int = 0, total_bytes: int = 0) -> None:
        if phase == "restore" and not self.swapped:
            os.rename(self.target / "d", self.target / "d.moved")
            os.symlink(self.victim, self.target / "d")
            self.swapped = True


@pytest.mark.parametrize("processes", MODES)
def test_a_folder_swapped_for_a_symlink_during_the_restore_is_not_followed(
    repo: Repository, tmp_path: Path, victim: Path, processes: int, forks: list[int]
) -> None:
    target = tmp_path / "target"
    target.mkdir()
    ok = _many_files()
    linked = file("hard", b"linked\n", links=2, inode=7, dev=1)
    nodes = [*ok, linked, {**linked, "name": "hard2", "_data": b"linked\n"}]
    nodes.append(symlink("sym", "anywhere"))
    snap = write_snapshot(repo, [folder("d", *nodes, mode=0o700, mtime=10**18)])
    before = outside(tmp_path, target, tmp_path / "repo")
    swap = _SwapBeforeWriting(target, victim)
    run_restore(repo, snap, RestoreOptions(target=str(target), processes=processes), swap)
    assert swap.swapped
    assert outside(tmp_path, target, tmp_path / "repo") == before  # the victim's mode too
    moved = target / "d.moved"  # the folder restore made, wherever it is now
    assert sorted(p.name for p in moved.iterdir()) == sorted(n["name"] for n in nodes)
    assert os.path.samefile(moved / "hard", moved / "hard2")
    assert stat.S_IMODE(moved.stat().st_mode) == 0o700
    assert len(forks) == (1 if processes > 1 else 0)


@pytest.mark.parametrize("processes", MODES)
def test_past_the_budget_of_open_folders_the_same_tree(
    repo: Repository, tmp_path: Path, processes: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Folders past the budget are opened again, component by component, when needed."""
    src = make_sample_tree(tmp_path / "src")
    for i in range(8):
        deep = src / f"a{i}" / "b" / "c"
        deep.mkdir(parents=True)
        for j in range(4):
            (deep / f"f{j}").write_bytes(os.urandom(90_000))
        os.link(deep / "f0", src / f"a{i}" / "link")
    snap = run_backup(repo, BackupOptions(paths=[str(src)])).snapshot
    monkeypatch.setattr(restore_mod, "folder_budget", lambda: 2)
    target = tmp_path / "target"
    result = run_restore(repo, snap, RestoreOptions(target=str(target), processes=processes))
    assert not result.errors
    assert tree_state(target / str(src).lstrip("/")) == tree_state(src)


def _delete_a_data_pack(repo: Repository, tmp_path: Path, snap: Snapshot) -> str:
    repo.load_index()
    tree_packs = {repo.index.lookup(bytes.fromhex(snap.tree)).pack_id}  # type: ignore[union-attr]
    for record in repo.index.packs.values():
        if record.pack_id not in tree_packs:
            name = f"data/{record.pack_id.hex()[:2]}/{record.pack_id.hex()}"
            os.unlink(tmp_path / "repo" / name)
            return name
    raise AssertionError("no data pack")


@pytest.mark.parametrize("processes", MODES)
def test_a_missing_pack_is_damage(repo: Repository, tmp_path: Path, processes: int) -> None:
    snap = write_snapshot(repo, [folder("ok", *_many_files())])
    name = _delete_a_data_pack(repo, tmp_path, snap)
    with pytest.raises(IntegrityError) as err:
        run_restore(repo, snap, RestoreOptions(target=str(tmp_path / "t"), processes=processes))
    assert name in err.value.message and "missing" in err.value.message
    assert "safehold check" in (err.value.hint or "")
    assert "repair index" in (err.value.hint or "")


def test_a_missing_tree_pack_leaves_its_folder_empty(repo: Repository, tmp_path: Path) -> None:
    snap = write_snapshot(repo, [folder("ok", file("f"))])
    repo.load_index()
    loc = repo.index.lookup(bytes.fromhex(snap.tree))
    assert loc is not None
    os.unlink(tmp_path / "repo" / "data" / loc.pack_id.hex()[:2] / loc.pack_id.hex())
    result: RestoreResult = run_restore(repo, snap, RestoreOptions(target=str(tmp_path / "t")))
    assert [p for p, _ in result.damaged] == [str(tmp_path / "t")]
    assert loc.pack_id.hex() in result.damaged[0][1] and "missing" in result.damaged[0][1]
