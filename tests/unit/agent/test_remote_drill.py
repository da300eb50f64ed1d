"""An agent runs a drill job as ``safehold drill`` with the snapshot the service chose."""

from __future__ import annotations

from pathlib import Path

from safehold.agent.remote import RemoteAgent, RemoteOptions


def test_a_drill_job_becomes_a_drill_child(tmp_path: Path) -> None:
    agent = RemoteAgent(
        RemoteOptions(
            server="http://127.0.0.1:9",
            token="shk_x_y",
            name="a1",
            config_path="/etc/safehold.yaml",
            state_dir=tmp_path,
        )
    )
    job = {
        "run_id": "00000000-0000-0000-0000-000000000000",
        "kind": "drill",
        "plan": "default/app.drill",
        "source": "app",
        "params": {"snapshot": "ab" * 32},
    }
    argv = agent.argv(job)
    at = argv.index("drill")
    assert argv[at + 1 : at + 4] == ["app", "--config", "/etc/safehold.yaml"]
    assert argv[-2:] == ["--snapshot", "ab" * 32]
    assert argv[argv.index("--run-id") + 1] == job["run_id"]
    assert argv[argv.index("--state-dir") + 1] == str(tmp_path)
    # No snapshot chosen (the catalog knew no point): the drill chooses itself.
    assert "--snapshot" not in agent.argv({**job, "params": {}})
