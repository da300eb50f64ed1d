"""The dashboard in a real browser (Debian's chromium, driven by Playwright) against a
real ``safehold serve``. One test walks the newcomer's path in order (log in, find the
failing plan and why, run it again and watch it finish live, restore one file of its
point, see the alert resolved); another pauses a plan as an operator, sees a viewer get
no such button (and the server refuse the forged POST), diffs two points and works at
phone width; a third follows a failed drill to its check's output.

With ``SAFEHOLD_SCREENSHOTS=1`` the tests write each page's screenshot into
docs/dashboard/ (docs/dashboard.md shows them); otherwise nothing is written there.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Browser, Page, expect

from tests.conftest import PASSWORD
from tests.e2e.waiting import wait_for

pytestmark = pytest.mark.slow

SHOTS = Path(__file__).resolve().parents[2] / "docs" / "dashboard"
RUN_TIMEOUT = 120_000  # ms: a run on this shared machine may wait for a worker


def shot(page: Page, name: str) -> None:
    """The page's screenshot into docs/dashboard/, when asked for."""
    if os.environ.get("SAFEHOLD_SCREENSHOTS") == "1":
        SHOTS.mkdir(exist_ok=True)
        page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True, animations="disabled")


class Serve:
    """``safehold serve`` on a free port, with a plan that works and one whose hook fails,
    and a token per role."""

    def __init__(self, tmp: Path, state_dir: Path, extra: str = "") -> None:
        self.tmp = tmp
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("SAFEHOLD_")}
        self.env.update(REPO_PW=PASSWORD.decode(), HOME=str(tmp / "home"),
                        SAFEHOLD_CACHE_DIR=str(tmp / "cache"))  # fmt: skip
        if "SAFEHOLD_WEB_ASSETS" in os.environ:
            self.env["SAFEHOLD_WEB_ASSETS"] = os.environ["SAFEHOLD_WEB_ASSETS"]
        data = tmp / "data"
        data.mkdir()
        (data / "orders.csv").write_text("id,total\n1,9.50\n2,12.00\n")
        (data / "notes.txt").write_text("not this one\n")
        hook = tmp / "check-lock.sh"
        hook.write_text("#!/bin/sh\necho 'the database is locked by a migration' >&2\nexit 3\n")
        hook.chmod(0o755)
        self.config = tmp / "safehold.yaml"
        self.config.write_text(
            f"repository: {{location: {tmp / 'repo'}, password_env: REPO_PW}}\n"
            f"service: {{state_dir: {state_dir}}}\n"
            "alerts: {evaluate_every: 1s}\n"
            f"sources:\n  shop-files:\n    type: directory\n    paths: [{data}]\n"
            '    schedule: "@daily"\n'
            f"  billing-db:\n    type: directory\n    paths: [{data}]\n"
            f'    schedule: "0 */6 * * *"\n    hooks: {{pre-backup-lock: {hook}}}\n'
            # Never run yet and older than its 1 s RPO target: at risk on the overview, and
            # an RPO alert open.
            f"  archive:\n    type: directory\n    paths: [{data}]\n"
            '    schedule: "@yearly"\n    rpo_target: 1s\n'
            # Another project's plan: a session sees it once it holds a token of "ops".
            f"  ops-files:\n    type: directory\n    paths: [{data}]\n"
            '    schedule: "@yearly"\n    project: ops\n' + extra
        )
        self.log = tmp / "serve.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = ""

    def safehold(self, *args: str, **env: str) -> str:
        done = subprocess.run([sys.executable, "-m", "safehold", *args],
                              env={**self.env, **env}, capture_output=True, text=True,
                              timeout=120)  # fmt: skip
        assert done.returncode == 0, done.stderr
        return done.stdout.strip()

    def token(self, role: str, project: str = "default") -> str:
        return self.safehold("token", "create", "--config", str(self.config), "--project",
                             project, "--role", role, "--name", f"web-{role}")  # fmt: skip

    def start(self) -> None:
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "safehold", "serve", "--config", str(self.config),
                 "--workers", "1", "--tick", "0.5", "--listen", "127.0.0.1:0"],
                env=self.env, stdout=out, stderr=out,
            )  # fmt: skip
        found: list[str] = []

        def listening() -> bool:
            assert self.proc is not None and self.proc.poll() is None, self.log.read_text()
            text = self.log.read_text(errors="replace")
            found[:] = re.findall(r"API listening on (http://127\.0\.0\.1:\d+)", text)
            return bool(found)

        wait_for("the API to listen", listening, timeout=90)
        self.url = found[0]


@pytest.fixture
def serve(make_state_dir: Callable[[], Path], tmp_path: Path) -> Iterator[Serve]:
    yield from _serving(Serve(tmp_path, make_state_dir()))


