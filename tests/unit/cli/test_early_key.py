"""Deriving the key ahead while the command loads (cli/early_key.py): the right guesses
start it, everything else leaves opening the repository as it was."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from safehold.cli.early_key import _global_values, derive_key_ahead
from safehold.crypto import kdf
from safehold.errors import WrongPassword
from safehold.repository.format import storage_id
from safehold.repository.repository import Repository
from safehold.storage.local import LocalStorage
from tests.conftest import FAST_KDF, PASSWORD


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["-r", "/a", "backup", "/x"], {"--repo": "/a"}),
        (["-r/a", "snapshots"], {"--repo": "/a"}),
        (["-qr", "/a", "check"], {"--repo": "/a"}),
        (["--repo=/a", "--password-file", "/pw", "ls"], {"--repo": "/a", "--password-file": "/pw"}),
        (["snapshots", "--repo", "/a", "--json"], {"--repo": "/a"}),
        (["--password-command=pass show x", "stats"], {"--password-command": "pass show x"}),
        (["-r", "/a", "backup", "--", "-r", "/b"], {"--repo": "/a"}),
        (["backup", "-x", "-r"], {}),  # no value: nothing
        (["backup", "-e", "x"], {}),
    ],
)
def test_global_values(argv: list[str], expected: dict[str, str]) -> None:
    assert _global_values(argv) == expected


@pytest.fixture
def computed(kdf_calls: list[bytes], monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    for name in ("SAFEHOLD_REPOSITORY", "SAFEHOLD_PASSWORD_FILE", "SAFEHOLD_PASSWORD_COMMAND"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("SAFEHOLD_PASSWORD", PASSWORD.decode())
    return kdf_calls


@pytest.fixture
def repo_dir(tmp_path: Path) -> Path:
    Repository.init(LocalStorage(tmp_path / "repo", create=True), PASSWORD, kdf=FAST_KDF)
    return tmp_path / "repo"


def _open(path: Path, password: bytes = PASSWORD) -> Repository:
    return Repository.open(LocalStorage(path), password)


def test_opening_takes_the_key_derived_ahead(repo_dir: Path, computed: list[bytes]) -> None:
    assert derive_key_ahead(["-r", str(repo_dir), "snapshots"])
    _open(repo_dir)
    assert computed == [PASSWORD]  # once, ahead; opening did not derive it again


def test_from_the_environment_and_a_password_file(
    repo_dir: Path, tmp_path: Path, computed: list[bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SAFEHOLD_REPOSITORY", f"local:{repo_dir}")
    monkeypatch.delenv("SAFEHOLD_PASSWORD")
    (tmp_path / "pw").write_bytes(PASSWORD + b"\n")
    assert derive_key_ahead(["--password-file", str(tmp_path / "pw"), "check"])
    _open(repo_dir)
    assert computed == [PASSWORD]


def test_a_wrong_password_is_still_wrong(repo_dir: Path, computed: list[bytes]) -> None:
    assert derive_key_ahead(["-r", str(repo_dir), "snapshots"])
    with pytest.raises(WrongPassword):
        _open(repo_dir, b"not the password")
    assert sorted(computed) == sorted([PASSWORD, b"not the password"])


def test_a_password_pipe_is_left_for_the_command(
    repo_dir: Path, tmp_path: Path, computed: list[bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    # A pipe gives its content once: read early, the command would find it empty.
    monkeypatch.delenv("SAFEHOLD_PASSWORD")
    fifo = tmp_path / "pw.fifo"
    os.mkfifo(fifo)
    assert not derive_key_ahead(["-r", str(repo_dir), "--password-file", str(fifo), "check"])
    assert kdf._ahead == {}


@pytest.mark.parametrize(
    "case", ["remote", "command", "no-password", "no-repo", "not-a-repo", "no-location"]
)
def test_nothing_is_started_when_unsure(
    case: str,
    repo_dir: Path,
    tmp_path: Path,
    computed: list[bytes],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    argv = ["-r", str(repo_dir), "snapshots"]
    if case == "remote":
        argv = ["-r", "s3:bucket/prefix", "snapshots"]
    elif case == "command":
        argv = ["--password-command", "echo secret", *argv]
    elif case == "no-password":
        monkeypatch.delenv("SAFEHOLD_PASSWORD")
    elif case == "no-repo":
        argv = ["-r", str(tmp_path / "missing"), "snapshots"]
    elif case == "not-a-repo":
        (tmp_path / "other" / "keys").mkdir(parents=True)
        (tmp_path / "other" / "keys" / "k").write_text("not json")
        argv = ["-r", str(tmp_path / "other"), "snapshots"]
    else:
        argv = ["snapshots"]
    assert not derive_key_ahead(argv)
    assert kdf._ahead == {}
    _open(repo_dir)  # and opening works as ever
    assert computed == [PASSWORD]


def _key_file_first(repo_dir: Path, doc: dict[str, object]) -> Path:
    """Store ``doc`` as a key file whose name sorts before the repository's own."""
    keys = repo_dir / "keys"
    good = min(p.name for p in keys.iterdir())
    for i in range(1000):
        raw = json.dumps(dict(doc, hostname=f"h{i}")).encode()
        name = storage_id(raw)
        if name < good:
            (keys / name).write_bytes(raw)
            return keys / name
    raise AssertionError("no name sorted first")


@pytest.mark.parametrize(
    "params",
    [{"n": 1 << 15, "p": 300}, {"n": 1 << 40}, {"n": 1000}, {"r": 0}, {"salt": "AAAA" * 5000}],
    ids=["p=300", "n=2**40", "n=1000", "r=0", "huge salt"],
)
def test_a_hostile_key_file_is_never_derived_ahead(
    params: dict[str, object], repo_dir: Path, computed: list[bytes]
) -> None:
    # First in name order, so the guess of the first key file used to pick it.
    good = json.loads(next((repo_dir / "keys").iterdir()).read_bytes())
    _key_file_first(repo_dir, {**good, **params})

    assert derive_key_ahead(["-r", str(repo_dir), "snapshots"])

    [(_pw, _salt, n, r, p, _len, _kind)] = kdf._ahead
    assert (n, r, p) == (good["n"], good["r"], good["p"])  # the good key's, not the hostile's
    _open(repo_dir)
    assert computed == [PASSWORD]


def test_junk_before_the_key_file_does_not_stop_the_guess(
    repo_dir: Path, computed: list[bytes]
) -> None:
    for junk in (b"junk", b"[1, 2]", b"\xff" * 10):
        (repo_dir / "keys" / ("0" * 63 + str(len(junk) % 10))).write_bytes(junk)

    assert derive_key_ahead(["-r", str(repo_dir), "snapshots"])
    _open(repo_dir)
    assert computed == [PASSWORD]


def test_the_cheapest_key_file_is_derived_ahead(repo_dir: Path, computed: list[bytes]) -> None:
    # Opening tries key files cheapest first; the guess must pick the same one.
    good = json.loads(next((repo_dir / "keys").iterdir()).read_bytes())
    _key_file_first(repo_dir, {**good, "n": 1 << 12, "p": 16})

    assert derive_key_ahead(["-r", str(repo_dir), "snapshots"])
    [(_pw, _salt, n, _r, p, _len, _kind)] = kdf._ahead
    assert (n, p) == (good["n"], good["p"])
