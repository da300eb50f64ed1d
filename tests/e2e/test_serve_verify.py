"""``safehold serve`` runs a repository's verification slices on their schedule: real
processes and the service's own private PostgreSQL. The slices read every pack, keep
their progress across a restart, and a damaged pack fails a slice naming the snapshots
affected; ``safehold verify --status`` shows the coverage."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import PASSWORD, CliRunner
from tests.e2e.serving import Service, serve_env
from tests.e2e.waiting import wait_for

pytestmark = pytest.mark.slow


class Verifying(Service):
    """The service, and what its catalog says of verification."""

    def read_packs(self) -> set[str]:
        return {
            r[0] for r in self.query("SELECT pack_id FROM verify_packs WHERE last_read IS NOT NULL")
        }

    def verify_runs(self, state: str) -> list[tuple[Any, ...]]:
        return self.query(
            "SELECT id, error, params FROM runs WHERE kind = 'verify' AND state = %s "
            "ORDER BY queued_at",
            state,
        )


@pytest.fixture
def service(make_state_dir: Callable[[], Path], tmp_path: Path) -> Iterator[Verifying]:
    svc = Verifying(
        tmp_path / "safehold.yaml", make_state_dir(), serve_env(tmp_path), tmp_path / "serve.log"
    )
    try:
        yield svc
    finally:
        svc.kill()


def test_serve_verifies_every_pack_in_slices_and_fails_on_damage(
    service: Verifying, cli: CliRunner, cli_repo: str, tmp_path: Path
) -> None:
    src = tmp_path / "src"
    src.mkdir()
    snapshots: list[str] = []
    packs_of: list[set[str]] = []

    def packs() -> dict[str, int]:
        return {p.name: p.stat().st_size for p in Path(cli_repo, "data").glob("*/*")}

    for n in range(5):
        before = set(packs())
        (src / f"f{n}.bin").write_bytes(os.urandom(150_000))
        done = cli("-r", cli_repo, "backup", str(src), "--json")
        assert done.code == 0, done.output
        snapshots.append(json.loads(done.stdout)["snapshot"])
        packs_of.append(set(packs()) - before)
    stored = set(packs())
    # A slice every 2 seconds over a period of a day: each reads one pack (its share is
    # far less), the never-read ones first.
    service.config.write_text(
        f"repository: {{location: {cli_repo}, password_env: REPO_PW, "
        "verify: {period: 1d, schedule: '*/2 * * * * *'}}\n"
        f"sources:\n  files: {{type: directory, paths: [{src}]}}\n"
    )
    # Slices and packs read, in one snapshot of the catalog: as long as each slice reads
    # one new pack, they agree (a slice records its packs just before its run ends). A
    # restart that lost the progress would read packs again: more slices than packs.
    seen: list[tuple[int, int]] = []

    def progress() -> tuple[int, int]:
        rows = service.query(
            "SELECT (SELECT count(*) FROM runs WHERE kind = 'verify' AND state = 'succeeded'), "
            "(SELECT count(*) FROM verify_packs WHERE last_read IS NOT NULL)"
        )
        found = (int(rows[0][0]), int(rows[0][1])) if rows else (0, 0)
        if rows:
            seen.append(found)
        return found

    service.start(workers=2)
    wait_for("two slices", lambda: progress()[0] >= 2, timeout=180)
    assert service.stop() == 0
    status = service.run("--json", "verify", "--status")  # the catalog, service stopped
    (stopped,) = json.loads(status.stdout)
    assert stopped["packs"] == len(stored) and 0 < stopped["never_read"] <= len(stored) - 2
    service.start(workers=2)
    wait_for("every pack read", lambda: progress()[1] == len(stored), timeout=180)
    assert all(slices <= read <= slices + 1 for slices, read in seen), seen
    assert seen[-1][1] == len(stored) and len(stored) - 1 <= seen[-1][0]
    runs = service.verify_runs("succeeded")
    assert all(params["packs_read"] == 1 for _, _, params in runs)
    status = service.run("--json", "verify", "--status")
    (found,) = json.loads(status.stdout)
    assert found["coverage"] == 1.0 and found["packs"] == len(stored)

    # Damage the data pack of the third backup: the slice that reads it again fails.
    target = max(packs_of[2], key=lambda p: packs()[p])
    path = Path(cli_repo, "data", target[:2], target)
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0x20
    path.write_bytes(bytes(raw))
    wait_for("a failed slice", lambda: bool(service.verify_runs("failed")), timeout=180)
    _run_id, error, params = service.verify_runs("failed")[0]
    assert service.stop() == 0
    assert params["damaged_packs"] == [target]
    assert set(params["snapshots"]) == set(snapshots[2:])
    assert target[:8] in error and all(s[:8] in error for s in snapshots[2:])
    assert PASSWORD.decode() not in service.log.read_text()
