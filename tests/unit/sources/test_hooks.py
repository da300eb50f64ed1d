"""One hook at a time: environment, captured output, timeouts, users."""

from __future__ import annotations

import os
import pwd
import shlex
import time
from pathlib import Path

import pytest

from safehold.sources import hooks as hookmod
from safehold.sources.hooks import HookSpec, run_hook
from tests.process_groups import gone, read_pid


def test_runs_with_env_and_captures_output(tmp_path: Path) -> None:
    spec = HookSpec(
        phase="pre-backup-lock",
        # The pause orders the two lines: written at once to two pipes, either may be read first.
        run='echo "phase=$SAFEHOLD_PHASE run=$SAFEHOLD_RUN_ID"; sleep 0.2; echo oops >&2; exit 3',
        shell=True,
    )
    res = run_hook(spec, env={"SAFEHOLD_PHASE": "pre-backup-lock", "SAFEHOLD_RUN_ID": "r-1"})
    assert res.exit_code == 3 and not res.ok and not res.timed_out
    assert res.stdout == "phase=pre-backup-lock run=r-1\n"
    assert res.stderr == "oops\n"
    assert res.last_line() == "oops"
    assert res.describe() == "exited with status 3"
    assert res.to_json()["exit_code"] == 3


def test_words_are_split_like_a_shell_but_not_interpreted(tmp_path: Path) -> None:
    marker = tmp_path / "never"
    spec = HookSpec(phase="backup", run=f"echo 'a b' ; touch {marker}")
    res = run_hook(spec, env={})
    assert res.ok
    assert res.stdout == f"a b ; touch {marker}\n"
    assert not marker.exists()


def test_repository_password_never_reaches_a_hook(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SAFEHOLD_PASSWORD", "repo-secret")
    monkeypatch.setenv("SAFEHOLD_PASSWORD_FILE", "/etc/pw")
    monkeypatch.setenv("MY_REPO_PW", "other-secret")
    monkeypatch.setenv("SAFEHOLD_REPOSITORY", "s3:https://KEY:repo-location-secret@host/b")
    spec = HookSpec(phase="backup", run="env")
    res = run_hook(spec, env={}, hide_env=["MY_REPO_PW"])
    assert res.ok
    assert "repo-secret" not in res.stdout and "SAFEHOLD_PASSWORD" not in res.stdout
    assert "other-secret" not in res.stdout and "repo-location-secret" not in res.stdout
    assert "PATH=" in res.stdout


def test_timeout_kills_the_whole_process_group(tmp_path: Path) -> None:
    pidfile = tmp_path / "child.pid"
    # The shell starts a grandchild that ignores SIGTERM: only a group SIGKILL ends it.
    spec = HookSpec(
        phase="pre-backup-lock",
        run=f"sh -c 'trap \"\" TERM; echo $$ > {pidfile}; sleep 60' & wait",
        shell=True,
        timeout=0.5,
    )
    started = time.monotonic()
    res = run_hook(spec, env={}, kill_grace=0.3)
    assert time.monotonic() - started < 10
    assert res.timed_out and not res.ok and res.exit_code is None
    assert "timed out after 0.5 s" in res.describe()
    child = int(pidfile.read_text())
    for _ in range(50):
        if not _alive(child):
            break
        time.sleep(0.05)
    assert not _alive(child), "the hook's grandchild survived the timeout"


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except FileNotFoundError:
        return False


def test_the_callers_limit_caps_the_hooks_own() -> None:
    spec = HookSpec(phase="backup", run="sleep 30", timeout=600)
    res = run_hook(spec, env={}, timeout=0.3, kill_grace=0.2)
    assert res.timed_out and res.duration_s < 10


def test_output_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hookmod, "OUTPUT_KEEP", 1000)
    spec = HookSpec(phase="backup", run="yes line | head -c 300000; echo END", shell=True)
    res = run_hook(spec, env={})
    assert res.ok and res.output_truncated
    assert len(res.stdout) <= 1000 and res.stdout.endswith("END\n")


def test_a_hook_that_cannot_start(tmp_path: Path) -> None:
    res = run_hook(HookSpec(phase="backup", run=str(tmp_path / "missing.sh")), env={})
    assert not res.ok and res.exit_code is None
    assert "could not start" in res.describe()
    res = run_hook(HookSpec(phase="backup", run="'unclosed"), env={})
    assert not res.ok and "cannot be parsed" in res.describe()


def test_an_unknown_user_is_a_failed_hook() -> None:
    res = run_hook(HookSpec(phase="backup", run="true"), env={}, default_user="no-such-user-xyz")
    assert not res.ok and res.exit_code is None
    assert res.describe() == "backup_user 'no-such-user-xyz' does not exist on this machine"


@pytest.mark.skipif(os.geteuid() != 0, reason="running hooks as another user needs root")
def test_backup_user_runs_the_hook_as_that_user() -> None:
    nobody = pwd.getpwnam("nobody")
    spec = HookSpec(
        phase="pre-backup-lock", run="id -u; id -g; id -G; echo $HOME $USER", shell=True
    )
    res = run_hook(spec, env={}, default_user="nobody")
    assert res.ok, res.stderr
    uid, gid, groups, home = res.stdout.splitlines()
    assert int(uid) == nobody.pw_uid and int(gid) == nobody.pw_gid
    assert set(map(int, groups.split())) == set(os.getgrouplist("nobody", nobody.pw_gid))
    assert home == f"{nobody.pw_dir} nobody"
    assert res.user == "nobody"
    # A hook's own user wins over the source's backup_user.
    own = HookSpec(phase="backup", run="id -un", user="root")
    assert run_hook(own, env={}, default_user="nobody").stdout.strip() == "root"


