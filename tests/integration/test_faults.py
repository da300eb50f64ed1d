"""Faults met through the real CLI: each gives its documented exit code (README.md,
``safehold.errors.ExitCode``), a message that names the problem and the way out, and leaves
every stored backup as it was (an earlier snapshot still restores bit-identical)."""

from __future__ import annotations

import ctypes
import errno
import json
import os
import shlex
import socket
import subprocess
import sys
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from safehold.engine.restore.folders import Folder
from safehold.engine.restore.write import FileWriter, OpenFile
from safehold.errors import ExitCode, TargetError
from safehold.repository import lock as lockmod
from safehold.repository.format import T_LOCK, seal_object
from safehold.storage.local import TEMP_PREFIX
from tests.conftest import PASSWORD, CliResult, CliRunner
from tests.integration.conftest import Stored
from tests.integration.helpers import (
    Manifest,
    assert_error,
    backup_json,
    check_passes,
    diff_manifests,
    lock_files,
    open_repo,
    pack_files,
    repo_files,
    restore_and_compare,
    restored_root,
    snapshot_ids,
    tree_manifest,
    verify_structure,
)

Tmpfs = Callable[[str, str], Path]
MiB = 1024 * 1024


def assert_intact(cli: CliRunner, s: Stored, tmp_path: Path, *, also: tuple[str, ...] = ()) -> None:
    """The stored snapshot (and ``also``: more snapshot ids) is still listed, the structure
    is sound (``check``, or the library while ``check`` is not built) and it restores
    bit-identical."""
    ids = snapshot_ids(cli, s.repo)
    assert s.snapshot in ids
    assert set(also) <= set(ids)
    verify_structure(open_repo(Path(s.repo), PASSWORD))
    check_passes(cli, s.repo)
    restore_and_compare(cli, s.repo, s.snapshot, s.src, s.manifest, tmp_path / "verify")


# --- where the repository is, and who may open it ------------------------------------------


def test_wrong_password_exits_12_and_changes_nothing(
    cli: CliRunner, stored: Stored, tmp_path: Path
) -> None:
    before = repo_files(Path(stored.repo))
    target = str(tmp_path / "target")
    for args in (["snapshots"], ["backup", str(stored.src)], ["restore", "latest", "-t", target]):
        res = cli("-r", stored.repo, *args, env={"SAFEHOLD_PASSWORD": "not the password"})
        assert_error(res, ExitCode.WRONG_PASSWORD, "wrong password", "SAFEHOLD_PASSWORD")
    assert repo_files(Path(stored.repo)) == before
    assert not lock_files(Path(stored.repo))
    assert snapshot_ids(cli, stored.repo) == [stored.snapshot]
    assert_intact(cli, stored, tmp_path)


def test_no_repository_there_exits_10_and_creates_nothing(
    cli: CliRunner, stored: Stored, tmp_path: Path
) -> None:
    missing = tmp_path / "no-such-repo"
    empty = tmp_path / "empty-folder"
    empty.mkdir()
    for where in (missing, empty):
        for args in (["backup", str(stored.src)], ["snapshots"]):
            res = cli("-r", str(where), *args)
            assert_error(res, ExitCode.NO_REPOSITORY, "no repository", "safehold init", "--repo")
    # A mistyped --repo must not start a repository there.
    assert not missing.exists()
    assert list(empty.iterdir()) == []
    assert_intact(cli, stored, tmp_path)


def test_folder_that_is_not_a_repository_exits_10(
    cli: CliRunner, stored: Stored, tmp_path: Path
) -> None:
    # Someone's data folder given as --repo by mistake: it must be reported and left alone.
    folder = stored.src
    before = tree_manifest(folder)
    for args in (["backup", str(folder)], ["snapshots"], ["check"]):
        res = cli("-r", str(folder), *args)
        assert_error(
            res, ExitCode.NO_REPOSITORY, "is not a safehold repository", str(folder), "--repo"
        )
    assert tree_manifest(folder) == before
    assert_intact(cli, stored, tmp_path)