@pytest.fixture
def drill_serve(make_state_dir: Callable[[], Path], tmp_path: Path) -> Iterator[Serve]:
    """A plan whose drill (every minute) restores its point and whose check fails."""
    check = tmp_path / "check-ledger.sh"
    check.write_text("#!/bin/sh\necho 'ledger total 0, expected 42'\nexit 1\n")
    check.chmod(0o755)
    extra = (f"  ledger:\n    type: directory\n    paths: [{tmp_path / 'data'}]\n"
             '    schedule: "@yearly"\n'
             f'    drill: {{schedule: "* * * * *", check: {{command: {check}}}}}\n')  # fmt: skip
    found = Serve(tmp_path, make_state_dir(), extra)
    yield from _serving(found, before=lambda: found.safehold(
        "backup", "--config", str(found.config), "--source", "ledger"))  # fmt: skip


def _serving(found: Serve, before: Callable[[], object] = lambda: None) -> Iterator[Serve]:
    found.safehold("-r", str(found.tmp / "repo"), "init", "--kdf-log2n", "10",
                   SAFEHOLD_PASSWORD=PASSWORD.decode())  # fmt: skip
    before()
    found.start()
    try:
        yield found
    finally:
        if found.proc is not None:
            found.proc.send_signal(signal.SIGTERM)
            try:
                found.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                found.proc.kill()
                found.proc.wait()


def log_in(page: Page, serve: Serve, token: str) -> None:
    page.goto(f"{serve.url}/")  # the root sends a browser to the dashboard, then to log in
    expect(page).to_have_url(re.compile(r"/ui/login"))
    page.get_by_label("Token").fill(token)
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_role("heading", name="Overview")).to_be_visible()


def fail_billing_db(serve: Serve, operator: str) -> None:
    """billing-db's scheduled run failed overnight, before anyone looked: a run through the
    API (its hook exits 3), waited for to its end and its alert."""
    with httpx.Client(base_url=serve.url, timeout=30,
                      headers={"Authorization": f"Bearer {operator}"}) as api:  # fmt: skip
        queued = api.post("/api/v1/plans/billing-db/run")
        assert queued.status_code == 202, queued.text
        run = f"/api/v1/runs/{queued.json()['run_id']}"
        wait_for("the failing run to end", lambda: api.get(run).json()["state"] == "failed",
                 timeout=RUN_TIMEOUT / 1000)  # fmt: skip

        # and the alerts told of it (evaluated every second, at most 5 s apart), so that
        # the run again later resolves an incident that was opened
        def told() -> bool:
            found = api.get("/api/v1/alerts").json()
            return any(a["plan"] == "billing-db" and a["state"] == "open" for a in found)

        wait_for("billing-db's incident to open", told, timeout=60)