@pytest.mark.skipif(os.geteuid() == 0, reason="as root any user is allowed")
def test_another_user_needs_root() -> None:
    res = run_hook(HookSpec(phase="backup", run="true"), env={}, default_user="nobody")
    assert not res.ok and "needs safehold to run as root" in res.describe()


# --- descendants, output order, quoting (issue 15) ---------------------------------------


def test_a_background_child_holding_the_output_cannot_hold_the_hook(tmp_path: Path) -> None:
    # The hook exits at once; `sleep 30` keeps its stdout and stderr open. It used to hold
    # the run for its whole life, whatever the hook's timeout.
    pgid_file = tmp_path / "pgid"
    spec = HookSpec(
        phase="pre-backup-check",
        run=f"echo $$ > {pgid_file}; sleep 30 & echo checked",
        shell=True,
        timeout=4,
    )
    started = time.monotonic()
    res = run_hook(spec, env={})
    assert time.monotonic() - started < 15  # well under the child's 30 s
    assert res.ok and res.exit_code == 0 and res.lingering and not res.timed_out
    assert res.stdout == "checked\n"
    assert "still held its output" in res.lingering_note()
    assert res.to_json()["lingering"] is True
    assert gone(read_pid(pgid_file)), "the hook's background child survived"


def test_a_background_child_that_let_go_of_the_output_is_left_alone(tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    spec = HookSpec(
        phase="pre-backup-lock",
        run=f"sleep 30 >/dev/null 2>&1 & echo $! > {pid_file}; echo locked",
        shell=True,
    )
    res = run_hook(spec, env={})
    child = read_pid(pid_file)
    try:
        assert res.ok and not res.lingering and res.stdout == "locked\n"
        assert res.duration_s < 10
        assert _alive(child)  # a lock holder the unlock hook will end, say
    finally:
        os.kill(child, 9)


def test_a_timeout_holds_when_a_process_outside_the_group_keeps_the_output(
    tmp_path: Path,
) -> None:
    # setsid puts the child beyond the group's kill; it keeps the pipes open for 30 s.
    pid_file = tmp_path / "escaped"
    spec = HookSpec(
        phase="backup",
        run=f"setsid sh -c 'echo $$ > {pid_file}; exec sleep 30' & sleep 60",
        shell=True,
        timeout=1,
    )
    started = time.monotonic()
    res = run_hook(spec, env={}, kill_grace=0.5)
    escaped = read_pid(pid_file)
    try:
        assert time.monotonic() - started < 15
        assert res.timed_out and not res.ok and "timed out after 1 s" in res.describe()
    finally:
        os.kill(escaped, 9)


def test_the_last_line_is_the_last_printed_whichever_the_stream() -> None:
    # The reason is what came last, not stderr before stdout.
    spec = HookSpec(
        phase="pre-backup-check",
        run="echo 'checking the replica' >&2; sleep 0.3; echo 'replica is 900 s behind'; exit 1",
        shell=True,
    )
    res = run_hook(spec, env={})
    assert res.exit_code == 1 and res.last_line() == "replica is 900 s behind"
    assert res.to_json()["last_line"] == "replica is 900 s behind"
    spec = HookSpec(
        phase="pre-backup-check",
        run="echo 'lag: 900 s'; sleep 0.3; printf 'too far behind' >&2; exit 1",
        shell=True,
    )
    assert run_hook(spec, env={}).last_line() == "too far behind"


def test_commands_in_messages_can_be_pasted(tmp_path: Path) -> None:
    res = run_hook(HookSpec(phase="backup", run="echo 'a b' c", shell=True), env={})
    assert res.pasteable() == "/bin/sh -c 'echo '\"'\"'a b'\"'\"' c'"
    missing = str(tmp_path / "it's missing")
    res = run_hook(HookSpec(phase="backup", run=shlex.join([missing, "--now"])), env={})
    assert res.describe().startswith(f"could not start {shlex.quote(missing)}:")


def test_ctrl_c_given_to_another_thread_still_stops_the_hook(
    tmp_path: Path, sigint_default: None
) -> None:
    # The kernel hands a process's SIGINT to any thread; Python runs the handler only in
    # the main thread, once it wakes. A wait that slept until the hook's end held such a
    # Ctrl-C for the hook's whole life (30 s here).
    import signal
    import threading

    started = tmp_path / "started"
    spec = HookSpec(phase="pre-backup-lock", run=f"touch {started}; sleep 30", shell=True)

    def interrupt_from_another_thread() -> None:
        deadline = time.monotonic() + 10
        while not started.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(0.1)  # the main thread is waiting for the hook by now
        signal.pthread_kill(threading.get_ident(), signal.SIGINT)

    helper = threading.Thread(target=interrupt_from_another_thread)
    t0 = time.monotonic()
    helper.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            run_hook(spec, env={})
    finally:
        helper.join()
    assert time.monotonic() - t0 < 10  # not the hook's 30 s
