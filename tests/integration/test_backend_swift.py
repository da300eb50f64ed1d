"""The swift backend end to end, against a real single-node Swift (tests/servers/swift.py).

Through the CLI (credentials from ST_AUTH/ST_USER/ST_KEY): init, backup, restore
bit-identical, ``check --read-data``; a wrong key; a user who may not create containers;
a missing container with ``?create_container=false``; the proxy going away in the middle
of a backup. Through the library: token renewal, large objects in segments, Keystone v3,
options and the environment. A hung and a slow server against the ``timeout`` option are
tests/storage/test_failure_modes.py, run over every backend.
"""

from __future__ import annotations

import json
import os
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from safehold.errors import (
    ConfigError,
    ExitCode,
    ObjectExists,
    StorageError,
    StoragePermissionDenied,
)
from safehold.storage.swift import SwiftStorage, from_location, parse_options
from tests.conftest import CliResult, CliRunner, make_sample_tree
from tests.integration.helpers import (
    assert_error,
    backup_json,
    check_ok,
    restore_and_compare,
    snapshot_ids,
    tree_manifest,
)
from tests.servers.swift import KEY, READER, READER_KEY, USER, SwiftServer

pytestmark = pytest.mark.xdist_group("swift")  # the proxy is stopped and paused here

MiB = 1024 * 1024


def new_container() -> str:
    return f"it-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def swift_env(swift_server: SwiftServer, cli_env: dict[str, str]) -> dict[str, str]:
    """The CLI's environment: the admin user's ST_* variables."""
    cli_env.update(swift_server.env())
    return cli_env


@pytest.fixture
def location() -> str:
    return f"swift:{new_container()}/backups/db1"


def init(cli: CliRunner, location: str) -> None:
    res = cli("-r", location, "init", "--kdf-log2n", "10")
    assert res.code == 0, res.output


def check_read_data(cli: CliRunner, location: str) -> None:
    res = cli("-r", location, "check", "--read-data")
    assert check_ok(res), res.output


# --- end to end -------------------------------------------------------------------------------


def test_backup_restore_check(
    cli: CliRunner, swift_env: dict[str, str], location: str, tmp_path: Path
) -> None:
    init(cli, location)
    src = make_sample_tree(tmp_path / "src")
    manifest = tree_manifest(src)
    first = backup_json(cli, location, str(src))
    (src / "added.bin").write_bytes(os.urandom(300_000))
    second = backup_json(cli, location, str(src))
    assert second["summary"]["files_new"] == 1
    assert snapshot_ids(cli, location) == [first["snapshot"], second["snapshot"]]
    restore_and_compare(cli, location, first["snapshot"], src, manifest, tmp_path / "restore")
    check_read_data(cli, location)
    # A second init at the same place is refused (the config is created exclusively).
    again = cli("-r", location, "init", "--kdf-log2n", "10")
    assert again.code == ExitCode.USAGE, again.output


# --- credentials and containers ------------------------------------------------------------


def test_wrong_key_is_a_clear_auth_error_and_changes_nothing(
    cli: CliRunner, swift_env: dict[str, str], swift_server: SwiftServer, location: str,
    tmp_path: Path,
) -> None:  # fmt: skip
    init(cli, location)
    src = make_sample_tree(tmp_path / "src")
    snapshot = backup_json(cli, location, str(src))["snapshot"]
    wrong = swift_server.env(key="not-the-key")
    for args in (["snapshots"], ["backup", str(src)]):
        res = cli("-r", location, *args, env=wrong)
        assert_error(res, ExitCode.STORAGE, "authentication", "failed", "ST_KEY")
        assert "not-the-key" not in res.output  # the key never shows
    assert snapshot_ids(cli, location) == [snapshot]


def test_user_without_rights_cannot_create_the_container(
    cli: CliRunner, swift_env: dict[str, str], swift_server: SwiftServer, location: str
) -> None:
    res = cli(
        "-r", location, "init", "--kdf-log2n", "10",
        env=swift_server.env(user=READER, key=READER_KEY),
    )  # fmt: skip
    assert_error(res, ExitCode.STORAGE, "permission denied", "may not read or create")
    assert READER_KEY not in res.output


