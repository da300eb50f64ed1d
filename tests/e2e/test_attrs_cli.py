"""Extended attributes, ACLs, capabilities, sockets and read-only files through the real
command line: ``ls -l``/``--json`` show attributes, ``restore`` says what it left out, and
a user who is not root (or root without CAP_DAC_OVERRIDE) restores read-only files and
folders, sets what the kernel lets it set and names the rest in one warning per kind."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from safehold.engine.backup import BackupOptions, run_backup
from safehold.repository.repository import Repository
from safehold.storage.local import LocalStorage
from tests.conftest import FAST_KDF, PASSWORD

CliRunner = Callable[..., Any]  # the ``cli`` fixture of tests/conftest.py

TOOLS = all(shutil.which(x) for x in ("getfattr", "setfattr", "getfacl", "setfacl", "setcap"))
needs_tools = pytest.mark.skipif(not TOOLS, reason="needs attr, acl, libcap2-bin")
as_root = pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("setpriv"), reason="needs root and setpriv"
)
NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
NO_DAC_OVERRIDE = ["setpriv", "--bounding-set=-dac_override,-dac_read_search"]


def sh(*args: str, cwd: Path | None = None) -> str:
    return subprocess.run(args, cwd=cwd, check=True, capture_output=True, text=True).stdout


def ndjson_or_list(text: str) -> list[dict[str, Any]]:
    """``ls --json`` items, whether printed as one array or one object a line."""
    try:
        doc = json.loads(text)
    except ValueError:
        doc = [json.loads(line) for line in text.splitlines() if line.strip()]
    return [d for d in doc if d.get("struct_type", "node") == "node"]


@needs_tools
def test_ls_shows_attributes_and_acls(cli: CliRunner, cli_repo: str, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "notes.txt").write_text("notes")
    sh("setfattr", "-n", "user.comment", "-v", "hello", str(src / "notes.txt"))
    sh("setfattr", "-n", "user.raw", "-v", "0x00ff", str(src / "notes.txt"))
    sh("setfacl", "-m", "u:1000:rwx,g::r--", str(src / "notes.txt"))
    (src / "plain").write_text("p")
    assert cli("-r", cli_repo, "backup", str(src)).code == 0

    long = cli("-r", cli_repo, "ls", "-l", "latest", str(src))
    listed = cli("-r", cli_repo, "--json", "ls", "latest", str(src))

    assert long.code == 0, long.output
    lines = long.stdout.splitlines()
    at = next(i for i, line in enumerate(lines) if line.endswith("/notes.txt"))
    assert lines[at].startswith("-rw-rwxr--+ ")  # the mask shows as the group bits
    assert lines[at + 1 : at + 4] == [
        "    acl: user::rw-,user:1000:rwx,group::r--,mask::rwx,other::r--",
        '    user.comment="hello"',
        "    user.raw=0sAP8=",
    ]
    assert lines[at + 4].endswith("/plain") and not lines[at + 4].startswith(" ")
    items = {d["name"]: d for d in ndjson_or_list(listed.stdout)}
    assert items["notes.txt"]["xattrs"]["user.comment"] == "aGVsbG8="
    assert items["notes.txt"]["acl"] == [
        "user::rw-",
        "user:1000:rwx",
        "group::r--",
        "mask::rwx",
        "other::r--",
    ]
    assert items["plain"]["xattrs"] is None and items["plain"]["acl"] is None


@needs_tools
def test_diff_reports_an_attribute_change(cli: CliRunner, cli_repo: str, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_text("a")
    assert cli("-r", cli_repo, "backup", str(src)).code == 0
    sh("setfattr", "-n", "user.tag", "-v", "x", str(src / "a.txt"))
    assert cli("-r", cli_repo, "backup", str(src)).code == 0
    snaps = json.loads(cli("-r", cli_repo, "--json", "snapshots").stdout)

    res = cli("-r", cli_repo, "diff", snaps[0]["id"], snaps[1]["id"])

    assert f"U    {src}/a.txt\n" in res.stdout, res.output
    # One item changed in its metadata only, below src (the folders above it, /tmp, may
    # have other times by the second backup: other processes write there).
    below = [line for line in res.stdout.splitlines() if line.startswith("U") and str(src) in line]
    assert below == [f"U    {src}/a.txt"], res.output


def test_restore_names_the_sockets_it_does_not_make(
    cli: CliRunner, cli_repo: str, tmp_path: Path
) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_text("a")
    server = socket.socket(socket.AF_UNIX)
    try:
        server.bind(str(src / "app.sock"))
        assert cli("-r", cli_repo, "backup", str(src)).code == 0
    finally:
        server.close()

    human = cli("-r", cli_repo, "restore", "latest", "--target", str(tmp_path / "a"))
    machine = cli("-r", cli_repo, "--json", "restore", "latest", "--target", str(tmp_path / "b"))

    assert human.code == 0 and machine.code == 0, human.output + machine.output
    sock = f"{tmp_path}/a{src}/app.sock"
    assert (
        f"1 socket not made again (a socket is made by the program that listens on it): {sock}"
        in human.stderr
    )
    assert json.loads(machine.stdout)["sockets"] == {
        "count": 1,
        "paths": [f"{tmp_path}/b{src}/app.sock"],
    }


@pytest.fixture
def shared_tmp() -> Iterator[Path]:
    """A folder that another user can use (pytest's are private to root)."""
    path = Path(tempfile.mkdtemp(prefix="safehold-attrs-"))
    path.chmod(0o777)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _unprivileged_source(root: Path) -> Path:
    src = root / "src"
    (src / "ro").mkdir(parents=True)
    # A git repository's pack: read-only, and of many blobs in many packs.
    pack = src / "pack-0123.pack"
    pack.write_bytes(os.urandom(40 * 1024 * 1024))
    pack.chmod(0o444)
    for i in range(3):
        (src / "ro" / f"f{i}").write_text(f"file {i}\n")
        (src / "ro" / f"f{i}").chmod(0o444)
    (src / "ro").chmod(0o555)
    # What only root may set, on files spread over packs (and so over worker processes).
    for i in range(20):
        (src / f"t{i:02}").write_bytes(os.urandom(100_000))
        sh("setfattr", "-n", "trusted.origin", "-v", str(i), str(src / f"t{i:02}"))
        sh("setfattr", "-n", "trusted.other", "-v", str(i), str(src / f"t{i:02}"))
    helper = src / "ptp-helper"
    helper.write_bytes(b"\x7fELF")
    helper.chmod(0o755)
    sh("setcap", "cap_net_bind_service,cap_net_admin=ep", str(helper))
    # What the owner may set.
    notes = src / "notes.txt"
    notes.write_text("notes")
    sh("setfattr", "-n", "user.comment", "-v", "kept", str(notes))
    sh("setfacl", "-m", "u:1000:rw-,g::r--,m::rw-", str(notes))
    return src


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@needs_tools
@as_root
@pytest.mark.parametrize("who", ["nobody", "root-without-dac-override"])
def test_read_only_files_and_attributes_restored_without_privileges(
    shared_tmp: Path, who: str
) -> None:
    src = _unprivileged_source(shared_tmp)
    storage = LocalStorage(shared_tmp / "repo", create=True)
    repo = Repository.init(storage, PASSWORD, kdf=FAST_KDF, pack_size=1024 * 1024)
    run_backup(repo, BackupOptions(paths=[str(src)], threads=2))
    prefix = NOBODY if who == "nobody" else NO_DAC_OVERRIDE
    if who == "nobody":
        sh("chown", "-R", "65534:65534", str(shared_tmp / "repo"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("SAFEHOLD_")}
    env.update(SAFEHOLD_PASSWORD=PASSWORD.decode(), HOME=str(shared_tmp))
    command = [*prefix, sys.executable, "-m", "safehold", "-r", str(shared_tmp / "repo")]
    target = shared_tmp / "out"

    def restore(*extra: str) -> subprocess.CompletedProcess[str]:
        args = [*command, *extra, "restore", "latest", "--target", str(target)]
        return subprocess.run(args, env=env, capture_output=True, text=True, timeout=120)

    done = restore()
    again = restore("--json")  # over the read-only files and folder of the first

    assert done.returncode == 0, done.stderr
    assert again.returncode == 0, again.stderr
    out = target / str(src).lstrip("/")
    pack = out / "pack-0123.pack"
    assert _digest(pack) == _digest(src / "pack-0123.pack")
    assert stat.S_IMODE(pack.stat().st_mode) == 0o444
    assert stat.S_IMODE((out / "ro").stat().st_mode) == 0o555
    assert sorted(p.read_text() for p in (out / "ro").iterdir()) == [
        f"file {i}\n" for i in range(3)
    ]
    # What the owner may set is set.
    assert 'user.comment="kept"' in sh("getfattr", "-d", str(out / "notes.txt"))
    assert "user:1000:rw-" in sh("getfacl", "-n", str(out / "notes.txt"))
    assert "group::r--" in sh("getfacl", "-n", str(out / "notes.txt"))
    assert stat.S_IMODE((out / "notes.txt").stat().st_mode) == stat.S_IMODE(
        (src / "notes.txt").stat().st_mode
    )
    report = json.loads(again.stdout)
    if who != "nobody":  # root without CAP_DAC_OVERRIDE still sets everything
        assert "not set" not in done.stderr and report["attrs_not_set"] == []
        assert "cap_net_admin" in sh("getcap", str(out / "ptp-helper"))
        assert "trusted.origin" in sh("getfattr", "-d", "-m", "-", str(out / "t07"))
        return
    # The rest is named once per kind, however many items it concerns.
    warnings = [line for line in done.stderr.splitlines() if "not set on" in line]
    assert len(warnings) == 2, done.stderr
    assert "trusted.* attributes not set on 20 items (Operation not permitted)" in warnings[1]
    assert str(out / "t00") in warnings[1]
    assert "capabilities (security.capability) not set on 1 item" in warnings[0]
    assert "only root may set these" in done.stderr
    assert [(n["what"], n["count"], n["expected"]) for n in report["attrs_not_set"]] == [
        ("capabilities (security.capability)", 1, True),
        ("trusted.* attributes", 20, True),
    ]
