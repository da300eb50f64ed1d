"""LocalStorage behaviour beyond the conformance suite: temp files, crashes, OS errors."""

from __future__ import annotations

import ctypes
import errno
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from safehold.errors import (
    ObjectExists,
    ObjectNotFound,
    StorageError,
    StorageFull,
    StoragePermissionDenied,
    TransientStorageError,
)
from safehold.storage.local import TEMP_PREFIX, LocalStorage, translate_os_error

T = TypeVar("T")


def temp_files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.name.startswith(TEMP_PREFIX)]


@pytest.fixture
def store(tmp_path: Path) -> LocalStorage:
    return LocalStorage(tmp_path / "repo", create=True)


def mount_tmpfs(where: Path, options: str) -> None:
    where.mkdir(exist_ok=True)
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip() or done.returncode}")


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A real 1 MiB filesystem, so that ENOSPC and EROFS come from the kernel."""
    mnt = tmp_path / "mnt"
    mount_tmpfs(mnt, "size=1m")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


# --- root folder -------------------------------------------------------------------------


def test_describe_is_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert LocalStorage("rel").describe() == f"local:{tmp_path / 'rel'}"


def test_missing_root_is_not_created(tmp_path: Path) -> None:
    root = tmp_path / "nowhere"
    store = LocalStorage(root)
    assert not root.exists()
    with pytest.raises(ObjectNotFound):
        store.get("config")
    with pytest.raises(ObjectNotFound):
        store.stat("config")
    assert list(store.list()) == []
    with pytest.raises(StorageError) as caught:
        store.put("data/x", b"1")
    assert not isinstance(caught.value, ObjectNotFound)
    assert "does not exist" in str(caught.value)
    assert not root.exists()


def test_create_makes_the_root(tmp_path: Path) -> None:
    root = tmp_path / "a" / "b"
    LocalStorage(root, create=True)
    assert root.is_dir()
    LocalStorage(root, create=True)  # idempotent


def test_objects_are_plain_files(store: LocalStorage) -> None:
    store.put("data/ab/cdef", b"payload")
    assert (store.root / "data" / "ab" / "cdef").read_bytes() == b"payload"
    assert temp_files(store.root) == []


def test_exclusive_put_leaves_a_single_link(store: LocalStorage) -> None:
    store.put("locks/l", b"x", exclusive=True)
    # The temporary hard link must be gone, or the sweeper would count the object twice.
    assert os.stat(store.root / "locks" / "l").st_nlink == 1
    assert temp_files(store.root) == []
    with pytest.raises(ObjectExists):
        store.put("locks/l", b"y", exclusive=True)
    assert temp_files(store.root) == []


def test_temp_names_are_reserved(store: LocalStorage) -> None:
    with pytest.raises(ValueError):
        store.put(f"data/{TEMP_PREFIX}x", b"1")
    store.put(f"{TEMP_PREFIX}folder/x", b"1")  # only the file part is reserved
    assert [i.name for i in store.list()] == [f"{TEMP_PREFIX}folder/x"]


def test_file_in_the_way_of_a_folder(store: LocalStorage) -> None:
    store.put("a", b"file")
    with pytest.raises(StorageError):
        store.put("a/b", b"cannot live under a file")
    with pytest.raises(ObjectNotFound):
        store.get("a/b")
    assert store.get("a") == b"file"
    assert temp_files(store.root) == []


# --- temp files ----------------------------------------------------------------------------


def test_leftover_temp_file_is_never_listed(store: LocalStorage) -> None:
    store.put("data/real", b"1")
    (store.root / "data" / f"{TEMP_PREFIX}crashed").write_bytes(b"partial")
    assert [i.name for i in store.list()] == ["data/real"]
    assert [i.name for i in store.list("data/")] == ["data/real"]
    assert [i.name for i in store.list(f"data/{TEMP_PREFIX}")] == []


def test_temp_files_of_puts_in_flight_are_never_listed(store: LocalStorage) -> None:
    stop = threading.Event()
    seen: set[str] = set()
    payload = os.urandom(256 * 1024)

    def writer() -> None:
        i = 0
        while not stop.is_set():
            store.put(f"data/{i % 4}", payload)
            i += 1

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline:
            seen.update(i.name for i in store.list())
    finally:
        stop.set()
        thread.join()
    assert seen <= {"data/0", "data/1", "data/2", "data/3"}
    assert seen  # the listing really ran against a populated store


def test_put_interrupted_by_an_exception_leaves_nothing(store: LocalStorage) -> None:
    not_bytes: Any = "text is not bytes"  # fails inside put, after the temp file exists
    with pytest.raises(TypeError):
        store.put("data/new", not_bytes)
    with pytest.raises(ObjectNotFound):
        store.stat("data/new")
    assert temp_files(store.root) == []
    assert (store.root / "data").is_dir()  # the failure came after the temp file was made


def test_failed_overwrite_keeps_the_old_object(store: LocalStorage) -> None:
    store.put("config", b"old")
    not_bytes: Any = 12345
    with pytest.raises(TypeError):
        store.put("config", not_bytes)
    assert store.get("config") == b"old"
    assert temp_files(store.root) == []


def test_remove_stale_temp_files(store: LocalStorage) -> None:
    store.put("data/keep", b"1")
    old = store.root / "data" / f"{TEMP_PREFIX}old"
    fresh = store.root / f"{TEMP_PREFIX}fresh"
    old.write_bytes(b"x")
    fresh.write_bytes(b"y")
    an_hour_ago = time.time() - 3600
    os.utime(old, (an_hour_ago, an_hour_ago))
    assert store.remove_stale_temp_files(600) == 1
    assert not old.exists()
    assert fresh.exists()
    assert store.remove_stale_temp_files(0) == 1
    assert temp_files(store.root) == []
    assert store.get("data/keep") == b"1"


def test_remove_stale_temp_files_on_missing_root(tmp_path: Path) -> None:
    assert LocalStorage(tmp_path / "none").remove_stale_temp_files(0) == 0


CRASHING_WRITER = """
import sys
from safehold.storage.local import LocalStorage

