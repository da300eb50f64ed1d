"""``safehold backup/restore --config FILE --source NAME`` as operators run them."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from safehold.repository.repository import Repository
from safehold.storage.local import LocalStorage
from tests.conftest import PASSWORD, CliRunner


def write_script(path: Path, body: str) -> Path:
    path.write_text("#!/bin/sh\nset -e\n" + body + "\n")
    path.chmod(0o755)
    return path


def json_lines(stderr: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]


def test_service_backup_style_config_end_to_end(
    cli: CliRunner, cli_repo: str, tmp_path: Path
) -> None:
    store = tmp_path / "store"
    store.mkdir()
    (store / "appendonly.aof").write_text("SET a 1\n")
    # service-backup's pieces: a dump to disk before, a cleanup after, an identifier.
    write_script(tmp_path / "dump.sh", f'echo "REDIS0009 dump" > {store}/dump.rdb')
    write_script(tmp_path / "cleanup.sh", f"rm -f {store}/dump.rdb")
    write_script(tmp_path / "identify.sh", "echo service-instance-0f3a")
    config = tmp_path / "safehold.yaml"
    config.write_text(
        f"""\
repository:
  location: {cli_repo}
  password_env: REPO_PW
sources:
  redis:
    source_folder: {store}
    source_executable: ./dump.sh
    cleanup_executable: ./cleanup.sh
    service_identifier_executable: ./identify.sh
    exit_if_in_progress: true
"""
    )
    env = {"REPO_PW": PASSWORD.decode(), "SAFEHOLD_STATE_DIR": str(tmp_path / "state")}
    res = cli(
        "--log-format", "json", "backup", "--config", str(config), "--source", "redis", env=env
    )
    assert res.code == 0, res.output
    assert "snapshot" in res.stdout and "saved" in res.stdout
    lines = json_lines(res.stderr)
    run_ids = {line["run_id"] for line in lines}
    assert len(run_ids) == 1 and all(line["backup_guid"] in run_ids for line in lines)
    assert all(line["identifier"] == "service-instance-0f3a" for line in lines[1:])
    phases = [line["phase"] for line in lines if line["event"] == "hook.finished"]
    assert phases == ["identifier", "backup", "backup-cleanup"]
    assert not (store / "dump.rdb").exists()  # the cleanup ran
    snaps = json.loads(cli("-r", cli_repo, "snapshots", "--json").stdout)
    assert len(snaps) == 1 and snaps[0]["source_name"] == "redis"
    # The run record is where the state folder says.
    (record,) = (tmp_path / "state" / "runs" / "redis").glob("*.json")
    assert json.loads(record.read_text())["run_id"] in run_ids

    target = tmp_path / "restored"
    res = cli(
        "restore",
        "--config",
        str(config),
        "--source",
        "redis",
        "latest",
        "--target",
        str(target),
        env=env,
    )
    assert res.code == 0, res.output
    restored = target / str(store).lstrip("/")
    assert (restored / "dump.rdb").read_text() == "REDIS0009 dump\n"
    assert (restored / "appendonly.aof").read_text() == "SET a 1\n"
    # Into the same folder again: refused unless asked to replace.
    res = cli("restore", "--config", str(config), "latest", "--target", str(target), env=env)
    assert res.code == 2 and "already holds files" in res.stderr
    res = cli(
        "restore",
        "--config",
        str(config),
        "latest",
        "--target",
        str(target),
        "--replace",
        env=env,
    )
    assert res.code == 0, res.output


def test_a_second_run_exits_while_one_is_in_progress(
    cli: CliRunner, cli_env: dict[str, str], cli_repo: str, tmp_path: Path
) -> None:
    # The first run holds its lock hook until the test says so (at most a minute).
    started, release = tmp_path / "started", tmp_path / "release"
    data = tmp_path / "data"
    data.mkdir()
    (data / "f").write_text("x")
    write_script(
        tmp_path / "hold.sh",
        f"touch {started}; i=0\n"
        f"while [ ! -e {release} ] && [ $i -lt 600 ]; do sleep 0.1; i=$((i+1)); done",
    )
    config = tmp_path / "safehold.yaml"
    config.write_text(
        f"""\
repository: {cli_repo}
sources:
  slow:
    type: directory
    paths: [{data}]
    exit_if_in_progress: true
    hooks:
      pre-backup-lock: ./hold.sh
