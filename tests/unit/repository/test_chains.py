"""The chain rule (repository/chains.py): which chain a backup joins and how a new one's id
is derived (docs/format.md, "Chains")."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import blake3

from safehold.crypto.keys import MasterKey
from safehold.repository.chains import continues_chain, new_chain_id, next_chain_id
from safehold.repository.snapshot import Snapshot

MASTER = MasterKey(encrypt=bytes(32), ident=bytes(range(32)))


def _snap(*, chain: str = "ab" * 16, seq: int = 0, isolated: bool = False) -> Snapshot:
    return Snapshot(
        time=datetime(2026, 1, 1, tzinfo=UTC),
        tree="00" * 32,
        paths=["/data"],
        hostname="h",
        chain=chain,
        chain_seq=seq,
        isolated=isolated,
    )


def test_a_new_chain_id_is_the_keyed_hash_format_md_gives() -> None:
    seed = json.dumps(["h", ["/data"], ""]).encode()
    expected = blake3.blake3(b"safehold chain\0" + seed, key=MASTER.ident).digest()[:16].hex()
    assert next_chain_id(MASTER, host="h", key=["/data"], previous="", finished=set()) == expected


def test_an_interrupted_full_backup_run_again_gets_the_same_chain() -> None:
    first = next_chain_id(MASTER, host="h", key=["/data"], previous="c" * 32, finished=set())
    again = next_chain_id(MASTER, host="h", key=["/data"], previous="c" * 32, finished=set())
    other = next_chain_id(MASTER, host="h", key=["/other"], previous="c" * 32, finished=set())
    assert first == again != other
    assert len(first) == 32


def test_a_finished_chain_id_is_derived_again() -> None:
    taken = next_chain_id(MASTER, host="h", key=["/data"], previous="", finished=set())
    chain = next_chain_id(MASTER, host="h", key=["/data"], previous="", finished={taken})
    expected = blake3.blake3(b"safehold chain\0" + taken.encode(), key=MASTER.ident)
    assert chain == expected.digest()[:16].hex()


def test_a_backup_continues_its_parents_chain_until_finished_or_long_enough() -> None:
    parent = _snap(seq=2)
    assert continues_chain(parent, set(), None)
    assert continues_chain(parent, set(), 3)
    assert not continues_chain(parent, set(), 2)
    assert not continues_chain(parent, {parent.chain}, None)
    assert not continues_chain(_snap(isolated=True), set(), None)


def test_isolated_chain_ids_are_random() -> None:
    assert new_chain_id() != new_chain_id()
    assert len(new_chain_id()) == 32
