"""The overview's filters with several projects: by project, state and source kind, for
every reading role, against a real ``create_app`` over a real catalog. A token sees its
own project's plans only, whatever its role (docs/api.md: no global admin); within it the
state and kind filters keep exactly the matching cards. A browser session holding tokens
of several projects sees all of theirs in one overview, and acts on each with its own
project's token and role."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from sqlalchemy import text

from safehold.api.tokens import create_token, revoke_token
from safehold.config import load_config
from safehold.service.plans import plans_from_config, sync_plans
from tests.web.conftest import Api
from tests.web.test_pages import READERS, csrf, login

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


@contextmanager
def session_of(api: Api, *grants: tuple[str, str]) -> Iterator[httpx.Client]:
    """A browser logged in with the tokens of ``grants`` (project, role), one after the
    other: each log-in while logged in adds its project."""
    with httpx.Client(base_url=api.url, timeout=30) as client:
        for project, role in grants:
            answer = client.post("/ui/login", data={"token": api.tokens[project, role]})
            assert answer.status_code == 303, answer.text
        yield client


def offered(html: str) -> list[str]:
    found = re.search(r'<select id="f-project".*?</select>', html, re.S)
    assert found is not None
    return re.findall(r'<option value="([^"]*)"', found.group(0))


def test_a_session_of_two_projects_sees_both_and_filters_each(projects: Api) -> None:
    with session_of(projects, ("default", "viewer"), ("beta", "operator")) as client:
        cookie = client.cookies["safehold_session"]
        assert cookie.split(".") == [projects.tokens["default", "viewer"],
                                     projects.tokens["beta", "operator"]]  # fmt: skip
        page = client.get("/ui/").text
        assert cards(page) == SEEN["default"] | SEEN["beta"]
        assert 'data-plan="other" data-project="beta"' in page
        assert 'data-plan="job" data-project="default"' in page
        # The banner counts both projects' plans: 3 failing (1 of default, 2 of beta).
        assert "3 failing" in page and "of 7 plans in 2 projects" in page
        assert named(page, ALL_NAMES) == SEEN["default"] | SEEN["beta"]
        assert offered(page) == ["", "default", "beta"]
        assert "default · viewer, beta · operator" in page
        for project in ("default", "beta"):
            shown = client.get("/ui/", params={"project": project}).text
            assert cards(shown) == SEEN[project]
            assert named(shown, ALL_NAMES) == SEEN[project]
        failing = client.get("/ui/", params={"state": "failing", "kind": "command"}).text
        assert cards(failing) == {"dump", "beta-dump", "beta-sql"}
        assert 'href="/ui/plans/beta-dump?project=beta"' in failing
        gamma = client.get("/ui/", params={"project": "gamma"}).text
        assert cards(gamma) == set() and "To see project <strong>gamma</strong>'s plans" in gamma
        # A third project's token adds it; one of a project already held replaces its own.
        added = client.post("/ui/login", data={"token": projects.tokens["gamma", "viewer"]})
        assert added.status_code == 303
        assert cards(client.get("/ui/").text) == ALL_NAMES
        again = client.post("/ui/login", data={"token": projects.tokens["default", "operator"]})
        assert again.status_code == 303
        assert len(client.cookies["safehold_session"].split(".")) == 3
        assert "default · operator, beta · operator, gamma · viewer" in client.get("/ui/").text
        out = client.post("/ui/logout", data={"csrf": csrf(client)})
        assert out.status_code == 303 and 'safehold_session=""' in out.headers["set-cookie"]
        assert client.get("/ui/", follow_redirects=False).status_code == 303


def test_each_project_acts_with_its_own_token_and_role(projects: Api) -> None:
    """An operator of default and a viewer of beta: buttons on default's plans only, a
    forged action on beta refused by beta's token's role, another project's name refused."""
    with session_of(projects, ("default", "operator"), ("beta", "viewer")) as client:
        mine = client.get("/ui/plans/dump", params={"project": "default"}).text
        assert "Run now" in mine and "Pause" in mine
        assert 'action="/ui/plans/dump/pause?project=default"' in mine
        theirs = client.get("/ui/plans/beta-dump", params={"project": "beta"})
        assert theirs.status_code == 200, theirs.text
        assert "Run now" not in theirs.text and "Pause" not in theirs.text
        # Without ?project= the first project's: beta's plan is not found there.
        assert client.get("/ui/plans/beta-dump").status_code == 404
        token = csrf(client)
        for action in ("pause", "run"):
            forged = client.post(f"/ui/plans/beta-dump/{action}?project=beta",
                                 data={"csrf": token})  # fmt: skip
            assert forged.status_code == 403, forged.text
            assert "a token of role viewer may not do this" in forged.text
        # default's operator token does not reach beta's plan under default's name.
        assert client.post("/ui/plans/beta-dump/pause", data={"csrf": token}).status_code == 404
        nowhere = client.post("/ui/plans/beta-dump/pause?project=gamma", data={"csrf": token})
        assert nowhere.status_code == 403 and "holds no token of project" in nowhere.text
        with projects.engine.connect() as db:
            assert not db.execute(text(
                "SELECT paused FROM plans WHERE project = 'beta' AND name = 'beta-dump'"
            )).scalar_one()  # fmt: skip
        # The operator's own project: pause and resume, back on the plan's page.
        paused = client.post("/ui/plans/dump/pause?project=default", data={"csrf": token})
        assert paused.status_code == 303
        assert paused.headers["location"] == "/ui/plans/dump?project=default"
        resumed = client.post("/ui/plans/dump/resume?project=default", data={"csrf": token})
        assert resumed.status_code == 303
        # Admin pages per project: beta's viewer may not see beta's tokens.
        assert client.get("/ui/tokens", params={"project": "beta"}).status_code == 403
        assert client.get("/ui/alerts", params={"project": "beta"}).status_code == 200
        drills = client.get("/ui/drills", params={"project": "beta"}).text
        assert '<strong aria-current="page">beta</strong>' in drills
        assert 'href="/ui/drills?project=default"' in drills


