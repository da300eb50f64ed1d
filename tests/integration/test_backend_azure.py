"""The azure backend end to end against a real Azurite, and its faults.

Azurite verifies Shared Key and SAS signatures (also in ``--loose`` mode), so a wrong key,
a SAS token signed with a wrong key and a SAS token without the permission to create a
container are real refusals. Faults that stop the server mid-backup use a server of the
test's own; the failure modes of single calls (stopped, hung, slow server, wrong key) are
tests/storage/test_failure_modes.py, run over every backend.
"""

from __future__ import annotations

import base64
import os
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from azure.storage.blob import AccountSasPermissions, ResourceTypes, generate_account_sas

from safehold.errors import (
    ConfigError,
    ExitCode,
    ObjectNotFound,
    StorageError,
    StoragePermissionDenied,
)
from safehold.storage.azure import AzureStorage, from_location
from safehold.storage.location import open_location
from tests.conftest import CliRunner, make_sample_tree
from tests.integration.helpers import (
    assert_error,
    backup_json,
    restore_and_compare,
    tree_manifest,
)
from tests.servers.azure import ACCOUNT, DEV_KEY, Azurite, start_azurite, unique_container

pytestmark = pytest.mark.xdist_group("azure")

MiB = 1 << 20
WRONG_KEY = base64.b64encode(b"not the key of this account, but valid base64 :)" * 2).decode()


@pytest.fixture
def azenv(cli_env: dict[str, str], azurite: Azurite) -> dict[str, str]:
    """The CLI's environment with the connection string of the session's Azurite."""
    cli_env.update(azurite.env())
    return cli_env


@pytest.fixture
def own_azurite(tmp_path: Path) -> Iterator[Azurite]:
    """An Azurite for this test alone, which it may pause or stop."""
    server = start_azurite(tmp_path / "azurite")
    try:
        yield server
    finally:
        if server.process.alive():
            server.process.resume()  # a stopped process ignores SIGTERM until it continues
        server.stop()


def init(cli: CliRunner, repo: str, **kw: object) -> None:
    res = cli("-r", repo, "init", "--kdf-log2n", "10", **kw)
    assert res.code == 0, res.output


def check_read_data(cli: CliRunner, repo: str, **kw: object) -> None:
    res = cli("-r", repo, "check", "--read-data", **kw)
    assert res.code == 0, f"check failed ({res.code}): {res.output}"


def sas_token(permissions: str, key: str = DEV_KEY) -> str:
    return generate_account_sas(
        ACCOUNT,
        key,
        ResourceTypes(service=True, container=True, object=True),
        AccountSasPermissions.from_string(permissions),
        datetime.now(UTC) + timedelta(hours=1),
    )


def bytes_read_by_this_process() -> int:
    """Bytes this process has read through system calls, sockets included (Linux)."""
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("rchar:"):
            return int(line.split()[1])
    raise AssertionError("no rchar in /proc/self/io")


# --- the round trip ----------------------------------------------------------------------


def test_backup_restore_check_roundtrip_and_a_wrong_key(
    cli: CliRunner, azenv: dict[str, str], azurite: Azurite, tmp_path: Path
) -> None:
    container = unique_container()
    repo = f"azure:{container}/backups/db1"
    init(cli, repo)  # the container does not exist yet: init creates it
    store = from_location(f"{container}/backups/db1", create=False, options=azurite.options())
    src = make_sample_tree(tmp_path / "src")
    expected = tree_manifest(src)
    try:
        assert store.stat("config").size > 0
        doc = backup_json(cli, repo, str(src))
        stored = sorted((o.name, o.size) for o in store.list())
        # A wrong key: refused clearly (naming where the key came from), nothing written.
        wrong = azurite.env(key=WRONG_KEY)
        res = cli("-r", repo, "backup", str(src), env=wrong)
        assert_error(
            res, ExitCode.STORAGE, "authentication failed", "AZURE_STORAGE_CONNECTION_STRING"
        )
        assert WRONG_KEY not in res.output and DEV_KEY not in res.output
        assert sorted((o.name, o.size) for o in store.list()) == stored
    finally:
        store.close()
    restore_and_compare(cli, repo, doc["snapshot"], src, expected, tmp_path / "restore")
    check_read_data(cli, repo)


