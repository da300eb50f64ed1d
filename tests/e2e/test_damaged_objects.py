"""One damaged small object costs only what depends on it (issue 14, defect 4): a junk or
damaged lock, trash record, snapshot or index file is skipped with a warning naming it,
``check`` reports it (exit 4), and every other command keeps working through the real
command line. ``unlock --remove-all`` always works."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from safehold.repository.format import T_LOCK, T_TRASH, seal_object
from safehold.repository.repository import Repository
from safehold.storage.local import LocalStorage
from tests.conftest import PASSWORD, CliResult, CliRunner

INTEGRITY = 4


@dataclass
class Scene:
    repo: str
    src: Path
    first: str  # snapshot ids
    second: str

    def storage(self) -> LocalStorage:
        return LocalStorage(Path(self.repo))

    def open(self) -> Repository:
        return Repository.open(self.storage(), PASSWORD)


def ok(res: CliResult) -> CliResult:
    assert res.code == 0, res.output
    return res


@pytest.fixture
def scene(cli: CliRunner, cli_repo: str, tmp_path: Path) -> Scene:
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.bin").write_bytes(os.urandom(600_000))
    (src / "notes.txt").write_text("first\n" * 100)
    first = json.loads(ok(cli("-r", cli_repo, "backup", str(src), "--json")).stdout)
    (src / "notes.txt").write_text("second\n" * 100)
    second = json.loads(ok(cli("-r", cli_repo, "backup", str(src), "--json")).stdout)
    return Scene(cli_repo, src, first["snapshot"], second["snapshot"])


def _flip(path: Path, offset: int = -20) -> None:
    raw = bytearray(path.read_bytes())
    raw[offset] ^= 0x40
    path.write_bytes(bytes(raw))


def junk_lock(s: Scene) -> str:
    s.storage().put("locks/" + "0" * 32, b"not a lock at all")
    return "locks/" + "0" * 32


def flipped_lock(s: Scene) -> str:
    repo = s.open()
    doc = {
        "created": "2026-01-01T00:00:00+00:00",
        "refreshed": "2026-01-01T00:00:00+00:00",
        "hostname": "h",
        "pid": 1,
        "exclusive": True,
        "kind": "repair",
    }
    name = "locks/" + "1" * 32
    s.storage().put(name, seal_object(repo.aead, T_LOCK, json.dumps(doc).encode()))
    _flip(Path(s.repo) / name)
    return name


def junk_trash(s: Scene) -> str:
    s.storage().put("trash/" + "2" * 64, b"\x00" * 64)
    return "trash/" + "2" * 64


def flipped_trash(s: Scene) -> str:
    repo = s.open()
    doc = {"created": "2026-01-01T00:00:00+00:00", "packs": ["ab" * 32]}
    name = repo.save_object("trash/", T_TRASH, json.dumps(doc).encode())
    _flip(Path(s.repo) / name)
    return name


def junk_snapshot(s: Scene) -> str:
    s.storage().put("snapshots/" + "3" * 64, b"SH\x01\x04 junk")
    return "snapshots/" + "3" * 64


def flipped_first_snapshot(s: Scene) -> str:
    _flip(Path(s.repo) / "snapshots" / s.first)
    return "snapshots/" + s.first


def junk_index(s: Scene) -> str:
    s.storage().put("index/" + "4" * 64, b"junk index")
    return "index/" + "4" * 64


DAMAGE: dict[str, Callable[[Scene], str]] = {
    "junk lock": junk_lock,
    "flipped lock": flipped_lock,
    "junk trash record": junk_trash,
    "flipped trash record": flipped_trash,
    "junk snapshot": junk_snapshot,
    "flipped snapshot": flipped_first_snapshot,
    "junk index file": junk_index,
}


@pytest.mark.parametrize("kind", sorted(DAMAGE))
def test_one_damaged_object_costs_only_what_depends_on_it(
    kind: str, scene: Scene, cli: CliRunner, tmp_path: Path
) -> None:
    name = DAMAGE[kind](scene)
    r = ("-r", scene.repo)

    listed = ok(cli(*r, "snapshots", "--json"))
    ids = {s["id"] for s in json.loads(listed.stdout)}
    assert scene.second in ids

    out = tmp_path / "out"
    restore = ok(cli(*r, "restore", scene.second, "--target", str(out)))
    restored = out / str(scene.src).lstrip("/")
    assert (restored / "notes.txt").read_text() == "second\n" * 100
    assert (restored / "a.bin").read_bytes() == (scene.src / "a.bin").read_bytes()

    (scene.src / "new.txt").write_text("third")
    backup = ok(cli(*r, "backup", str(scene.src)))
    # The commands that met the object named it in a warning.
    assert name in listed.stderr + restore.stderr + backup.stderr

    checked = cli(*r, "check")
    assert checked.code == INTEGRITY, checked.output
    assert name in checked.output

    forgot = ok(cli(*r, "forget", "--keep-last", "2"))
    assert "Traceback" not in forgot.output

    pruned = cli(*r, "prune")
    if kind in ("junk snapshot", "flipped snapshot"):
        # Prune cannot know what an unreadable snapshot needs: it stops, deleting nothing.
        assert pruned.code == INTEGRITY and name in pruned.output, pruned.output
        assert "forget" in pruned.output  # ... and says how to go on
        snap_id = name.removeprefix("snapshots/")
        # Named, it is damage (4), not an unknown id (2); forget removes it, prune goes on.
        named = cli(*r, "restore", snap_id[:12], "--target", str(tmp_path / "bad"))
        assert named.code == INTEGRITY and name in named.stderr, named.output
        forgot_bad = ok(cli(*r, "forget", snap_id[:12]))
        assert f"removed damaged snapshot object {name}" in forgot_bad.stdout
        ok(cli(*r, "prune"))
        ok(cli(*r, "check"))
    elif kind == "junk index file":
        # ... nor which packs an unreadable index file lists.
        assert pruned.code == INTEGRITY and name in pruned.output, pruned.output
        assert "repair index" in pruned.output
    else:
        assert pruned.code == 0, pruned.output

    ok(cli(*r, "unlock", "--remove-all"))
    assert not list(scene.storage().list("locks/"))
