"""Extended attributes, ACLs and file capabilities (engine/xattrs.py): saved by backup,
set by restore as the kernel's own tools see them (getfattr, getfacl, getcap), compared by
diff, and read for unchanged items only when the parent did not save them."""

from __future__ import annotations

import os
import shutil
import socket
import stat
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from safehold.engine import xattrs as xa
from safehold.engine.backup import BackupOptions, run_backup
from safehold.engine.inspect.diff import METADATA, diff_trees
from safehold.engine.progress import Progress
from safehold.engine.restore import RestoreOptions, run_restore
from safehold.engine.restore import workers as restore_procs
from safehold.engine.tree_walk import find
from safehold.errors import FormatError
from safehold.repository import tree as t
from safehold.repository.repository import Repository
from safehold.repository.snapshot import Snapshot
from safehold.storage.local import LocalStorage
from tests.conftest import FAST_KDF, PASSWORD

TOOLS = all(shutil.which(x) for x in ("getfattr", "setfattr", "getfacl", "setfacl", "setcap"))
needs_tools = pytest.mark.skipif(not TOOLS, reason="needs attr, acl, libcap2-bin")
as_root = pytest.mark.skipif(os.geteuid() != 0, reason="trusted.* and capabilities need root")


def sh(*args: str, cwd: Path | None = None) -> str:
    return subprocess.run(args, cwd=cwd, check=True, capture_output=True, text=True).stdout


def blocks(text: str) -> dict[str, str]:
    """getfattr/getfacl output (``# file: PATH`` then lines) by path, in any order."""
    out = {}
    for block in text.strip().split("\n\n"):
        head, _, rest = block.partition("\n")
        if head.startswith("# file: "):
            out[head[len("# file: ") :]] = "\n".join(sorted(rest.splitlines()))
    return out


def metadata(root: Path) -> dict[str, object]:
    """What getfattr, getfacl and getcap say of everything below ``root`` (not sockets,
    which restore does not make), and every item's mode."""
    names = [p for p in sorted(root.rglob("*")) if not stat.S_ISSOCK(p.lstat().st_mode)]
    rel = [str(p.relative_to(root)) for p in names]
    return {
        "xattrs": blocks(sh("getfattr", "-h", "-d", "-m", "-", "-e", "base64", *rel, cwd=root)),
        "acls": blocks(
            sh(
                "getfacl",
                "-P",
                "-n",
                *[r for r, p in zip(rel, names, strict=True) if not p.is_symlink()],
                cwd=root,
            )
        ),
        "caps": sorted(
            sh(
                "getcap", *[r for r, p in zip(rel, names, strict=True) if p.is_file()], cwd=root
            ).splitlines()
        ),
        "modes": {r: oct(p.lstat().st_mode) for r, p in zip(rel, names, strict=True)},
        "owners": {
            r: (p.lstat().st_uid, p.lstat().st_gid) for r, p in zip(rel, names, strict=True)
        },
    }


def attributed_tree(root: Path) -> Path:
    """Every kind of attribute, each where restore is most likely to lose it."""
    (root / "shared" / "inner").mkdir(parents=True)
    (root / "plain.txt").write_text("no attributes\n")
    f = root / "notes.txt"
    f.write_text("notes\n")
    sh("setfattr", "-n", "user.comment", "-v", "written by ann", str(f))
    sh("setfattr", "-n", "user.binary", "-v", "0x00ff0a", str(f))
    # The owning group may read; a named user may write; the mask lets it. Without the ACL
    # the group bits are the mask's: the owning group would gain write access.
    sh("setfacl", "-m", "u:1000:rw-,g::r--,m::rw-", str(f))
    # A folder that hands an ACL to what is created in it, and has one itself.
    sh("setfacl", "-d", "-m", "u:1000:rwx,g:100:r-x", str(root / "shared"))
    sh("setfacl", "-m", "g:100:rwx", str(root / "shared"))
    sh("setfattr", "-n", "user.project", "-v", "alpha", str(root / "shared" / "inner"))
    (root / "shared" / "inner" / "data").write_bytes(os.urandom(3000))
    return root


def with_root_attributes(root: Path) -> None:
    """Capabilities (on a file of another owner: restore's chown must not clear them) and
    trusted.* attributes, on a file and on a symlink."""
    helper = root / "ptp-helper"
    helper.write_bytes(b"\x7fELF" + os.urandom(500))
    os.chown(helper, 1234, 1234)
    os.chmod(helper, 0o750)
    sh("setcap", "cap_net_bind_service,cap_net_admin=ep", str(helper))
    sh("setfattr", "-n", "trusted.origin", "-v", "overlay", str(root / "plain.txt"))
    os.symlink("plain.txt", root / "link")
    sh("setfattr", "-h", "-n", "trusted.link", "-v", "yes", str(root / "link"))


