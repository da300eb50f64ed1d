"""S3 Object Lock (immutable mode) against a real SeaweedFS, which implements it.

The client is the ``writer`` identity of tests/servers/s3.py: what a backup client should
hold in immutable mode (read, write, delete, set and extend retention; no bucket creation,
no bypass). The bucket is made with Object Lock by ``admin``, as an operator would. A
"stolen client" is a plain boto3 client with the writer's credentials doing what it likes.
Retention periods are shortened (so that tests need not wait a day) by ``admin``, which
SeaweedFS lets bypass a GOVERNANCE retention, as an account root or an identity with
s3:BypassGovernanceRetention can on AWS.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from safehold.errors import ConfigError, ExitCode, ObjectNotFound, ObjectRetained
from safehold.storage.s3 import ObjectLocked, S3Storage, from_location
from tests.conftest import CliRunner
from tests.integration.helpers import (
    backup_json,
    restore_and_compare,
    snapshot_ids,
    tree_manifest,
)
from tests.servers.s3 import SeaweedS3, unique_bucket

MiB = 1 << 20
RETAINED = ("config", "keys/k1", "data/ab/ab01", "index/i1", "snapshots/s1", "chains/c1")
UNRETAINED = ("locks/l1", "trash/t1")


def client(server: SeaweedS3, key: str, secret: str) -> Any:
    return boto3.client(
        "s3",
        endpoint_url=server.endpoint,
        aws_access_key_id=key,
        aws_secret_access_key=secret,
        region_name=server.region,
        config=Config(s3={"addressing_style": "path"}, retries={"total_max_attempts": 1}),
    )


@pytest.fixture
def admin(s3_server: SeaweedS3) -> Iterator[Any]:
    c = client(s3_server, s3_server.admin_key, s3_server.admin_secret)
    yield c
    c.close()


@pytest.fixture
def stolen(s3_server: SeaweedS3) -> Iterator[Any]:
    """Whoever stole the backup client's credentials, with any S3 tool."""
    c = client(s3_server, s3_server.writer_key, s3_server.writer_secret)
    yield c
    c.close()


@pytest.fixture
def writer_env(cli_env: dict[str, str], s3_server: SeaweedS3) -> dict[str, str]:
    cli_env.update(s3_server.env(writer=True))
    return cli_env


def lock_bucket(admin: Any, tag: str) -> str:
    bucket = unique_bucket(tag)
    admin.create_bucket(Bucket=bucket, ObjectLockEnabledForBucket=True)
    return bucket


def writer_store(server: SeaweedS3, bucket: str, **options: object) -> S3Storage:
    return from_location(
        f"{server.endpoint}/{bucket}/repo",
        create=True,
        options={
            "access_key_id": server.writer_key,
            "secret_access_key": server.writer_secret,
            "region": server.region,
            "object_lock_days": 1,
            **options,
        },
    )


def versions(admin: Any, bucket: str, key: str) -> tuple[list[dict[str, Any]], list[Any]]:
    """The versions and delete markers of exactly ``key``."""
    page = admin.list_object_versions(Bucket=bucket, Prefix=key)
    found = [v for v in page.get("Versions", []) if v["Key"] == key]
    markers = [m for m in page.get("DeleteMarkers", []) if m["Key"] == key]
    return found, markers


def retention(admin: Any, bucket: str, key: str) -> dict[str, Any] | None:
    head = admin.head_object(Bucket=bucket, Key=key)
    if "ObjectLockMode" not in head:
        return None
    return {"Mode": head["ObjectLockMode"], "RetainUntilDate": head["ObjectLockRetainUntilDate"]}


def expire_soon(admin: Any, bucket: str, keys: list[str], seconds: float = 2.0) -> None:
    """Shorten the retention of each key's current version to end in ``seconds`` (a
    bypass only the admin has); the caller sleeps past it."""
    until = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=seconds)
    for key in keys:
        head = admin.head_object(Bucket=bucket, Key=key)
        admin.put_object_retention(
            Bucket=bucket,
            Key=key,
            VersionId=head["VersionId"],
            BypassGovernanceRetention=True,
            Retention={"Mode": "GOVERNANCE", "RetainUntilDate": until},
        )


# --- the storage ---------------------------------------------------------------------------


