"""Every dashboard page renders for every role; roles, CSRF and the session cookie hold,
against a real ``create_app`` on uvicorn over a real catalog."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from sqlalchemy import text

from tests.web.conftest import Api

pytestmark = pytest.mark.slow

READERS = ("admin", "operator", "viewer")


@contextmanager
def login(api: Api, project: str = "default", role: str = "admin") -> Iterator[httpx.Client]:
    with httpx.Client(base_url=api.url, timeout=30) as client:
        answer = client.post("/ui/login", data={"token": api.tokens[project, role], "next": "/ui/"})
        assert answer.status_code == 303, answer.text
        assert answer.headers["location"] == "/ui/"
        yield client


def csrf(client: httpx.Client, path: str = "/ui/") -> str:
    found = re.search(r'name="csrf" value="([0-9a-f]{64})"', client.get(path).text)
    assert found, "no CSRF field on the page"
    return found.group(1)


def test_the_session_cookie_is_http_only_and_strict(api: Api) -> None:
    with httpx.Client(base_url=api.url, timeout=30) as client:
        answer = client.post("/ui/login", data={"token": api.tokens["default", "viewer"]})
        cookie = answer.headers["set-cookie"].lower()
        assert "httponly" in cookie and "samesite=strict" in cookie and "path=/ui" in cookie
        assert "secure" not in cookie  # plain HTTP on loopback here; Secure under TLS
        # Without the cookie, a page sends the browser to log in, and back after.
        bare = httpx.get(f"{api.url}/ui/plans/job", follow_redirects=False)
        assert bare.status_code == 303
        assert bare.headers["location"] == "/ui/login?next=/ui/plans/job"


@pytest.mark.parametrize(
    ("token", "why"),
    [("shk_0000000000000000_" + "a" * 43, "not valid"), ("", "not valid"), (None, "agent")],
)
def test_a_bad_or_agent_token_does_not_log_in(api: Api, token: str | None, why: str) -> None:
    value = api.tokens["default", "agent"] if token is None else token
    answer = httpx.post(f"{api.url}/ui/login", data={"token": value})
    assert answer.status_code == 401 and why in answer.text
    assert "set-cookie" not in answer.headers


@pytest.mark.parametrize("role", READERS)
def test_every_page_renders_for_every_role(api: Api, role: str) -> None:
    with login(api, role=role) as client:
        overview = client.get("/ui/")
        assert overview.status_code == 200, overview.text
        assert 'data-plan="job"' in overview.text and 'data-plan="second"' in overview.text
        assert 'data-plan="other"' not in overview.text  # another project's plan
        assert '<svg class="strip"' in overview.text
        for path in (
            "/ui/?state=failing", "/ui/?kind=directory", "/ui/?project=default",
            "/ui/plans/job", "/ui/plans/second", f"/ui/runs/{api.done_run}",
            f"/ui/runs/{api.done_run}/live", "/ui/restore-points", "/ui/restore-points?plan=job",
            "/ui/agents", "/ui/drills", "/ui/alerts",
        ):  # fmt: skip
            page = client.get(path)
            assert page.status_code == 200, (path, page.text[-500:])
            assert "<main" in page.text or path.endswith("/live")
            assert "Traceback" not in page.text
        plan = client.get("/ui/plans/job").text
        assert ("Run now" in plan) == (role != "viewer")
        assert ("Pause" in plan) == (role != "viewer")
        tokens = client.get("/ui/tokens")
        assert tokens.status_code == (200 if role == "admin" else 403)
        assert ('href="/ui/tokens?project=default"' in overview.text) == (role == "admin")
        if role == "admin":
            assert "default-viewer" in tokens.text
            assert api.tokens["default", "viewer"].split("_", 2)[2] not in tokens.text


def test_drills_and_alerts_show_the_projects_own(api: Api) -> None:
    """A failed drill and an open incident of the project are shown, with the error and
    the next step; another project's are not, there or through the API."""
    with api.engine.begin() as db:
        for project, plan in (("default", "job"), ("beta", "other")):
            db.execute(
                text(
                    "INSERT INTO drills (project, plan, snapshot_id, started_at, finished_at, "
                    "restore_seconds, rto_target_seconds, result, failed_phase, error) VALUES "
                    "(:p, :n, :s, now() - interval '1 hour', now(), 1300, 900, 'failed', 'check', "
                    ":e)"
                ),
                {"p": project, "n": plan, "s": "ab" * 32, "e": f"{project} rows 0"},
            )
            db.execute(text(
                "INSERT INTO incidents (kind, project, plan, open_key, opened_at, error, hint) "
                "VALUES ('drill_failed', :p, :n, :k, now(), :e, 'run the drill again')"),
                {"p": project, "n": plan, "k": f"drill_failed/{project}/{plan}",
                 "e": f"{project} rows 0"})  # fmt: skip
    try:
        with login(api, role="viewer") as client:
            drills = client.get("/ui/drills").text
            assert "default rows 0" in drills
            assert "<title>Drills · safehold</title>" in drills  # a plain title, no markup
            assert "over target" in drills and "21 min 40 s" in drills
            assert "beta rows 0" not in drills
            alerts = client.get("/ui/alerts").text
            assert "drill failed" in alerts and "run the drill again" in alerts
            assert "beta rows 0" not in alerts
            card = client.get("/ui/").text
            assert "Last drill" in card and "failed" in card
        with httpx.Client(base_url=api.url, timeout=30, headers={
                "Authorization": f"Bearer {api.tokens['beta', 'viewer']}"}) as beta:  # fmt: skip
            [incident] = beta.get("/api/v1/alerts").json()
            assert (incident["plan"], incident["state"]) == ("other", "open")
            [drill] = beta.get("/api/v1/drills").json()["items"]
            assert drill["plan"] == "other" and drill["over_target"] is True
    finally:
        with api.engine.begin() as db:
            db.execute(text("DELETE FROM drills"))
            db.execute(text("DELETE FROM incidents"))