def restore(repo: Repository, snap: Snapshot, target: Path, **kw: object) -> Path:
    run_restore(repo, snap, RestoreOptions(target=str(target), **kw))  # type: ignore[arg-type]
    return target


@needs_tools
@as_root
@pytest.mark.parametrize("processes", [1, 2])
@pytest.mark.usefixtures("allow_fork")  # worker processes, as the command line allows
def test_attributes_acls_and_capabilities_come_back(
    small_packs: Repository, tmp_path: Path, processes: int
) -> None:
    src = attributed_tree(tmp_path / "src")
    with_root_attributes(src)
    for i in range(12):  # packs enough for worker processes
        (src / f"bulk-{i}").write_bytes(os.urandom(200_000))
        sh("setfattr", "-n", "trusted.n", "-v", str(i), str(src / f"bulk-{i}"))
    snap = run_backup(small_packs, BackupOptions(paths=[str(src)], threads=2)).snapshot

    out = restore(small_packs, snap, tmp_path / "out", processes=processes)

    restored = metadata(out / str(src).lstrip("/"))
    assert restored == metadata(src)
    assert "user:1000:rw-" in restored["acls"]["notes.txt"]  # type: ignore[index]
    assert "cap_net_bind_service,cap_net_admin=ep" in str(restored["caps"])


@needs_tools
def test_as_the_owner_of_everything(mem_repo: Repository, tmp_path: Path) -> None:
    # user.* attributes and ACLs are the owner's to set: any user restores them.
    src = attributed_tree(tmp_path / "src")
    snap = run_backup(mem_repo, BackupOptions(paths=[str(src)], threads=2)).snapshot
    node = {n.name: n for n in _nodes(mem_repo, snap, src)}["notes.txt"]
    assert node.xattrs["user.binary"] == b"\x00\xff\n"
    assert stat.S_IMODE(node.mode) & 0o070 == 0o060  # the mask, as stat shows it

    out = restore(mem_repo, snap, tmp_path / "out", owner=False)

    assert metadata(out / str(src).lstrip("/")) == metadata(src)


@needs_tools
def test_no_xattrs_and_no_acls(mem_repo: Repository, tmp_path: Path) -> None:
    src = attributed_tree(tmp_path / "src")
    plain = run_backup(mem_repo, BackupOptions(paths=[str(src)], xattrs=False, acls=False))
    assert not any(n.xattrs for n in _nodes(mem_repo, plain.snapshot, src))
    acls = run_backup(mem_repo, BackupOptions(paths=[str(src)], xattrs=False)).snapshot
    assert {k for n in _nodes(mem_repo, acls, src) for k in n.xattrs} == {
        xa.ACL_ACCESS,
        xa.ACL_DEFAULT,
    }
    full = run_backup(mem_repo, BackupOptions(paths=[str(src)])).snapshot

    out = restore(mem_repo, full, tmp_path / "out", xattrs=False)
    restored = out / str(src).lstrip("/")
    assert "user." not in sh("getfattr", "-R", "-d", "-m", "-", ".", cwd=restored)
    assert metadata(restored)["acls"] == metadata(src)["acls"]
    out = restore(mem_repo, full, tmp_path / "out2", acls=False)
    restored = out / str(src).lstrip("/")
    assert "posix_acl" not in sh("getfattr", "-R", "-d", "-m", "-", ".", cwd=restored)
    assert "user.comment" in sh("getfattr", "-R", "-d", ".", cwd=restored)


@needs_tools
def test_an_attribute_change_alone_is_a_metadata_change(
    mem_repo: Repository, tmp_path: Path
) -> None:
    src = attributed_tree(tmp_path / "src")
    first = run_backup(mem_repo, BackupOptions(paths=[str(src)])).snapshot
    sh("setfattr", "-n", "user.comment", "-v", "rewritten", str(src / "notes.txt"))
    second = run_backup(mem_repo, BackupOptions(paths=[str(src)])).snapshot

    changes = diff_trees(mem_repo, first.tree, second.tree).changes

    assert [(c.path, c.kind) for c in changes if c.node.type != t.DIR] == [
        (str(src / "notes.txt"), METADATA)
    ]
    assert changes[-1].new is not None and changes[-1].new.xattrs["user.comment"] == b"rewritten"


