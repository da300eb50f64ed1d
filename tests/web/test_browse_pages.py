"""The pages of a restore point's files and of a diff, for every reading role, over a real
repository (the API's children read it); the drills page's charts."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
from sqlalchemy import text

from safehold.clock import utcnow
from safehold.web.trends import repository_trends
from tests.api.test_snapshot_files_api import points
from tests.web.conftest import Api
from tests.web.test_pages import READERS, login

__all__ = ["points"]

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("api_database")]


@pytest.mark.parametrize("role", READERS)
def test_files_and_diff_pages(api: Api, points: list[dict[str, Any]], role: str) -> None:
    newest, older = points[0]["id"], points[1]["id"]
    data = str(api.folder / "data")
    with login(api, role=role) as client:
        listed = client.get("/ui/restore-points").text
        assert f'/ui/restore-points/{newest}/files?project=default"' in listed
        assert f"/ui/restore-points/{newest}/diff?against={older}" in listed
        top = client.get(f"/ui/restore-points/{newest}/files")
        assert top.status_code == 200, top.text[-500:]
        folder = client.get(f"/ui/restore-points/{newest}/files", params={"path": data}).text
        assert 'data-path="' + data + '/c.txt"' in folder and "13 B" in folder
        assert ('aria-label="Restore c.txt"' in folder) == (role != "viewer")
        diff = client.get(f"/ui/restore-points/{newest}/diff", params={"against": older}).text
        assert "1 added, 1 removed, 1 changed" in diff
        assert 'data-change="-"' in diff and "a.txt" in diff
        missing = client.get(f"/ui/restore-points/{newest}/files", params={"path": "/nope"})
        assert missing.status_code == 404 and "nope" in missing.text
    with login(api, project="beta", role=role) as client:
        assert client.get(f"/ui/restore-points/{newest}/files").status_code == 404


def test_the_drills_page_draws_rto_and_repository_trends(api: Api) -> None:
    with api.engine.begin() as db:
        for i, seconds in enumerate((300, 500, 1300)):
            db.execute(
                text(
                    "INSERT INTO drills (project, plan, snapshot_id, started_at, finished_at, "
                    "restore_seconds, rto_target_seconds, result) VALUES "
                    "('default', 'job', :s, now() - :i * interval '1 day', now(), :r, 900, "
                    "'passed')"
                ),
                {"s": "cd" * 32, "i": 3 - i, "r": seconds},
            )
            db.execute(
                text(
                    "INSERT INTO runs (id, plan_id, kind, trigger, state, ended_at, bytes_read, "
                    "bytes_added) SELECT gen_random_uuid(), id, 'backup', 'manual', "
                    "'succeeded', now() - :i * interval '1 day', 4000, 1000 FROM plans "
                    "WHERE project = 'default' AND name = 'job'"
                ),
                {"i": 3 - i},
            )
    try:
        with login(api, role="viewer") as client:
            page = client.get("/ui/drills").text
        assert "restore times of job&#x27;s drills" in page and 'class="target"' in page
        assert "RTO target 15 min" in page and 'class="s-over"' in page
        assert "data added to" in page and "(4.0x)" in page
        assert "2.9 KiB added in all" in page  # 3 x 1000 bytes, summed
        # A location written with its credentials (a file plan's, as the file has it) is
        # drawn without them.
        secret = {key: replace(spec, repository="sftp://bob:hunter2@backup.example/repo")
                  for key, spec in api.specs.items()}  # fmt: skip
        (trend,) = repository_trends(api.engine, secret, "default", utcnow())
        assert trend.repository == "sftp://backup.example/repo"
        assert "hunter2" not in str(trend.charts()) and "bob" not in str(trend.charts())
    finally:
        with api.engine.begin() as db:
            db.execute(text("DELETE FROM drills"))
