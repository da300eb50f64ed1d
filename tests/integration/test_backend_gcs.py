"""The gcs backend end to end against a real fake-gcs-server, and its faults.

fake-gcs-server checks no credentials, so a *rejected* key cannot be tested here: the
credential faults tested are the ones the backend itself catches before any request (a key
file that is not JSON, or not a key). A bucket the credentials may not create cannot be
expressed either. Stopping the server mid-backup uses a server of the test's own (with its
objects in a folder, so it can come back); the failure modes of single calls (stopped, hung,
slow server) are tests/storage/test_failure_modes.py, run over every backend.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from safehold.errors import (
    ConfigError,
    ExitCode,
    ObjectNotFound,
    StorageError,
)
from safehold.storage.gcs import GcsStorage, from_location
from safehold.storage.location import open_location
from tests.conftest import CliRunner, make_sample_tree
from tests.integration.helpers import (
    assert_error,
    backup_json,
    restore_and_compare,
    tree_manifest,
)
from tests.servers.gcs import FakeGcs, start_fake_gcs, unique_bucket

pytestmark = pytest.mark.xdist_group("gcs")

MiB = 1 << 20
# Looks like a key, is not one: the private key is not PEM. Never sent anywhere.
FAKE_KEY = {
    "type": "service_account",
    "project_id": "safehold-test",
    "private_key_id": "0123",
    "private_key": "-----BEGIN PRIVATE KEY-----\nc2VjcmV0LWtleS1tYXRlcmlhbA==\n"
    "-----END PRIVATE KEY-----\n",
    "client_email": "backup@safehold-test.iam.gserviceaccount.com",
    "token_uri": "http://127.0.0.1:9/token",
}
SECRET_PART = "c2VjcmV0LWtleS1tYXRlcmlhbA"


@pytest.fixture
def gcsenv(cli_env: dict[str, str], fake_gcs: FakeGcs) -> dict[str, str]:
    """The CLI's environment pointing at the session's fake-gcs-server."""
    cli_env.update(fake_gcs.env())
    return cli_env


@pytest.fixture
def own_gcs(tmp_path: Path) -> Iterator[FakeGcs]:
    """A fake-gcs-server for this test alone, keeping its objects in a folder."""
    server = start_fake_gcs(tmp_path / "gcs", root=tmp_path / "gcs-data")
    try:
        yield server
    finally:
        if server.process.alive():
            server.process.resume()  # a stopped process ignores SIGTERM until it continues
        server.stop()


def init(cli: CliRunner, repo: str, **kw: object) -> None:
    res = cli("-r", repo, "init", "--kdf-log2n", "10", **kw)
    assert res.code == 0, res.output


def check_read_data(cli: CliRunner, repo: str) -> None:
    res = cli("-r", repo, "check", "--read-data")
    assert res.code == 0, f"check failed ({res.code}): {res.output}"


def bytes_read_by_this_process() -> int:
    """Bytes this process has read through system calls, sockets included (Linux)."""
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("rchar:"):
            return int(line.split()[1])
    raise AssertionError("no rchar in /proc/self/io")


# --- the round trip ----------------------------------------------------------------------


def test_backup_restore_check_roundtrip_and_a_bad_key(
    cli: CliRunner, gcsenv: dict[str, str], fake_gcs: FakeGcs, tmp_path: Path
) -> None:
    bucket = unique_bucket()
    repo = f"gs:{bucket}/backups/db1"
    init(cli, repo)  # the bucket does not exist yet: init creates it
    store = from_location(f"{bucket}/backups/db1", create=False, options=fake_gcs.options())
    src = make_sample_tree(tmp_path / "src")
    expected = tree_manifest(src)
    try:
        assert store.stat("config").size > 0
        doc = backup_json(cli, repo, str(src))
        stored = sorted((o.name, o.size) for o in store.list())
        # A key file that is no key: refused before any request, naming its source.
        key_file = tmp_path / "key.json"
        key_file.write_text(json.dumps({**FAKE_KEY, "type": "api_key"}))
        env = {"GOOGLE_APPLICATION_CREDENTIALS": str(key_file)}
        res = cli("-r", repo, "backup", str(src), env=env)
        assert_error(res, ExitCode.USAGE, "GOOGLE_APPLICATION_CREDENTIALS", "type 'api_key'")
        assert SECRET_PART not in res.output
        assert sorted((o.name, o.size) for o in store.list()) == stored
    finally:
        store.close()
    restore_and_compare(cli, repo, doc["snapshot"], src, expected, tmp_path / "restore")
    check_read_data(cli, repo)


def test_ranged_get_transfers_only_the_range(fake_gcs: FakeGcs) -> None:
    store = from_location(f"{unique_bucket()}/r", create=True, options=fake_gcs.options())
    try:
        data = os.urandom(16 * MiB)
        store.put("data/big", data)
        before = bytes_read_by_this_process()
        assert store.get("data/big", 9 * MiB + 5, 4096) == data[9 * MiB + 5 : 9 * MiB + 4101]
        assert bytes_read_by_this_process() - before < 256 * 1024
    finally:
        store.close()


def test_list_follows_page_tokens(fake_gcs: FakeGcs) -> None:
    store = from_location(
        f"{unique_bucket()}/p", create=True, options=fake_gcs.options(list_page_size=7)
    )
    try:
        names = {f"data/{i:03d}" for i in range(30)}
        for name in names:
            store.put(name, b"x")
        store.put("other", b"y")
        assert sorted(o.name for o in store.list("data/")) == sorted(names)
    finally:
        store.close()


# --- credentials ---------------------------------------------------------------------------


NO_EMAIL = {k: v for k, v in FAKE_KEY.items() if k != "client_email"}


@pytest.mark.parametrize(
    ("content", "words"),
    [
        ("{not json", ("not valid JSON", "line 1")),
        ("[1, 2]", ("not a JSON object",)),
        (json.dumps({**FAKE_KEY, "type": "api_key"}), ("type 'api_key'", "service_account")),
        (json.dumps(NO_EMAIL), ("lacks client_email",)),
        (json.dumps(FAKE_KEY), ("cannot be used", "private key")),
    ],
    ids=["malformed", "not-an-object", "wrong-type", "incomplete", "bad-private-key"],
)
def test_invalid_key_file_is_a_clear_config_error(
    fake_gcs: FakeGcs,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    content: str,
    words: tuple[str, ...],
) -> None:
    key_file = tmp_path / "key.json"
    key_file.write_text(content)
    options = fake_gcs.options(credentials_file=str(key_file))
    with pytest.raises(ConfigError) as caught:
        from_location("bucket/p", create=False, options=options)
    message = str(caught.value)
    assert "credentials_file option" in message and str(key_file) in message
    assert all(word in message for word in words), message
    assert SECRET_PART not in message
    # The same file named by GOOGLE_APPLICATION_CREDENTIALS, even with an emulator set.
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(key_file))
    with pytest.raises(ConfigError, match="GOOGLE_APPLICATION_CREDENTIALS"):
        from_location("bucket/p", create=False, options=fake_gcs.options())


def test_inline_key_is_checked_and_never_shown(fake_gcs: FakeGcs) -> None:
    for options in (
        {"credentials_json": json.dumps(FAKE_KEY)},
        {"service_account_json": FAKE_KEY},  # the seeds' name, as a YAML mapping
    ):
        with pytest.raises(ConfigError, match="credentials_json option") as caught:
            from_location("bucket/p", create=False, options=fake_gcs.options(**options))
        assert SECRET_PART not in str(caught.value)
    with pytest.raises(ConfigError, match="secret option"):
        open_location("gs:bucket/p?credentials_json=%7B%7D")


# --- missing bucket --------------------------------------------------------------------------


def test_missing_bucket_with_creation_disabled(
    cli: CliRunner, gcsenv: dict[str, str], fake_gcs: FakeGcs
) -> None:
    bucket = unique_bucket()
    with pytest.raises(StorageError, match=f"bucket '{bucket}' does not exist") as caught:
        open_location(f"gs:{bucket}/p?create_bucket=false", create=True, options=fake_gcs.options())
    assert "create_bucket" in str(caught.value)
    # Opening a repository whose bucket does not exist: "no repository there".
    res = cli("-r", f"gs:{bucket}/p", "snapshots")
    assert_error(res, ExitCode.NO_REPOSITORY, "no repository", bucket)
    store = from_location(f"{bucket}/p", create=False, options=fake_gcs.options())
    try:
        with pytest.raises(ObjectNotFound):
            store.get("config")
        with pytest.raises(StorageError, match="does not exist"):
            store.put("config", b"x")
        assert list(store.list()) == []
    finally:
        store.close()


# --- the server going away, slow answers --------------------------------------------------


def test_server_stopping_mid_backup_fails_cleanly_then_resumes(
    cli: CliRunner, cli_env: dict[str, str], own_gcs: FakeGcs, tmp_path: Path
) -> None:
    cli_env.update(own_gcs.env())
    bucket = unique_bucket()
    repo = f"gs:{bucket}/repo?connect_timeout=2&read_timeout=5"
    init(cli, repo)
    src = tmp_path / "src"
    src.mkdir()
    for i in range(6):  # incompressible: four packs or more, so the run cannot end first
        (src / f"f{i}.bin").write_bytes(os.urandom(12 * MiB))
    watch = from_location(f"{bucket}/repo", create=False, options=own_gcs.options())
    stop = threading.Event()

    def stop_after_first_pack() -> None:
        while not stop.is_set():
            if any(True for _ in watch.list("data/")):
                own_gcs.process.stop()
                return
            time.sleep(0.02)

    watcher = threading.Thread(target=stop_after_first_pack)
    watcher.start()
    t0 = time.monotonic()
    try:
        res = cli("-r", repo, "backup", str(src), timeout=150)
    finally:
        stop.set()
        watcher.join()
    elapsed = time.monotonic() - t0
    assert_error(res, ExitCode.STORAGE, "cannot connect", own_gcs.endpoint)
    assert elapsed < 90, elapsed
    # The server comes back on the same port with the objects it had.
    back = start_fake_gcs(tmp_path / "gcs-again", port=own_gcs.port, root=own_gcs.root)
    watch.close()  # its pooled connections went with the old server: look with a fresh client
    after = from_location(f"{bucket}/repo", create=False, options=own_gcs.options())
    try:
        assert list(after.list("snapshots/")) == []  # the failed run saved no snapshot
        expected = tree_manifest(src)
        doc = backup_json(cli, repo, str(src))
        check_read_data(cli, repo)
        restore_and_compare(cli, repo, doc["snapshot"], src, expected, tmp_path / "restore")
    finally:
        after.close()
        back.stop()


# --- options ---------------------------------------------------------------------------------


def test_options_are_validated(fake_gcs: FakeGcs, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match=r"unknown option.*colour"):
        from_location("bucket/p", create=False, options={"colour": "blue"})
    with pytest.raises(ConfigError, match="not a valid Cloud Storage bucket name"):
        open_location("gs:Bad_Bucket!/p", options=fake_gcs.options())
    with pytest.raises(ConfigError, match="connect_timeout"):
        open_location("gs:bucket/p", options=fake_gcs.options(connect_timeout=-1))
    with pytest.raises(ConfigError, match="cannot read the Google credentials file"):
        open_location("gs:bucket/p", options={"credentials_file": "/nonexistent/key.json"})
    # STORAGE_EMULATOR_HOST alone (as host:port) reaches the emulator without credentials.
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", f"127.0.0.1:{fake_gcs.port}")
    monkeypatch.delenv("GOOGLE_APPLICATION_CREDENTIALS", raising=False)
    store = open_location(f"gs://{unique_bucket()}/p", create=True)
    try:
        assert isinstance(store, GcsStorage)
        assert store.describe().startswith("gs:") and store.describe().endswith("/p")
        store.put("a", b"1")
        assert [o.name for o in store.list()] == ["a"]
    finally:
        store.close()
