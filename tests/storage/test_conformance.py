"""Every guarantee of the ``Storage`` Protocol docstring, checked against every backend."""

from __future__ import annotations

import random
import threading
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest

from safehold.errors import IntegrityError, ObjectExists, ObjectNotFound
from safehold.model import ObjectInfo
from safehold.storage.base import Storage
from safehold.storage.capabilities import read_into, storage_time
from safehold.storage.memory import MemoryStorage

MiB = 1024 * 1024


def names(storage: Storage, prefix: str = "") -> list[str]:
    return sorted(info.name for info in storage.list(prefix))


def test_is_a_storage(storage: Storage) -> None:
    assert isinstance(storage, Storage)
    assert storage.describe()


# --- put / get ---------------------------------------------------------------------------


def test_roundtrip(storage: Storage) -> None:
    storage.put("a", b"hello")
    assert storage.get("a") == b"hello"
    assert storage.stat("a") == ObjectInfo("a", 5)


def test_roundtrip_memoryview_is_copied(storage: Storage) -> None:
    buffer = bytearray(b"abcdef")
    storage.put("view", memoryview(buffer)[1:4])
    buffer[:] = b"XXXXXX"  # the caller reuses its buffer after put returns
    assert storage.get("view") == b"bcd"


def test_empty_object(storage: Storage) -> None:
    storage.put("empty", b"")
    assert storage.get("empty") == b""
    assert storage.stat("empty").size == 0
    assert names(storage) == ["empty"]


def test_large_object(storage: Storage) -> None:
    data = random.Random(7).randbytes(20 * MiB)
    storage.put("data/big", data)
    assert storage.stat("data/big").size == 20 * MiB
    assert storage.get("data/big") == data
    assert storage.get("data/big", 10 * MiB, 1024) == data[10 * MiB : 10 * MiB + 1024]


def test_overwrite(storage: Storage) -> None:
    storage.put("x", b"first version")
    storage.put("x", b"second")
    assert storage.get("x") == b"second"
    assert storage.stat("x").size == 6
    assert list(storage.list("x")) == [ObjectInfo("x", 6)]


def test_exclusive_create(storage: Storage) -> None:
    storage.put("locks/one", b"mine", exclusive=True)
    with pytest.raises(ObjectExists):
        storage.put("locks/one", b"theirs", exclusive=True)
    assert storage.get("locks/one") == b"mine"
    storage.delete("locks/one")
    storage.put("locks/one", b"again", exclusive=True)
    assert storage.get("locks/one") == b"again"


def test_exclusive_create_over_plain_put(storage: Storage) -> None:
    storage.put("cfg", b"1")
    with pytest.raises(ObjectExists):
        storage.put("cfg", b"2", exclusive=True)
    assert storage.get("cfg") == b"1"


# --- ranged reads --------------------------------------------------------------------------

DATA = bytes(range(256)) * 4  # 1024 bytes, every byte position distinguishable


@pytest.mark.parametrize(
    ("offset", "length", "expected"),
    [
        (0, 10, DATA[:10]),
        (500, 24, DATA[500:524]),
        (1014, 10, DATA[1014:]),
        (0, 1024, DATA),
        (0, None, DATA),
        (1000, None, DATA[1000:]),
        (1024, None, b""),
        (300, 0, b""),
        (1024, 0, b""),
    ],
    ids=["start", "middle", "end", "whole", "all", "tail", "at-end", "zero", "zero-at-end"],
)
def test_ranged_get(storage: Storage, offset: int, length: int | None, expected: bytes) -> None:
    storage.put("r", DATA)
    assert storage.get("r", offset, length) == expected


@pytest.mark.parametrize(
    ("offset", "length"),
    [(1020, 5), (0, 1025), (1025, None), (2000, 1), (1025, 0)],
    ids=["past-end", "longer", "offset-past-end", "far", "zero-past-end"],
)
def test_short_read_raises(storage: Storage, offset: int, length: int | None) -> None:
    storage.put("r", DATA)
    with pytest.raises(IntegrityError):
        storage.get("r", offset, length)


def test_short_read_of_empty_object(storage: Storage) -> None:
    storage.put("e", b"")
    with pytest.raises(IntegrityError):
        storage.get("e", 0, 1)


