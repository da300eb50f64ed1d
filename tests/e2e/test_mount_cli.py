"""``safehold mount`` through the real command line and the kernel's FUSE: the mounted tree
is listed and read like any folder and compared with what was backed up.

Each test mounts in its own temporary folder in a child process and unmounts in a
``finally``, whatever happened, so that no test leaves a mount behind.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from safehold.repository.repository import Repository
from safehold.storage.local import LocalStorage
from tests.conftest import PASSWORD
from tests.hostile import file, folder, write_snapshot
from tests.servers import unavailable

CliRunner = Callable[..., Any]
USAGE, DAMAGE = 2, 4


@pytest.fixture
def fuse() -> None:
    """The kernel's FUSE: a missing one skips on a laptop and fails under CI."""
    if not os.path.exists("/dev/fuse"):
        unavailable("no /dev/fuse on this machine (modprobe fuse)")
    if not shutil.which("fusermount") and not shutil.which("fusermount3"):
        unavailable("no fusermount (Debian package fuse3: scripts/test-deps.sh)")


def ok(cli: CliRunner, *args: str) -> Any:
    res = cli(*args)
    assert res.code == 0, res.output
    return res


def unmount(mnt: Path) -> None:
    for command in (["fusermount", "-u"], ["umount"], ["umount", "-l"]):
        if not os.path.ismount(mnt):
            return
        if shutil.which(command[0]):
            subprocess.run([*command, str(mnt)], capture_output=True, check=False, timeout=30)


class Mount:
    def __init__(self, proc: subprocess.Popen[bytes], mnt: Path) -> None:
        self.proc = proc
        self.mnt = mnt
        self.stdout = b""
        self.stderr = b""

    def finish(self, timeout: float = 30) -> int:
        """Unmount (if still mounted) and wait for the command to end; its exit code."""
        unmount(self.mnt)
        self.stdout, self.stderr = self.proc.communicate(timeout=timeout)
        return self.proc.returncode


