"""Opening a repository past damaged, hostile and foreign key files (repository/key_files.py):
each is skipped with a warning naming it, costs no key derivation of its own, and the
repository opens with a good key; when none opens, the error says why."""

from __future__ import annotations

import base64
import itertools
import json
from collections.abc import Callable
from typing import Any

import pytest

from safehold.crypto.keys import MasterKey, make_key_file
from safehold.errors import ExitCode, IntegrityError, WrongPassword
from safehold.repository.format import storage_id
from safehold.repository.repository import Repository
from safehold.storage.memory import MemoryStorage
from tests.conftest import FAST_KDF, PASSWORD

Warnings = list[tuple[str, str]]


def _open(repo: Repository, password: bytes = PASSWORD) -> tuple[Repository, Warnings]:
    heard: Warnings = []
    opened = Repository.open(
        repo.storage, password, on_warning=lambda name, msg: heard.append((name, msg))
    )
    return opened, heard


def put_first(repo: Repository, make: Callable[[int], bytes]) -> str:
    """Store the key file ``make(i)`` under its name, for the first ``i`` whose name sorts
    before every key file already there: the one opening in name order would try first."""
    names = [o.name for o in repo.storage.list("keys/")]
    for i in itertools.count():
        raw = make(i)
        name = "keys/" + storage_id(raw)
        if all(name < other for other in names):
            repo.storage.put(name, raw)
            return name
    raise AssertionError("unreachable")


def _doc(**changes: Any) -> Callable[[int], bytes]:
    """A well-formed key file (another master key, the same password), with ``changes``;
    ``None`` removes a field."""
    base = json.loads(make_key_file(MasterKey.generate(), PASSWORD, params=FAST_KDF))
    for k, v in changes.items():
        if v is None:
            del base[k]
        else:
            base[k] = v

    def make(i: int) -> bytes:
        return json.dumps(dict(base, hostname=f"host{i}")).encode()

    return make


def _raw(content: bytes) -> Callable[[int], bytes]:
    return lambda i: content + b" " * i