def test_init_over_a_repository_or_a_used_folder_exits_2(
    cli: CliRunner, stored: Stored, tmp_path: Path
) -> None:
    before = repo_files(Path(stored.repo))
    res = cli("-r", stored.repo, "init", "--kdf-log2n", "10", env={"SAFEHOLD_PASSWORD": "other"})
    assert_error(
        res, ExitCode.USAGE, "already exists", stored.repo, "choose an empty or new location"
    )
    assert repo_files(Path(stored.repo)) == before  # no key added, config not replaced

    folder = stored.src
    data_before = tree_manifest(folder)
    res = cli("-r", str(folder), "init", "--kdf-log2n", "10")
    assert_error(res, ExitCode.USAGE, "not empty", "holds no repository", "empty or new location")
    assert tree_manifest(folder) == data_before
    assert_intact(cli, stored, tmp_path)


# --- locks ---------------------------------------------------------------------------------

HOLD_LOCK = """
import sys
from safehold.app import open_repository
from safehold.cli.context import read_password

repo = open_repository(sys.argv[1], read_password(None, None))
lock = repo.lock("test", exclusive=True)
print("locked", flush=True)
sys.stdin.read()  # hold the lock until the test closes our stdin
lock.release()
print("released", flush=True)
"""


def test_repository_locked_by_a_live_process_exits_11(
    cli: CliRunner, cli_env: dict[str, str], stored: Stored, tmp_path: Path
) -> None:
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, stored.repo],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env=cli_env,
        text=True,
    )
    assert holder.stdin is not None and holder.stdout is not None
    try:
        assert holder.stdout.readline().strip() == "locked"
        target = str(tmp_path / "target")
        for args in (["backup", str(stored.src)], ["restore", "latest", "-t", target]):
            res = cli("-r", stored.repo, *args)
            assert_error(
                res,
                ExitCode.LOCKED,
                "locked",
                f"PID {holder.pid}",
                socket.gethostname(),
                "exclusive",
                "safehold unlock",
            )
        # The refused backup saved nothing and took its own lock away again.
        assert snapshot_ids(cli, stored.repo) == [stored.snapshot]
        assert len(lock_files(Path(stored.repo))) == 1
    finally:
        holder.stdin.close()
        out = holder.stdout.read()
        holder.wait(timeout=60)
    assert out.strip() == "released"
    assert not lock_files(Path(stored.repo))
    doc = backup_json(cli, stored.repo, str(stored.src))
    assert_intact(cli, stored, tmp_path, also=(doc["snapshot"],))


def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    try:
        os.kill(proc.pid, 0)
    except ProcessLookupError:
        return proc.pid
    pytest.skip(f"PID {proc.pid} was reused at once; cannot fake a dead holder")


def _plant_lock(repo: str, *, hostname: str, pid: int, refreshed_ago: timedelta) -> str:
    r = open_repo(Path(repo), PASSWORD)
    now = datetime.now(UTC)
    info = lockmod.LockInfo(
        name=lockmod.PREFIX + "ab" * 16,
        created=now - refreshed_ago,
        refreshed=now - refreshed_ago,
        hostname=hostname,
        pid=pid,
        exclusive=True,
        kind="prune",
        holder=lockmod.this_holder(),  # as if taken here: a dead PID then makes it stale
    )
    r.storage.put(info.name, seal_object(r.aead, T_LOCK, json.dumps(info.to_json()).encode()))
    return info.name.removeprefix(lockmod.PREFIX)


@pytest.mark.parametrize(
    ("case", "stale"),
    [
        ("this host, process gone", True),
        ("other host, refreshed 2 hours ago", True),
        ("other host, refreshed just now", False),
    ],
)
def test_stale_lock_is_removed_by_the_next_backup(
    cli: CliRunner, stored: Stored, tmp_path: Path, case: str, stale: bool
) -> None:
    here = case.startswith("this host")
    name = _plant_lock(
        stored.repo,
        hostname=socket.gethostname() if here else "elsewhere.example",
        pid=_dead_pid() if here else 4242,
        refreshed_ago=timedelta(hours=2) if "hours" in case else timedelta(0),
    )
    assert lock_files(Path(stored.repo)) == [name]
    res = cli("-r", stored.repo, "backup", "--json", str(stored.src))
    if stale:
        # A lock nobody holds must not block backups forever: it is removed.
        assert res.code == 0, res.output
        assert not lock_files(Path(stored.repo))
        assert_intact(cli, stored, tmp_path, also=(json.loads(res.stdout)["snapshot"],))
    else:
        # Whether a process on another host lives cannot be known: wait until it is stale.
        assert_error(res, ExitCode.LOCKED, "locked", "elsewhere.example", "PID 4242")
        assert lock_files(Path(stored.repo)) == [name]
        assert snapshot_ids(cli, stored.repo) == [stored.snapshot]


