"""Configuration files: validation with exact paths and lines, interpolation, aliases."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import pytest

from safehold.app import source_job
from safehold.config import load_config, parse_config
from safehold.errors import ConfigError, ExitCode, UsageError


def write(tmp_path: Path, text: str, name: str = "safehold.yaml") -> str:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return str(path)


def script(tmp_path: Path, name: str = "hook.sh", body: str = "exit 0", mode: int = 0o755) -> Path:
    path = tmp_path / name
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(mode)
    return path


def problems(text: str, tmp_path: Path, env: dict[str, str] | None = None) -> str:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path, env=env or {})
    assert info.value.exit_code == ExitCode.USAGE
    return str(info.value)


def test_a_full_file_loads(tmp_path: Path) -> None:
    hook = script(tmp_path)
    path = write(
        tmp_path,
        f"""\
        repository:
          location: /srv/backup/repo
          password_file: /etc/safehold/pw
          options: {{timeout: 30}}
        destinations:
          - s3:https://s3.example.com/bucket/prefix
          - {{location: "sftp:backup@host/srv/archive", format: archive, name: offsite}}
        sources:
          files:
            type: directory
            paths: [/srv/data]
            excludes: ["*.tmp"]
            tags: [nightly]
            host: db1
            chain_length: 7
            timeout: 1h30m
            exit_if_in_progress: true
            identifier: svc-1
            hooks:
              pre-backup-lock: {hook}
              post-backup-unlock: {{run: "{hook} --unlock", timeout: 30s}}
          dump:
            type: command
            command: [pg_dumpall]
            name: all.sql
        """,
    )
    cfg = load_config(path, env={})
    assert cfg.repository is not None and cfg.repository.location == "/srv/backup/repo"
    assert cfg.repository.options == {"timeout": 30}
    assert [d.format for d in cfg.destinations] == ["repository", "archive"]
    assert cfg.destinations[1].name == "offsite"
    files = cfg.sources["files"]
    assert files.kind == "directory" and files.common.tags == ["nightly"]
    assert files.common.timeout == 5400.0 and files.common.chain_length == 7
    hooks = files.common.hooks.by_phase()
    assert hooks["post-backup-unlock"].timeout == 30.0
    assert hooks["post-backup-unlock"].run == f"{hook} --unlock"
    assert files.line == 9
    assert cfg.sources["dump"].kind == "command"
    assert not any("destinations" in w for w in cfg.warnings)
    job = source_job(cfg, "files")
    assert job.target_dir == "/srv/data" and job.exit_if_in_progress
    assert set(job.hooks) == {"pre-backup-lock", "post-backup-unlock"}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # A kind's own required key, reported under the source's name.
        ("sources:\n  pg-main:\n    type: command\n", "sources.pg-main.command: field required"),
        # A misspelt key of the kind's settings.
        (
            "sources:\n  f:\n    type: directory\n    paths: [/x]\n    exclude: [a]\n",
            "safehold.yaml:5: sources.f.exclude: unknown key",
        ),
        ("sources:\n  f:\n    paths: [/x]\n", "sources.f.type: field required"),
        ("sources:\n  f:\n    type: tape\n", "sources.f.type: unknown source type 'tape'"),
        (
            "sources:\n  f:\n    type: directory\n    paths: [/x]\n    chain_length: -1\n",
            "sources.f.chain_length: input should be greater than or equal to 0",
        ),
        (
            "sources:\n  f:\n    type: directory\n    paths: [/x]\n    timeout: soon\n",
            "sources.f.timeout: 'soon' is not a duration",
        ),
        (
            "sources:\n  f:\n    type: directory\n    paths: [/x]\n    hooks:\n"
            "      pre-backup-lok: /bin/true\n",
            "safehold.yaml:6: sources.f.hooks.pre-backup-lok: unknown key",
        ),
        (
            "sources:\n  f:\n    type: directory\n    paths: [/x]\n    hooks:\n"
            "      backup: no-such-program-xyz --now\n",
            "sources.f.hooks.backup: not found on PATH: no-such-program-xyz",
        ),
        (
            "sources:\n  f:\n    type: directory\n    paths: [/x]\n"
            "    backup_user: no-such-user-xyz\n",
            "sources.f.backup_user: no user 'no-such-user-xyz' on this machine",
        ),
        ("sources:\n  'bad name':\n    type: directory\n", "sources.bad name: a source name"),
        ("sources: [a, b]\n", "sources: must be a mapping"),
        ("repository: {location: /r, passwd: x}\n", "repository.passwd: unknown key"),
        (
            "repository: {location: /r, password_file: /a, password_env: B}\n",
            "repository: give one way to get the password, not password_file and password_env",
        ),
        (
            "destinations:\n  - {location: /d, format: zip}\n",
            "destinations.0.format: input should be",
        ),
        ("backups: {}\n", "backups: unknown key (allowed: version, repository"),
        ("version: 2\n", "version: unsupported version"),
        (
            "sources:\n  f:\n    type: directory\n    paths: [/x]\n    identifier: a\n"
            "    identifier_command: echo b\n",
            "sources.f: give identifier or identifier_command, not both",
        ),
    ],
)
def test_problems_name_the_key(text: str, expected: str, tmp_path: Path) -> None:
    assert expected in problems(text, tmp_path)


def test_hook_paths_are_checked_and_relative_to_the_file(tmp_path: Path) -> None:
    script(tmp_path, "plain.txt", mode=0o644)
    script(tmp_path, "ok.sh")
    text = """\
    sources:
      pg-main:
        type: directory
        paths: [/x]
        hooks:
          pre-backup-lock: ./plain.txt
          pre-backup-check: ./missing.sh --fast
          post-backup-unlock: {run: ./ok.sh arg, timeout: 10}
    """
    msg = problems(text, tmp_path)
    assert "safehold.yaml:6: sources.pg-main.hooks.pre-backup-lock: not executable: " in msg
    assert str(tmp_path / "plain.txt") in msg
    assert "safehold.yaml:7: sources.pg-main.hooks.pre-backup-check: no such file: " in msg
    assert "configuration has 2 problems" in msg
    # Once fixed, the relative path is made absolute (hooks run from any folder).
    cfg = load_config(
        write(tmp_path, text.replace("./plain.txt", "./ok.sh").replace("./missing.sh", "./ok.sh"))
    )
    unlock = cfg.sources["pg-main"].common.hooks.by_phase()["post-backup-unlock"]
    assert unlock.run == f"{tmp_path / 'ok.sh'} arg"


def test_every_problem_is_reported_at_once_with_its_line(tmp_path: Path) -> None:
    text = """\
    repository: /srv/repo
    sources:
      a:
        type: directory
      b:
        type: command
        command: x
        nmae: y
    """
    msg = problems(text, tmp_path)
    assert "safehold.yaml:4: sources.a.paths: field required" in msg or (
        "safehold.yaml:3: sources.a.paths: field required" in msg
    )
    assert "safehold.yaml:8: sources.b.nmae: unknown key" in msg


def test_duplicate_keys_are_errors(tmp_path: Path) -> None:
    text = "sources:\n  f:\n    type: directory\n    paths: [/a]\n    paths: [/b]\n"
    assert "safehold.yaml:5: sources.f.paths: duplicate key" in problems(text, tmp_path)


def test_yaml_syntax_error_names_the_line(tmp_path: Path) -> None:
    msg = problems("sources:\n  f: [unclosed\n", tmp_path)
    assert "safehold.yaml:" in msg and "not valid YAML" in msg


def test_environment_interpolation(tmp_path: Path) -> None:
    text = """\
    repository:
      location: ${REPO_AT}
      password: ${REPO_PW}
    sources:
      dump:
        type: command
        command: ${DUMP_CMD:-pg_dumpall}
        env: {PGPASSWORD: "${PG_PW}"}
        name: "literal-$${HOME}"
    """
    env = {"REPO_AT": "/srv/r", "REPO_PW": "s3cr3t-pw", "PG_PW": "pg-secret-1"}
    cfg = load_config(write(tmp_path, text), env=env)
    assert cfg.repository is not None and cfg.repository.location == "/srv/r"
    assert cfg.repository.password is not None
    assert cfg.repository.password.get_secret_value() == "s3cr3t-pw"
    settings = cfg.sources["dump"].settings
    assert settings.command == "pg_dumpall"  # type: ignore[attr-defined]
    assert settings.name == "literal-${HOME}"  # type: ignore[attr-defined]
    # Secrets never show in reprs, and the job knows them so runs can mask them.
    assert "s3cr3t-pw" not in repr(cfg) and "pg-secret-1" not in repr(cfg)
    job = source_job(cfg, "dump")
    assert {"s3cr3t-pw", "pg-secret-1"} <= set(job.secrets)
    missing = problems(text, tmp_path, env={"REPO_AT": "/r", "PG_PW": "x"})
    assert "safehold.yaml:3: repository.password: environment variable REPO_PW is not set" in (
        missing
    )


def test_service_backup_names(tmp_path: Path) -> None:
    prep = script(tmp_path, "dump-redis.sh")
    clean = script(tmp_path, "clean.sh")
    text = f"""\
    repository: /srv/repo
    sources:
      redis-files:
        source_folder: /var/vcap/store/redis
        source_executable: {prep} --now
        cleanup_executable: {clean}
        service_identifier_executable: echo instance-42
        exit_if_in_progress: true
        backup_user: nobody
        cron_schedule: "0 3 * * *"
    """
    cfg = load_config(write(tmp_path, text), env={})
    sc = cfg.sources["redis-files"]
    assert sc.kind == "directory"
    assert sc.settings.paths == ["/var/vcap/store/redis"]  # type: ignore[attr-defined]
    hooks = sc.common.hooks.by_phase()
    assert hooks["backup"].run == f"{prep} --now"
    assert hooks["backup-cleanup"].run == str(clean)
    assert sc.common.identifier_command == "echo instance-42"
    assert sc.common.exit_if_in_progress and sc.common.backup_user == "nobody"
    # The schedule makes the source a plan for the service; exit_if_in_progress is its
    # overlap rule.
    assert sc.common.schedule == "0 3 * * *"
    assert list(cfg.plans) == ["redis-files"] and sc.common.overlap == "skip"
    assert not cfg.warnings


@pytest.mark.parametrize(
    ("block", "expected"),
    [
        (
            "    type: command\n    command: x\n    source_folder: /d\n",
            "sources.s.source_folder: only a directory source takes source_folder",
        ),
        (
            "    type: directory\n    paths: [/a]\n    source_folder: /d\n",
            "sources.s.source_folder: give source_folder or paths, not both",
        ),
        (
            "    source_folder: /d\n    source_executable: /bin/true\n"
            "    hooks: {backup: /bin/true}\n",
            "sources.s.source_executable: give source_executable or hooks.backup, not both",
        ),
        (
            "    source_folder: /d\n    service_identifier_executable: /bin/true\n"
            "    identifier_command: /bin/true\n",
            "give service_identifier_executable or identifier_command, not both",
        ),
    ],
)
def test_alias_conflicts(block: str, expected: str, tmp_path: Path) -> None:
    assert expected in problems("sources:\n  s:\n" + block, tmp_path)


def test_reserved_keys_warn(tmp_path: Path) -> None:
    text = """\
    sources:
      f:
        type: directory
        paths: [/x]
        verify: {period: 30d}
    """
    cfg = load_config(write(tmp_path, text), env={})
    assert any("sources.f.verify: reserved" in w for w in cfg.warnings)


def test_missing_file_and_empty_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read the configuration file"):
        load_config(str(tmp_path / "nope.yaml"))
    cfg = parse_config("", path="empty.yaml")
    assert cfg.sources == {} and cfg.repository is None
    with pytest.raises(ConfigError, match="must be a mapping"):
        parse_config("- a\n- b\n")


def test_choosing_a_source(tmp_path: Path) -> None:
    one = load_config(write(tmp_path, "sources:\n  only:\n    type: directory\n    paths: [/x]\n"))
    assert source_job(one, None).name == "only"
    two = parse_config(
        "sources:\n  a: {type: directory, paths: [/x]}\n  b: {type: directory, paths: [/y]}\n"
    )
    with pytest.raises(UsageError, match="say which one") as info:
        source_job(two, None)
    assert "a, b" in str(info.value)
    with pytest.raises(UsageError, match="no source 'c'"):
        source_job(two, "c")
    assert os.path.basename(one.path) == "safehold.yaml"


def test_a_url_password_is_a_secret_of_its_own(tmp_path: Path) -> None:
    cfg = parse_config(
        "sources:\n  pg:\n    type: postgres\n    url: postgresql://u:p%40ss-word@db:5432/shop\n"
    )
    secrets = source_job(cfg, "pg").secrets
    assert "postgresql://u:p%40ss-word@db:5432/shop" in secrets
    assert "p@ss-word" in secrets and "p%40ss-word" in secrets


def test_no_kind_uses_a_shared_key_name() -> None:
    """A kind's setting named like a shared key (``timeout``, ``host``...) could never be
    set: the shared key takes it. Each kind must name its own differently."""
    import importlib

    from safehold.config.models import COMMON_KEYS
    from safehold.sources.registry import KINDS

    clashes = {}
    for kind, module in KINDS.items():
        settings = importlib.import_module(module).Settings
        shared = COMMON_KEYS & set(settings.model_fields)
        if shared:
            clashes[kind] = sorted(shared)
    assert clashes == {}
