"""The SFTP backend through the real command line, against OpenSSH's sshd on 127.0.0.1.

Credentials and the host-key pin reach the CLI as ``SAFEHOLD_SFTP_*`` variables, as they
would on a user's machine. The fault cases (server killed or frozen in the middle of a
backup) use a private server each, so they can stop it without disturbing other tests.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from safehold.errors import ConfigError, ExitCode, TransientStorageError
from safehold.storage.sftp import SftpOptions, from_location, parse_location
from safehold.storage.wrappers import RetryingStorage
from tests.conftest import CliResult, CliRunner, make_sample_tree
from tests.integration.helpers import (
    assert_error,
    backup_json,
    restore_and_compare,
    tree_manifest,
)
from tests.servers.sftp import SftpServer

# Short timeouts so that the fault cases fail fast: each attempt of a call that meets a dead
# or frozen server ends within these, and the retry wrapper gives up after five attempts.
FAST_FAIL = {"SAFEHOLD_SFTP_TIMEOUT": "1", "SAFEHOLD_SFTP_CONNECT_TIMEOUT": "1"}


def fingerprint_of(pub: Path) -> str:
    out = subprocess.run(
        ["ssh-keygen", "-l", "-E", "sha256", "-f", str(pub)],
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout.split()[1]


def init(cli: CliRunner, repo: str, env: dict[str, str]) -> CliResult:
    return cli("-r", repo, "init", "--kdf-log2n", "10", env=env)


def check_read_data(cli: CliRunner, repo: str, env: dict[str, str]) -> None:
    res = cli("-r", repo, "check", "--read-data", env=env)
    assert res.code == 0, f"check --read-data failed ({res.code}): {res.output}"


def fresh_path(server: SftpServer) -> Path:
    return server.workdir / "repos" / uuid.uuid4().hex


# --- locations and options (no server needed) ----------------------------------------------


@pytest.mark.parametrize(
    ("rest", "user", "port", "path"),
    [
        ("backup@nas/srv/safehold", "backup", 22, "/srv/safehold"),
        ("backup@nas:2222/srv/safehold", "backup", 2222, "/srv/safehold"),
        ("backup@nas:2222/~/safehold", "backup", 2222, "safehold"),
        ("backup@nas:/srv/safehold", "backup", 22, "/srv/safehold"),
        ("backup@nas:safehold/db", "backup", 22, "safehold/db"),
        ("backup@nas:~/safehold", "backup", 22, "safehold"),
        ("//backup@nas:2222//srv/safehold/", "backup", 2222, "/srv/safehold"),
        ("me@corp@nas/~/x", "me@corp", 22, "x"),
    ],
)
def test_location_syntax(rest: str, user: str, port: int, path: str) -> None:
    target = parse_location(rest)
    assert (target.user, target.host, target.port, target.path) == (user, "nas", port, path)
    assert parse_location(target.describe().removeprefix("sftp:")) == target


@pytest.mark.parametrize(
    "rest", ["backup@nas", "backup@nas:22/", "backup@nas:2024", "@nas/x", "nas:99999/x"]
)
def test_bad_locations(rest: str) -> None:
    with pytest.raises(ConfigError):
        parse_location(rest)


def test_options_block_wins_over_environment(tmp_path: Path) -> None:
    env = {"SAFEHOLD_SFTP_TIMEOUT": "9", "SAFEHOLD_SFTP_KEY_FILE": "~/k", "SAFEHOLD_SFTP_KEY": ""}
    opts = SftpOptions.parse({"timeout": 5, "password": "s3cret"}, env)
    assert opts.timeout == 5.0
    assert opts.key_file == os.path.expanduser("~/k")
    assert opts.sources["key_file"] == "SAFEHOLD_SFTP_KEY_FILE"
    assert "s3cret" not in repr(opts)
    with pytest.raises(ConfigError, match="bucket"):
        SftpOptions.parse({"bucket": "x"}, {})
    with pytest.raises(ConfigError, match="both"):
        SftpOptions.parse({"key": "x", "key_file": "y"}, {})
    with pytest.raises(ConfigError, match="max_connections"):
        SftpOptions.parse({"max_connections": 0}, {})
    # service-backup's name for the ssh-keyscan line
    assert SftpOptions.parse({"fingerprint": "SHA256:abc"}, {}).host_key == "SHA256:abc"
    with pytest.raises(ConfigError, match="SAFEHOLD_SFTP_TIMEOUT must be a number"):
        SftpOptions.parse({}, {"SAFEHOLD_SFTP_TIMEOUT": "soon"})


def test_encrypted_key_needs_its_passphrase(tmp_path: Path) -> None:
    key = tmp_path / "enc"
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "open sesame", "-f", str(key)], check=True
    )
    with pytest.raises(ConfigError, match="encrypted") as caught:
        from_location("u@127.0.0.1/x", create=False, options={"key_file": str(key)})
    assert "key_passphrase" in str(caught.value)
    ok = from_location(
        "u@127.0.0.1/x",
        create=False,
        options={"key": key.read_text(), "key_passphrase": "open sesame"},
    )
    assert "open sesame" not in repr(ok)
    ok.close()


# --- the happy path ----------------------------------------------------------------------


def test_backup_restore_check(
    cli: CliRunner,
    cli_env: dict[str, str],
    sftp_server: SftpServer,
    sample_tree: Path,
    tmp_path: Path,
) -> None:
    folder = fresh_path(sftp_server)
    repo, env = sftp_server.location(str(folder)), sftp_server.env()
    cli_env.update(env)  # for restore_and_compare, which passes no env of its own
    assert init(cli, repo, env).code == 0
    assert (folder / "config").is_file()
    manifest = tree_manifest(sample_tree)
    done = backup_json(cli, repo, str(sample_tree), env=env)
    restore_and_compare(cli, repo, done["snapshot"], sample_tree, manifest, tmp_path / "out")
    check_read_data(cli, repo, env)
    # Nothing half-written is left on the server after clean runs.
    leftovers = list(folder.rglob(".tmp-*"))
    assert leftovers == []


def test_relative_path_is_below_the_login_folder(cli: CliRunner, sftp_server: SftpServer) -> None:
    name = f"repos/{uuid.uuid4().hex}"
    res = init(cli, sftp_server.location(name), sftp_server.env())
    assert res.code == 0, res.output
    # The test server's SFTP subsystem starts in its home folder (internal-sftp -d).
    assert (sftp_server.home / name / "config").is_file()


# --- who is the server, who are we ---------------------------------------------------------


def test_changed_host_key_is_refused(cli: CliRunner, sftp_server: SftpServer) -> None:
    folder = fresh_path(sftp_server)
    wrong = sftp_server.other_key.with_suffix(".pub").read_text().split()[:2]
    env = sftp_server.env(
        SAFEHOLD_SFTP_HOST_KEY=f"[127.0.0.1]:{sftp_server.port} {' '.join(wrong)}"
    )
    res = init(cli, sftp_server.location(str(folder)), env)
    expected = fingerprint_of(sftp_server.other_key.with_suffix(".pub"))
    received = fingerprint_of(sftp_server.host_key.with_suffix(".pub"))
    assert_error(res, ExitCode.STORAGE, "host key", "has changed", expected, received)
    assert not folder.exists()


def test_pin_by_fingerprint(cli: CliRunner, sftp_server: SftpServer) -> None:
    fp = fingerprint_of(sftp_server.host_key.with_suffix(".pub"))
    env = sftp_server.env(SAFEHOLD_SFTP_HOST_KEY=fp)
    assert init(cli, sftp_server.location(str(fresh_path(sftp_server))), env).code == 0


def test_unknown_host_refused_unless_trust_on_first_use(
    cli: CliRunner, cli_env: dict[str, str], sftp_server: SftpServer
) -> None:
    env = {"SAFEHOLD_SFTP_KEY_FILE": str(sftp_server.client_key)}  # no pin
    repo = sftp_server.location(str(fresh_path(sftp_server)))
    res = init(cli, repo, env)
    assert_error(res, ExitCode.STORAGE, "not known", f"ssh-keyscan -p {sftp_server.port} 127.0.0.1")

    res = init(cli, repo, {**env, "SAFEHOLD_SFTP_TRUST_ON_FIRST_USE": "true"})
    assert res.code == 0, res.output
    known_hosts = Path(cli_env["HOME"]) / ".ssh" / "known_hosts"
    assert known_hosts.read_text().split() == sftp_server.host_key_line().split()
    # From now on the recorded key is the pin, without trust_on_first_use.
    assert cli("-r", repo, "snapshots", env=env).code == 0
    # And a different key recorded there is refused as a changed key.
    wrong = sftp_server.other_key.with_suffix(".pub").read_text().split()[:2]
    known_hosts.write_text(f"[127.0.0.1]:{sftp_server.port} {' '.join(wrong)}\n")
    res = cli("-r", repo, "snapshots", env={**env, "SAFEHOLD_SFTP_TRUST_ON_FIRST_USE": "1"})
    assert_error(res, ExitCode.STORAGE, "has changed", str(known_hosts))


def test_wrong_key_is_an_auth_error(cli: CliRunner, sftp_server: SftpServer) -> None:
    folder = fresh_path(sftp_server)
    env = sftp_server.env(SAFEHOLD_SFTP_KEY_FILE=str(sftp_server.other_key))
    started = time.monotonic()
    res = init(cli, sftp_server.location(str(folder)), env)
    assert_error(res, ExitCode.STORAGE, "refused the login", "'root'", "SAFEHOLD_SFTP_KEY_FILE")
    assert time.monotonic() - started < 20, "an auth failure is permanent: no retries"
    assert not folder.exists()


def test_password_in_location_is_refused(cli: CliRunner, sftp_server: SftpServer) -> None:
    res = init(cli, f"sftp:root:hunter2@127.0.0.1:{sftp_server.port}/x", sftp_server.env())
    assert_error(res, ExitCode.USAGE, "password")
    assert "hunter2" not in res.output


def test_missing_folder_without_create(cli: CliRunner, sftp_server: SftpServer) -> None:
    repo = sftp_server.location(str(fresh_path(sftp_server)))
    res = cli("-r", repo, "snapshots", env=sftp_server.env())
    assert res.code == ExitCode.NO_REPOSITORY, res.output


def test_openssh_extensions_are_used(sftp_server: SftpServer, tmp_path: Path) -> None:
    """Durable puts need fsync@openssh.com, atomic overwrites posix-rename@openssh.com."""
    backend = from_location(
        f"root@127.0.0.1:{sftp_server.port}{tmp_path}/store",
        create=True,
        options=sftp_server.options(),
    )
    try:
        backend.put("x", b"1")
        backend.put("x", b"2")
        session = backend._pool.acquire()
        assert {"fsync@openssh.com", "posix-rename@openssh.com"} <= session.extensions.keys()
        backend._pool.release(session, healthy=True)
        assert backend.get("x") == b"2"
    finally:
        backend.close()


# --- the server goes away -----------------------------------------------------------------


def test_same_storage_reconnects_after_the_server_restarts(
    sftp_server_factory: Callable[[], SftpServer],
) -> None:
    """One storage object (as in a long-running service) outlives its connections."""
    server = sftp_server_factory()
    backend = from_location(
        f"root@127.0.0.1:{server.port}{server.workdir}/store",
        create=True,
        options=server.options(timeout=2, connect_timeout=2),
    )
    storage = RetryingStorage(backend, sleep=lambda _s: None)
    try:
        storage.put("a", b"1")
        server.kill_sessions()  # every pooled connection dies under us
        storage.put("b", b"2")
        server.stop()
        with pytest.raises(TransientStorageError, match="cannot connect"):
            storage.get("a")
        server.start()
        assert storage.get("a") == b"1"
        assert sorted(i.name for i in storage.list()) == ["a", "b"]
    finally:
        storage.close()


# --- the server goes away in the middle of a backup ---------------------------------------


def big_tree(root: Path) -> Path:
    """Sample tree plus 96 MiB that does not compress: six full 16 MiB packs. The fault
    strikes while the first is on its way; with only 20 MiB the rest of the backup was
    sometimes stored before the server was gone, and the run succeeded."""
    make_sample_tree(root)
    (root / "big.bin").write_bytes(os.urandom(96 * 1024 * 1024))
    return root


def start_backup(
    cli_env: dict[str, str], repo: str, src: Path, env: dict[str, str]
) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "safehold", "-r", repo, "backup", str(src)],
        env={**cli_env, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def wait_for_upload(folder: Path, proc: subprocess.Popen[bytes], timeout: float = 60) -> None:
    """Until the first file appears below data/ (a pack on its way)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        data = folder / "data"
        if data.is_dir() and any(p.is_file() for p in data.rglob("*")):
            return
        assert proc.poll() is None, f"the backup ended first: {proc.communicate()}"
        time.sleep(0.01)
    proc.kill()
    pytest.fail("no pack upload started")


