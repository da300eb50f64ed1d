"""Fixtures for the integration tests: a repository holding one verified snapshot, and
small real filesystems (tmpfs) for the full-disk cases."""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import CliRunner, make_sample_tree
from tests.integration.helpers import Manifest, backup_json, tree_manifest

# The --long crash campaign (500 kill points) runs far past the suite's 600 s timeout.
LONG_CRASH_TIMEOUT = 4 * 3600


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not config.getoption("--long"):
        return
    for item in items:
        if item.get_closest_marker("crash") is not None:
            item.add_marker(pytest.mark.timeout(LONG_CRASH_TIMEOUT))


@dataclass
class Stored:
    """A repository with one snapshot of ``src``, and what that snapshot must restore to."""

    repo: str
    src: Path
    snapshot: str
    manifest: Manifest


@pytest.fixture
def stored(cli: CliRunner, cli_repo: str, tmp_path: Path) -> Stored:
    src = make_sample_tree(tmp_path / "src")
    manifest = tree_manifest(src)
    doc = backup_json(cli, cli_repo, str(src))
    return Stored(cli_repo, src, doc["snapshot"], manifest)


def mount_tmpfs(where: Path, size: str) -> None:
    where.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {done.stderr.strip()}")


def unmount(where: Path) -> None:
    done = subprocess.run(["umount", str(where)], capture_output=True, text=True, check=False)
    if done.returncode != 0:  # still busy: detach it now, the kernel frees it when idle
        subprocess.run(["umount", "-l", str(where)], capture_output=True, check=False)


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Callable[[str, str], Path]]:
    """``tmpfs(name, size)`` mounts a tmpfs of ``size`` (e.g. ``8m``) at ``tmp_path/name``;
    everything mounted is unmounted when the test ends, whatever happened."""
    mounted: list[Path] = []

    def mount(name: str, size: str) -> Path:
        where = tmp_path / name
        mount_tmpfs(where, size)
        mounted.append(where)
        return where

    try:
        yield mount
    finally:
        for where in reversed(mounted):
            unmount(where)