def _truncated(i: int) -> bytes:
    raw = make_key_file(MasterKey.generate(), PASSWORD, params=FAST_KDF, meta={"hostname": f"{i}"})
    return raw[: len(raw) // 2]


BAD: dict[str, tuple[Callable[[int], bytes], str]] = {
    "p=300": (_doc(n=1 << 15, p=300), "p=300"),
    "n=2**40": (_doc(n=1 << 40), "outside"),
    "n=1000": (_doc(n=1000), "not a power of two"),
    "r=0": (_doc(r=0), "r=0"),
    "huge salt": (_doc(salt=base64.b64encode(bytes(4096)).decode()), "salt"),
    "junk": (_raw(b"this is no key file"), "not valid JSON"),
    "binary junk": (_raw(bytes(range(256))), "not valid JSON"),
    "truncated": (_truncated, "not valid JSON"),
    "missing fields": (_doc(salt=None, n=None), "missing"),
    "unknown version": (_doc(version=7), "version 7"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_a_bad_key_file_is_skipped_with_a_warning(
    case: str, mem_repo: Repository, kdf_calls: list[bytes]
) -> None:
    make, words = BAD[case]
    bad = put_first(mem_repo, make)
    kdf_calls.clear()

    opened, heard = _open(mem_repo)

    assert opened.key_name == mem_repo.key_name
    assert opened.master == mem_repo.master
    [(name, message)] = heard
    assert name == bad
    assert words in message and "skipped" in message
    assert opened.warnings == heard  # also kept on the repository, for later reports
    assert kdf_calls == [PASSWORD]  # only the good key was derived


def test_a_damaged_key_file_does_not_match_its_name(
    mem_repo: Repository, kdf_calls: list[bytes]
) -> None:
    # A second good key, then one bit of its sealed data flipped: without the name check
    # it would only look like "another password's key".
    other = mem_repo.add_key(b"another password", kdf=FAST_KDF)
    doc = json.loads(mem_repo.storage.get(other))
    data = bytearray(base64.b64decode(doc["data"]))
    data[20] ^= 1
    doc["data"] = base64.b64encode(bytes(data)).decode()
    mem_repo.storage.put(other, json.dumps(doc).encode())
    kdf_calls.clear()

    opened, heard = _open(mem_repo)

    assert opened.key_name == mem_repo.key_name
    assert heard == [(other, heard[0][1])]
    assert "does not match its name" in heard[0][1]
    assert kdf_calls == [PASSWORD]


def test_a_foreign_key_file_is_skipped_and_the_next_one_opens(
    mem_repo: Repository, kdf_calls: list[bytes]
) -> None:
    # Another repository's key file with the same password, copied in: it unwraps, but its
    # master key does not open this repository's config.
    elsewhere = Repository.init(MemoryStorage(), PASSWORD, kdf=FAST_KDF)
    raw = elsewhere.storage.get(elsewhere.key_name)
    foreign = put_first(mem_repo, lambda i: raw if i == 0 else raw + b" " * i)
    kdf_calls.clear()

    opened, heard = _open(mem_repo)

    assert opened.key_name == mem_repo.key_name
    [(name, message)] = heard
    assert name == foreign
    assert "belongs to another repository" in message
    assert kdf_calls == [PASSWORD, PASSWORD]  # the foreign key, then the good one


def test_an_expensive_key_file_is_tried_only_after_the_cheaper_ones(
    mem_repo: Repository, kdf_calls: list[bytes]
) -> None:
    # Within bounds, but 32 times the good key's work, and first in name order: opening
    # tries it only if no cheaper key opens.
    costly = put_first(mem_repo, _doc(n=1 << 12, p=16))
    kdf_calls.clear()

    opened, heard = _open(mem_repo)

    assert opened.key_name == mem_repo.key_name
    assert heard == []  # nothing wrong with it
    assert kdf_calls == [PASSWORD]
    with pytest.raises(WrongPassword):
        _open(mem_repo, b"not the password")
    assert len(kdf_calls) == 3  # a wrong password tries every key file, the costly one too
    assert costly in [o.name for o in mem_repo.storage.list("keys/")]


def test_only_damaged_key_files_is_damage_naming_them(mem_repo: Repository) -> None:
    junk = put_first(mem_repo, _raw(b"junk"))
    hostile = put_first(mem_repo, _doc(p=300))
    mem_repo.storage.delete(mem_repo.key_name)

    with pytest.raises(IntegrityError) as err:
        _open(mem_repo)

    assert not isinstance(err.value, WrongPassword)
    assert err.value.exit_code == ExitCode.INTEGRITY
    assert junk in err.value.message and hostile in err.value.message
    assert "p=300" in err.value.message
    assert err.value.hint and "keys/" in err.value.hint


def test_a_wrong_password_is_still_a_wrong_password_beside_damaged_key_files(
    mem_repo: Repository,
) -> None:
    junk = put_first(mem_repo, _raw(b"junk"))

    with pytest.raises(WrongPassword) as err:
        _open(mem_repo, b"not the password")

    assert err.value.exit_code == ExitCode.WRONG_PASSWORD
    assert junk in err.value.message  # it might have been the password's key file


def test_only_a_foreign_key_file_is_reported_as_such(mem_repo: Repository) -> None:
    elsewhere = Repository.init(MemoryStorage(), PASSWORD, kdf=FAST_KDF)
    name = elsewhere.key_name
    mem_repo.storage.put(name, elsewhere.storage.get(name))
    mem_repo.storage.delete(mem_repo.key_name)

    with pytest.raises(IntegrityError) as err:
        _open(mem_repo)

    assert err.value.exit_code == ExitCode.INTEGRITY
    assert name in err.value.message and "another repository" in err.value.message


def test_list_keys_shows_a_damaged_key_file_and_it_can_be_removed(
    mem_repo: Repository,
) -> None:
    junk = put_first(mem_repo, _raw(b"junk"))
    hostile = put_first(mem_repo, _doc(n=1000))

    keys = {k["id"]: k for k in mem_repo.list_keys()}

    assert set(keys) == {n.removeprefix("keys/") for n in (junk, hostile, mem_repo.key_name)}
    assert "not valid JSON" in keys[junk.removeprefix("keys/")]["damaged"]
    assert "power of two" in keys[hostile.removeprefix("keys/")]["damaged"]
    current = keys[mem_repo.key_name.removeprefix("keys/")]
    assert current["current"] and "damaged" not in current and current["n"] == 1 << 10
    mem_repo.remove_key(mem_repo.find_key(junk.removeprefix("keys/")[:12]))
    assert junk not in [o.name for o in mem_repo.storage.list("keys/")]


def test_a_key_file_far_too_large_is_not_read(mem_repo: Repository) -> None:
    big = b"x" * (1 << 20)
    name = "keys/" + storage_id(big)
    mem_repo.storage.put(name, big)

    opened, heard = _open(mem_repo)

    assert opened.key_name == mem_repo.key_name
    assert heard == [(name, heard[0][1])] and "far more than a key file" in heard[0][1]