def test_ranged_get_transfers_only_the_range(azurite: Azurite) -> None:
    store = from_location(f"{unique_container()}/r", create=True, options=azurite.options())
    try:
        data = os.urandom(16 * MiB)
        store.put("data/big", data)
        before = bytes_read_by_this_process()
        assert store.get("data/big", 9 * MiB + 5, 4096) == data[9 * MiB + 5 : 9 * MiB + 4101]
        assert bytes_read_by_this_process() - before < 256 * 1024
    finally:
        store.close()


def test_list_follows_continuation_pages(azurite: Azurite) -> None:
    store = from_location(
        f"{unique_container()}/p", create=True, options=azurite.options(list_page_size=7)
    )
    try:
        names = {f"data/{i:03d}" for i in range(30)}
        for name in names:
            store.put(name, b"x")
        store.put("other", b"y")
        assert sorted(o.name for o in store.list("data/")) == sorted(names)
    finally:
        store.close()


# --- credentials and permissions --------------------------------------------------------


def test_sas_token_signed_with_a_wrong_key_is_refused(azurite: Azurite) -> None:
    bad = sas_token("rwdlc", key=WRONG_KEY)
    store = from_location(
        f"{unique_container()}/p",
        create=False,
        options={"account_name": ACCOUNT, "sas_token": bad, "endpoint": azurite.endpoint},
    )
    try:
        with pytest.raises(StoragePermissionDenied, match="authentication failed") as caught:
            store.put("x", b"1")
        assert "sas_token option" in str(caught.value)
        signature = bad.split("sig=")[1]
        assert signature not in str(caught.value) and signature not in repr(store)
    finally:
        store.close()


def test_missing_container_without_permission_to_create(
    cli: CliRunner, cli_env: dict[str, str], azurite: Azurite
) -> None:
    container = unique_container()
    repo = f"azure:{container}/repo?endpoint={azurite.endpoint}"
    env = {"AZURE_STORAGE_ACCOUNT": ACCOUNT, "AZURE_STORAGE_SAS_TOKEN": sas_token("rl")}
    res = cli("-r", repo, "init", "--kdf-log2n", "10", env=env)
    assert_error(res, ExitCode.STORAGE, "does not exist", "may not create it", "AZURE_STORAGE_SAS")
    # Opening a repository whose container does not exist: "no repository there".
    res = cli("-r", repo, "snapshots", env=env)
    assert_error(res, ExitCode.NO_REPOSITORY, "no repository", container)
    # The same SAS token works on a container that exists (it may list and read).
    existing = from_location(f"{container}/repo", create=True, options=azurite.options())
    existing.close()
    reader = from_location(
        f"{container}/repo",
        create=True,
        options={"account_name": ACCOUNT, "sas_token": env["AZURE_STORAGE_SAS_TOKEN"],
                 "endpoint": azurite.endpoint},
    )  # fmt: skip
    try:
        assert list(reader.list()) == []
        with pytest.raises(StoragePermissionDenied, match="permission denied"):
            reader.put("x", b"1")
    finally:
        reader.close()


def test_missing_container_with_creation_disabled(azurite: Azurite) -> None:
    container = unique_container()
    with pytest.raises(StorageError, match=f"container '{container}' does not exist") as caught:
        open_location(
            f"azure:{container}/p?create_container=false", create=True, options=azurite.options()
        )
    assert "create_container" in str(caught.value)
    store = from_location(f"{container}/p", create=False, options=azurite.options())
    try:
        with pytest.raises(ObjectNotFound, match="container"):
            store.get("config")
        with pytest.raises(StorageError, match="does not exist"):
            store.put("config", b"x")
        assert list(store.list()) == []
    finally:
        store.close()


