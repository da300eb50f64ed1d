"""``safehold catalog resync``: the catalog learns the repository's snapshots of its plans
and reports the runs whose snapshot was forgotten (real repository, real cluster)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from safehold.service.cluster import Cluster
from tests.conftest import PASSWORD, CliRunner
from tests.servers.private_cluster import database_url, fresh_database

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("service_database")]


def test_resync_adds_hand_made_snapshots_and_lists_forgotten_ones(
    private_cluster: Cluster, cli: CliRunner, cli_repo: str, tmp_path: Path
) -> None:
    fresh_database(private_cluster, "resync_cli").dispose()  # empty: the commands migrate it
    url = database_url(private_cluster, "resync_cli").render_as_string(hide_password=False)
    url = url.replace("postgresql+psycopg://", "postgresql://")
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "f").write_text("one\n")
    config = tmp_path / "safehold.yaml"
    config.write_text(
        f"repository: {{location: {cli_repo}, password_env: REPO_PW}}\n"
        "sources:\n"
        f"  job: {{type: directory, paths: [{tmp_path / 'data'}], schedule: '@daily'}}\n"
        f"  byhand: {{type: directory, paths: [{tmp_path / 'data'}]}}\n"
    )
    env = {"REPO_PW": PASSWORD.decode(), "SAFEHOLD_STATE_DIR": str(tmp_path / "state")}
    service = ["--config", str(config), "--database", url]

    def safehold(*args: str) -> str:
        res = cli(*args, env=env)
        assert res.code == 0, res.output
        return res.stdout

    # Two snapshots made by hand: one of the plan's source, one of a source with no plan.
    made = json.loads(safehold("--json", "backup", "--config", str(config), "--source", "job"))
    safehold("backup", "--config", str(config), "--source", "byhand")
    [before] = json.loads(safehold("--json", "plans", *service))
    assert before["last_success"] is None

    report = json.loads(safehold("--json", "catalog", "resync", *service))
    assert report["plans"] == ["default/job"] and report["snapshots"] == 1
    assert [a["snapshot"] for a in report["added"]] == [made["snapshot"]]
    assert report["known"] == 0 and report["forgotten"] == []
    [after] = json.loads(safehold("--json", "plans", *service))
    assert after["last_success"] is not None and after["rpo_seconds"] < 600
    [run] = json.loads(safehold("--json", "runs", *service))
    assert (run["state"], run["trigger"], run["snapshot_id"]) == (
        "succeeded",
        "resync",
        made["snapshot"],
    )

    # Again: nothing to add. Then the snapshot is forgotten: its run is reported.
    again = json.loads(safehold("--json", "catalog", "resync", *service))
    assert (again["known"], again["added"], again["forgotten"]) == (1, [], [])
    safehold("forget", "--config", str(config), made["snapshot"])
    gone = json.loads(safehold("--json", "catalog", "resync", *service))
    assert gone["snapshots"] == 0
    assert [(f["plan"], f["snapshot"]) for f in gone["forgotten"]] == [
        ("default/job", made["snapshot"])
    ]
    printed = safehold("catalog", "resync", *service)
    assert "1 run(s) name a snapshot no longer in the repository" in printed