# --- sources -------------------------------------------------------------------------------


def test_source_path_that_does_not_exist_exits_2(
    cli: CliRunner, stored: Stored, tmp_path: Path
) -> None:
    before = repo_files(Path(stored.repo))
    gone = tmp_path / "no" / "such" / "folder"
    for paths in ([str(gone)], [str(stored.src), str(gone)]):
        res = cli("-r", stored.repo, "backup", *paths)
        assert_error(res, ExitCode.USAGE, "does not exist", str(gone), "check the path")
    assert repo_files(Path(stored.repo)) == before
    assert_intact(cli, stored, tmp_path)


@pytest.mark.parametrize(
    ("command", "words"),
    [
        (
            'sh -c "echo partial; exit 3"',
            ("sh exited with status 3", "no snapshot was saved", "fix the command"),
        ),
        (
            "no-such-command-for-safehold --dump",
            ("could not start", "no-such-command-for-safehold", "no such file"),
        ),
    ],
)
def test_command_source_that_fails_exits_6_and_saves_no_snapshot(
    cli: CliRunner, stored: Stored, tmp_path: Path, command: str, words: tuple[str, ...]
) -> None:
    before = cli("-r", stored.repo, "snapshots", "--json")
    assert before.code == 0
    res = cli("-r", stored.repo, "backup", "--command", command, "--stdin-name", "x")
    assert_error(res, ExitCode.SOURCE, *words)
    after = cli("-r", stored.repo, "snapshots", "--json")
    assert after.stdout == before.stdout
    assert not lock_files(Path(stored.repo))
    assert_intact(cli, stored, tmp_path)


def test_command_source_stores_exactly_its_output(
    cli: CliRunner, stored: Stored, tmp_path: Path
) -> None:
    payload = tmp_path / "payload.bin"
    # Several chunks' worth, some incompressible and some not, without a trailing newline.
    payload.write_bytes(os.urandom(5 * MiB) + b"row,value\n" * 300_000 + b"\x00\xff end")
    script = f"cat {shlex.quote(str(payload))}; printf 'trailer'"
    doc = backup_json(
        cli, stored.repo, "--command", f"sh -c {shlex.quote(script)}", "--stdin-name", "db.dump"
    )
    snaps = json.loads(cli("-r", stored.repo, "snapshots", "--json").stdout)
    mine = next(s for s in snaps if s["id"] == doc["snapshot"])
    assert mine["paths"] == ["/db.dump"]
    target = tmp_path / "restored"
    res = cli("-r", stored.repo, "restore", doc["snapshot"], "--target", str(target))
    assert res.code == 0, res.output
    assert sorted(p.name for p in target.iterdir()) == ["db.dump"]
    assert (target / "db.dump").read_bytes() == payload.read_bytes() + b"trailer"
    assert_intact(cli, stored, tmp_path, also=(doc["snapshot"],))


PR_CAPBSET_DROP = 24
CAP_DAC_OVERRIDE = 1
CAP_DAC_READ_SEARCH = 2


def _drop_file_read_override() -> None:
    """In the child before exec: give up root's right to ignore file permissions, as a
    backup running as a non-root ``backup_user`` would not have it."""
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH):
        if libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


def _run_without_override(env: dict[str, str], *args: str) -> CliResult:
    proc = subprocess.run(
        [sys.executable, "-m", "safehold", *args],
        capture_output=True,
        env=env,
        preexec_fn=_drop_file_read_override,
        timeout=120,
        check=False,
    )
    return CliResult(proc.returncode, proc.stdout.decode(), proc.stderr.decode())


