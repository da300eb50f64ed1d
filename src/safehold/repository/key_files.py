"""A repository's key files (``keys/<id>``): finding the one a password opens, and listing
them, when some are damaged, hostile or another repository's.

Anyone who can write to ``keys/`` can add a file there, and nothing in a key file is
authenticated before its key is derived. So opening:

* reads and checks every key file first (its name is the hash of its content; its fields
  and scrypt parameters within bounds, :func:`safehold.crypto.keys.parse_key_file`). A file
  that fails is skipped with a warning naming it: it costs nothing and blocks nothing;
* tries the rest **cheapest first** (scrypt work, then memory, then name): an expensive
  key file added by someone else is derived only when no cheaper key opens;
* takes a key only if the repository's config opens with the master key it unwraps. One
  that unwraps with this password but does not open the config belongs to another
  repository (copied in, same password): it is skipped with a warning, and the next is
  tried.

If nothing opens, the error says why: a wrong password (no key file opens with it), or
key files that are all damaged, or keys whose master key does not open the config.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Generic, TypeVar

from safehold.crypto.keys import MAX_KEY_FILE, KeyFile, MasterKey, parse_key_file
from safehold.errors import FormatError, IntegrityError, ObjectNotFound, WrongPassword
from safehold.repository.format import storage_id
from safehold.storage.base import Storage

__all__ = ["Found", "Skipped", "read_key_files", "unlock"]

T = TypeVar("T")
PREFIX = "keys/"
_FETCHERS = 8


@dataclass(frozen=True)
class Skipped:
    """A key file opening left out, and why (for a warning that names it)."""

    name: str
    reason: str


@dataclass(frozen=True)
class Found(Generic[T]):
    """The key file that opened the repository, what it unwrapped, and what was skipped."""

    name: str
    master: MasterKey
    opened: T  # what ``open_with`` returned for this master key (the config's plaintext)
    skipped: list[Skipped]


def read_key_files(storage: Storage) -> list[tuple[str, KeyFile | FormatError]]:
    """Every key file in name order, parsed and checked, or the :class:`FormatError`
    saying what is wrong with it; nothing is derived. A file removed while listing is left
    out; other storage errors propagate."""
    listed = sorted((o.name, o.size) for o in storage.list(PREFIX))

    def read(entry: tuple[str, int]) -> KeyFile | FormatError | None:
        name, size = entry
        if size > MAX_KEY_FILE:  # not read at all: a key file is small
            return FormatError(f"{size} bytes, far more than a key file holds")
        try:
            raw = storage.get(name)
        except ObjectNotFound:
            return None  # removed while we listed (key remove, key passwd)
        if storage_id(raw) != name.removeprefix(PREFIX):
            return FormatError("its content does not match its name: it was damaged")
        try:
            return parse_key_file(raw)
        except FormatError as exc:
            return exc

    if len(listed) <= 1:
        results = [read(e) for e in listed]
    else:
        with ThreadPoolExecutor(min(_FETCHERS, len(listed)), thread_name_prefix="keys") as pool:
            results = list(pool.map(read, listed))
    return [(name, got) for (name, _), got in zip(listed, results, strict=True) if got is not None]


def unlock(storage: Storage, password: bytes, open_with: Callable[[MasterKey], T]) -> Found[T]:
    """The first key file, cheapest first, that ``password`` opens and whose master key
    ``open_with`` accepts (it raises :class:`IntegrityError` for a master key that does not
    open the repository's config).

    Raises :class:`WrongPassword` if no readable key file opens with the password, and
    :class:`IntegrityError` (damage, exit 4) if there is none that could be tried, or if
    the password opened key files whose master key ``open_with`` refused.
    """
    entries = read_key_files(storage)
    if not entries:
        raise FormatError(f"the repository at {storage.describe()} has no key files")
    skipped = [Skipped(n, _damaged(e)) for n, e in entries if isinstance(e, FormatError)]
    usable = sorted(
        ((n, k) for n, k in entries if isinstance(k, KeyFile)),
        key=lambda nk: (nk[1].kdf.cost, nk[0]),
    )
    foreign: list[str] = []
    refused = 0  # key files that the password does not open
    for name, key_file in usable:
        try:
            master = key_file.open(password)
        except WrongPassword:
            refused += 1
            continue
        except FormatError as exc:
            skipped.append(Skipped(name, _damaged(exc)))
            continue
        try:
            opened = open_with(master)
        except IntegrityError:
            foreign.append(name)
            skipped.append(Skipped(name, _FOREIGN))
            continue
        return Found(name=name, master=master, opened=opened, skipped=skipped)
    damaged = [s for s in skipped if s.name not in foreign]
    if foreign:
        raise IntegrityError(
            f"the repository's config does not open with the key in {_names(foreign)}, "
            "which this password opens: either those key files belong to another "
            "repository, or the config is damaged",
            hint="if the config is damaged, restore it from a copy of the repository; "
            "a key file of another repository can be removed with 'safehold key remove' "
            "once the repository opens",
        )
    if not refused:
        raise IntegrityError(
            f"no key file of the repository at {storage.describe()} can be used: "
            + "; ".join(f"{s.name}: {s.reason}" for s in damaged),
            hint="restore the keys/ folder from a copy of the repository",
        )
    message = "wrong password: no key in this repository opens with it"
    hint = "check SAFEHOLD_PASSWORD, --password-file or --password-command"
    if damaged:
        message += f" ({len(damaged)} damaged key file(s) skipped: "
        message += _names(s.name for s in damaged) + ")"
        hint += "; if the password belonged to a damaged key file, restore keys/ from a copy"
    raise WrongPassword(message, hint=hint)


_FOREIGN = (
    "this password opens it, but the master key it holds does not open this repository's "
    "config: this key file belongs to another repository"
)


def _damaged(exc: FormatError) -> str:
    return f"damaged or not a key file ({exc.message})"


def _names(names: Iterable[str]) -> str:
    return ", ".join(names)
