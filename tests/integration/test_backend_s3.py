"""The s3 backend end to end against a real SeaweedFS, and its faults.

SeaweedFS verifies SigV4, so wrong secrets and a read-only identity are real refusals.
Network faults go through :class:`tests.servers.proxy.FaultProxy` in front of the server:
the shared session server itself is never stopped, so other tests on the worker keep it.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config

from safehold.errors import (
    ConfigError,
    ExitCode,
    ObjectExists,
    StoragePermissionDenied,
    TransientStorageError,
)
from safehold.storage.location import open_location
from safehold.storage.s3 import S3Storage, from_location
from safehold.storage.wrappers import RetryEvent, RetryingStorage
from tests.conftest import CliRunner, make_sample_tree
from tests.integration.helpers import (
    assert_error,
    backup_json,
    restore_and_compare,
    snapshot_ids,
    tree_manifest,
)
from tests.servers.proxy import FaultProxy
from tests.servers.s3 import SeaweedS3, unique_bucket

MiB = 1 << 20


@pytest.fixture
def s3env(cli_env: dict[str, str], s3_server: SeaweedS3) -> dict[str, str]:
    """The CLI's environment with the admin identity's AWS_* variables."""
    cli_env.update(s3_server.env())
    return cli_env


@pytest.fixture
def admin(s3_server: SeaweedS3) -> Iterator[Any]:
    """A plain boto3 client, to look at what the backend left in the bucket."""
    client = boto3.client(
        "s3",
        endpoint_url=s3_server.endpoint,
        aws_access_key_id=s3_server.admin_key,
        aws_secret_access_key=s3_server.admin_secret,
        region_name=s3_server.region,
        config=Config(s3={"addressing_style": "path"}),
    )
    yield client
    client.close()


@pytest.fixture
def proxy(s3_server: SeaweedS3) -> Iterator[FaultProxy]:
    with FaultProxy(s3_server.port) as p:
        yield p


def location(endpoint: str, bucket: str, query: str = "") -> str:
    return f"s3:{endpoint}/{bucket}/backups/db1{'?' + query if query else ''}"


def init(cli: CliRunner, repo: str) -> None:
    res = cli("-r", repo, "init", "--kdf-log2n", "10")
    assert res.code == 0, res.output


def check_read_data(cli: CliRunner, repo: str) -> None:
    res = cli("-r", repo, "check", "--read-data")
    assert res.code == 0, f"check failed ({res.code}): {res.output}"


def big_tree(root: Path, files: int, size: int) -> Path:
    """Incompressible files, so the packs really carry ``files * size`` bytes."""
    root.mkdir(parents=True)
    for i in range(files):
        (root / f"f{i:03d}.bin").write_bytes(os.urandom(size))
    return root


# --- the round trip ----------------------------------------------------------------------


def test_backup_restore_check_and_credential_faults(
    cli: CliRunner, s3env: dict[str, str], s3_server: SeaweedS3, admin: Any, tmp_path: Path
) -> None:
    bucket = unique_bucket("e2e")
    repo = location(s3_server.endpoint, bucket)
    init(cli, repo)  # the bucket does not exist yet: init creates it
    keys = {o["Key"] for o in admin.list_objects_v2(Bucket=bucket)["Contents"]}
    assert "backups/db1/config" in keys, keys
    src = make_sample_tree(tmp_path / "src")
    expected = tree_manifest(src)
    doc = backup_json(cli, repo, str(src))
    restore_and_compare(cli, repo, doc["snapshot"], src, expected, tmp_path / "restore")

    # A wrong secret: refused with a message naming the credential source, never a secret.
    wrong = s3_server.env(secret="not-the-secret-at-all")
    res = cli("-r", repo, "backup", str(src), env=wrong)
    assert_error(res, ExitCode.STORAGE, "rejected the credentials", "AWS_ACCESS_KEY_ID")
    assert "not-the-secret-at-all" not in res.output
    assert s3_server.admin_secret not in res.output
    # A read-only identity may list snapshots but not back up.
    reader = s3_server.env(reader=True)
    assert cli("-r", repo, "snapshots", env=reader).code == 0
    res = cli("-r", repo, "backup", str(src), env=reader)
    assert_error(res, ExitCode.STORAGE, "access denied")
    # Nothing was damaged by the refused runs.
    assert snapshot_ids(cli, repo) == [doc["snapshot"]]
    check_read_data(cli, repo)


def test_multipart_sse_and_storage_class(s3_server: SeaweedS3, admin: Any) -> None:
    bucket = unique_bucket("mp")
    store = from_location(
        f"{s3_server.endpoint}/{bucket}/p",
        create=True,
        options=s3_server.options(part_size="5MiB", storage_class="standard_ia"),
    )
    try:
        data = os.urandom(12 * MiB + 123)  # three parts: 5 + 5 + 2 MiB
        store.put("data/ab/big", data, exclusive=True)
        assert store.get("data/ab/big") == data
        assert store.get("data/ab/big", 5 * MiB - 3, 7) == data[5 * MiB - 3 : 5 * MiB + 4]
        with pytest.raises(ObjectExists):
            store.put("data/ab/big", b"other", exclusive=True)
        head = admin.head_object(Bucket=bucket, Key="p/data/ab/big")
        assert head["ContentLength"] == len(data)
        assert head.get("StorageClass") == "STANDARD_IA"
        assert admin.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
    finally:
        store.close()


def test_profile_credentials_and_sse(
    s3_server: SeaweedS3, admin: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    credentials = tmp_path / "aws-credentials"
    credentials.write_text(
        f"[backup]\naws_access_key_id = {s3_server.admin_key}\n"
        f"aws_secret_access_key = {s3_server.admin_secret}\n"
    )
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(credentials))
    monkeypatch.setenv("AWS_CONFIG_FILE", os.devnull)
    bucket = unique_bucket("prof")
    store = from_location(
        f"{s3_server.endpoint}/{bucket}/p",
        create=True,
        options={"profile": "backup", "region": s3_server.region, "sse": "AES256"},
    )
    try:
        store.put("config", b"sealed")
        assert store.get("config") == b"sealed"
        head = admin.head_object(Bucket=bucket, Key="p/config")
        assert head["ServerSideEncryption"] == "AES256"
    finally:
        store.close()
    with pytest.raises(StoragePermissionDenied, match="profile"):
        from_location(f"{s3_server.endpoint}/{bucket}", create=False, options={"profile": "nope"})


# --- credentials and permissions --------------------------------------------------------


def test_missing_bucket_without_permission_to_create(
    cli: CliRunner, s3env: dict[str, str], s3_server: SeaweedS3, admin: Any
) -> None:
    bucket = unique_bucket("noperm")
    repo = location(s3_server.endpoint, bucket)
    res = cli("-r", repo, "init", "--kdf-log2n", "10", env=s3_server.env(reader=True))
    assert_error(res, ExitCode.STORAGE, "does not exist", "may not create it", "s3:CreateBucket")
    assert bucket not in {b["Name"] for b in admin.list_buckets()["Buckets"]}
    # Opening a repository in a bucket that does not exist: "no repository there".
    res = cli("-r", repo, "snapshots")
    assert res.code == ExitCode.NO_REPOSITORY, res.output


# --- network faults (through the proxy) -------------------------------------------------


def test_server_going_away_mid_backup_fails_cleanly_then_resumes(
    cli: CliRunner, s3env: dict[str, str], proxy: FaultProxy, tmp_path: Path
) -> None:
    repo = location(proxy.url, unique_bucket("away"), "connect_timeout=2&read_timeout=5")
    init(cli, repo)
    src = big_tree(tmp_path / "src", files=3, size=8 * MiB)
    proxy.go_away_after(4 * MiB)  # in the middle of the first pack
    t0 = time.monotonic()
    res = cli("-r", repo, "backup", str(src))
    assert_error(res, ExitCode.STORAGE, "cannot connect")
    assert time.monotonic() - t0 < 60
    proxy.come_back()
    assert snapshot_ids(cli, repo) == []
    backup_json(cli, repo, str(src))
    check_read_data(cli, repo)


def test_slow_server_hits_the_configured_read_timeout(
    cli: CliRunner, s3env: dict[str, str], proxy: FaultProxy
) -> None:
    repo = location(proxy.url, unique_bucket("slow"), "read_timeout=0.5")
    init(cli, repo)
    proxy.delay(90.0)  # a hung server, as far as the client can tell
    t0 = time.monotonic()
    res = cli("-r", repo, "snapshots")
    elapsed = time.monotonic() - t0
    assert_error(res, ExitCode.STORAGE, "did not answer in time", "read_timeout=0.5")
    # Five attempts of 0.5 s plus backoff (and the CLI's start): well before the server.
    assert elapsed < 60, elapsed
    proxy.delay(0)
    assert cli("-r", repo, "snapshots").code == 0


def test_connection_reset_during_multipart_upload_is_retried(
    s3_server: SeaweedS3, proxy: FaultProxy, admin: Any
) -> None:
    bucket = unique_bucket("reset")
    events: list[RetryEvent] = []
    inner = from_location(
        f"{proxy.url}/{bucket}/p", create=True, options=s3_server.options(part_size=5 * MiB)
    )
    store = RetryingStorage(inner, base_delay=0.01, on_retry=events.append)
    try:
        data = os.urandom(11 * MiB)
        # Reset the next connection in the middle of a part, the one after too.
        proxy.reset_after(3 * MiB, connections=2)
        store.put("data/cd/pack", data, exclusive=True)
        assert proxy.resets >= 1
        assert events and isinstance(events[0].error, TransientStorageError)
        assert store.get("data/cd/pack") == data
        # Failed attempts aborted their uploads: no parts left behind.
        assert admin.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
    finally:
        store.close()


def test_slowdown_answers_are_retried_with_backoff(
    cli: CliRunner, s3env: dict[str, str], proxy: FaultProxy, tmp_path: Path
) -> None:
    repo = location(proxy.url, unique_bucket("throttle"))
    init(cli, repo)
    proxy.answer_http(503, 3)  # RetryingStorage makes 5 attempts per call
    backup_json(cli, repo, str(make_sample_tree(tmp_path / "src")))
    assert proxy.answered == 3


def test_slowdown_is_transient(s3_server: SeaweedS3, proxy: FaultProxy) -> None:
    store = from_location(
        f"{proxy.url}/{unique_bucket('sd')}", create=True, options=s3_server.options()
    )
    try:
        proxy.answer_http(503, 1)
        with pytest.raises(TransientStorageError, match="SlowDown"):
            store.put("x", b"payload")
        store.put("x", b"payload")
        assert store.get("x") == b"payload"
    finally:
        store.close()


# --- options ---------------------------------------------------------------------------------


def test_options_are_validated_and_secrets_stay_hidden(s3_server: SeaweedS3) -> None:
    with pytest.raises(ConfigError, match=r"unknown option.*colour"):
        from_location("bucket/p", create=False, options={"colour": "blue", "region": "x"})
    with pytest.raises(ConfigError, match="secret option"):
        open_location("s3:https://example.invalid/b?secret_access_key=x")
    with pytest.raises(ConfigError, match="contains credentials"):
        open_location("s3:https://AKIA:hunter2@example.invalid/b")
    with pytest.raises(ConfigError, match="restored before"):
        from_location("bucket", create=False, options={"storage_class": "GLACIER"})
    with pytest.raises(ConfigError, match="go together"):
        from_location("bucket", create=False, options={"access_key_id": "AKIA"})
    with pytest.raises(ConfigError, match="part_size"):
        from_location("bucket", create=False, options={"part_size": "1MiB", "region": "x"})
    store = from_location(
        f"{s3_server.endpoint}/b/p",
        create=False,
        options=s3_server.options(session_token="session-token-zzz"),
    )
    assert isinstance(store, S3Storage)
    text = f"{store!r} {store.describe()} {store._s!r}"
    assert s3_server.admin_secret not in text and "session-token-zzz" not in text
    store.close()


def test_reader_identity_maps_to_permission_denied(s3_server: SeaweedS3) -> None:
    bucket = unique_bucket("perm")
    writer = from_location(
        f"{s3_server.endpoint}/{bucket}", create=True, options=s3_server.options()
    )
    writer.put("config", b"c")
    writer.close()
    reader = from_location(
        f"{s3_server.endpoint}/{bucket}",
        create=False,
        options={
            "access_key_id": s3_server.reader_key,
            "secret_access_key": s3_server.reader_secret,
        },
    )
    try:
        assert reader.get("config") == b"c"
        with pytest.raises(StoragePermissionDenied, match="access_key_id/secret_access_key"):
            reader.put("x", b"y")
    finally:
        reader.close()
