"""Chains: runs of snapshots that deduplicate against each other and nothing else.

The rule for a backup's chain (docs/format.md, "Chains"): it joins its parent's chain
unless that chain is finished (``chains/<id>`` exists) or ``--chain-length`` is reached,
and then starts a new one. A new chain's id is derived from the source it backs up and
the chain it follows, not drawn at random, so that a full backup that was interrupted and
is run again joins the same chain and reuses the packs the interrupted run uploaded. Only
an isolated backup, which no later backup joins, takes a random id.

Choosing the parent (which snapshot counts as the same source) is the backup engine's.
"""

from __future__ import annotations

import json
import os

from safehold.crypto.keys import MasterKey
from safehold.ids import HexId, to_hex
from safehold.repository.snapshot import Snapshot

__all__ = ["continues_chain", "new_chain_id", "next_chain_id"]


def new_chain_id() -> HexId:
    """A random chain id, for a chain no later backup joins (``--isolated``)."""
    return to_hex(os.urandom(16))


def continues_chain(parent: Snapshot, finished: set[HexId], chain_length: int | None) -> bool:
    """Whether a backup of ``parent``'s source joins ``parent``'s chain (else it starts the
    next one with a full upload)."""
    if parent.isolated or parent.chain in finished:
        return False
    return chain_length is None or parent.chain_seq < chain_length


def next_chain_id(
    master: MasterKey, *, host: str, key: list[str], previous: str, finished: set[HexId]
) -> HexId:
    """The id of the chain that follows ``previous`` ("" for a source's first chain) for the
    source ``key`` (its paths, or ``source:<name>`` for a configured source) on ``host``.

    The first 16 bytes of the keyed BLAKE3 of the JSON ``[host, key, previous]``, derived
    again from the result while that id names a finished chain (docs/format.md).
    """
    seed = json.dumps([host, key, previous]).encode()
    chain = to_hex(master.blob_id(b"safehold chain\0" + seed)[:16])
    while chain in finished:
        chain = to_hex(master.blob_id(b"safehold chain\0" + chain.encode())[:16])
    return chain