@pytest.mark.parametrize(
    ("offset", "length"), [(0, 10), (500, 24), (1014, 10), (0, 1024), (300, 0), (1024, 0)]
)
def test_read_into(storage: Storage, offset: int, length: int) -> None:
    storage.put("r", DATA)
    buf = bytearray(b"\xee" * (length + 8))
    read_into(storage, "r", offset, memoryview(buf)[4 : 4 + length])
    assert buf[4 : 4 + length] == DATA[offset : offset + length]
    assert buf[:4] == buf[4 + length :] == b"\xee" * 4  # nothing outside is written


@pytest.mark.parametrize(("offset", "length"), [(1020, 5), (0, 1025), (2000, 1), (1025, 0)])
def test_read_into_short_raises(storage: Storage, offset: int, length: int) -> None:
    storage.put("r", DATA)
    with pytest.raises(IntegrityError):
        read_into(storage, "r", offset, memoryview(bytearray(length)))


def test_read_into_missing(storage: Storage) -> None:
    with pytest.raises(ObjectNotFound):
        read_into(storage, "missing", 0, memoryview(bytearray(1)))


# --- missing objects ------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["missing", "no/such/thing"])
def test_missing_object(storage: Storage, name: str) -> None:
    storage.put("other", b"x")
    with pytest.raises(ObjectNotFound):
        storage.get(name)
    with pytest.raises(ObjectNotFound):
        storage.get(name, 0, 1)
    with pytest.raises(ObjectNotFound):
        storage.stat(name)
    with pytest.raises(ObjectNotFound):
        storage.delete(name)


def test_folder_is_not_an_object(storage: Storage) -> None:
    storage.put("dir/child", b"x")
    for op in (storage.get, storage.stat, storage.delete):
        with pytest.raises(ObjectNotFound):
            op("dir")
    assert storage.get("dir/child") == b"x"


# --- list -----------------------------------------------------------------------------------

NESTED = [
    "config",
    "data/00/0011",
    "data/00/0022",
    "data/01/0133",
    "data/ab",
    "database",
    "index/1",
    "snapshots/s1",
]


@pytest.mark.parametrize(
    ("prefix", "expected"),
    [
        ("", NESTED),
        ("data/", ["data/00/0011", "data/00/0022", "data/01/0133", "data/ab"]),
        ("data", ["data/00/0011", "data/00/0022", "data/01/0133", "data/ab", "database"]),
        ("dat", ["data/00/0011", "data/00/0022", "data/01/0133", "data/ab", "database"]),
        ("data/0", ["data/00/0011", "data/00/0022", "data/01/0133"]),
        ("data/00/", ["data/00/0011", "data/00/0022"]),
        ("data/00/001", ["data/00/0011"]),
        ("data/01/0133", ["data/01/0133"]),
        ("data/a", ["data/ab"]),
        ("c", ["config"]),
        ("zzz", []),
        ("nothing/here/", []),
        ("config/", []),
    ],
)
def test_list_by_prefix(storage: Storage, prefix: str, expected: list[str]) -> None:
    for name in NESTED:
        storage.put(name, name.encode())
    found = list(storage.list(prefix))
    assert sorted(info.name for info in found) == expected
    assert all(info.size == len(info.name) for info in found)


def test_list_empty_storage(storage: Storage) -> None:
    assert list(storage.list()) == []
    assert list(storage.list("data/")) == []


def test_list_many_objects_each_once(storage: Storage) -> None:
    expected = {f"data/{i % 16:02x}/{i:06d}": i % 7 for i in range(1500)}
    for name, size in expected.items():
        storage.put(name, b"z" * size)
    storage.put("index/other", b"not under data/")
    found = list(storage.list("data/"))
    counts = Counter(info.name for info in found)
    assert max(counts.values()) == 1
    assert {info.name: info.size for info in found} == expected
    assert len(list(storage.list("data/0a/"))) == len(
        [n for n in expected if n.startswith("data/0a/")]
    )


