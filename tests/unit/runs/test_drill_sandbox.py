"""Sandboxes are private folders removed on exit, and a killed drill's is removed later."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from safehold.runs.drill import SandboxError, make_sandbox
from safehold.runs.drill.sandbox import OWNER_FILE, PREFIX, remove_stale_sandboxes


def test_a_file_sandbox_is_removed_when_its_drill_ends_even_on_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)  # read TMPDIR again
    with pytest.raises(RuntimeError), make_sandbox("directory") as box:
        assert Path(box.target).is_dir() and box.env()["SAFEHOLD_DRILL_PATH"] == box.target
        assert (box.root / OWNER_FILE).read_text().strip() == str(os.getpid())
        raise RuntimeError("the check blew up")
    assert not box.root.exists()
    with make_sandbox("sqlite") as box:
        assert box.target.endswith("restored.db") and not Path(box.target).exists()
    assert not box.root.exists()
    with pytest.raises(SandboxError) as caught:
        make_sandbox("volume")
    assert "no drill sandbox for 'volume'" in str(caught.value)


def test_a_killed_drills_sandbox_is_removed_by_the_next(tmp_path: Path) -> None:
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    dead, live, foreign = (tmp_path / f"{PREFIX}{n}" for n in ("dead", "live", "foreign"))
    for folder, pid in ((dead, gone.stdout.strip()), (live, str(os.getpid()))):
        folder.mkdir()
        (folder / OWNER_FILE).write_text(pid)
    foreign.mkdir()  # no owner file: not a sandbox this version made; left alone
    assert remove_stale_sandboxes(str(tmp_path)) == [str(dead)]
    assert not dead.exists() and live.exists() and foreign.exists()