store = LocalStorage(sys.argv[1])
data = bytes(range(256)) * (96 * 1024)  # 24 MiB, recognisable at every offset
print("ready", flush=True)
while True:
    store.put("data/big", data)
"""


@pytest.mark.parametrize("kill_after", [0.0, 0.05, 0.2, 0.4])
def test_sigkill_during_put_never_exposes_a_partial_object(
    store: LocalStorage, kill_after: float
) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", CRASHING_WRITER, str(store.root)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline() == "ready\n"
        time.sleep(kill_after)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    expected = bytes(range(256)) * (96 * 1024)
    try:
        assert store.get("data/big") == expected
    except ObjectNotFound:
        pass  # killed before the first rename: nothing is the right answer too
    assert [i.name for i in store.list()] in ([], ["data/big"])
    leftovers = len(temp_files(store.root))
    assert store.remove_stale_temp_files(0) == leftovers
    assert temp_files(store.root) == []


# --- OS errors -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        (errno.ENOENT, ObjectNotFound),
        (errno.ENOTDIR, ObjectNotFound),
        (errno.ENOSPC, StorageFull),
        (errno.EDQUOT, StorageFull),
        (errno.EACCES, StoragePermissionDenied),
        (errno.EPERM, StoragePermissionDenied),
        (errno.EROFS, StoragePermissionDenied),
        (errno.EIO, TransientStorageError),
        (errno.ETIMEDOUT, TransientStorageError),
        (errno.ESTALE, TransientStorageError),
        (errno.EAGAIN, TransientStorageError),
        (errno.ENAMETOOLONG, StorageError),
        (errno.EINVAL, StorageError),
    ],
)
def test_os_error_classification(code: int, expected: type[StorageError]) -> None:
    err = translate_os_error(
        OSError(code, os.strerror(code), "/x/y"), where="local:/x", action="read 'y'"
    )
    assert type(err) is expected
    assert "local:/x" in err.message


def test_missing_path_while_writing_is_not_object_not_found() -> None:
    err = translate_os_error(
        OSError(errno.ENOENT, "gone"), where="local:/x", action="write", missing_is_not_found=False
    )
    assert type(err) is StorageError


def test_full_disk(small_fs: Path) -> None:
    store = LocalStorage(small_fs / "repo", create=True)
    store.put("config", b"small")
    with pytest.raises(StorageFull) as caught:
        store.put("data/too-big", os.urandom(2 * 1024 * 1024))
    assert isinstance(caught.value.__cause__, OSError)
    assert caught.value.__cause__.errno == errno.ENOSPC
    assert store.describe() in str(caught.value)
    assert "free space" in str(caught.value)
    # Nothing partial is left, not even the temp file eating the space.
    assert temp_files(store.root) == []
    with pytest.raises(ObjectNotFound):
        store.stat("data/too-big")
    assert store.get("config") == b"small"
    store.put("data/fits", b"1" * 1000)
    assert store.get("data/fits") == b"1" * 1000


def test_full_disk_on_overwrite_keeps_the_old_object(small_fs: Path) -> None:
    store = LocalStorage(small_fs / "repo", create=True)
    store.put("index/0", b"v1")
    with pytest.raises(StorageFull):
        store.put("index/0", os.urandom(2 * 1024 * 1024))
    assert store.get("index/0") == b"v1"


def test_read_only_filesystem(small_fs: Path) -> None:
    store = LocalStorage(small_fs / "repo", create=True)
    store.put("config", b"c")
    done = subprocess.run(
        ["mount", "-o", "remount,ro", str(small_fs)], capture_output=True, check=False
    )
    if done.returncode != 0:
        pytest.skip("cannot remount the tmpfs read-only")
    with pytest.raises(StoragePermissionDenied) as caught:
        store.put("data/x", b"1")
    assert caught.value.__cause__ is not None
    assert "read-only" in str(caught.value)
    with pytest.raises(StoragePermissionDenied):
        store.delete("config")
    assert store.get("config") == b"c"  # reading still works


def as_unprivileged(call: Callable[[], T]) -> T:
    """Run ``call`` in a thread whose filesystem uid is ``nobody``.

    Tests run as root, for whom chmod denies nothing. Linux's fsuid is per thread and
    dropping it to non-zero drops CAP_DAC_OVERRIDE for that thread only, so the kernel
    really refuses access, without touching the rest of the test process.
    """
    if not sys.platform.startswith("linux"):
        pytest.skip("setfsuid is Linux-only")
    libc = ctypes.CDLL(None, use_errno=True)
    outcome: list[Any] = []

    def body() -> None:
        libc.setfsuid(65534)
        try:
            if libc.setfsuid(-1) != 65534:
                outcome.append(pytest.skip.Exception("cannot change the filesystem uid"))
                return
            outcome.append(call())
        except BaseException as exc:
            outcome.append(exc)
        finally:
            libc.setfsuid(0)

    thread = threading.Thread(target=body)
    thread.start()
    thread.join()
    if isinstance(outcome[0], BaseException):
        raise outcome[0]
    result: T = outcome[0]
    return result


def test_permission_denied(store: LocalStorage) -> None:
    store.put("config", b"c")
    if os.geteuid() != 0:
        store.root.chmod(0o500)  # not root: an ordinary mode is enough
        try:
            with pytest.raises(StoragePermissionDenied):
                store.put("data/x", b"1")
        finally:
            store.root.chmod(0o700)
        return
    for call in (
        lambda: store.put("data/x", b"1"),
        lambda: store.get("config"),
        lambda: list(store.list()),
        lambda: store.delete("config"),
    ):
        with pytest.raises(StoragePermissionDenied) as caught:
            as_unprivileged(call)
        assert isinstance(caught.value.__cause__, PermissionError)
    assert store.get("config") == b"c"
    assert temp_files(store.root) == []