def test_delete_then_not_listed(storage: Storage) -> None:
    storage.put("data/a", b"1")
    storage.put("data/b", b"2")
    storage.delete("data/a")
    assert names(storage) == ["data/b"]
    with pytest.raises(ObjectNotFound):
        storage.get("data/a")
    with pytest.raises(ObjectNotFound):
        storage.delete("data/a")


# --- names ------------------------------------------------------------------------------------

ODD_NAMES = [
    "with-dashes-and_underscores",
    "dots.in.name",
    "a..b",
    "trailing.",
    "folder/.hidden",
    "snapshots/ünïcødé-名前-🚀",
    "spaces in name",
    "x" * 200,
]


def test_odd_but_valid_names(storage: Storage) -> None:
    for i, name in enumerate(ODD_NAMES):
        storage.put(name, bytes([i]))
    for i, name in enumerate(ODD_NAMES):
        assert storage.get(name) == bytes([i])
        assert storage.stat(name).name == name
    assert names(storage) == sorted(ODD_NAMES)
    assert names(storage, "snapshots/ünï") == ["snapshots/ünïcødé-名前-🚀"]


@pytest.mark.parametrize(
    "name", ["", "..", ".", "/abs", "a/../b", "../escape", "a//b", "a/", "a/./b", "/"]
)
def test_invalid_names_rejected(storage: Storage, name: str) -> None:
    with pytest.raises(ValueError):
        storage.put(name, b"x")
    with pytest.raises(ValueError):
        storage.get(name)
    with pytest.raises(ValueError):
        storage.stat(name)
    with pytest.raises(ValueError):
        storage.delete(name)
    assert list(storage.list()) == []


# --- concurrency --------------------------------------------------------------------------------


def run_threads(count: int, target: Callable[[int], None]) -> list[BaseException]:
    errors: list[BaseException] = []

    def body(i: int) -> None:
        try:
            target(i)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=body, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads), "a thread hung"
    return errors


def test_concurrent_puts_of_different_names(storage: Storage) -> None:
    def writer(i: int) -> None:
        for j in range(25):
            storage.put(f"data/{j:02d}/t{i}", f"{i}-{j}".encode() * (j + 1))

    assert run_threads(8, writer) == []
    found = {info.name: info.size for info in storage.list("data/")}
    assert len(found) == 8 * 25
    for i in range(8):
        for j in range(25):
            assert storage.get(f"data/{j:02d}/t{i}") == f"{i}-{j}".encode() * (j + 1)


def race_for(storage: Storage, name: str, contenders: int) -> list[int]:
    start = threading.Barrier(contenders)
    winners: list[int] = []

    def contender(i: int) -> None:
        start.wait()
        try:
            # Distinct content per thread, as a lock file embeds its owner.
            storage.put(name, f"owner {i}".encode(), exclusive=True)
        except ObjectExists:
            return
        winners.append(i)

    assert run_threads(contenders, contender) == []
    return winners


def test_concurrent_exclusive_puts_one_wins(storage: Storage) -> None:
    for round_ in range(5):
        name = f"locks/race-{round_}"
        winners = race_for(storage, name, 8)
        assert len(winners) == 1, winners
        assert storage.get(name) == f"owner {winners[0]}".encode()


# --- the storage's own clock (optional capability) ------------------------------------------


def _innermost(storage: Storage) -> object:
    layer: object = storage
    while (inner := getattr(layer, "inner", None)) is not None:
        layer = inner
    return layer


def test_storage_time_is_the_storages_clock_and_leaves_nothing(storage: Storage) -> None:
    """Every backend but memory reads its service's clock (the test servers run on this
    machine, so theirs is ours); a reading leaves no object behind."""
    storage.put("a", b"x")
    before = datetime.now(UTC)
    found = storage_time(storage)
    after = datetime.now(UTC)
    if isinstance(_innermost(storage), MemoryStorage):
        assert found is None  # no clock of its own unless a test gives it one
    else:
        assert found is not None
        assert found.tzinfo is not None and found.utcoffset() == timedelta(0)
        # HTTP Date and SFTP times have whole seconds: +-0.5 s plus half the round trip.
        assert before - timedelta(seconds=2) <= found <= after + timedelta(seconds=2)
    assert names(storage) == ["a"]