def test_a_newcomer_finds_a_failing_plan_sees_why_runs_it_again_and_restores_a_file(
    serve: Serve, browser: Browser, tmp_path: Path
) -> None:
    """The issue's "done when", in the order a newcomer who never read the docs goes:
    log in, the banner and the failing card, its plan, the failed run's error and hint,
    run it again once the cause is gone, watch it finish live, then its restore point:
    browse it and restore one file into a new folder. The alerts page then shows the
    failure resolved (and another plan's incident still open)."""
    operator = serve.token("operator")
    fail_billing_db(serve, operator)
    page = browser.new_page()
    page.goto(f"{serve.url}/")
    shot(page, "login")
    log_in(page, serve, operator)

    # The overview: the banner says a plan fails, its card says which and why.
    expect(page.get_by_role("status")).to_contain_text("1 failing")
    expect(page.get_by_role("status")).to_contain_text("1 at risk")  # archive, never run
    card = page.locator('[data-plan="billing-db"]')
    expect(card).to_contain_text("failing")
    expect(card.locator(".reason")).to_contain_text("pre-backup-lock")
    shot(page, "overview")
    page.get_by_label("State").select_option("failing")
    page.get_by_role("button", name="Filter").click()
    expect(page.locator("[data-plan]")).to_have_count(1)

    # Its plan, then the failed run: the error, the hint, the hook's own output.
    page.locator('[data-plan="billing-db"]').get_by_role("link", name="billing-db").click()
    expect(page.get_by_role("heading", name="Plan billing-db")).to_be_visible()
    page.locator("tr", has=page.locator(".tag", has_text="failed")).get_by_role("link").click()
    expect(page.locator("#run-state")).to_have_text("failed")
    failure = page.get_by_role("alert").first
    expect(failure).to_contain_text("pre-backup-lock")
    expect(failure.locator(".hint")).to_have_text(
        "What to do: its full output is in the run record"
    )
    expect(page.locator("pre").first).to_contain_text("the database is locked by a migration")
    shot(page, "run-failed")

    # The migration is over (the hook now passes): back to the plan, run it now, and
    # watch the run finish live on the page it opens.
    serve.tmp.joinpath("check-lock.sh").write_text("#!/bin/sh\nexit 0\n")
    page.get_by_role("link", name="plan billing-db").click()
    page.get_by_role("button", name="Run now").click()
    expect(page).to_have_url(re.compile(r"/ui/runs/[0-9a-f-]{36}\?project=default$"))
    expect(page.locator("#run-state")).to_have_text("succeeded", timeout=RUN_TIMEOUT)
    expect(page.locator("#log")).to_contain_text("run.finished")
    shot(page, "run")

    # Its restore point: browse down to the file and restore it alone into a new folder.
    page.get_by_role("navigation").get_by_role("link", name="Restore points").click()
    points = page.locator("section", has=page.get_by_role("heading", name="billing-db"))
    points.locator(".point").first.get_by_role("link", name="Browse files").click()
    for name in serve.tmp.parts[1:]:  # down the folders to the backed-up one
        page.get_by_role("link", name=f"{name}/", exact=True).click()
    page.get_by_role("link", name="data/", exact=True).click()
    row = page.locator('tr[data-path$="/data/orders.csv"]')
    expect(row).to_contain_text("24 B")
    expect(page.locator('tr[data-path$="/data/notes.txt"]')).to_be_visible()
    one = tmp_path / "one-file"
    page.get_by_label("Restore the chosen item into the new folder").fill(str(one))
    shot(page, "files")
    row.get_by_role("button", name="Restore orders.csv").click()
    expect(page.get_by_role("heading", name=re.compile("Restore run"))).to_be_visible()
    expect(page.locator("#run-state")).to_have_text("succeeded", timeout=RUN_TIMEOUT)
    found = [p for p in one.rglob("*") if p.is_file()]
    assert [p.name for p in found] == ["orders.csv"], found
    assert found[0].read_text() == "id,total\n1,9.50\n2,12.00\n"

    # The alerts page: billing-db's failure resolved by the run, archive's RPO still open.
    resolved = page.locator("tr", has=page.locator(".tag", has_text="resolved"))

    def told() -> bool:
        page.goto(f"{serve.url}/ui/alerts")
        return resolved.count() > 0

    wait_for("billing-db's incident to be resolved", told, timeout=60)
    expect(resolved.first).to_contain_text("billing-db")
    expect(resolved.first).to_contain_text("run failed")
    opened = page.locator("tr", has=page.locator(".tag", has_text="open"))
    expect(opened.first).to_contain_text("archive")
    shot(page, "alerts")