"""
    )
    env = {**cli_env, "SAFEHOLD_STATE_DIR": str(tmp_path / "state")}
    first = subprocess.Popen(
        [sys.executable, "-m", "safehold", "backup", "--config", str(config)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 30
        while not started.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert started.exists()
        second = cli("backup", "--config", str(config), "--source", "slow", env=env)
        assert second.code == 9, second.output
        assert "already in progress" in second.stderr
        release.touch()
        assert first.wait(60) == 0
    finally:
        release.touch()
        if first.poll() is None:
            first.kill()
        first.communicate()


def test_a_failing_check_skips_with_exit_code_8(
    cli: CliRunner, cli_repo: str, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    config = tmp_path / "safehold.yaml"
    config.write_text(
        f"""\
repository: {cli_repo}
sources:
  db:
    type: directory
    paths: [{data}]
    hooks:
      pre-backup-check: {{run: "echo 'replica lag too high'; exit 1", shell: true}}
"""
    )
    res = cli("backup", "--config", str(config), env={"SAFEHOLD_STATE_DIR": str(tmp_path / "st")})
    assert res.code == 8, res.output
    assert "backup skipped" in res.stderr and "replica lag too high" in res.stderr
    assert json.loads(cli("-r", cli_repo, "snapshots", "--json").stdout) == []


def test_no_secret_reaches_logs_records_or_hooks(
    cli: CliRunner, cli_repo: str, tmp_path: Path
) -> None:
    config = tmp_path / "safehold.yaml"
    config.write_text(
        f"""\
repository:
  location: {cli_repo}
  password_env: REPO_PW
sources:
  dump:
    type: command
    command: "echo rows"
    env: {{DB_PASSWORD: "${{DB_PW}}"}}
    hooks:
      pre-backup-lock: {{run: "env; echo db password is ${{DB_PW}}", shell: true}}
"""
    )
    secrets = {"REPO_PW": PASSWORD.decode(), "DB_PW": "db-Secret-77"}
    state = tmp_path / "state"
    env = {**secrets, "SAFEHOLD_STATE_DIR": str(state)}
    for fmt in ("json", "text"):
        res = cli("--log-format", fmt, "--json", "backup", "--config", str(config), env=env)
        assert res.code == 0, res.output
        record = json.loads(res.stdout)
        assert record["outcome"] == "success" and record["phases"][0]["stdout"]
        everything = res.output + "".join(p.read_text() for p in state.rglob("*.json"))
        for secret in secrets.values():
            assert secret not in everything
        assert "db password is ***" in everything


def test_config_check_and_flags_without_a_file(
    cli: CliRunner, cli_repo: str, tmp_path: Path
) -> None:
    config = tmp_path / "safehold.yaml"
    config.write_text(
        "sources:\n  pg-main:\n    type: directory\n    paths: [/x]\n    hooks:\n"
        "      pre-backup-lock: ./missing-lock.sh\n"
    )
    res = cli("config", "check", str(config))
    assert res.code == 2
    assert f"{config}:6: sources.pg-main.hooks.pre-backup-lock: no such file" in res.stderr
    config.write_text("sources:\n  pg-main:\n    type: directory\n    paths: [/x]\n")
    res = cli("config", "check", str(config), "--json")
    assert res.code == 0, res.output
    assert json.loads(res.stdout)["sources"]["pg-main"]["type"] == "directory"
    # Without --config, --source is refused and restore still needs --target.
    assert cli("-r", cli_repo, "backup", "--source", "x").code == 2
    res = cli("-r", cli_repo, "restore", "latest")
    assert res.code == 2 and "--target" in res.stderr


@pytest.mark.skipif(os.geteuid() != 0, reason="running hooks as another user needs root")
def test_backup_user_and_hook_output_in_the_json_log(
    cli: CliRunner, cli_repo: str, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    config = tmp_path / "safehold.yaml"
    config.write_text(
        f"""\
repository: {cli_repo}
sources:
  svc:
    type: directory
    paths: [{data}]
    backup_user: nobody
    hooks:
      pre-backup-lock: id -un