def _back_up_unreadable(
    cli: CliRunner, env: dict[str, str], s: Stored
) -> tuple[Path, dict[str, Any], Manifest]:
    """Adds a mode-000 file to the source and backs up without root's override.
    Returns the file, the backup's JSON reply and the source manifest."""
    secret = s.src / "sub" / "secret.db"
    secret.write_bytes(b"s" * 70_000)
    secret.chmod(0o000)
    probe = subprocess.run(
        ["cat", str(secret)],
        capture_output=True,
        preexec_fn=_drop_file_read_override,
        check=False,
    )
    if probe.returncode == 0:
        pytest.skip("cannot make a file unreadable here: dropping CAP_DAC_OVERRIDE had no effect")
    expected = tree_manifest(s.src)
    res = _run_without_override(env, "-r", s.repo, "backup", "--json", str(s.src))
    assert res.code == ExitCode.PARTIAL, res.output
    assert str(secret) in res.stderr and "permission denied" in res.stderr.lower()
    assert "could not be read" in res.stderr
    doc: dict[str, Any] = json.loads(res.stdout)
    return secret, doc, expected


def test_unreadable_file_is_reported_and_the_rest_saved(
    cli: CliRunner, cli_env: dict[str, str], stored: Stored, tmp_path: Path
) -> None:
    """Tests run as root, and root reads any file. The backup here runs without the
    DAC override capabilities (what a non-root backup user has), so a mode-000 file is
    really unreadable to it: exit 3, the file named, the rest saved and restorable."""
    secret, doc, expected = _back_up_unreadable(cli, cli_env, stored)
    assert doc["errors"] == [{"path": str(secret), "error": "Permission denied"}]
    snap = next(
        s
        for s in json.loads(cli("-r", stored.repo, "snapshots", "--json").stdout)
        if s["id"] == doc["snapshot"]
    )
    assert [e["path"] for e in snap["errors"]] == [str(secret)]
    target = tmp_path / "restored"
    cli("-r", stored.repo, "restore", doc["snapshot"], "--target", str(target))
    root = restored_root(target, stored.src)
    # Everything else restores bit-identical (what restore makes of the unreadable file is
    # the next test's subject).
    del expected["sub/secret.db"]
    got = tree_manifest(root)
    got.pop("sub/secret.db", None)
    assert diff_manifests(expected, got) == []
    assert_intact(cli, stored, tmp_path, also=(doc["snapshot"],))


def test_unreadable_file_is_not_restored_as_made_up_content(
    cli: CliRunner, cli_env: dict[str, str], stored: Stored, tmp_path: Path
) -> None:
    """safehold never saw the unreadable file's content. A restore must not write a file of
    its old size (zeros) as if it had been read, and must say what it did not restore
    (exit 3, the file named)."""
    _secret, doc, _expected = _back_up_unreadable(cli, cli_env, stored)
    target = tmp_path / "restored"
    res = cli("-r", stored.repo, "restore", doc["snapshot"], "--target", str(target))
    got = restored_root(target, stored.src) / "sub" / "secret.db"
    assert not (got.exists() and got.stat().st_size == 70_000), (
        f"the unreadable file was restored as 70000 bytes nobody read (exit {res.code})"
    )
    assert res.code == ExitCode.PARTIAL, res.output
    assert "secret.db" in res.stderr and "unreadable" in res.stderr, (
        f"restore must name the file it did not restore and why: {res.stderr!r}"
    )


def test_fifo_is_saved_as_a_fifo_and_never_read(
    cli: CliRunner, stored: Stored, tmp_path: Path
) -> None:
    # Opening a FIFO for reading blocks until a writer comes: a backup that read it would
    # hang here (the CLI runner's timeout fails the test).
    os.mkfifo(stored.src / "pipe")
    expected = tree_manifest(stored.src)
    doc = backup_json(cli, stored.repo, str(stored.src), timeout=60)
    restore_and_compare(cli, stored.repo, doc["snapshot"], stored.src, expected, tmp_path / "r")
    assert expected["pipe"].kind == "fifo"