def unread_by_server(port: int) -> int:
    """Bytes that clients sent to 127.0.0.1:``port`` and the server has not read yet (the
    receive queues of its sockets in /proc/net/tcp; a listener's counts waiting connections)."""
    local = f"0100007F:{port:04X}"
    total = 0
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[1] == local:
            total += int(fields[4].split(":")[1], 16)
    return total


def wait_until_unread(port: int, proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
    """Until the backup has sent the (paused) server something it has not read."""
    deadline = time.monotonic() + timeout
    while unread_by_server(port) == 0:
        assert proc.poll() is None, f"the backup ended first: {proc.communicate()}"
        assert time.monotonic() < deadline, "the backup sent the paused server nothing"
        time.sleep(0.01)


def finish(proc: subprocess.Popen[bytes], within: float) -> tuple[int, str, float]:
    started = time.monotonic()
    try:
        _out, err = proc.communicate(timeout=within)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        pytest.fail(f"the backup did not fail within {within} s")
    return proc.returncode, err.decode(errors="replace"), time.monotonic() - started


@pytest.mark.parametrize("fault", ["stopped", "frozen"])
def test_server_goes_away_mid_backup(
    fault: str,
    cli: CliRunner,
    cli_env: dict[str, str],
    sftp_server_factory: Callable[[], SftpServer],
    tmp_path: Path,
) -> None:
    server = sftp_server_factory()
    folder = server.workdir / "repo"
    repo, env = server.location(str(folder)), server.env(**FAST_FAIL)
    assert init(cli, repo, env).code == 0
    src = big_tree(tmp_path / "src")

    proc = start_backup(cli_env, repo, src, env)
    wait_for_upload(folder, proc)
    # The backup is held while the fault is made: otherwise a fast run may upload the
    # rest of its packs before the server has gone.
    proc.send_signal(signal.SIGSTOP)
    try:
        if fault == "stopped":
            server.stop()  # the listener and every session: connections drop, new refused
        else:
            server.pause()  # everything hangs: only the timeouts can end the run
    finally:
        proc.send_signal(signal.SIGCONT)
    code, err, took = finish(proc, within=90)
    assert code == ExitCode.STORAGE, err
    assert "Traceback" not in err, err
    assert err.startswith(f"safehold: error: {repo}"), err  # one clean line, no noise
    if fault == "frozen":
        assert "no answer within 1 s" in err, err
    print(f"{fault}: failed after {took:.1f} s")

    if fault == "stopped":
        server.start()
    else:
        server.resume()
        server.kill_sessions()  # the sessions of the failed run, still half-open
    manifest = tree_manifest(src)
    cli_env.update(env)
    done = backup_json(cli, repo, str(src), env=env)
    check_read_data(cli, repo, env)
    restore_and_compare(cli, repo, done["snapshot"], src, manifest, tmp_path / "out")


def test_slow_server_within_the_timeout_is_fine(
    cli: CliRunner,
    cli_env: dict[str, str],
    sftp_server_factory: Callable[[], SftpServer],
    tmp_path: Path,
) -> None:
    """A server that stalls for less than ``timeout`` only slows the run down."""
    server = sftp_server_factory()
    folder = server.workdir / "repo"
    repo, env = server.location(str(folder)), server.env(SAFEHOLD_SFTP_TIMEOUT="6")
    assert init(cli, repo, env).code == 0
    src = big_tree(tmp_path / "src")
    proc = start_backup(cli_env, repo, src, env)
    wait_for_upload(folder, proc)
    server.pause()
    try:
        # A stall the backup feels: it has sent the stopped server bytes it cannot read...
        wait_until_unread(server.port, proc)
        # ...and waits for the answer: for a third of the timeout the backup cannot end.
        with pytest.raises(subprocess.TimeoutExpired):
            proc.wait(timeout=2)
    except BaseException:
        proc.kill()
        raise
    finally:
        server.resume()
    code, err, _took = finish(proc, within=120)
    assert code == 0, err
