"""Stream sources through the engine: several named streams per snapshot, restored back."""

from __future__ import annotations

import io
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import BinaryIO

import pytest

from safehold.engine.backup import BackupOptions, run_backup
from safehold.errors import SourceError
from safehold.repository.repository import Repository
from safehold.runs.snapshot_files import snapshot_files
from safehold.sources.base import Stream
from safehold.sources.process import command_stream


def _bytes_stream(name: str, data: bytes) -> Stream:
    @contextmanager
    def opener() -> Iterator[BinaryIO]:
        yield io.BytesIO(data)

    return Stream(name, opener)


def test_streams_become_root_files_and_read_back(mem_repo: Repository) -> None:
    a, b = os.urandom(3_000_000), b"globals\n" * 1000
    opts = BackupOptions(
        streams=[_bytes_stream("shop.pgdump", a), _bytes_stream("globals.sql", b)],
        source_kind="postgres",
        source_name="pg-main",
    )
    snap = run_backup(mem_repo, opts).snapshot
    assert snap.source == "postgres" and snap.source_name == "pg-main"
    files = snapshot_files(mem_repo, mem_repo.find_snapshot(snap.id))
    assert sorted(files.names()) == ["globals.sql", "shop.pgdump"]
    assert files.size("shop.pgdump") == len(a)
    with files.open("shop.pgdump") as r:
        got = bytearray()
        while piece := r.read(65_536):
            got += piece
    assert bytes(got) == a
    with files.open("globals.sql") as r:
        assert r.read() == b


def test_configured_source_follows_its_own_chain(mem_repo: Repository) -> None:
    first = run_backup(
        mem_repo, BackupOptions(streams=[_bytes_stream("x", b"1")], source_name="s1")
    ).snapshot
    # Different streams, same source name: still the same source's chain, with a parent.
    second = run_backup(
        mem_repo,
        BackupOptions(
            streams=[_bytes_stream("x", b"1"), _bytes_stream("y", b"2")], source_name="s1"
        ),
    ).snapshot
    other = run_backup(
        mem_repo, BackupOptions(streams=[_bytes_stream("x", b"1")], source_name="s2")
    ).snapshot
    assert second.parent == first.id and second.chain == first.chain
    assert other.parent == "" and other.chain != first.chain


def test_failed_producer_saves_no_snapshot(mem_repo: Repository) -> None:
    script = "import sys; sys.stdout.write('partial'); sys.stdout.flush(); sys.exit(3)"
    argv = [sys.executable, "-c", script]
    stream = Stream("dump.sql", lambda: command_stream(argv, what="dump of 'shop'"))
    with pytest.raises(SourceError, match=r"dump of 'shop'.*status 3.*no snapshot"):
        run_backup(mem_repo, BackupOptions(streams=[stream, _bytes_stream("ok", b"x")]))
    assert mem_repo.list_snapshots() == []


def test_duplicate_stream_names_are_refused(mem_repo: Repository) -> None:
    with pytest.raises(Exception, match="distinct stream names"):
        run_backup(
            mem_repo,
            BackupOptions(streams=[_bytes_stream("a", b"1"), _bytes_stream("a", b"2")]),
        )