def test_another_projects_objects_are_not_found(api: Api) -> None:
    with login(api, project="beta", role="admin") as client:
        assert client.get("/ui/plans/job").status_code == 404
        assert client.get(f"/ui/runs/{api.done_run}").status_code == 404
        assert 'data-plan="other"' in client.get("/ui/").text


def test_a_viewers_forged_post_is_refused(api: Api) -> None:
    with login(api, role="viewer") as client:
        token = csrf(client)
        for action in ("pause", "run", "resume"):
            answer = client.post(f"/ui/plans/job/{action}", data={"csrf": token})
            assert answer.status_code == 403, answer.text
            assert "a token of role viewer may not do this" in answer.text
        assert client.post("/ui/tokens", data={"csrf": token, "role": "admin"}).status_code == 403
    with api.engine.connect() as db:
        assert not db.execute(
            text("SELECT paused FROM plans WHERE project = 'default' AND name = 'job'")
        ).scalar_one()


def test_csrf_and_origin_are_checked(api: Api) -> None:
    with login(api, role="operator") as client:
        token = csrf(client)
        assert client.post("/ui/plans/second/pause", data={"x": "1"}).status_code == 403
        assert client.post("/ui/plans/second/pause").status_code == 400  # not a form
        assert client.post("/ui/plans/second/pause", data={"csrf": "0" * 64}).status_code == 403
        cross = client.post("/ui/plans/second/pause", data={"csrf": token},
                            headers={"Sec-Fetch-Site": "cross-site"})  # fmt: skip
        assert cross.status_code == 403
        other = client.post("/ui/plans/second/pause", data={"csrf": token},
                            headers={"Origin": "http://evil.example"})  # fmt: skip
        assert other.status_code == 403
        # Another session's CSRF value is no good either.
        with login(api, role="admin") as admin:
            assert client.post("/ui/plans/second/pause",
                               data={"csrf": csrf(admin)}).status_code == 403  # fmt: skip
        paused = client.post("/ui/plans/second/pause", data={"csrf": token},
                             headers={"Origin": api.url})  # fmt: skip
        assert paused.status_code == 303
        assert paused.headers["location"] == "/ui/plans/second?project=default"
        page = client.get("/ui/plans/second").text
        assert "Resume" in page and "paused" in page
        resumed = client.post("/ui/plans/second/resume", data={"csrf": token})
        assert resumed.status_code == 303
        assert "Pause" in client.get("/ui/plans/second").text
        out = client.post("/ui/logout", data={"csrf": token})
        assert out.status_code == 303 and 'safehold_session=""' in out.headers["set-cookie"]


