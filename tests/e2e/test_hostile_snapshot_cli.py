"""A hostile snapshot (tests/hostile.py: written with the repository's key, its trees
holding names that climb out of the target, pass through links or appear twice) through
the real command line: restore writes nothing outside its target and exits 4 naming each
bad name; check exits 4 naming the trees; dump refuses and never emits an escaping member;
ls reports it without a traceback. A pack missing from the storage is damage too: exit 4,
not 5."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from safehold.repository.repository import Repository
from safehold.storage.local import LocalStorage
from tests.conftest import PASSWORD, CliRunner
from tests.hostile import ATTACKS, attack, file, folder, write_snapshot
from tests.unit.engine.restore.test_restore_hostile import outside

INTEGRITY = 4


@pytest.fixture
def scene(cli_repo: str, tmp_path: Path) -> tuple[str, Path, Path, dict[str, str]]:
    """A snapshot with one folder per attack (``a-<kind>``) and one good folder; the
    restore target and the victim folder the attacks aim at. Returns (snapshot id,
    target, victim, the bad name of each attack's folder)."""
    target = tmp_path / "deep" / "target"
    target.mkdir(parents=True)
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "keep").write_text("mine\n")
    nodes, bad = [], {}
    for kind in sorted(ATTACKS):
        inner, bad[f"a-{kind}"] = attack(kind, str(target / f"a-{kind}"), str(victim))
        nodes.append(folder(f"a-{kind}", *inner))
    nodes.append(folder("good", file("kept.txt", b"good data\n")))
    repo = Repository.open(LocalStorage(cli_repo), PASSWORD)
    snap = write_snapshot(repo, nodes)
    return snap.id, target, victim, bad


def test_restore_writes_nothing_outside_and_exits_4(
    cli: CliRunner, cli_repo: str, tmp_path: Path, scene: tuple[str, Path, Path, dict[str, str]]
) -> None:
    snap, target, _victim, bad = scene
    before = outside(tmp_path, target, Path(cli_repo), tmp_path / "home")
    res = cli("-r", cli_repo, "restore", snap[:8], "--target", str(target))
    assert res.code == INTEGRITY, res.output
    assert outside(tmp_path, target, Path(cli_repo), tmp_path / "home") == before
    assert (target / "good" / "kept.txt").read_bytes() == b"good data\n"
    for name, bad_name in bad.items():
        assert list((target / name).iterdir()) == []
        assert f"could not restore {target / name}: not restored: tree " in res.stderr
        assert repr(bad_name) in res.stderr, name
    assert f"{len(bad)} folders of snapshot {snap[:8]} left empty" in res.stderr
    assert "safehold check" in res.stderr
    assert "\x1b" not in res.output and "Traceback" not in res.output


def test_check_reports_every_hostile_tree(
    cli: CliRunner, cli_repo: str, scene: tuple[str, Path, Path, dict[str, str]]
) -> None:
    bad = scene[3]
    res = cli("-r", cli_repo, "check")
    assert res.code == INTEGRITY, res.output
    for name, bad_name in bad.items():
        line = next(ln for ln in res.output.splitlines() if f"/{name}" in ln)
        assert "tree-damaged" in line or "damaged" in line, line
        assert repr(bad_name) in line and "tree " in line, line
    assert "\x1b" not in res.output and "Traceback" not in res.output


@pytest.mark.parametrize("archive", ["tar", "zip"])
def test_dump_refuses_and_leaves_no_archive(
    cli: CliRunner,
    cli_repo: str,
    tmp_path: Path,
    scene: tuple[str, Path, Path, dict[str, str]],
    archive: str,
) -> None:
    snap = scene[0]
    out = tmp_path / f"out.{archive}"
    res = cli("-r", cli_repo, "dump", snap[:8], "--archive", archive, "-o", str(out))
    assert res.code == INTEGRITY, res.output
    assert "damaged or hostile" in res.stderr and "Traceback" not in res.output
    assert not out.exists()


def test_dump_to_a_pipe_never_emits_an_escaping_member(
    cli_env: dict[str, str], cli_repo: str, scene: tuple[str, Path, Path, dict[str, str]]
) -> None:
    snap = scene[0]
    proc = subprocess.run(
        [sys.executable, "-m", "safehold", "-r", cli_repo, "dump", snap[:8]],
        capture_output=True,
        env=cli_env,
        timeout=120,
        check=False,
    )
    assert proc.returncode == INTEGRITY, proc.stderr
    names = []
    with tarfile.open(fileobj=io.BytesIO(proc.stdout), mode="r|") as tar:
        try:
            names = [m.name for m in tar]
        except tarfile.ReadError:
            pass  # the stream ends where the dump stopped
    assert names  # the folders before the first hostile tree
    for name in names:
        assert not name.startswith("/") and ".." not in name.split("/"), name
        assert "\x00" not in name


def test_ls_reports_the_damage_without_a_traceback(
    cli: CliRunner, cli_repo: str, scene: tuple[str, Path, Path, dict[str, str]]
) -> None:
    snap = scene[0]
    res = cli("-r", cli_repo, "ls", snap[:8])
    assert res.code == INTEGRITY, res.output
    assert "damaged or hostile" in res.stderr
    assert "Traceback" not in res.output and "\x1b" not in res.output


@pytest.fixture
def missing_pack(cli: CliRunner, cli_repo: str, tmp_path: Path) -> tuple[str, Path]:
    """A backup of a file of several blobs, then one of its data packs deleted; returns
    the pack's name and the file's path."""
    src = tmp_path / "src"
    src.mkdir()
    big = src / "big.bin"
    big.write_bytes(os.urandom(3 * 1024 * 1024))
    res = cli("-r", cli_repo, "backup", str(src))
    assert res.code == 0, res.output
    repo = Repository.open(LocalStorage(cli_repo), PASSWORD)
    repo.load_index()
    snap = repo.list_snapshots()[0]
    tree_pack = repo.index.lookup(bytes.fromhex(snap.tree)).pack_id  # type: ignore[union-attr]
    pack = next(p for p in repo.index.packs if p != tree_pack)
    name = f"data/{pack.hex()[:2]}/{pack.hex()}"
    os.unlink(Path(cli_repo) / name)
    return name, big


def test_restore_with_a_missing_pack_exits_4(
    cli: CliRunner, cli_repo: str, tmp_path: Path, missing_pack: tuple[str, Path]
) -> None:
    name, _big = missing_pack
    res = cli("-r", cli_repo, "restore", "latest", "--target", str(tmp_path / "t"))
    assert res.code == INTEGRITY, res.output
    assert name in res.stderr and "missing from the storage" in res.stderr
    assert "safehold check" in res.stderr and "repair index" in res.stderr


def test_dump_with_a_missing_pack_exits_4(
    cli: CliRunner, cli_repo: str, tmp_path: Path, missing_pack: tuple[str, Path]
) -> None:
    name, big = missing_pack
    out = tmp_path / "big.out"
    res = cli("-r", cli_repo, "dump", "latest", str(big), "-o", str(out))
    assert res.code == INTEGRITY, res.output
    assert name in res.stderr and "missing" in res.stderr
    assert "safehold check" in res.stderr and "repair index" in res.stderr
    assert not out.exists()