def test_every_object_but_locks_and_trash_is_retained(s3_server: SeaweedS3, admin: Any) -> None:
    bucket = lock_bucket(admin, "ret")
    store = writer_store(s3_server, bucket)
    try:
        for name in RETAINED + UNRETAINED:
            store.put(name, f"bytes of {name}".encode())
        soon = dt.datetime.now(dt.UTC) + dt.timedelta(hours=23)
        for name in RETAINED:
            found = admin.get_object_retention(Bucket=bucket, Key=f"repo/{name}")["Retention"]
            assert found["Mode"] == "GOVERNANCE", name
            assert found["RetainUntilDate"] > soon, name
            with pytest.raises(ObjectLocked, match="GOVERNANCE retention until") as caught:
                store.delete(name)
            assert caught.value.until is not None and caught.value.until > soon
            assert isinstance(caught.value, ObjectRetained)  # what prune and forget catch
            assert store.get(name) == f"bytes of {name}".encode(), "a refusal removes nothing"
        for name in UNRETAINED:
            assert retention(admin, bucket, f"repo/{name}") is None, name
            store.delete(name)
            with pytest.raises(ObjectNotFound):
                store.stat(name)
            assert versions(admin, bucket, f"repo/{name}") == ([], []), "no version is kept"
    finally:
        store.close()


def test_a_rewritten_lock_is_deleted_with_all_its_versions(
    s3_server: SeaweedS3, admin: Any
) -> None:
    """A lock is rewritten at every refresh; in a versioned bucket each write is a version,
    and deleting only the newest one brought the previous one back: a ghost lock."""
    bucket = lock_bucket(admin, "ghost")
    store = writer_store(s3_server, bucket)
    try:
        store.put("locks/l1", b"created")
        store.put("locks/l1", b"refreshed")
        store.put("locks/l1", b"refreshed again")
        store.delete("locks/l1")
        assert [o.name for o in store.list("locks/")] == []
        with pytest.raises(ObjectNotFound):
            store.get("locks/l1")
        assert versions(admin, bucket, "repo/locks/l1") == ([], [])
    finally:
        store.close()


def test_compliance_mode_holds_even_against_the_admin(s3_server: SeaweedS3, admin: Any) -> None:
    bucket = lock_bucket(admin, "comp")
    store = writer_store(s3_server, bucket, object_lock_mode="compliance")
    try:
        store.put("snapshots/s1", b"snapshot")
        found = admin.get_object_retention(Bucket=bucket, Key="repo/snapshots/s1")["Retention"]
        assert found["Mode"] == "COMPLIANCE"
        head = admin.head_object(Bucket=bucket, Key="repo/snapshots/s1")
        with pytest.raises(ClientError, match="AccessDenied"):
            admin.delete_object(
                Bucket=bucket,
                Key="repo/snapshots/s1",
                VersionId=head["VersionId"],
                BypassGovernanceRetention=True,
            )
        with pytest.raises(ObjectLocked, match="COMPLIANCE retention until"):
            store.delete("snapshots/s1")
        assert store.get("snapshots/s1") == b"snapshot"
    finally:
        store.close()


def test_lock_mode_options_are_validated() -> None:
    with pytest.raises(ConfigError, match="governance or compliance"):
        from_location("b/p", create=False, options={"object_lock_days": 1,
                                                    "object_lock_mode": "forever"})  # fmt: skip
    with pytest.raises(ConfigError, match="needs object_lock_days"):
        from_location("b/p", create=False, options={"object_lock_mode": "compliance"})


# --- the repository: a stolen client ---------------------------------------------------------


def location(server: SeaweedS3, bucket: str, query: str = "object_lock_days=1") -> str:
    return f"s3:{server.endpoint}/{bucket}/repo?{query}"


def init(cli: CliRunner, repo: str) -> None:
    res = cli("-r", repo, "init", "--kdf-log2n", "10")
    assert res.code == 0, res.output


def repository_keys(admin: Any, bucket: str) -> list[str]:
    page = admin.list_objects_v2(Bucket=bucket, Prefix="repo/")
    return sorted(o["Key"] for o in page.get("Contents", []))


