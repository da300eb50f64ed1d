"""Many writers at once: backups of different and identical data into one repository."""

from __future__ import annotations

import os
import threading
from pathlib import Path

from safehold.engine.backup import BackupOptions, BackupResult, run_backup
from safehold.engine.restore import RestoreOptions, run_restore
from safehold.repository.check import check_repository
from safehold.repository.repository import Repository
from safehold.storage.local import LocalStorage
from tests.conftest import PASSWORD


def test_parallel_backups_from_separate_processes_views(
    local_repo: Repository, tmp_path: Path
) -> None:
    shared = os.urandom(2 * 1024 * 1024)
    sources = []
    for i in range(4):
        src = tmp_path / f"src{i}"
        src.mkdir()
        (src / "shared.bin").write_bytes(shared)  # the same content in every source
        (src / "own.bin").write_bytes(os.urandom(1024 * 1024 + i))
        sources.append(src)
    root = local_repo.storage.describe().removeprefix("local:")
    results: list[BackupResult] = []
    errors: list[BaseException] = []

    def worker(src: Path) -> None:
        # Each writer opens the repository on its own, as separate processes would.
        repo = Repository.open(LocalStorage(root), PASSWORD)
        try:
            results.append(run_backup(repo, BackupOptions(paths=[str(src)], host="same")))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(s,)) for s in sources]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(results) == 4
    repo = Repository.open(LocalStorage(root), PASSWORD)
    report = check_repository(repo)
    assert report.ok, [p.message for p in report.problems]
    for res, src in zip(sorted(results, key=lambda r: r.snapshot.paths[0]), sources, strict=True):
        out = tmp_path / ("out-" + src.name)
        run_restore(repo, repo.find_snapshot(res.snapshot.id), RestoreOptions(target=str(out)))
        got = out / str(src).lstrip("/")
        assert (got / "shared.bin").read_bytes() == shared
        assert (got / "own.bin").read_bytes() == (src / "own.bin").read_bytes()