"""
    )
    res = cli(
        "--log-format", "json", "backup", "--config", str(config),
        env={"SAFEHOLD_STATE_DIR": str(tmp_path / "state")},
    )  # fmt: skip
    assert res.code == 0, res.output
    (hook,) = [line for line in json_lines(res.stderr) if line["event"] == "hook.finished"]
    assert hook["phase"] == "pre-backup-lock" and hook["exit_code"] == 0
    assert hook["stdout"] == "nobody\n"


def test_destinations_each_get_the_snapshot_and_one_down_fails_alone(
    cli: CliRunner, cli_repo: str, tmp_path: Path, sample_tree: Path
) -> None:
    second = str(tmp_path / "second")
    assert (
        cli("-r", second, "init", "--kdf-log2n", "10", env={"SAFEHOLD_PASSWORD": "pw2"}).code == 0
    )
    archive_dir = tmp_path / "plain"
    config = tmp_path / "safehold.yaml"
    config.write_text(
        f"""\
repository: {{location: {cli_repo}, password_env: REPO_PW}}
destinations:
  - {{location: {second}, password_env: SECOND_PW, name: second}}
  - {{location: {tmp_path / "never-initialised"}, password_env: SECOND_PW, name: missing}}
  - {{location: {archive_dir}, format: archive, name: plain, options: {{prefix: files}}}}
sources:
  files: {{type: directory, paths: [{sample_tree}]}}
"""
    )
    env = {
        "REPO_PW": PASSWORD.decode(),
        "SECOND_PW": "pw2",
        "SAFEHOLD_STATE_DIR": str(tmp_path / "state"),
    }
    res = cli("backup", "--config", str(config), "--json", env=env)
    # The snapshot is saved, the missing destination fails alone: partial, exit 5.
    assert res.code == 5, res.output
    record = json.loads(res.stdout)
    assert record["outcome"] == "partial"
    by_name = {d["destination"]: d for d in record["destinations"]}
    assert by_name["second"]["status"] == "copied"
    assert by_name["missing"]["status"] == "failed" and by_name["missing"]["error"]
    assert by_name["plain"]["status"] == "archived"
    assert "missing" in res.stderr
    copies = json.loads(
        cli("-r", second, "snapshots", "--json", env={"SAFEHOLD_PASSWORD": "pw2"}).stdout
    )
    assert [c["original"] for c in copies] == [record["snapshot"]]
    listed = json.loads(
        cli("archive", "list", str(archive_dir), "--prefix", "files", "--json").stdout
    )
    assert [e["name"] for e in listed] == [by_name["plain"]["target"]]
    # The next run's snapshot goes everywhere reachable too, incrementally.
    res = cli("backup", "--config", str(config), "--json", env=env)
    again = {d["destination"]: d["status"] for d in json.loads(res.stdout)["destinations"]}
    assert again == {"second": "copied", "missing": "failed", "plain": "archived"}
    copies = json.loads(
        cli("-r", second, "snapshots", "--json", env={"SAFEHOLD_PASSWORD": "pw2"}).stdout
    )
    assert len(copies) == 2


def test_a_configured_restore_of_a_damaged_tree_exits_4(
    cli: CliRunner, cli_repo: str, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    (data / "sub").mkdir(parents=True)
    (data / "sub" / "f.txt").write_text("kept\n")
    config = tmp_path / "safehold.yaml"
    config.write_text(
        f"repository:\n  location: {cli_repo}\n  password_env: REPO_PW\n"
        f"sources:\n  files:\n    type: directory\n    paths: [{data}]\n"
    )
    env = {"REPO_PW": PASSWORD.decode(), "SAFEHOLD_STATE_DIR": str(tmp_path / "state")}
    res = cli("backup", "--config", str(config), "--source", "files", env=env)
    assert res.code == 0, res.output
    # Damage the tree of the folder "sub" (one flipped byte in its sealed blob).
    repo = Repository.open(LocalStorage(Path(cli_repo)), PASSWORD)
    repo.load_index()
    snap = repo.list_snapshots()[0]
    tree = snap.tree
    for part in [p for p in str(data / "sub").split("/") if p]:
        tree = next(n.subtree for n in repo.load_tree(tree) if n.name == part)
    loc = repo.index.lookup(bytes.fromhex(tree))
    assert loc is not None
    pack = Path(cli_repo) / "data" / loc.pack_id.hex()[:2] / loc.pack_id.hex()
    raw = bytearray(pack.read_bytes())
    raw[loc.offset + loc.length // 2] ^= 1
    pack.write_bytes(bytes(raw))

    target = tmp_path / "out"
    res = cli("restore", "--config", str(config), "latest", "--target", str(target), env=env)

    assert res.code == 4, res.output  # damage, not "some files could not be read" (3)
    assert (target / str(data).lstrip("/") / "sub").is_dir()  # left empty, the rest restored


def test_ctrl_c_still_prints_the_record_under_json(
    cli_env: dict[str, str], cli_repo: str, tmp_path: Path, sigint_default: None
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    started = tmp_path / "started"
    config = tmp_path / "safehold.yaml"
    config.write_text(
        f"""\