# --- the server going away, slow answers --------------------------------------------------


def test_server_hanging_mid_backup_fails_within_the_timeout_then_resumes(
    cli: CliRunner, cli_env: dict[str, str], own_azurite: Azurite, tmp_path: Path
) -> None:
    cli_env.update(own_azurite.env())
    container = unique_container()
    repo = f"azure:{container}/repo?read_timeout=1&connect_timeout=1"
    init(cli, repo)
    src = tmp_path / "src"
    src.mkdir()
    for i in range(6):  # incompressible: four packs or more, so the run cannot end first
        (src / f"f{i}.bin").write_bytes(os.urandom(12 * MiB))
    watch = from_location(f"{container}/repo", create=False, options=own_azurite.options())
    stop = threading.Event()

    def hang_after_first_pack() -> None:
        while not stop.is_set():
            if any(True for _ in watch.list("data/")):
                own_azurite.process.pause()  # SIGSTOP: connections open, nobody answers
                return
            time.sleep(0.02)

    watcher = threading.Thread(target=hang_after_first_pack)
    watcher.start()
    t0 = time.monotonic()
    try:
        res = cli("-r", repo, "backup", str(src), timeout=150)
    finally:
        stop.set()
        watcher.join()
    elapsed = time.monotonic() - t0
    own_azurite.process.resume()
    # The watcher's pooled connections may have been reset by the resumed server: look
    # with a fresh client.
    watch.close()
    assert_error(res, ExitCode.STORAGE, "did not answer in time", "read_timeout=1")
    assert elapsed < 120, elapsed
    after = from_location(f"{container}/repo", create=False, options=own_azurite.options())
    try:
        assert list(after.list("snapshots/")) == []  # the failed run saved no snapshot
    finally:
        after.close()
    expected = tree_manifest(src)
    doc = backup_json(cli, repo, str(src))
    check_read_data(cli, repo)
    restore_and_compare(cli, repo, doc["snapshot"], src, expected, tmp_path / "restore")


# --- options ---------------------------------------------------------------------------------


def test_options_are_validated_and_secrets_stay_hidden(azurite: Azurite) -> None:
    with pytest.raises(ConfigError, match=r"unknown option.*colour"):
        from_location("c0ntainer/p", create=False, options={"colour": "blue"})
    with pytest.raises(ConfigError, match="secret option 'sas_token'"):
        open_location("azure:container/p?sas_token=sv%3Dx%26sig%3Dy")
    with pytest.raises(ConfigError, match="not a valid Azure container name"):
        open_location("azure:No_Such/p", options=azurite.options())
    with pytest.raises(ConfigError, match="read_timeout"):
        open_location("azure:container/p", options=azurite.options(read_timeout="soon"))
    with pytest.raises(ConfigError, match="not valid base64"):
        open_location("azure:container/p", options=azurite.options(account_key="%%%"))
    with pytest.raises(ConfigError, match=r"connection string .* is malformed"):
        open_location("azure:container/p", options={"connection_string": "nonsense"})
    # The seeds' names: storage_account, storage_access_key, blob_store_base_url.
    store = open_location(
        "azure:container/p",
        options={"storage_account": ACCOUNT, "storage_access_key": DEV_KEY,
                 "blob_store_base_url": azurite.endpoint},
    )  # fmt: skip
    try:
        assert isinstance(store, AzureStorage)
        assert store.describe() == "azure:container/p"
        assert DEV_KEY not in repr(store)
    finally:
        store.close()


def test_no_credentials_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("AZURE_STORAGE_CONNECTION_STRING", "AZURE_STORAGE_KEY", "AZURE_STORAGE_SAS_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(ConfigError, match="no Azure credentials") as caught:
        open_location("azure:container/p")
    assert "AZURE_STORAGE_CONNECTION_STRING" in str(caught.value)
