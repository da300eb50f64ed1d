"""The mounted tree without FUSE: its layout, reads at any offset, and a snapshot list that
follows backups and forgets while it is mounted."""

from __future__ import annotations

import errno
import os
import random
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

from safehold.engine.backup import BackupOptions, run_backup
from safehold.engine.inspect.mount_view import MountView, time_name
from safehold.engine.maintain.forget import ForgetOptions, run_forget
from safehold.repository.repository import Repository
from safehold.repository.snapshot import Snapshot
from tests.hostile import file, folder, write_snapshot


def backup(
    repo: Repository, path: Path, *, host: str = "db1", tags: tuple[str, ...] = ()
) -> Snapshot:
    opts = BackupOptions(paths=[str(path)], host=host, tags=list(tags), threads=2)
    return run_backup(repo, opts).snapshot


def view_of(repo: Repository, **kw: object) -> MountView:
    repo.load_index()
    view = MountView(repo, **kw)  # type: ignore[arg-type]
    view.refresh(force=True)
    return view


def read_all(view: MountView, path: str, chunk: int) -> bytes:
    fh = view.open(path)
    try:
        out, offset = [], 0
        while data := view.read(fh, chunk, offset):
            out.append(data)
            offset += len(data)
        return b"".join(out)
    finally:
        view.release(fh)


def test_time_names_are_in_the_snapshots_own_zone() -> None:
    def at(when: datetime) -> Snapshot:
        return Snapshot(time=when, tree="", paths=[], hostname="h", chain="")

    assert time_name(at(datetime(2026, 12, 6, 16, 39, 45, 123, tzinfo=UTC))) == (
        "2026-12-06T16:39:45Z"
    )
    plus_one = timezone(timedelta(hours=1))
    assert time_name(at(datetime(2026, 12, 6, 17, 39, 45, tzinfo=plus_one))) == (
        "2026-12-06T17:39:45+01:00"
    )


def test_layout_by_id_time_host_and_tag(mem_repo: Repository, sample_tree: Path) -> None:
    a = backup(mem_repo, sample_tree, tags=("daily", "keep"))
    b = backup(mem_repo, sample_tree, host="web2", tags=("daily",))
    odd = backup(mem_repo, sample_tree, host="..", tags=("a/b",))  # not file names
    view = view_of(mem_repo)

    assert view.listdir("/") == ["hosts", "ids", "snapshots", "tags"]
    assert sorted(view.listdir("/ids")) == sorted(s.short_id for s in (a, b, odd))
    names = view.listdir("/snapshots")
    assert names[-1] == "latest" and len(names) == 4
    # Backups within one second share a time name: later ones get -1, -2 in id order.
    assert all(n.startswith(time_name(a)[:16]) for n in names[:-1])
    assert view.readlink("/snapshots/latest") == names[2]
    assert sorted(view.listdir("/hosts")) == ["db1", "web2"]  # '..' is left out
    assert sorted(view.listdir("/tags")) == ["daily", "keep"]  # so is 'a/b'
    assert view.listdir("/tags/keep") == [names[0], "latest"]
    assert view.readlink("/hosts/web2/latest") == names[1]

    root = f"/ids/{a.short_id}{sample_tree}"
    assert sorted(view.listdir(root)) == sorted(os.listdir(sample_tree))
    attrs = view.attributes(f"{root}/sub/deeper/notes.md")
    st = os.lstat(sample_tree / "sub" / "deeper" / "notes.md")
    assert attrs["st_mode"] == st.st_mode and attrs["st_size"] == st.st_size
    assert attrs["st_mtime"] == st.st_mtime_ns
    assert view.readlink(f"{root}/link") == "hello.txt"
    assert view.attributes("/snapshots/latest")["st_size"] == len(names[2])

    for missing in ("/nope", "/ids/00000000", f"{root}/nope", "/hosts/nobody", "/tags/x"):
        with pytest.raises(OSError) as err:
            view.lookup(missing)
        assert err.value.errno == errno.ENOENT, missing
    with pytest.raises(OSError) as err:
        view.lookup(f"{root}/hello.txt/below")
    assert err.value.errno == errno.ENOTDIR


def test_reads_at_every_offset_and_size_match_the_file(
    mem_repo: Repository, sample_tree: Path
) -> None:
    snap = backup(mem_repo, sample_tree)
    data = (sample_tree / "sub" / "data.bin").read_bytes()
    view = view_of(mem_repo)
    path = f"/ids/{snap.short_id}{sample_tree}/sub/data.bin"
    node = view.lookup(path).node
    assert node is not None and len(node.content) >= 3  # reads cross blob boundaries
    for chunk in (4096, 131_072, 1_000_003):
        assert read_all(view, path, chunk) == data
    fh = view.open(path)
    rng = random.Random(7)
    for _ in range(200):
        offset = rng.randrange(len(data) + 10)
        size = rng.choice([1, 17, 4096, 131_072, 2_000_000])
        assert view.read(fh, size, offset) == data[offset : offset + size], (offset, size)
    view.release(fh)
    assert read_all(view, f"/ids/{snap.short_id}{sample_tree}/empty.txt", 4096) == b""


def test_new_snapshots_appear_and_forgotten_ones_go_when_the_list_is_read_again(
    mem_repo: Repository, sample_tree: Path
) -> None:
    first = backup(mem_repo, sample_tree)
    now = [0.0]
    view = view_of(mem_repo, refresh_seconds=30, monotonic=lambda: now[0])
    assert view.listdir("/ids") == [first.short_id]

    (sample_tree / "new.bin").write_bytes(os.urandom(700_000))  # blobs the view's index lacks
    second = backup(mem_repo, sample_tree)
    run_forget(mem_repo, ForgetOptions(snapshot_ids=[first.id]))
    assert view.listdir("/ids") == [first.short_id]  # not yet: read at most every 30 s
    now[0] = 31
    assert view.listdir("/ids") == [second.short_id]
    data = read_all(view, f"/ids/{second.short_id}{sample_tree}/new.bin", 65536)
    assert data == (sample_tree / "new.bin").read_bytes()


def test_a_hostile_tree_fails_its_calls_only_and_is_reported_once(mem_repo: Repository) -> None:
    good = write_snapshot(mem_repo, [folder("ok", file("a", b"fine"))])
    hostile = write_snapshot(mem_repo, [folder("ok", file("a")), folder("..", file("x"))])
    seen: list[tuple[str, str]] = []
    view = view_of(mem_repo, on_error=lambda what, why: seen.append((what, why)))
    for _ in range(2):
        with pytest.raises(OSError) as err:
            view.listdir(f"/ids/{hostile.short_id}")
        assert err.value.errno == errno.EIO
    assert len(seen) == 1 and "'..'" in seen[0][1]  # reported once
    assert read_all(view, f"/ids/{good.short_id}/ok/a", 10) == b"fine"