def test_no_repository_in_a_missing_container(
    cli: CliRunner, swift_env: dict[str, str], location: str
) -> None:
    res = cli("-r", location, "snapshots")
    assert_error(res, ExitCode.NO_REPOSITORY, "no repository", location)


def test_missing_container_without_create_container(
    cli: CliRunner, swift_env: dict[str, str], swift_server: SwiftServer
) -> None:
    container = new_container()
    res = cli("-r", f"swift:{container}/repo?create_container=false", "init")
    assert_error(res, ExitCode.STORAGE, f"the container '{container}' does not exist",
                 "create_container")  # fmt: skip
    options = swift_server.options(create_container=False)
    with pytest.raises(StorageError, match="does not exist") as caught:
        from_location(f"{container}/repo", create=True, options=options)
    assert "create_container" in str(caught.value)
    # Nothing was created: with the default it is, and then it is found.
    from_location(f"{container}/repo", create=True, options=swift_server.options()).close()
    from_location(f"{container}/repo", create=True, options=options).close()


def test_options_are_validated_and_secrets_stay_out_of_messages(
    swift_server: SwiftServer,
) -> None:
    with pytest.raises(ConfigError, match=r"unknown option.*bucket"):
        from_location("c/p", create=False, options={**swift_server.options(), "bucket": "x"})
    with pytest.raises(ConfigError, match="user and key"):
        from_location("c/p", create=False, options={"auth_url": swift_server.auth_url})
    with pytest.raises(ConfigError, match="invalid swift location"):
        from_location("/", create=False, options=swift_server.options())
    storage = from_location("c/p", create=False, options=swift_server.options(key="sekrit-key-123"))
    with pytest.raises(StoragePermissionDenied) as caught:
        storage.stat("config")
    assert "sekrit-key-123" not in str(caught.value) + repr(storage) + repr(storage._opts)
    assert "user and key (the destination's options)" in str(caught.value)
    # A wrong auth_url is not "no such object" (which would read as "no repository here").
    wrong_url = swift_server.auth_url.replace("/auth/v1.0", "/nothing/here")
    storage = from_location("c/p", create=False, options=swift_server.options(auth_url=wrong_url))
    with pytest.raises(StorageError, match=r"auth service at .* answered 400") as failed:
        storage.stat("config")
    assert type(failed.value) is StorageError and "auth_url" in str(failed.value)


def test_expired_token_is_renewed_once(swift_server: SwiftServer) -> None:
    storage = from_location(f"{new_container()}/p", create=True, options=swift_server.options())
    storage.put("a", b"1")
    # Forget the token behind the storage's back: the next call gets 401 and renews it.
    storage._auth._token = "AUTH_tk" + "0" * 32
    storage.put("b", b"2")
    assert storage.get("a") == b"1"
    storage.close()
    # A pre-authenticated token cannot be renewed: a refusal is a clear permanent error.
    stale = from_location(
        "c/p", create=False,
        options={"storage_url": swift_server.storage_url, "auth_token": "AUTH_tk" + "0" * 32},
    )  # fmt: skip
    with pytest.raises(StoragePermissionDenied, match="auth_token"):
        stale.stat("x")


def test_large_objects_go_in_segments(swift_server: SwiftServer) -> None:
    container = new_container()
    storage = from_location(
        f"{container}/p", create=True, options=swift_server.options(segment_size="1MiB")
    )
    data = os.urandom(3 * MiB + 123)
    storage.put("data/big", data, exclusive=True)
    assert storage.stat("data/big").size == len(data)
    assert [(o.name, o.size) for o in storage.list("data/")] == [("data/big", len(data))]
    assert storage.get("data/big", MiB - 10, 20) == data[MiB - 10 : MiB + 10]
    assert storage.get("data/big") == data
    with pytest.raises(ObjectExists):
        storage.put("data/big", data, exclusive=True)
    segments = from_location(f"{container}_segments", create=False, options=swift_server.options())
    assert len(list(segments.list())) == 4
    storage.delete("data/big")
    assert list(storage.list()) == [] and list(segments.list()) == []