@contextmanager
def mounted(
    env: dict[str, str], repo: str, mnt: Path, *extra: str, timeout: float = 30
) -> Iterator[Mount]:
    mnt.mkdir(exist_ok=True)
    proc = subprocess.Popen(
        [sys.executable, "-m", "safehold", "-r", repo, "mount", str(mnt), *extra],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    mount = Mount(proc, mnt)
    try:
        deadline = time.monotonic() + timeout
        while not os.path.ismount(mnt):
            if proc.poll() is not None:
                out, err = proc.communicate()
                pytest.fail(f"mount exited with {proc.returncode}: {(out + err).decode()}")
            assert time.monotonic() < deadline, "the mount never appeared"
            time.sleep(0.05)
        yield mount
    finally:
        unmount(mnt)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stdout is not None and not mount.stdout:
            mount.stdout = proc.stdout.read()
            mount.stderr = proc.stderr.read() if proc.stderr else b""


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def locks(repo: str) -> list[str]:
    folder_ = Path(repo) / "locks"
    return sorted(p.name for p in folder_.iterdir()) if folder_.exists() else []


def test_mount_shows_every_snapshot_by_id_time_host_and_tag_and_reads_it_exactly(
    cli: CliRunner,
    cli_env: dict[str, str],
    cli_repo: str,
    sample_tree: Path,
    tmp_path: Path,
    fuse: None,
) -> None:
    os.setxattr(sample_tree / "hello.txt", "user.origin", b"the web server\0")
    first = json.loads(
        ok(cli, "-r", cli_repo, "backup", "--json", "--tag", "daily", str(sample_tree)).stdout
    )["snapshot"]
    (sample_tree / "later.txt").write_text("written after the first backup\n")
    second = json.loads(
        ok(cli, "-r", cli_repo, "backup", "--json", "--host", "db1", str(sample_tree)).stdout
    )["snapshot"]
    snaps = {s["id"]: s for s in json.loads(ok(cli, "-r", cli_repo, "snapshots", "--json").stdout)}
    host = snaps[first]["hostname"]
    mnt = tmp_path / "mnt"

    with mounted(cli_env, cli_repo, mnt) as m:
        assert sorted(os.listdir(mnt)) == ["hosts", "ids", "snapshots", "tags"]
        assert sorted(os.listdir(mnt / "ids")) == sorted([first[:8], second[:8]])
        names = sorted(os.listdir(mnt / "snapshots"))
        assert len(names) == 3 and names[-1] == "latest"
        latest = mnt / "snapshots" / "latest"
        assert latest.is_symlink() and os.readlink(latest) == names[1]
        assert sorted(os.listdir(mnt / "hosts")) == sorted({host, "db1"})
        assert os.listdir(mnt / "tags") == ["daily"]
        assert sorted(os.listdir(mnt / "tags" / "daily")) == [names[0], "latest"]
        assert os.readlink(mnt / "hosts" / "db1" / "latest") == names[1]

        # The newest snapshot, through its latest link, is the source folder as it is now.
        root = latest / str(sample_tree).lstrip("/")
        for dirpath, dirnames, filenames in os.walk(sample_tree):
            rel = Path(dirpath).relative_to(sample_tree)
            mounted_dir = root / rel
            assert sorted(os.listdir(mounted_dir)) == sorted(dirnames + filenames), rel
            for name in dirnames + filenames:
                src, seen = Path(dirpath) / name, mounted_dir / name
                a, b = os.lstat(src), os.lstat(seen)
                assert stat.S_IFMT(a.st_mode) == stat.S_IFMT(b.st_mode), src
                assert stat.S_IMODE(a.st_mode) == stat.S_IMODE(b.st_mode), src
                assert (a.st_uid, a.st_gid, a.st_mtime_ns) == (b.st_uid, b.st_gid, b.st_mtime_ns)
                if stat.S_ISREG(a.st_mode):
                    assert a.st_size == b.st_size, src
                    assert digest(src) == digest(seen), src
                    assert a.st_nlink == b.st_nlink, src
                elif stat.S_ISLNK(a.st_mode):
                    assert os.readlink(src) == os.readlink(seen)
                if not stat.S_ISLNK(a.st_mode):
                    assert sorted(os.listxattr(seen)) == sorted(os.listxattr(src)), src
        assert os.getxattr(root / "hello.txt", "user.origin") == b"the web server\0"

        # Reads at any offset, across the boundaries of the big file's chunks.
        data = (sample_tree / "sub" / "data.bin").read_bytes()
        with open(root / "sub" / "data.bin", "rb") as f:
            for offset, size in [(0, 10), (524_287, 3), (1_000_000, 700_000), (len(data) - 5, 99)]:
                f.seek(offset)
                assert f.read(size) == data[offset : offset + size], offset

        # The first snapshot, by id and under its tag, lacks the later file.
        old = mnt / "ids" / first[:8] / str(sample_tree).lstrip("/")
        assert not (old / "later.txt").exists()
        assert digest(old / "hello.txt") == digest(sample_tree / "hello.txt")
        tagged = mnt / "tags" / "daily" / names[0] / str(sample_tree).lstrip("/")
        assert sorted(os.listdir(tagged)) == sorted(os.listdir(old))

        # Read-only, without set-id programs or devices, whoever mounted it.
        with pytest.raises(OSError) as err:
            open(root / "hello.txt", "a")  # noqa: SIM115
        assert err.value.errno == errno.EROFS
        with pytest.raises(OSError) as err:
            (root / "new-folder").mkdir()
        assert err.value.errno == errno.EROFS
        mounts = Path("/proc/mounts").read_text().splitlines()
        fields = next(f for f in map(str.split, mounts) if f[1] == str(mnt))
        assert {"ro", "nosuid", "nodev"} <= set(fields[3].split(",")), fields
        assert len(locks(cli_repo)) == 1  # the mount's shared lock, held while mounted
        assert m.proc.poll() is None

    assert m.proc.returncode == 0, m.stderr.decode()
    assert b"2 snapshot(s) mounted read-only" in m.stdout
    assert locks(cli_repo) == []  # released at unmount


def test_an_interrupt_unmounts_and_releases_the_lock(
    cli: CliRunner,
    cli_env: dict[str, str],
    cli_repo: str,
    sample_tree: Path,
    tmp_path: Path,
    fuse: None,
    sigint_default: None,
) -> None:
    ok(cli, "-r", cli_repo, "backup", str(sample_tree))
    mnt = tmp_path / "mnt"
    with mounted(cli_env, cli_repo, mnt, "--json") as m:
        m.proc.send_signal(signal.SIGINT)
        m.proc.wait(timeout=30)
        assert not os.path.ismount(mnt)
    assert m.proc.returncode == 0, m.stderr.decode()
    lines = [json.loads(line) for line in m.stdout.decode().splitlines()]
    assert lines[0] == {"mounted": str(mnt), "snapshots": 1}
    assert lines[-1] == {"unmounted": str(mnt), "errors": []}
    assert locks(cli_repo) == []


def test_a_hostile_tree_or_a_damaged_blob_is_an_error_and_the_rest_stays_readable(
    cli: CliRunner,
    cli_env: dict[str, str],
    cli_repo: str,
    sample_tree: Path,
    tmp_path: Path,
    fuse: None,
) -> None:
    good = json.loads(ok(cli, "-r", cli_repo, "backup", "--json", str(sample_tree)).stdout)[
        "snapshot"
    ]
    repo = Repository.open(LocalStorage(Path(cli_repo)), PASSWORD)
    hostile = write_snapshot(repo, [folder("ok", file("a", b"fine")), folder("..", file("x"))])
    # A file whose only blob is damaged in its pack.
    damaged = write_snapshot(repo, [file("broken", os.urandom(2000))])
    repo.load_index()
    [node] = repo.load_tree(damaged.tree)
    loc = repo.index.lookup(bytes.fromhex(node.content[0]))
    assert loc is not None
    pack = next(Path(cli_repo, "data").rglob(loc.pack_id.hex()))
    raw = bytearray(pack.read_bytes())
    raw[loc.offset + loc.length // 2] ^= 0xFF
    pack.chmod(0o644)
    pack.write_bytes(bytes(raw))

    mnt = tmp_path / "mnt"
    with mounted(cli_env, cli_repo, mnt) as m:
        with pytest.raises(OSError) as err:
            os.listdir(mnt / "ids" / hostile.short_id)
        assert err.value.errno == errno.EIO  # an error, not files (nor '..')
        with pytest.raises(OSError) as err:
            (mnt / "ids" / damaged.short_id / "broken").read_bytes()
        assert err.value.errno == errno.EIO
        # Everything else reads as stored.
        copy = mnt / "ids" / good[:8] / str(sample_tree).lstrip("/") / "sub" / "data.bin"
        assert digest(copy) == digest(sample_tree / "sub" / "data.bin")
    assert m.proc.returncode == DAMAGE, m.stderr.decode()
    err_text = m.stderr.decode()
    assert f"tree {hostile.tree[:8]}" in err_text and "'..'" in err_text
    assert f"/ids/{damaged.short_id}/broken: cannot be read: blob" in err_text


def test_without_fuse_or_a_mount_point_it_says_so_and_exits_2(
    cli: CliRunner, cli_repo: str, sample_tree: Path, tmp_path: Path
) -> None:
    ok(cli, "-r", cli_repo, "backup", str(sample_tree))
    (tmp_path / "mnt").mkdir()
    res = cli(
        "-r", cli_repo, "mount", str(tmp_path / "mnt"),
        env={"FUSE_LIBRARY_PATH": str(tmp_path / "no-libfuse.so.3")},
    )  # fmt: skip
    assert res.code == USAGE, res.output
    assert "FUSE is not available on this machine" in res.stderr
    if os.path.exists("/dev/fuse"):  # else that is what it names
        assert "the libfuse library cannot be loaded" in res.stderr
        assert "apt-get install fuse3" in res.stderr
    assert "Traceback" not in res.stderr

    res = cli("-r", cli_repo, "mount", str(tmp_path / "nowhere"))
    assert res.code == USAGE, res.output
    assert "is not a folder" in res.stderr
    assert locks(cli_repo) == []


@pytest.mark.skipif(
    os.geteuid() != 0
    or not shutil.which("setpriv")
    or not os.path.exists("/dev/fuse")
    or os.stat("/dev/fuse").st_mode & 0o006 == 0o006,
    reason="needs root, and a /dev/fuse other users may not open (as in many containers)",
)
def test_a_user_who_may_not_open_dev_fuse_is_told_so_before_anything_else() -> None:
    # As nobody, in a folder of /tmp that user can reach (pytest's own are private to root).
    folder_ = Path(tempfile.mkdtemp(prefix="safehold-nobody-"))
    try:
        folder_.chmod(0o777)
        (folder_ / "mnt").mkdir()
        env = {k: v for k, v in os.environ.items() if not k.startswith("SAFEHOLD_")}
        env.update(SAFEHOLD_PASSWORD=PASSWORD.decode(), HOME=str(folder_))
        nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
        command = ["-r", str(folder_ / "no-repo"), "mount", str(folder_ / "mnt")]
        res = subprocess.run(
            [*nobody, sys.executable, "-m", "safehold", *command],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert res.returncode == USAGE, res.stderr
        assert "no permission to open /dev/fuse" in res.stderr
        assert not os.path.ismount(folder_ / "mnt")
    finally:
        unmount(folder_ / "mnt")
        shutil.rmtree(folder_, ignore_errors=True)