repository: {cli_repo}
sources:
  slow:
    type: directory
    paths: [{data}]
    hooks:
      pre-backup-lock: {{run: "touch {started}; sleep 60", shell: true}}
      post-backup-unlock: {{run: "echo unlocked", shell: true}}
"""
    )
    env = {**cli_env, "SAFEHOLD_STATE_DIR": str(tmp_path / "state")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "safehold", "--json", "backup", "--config", str(config)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 30
        while not started.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert started.exists()
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 130, err
    record = json.loads(out)
    assert record["outcome"] == "interrupted" and record["exit_code"] == 130
    assert [p["phase"] for p in record["phases"]] == ["pre-backup-lock", "post-backup-unlock"]
    assert record["phases"][0]["interrupted"] is True
    assert b"safehold: interrupted" in err


def test_the_skip_reason_is_the_checks_last_line_as_printed(
    cli: CliRunner, cli_repo: str, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    config = tmp_path / "safehold.yaml"
    check = "echo 'asking the replica' >&2; sleep 0.3; echo 'replica is 900 s behind'; exit 1"
    config.write_text(
        f"repository: {cli_repo}\nsources:\n  db:\n    type: directory\n    paths: [{data}]\n"
        f"    hooks:\n      pre-backup-check: {{run: {json.dumps(check)}, shell: true}}\n"
    )
    env = {"SAFEHOLD_STATE_DIR": str(tmp_path / "st")}
    res = cli("--json", "backup", "--config", str(config), env=env)
    assert res.code == 8, res.output
    reason = "the pre-backup-check hook exited with status 1: replica is 900 s behind"
    assert json.loads(res.stdout)["reason"] == reason
    assert f"backup skipped: {reason}" in res.stderr
    # The text log shows the hook's command as it can be pasted into a shell.
    assert "command=/bin/sh -c 'echo '\"'\"'asking the replica" in res.stderr


def test_a_failed_dump_shows_its_stderr_tail_and_records_8_kib(
    cli: CliRunner, cli_repo: str, tmp_path: Path
) -> None:
    script = tmp_path / "fake_pg_dump.sh"
    write_script(
        script,
        'for i in $(seq 1 300); do echo "pg_dump: dumping contents of table public.t$i" >&2; '
        "done\n"
        "echo 'pg_dump: error: Dumping the contents of table \"orders\" failed' >&2\n"
        "echo 'pg_dump: detail: server closed the connection unexpectedly' >&2\n"
        "echo 'pg_dump: detail: Command was: COPY public.orders (id) TO stdout;' >&2\n"
        "exit 1",
    )
    config = tmp_path / "safehold.yaml"
    config.write_text(
        f"repository: {cli_repo}\nsources:\n  shop:\n    type: command\n"
        f"    command: [{script}]\n    name: shop.sql\n"
    )
    env = {"SAFEHOLD_STATE_DIR": str(tmp_path / "state")}
    res = cli("--log-format", "json", "--json", "backup", "--config", str(config), env=env)
    assert res.code == 6, res.output
    record = json.loads(res.stdout)
    assert record["outcome"] == "failed"
    # The cause is in the message, not only the last line.
    for text in (record["error"], res.stderr):
        assert "server closed the connection unexpectedly" in text
        assert "Command was: COPY public.orders (id) TO stdout;" in text
    assert record["error"].startswith(
        "command source 'shop.sql': fake_pg_dump.sh exited with status 1; no snapshot was saved\n"
    )
    tail = record["error_output"]
    assert 8000 < len(tail) <= 8192 and tail.endswith("COPY public.orders (id) TO stdout;")
    (finished,) = [e for e in json_lines(res.stderr) if e["event"] == "run.finished"]
    assert finished["error_output"] == tail
    (saved,) = (tmp_path / "state" / "runs" / "shop").glob("*.json")
    assert json.loads(saved.read_text())["error_output"] == tail


def test_the_service_chooses_the_run_id_and_plan(
    cli: CliRunner, cli_repo: str, tmp_path: Path
) -> None:
    """`safehold serve` runs a plan as this command with its catalog row's run id: the
    log lines, the record and the run record on disk all carry that id and the plan."""
    data = tmp_path / "data"
    data.mkdir()
    (data / "f").write_text("x")
    config = tmp_path / "safehold.yaml"
    config.write_text(
        f"repository: {{location: {cli_repo}, password_env: REPO_PW}}\n"
        f"sources:\n  files: {{type: directory, paths: [{data}]}}\n"
    )
    env = {"REPO_PW": PASSWORD.decode(), "SAFEHOLD_STATE_DIR": str(tmp_path / "state")}
    run_id = "8a0c5e3e-3b9f-4f7e-9d55-2f3f3c0f9a11"
    res = cli(
        "--log-format", "json", "--json", "backup", "--config", str(config),
        "--run-id", run_id.upper(), "--plan", "shop/files", env=env,
    )  # fmt: skip
    assert res.code == 0, res.output
    record = json.loads(res.stdout)
    assert record["run_id"] == run_id and record["plan"] == "shop/files"
    assert {line["run_id"] for line in json_lines(res.stderr)} == {run_id}
    bad = cli("backup", "--config", str(config), "--run-id", "nope", env=env)
    assert bad.code == 2 and "not a UUID" in bad.stderr


def test_forget_applies_a_source_s_retention(cli: CliRunner, cli_repo: str, tmp_path: Path) -> None:
    """What `safehold serve` runs after each backup of a plan: the plan's retention, over
    that source's snapshots only."""
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
    config = tmp_path / "safehold.yaml"
    config.write_text(
        f"repository: {{location: {cli_repo}, password_env: REPO_PW}}\n"
        "sources:\n"
        f"  a: {{type: directory, paths: [{tmp_path / 'a'}], retention: {{keep_last: 2}}}}\n"
        f"  b: {{type: directory, paths: [{tmp_path / 'b'}]}}\n"
    )
    env = {"REPO_PW": PASSWORD.decode(), "SAFEHOLD_STATE_DIR": str(tmp_path / "state")}
    for i in range(3):
        for name in ("a", "b"):
            (tmp_path / name / "f").write_text(str(i))
            res = cli("backup", "--config", str(config), "--source", name, env=env)
            assert res.code == 0, res.output
    res = cli("--json", "forget", "--config", str(config), "--source", "a", env=env)
    assert res.code == 0, res.output
    assert len(json.loads(res.stdout)["removed"]) == 1
    snaps = json.loads(cli("-r", cli_repo, "snapshots", "--json").stdout)
    assert sorted(s["source_name"] for s in snaps) == ["a", "a", "b", "b", "b"]
    res = cli("forget", "--config", str(config), "--source", "b", env=env)
    assert res.code == 2 and "has no retention" in res.stderr