# --- the server going away, hanging, or being slow -------------------------------------------


def wait_for_packs(storage: SwiftStorage, deadline: float) -> None:
    while time.monotonic() < deadline:
        try:
            if any(True for _ in storage.list("data/")):
                return
        except StorageError:
            pass
        time.sleep(0.05)
    raise AssertionError("no pack was uploaded in time")


@pytest.fixture
def proxy_restored(swift_server: SwiftServer) -> Iterator[SwiftServer]:
    """Whatever a test does to the proxy, the next test finds it running."""
    try:
        yield swift_server
    finally:
        swift_server.start_proxy()


def test_proxy_stopped_mid_backup_then_next_backup_succeeds(
    cli: CliRunner, swift_env: dict[str, str], proxy_restored: SwiftServer, location: str,
    tmp_path: Path,
) -> None:  # fmt: skip
    init(cli, location)
    src = tmp_path / "src"
    src.mkdir()
    for i in range(10):  # incompressible: five 16 MiB packs, so the run cannot end first
        (src / f"blob{i}.bin").write_bytes(os.urandom(8 * MiB))
    watcher = from_location(location.removeprefix("swift:"), create=False,
                            options=proxy_restored.options())  # fmt: skip
    results: list[CliResult] = []
    backup = threading.Thread(
        target=lambda: results.append(cli("-r", location, "backup", "--json", str(src)))
    )
    backup.start()
    try:
        wait_for_packs(watcher, time.monotonic() + 60)
        proxy_restored.stop_proxy()
        started = time.monotonic()
    finally:
        backup.join(120)
    failed_after = time.monotonic() - started
    (res,) = results
    assert_error(res, ExitCode.STORAGE, "swift:")
    # Connections are refused: the retries (about 3 s of backoff) run out quickly.
    assert failed_after < 30, failed_after
    proxy_restored.start_proxy()
    snapshot = backup_json(cli, location, str(src))["snapshot"]
    assert snapshot_ids(cli, location) == [snapshot]
    check_read_data(cli, location)  # reads every pack back: the data is all there
    watcher.close()


# --- Keystone v3 ------------------------------------------------------------------------------


class KeystoneStandIn(ThreadingHTTPServer):
    """The one Keystone v3 call the backend makes (password auth, project scope), answered
    with a real TempAuth token of the test cluster and a catalog pointing at it. No
    Keystone server can run here; this checks the request we send and how we read the
    answer, while every storage call still goes to the real Swift."""

    def __init__(self, swift_server: SwiftServer) -> None:
        super().__init__(("127.0.0.1", 0), _KeystoneHandler)
        self.swift = swift_server
        self.requests: list[dict[str, Any]] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v3"


class _KeystoneHandler(BaseHTTPRequestHandler):
    server: KeystoneStandIn

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.server.requests.append(body)
        user = body["auth"]["identity"]["password"]["user"]
        project = body["auth"]["scope"]["project"]
        if self.path != "/v3/auth/tokens" or (user["name"], user["password"]) != (
            "alice",
            "alice-password",
        ):
            self.send_response(401)
            self.end_headers()
            return
        assert user["domain"] == {"name": "Default"}
        assert project == {"name": "backups", "domain": {"name": "Default"}}
        ask = urllib.request.Request(
            self.server.swift.auth_url, headers={"X-Auth-User": USER, "X-Auth-Key": KEY}
        )
        with urllib.request.urlopen(ask, timeout=10) as answer:
            token = answer.headers["X-Auth-Token"]
        catalog = [
            {"type": "identity", "endpoints": [{"interface": "public", "url": self.server.url}]},
            {
                "type": "object-store",
                "endpoints": [
                    {"interface": "public", "region_id": "RegionOne",
                     "url": self.server.swift.storage_url},
                    {"interface": "public", "region_id": "RegionTwo",
                     "url": "http://127.0.0.1:9/v1/AUTH_elsewhere"},
                ],
            },
        ]  # fmt: skip
        reply = json.dumps({"token": {"catalog": catalog}}).encode()
        self.send_response(201)
        self.send_header("X-Subject-Token", token)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)


