"""A folder source's restore limited to some paths (the dashboard's "restore this file"),
taken literally even when a name holds glob characters; a stream source refuses it."""

from __future__ import annotations

import pytest

from safehold.errors import UsageError
from safehold.policy.patterns import PatternList
from safehold.repository.repository import Repository
from safehold.runs.child import literal_pattern, restore_argv
from safehold.runs.source_run import run_source_restore
from tests.unit.runs.test_source_runs import Setup, s

__all__ = ["s"]


def test_only_the_chosen_file_is_restored(s: Setup, mem_repo: Repository) -> None:
    (s.data / "b[1]*.txt").write_text("glob-named\n")
    (s.data / "b1x.txt").write_text("not chosen\n")
    job = s.directory()
    s.backup(mem_repo, job)
    (snap,) = mem_repo.list_snapshots()
    target = s.tmp / "one"
    chosen = f"{s.data}/b[1]*.txt"
    rec = run_source_restore(mem_repo, job, snap, state_dir=s.state, target=str(target),
                             includes=[literal_pattern(chosen)])  # fmt: skip
    assert rec.outcome == "success", rec.error
    files = [p for p in target.rglob("*") if p.is_file()]
    assert [p.name for p in files] == ["b[1]*.txt"]
    nothing = run_source_restore(mem_repo, job, snap, state_dir=s.state,
                                 target=str(s.tmp / "two"), includes=["/no/such/path"])  # fmt: skip
    assert nothing.outcome == "failed" and "nothing in snapshot" in nothing.error


def test_a_stream_source_is_restored_whole(s: Setup, mem_repo: Repository) -> None:
    job = s.job("type: command\ncommand: printf 'x'\nrestore_command: cat\n")
    s.backup(mem_repo, job)
    (snap,) = mem_repo.list_snapshots()
    with pytest.raises(UsageError, match="restored whole"):
        run_source_restore(mem_repo, job, snap, state_dir=s.state, target="db",
                           includes=["/x"])  # fmt: skip


def test_the_child_gets_literal_includes() -> None:
    argv = restore_argv("c.yaml", "src", snapshot="ab12", target="/t", replace=False,
                        paths=["/srv/a*b", "/srv/c"])  # fmt: skip
    assert argv[-4:] == ["--include", "/srv/a\\*b", "--include", "/srv/c"]
    patterns = PatternList([literal_pattern("/srv/a*b")], what="include")
    assert patterns.match("/srv/a*b") and patterns.match("/srv/a*b/inside")
    assert not patterns.match("/srv/aXb")