def test_a_stolen_client_cannot_delete_or_replace_what_the_repository_needs(
    cli: CliRunner,
    writer_env: dict[str, str],
    s3_server: SeaweedS3,
    admin: Any,
    stolen: Any,
    tmp_path: Path,
) -> None:
    bucket = lock_bucket(admin, "stolen")
    repo = location(s3_server, bucket)
    init(cli, repo)
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_bytes(os.urandom(MiB))
    first = tree_manifest(src)
    backup_json(cli, repo, str(src))
    (src / "f").write_bytes(os.urandom(MiB))
    second = tree_manifest(src)
    newest = backup_json(cli, repo, str(src))["snapshot"]

    # Every object the repository holds is retained; no lock was left behind.
    keys = repository_keys(admin, bucket)
    kinds = {k.removeprefix("repo/").split("/")[0] for k in keys}
    assert {"config", "keys", "data", "index", "snapshots"} <= kinds, kinds
    assert "locks" not in kinds
    for key in keys:
        assert retention(admin, bucket, key) is not None, f"{key} is not retained"

    # The stolen client's deletes of object versions are all refused, with or without
    # asking to bypass the retention (it has no right to).
    for key in keys:
        head = stolen.head_object(Bucket=bucket, Key=key)
        for bypass in (False, True):
            with pytest.raises(ClientError, match="AccessDenied"):
                stolen.delete_object(
                    Bucket=bucket, Key=key, VersionId=head["VersionId"],
                    BypassGovernanceRetention=bypass,
                )  # fmt: skip
    assert repository_keys(admin, bucket) == keys

    # Replacing an object only adds a version on top: check sees the damage, and copying
    # the retained version back repairs it.
    snap_key = f"repo/snapshots/{newest}"
    original = stolen.head_object(Bucket=bucket, Key=snap_key)["VersionId"]
    stolen.put_object(Bucket=bucket, Key=snap_key, Body=b"junk")
    assert cli("-r", repo, "check").code == ExitCode.INTEGRITY
    stolen.copy_object(
        Bucket=bucket, Key=snap_key,
        CopySource={"Bucket": bucket, "Key": snap_key, "VersionId": original},
    )  # fmt: skip
    assert cli("-r", repo, "check").code == 0

    # A plain delete (no version) only hides an object behind a delete marker. Hiding the
    # newest snapshot rolls "latest" back without a word (as in restic)...
    marker = stolen.delete_object(Bucket=bucket, Key=snap_key)
    assert marker["DeleteMarker"] is True
    restore_and_compare(cli, repo, "latest", src, first, tmp_path / "restore")
    # ...and with every snapshot hidden, check --max-age notices there is none.
    for snap in snapshot_ids(cli, repo):
        stolen.delete_object(Bucket=bucket, Key=f"repo/snapshots/{snap}")
    assert snapshot_ids(cli, repo) == []
    overdue = cli("-r", repo, "check", "--max-age", "24h")
    assert overdue.code == ExitCode.OVERDUE, overdue.output
    assert "no snapshot" in overdue.output
    # The versions are still there; removing the markers brings the snapshots back.
    page = admin.list_object_versions(Bucket=bucket, Prefix="repo/snapshots/")
    assert len(page.get("DeleteMarkers", [])) == 2
    for m in page["DeleteMarkers"]:
        stolen.delete_object(Bucket=bucket, Key=m["Key"], VersionId=m["VersionId"])
    assert newest in snapshot_ids(cli, repo)
    restore_and_compare(cli, repo, "latest", src, second, tmp_path / "restore")
    res = cli("-r", repo, "check", "--read-data", "--max-age", "24h")
    assert res.code == 0, res.output


# --- forget and prune respect it -------------------------------------------------------------


def two_backups(cli: CliRunner, repo: str, tmp_path: Path) -> tuple[Path, list[str]]:
    src = tmp_path / "src"
    src.mkdir()
    ids = []
    for _ in range(2):
        # New content each time: the first snapshot's pack becomes unused once it goes.
        (src / "f").write_bytes(os.urandom(2 * MiB))
        ids.append(backup_json(cli, repo, str(src))["snapshot"])
    return src, ids


def test_forget_reports_retained_snapshots_and_removes_them_later(
    cli: CliRunner,
    writer_env: dict[str, str],
    s3_server: SeaweedS3,
    admin: Any,
    tmp_path: Path,
) -> None:
    bucket = lock_bucket(admin, "forget")
    repo = location(s3_server, bucket)
    init(cli, repo)
    _src, (old, new) = two_backups(cli, repo, tmp_path)

    res = cli("-r", repo, "forget", "--keep-last", "1")
    assert res.code == 0, res.output
    assert "retained until" in res.stdout and "removed 0 snapshot(s)" in res.stdout
    doc = json.loads(cli("-r", repo, "forget", "--keep-last", "1", "--json").stdout)
    assert doc["removed"] == []
    [kept] = doc["retained"]
    assert kept["id"] == old
    until = dt.datetime.fromisoformat(kept["until"])
    assert until > dt.datetime.now(dt.UTC) + dt.timedelta(hours=23)
    assert sorted(snapshot_ids(cli, repo)) == sorted([old, new])

    expire_soon(admin, bucket, [f"repo/snapshots/{old}"])
    time.sleep(2.5)
    res = cli("-r", repo, "forget", "--keep-last", "1", "--json")
    assert res.code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["removed"] == [old] and doc["retained"] == []
    assert snapshot_ids(cli, repo) == [new]