@pytest.fixture
def keystone(swift_server: SwiftServer) -> Iterator[KeystoneStandIn]:
    server = KeystoneStandIn(swift_server)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_keystone_v3_from_the_environment(keystone: KeystoneStandIn) -> None:
    env = {
        "OS_AUTH_URL": keystone.url, "OS_USERNAME": "alice", "OS_PASSWORD": "alice-password",
        "OS_PROJECT_NAME": "backups", "OS_USER_DOMAIN_NAME": "Default",
        "OS_PROJECT_DOMAIN_NAME": "Default", "OS_REGION_NAME": "RegionOne",
    }  # fmt: skip
    opts = parse_options(None, env)
    assert (opts.auth_version, opts.region_name, opts.source) == (
        "3",
        "RegionOne",
        "OS_* environment variables",
    )
    assert "alice-password" not in repr(opts)
    storage = SwiftStorage(new_container(), "p", opts, create=True)
    storage.put("a", b"via keystone")
    assert len(keystone.requests) == 1
    storage._auth._token = "AUTH_tk" + "0" * 32  # the token expired
    assert storage.get("a") == b"via keystone"
    assert len(keystone.requests) == 2
    storage.close()


def test_keystone_v3_faults(keystone: KeystoneStandIn) -> None:
    options: dict[str, object] = {
        "auth_url": keystone.url, "auth_version": 3, "username": "alice",
        "password": "wrong", "project_name": "backups",
    }  # fmt: skip
    with pytest.raises(StoragePermissionDenied, match="username and password") as caught:
        from_location("c/p", create=True, options=options)
    assert "wrong" not in str(caught.value).replace("wrong key", "")
    options["password"] = "alice-password"
    with pytest.raises(StorageError, match="no public object-store endpoint in region"):
        from_location("c/p?region_name=RegionThree", create=True, options=options)
    with pytest.raises(ConfigError, match="project_name or project_id"):
        from_location("c/p", create=True, options={**options, "project_name": None})


# --- options and the environment ------------------------------------------------------------


def test_credentials_from_the_environment_in_order() -> None:
    st = {"ST_AUTH": "http://a/auth/v1.0", "ST_USER": "t:u", "ST_KEY": "k"}
    os_vars = {"OS_AUTH_URL": "http://k/v3", "OS_USERNAME": "u", "OS_PASSWORD": "p",
               "OS_PROJECT_ID": "42"}  # fmt: skip
    pre = {"OS_STORAGE_URL": "http://s/v1/AUTH_x", "OS_AUTH_TOKEN": "tok"}
    assert parse_options(None, {**st, **os_vars, **pre}).storage_url == "http://s/v1/AUTH_x"
    assert parse_options(None, {**st, **os_vars}).user == "t:u"
    found = parse_options({"region_name": "R2", "timeout": "5"}, os_vars)
    assert (found.auth_version, found.project_id, found.region_name, found.timeout) == (
        "3", "42", "R2", 5.0,
    )  # fmt: skip
    # auth_url in the options: the environment is not consulted at all.
    with pytest.raises(ConfigError, match="needs user and key"):
        parse_options({"auth_url": "http://a/auth/v1.0"}, st)
    with pytest.raises(ConfigError, match=r"no Swift credentials.*ST_AUTH"):
        parse_options(None, {})


def test_location_query_holds_only_non_secret_options(swift_server: SwiftServer) -> None:
    storage = from_location(
        f"{new_container()}/p?timeout=7&segment_size=2MiB&create_container=true",
        create=True,
        options=swift_server.options(),
    )
    assert (storage._opts.timeout, storage._opts.segment_size) == (7.0, 2 * MiB)
    assert storage.describe() == storage.describe().partition("?")[0]
    with pytest.raises(ConfigError, match="'key' is a secret") as caught:
        from_location("c/p?key=hunter2", create=False, options=swift_server.options())
    assert "hunter2" not in str(caught.value)
    with pytest.raises(ConfigError, match="both in the location and the options"):
        from_location("c/p?timeout=5", create=False, options=swift_server.options(timeout=6))
    with pytest.raises(ConfigError, match="segment_size"):
        from_location("c/p?segment_size=10KiB", create=False, options=swift_server.options())