# --- full disks ----------------------------------------------------------------------------


def _temp_files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.name.startswith(TEMP_PREFIX)]


def test_full_storage_during_backup_exits_5_and_keeps_earlier_snapshots(
    cli: CliRunner, tmp_path: Path, tmpfs: Tmpfs
) -> None:
    disk = tmpfs("disk", "8m")
    repo = str(disk / "repo")
    assert cli("-r", repo, "init", "--kdf-log2n", "10").code == 0
    small = tmp_path / "small"
    small.mkdir()
    (small / "a.txt").write_bytes(b"first backup\n" * 1000)
    (small / "b.bin").write_bytes(os.urandom(1 * MiB))
    small_manifest = tree_manifest(small)
    first = backup_json(cli, repo, str(small))["snapshot"]

    big = tmp_path / "big"
    big.mkdir()
    for i in range(4):
        (big / f"f{i}.bin").write_bytes(os.urandom(5 * MiB))
    big_manifest = tree_manifest(big)
    res = cli("-r", repo, "backup", str(big))
    assert_error(res, ExitCode.STORAGE, "is full", "free space")
    assert snapshot_ids(cli, repo) == [first]
    assert not lock_files(Path(repo)), "the failed backup left its lock"
    assert not _temp_files(disk), "the failed backup left temporary files on the full disk"
    left = pack_files(Path(repo))
    check_passes(cli, repo)
    verify_structure(open_repo(Path(repo), PASSWORD))
    restore_and_compare(cli, repo, first, small, small_manifest, tmp_path / "r")

    # Space is freed (the filesystem grown); the same backup now completes.
    grown = subprocess.run(
        ["mount", "-o", "remount,size=64m", str(disk)], capture_output=True, text=True
    )
    assert grown.returncode == 0, grown.stderr
    second = backup_json(cli, repo, str(big))["snapshot"]
    assert left <= pack_files(Path(repo))
    assert snapshot_ids(cli, repo) == [first, second]
    check_passes(cli, repo)
    verify_structure(open_repo(Path(repo), PASSWORD))
    restore_and_compare(cli, repo, first, small, small_manifest, tmp_path / "r")
    restore_and_compare(cli, repo, second, big, big_manifest, tmp_path / "r")


def test_full_target_during_restore_exits_7_and_leaves_repository_alone(
    cli: CliRunner, stored: Stored, tmp_path: Path, tmpfs: Tmpfs
) -> None:
    target = tmpfs("target", "1m")  # the snapshot holds more than 3 MiB
    before = repo_files(Path(stored.repo))
    res = cli("-r", stored.repo, "restore", stored.snapshot, "--target", str(target))
    assert_error(res, ExitCode.TARGET, "restore target is full", "free space", "--target")
    assert "repository is unchanged" in res.stderr
    assert repo_files(Path(stored.repo)) == before
    assert not lock_files(Path(stored.repo))
    assert_intact(cli, stored, tmp_path)


def test_full_target_during_a_direct_write(tmpfs: Tmpfs) -> None:
    """A large blob goes to disk with direct I/O: a full target is still named as such."""
    target = tmpfs("direct", "1m")
    writer = FileWriter(owner=False, overwrite=True)
    with Folder.top(str(target)) as folder:  # closed after: the tmpfs unmounts
        f = OpenFile(folder, "big", (0o100644, 0, 0, 0), 3 * MiB, 1, False)
        with pytest.raises(TargetError, match="restore target is full") as err:
            writer.put(f, os.urandom(3 * MiB), 0)
    assert "free space" in (err.value.hint or "")
    assert f.fd == -1  # closed after the failure: the tmpfs unmounts


def test_tmpfs_really_fills(tmpfs: Tmpfs) -> None:
    """The full-disk tests rely on the kernel's ENOSPC from a small tmpfs."""
    disk = tmpfs("probe", "1m")
    with pytest.raises(OSError) as exc, open(disk / "f", "wb") as f:
        f.write(os.urandom(2 * MiB))
        f.flush()
    assert exc.value.errno == errno.ENOSPC
