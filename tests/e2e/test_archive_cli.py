"""``safehold archive`` through the real command line."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from datetime import timedelta
from pathlib import Path

import pytest

from safehold.clock import FakeClock
from safehold.engine.backup import BackupOptions, run_backup
from safehold.repository.repository import Repository
from safehold.storage.local import LocalStorage
from tests.archive_trees import (
    NOBODY,
    differences,
    gnu_extract,
    make_tree,
    member,
    plain_tar,
    put_archive,
)
from tests.conftest import PASSWORD, CliRunner
from tests.integration.helpers import assert_same_tree, restored_root, tree_manifest


def test_write_list_restore_forget(
    cli: CliRunner, cli_repo: str, sample_tree: Path, tmp_path: Path
) -> None:
    dest = str(tmp_path / "plain")
    phrase = tmp_path / "phrase"
    phrase.write_text("archive secret\n")
    assert cli("-r", cli_repo, "backup", str(sample_tree)).code == 0
    res = cli(
        "-r",
        cli_repo,
        "archive",
        "write",
        "--to",
        dest,
        "--prefix",
        "svc",
        "--passphrase-file",
        str(phrase),
        "--json",
    )
    assert res.code == 0, res.output
    written = json.loads(res.stdout)
    assert written["encrypted"] and written["name"].startswith("svc/")
    assert (Path(dest) / (written["name"] + ".sha256")).is_file()

    listed = cli("archive", "list", dest, "--prefix", "svc", "--json")
    assert listed.code == 0, listed.output
    assert [e["name"] for e in json.loads(listed.stdout)] == [written["name"]]

    # Encrypted and no passphrase: a usage error that says so, nothing extracted.
    target = tmp_path / "out"
    res = cli("archive", "restore", dest, "latest", "--prefix", "svc", "--target", str(target))
    assert res.code == 2 and "passphrase" in res.stderr, res.output
    res = cli(
        "archive",
        "restore",
        dest,
        "--prefix",
        "svc",
        "--target",
        str(target),
        env={"SAFEHOLD_ARCHIVE_PASSPHRASE": "wrong"},
    )
    assert res.code == 12, res.output
    res = cli(
        "archive",
        "restore",
        dest,
        written["snapshot"],
        "--prefix",
        "svc",
        "--target",
        str(target),
        "--passphrase-file",
        str(phrase),
    )
    assert res.code == 0, res.output
    assert_same_tree(tree_manifest(sample_tree), restored_root(target, sample_tree), mtimes=False)

    # A newer snapshot's archive, then keep only the newest. Archive names carry the
    # snapshot's time to the second: two in one second have no order, so the newer one is
    # saved through a clock set to the next second (not by sleeping past it).
    (sample_tree / "hello.txt").write_text("changed\n")
    repo = Repository.open(LocalStorage(Path(cli_repo)), PASSWORD)
    first = repo.find_snapshot(written["snapshot"])
    repo.clock = FakeClock(first.time + timedelta(seconds=1))
    run_backup(repo, BackupOptions(paths=[str(sample_tree)]))
    assert cli("-r", cli_repo, "archive", "write", "--to", dest, "--prefix", "svc").code == 0
    res = cli("archive", "forget", dest, "--prefix", "svc", "--keep-last", "1", "--json")
    assert res.code == 0, res.output
    out = json.loads(res.stdout)
    assert len(out["keep"]) == 1 and len(out["remove"]) == 1
    assert out["remove"][0]["name"] == written["name"]
    left = json.loads(cli("archive", "list", dest, "--prefix", "svc", "--json").stdout)
    assert [e["name"] for e in left] == [out["keep"][0]["name"]]
    assert "keep_last" not in res.stderr
    assert cli("archive", "forget", dest, "--prefix", "svc").code == 2


@pytest.mark.skipif(
    os.geteuid() != 0 or not all(shutil.which(t) for t in ("setpriv", "tar", "rsync")),
    reason="needs root (to become nobody), setpriv, GNU tar and rsync",
)
def test_restore_as_another_user_matches_gnu_tar(cli: CliRunner, cli_repo: str) -> None:
    # In a folder of /tmp nobody can reach (pytest's own are private to root).
    tmp = Path(tempfile.mkdtemp(prefix="safehold-nobody-"))
    tmp.chmod(0o777)
    try:
        _restore_as_nobody(cli, cli_repo, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _restore_as_nobody(cli: CliRunner, repo: str, tmp: Path) -> None:
    src = make_tree(tmp / "src", devices=True)
    assert cli("-r", repo, "backup", str(src)).code == 0
    dest = tmp / "dest"
    res = cli("-r", repo, "archive", "write", "--to", str(dest), "--json")
    assert res.code == 0, res.output
    name = json.loads(res.stdout)["name"]
    subprocess.run(["chmod", "-R", "a+rX", str(dest)], check=True)  # readable by that user

    env = {k: v for k, v in os.environ.items() if not k.startswith("SAFEHOLD_")}
    env["HOME"] = str(tmp)
    ours = tmp / "ours"
    cmd = ["archive", "restore", str(dest), "--target", str(ours), "--json"]

    def restore() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*NOBODY, sys.executable, "-m", "safehold", *cmd],
            env=env,
            capture_output=True,
            text=True,
            check=False,
            umask=0o022,
        )

    done = restore()
    gnu_status = gnu_extract(plain_tar(dest / name, tmp / "a.tar"), tmp / "gnu", as_nobody=True)

    # Everything that user may make, as GNU tar makes it for that user: its own files,
    # modes less the umask and without set-id or sticky bits, read-only folders with their
    # files in them; the devices it may not make are named (exit 3; tar exits 2).
    assert done.returncode == 3 and gnu_status == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert differences(ours, tmp / "gnu") == []
    report = json.loads(done.stdout)
    assert sorted(e["path"].rsplit("/", 1)[1] for e in report["errors"]) == ["blockdev", "chardev"]
    assert done.stderr.count("could not restore") == 2, done.stderr
    mine = ours / src.relative_to("/")
    assert (mine / "ro-dir" / "inside.txt").read_bytes().startswith(b"ro-dir/inside.txt")
    assert (mine / "setuid").stat().st_mode & 0o7777 == 0o755
    assert (mine / "gw.txt").stat().st_uid == 65534
    # Again into the same target, over its read-only files and folders (tar fails there:
    # 'Cannot open: File exists'): the same again.
    again = restore()
    assert again.returncode == 3 and "Traceback" not in again.stderr, again.stderr
    assert differences(ours, tmp / "gnu") == []


def test_hostile_archive_is_refused_with_exit_4(cli: CliRunner, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    dest = tmp_path / "dest"
    put_archive(
        LocalStorage(dest, create=True),
        [
            (member("fine.txt"), b"fine"),
            (member("l", tarfile.SYMTYPE, linkname=str(outside)), b""),
            (member("l/planted"), b"through the link"),
            (member("../up"), b"up"),
        ],
    )
    target = tmp_path / "target"
    res = cli("archive", "restore", str(dest), "--target", str(target))
    assert res.code == 4, res.output
    assert "Traceback" not in res.stderr
    assert "2 of its members would be written outside the target" in res.stderr
    assert "'l/planted' (below 'l', a symlink of the archive)" in res.stderr
    assert "'../up' (a '..' component)" in res.stderr
    assert not target.exists() and list(outside.iterdir()) == []