def test_a_run_link_without_its_project_is_sent_to_it(projects: Api) -> None:
    """A run's link pasted without ``?project=`` (a log line, an alert) finds the run in
    whichever of the session's projects has it; a project named in the link is kept."""
    with projects.engine.connect() as db:
        run_id = db.execute(text(
            "SELECT r.id FROM runs r JOIN plans p ON p.id = r.plan_id "
            "WHERE p.project = 'beta' AND r.state = 'failed' LIMIT 1"
        )).scalar_one()  # fmt: skip
    with session_of(projects, ("default", "viewer"), ("beta", "viewer")) as client:
        sent = client.get(f"/ui/runs/{run_id}")
        assert sent.status_code == 303, sent.text
        assert sent.headers["location"] == f"/ui/runs/{run_id}?project=beta"
        shown = client.get(sent.headers["location"])
        assert shown.status_code == 200 and str(run_id) in shown.text
        assert client.get(f"/ui/runs/{run_id}", params={"project": "default"}).status_code == 404
    with session_of(projects, ("default", "viewer")) as client:  # no token of beta: not found
        assert client.get(f"/ui/runs/{run_id}").status_code == 404


def test_a_revoked_token_drops_its_project_from_the_session(projects: Api) -> None:
    fresh = {
        project: create_token(projects.engine, project=project, role="viewer", name="revoked")
        for project in ("default", "beta")
    }
    with httpx.Client(base_url=projects.url, timeout=30) as client:
        for made in fresh.values():
            assert client.post("/ui/login", data={"token": made.token}).status_code == 303
        before = csrf(client)
        revoke_token(projects.engine, fresh["beta"].info.id)
        page = client.get("/ui/")
        assert page.status_code == 200 and cards(page.text) == SEEN["default"]
        assert offered(page.text) == ["", "default"]
        assert client.cookies["safehold_session"] == fresh["default"].token  # rewritten
        # The CSRF value is keyed with the session's tokens: it changed with them.
        stale = client.post("/ui/plans/dump/pause", data={"csrf": before})
        assert stale.status_code == 403 and "CSRF value does not match" in stale.text
        revoke_token(projects.engine, fresh["default"].info.id)
        gone = client.get("/ui/", follow_redirects=False)
        assert gone.status_code == 303 and gone.headers["location"].startswith("/ui/login")
        assert 'safehold_session=""' in gone.headers["set-cookie"]


def test_a_session_holds_twenty_projects_at_most(projects: Api) -> None:
    made = [create_token(projects.engine, project=f"many{i}", role="viewer", name="cap")
            for i in range(21)]  # fmt: skip
    try:
        with httpx.Client(base_url=projects.url, timeout=30) as client:
            for new in made[:20]:
                assert client.post("/ui/login", data={"token": new.token}).status_code == 303
            refused = client.post("/ui/login", data={"token": made[20].token})
            assert refused.status_code == 400 and "the most it may" in refused.text
            assert len(client.cookies["safehold_session"].split(".")) == 20
            assert len(offered(client.get("/ui/").text)) == 21
    finally:
        for new in made:
            revoke_token(projects.engine, new.info.id)
