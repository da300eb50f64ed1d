"""The dashboard in a real browser (Debian's chromium, driven by Playwright) against a
real ``safehold serve``: log in, find the failing plan and why, run a plan and watch it
finish live, pause it as an operator, see a viewer get no such button (and the server
refuse the forged POST), and restore a point into a new folder.

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
            f"sources:\n  shop-files:\n    type: directory\n    paths: [{data}]\n"
            '    schedule: "@daily"\n'
            f"  billing-db:\n    type: directory\n    paths: [{data}]\n"
            f'    schedule: "0 */6 * * *"\n    hooks: {{pre-backup-lock: {hook}}}\n' + extra
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

    def token(self, role: str) -> str:
        return self.safehold("token", "create", "--config", str(self.config), "--project",
                             "default", "--role", role, "--name", f"web-{role}")  # fmt: skip

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


def test_an_operator_finds_the_failure_runs_pauses_and_restores(
    serve: Serve, browser: Browser, tmp_path: Path
) -> None:
    operator, viewer = serve.token("operator"), serve.token("viewer")
    page = browser.new_page()
    page.goto(f"{serve.url}/")
    shot(page, "login")
    log_in(page, serve, operator)
    expect(page.get_by_role("status")).to_contain_text("All good")

    # Run the plan whose hook fails: the run's page follows it to its end, with the hook's
    # output; the overview then says one plan is failing, and why.
    page.get_by_role("link", name="billing-db").click()
    page.get_by_role("button", name="Run now").click()
    expect(page).to_have_url(re.compile(r"/ui/runs/[0-9a-f-]{36}$"))
    expect(page.locator("#run-state")).to_have_text("failed", timeout=RUN_TIMEOUT)
    expect(page.get_by_role("alert").first).to_contain_text("pre-backup-lock")
    expect(page.locator("pre").first).to_contain_text("the database is locked by a migration")
    shot(page, "run-failed")
    page.get_by_role("navigation").get_by_role("link", name="Overview").click()
    expect(page.get_by_role("status")).to_contain_text("1 failing")
    card = page.locator('[data-plan="billing-db"]')
    expect(card).to_contain_text("failing")
    expect(card.locator(".reason")).to_contain_text("pre-backup-lock")
    page.get_by_label("State").select_option("failing")
    page.get_by_role("button", name="Filter").click()
    expect(page.locator("[data-plan]")).to_have_count(1)
    shot(page, "overview")

    # Run the other plan now and watch the run finish live, on the page it opens.
    page.goto(f"{serve.url}/ui/plans/shop-files")
    page.get_by_role("button", name="Run now").click()
    expect(page.locator("#run-state")).to_have_text("succeeded", timeout=RUN_TIMEOUT)
    expect(page.locator("#log")).to_contain_text("run.finished")
    shot(page, "run")

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
    context.close()

    # Restore the new point into a new folder, and watch the job to its end.
    target = tmp_path / "restored"
    page.get_by_role("navigation").get_by_role("link", name="Restore points").click()
    point = page.locator(".point").first
    expect(point).to_contain_text("full")
    point.get_by_text("Restore #").click()
    point.get_by_label("Target path").fill(str(target))
    shot(page, "restore-points")
    point.get_by_role("button", name="Start restore").click()
    expect(page.get_by_role("heading", name=re.compile("Restore run"))).to_be_visible()
    expect(page.locator("#run-state")).to_have_text("succeeded", timeout=RUN_TIMEOUT)
    restored = list(target.rglob("orders.csv"))
    assert restored and restored[0].read_text() == "id,total\n1,9.50\n2,12.00\n"

    # Browse the point's files and restore one file alone into another new folder.
    page.get_by_role("navigation").get_by_role("link", name="Restore points").click()
    page.locator(".point").first.get_by_role("link", name="Browse files").click()
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
    expect(page.locator("#run-state")).to_have_text("succeeded", timeout=RUN_TIMEOUT)
    found = [p for p in one.rglob("*") if p.is_file()]
    assert [p.name for p in found] == ["orders.csv"], found
    assert found[0].read_text() == "id,total\n1,9.50\n2,12.00\n"

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


def test_an_admin_at_phone_width(serve: Serve, browser: Browser) -> None:
    admin = serve.token("admin")
    page = browser.new_page(viewport={"width": 390, "height": 800})
    log_in(page, serve, admin)
    # Every control is reachable from the keyboard: tab to the first card's link.
    page.keyboard.press("Tab")
    expect(page.get_by_role("link", name="Skip to content")).to_be_focused()
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= 400, f"the overview scrolls sideways at phone width ({width} px)"
    shot(page, "overview-phone")
    page.get_by_role("navigation").get_by_role("link", name="Tokens").click()
    page.get_by_label("Name").fill("ci")
    page.get_by_label("Role").select_option("viewer")
    page.get_by_role("button", name="Make a token").click()
    made = page.get_by_label("New token").input_value()
    assert re.fullmatch(r"shk_[0-9a-f]{16}_[\w-]{43}", made)
    page.get_by_role("button", name="Revoke ci").click()
    expect(page.get_by_role("row", name=re.compile("ci"))).to_contain_text("revoked")
    page.get_by_role("button", name="Log out").click()
    expect(page).to_have_url(re.compile(r"/ui/login"))
    page.goto(f"{serve.url}/ui/tokens")
    expect(page).to_have_url(re.compile(r"/ui/login\?next=/ui/tokens"))


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
