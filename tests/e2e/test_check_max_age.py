"""``safehold check --max-age``: exit 13 when a backup is overdue, 4 still for damage."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

from safehold.errors import ExitCode
from safehold.repository.repository import Repository
from safehold.storage.local import LocalStorage
from tests.conftest import PASSWORD, CliRunner
from tests.integration.helpers import backup_json


def make_older(repo: Path, snap_id: str, by: timedelta) -> str:
    """Put an older copy of a snapshot in its place (what a rollback leaves)."""
    r = Repository.open(LocalStorage(repo), PASSWORD)
    snap = r.load_snapshot(snap_id)
    snap.time -= by
    new_id = r.save_snapshot(snap)
    r.delete_snapshot(snap_id)
    return new_id


def test_check_max_age_exit_codes_and_json(cli: CliRunner, cli_repo: str, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_bytes(b"some data")
    snap = backup_json(cli, cli_repo, str(src))["snapshot"]
    res = cli("-r", cli_repo, "check", "--max-age", "26h")
    assert res.code == 0, res.output

    make_older(Path(cli_repo), snap, timedelta(days=2))
    res = cli("-r", cli_repo, "check", "--max-age", "26h")
    assert res.code == ExitCode.OVERDUE, res.output
    assert "older than 26h" in res.stdout and "overdue" in res.stderr
    res = cli("-r", cli_repo, "check", "--max-age", "3d")
    assert res.code == 0, res.output
    res = cli("-r", cli_repo, "check", "--max-age", "26h", "--json")
    assert res.code == ExitCode.OVERDUE
    doc = json.loads(res.stdout)
    assert doc["ok"] is True and doc["overdue"] == 1
    [warning] = doc["warnings"]
    assert warning["code"] == "backup-overdue" and warning["subject"].endswith(str(src))

    # Filters name the schedule to watch; one with no snapshot at all is overdue too.
    res = cli("-r", cli_repo, "check", "--max-age", "3d", "--host", "elsewhere")
    assert res.code == ExitCode.OVERDUE and "no snapshot at all" in res.stdout

    # Damage outranks lateness: exit 4.
    index = next((Path(cli_repo) / "index").iterdir())
    index.write_bytes(b"junk")
    assert cli("-r", cli_repo, "check", "--max-age", "26h").code == ExitCode.INTEGRITY


def test_check_max_age_usage_errors(cli: CliRunner, cli_repo: str) -> None:
    for args in (["--max-age", "soon"], ["--max-age", "0h"], ["--host", "db1"]):
        res = cli("-r", cli_repo, "check", *args)
        assert res.code == ExitCode.USAGE, (args, res.output)