def test_prune_keeps_retained_packs_and_index_files_and_loses_nothing(
    cli: CliRunner,
    writer_env: dict[str, str],
    s3_server: SeaweedS3,
    admin: Any,
    tmp_path: Path,
) -> None:
    bucket = lock_bucket(admin, "prune")
    repo = location(s3_server, bucket)
    init(cli, repo)
    src, (old, new) = two_backups(cli, repo, tmp_path)
    expected = tree_manifest(src)
    expire_soon(admin, bucket, [f"repo/snapshots/{old}"])
    time.sleep(2.5)
    res = cli("-r", repo, "forget", "--keep-last", "1", "--prune", "--lock-skew", "0s", "--json")
    assert res.code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["removed"] == [old]
    # The old index files and the unused pack are retained: both stay, the run succeeds.
    assert doc["prune"]["mark"]["index_files_retained"] >= 1
    assert doc["prune"]["swept"]["packs_retained"] >= 1
    pruned = cli("-r", repo, "prune", "--lock-skew", "0s", "--json")
    assert pruned.code == 0, pruned.output
    earlier = json.loads(pruned.stdout)["earlier"]
    assert earlier["packs_retained"] >= 1 and earlier["packs_deleted"] == 0
    res = cli("-r", repo, "check", "--read-data")
    assert res.code == 0, res.output
    restore_and_compare(cli, repo, "latest", src, expected, tmp_path / "restore")
    assert snapshot_ids(cli, repo) == [new]


# --- what the repository needs stays retained ------------------------------------------------


def retained_until(admin: Any, bucket: str, key: str) -> dt.datetime:
    found = admin.get_object_retention(Bucket=bucket, Key=key)["Retention"]["RetainUntilDate"]
    assert isinstance(found, dt.datetime)
    return found


def test_forget_prune_extends_the_retention_of_what_the_repository_needs(
    cli: CliRunner,
    writer_env: dict[str, str],
    s3_server: SeaweedS3,
    admin: Any,
    tmp_path: Path,
) -> None:
    """Retention runs from the write: the key files and a chain's first packs would lose it
    while still needed. forget --prune renews it for what is needed, not for trash."""
    bucket = lock_bucket(admin, "extend")
    repo = location(s3_server, bucket)
    init(cli, repo)
    src = tmp_path / "src"
    src.mkdir()
    (src / "kept").write_bytes(os.urandom(MiB))  # in both snapshots: its pack stays needed
    old = backup_json(cli, repo, str(src))["snapshot"]
    first_packs = {k for k in repository_keys(admin, bucket) if k.startswith("repo/data/")}
    (src / "new").write_bytes(os.urandom(MiB))  # the first snapshot's trees become unused
    backup_json(cli, repo, str(src))
    keys = repository_keys(admin, bucket)
    # As if the repository were older than the period: the config, the key file and every
    # pack of the first backup have an hour left; the old snapshot has run out.
    aged = [k for k in keys if k == "repo/config" or k.startswith("repo/keys/")]
    aged += sorted(first_packs)
    expire_soon(admin, bucket, aged, seconds=3600)
    expire_soon(admin, bucket, [f"repo/snapshots/{old}"])
    time.sleep(2.5)

    res = cli("-r", repo, "forget", "--keep-last", "1", "--prune", "--lock-skew", "0s", "--json")
    assert res.code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["prune"]["swept"]["packs_retained"] == 1, doc["prune"]  # the old trees' pack
    assert doc["retention"]["failed"] == []
    soon = dt.datetime.now(dt.UTC) + dt.timedelta(hours=23)
    renewed = {k for k in aged if retained_until(admin, bucket, k) > soon}
    # The config, the key file and the pack of "kept" were renewed; the pack of the old
    # snapshot's trees (in the trash now) was left to run out.
    assert "repo/config" in renewed
    assert any(k.startswith("repo/keys/") for k in renewed)
    assert len(first_packs - renewed) == 1 and len(first_packs & renewed) == 1
    assert doc["retention"]["extended"] == len(renewed)
    # A second run finds nothing due.
    res = cli("-r", repo, "forget", "--keep-last", "1", "--prune", "--lock-skew", "0s", "--json")
    assert json.loads(res.stdout)["retention"]["extended"] == 0