@pytest.fixture
def listed(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """The paths whose attributes backup lists (the real call, counted)."""
    seen: list[str] = []
    real = os.listxattr

    def listxattr(path: str, *, follow_symlinks: bool = True) -> list[str]:
        seen.append(path)
        return real(path, follow_symlinks=follow_symlinks)

    monkeypatch.setattr(xa.os, "listxattr", listxattr)
    yield seen


@needs_tools
def test_unchanged_items_cost_no_attribute_reads(
    mem_repo: Repository, tmp_path: Path, listed: list[str]
) -> None:
    src = attributed_tree(tmp_path / "src")
    run_backup(mem_repo, BackupOptions(paths=[str(src)]))
    assert str(src / "notes.txt") in listed
    listed.clear()
    (src / "new.txt").write_text("new")

    again = run_backup(mem_repo, BackupOptions(paths=[str(src)])).snapshot

    assert listed == [str(src), str(src / "new.txt")]  # (src changed with its new file)
    assert {n.name: n for n in _nodes(mem_repo, again, src)}["notes.txt"].xattrs


@needs_tools
def test_a_parent_without_attributes_does_not_hide_them(
    mem_repo: Repository, tmp_path: Path, listed: list[str]
) -> None:
    # A parent made before attributes were saved (or with --no-xattrs --no-acls) has nodes
    # without them: an unchanged file must not keep such a node.
    src = attributed_tree(tmp_path / "src")
    old = run_backup(mem_repo, BackupOptions(paths=[str(src)], xattrs=False, acls=False))
    assert old.snapshot.attrs == []

    new = run_backup(mem_repo, BackupOptions(paths=[str(src)]))

    assert new.summary["files_unchanged"] == 3  # (their content is not read again)
    assert new.snapshot.attrs == ["acls", "xattrs"]
    notes = {n.name: n for n in _nodes(mem_repo, new.snapshot, src)}["notes.txt"]
    assert notes.xattrs["user.comment"] == b"written by ann"
    assert xa.ACL_ACCESS in notes.xattrs
    # And the other way: --no-xattrs after a parent with them drops them, unread.
    listed.clear()
    bare = run_backup(mem_repo, BackupOptions(paths=[str(src)], xattrs=False, acls=False))
    assert listed == []
    assert not any(n.xattrs for n in _nodes(mem_repo, bare.snapshot, src))
    # (The tree of src itself: the folders above it, /tmp, may carry other times by now.)
    found = [find(mem_repo, snap.tree, str(src)) for snap in (bare.snapshot, old.snapshot)]
    assert found[0] is not None and found[1] is not None
    assert found[0][1].subtree == found[1][1].subtree


def test_a_node_without_attributes_encodes_as_before() -> None:
    # Bytes written by the code before attributes were stored (f864b88): an unchanged
    # folder must keep its tree id across the upgrade.
    nodes = [
        t.Node(
            name="a.txt",
            type=t.FILE,
            mode=0o644,
            uid=1000,
            gid=100,
            user="ann",
            group="users",
            mtime_ns=1700000000123456789,
            ctime_ns=1700000001000000000,
            size=5,
            inode=42,
            content=["ab" * 32],
        ),
        t.Node(name="d", type=t.DIR, mode=0o2755, mtime_ns=1, ctime_ns=2, subtree="cd" * 32),
        t.Node(name="l", type=t.SYMLINK, mode=0o777, mtime_ns=3, ctime_ns=4, target="a.txt"),
        t.Node(
            name="s", type=t.SOCKET, mode=0o755, mtime_ns=5, ctime_ns=6, links=2, inode=7, dev=8
        ),
    ]
    before = (
        b'{"nodes":[{"content":["abababababababababababababababababababababababababababababababab"],'
        b'"ctime":1700000001000000000,"gid":100,"group":"users","inode":42,"mode":420,'
        b'"mtime":1700000000123456789,"name":"a.txt","size":5,"type":"file","uid":1000,'
        b'"user":"ann"},{"ctime":2,"gid":0,"mode":1517,"mtime":1,"name":"d","subtree":'
        b'"cdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcd","type":"dir",'
        b'"uid":0},{"ctime":4,"mode":511,"mtime":3,"name":"l","target":"a.txt","type":"symlink"},'
        b'{"ctime":6,"dev":8,"gid":0,"inode":7,"links":2,"mode":493,"mtime":5,"name":"s",'
        b'"type":"socket","uid":0}]}'
    )
    assert t.encode_tree(nodes) == before
    assert t.encode_tree(t.decode_tree(before)) == before
    nodes[0].xattrs = {"user.a": b"\x00\xff", xa.ACL_ACCESS: b"\x02\x00\x00\x00"}
    raw = t.encode_tree(nodes)
    assert b'"xattrs":{"system.posix_acl_access":"AgAAAA==","user.a":"AP8="}' in raw
    assert t.decode_tree(raw)[0].xattrs == nodes[0].xattrs


@pytest.mark.parametrize(
    "field", [[], {"user.a": 3}, {"user.a": "not base64!"}, {"": "AA=="}, {"a\0b": "AA=="}]
)
def test_damaged_attributes_are_a_damaged_tree(field: object) -> None:
    raw = t.encode_tree_json([{"name": "a", "type": "file", "xattrs": field, "content": ["00"]}])
    with pytest.raises(FormatError, match="not a valid tree"):
        t.decode_tree(raw)
    # Prune's mark still finds the blobs such a tree names (it must keep them).
    assert t.decode_tree(raw, check=False)[0].content == ["00"]


def test_acl_entries_read_as_getfacl_writes_them() -> None:
    # user::rw- user:1000:rwx group::r-x mask::rwx other::r-- (from a real file)
    value = bytes.fromhex(
        "0200000001000600ffffffff02000700e803000004000500ffffffff10000700ffffffff20000400ffffffff"
    )
    assert xa.acl_text(value) == [
        "user::rw-",
        "user:1000:rwx",
        "group::r-x",
        "mask::rwx",
        "other::r--",
    ]
    assert xa.acl_text(b"\x01\x00") is None


def test_sockets_are_named_not_made(mem_repo: Repository, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_text("a")
    server = socket.socket(socket.AF_UNIX)
    try:
        server.bind(str(src / "app.sock"))
        snap = run_backup(mem_repo, BackupOptions(paths=[str(src)])).snapshot
    finally:
        server.close()
    result = run_restore(mem_repo, snap, RestoreOptions(target=str(tmp_path / "out")))
    out = tmp_path / "out" / str(src).lstrip("/")
    assert result.sockets == [str(out / "app.sock")]
    assert not (out / "app.sock").exists() and (out / "a.txt").exists()
    assert result.errors == []


def _nodes(repo: Repository, snap: Snapshot, src: Path) -> list[t.Node]:
    """The nodes of the folder ``src`` in ``snap``."""
    tree = snap.tree
    for part in src.parts[1:]:
        tree = {n.name: n for n in repo.load_tree(tree)}[part].subtree
    return repo.load_tree(tree)


@pytest.fixture
def small_packs(tmp_path: Path) -> Repository:
    """Packs of 256 KiB: a small tree spreads over many, so restore forks workers."""
    storage = LocalStorage(tmp_path / "repo", create=True)
    return Repository.init(storage, PASSWORD, kdf=FAST_KDF, pack_size=256 * 1024)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork on this platform")
def test_worker_processes_send_what_they_could_not_set() -> None:
    got: list[dict[str, object]] = []
    lock = threading.Lock()

    def on_notes(notes: list[dict[str, object]]) -> None:
        with lock:
            got.extend(notes)

    def notes() -> list[dict[str, object]]:
        # One note fits a pipe's atomic write, the other only once its paths are cut.
        return [{"pid": os.getpid(), "paths": ["/a", "/b"]}, {"paths": ["x" * 5000, "/c"]}]

    packs = [(bytes([i]), None) for i in range(12)]
    restore_procs.run_forked(
        lambda _pack, _blobs: None,
        packs,
        3,
        Progress(),
        lambda _progress: None,
        child_notes=notes,
        on_notes=on_notes,
    )

    # From each of the two children (the parent's own are its caller's to read).
    assert sorted(str(n["paths"]) for n in got) == ["['/a', '/b']"] * 2 + ["[]"] * 2
    assert len({n["pid"] for n in got if "pid" in n} - {os.getpid()}) == 2


def test_items_failing_at_once_in_threads_count_once_each(tmp_path: Path) -> None:
    # Restore threads set several items' attributes at the same time; each item counts
    # once per kind however its attributes interleave with another's (a count by the last
    # item seen made 20 items 21 in CI).
    setter = xa.AttrSetter(xa.Choice(), privileged=True)
    value = "dg=="  # base64 of b"v"
    attrs = {f"trusted.n{i}": value for i in range(6)}
    missing = [str(tmp_path / f"gone-{i:03}") for i in range(120)]  # ENOENT for each
    barrier = threading.Barrier(4)

    def work(paths: list[str]) -> None:
        barrier.wait()
        for p in paths:
            setter.set(p, attrs, p)

    threads = [threading.Thread(target=work, args=(missing[k::4],)) for k in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    [failed] = setter.failures()
    assert (failed.what, failed.count) == ("trusted.* attributes", 120)
    assert failed.paths == missing[: len(failed.paths)]  # the first in name order