def test_a_source_s_isolated_key_makes_each_snapshot_isolated(
    cli: CliRunner, cli_repo: str, tmp_path: Path
) -> None:
    """KBOSS's flag: with ``isolated: true`` each run of the source (by hand or by the
    service, which runs this same command) is a chain of its own; the source next to it
    keeps its chain."""
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "f").write_text("same data\n")
    config = tmp_path / "safehold.yaml"
    config.write_text(
        f"repository: {{location: {cli_repo}, password_env: REPO_PW}}\n"
        "sources:\n"
        f"  iso: {{type: directory, paths: [{tmp_path / 'd'}], isolated: true}}\n"
        f"  chained: {{type: directory, paths: [{tmp_path / 'd'}]}}\n"
    )
    env = {"REPO_PW": PASSWORD.decode(), "SAFEHOLD_STATE_DIR": str(tmp_path / "state")}
    for _ in range(2):
        for name in ("iso", "chained"):
            res = cli("backup", "--config", str(config), "--source", name, env=env)
            assert res.code == 0, res.output
    snaps = json.loads(cli("-r", cli_repo, "--json", "snapshots", env=env).stdout)
    iso = [s["chain"] for s in snaps if s["source_name"] == "iso"]
    chained = [s["chain"] for s in snaps if s["source_name"] == "chained"]
    assert all(c["isolated"] and c["seq"] == 0 for c in iso) and iso[0]["id"] != iso[1]["id"]
    assert [c["seq"] for c in chained] == [0, 1] and not any(c["isolated"] for c in chained)
    refused = cli("backup", "--config", str(config), "--source", "iso", "--isolated", env=env)
    assert refused.code == 2 and "isolated: true" in refused.stderr
    config.write_text(
        config.read_text().replace("isolated: true", "isolated: true, chain_length: 3")
    )
    bad = cli("config", "check", str(config), env=env)
    assert bad.code != 0 and "not both" in bad.output
