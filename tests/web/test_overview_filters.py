"""The overview's filters with several projects: by project, state and source kind, for
every reading role, against a real ``create_app`` over a real catalog. A token sees its
own project's plans only, whatever its role (docs/api.md: no global admin); within it the
state and kind filters keep exactly the matching cards."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from sqlalchemy import text

from safehold.api.tokens import create_token
from safehold.config import load_config
from safehold.service.plans import plans_from_config, sync_plans
from tests.web.conftest import Api
from tests.web.test_pages import READERS, login

pytestmark = pytest.mark.slow

# Beside the fixture's plans (default: job, second; beta: other, all directories): plans
# of two kinds in three projects, one failing in default and two in beta.
PLANS = {
    "default": {"dump": "command"},
    "beta": {"beta-files": "directory", "beta-dump": "command", "beta-sql": "command"},
    "gamma": {"gamma-files": "directory"},
}
FAILING = {"default/dump", "beta/beta-dump", "beta/beta-sql"}
SEEN = {
    "default": {"job", "second", "dump"},
    "beta": {"other", "beta-files", "beta-dump", "beta-sql"},
    "gamma": {"gamma-files"},
}
ALL_NAMES = set().union(*SEEN.values())


@pytest.fixture(scope="module")
def projects(api: Api) -> Api:
    """The fixture's API with the plans above added, failures recorded, gamma's tokens."""
    folder: Path = api.folder
    lines = [f"repository: {{location: {folder / 'repo2'}, password_env: SH_TEST_PW}}",
             "sources:"]  # fmt: skip
    for project, plans in PLANS.items():
        for name, kind in plans.items():
            what = f"paths: [{folder / 'data'}]" if kind == "directory" else "command: 'true'"
            lines.append(f"  {name}: {{type: {kind}, {what}, schedule: '@daily', "
                         f"project: {project}}}")  # fmt: skip
    config = folder / "more.yaml"
    config.write_text("\n".join(lines) + "\n")
    more = plans_from_config(load_config(str(config)))
    api.specs.update(more)  # the app reads the same mapping (plans=lambda: specs)
    sync_plans(api.engine, api.specs.values())
    with api.engine.begin() as db:
        for key in FAILING:
            project, name = key.split("/")
            db.execute(
                text(
                    "INSERT INTO runs (id, plan_id, kind, trigger, state, queued_at, started_at, "
                    "ended_at, error, hint) SELECT gen_random_uuid(), id, 'backup', 'schedule', "
                    "'failed', now(), now(), now(), :e, 'look at the command' FROM plans "
                    "WHERE project = :p AND name = :n"
                ),
                {"p": project, "n": name, "e": f"{name} exited with 3"},
            )
    for role in READERS:
        api.tokens["gamma", role] = create_token(
            api.engine, project="gamma", role=role, name=f"gamma-{role}"
        ).token
    return api


def cards(html: str) -> set[str]:
    return set(re.findall(r'data-plan="([^"]+)"', html))


def named(html: str, names: set[str]) -> set[str]:
    """Which of ``names`` the page shows: as a card, a link or a repository's user."""
    where = html[html.index('id="where-h"') :]
    return {name for name in names
            if f'data-plan="{name}"' in html or f'/plans/{name}"' in html
            or re.search(rf"(?<![\w-]){re.escape(name)}(?![\w-])", where)}  # fmt: skip


@pytest.mark.parametrize("role", READERS)
@pytest.mark.parametrize("project", sorted(SEEN))
def test_each_project_sees_its_own_and_filters_them(projects: Api, project: str, role: str) -> None:
    mine = SEEN[project]
    failing = {key.split("/")[1] for key in FAILING if key.startswith(f"{project}/")}
    commands = {name for name, kind in PLANS[project].items() if kind == "command"}
    with login(projects, project=project, role=role) as client:
        page = client.get("/ui/").text
        assert cards(page) == mine, page[-3000:]
        assert named(page, ALL_NAMES) == mine  # the repositories' users are its own too
        # The filters offer the session's project alone, and the project's own kinds.
        projects_offered = re.search(r'<select id="f-project".*?</select>', page, re.S)
        assert projects_offered is not None
        assert re.findall(r'<option value="([^"]*)"', projects_offered.group(0)) == ["", project]
        kinds = re.search(r'<select id="f-kind".*?</select>', page, re.S)
        assert kinds is not None
        offered = set(re.findall(r'<option value="([^"]+)"', kinds.group(0)))
        assert offered == ({"command"} if commands else set()) | (
            {"directory"} if mine - commands else set()
        )
        if failing:
            assert f"{len(failing)} failing" in page
        else:
            assert "All good" in page
        assert cards(client.get("/ui/", params={"state": "failing"}).text) == failing
        assert cards(client.get("/ui/", params={"kind": "command"}).text) == commands
        assert cards(client.get("/ui/", params={"kind": "directory"}).text) == mine - commands
        both = client.get("/ui/", params={"state": "failing", "kind": "directory"}).text
        assert cards(both) == failing - commands
        assert cards(client.get("/ui/", params={"project": project}).text) == mine
        # Another project's plans are not shown, and the page says which token would:
        # alike for a project that exists and one that does not.
        for other in ({"default", "beta", "gamma"} - {project}) | {"nowhere"}:
            elsewhere = client.get("/ui/", params={"project": other, "state": "failing"})
            assert elsewhere.status_code == 200
            assert cards(elsewhere.text) == set()
            assert f"To see project <strong>{other}</strong>'s plans" in elsewhere.text
            assert named(elsewhere.text, ALL_NAMES) <= mine, other


def test_a_failing_card_says_why_within_its_project(projects: Api) -> None:
    with login(projects, project="beta", role="operator") as client:
        page = client.get("/ui/", params={"state": "failing", "kind": "command"}).text
        assert cards(page) == {"beta-dump", "beta-sql"}
        assert "beta-dump exited with 3" in page and "look at the command" in page
        assert "dump exited with 3" not in page.replace("beta-dump exited with 3", "")
