"""Which restore point a drill restores: the newest, or the next chain back.

``latest`` takes the newest point. ``rotating`` walks back through the source's chains
over successive drills, so that old chains are proven too, not only the one being added
to: the chains are ordered by their newest point, newest first; the drill after one that
proved chain *i* takes the newest point of chain *i + 1*, and after the oldest chain it
starts again from the newest. Restoring a chain's newest point reads data written by
every earlier backup of that chain (an incremental stores only what changed), so one
drill proves the chain as far as it goes. An isolated snapshot is a chain of its own.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

__all__ = ["Point", "choose_point"]


@dataclass(frozen=True)
class Point:
    """A restorable point: its snapshot, when it was taken, and its chain."""

    snapshot: str
    taken_at: datetime
    chain: str


def choose_point(points: Sequence[Point], target: str, last_drilled: str | None) -> Point | None:
    """The point to drill among ``points`` (any order); None when there are none.
    ``last_drilled``: the snapshot the plan's previous drill restored."""
    if not points:
        return None
    newest = sorted(points, key=lambda p: (p.taken_at, p.snapshot), reverse=True)
    if target != "rotating" or last_drilled is None:
        return newest[0]
    chains: list[str] = []
    for point in newest:
        if point.chain not in chains:
            chains.append(point.chain)
    previous = next((p for p in newest if p.snapshot == last_drilled), None)
    if previous is None:
        return newest[0]  # the last drilled point is gone (forgotten): start again
    nxt = chains[(chains.index(previous.chain) + 1) % len(chains)]
    return next(p for p in newest if p.chain == nxt)
