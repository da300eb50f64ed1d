"""Location strings: which backend they open, and how they are shown in messages."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from safehold.errors import ConfigError
from safehold.storage.local import LocalStorage
from safehold.storage.location import BACKENDS, local_folder, open_location, redact
from safehold.storage.memory import MemoryStorage


def test_plain_absolute_path(tmp_path: Path) -> None:
    storage = open_location(str(tmp_path))
    assert isinstance(storage, LocalStorage)
    assert storage.describe() == f"local:{tmp_path}"


def test_plain_relative_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    storage = open_location("./repo")
    assert storage.describe() == f"local:{tmp_path / 'repo'}"


def test_local_scheme(tmp_path: Path) -> None:
    storage = open_location(f"local:{tmp_path}")
    assert isinstance(storage, LocalStorage)
    assert storage.describe() == f"local:{tmp_path}"
    assert open_location(f"LOCAL:{tmp_path}").describe() == f"local:{tmp_path}"


def test_home_is_expanded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    assert open_location("~/backups").describe() == f"local:{tmp_path / 'backups'}"


def test_create_flag_is_passed_on(tmp_path: Path) -> None:
    root = tmp_path / "new"
    open_location(str(root))
    assert not root.exists()
    open_location(f"local:{root}", create=True)
    assert root.is_dir()


@pytest.mark.parametrize("location", ["C:\\backups", "c:/backups", "D:"])
def test_windows_drive_is_a_path(
    location: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    storage = open_location(location)
    assert isinstance(storage, LocalStorage)
    assert list(tmp_path.iterdir()) == []  # nothing was created


def test_memory_locations_share_state_by_name() -> None:
    name = f"test-{uuid.uuid4().hex}"
    try:
        first = open_location(f"memory:{name}")
        first.put("config", b"shared")
        second = open_location(f"memory:{name}")
        assert isinstance(second, MemoryStorage)
        assert second.get("config") == b"shared"
        assert second.describe() == f"memory:{name}"
        other = open_location(f"memory:{name}-other")
        assert list(other.list()) == []
    finally:
        MemoryStorage.forget(name)
        MemoryStorage.forget(f"{name}-other")
    assert list(MemoryStorage.named(name).list()) == []
    MemoryStorage.forget(name)


def test_unknown_scheme_names_the_supported_ones() -> None:
    with pytest.raises(ConfigError) as caught:
        open_location("nfs://AKIAEXAMPLE:topsecret@127.0.0.1:9000/bucket")
    text = str(caught.value)
    assert "'nfs'" in text and "topsecret" not in text
    for scheme in BACKENDS:
        assert f"{scheme}:" in text
    assert "topsecret" not in text
    assert "AKIAEXAMPLE" not in text


def test_colon_in_a_folder_name_gets_a_hint() -> None:
    with pytest.raises(ConfigError) as caught:
        open_location("backup:2024")
    assert caught.value.hint is not None
    assert "local:backup:2024" in caught.value.hint


@pytest.mark.parametrize("location", ["", "local:", "memory:"])
def test_incomplete_locations(location: str) -> None:
    with pytest.raises(ConfigError):
        open_location(location)


@pytest.mark.parametrize(
    ("location", "shown"),
    [
        ("/srv/backup", "/srv/backup"),
        ("local:/srv/user@host", "local:/srv/user@host"),
        ("memory:x", "memory:x"),
        ("s3://AKIA:secret@host:9000/bucket/prefix", "s3://host:9000/bucket/prefix"),
        ("s3:https://AKIA:secret@host:9000/bucket", "s3:https://host:9000/bucket"),
        ("sftp://backup@host/srv/repo", "sftp://host/srv/repo"),
        ("https://ghp_token@example.com/x", "https://example.com/x"),
        (
            "azure://account/container?sv=2022&sig=c2VjcmV0&se=2030",
            "azure://account/container?sv=2022&sig=***&se=2030",
        ),
        (
            "s3://host/bucket?region=eu-west-1&secret_key=abc&access_key=def&token=t#frag",
            "s3://host/bucket?region=eu-west-1&secret_key=***&access_key=***&token=***#frag",
        ),
        ("gs://bucket/path?password=p", "gs://bucket/path?password=***"),
    ],
)
def test_redact(location: str, shown: str) -> None:
    assert redact(location) == shown


@pytest.mark.parametrize(
    ("location", "folder"),
    [
        ("/srv/backup", "/srv/backup"),
        ("./repo", "./repo"),
        ("local:/srv/backup", "/srv/backup"),
        ("LOCAL:rel", "rel"),
        ("C:\\backup", "C:\\backup"),  # a drive letter, not a scheme
        ("s3:bucket/prefix", None),
        ("sftp:u@h:22/p", None),
        ("local:", None),
        ("", None),
    ],
)
def test_local_folder(location: str, folder: str | None) -> None:
    assert local_folder(location) == folder