def test_an_operator_pauses_a_viewer_may_not_and_two_points_differ(
    serve: Serve, browser: Browser
) -> None:
    """What the walk above does not: pause and resume (a viewer gets no such button, and
    the server refuses its forged POST), a whole point restored, and the diff of two
    points; then an admin at phone width makes and revokes a token."""
    operator, viewer = serve.token("operator"), serve.token("viewer")
    page = browser.new_page()
    log_in(page, serve, operator)
    expect(page.get_by_role("status")).to_contain_text("0 failing")  # archive: at risk
    page.get_by_role("link", name="shop-files").click()
    page.get_by_role("button", name="Run now").click()
    expect(page.locator("#run-state")).to_have_text("succeeded", timeout=RUN_TIMEOUT)

    # Pause it as an operator; the plan's page then offers resume instead.
    page.goto(f"{serve.url}/ui/plans/shop-files")
    expect(page.locator("svg.chart").first).to_be_visible()
    page.get_by_role("button", name="Pause").click()
    expect(page.get_by_role("button", name="Resume")).to_be_visible()
    expect(page.get_by_role("heading", name="Plan shop-files")).to_contain_text("paused")
    shot(page, "plan")

    # A viewer sees no such button, and a POST forged with its own session is refused.
    context = browser.new_context()
    seen = context.new_page()
    log_in(seen, serve, viewer)
    seen.goto(f"{serve.url}/ui/plans/shop-files")
    expect(seen.get_by_role("heading", name="Plan shop-files")).to_be_visible()
    expect(seen.get_by_role("button", name="Resume")).to_have_count(0)
    expect(seen.get_by_role("button", name="Run now")).to_have_count(0)
    csrf = seen.locator('input[name="csrf"]').first.get_attribute("value")
    assert csrf
    forged = context.request.post(f"{serve.url}/ui/plans/shop-files/resume", form={"csrf": csrf})
    assert forged.status == 403 and "viewer may not do this" in forged.text()
    seen.goto(f"{serve.url}/ui/restore-points")
    expect(seen.get_by_text("Start restore")).to_have_count(0)
    # Logged in, the log-in page adds another project: both projects' cards in one view.
    seen.get_by_role("link", name="Add a project").click()
    seen.get_by_label("Token").fill(serve.token("viewer", "ops"))
    seen.get_by_role("button", name="Add the project").click()
    expect(seen.locator('[data-plan="ops-files"]')).to_contain_text("ops")
    expect(seen.locator('[data-plan="shop-files"]')).to_be_visible()
    context.close()

    # Restore the whole point into a new folder (the walk restores one file), and watch
    # the job to its end.
    page.get_by_role("button", name="Resume").click()
    page.get_by_role("navigation").get_by_role("link", name="Restore points").click()
    point = page.locator(".point").first
    expect(point).to_contain_text("full")
    point.get_by_text("Restore #").click()
    target = serve.tmp / "restored"
    point.get_by_label("Target path").fill(str(target))
    shot(page, "restore-points")
    point.get_by_role("button", name="Start restore").click()
    expect(page.get_by_role("heading", name=re.compile("Restore run"))).to_be_visible()
    expect(page.locator("#run-state")).to_have_text("succeeded", timeout=RUN_TIMEOUT)
    restored = sorted(p.name for p in target.rglob("*") if p.is_file())
    assert restored == ["notes.txt", "orders.csv"], restored

    # A second point with a file more and one changed: the diff between the two says so.
    (serve.tmp / "data" / "refunds.csv").write_text("id\n7\n")
    (serve.tmp / "data" / "notes.txt").write_text("changed, and longer\n")
    page.goto(f"{serve.url}/ui/plans/shop-files")
    page.get_by_role("button", name="Run now").click()
    expect(page.locator("#run-state")).to_have_text("succeeded", timeout=RUN_TIMEOUT)
    page.get_by_role("navigation").get_by_role("link", name="Restore points").click()
    page.get_by_role("link", name=re.compile("Changes since")).first.click()
    expect(page.locator("#diff-summary")).to_contain_text("1 added, 0 removed, 1 changed")
    expect(page.locator('tr[data-change="+"]')).to_contain_text("refunds.csv")
    shot(page, "diff")

    page.get_by_role("navigation").get_by_role("link", name="Agents").click()
    expect(page.get_by_role("heading", name="Agents")).to_be_visible()
    shot(page, "agents")

    # An admin at phone width, on the same service (one server less to start).
    phone = browser.new_page(viewport={"width": 390, "height": 800})
    log_in(phone, serve, serve.token("admin"))
    # Every control is reachable from the keyboard: tab to the first card's link.
    phone.keyboard.press("Tab")
    expect(phone.get_by_role("link", name="Skip to content")).to_be_focused()
    width = phone.evaluate("document.documentElement.scrollWidth")
    assert width <= 400, f"the overview scrolls sideways at phone width ({width} px)"
    shot(phone, "overview-phone")
    phone.get_by_role("navigation").get_by_role("link", name="Tokens").click()
    phone.get_by_label("Name").fill("ci")
    phone.get_by_label("Role").select_option("viewer")
    phone.get_by_role("button", name="Make a token").click()
    made = phone.get_by_label("New token").input_value()
    assert re.fullmatch(r"shk_[0-9a-f]{16}_[\w-]{43}", made)
    phone.get_by_role("button", name="Revoke ci").click()
    expect(phone.get_by_role("row", name=re.compile("ci"))).to_contain_text("revoked")
    phone.get_by_role("button", name="Log out").click()
    expect(phone).to_have_url(re.compile(r"/ui/login"))
    phone.goto(f"{serve.url}/ui/tokens")
    expect(phone).to_have_url(re.compile(r"/ui/login\?next=/ui/tokens"))


def test_a_failed_drill_is_followed_to_its_check_output(
    drill_serve: Serve, browser: Browser
) -> None:
    page = browser.new_page()
    log_in(page, drill_serve, drill_serve.token("viewer"))
    failed = page.locator("tr", has=page.locator(".tag", has_text="failed"))

    def drilled() -> bool:
        page.goto(f"{drill_serve.url}/ui/drills")
        return failed.count() > 0

    wait_for("the drill to fail", drilled, timeout=150)
    expect(failed.first).to_contain_text("check")
    shot(page, "drills")
    failed.first.get_by_role("link").first.click()
    expect(page.get_by_role("heading", name=re.compile("Drill: failed in check"))).to_be_visible()
    expect(page.locator("#check-output")).to_contain_text("ledger total 0, expected 42")
    expect(page.locator("summary", has_text="restore: succeeded")).to_be_visible()  # in words
    expect(page.locator("summary", has_text="check: failed")).to_be_visible()
    shot(page, "drill-run")
