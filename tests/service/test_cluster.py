"""The private PostgreSQL cluster (safehold.service.cluster), with the machine's own server
programs: created and started on first use, joined by a second user without being stopped
under it, stopped by the last one out, started again after a SIGKILL, reachable by its
socket only, and a clear error without the programs."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest

from safehold.errors import DatabaseError, DatabaseNotInstalled, ExitCode, UsageError
from safehold.service.cluster import Cluster, open_cluster
from tests.servers.private_cluster import run_python

# Each test makes its own cluster (about a second for initdb, as much to start).
pytestmark = pytest.mark.slow

StateDirs = Callable[[], Path]


def query(cluster: Cluster, sql: str) -> object:
    with psycopg.connect(cluster.conninfo(), connect_timeout=10) as conn:
        row = conn.execute(sql).fetchone()
    assert row is not None
    return row[0]


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A killed process stays visible until it is reaped; a zombie is gone for our purpose.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def wait_gone(pid: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while alive(pid):
        assert time.monotonic() < deadline, f"process {pid} still alive"
        time.sleep(0.05)


def test_start_join_and_last_one_out_stops(make_state_dir: StateDirs) -> None:
    state_dir = make_state_dir()
    with open_cluster(state_dir) as first:
        pid = first.pid()
        assert pid is not None and alive(pid)
        assert query(first, "SELECT current_database()") == "safehold"
        with open_cluster(state_dir) as second:
            assert second.pid() == pid  # joined, not a second server
            assert query(second, "SELECT 1") == 1
        # The second user left; the first still uses the cluster.
        assert alive(pid)
        assert query(first, "SELECT 1") == 1
    wait_gone(pid)
    assert first.pid() is None  # stopped cleanly: no postmaster.pid left


def test_only_a_socket_no_tcp_port(make_state_dir: StateDirs) -> None:
    with open_cluster(make_state_dir()) as cluster:
        assert query(cluster, "SHOW listen_addresses") == ""
        pid = cluster.pid()
        assert pid is not None
        assert _tcp_listening_inodes() & _socket_inodes(pid) == set()
        assert stat.S_IMODE(cluster.socket_path.stat().st_mode) == 0o700
        assert stat.S_IMODE(cluster.root.stat().st_mode) == 0o700
        assert len(str(cluster.socket_path).encode()) <= 107


def _socket_inodes(pid: int) -> set[str]:
    found = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            found.add(target[len("socket:[") : -1])
    return found


def _tcp_listening_inodes() -> set[str]:
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A":  # TCP_LISTEN
                found.add(fields[9])
    return found


def test_a_second_process_joins_and_does_not_stop_it(make_state_dir: StateDirs) -> None:
    state_dir = make_state_dir()
    with open_cluster(state_dir) as cluster:
        pid = cluster.pid()
        child = run_python(
            "import sys; from pathlib import Path\n"
            "from safehold.service.cluster import open_cluster\n"
            f"with open_cluster(Path({str(state_dir)!r})) as c:\n"
            "    print(c.pid(), flush=True)\n"
        )
        out, err = child.communicate(timeout=120)
        assert child.returncode == 0, err
        assert int(out) == pid
        assert alive(pid)
        assert query(cluster, "SELECT 1") == 1


def test_the_process_that_started_it_leaves_it_to_a_later_user(
    make_state_dir: StateDirs,
) -> None:
    """Started by another process, joined here: that process leaving stops nothing; this
    one, the last out, stops it."""
    state_dir = make_state_dir()
    child = run_python(
        "import sys; from pathlib import Path\n"
        "from safehold.service.cluster import open_cluster\n"
        f"with open_cluster(Path({str(state_dir)!r})) as c:\n"
        "    print(c.pid(), flush=True)\n"
        "    sys.stdin.readline()\n"
    )
    assert child.stdout is not None and child.stdin is not None
    pid = int(child.stdout.readline())
    with open_cluster(state_dir) as cluster:
        assert cluster.pid() == pid
        child.stdin.write("leave\n")
        child.stdin.flush()
        assert child.wait(timeout=60) == 0
        assert query(cluster, "SELECT 1") == 1
    wait_gone(pid)


def test_starts_again_after_the_server_was_killed(make_state_dir: StateDirs) -> None:
    state_dir = make_state_dir()
    with open_cluster(state_dir) as cluster:
        pid = cluster.pid()
        assert pid is not None
        with psycopg.connect(cluster.conninfo()) as conn:
            conn.execute("CREATE TABLE kept (x int)")
            conn.execute("INSERT INTO kept VALUES (7)")
        os.kill(pid, signal.SIGKILL)
        wait_gone(pid)
        # postmaster.pid is left behind, naming a dead process.
        assert cluster.pid() == pid
    with open_cluster(state_dir) as cluster:
        assert cluster.pid() not in (None, pid)
        assert query(cluster, "SELECT x FROM kept") == 7  # crash recovery, not a new cluster


def test_missing_server_programs_is_a_one_line_error(
    make_state_dir: StateDirs, tmp_path: Path
) -> None:
    empty = tmp_path / "bin"
    empty.mkdir()
    with pytest.raises(DatabaseNotInstalled) as caught:
        with open_cluster(make_state_dir(), bin_dir=empty):
            pass
    message = str(caught.value)
    assert "\n" not in message
    assert "'postgresql'" in message and "--database postgresql://" in message
    assert caught.value.exit_code == ExitCode.DATABASE


def test_a_state_folder_too_deep_for_a_socket() -> None:
    deep = Path("/tmp") / ("d" * 100) / "state"
    with pytest.raises(UsageError, match="shorter --state-dir"):
        with open_cluster(deep):
            pass
    assert not deep.exists()


@pytest.mark.skipif(os.geteuid() != 0, reason="the server runs as another user only for root")
def test_a_state_folder_the_server_user_cannot_reach(make_state_dir: StateDirs) -> None:
    state_dir = make_state_dir()
    state_dir.parent.chmod(0o700)  # root's alone: the postgres user cannot pass
    with pytest.raises(DatabaseError, match="cannot reach") as caught:
        with open_cluster(state_dir):
            pass
    assert caught.value.hint is not None and "chmod o+x" in caught.value.hint


def test_a_cluster_made_by_a_version_no_longer_installed(make_state_dir: StateDirs) -> None:
    """After an upgrade of Debian's postgresql, the cluster needs its own version's
    programs, not the newest: the error names the package."""
    state_dir = make_state_dir()
    data = state_dir / "postgresql" / "data"
    data.mkdir(parents=True)
    (data / "PG_VERSION").write_text("9\n")
    with pytest.raises(DatabaseNotInstalled, match="'postgresql-9'") as caught:
        with open_cluster(state_dir):
            pass
    assert "\n" not in str(caught.value)


def test_the_server_outlives_its_starter_killed_and_the_next_user_stops_it(
    make_state_dir: StateDirs,
) -> None:
    state_dir = make_state_dir()
    child = run_python(
        "import sys; from pathlib import Path\n"
        "from safehold.service.cluster import open_cluster\n"
        f"with open_cluster(Path({str(state_dir)!r})) as c:\n"
        "    print(c.pid(), flush=True)\n"
        "    sys.stdin.readline()\n"
    )
    assert child.stdout is not None
    pid = int(child.stdout.readline())
    child.kill()
    child.wait(timeout=30)
    assert alive(pid)  # its locks died with it; the server did not
    with open_cluster(state_dir) as cluster:
        assert cluster.pid() == pid
        assert query(cluster, "SELECT 1") == 1
    wait_gone(pid)


def _child_of(pid: int) -> int:
    """The one child of ``pid`` (runuser forks the program it runs and waits for it)."""
    deadline = time.monotonic() + 10
    while True:
        found = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True)
        if found.stdout.split():
            return int(found.stdout.split()[0])
        assert time.monotonic() < deadline, "runuser started nothing"
        time.sleep(0.05)


def test_a_pid_file_naming_another_program_does_not_block_the_start(
    make_state_dir: StateDirs,
) -> None:
    """After a crash and a reboot the dead server's process id can be another program's,
    of the same user: pg_ctl would take it for the server, running, forever."""
    state_dir = make_state_dir()
    with open_cluster(state_dir) as cluster:
        pid = cluster.pid()
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        wait_gone(pid)
    user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    other = subprocess.Popen([*user, "sleep", "300"])
    try:
        sleeper = other.pid if not user else _child_of(other.pid)
        pid_file = cluster.data_dir / "postmaster.pid"
        lines = pid_file.read_text().splitlines()
        pid_file.write_text("\n".join([str(sleeper), *lines[1:]]) + "\n")
        with open_cluster(state_dir) as cluster:
            assert cluster.pid() not in (None, sleeper)
            assert query(cluster, "SELECT 1") == 1
    finally:
        other.kill()
        other.wait()