def test_an_admin_makes_and_revokes_a_token(api: Api) -> None:
    with login(api, role="admin") as client:
        token = csrf(client)
        made = client.post("/ui/tokens", data={"csrf": token, "role": "viewer", "name": "web"})
        assert made.status_code == 201
        found = re.search(r'value="(shk_[0-9a-f]{16}_[\w-]{43})"', made.text)
        assert found, "the new token is shown once"
        token_id = found.group(1).split("_")[1]
        revoked = client.post(f"/ui/tokens/{token_id}/revoke", data={"csrf": token})
        assert revoked.status_code == 303
        assert "revoked" in client.get("/ui/tokens").text
    bad = httpx.post(f"{api.url}/ui/login", data={"token": found.group(1)})
    assert bad.status_code == 401


def test_the_root_and_the_api_are_unchanged(api: Api) -> None:
    root = httpx.get(f"{api.url}/", follow_redirects=False)
    assert root.status_code == 307 and root.headers["location"] == "/ui/"
    css = httpx.get(f"{api.url}/ui/static/style.css")
    assert css.status_code == 200 and "@media" in css.text
    # The API still answers JSON errors, and the OpenAPI document has no dashboard route.
    assert httpx.get(f"{api.url}/api/v1/plans").json()["error"]["code"] == "unauthenticated"
    paths = httpx.get(f"{api.url}/openapi.json").json()["paths"]
    assert not [path for path in paths if path.startswith("/ui") or path == "/"]


def test_a_running_run_follows_with_htmx_or_reloads_without(
    api: Api, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run_id = api.queued_run("default/second")
    with login(api, role="operator") as client:
        monkeypatch.setenv("SAFEHOLD_WEB_ASSETS", str(tmp_path / "none"))
        plain = client.get(f"/ui/runs/{run_id}")
        assert plain.headers.get("refresh") == "2" and "hx-get" not in plain.text
        assert "htmx.min.js" not in plain.text and "Cancel the run" in plain.text
        (tmp_path / "vendor").mkdir()
        (tmp_path / "vendor" / "htmx.min.js").write_text("/* stand-in */")
        monkeypatch.setenv("SAFEHOLD_WEB_ASSETS", str(tmp_path / "vendor"))
        live = client.get(f"/ui/runs/{run_id}")
        assert "refresh" not in live.headers
        assert f'hx-get="/ui/runs/{run_id}/live?project=default"' in live.text
        assert client.get("/ui/vendor/htmx.min.js").text == "/* stand-in */"
        fragment = client.get(f"/ui/runs/{run_id}/live").text
        assert fragment.lstrip().startswith('<div id="live" hx-get=')
        # Cancelled, the run has ended: the fragment stops polling.
        token = csrf(client, f"/ui/runs/{run_id}")
        assert client.post(f"/ui/runs/{run_id}/cancel", data={"csrf": token}).status_code == 303
        ended = client.get(f"/ui/runs/{run_id}/live").text
        assert "hx-get" not in ended and "cancelled" in ended


@pytest.mark.parametrize(
    ("target", "lands"),
    [("/ui/plans/job", "/ui/plans/job"), ("//evil.example/ui/", "/ui/"),
     ("https://evil.example/", "/ui/"), ("/api/v1/plans", "/ui/")],
)  # fmt: skip
def test_logging_in_goes_back_only_within_the_dashboard(api: Api, target: str, lands: str) -> None:
    form = {"token": api.tokens["default", "viewer"], "next": target}
    answer = httpx.post(f"{api.url}/ui/login", data=form)
    assert answer.status_code == 303 and answer.headers["location"] == lands


def test_a_login_from_another_site_is_refused(api: Api) -> None:
    for headers in ({"Origin": "http://evil.example"}, {"Sec-Fetch-Site": "cross-site"}):
        answer = httpx.post(f"{api.url}/ui/login", headers=headers,
                            data={"token": api.tokens["default", "viewer"]})  # fmt: skip
        assert answer.status_code == 403 and "set-cookie" not in answer.headers
