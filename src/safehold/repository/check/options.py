"""What a check does: structure only, or also reading data (all packs or a subset); and
whether it also asks that every backup be recent (``--max-age``)."""

from __future__ import annotations

import math
import random
import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import timedelta

from safehold.errors import UsageError
from safehold.ids import PackId

__all__ = [
    "MAX_GROUPS",
    "CheckOptions",
    "MaxAge",
    "Subset",
    "parse_pack_list",
    "parse_subset",
]

MAX_GROUPS = 256  # groups are chosen by the first byte of the pack id


@dataclass(frozen=True, slots=True)
class Subset:
    """Which packs a partial ``--read-data`` reads.

    ``n/t`` (``group``/``groups``): the packs whose first id byte modulo t is n - 1, so that
    running 1/t, 2/t ... t/t (say one a day) reads every pack exactly once; pack ids are
    hashes, so the groups are about equal. ``percent``: that share of the packs, at random,
    rounded up. ``packs``: exactly these packs (``check --read-packs FILE``; the service's
    verification slices), those not stored being skipped.
    """

    group: int = 0
    groups: int = 0
    percent: float = 0.0
    packs: frozenset[PackId] | None = None

    def selects(self, pack_id: PackId) -> bool:
        """Whether the ``n/t`` group holds ``pack_id`` (always False for a percentage)."""
        return bool(self.groups) and pack_id[0] % self.groups == self.group - 1

    def select(self, pack_ids: Iterable[PackId]) -> list[PackId]:
        """The packs of ``pack_ids`` this subset reads, sorted (a percentage picks at random)."""
        ids = sorted(pack_ids)
        if self.packs is not None:
            return [p for p in ids if p in self.packs]
        if self.groups:
            return [p for p in ids if self.selects(p)]
        k = math.ceil(len(ids) * self.percent / 100)
        return sorted(random.sample(ids, k))

    def describe(self) -> str:
        """The subset as the user wrote it: ``n/t``, a percentage, or ``N packs``."""
        if self.packs is not None:
            return f"{len(self.packs)} packs"
        return f"{self.group}/{self.groups}" if self.groups else f"{self.percent:g}%"


_GROUP_RE = re.compile(r"(\d+)/(\d+)")
_PERCENT_RE = re.compile(r"(\d+(?:\.\d*)?|\.\d+)%")


def parse_subset(spec: str) -> Subset:
    """``n/t`` or ``x%``; anything else is a :class:`UsageError` that says what to write."""
    text = spec.strip()
    hint = (
        "give n/t to read the n-th of t groups of packs (1/7 ... 7/7 over a week read "
        "everything), or a percentage such as 10% to read that share at random"
    )
    if m := _GROUP_RE.fullmatch(text):
        n, total = int(m[1]), int(m[2])
        if not 1 <= total <= MAX_GROUPS:
            raise UsageError(
                f"invalid --read-data-subset {spec!r}: t must be 1 to {MAX_GROUPS}", hint=hint
            )
        if not 1 <= n <= total:
            raise UsageError(
                f"invalid --read-data-subset {spec!r}: n must be 1 to {total}", hint=hint
            )
        return Subset(group=n, groups=total)
    if m := _PERCENT_RE.fullmatch(text):
        pct = float(m[1])
        if not 0 < pct <= 100:
            raise UsageError(
                f"invalid --read-data-subset {spec!r}: the percentage must be above 0 and "
                "at most 100",
                hint=hint,
            )
        return Subset(percent=pct)
    raise UsageError(f"invalid --read-data-subset {spec!r}", hint=hint)


def parse_pack_list(text: str, *, source: str = "the pack list") -> Subset:
    """A :class:`Subset` of exactly the packs ``text`` names: hex pack ids, one a line
    (blank lines and ``#`` comments ignored); a line that is not one is a
    :class:`UsageError` naming it."""
    packs: set[PackId] = set()
    for number, line in enumerate(text.splitlines(), 1):
        word = line.split("#", 1)[0].strip()
        if not word:
            continue
        try:
            raw = bytes.fromhex(word)
        except ValueError:
            raw = b""
        if len(raw) != 32:
            raise UsageError(
                f"{source}, line {number}: {word[:80]!r} is not a pack id",
                hint="write one pack id a line: 64 hex digits, as data/ab/<id> names it",
            )
        packs.add(PackId(raw))
    return Subset(packs=frozenset(packs))


@dataclass(frozen=True, kw_only=True)
class MaxAge:
    """``--max-age``: the newest snapshot of every group must be younger than ``age``.

    A group is what a backup schedule feeds: one host and set of paths, or one host and
    configured source (``source_name``). Only snapshots matching every filter count; when
    none does, that is overdue too (a schedule that never ran, or whose every snapshot
    went). See :mod:`safehold.repository.check.age`.
    """

    age: timedelta
    limit: str = ""  # as the user wrote it ("26h"), for messages
    host: str | None = None
    paths: tuple[str, ...] = ()  # snapshots including all these paths
    source: str | None = None  # snapshots of this configured source

    def describe(self) -> str:
        """The limit as the user wrote it."""
        return self.limit or str(self.age)


@dataclass(frozen=True, kw_only=True)
class CheckOptions:
    """What ``check`` does beyond the structure: read data (all or a subset), and how old a
    source's newest snapshot may be."""

    read_data: bool = False
    subset: Subset | None = None  # implies read_data
    threads: int = 4  # packs downloaded at once
    max_age: MaxAge | None = None  # also report groups whose newest snapshot is older
