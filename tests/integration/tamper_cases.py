"""The tampering campaign's cases: every object of the scene (tests/integration/tamper_scene.py)
times every class of damage, and the seeded sample the default test run takes.

Classes and their variants:

* ``bitflip``: one bit at the start, in the object header (its type byte), in the middle, at
  the end (the authentication tag); packs also inside their sealed header (28 bytes from the
  end) and in the trailer (the header length);
* ``truncate``: to 0 bytes, to half, by 1 byte;
* ``delete``;
* ``swap``: another object's bytes under this name: one of the same kind from this
  repository (``other``: a pack of the same blob type; for the single lock, the dead
  process's; for the config and the chain marker, none) and one from a repository opened by
  the same password (``foreign``); ``foreign-added`` puts a foreign object in beside the
  others, under its own name;
* ``replay``: an object a later step removed, put back: a forgotten snapshot, a swept pack
  or trash record, an index file prune replaced, a released or dead process's lock, the
  removed key file;
* ``junk``: random bytes of the same length, or a valid-looking header (a well-formed key
  file for keys) followed by junk, in place; ``added-*``: a new object of that kind holding
  random bytes, a valid-looking header and junk, or nothing (named by the hash of its bytes
  where names are hashes, so only its content is wrong);
* ``hostile``: the repository key's holder rewrites a snapshot to point at another
  snapshot's tree (same chain, or another chain), deleting the original; see
  :func:`hostile_cases`;
* ``control``: nothing changed (proves that the harness itself sees no difference).
"""

from __future__ import annotations

import base64
import json
import random
import secrets
import struct
from dataclasses import dataclass

from safehold.repository.format import (
    T_CHAIN,
    T_CONFIG,
    T_INDEX,
    T_LOCK,
    T_PACK,
    T_SNAPSHOT,
    T_TRASH,
    header,
    storage_id,
)
from tests.integration.tamper_scene import KINDS, Scene, StoredObject

CLASSES = ("bitflip", "truncate", "delete", "swap", "replay", "junk", "hostile", "control")
TYPES = {
    "config": T_CONFIG,
    "index": T_INDEX,
    "snapshots": T_SNAPSHOT,
    "data": T_PACK,
    "locks": T_LOCK,
    "chains": T_CHAIN,
    "trash": T_TRASH,
}
HASH_NAMED = ("keys", "index", "snapshots", "data", "trash")

# How many cases of each kind the default run samples (every kind, most classes).
SAMPLE = {
    "config": 3,
    "keys": 5,
    "index": 5,
    "snapshots": 5,
    "data": 7,
    "locks": 3,
    "trash": 3,
    "chains": 2,
}


@dataclass(frozen=True)
class Case:
    kind: str
    cls: str
    variant: str
    role: str  # the object's role, or what is added
    target: str  # the object changed, removed or added ("" for control)
    op: tuple[str | int, ...]  # see apply()

    @property
    def id(self) -> str:
        return f"{self.kind} | {self.role} | {self.cls}:{self.variant}"


# --- building the cases ---------------------------------------------------------------------


def flip_positions(kind: str) -> dict[str, int | str]:
    common: dict[str, int | str] = {"start": 0, "header": 3, "middle": "middle"}
    if kind == "data":
        return {**common, "pack-header": -28, "trailer": -8}
    return {**common, "end": -1}


def all_cases(scene: Scene) -> list[Case]:
    cases = [Case("config", "control", "none", "nothing changed", "", ("none",))]
    by_kind: dict[str, list[str]] = {}
    for obj in scene.objects:
        by_kind.setdefault(obj.kind, []).append(obj.name)
    for obj in scene.objects:
        k, name = obj.kind, obj.name

        def case(cls: str, variant: str, *op: str | int, o: StoredObject = obj) -> Case:
            return Case(o.kind, cls, variant, o.role, o.name, op)

        for variant, pos in flip_positions(k).items():
            cases.append(case("bitflip", variant, "flip", pos))
        size = len(scene.files[name])
        for variant, length in (("empty", 0), ("half", size // 2), ("minus-1", size - 1)):
            cases.append(case("truncate", variant, "cut", length))
        cases.append(case("delete", "delete", "delete"))
        other = _other(scene, obj.name, by_kind[k])
        if other is not None:
            cases.append(case("swap", "other", "copy", other))
        elif k == "locks":
            dead = next(i for i, (o, _) in enumerate(scene.history) if "died" in o.role)
            cases.append(case("swap", "other", "history", dead))
        if k in scene.foreign:
            cases.append(case("swap", "foreign", "foreign", _foreign_pick(scene, k, obj.role)))
        cases.append(case("junk", "random", "junk", "random"))
        cases.append(case("junk", "header", "junk", "header"))
    for k in KINDS:
        if k == "config":
            continue
        for how in ("random", "header", "empty"):
            cases.append(Case(k, "junk", f"added-{how}", f"a new {k} object", "", ("add", how)))
        if k in scene.foreign:
            pick = _foreign_pick(scene, k, "data pack")
            cases.append(
                Case(
                    k,
                    "swap",
                    "foreign-added",
                    f"another repository's {k} object",
                    "",
                    ("add-foreign", pick),
                )
            )
    for i, (obj, _raw) in enumerate(scene.history):
        cases.append(Case(obj.kind, "replay", "put-back", obj.role, obj.name, ("history", i)))
    cases.extend(hostile_cases(scene))
    return cases


def _other(scene: Scene, name: str, same_kind: list[str]) -> str | None:
    """The next object of the same kind (for packs, of the same blob type)."""
    role = scene.object(name).role
    pool = [n for n in same_kind if n != name]
    if scene.object(name).kind == "data":
        kind_of_pack = "tree pack" if "tree pack" in role else "data pack"
        pool = [n for n in pool if kind_of_pack in scene.object(n).role]
    return pool[0] if pool else None


def _foreign_pick(scene: Scene, kind: str, role: str) -> int:
    """Which foreign object of ``kind`` to use: for packs, the one of the same blob type (the
    foreign data pack is the larger)."""
    objs = scene.foreign[kind]
    if kind != "data" or len(objs) < 2:
        return 0
    larger = max(range(len(objs)), key=lambda i: len(objs[i]))
    return larger if "data pack" in role else 1 - larger


def hostile_cases(scene: Scene) -> list[Case]:
    """Snapshots rewritten by whoever holds the repository key to point at another
    snapshot's root tree. Restoring the rewritten snapshot gives the other snapshot's content
    exactly: nothing in the repository says which tree a snapshot *should* have, so this
    is undetectable within a chain (within the same chain ``check`` cannot tell either);
    across chains ``check`` sees blobs outside the snapshot's chain."""
    out = []
    labels = [s.label for s in scene.snaps]
    for snap in scene.snaps:
        chain = scene.chain_of[snap.label]
        same = [x for x in labels if x != snap.label and scene.chain_of[x] == chain]
        donors = [(same[0], "same-chain")] if same else []
        if snap.label in ("A2", "I"):
            donors.append(("B2" if snap.label == "A2" else "S", "other-chain"))
        for donor, how in donors:
            out.append(
                Case(
                    "snapshots",
                    "hostile",
                    how,
                    f"snapshot {snap.label} given {donor}'s tree",
                    "snapshots/" + snap.id,
                    ("hostile", donor),
                )
            )
    return out


# --- applying one -----------------------------------------------------------------------------


def apply(case: Case, scene: Scene, files: dict[str, bytes], rng: random.Random) -> str:
    """Change ``files`` (a copy of the scene's) as the case says; returns the name of the
    object changed, removed or added ("" when nothing was). Hostile cases are applied
    through the library after the files are written (test_tamper_campaign.py)."""
    what = case.op[0]
    name = case.target
    if what in ("none", "hostile"):
        return name
    if what == "flip":
        flipped = bytearray(files[name])
        where = case.op[1]
        pos = len(flipped) // 2 if where == "middle" else int(where) % len(flipped)
        flipped[pos] ^= 1 << rng.randrange(8)
        files[name] = bytes(flipped)
    elif what == "cut":
        files[name] = files[name][: int(case.op[1])]
    elif what == "delete":
        del files[name]
    elif what == "copy":
        files[name] = scene.files[str(case.op[1])]
    elif what == "history":
        obj, raw = scene.history[int(case.op[1])]
        if case.cls == "replay":
            name = obj.name
        files[name] = raw
    elif what == "foreign":
        files[name] = scene.foreign[case.kind][int(case.op[1])]
    elif what == "junk":
        files[name] = junk(case.kind, str(case.op[1]), len(files[name]), rng)
    elif what == "add":
        raw = junk(case.kind, str(case.op[1]), 600, rng)
        name = new_name(case.kind, raw)
        files[name] = raw
    elif what == "add-foreign":
        raw = scene.foreign[case.kind][int(case.op[1])]
        name = new_name(case.kind, raw)
        files[name] = raw
    else:
        raise AssertionError(f"unknown operation {case.op}")
    return name


def new_name(kind: str, raw: bytes) -> str:
    if kind in HASH_NAMED:
        sid = storage_id(raw)
        return f"data/{sid[:2]}/{sid}" if kind == "data" else f"{kind}/{sid}"
    return f"{kind}/{secrets.token_hex(16)}"


def junk(kind: str, how: str, size: int, rng: random.Random) -> bytes:
    if how == "empty":
        return b""
    if how == "random":
        return rng.randbytes(max(size, 1))
    if kind == "keys":  # well-formed, cheap to try, and opened by no password
        doc = {
            "version": 1,
            "kdf": "scrypt",
            "n": 1024,
            "r": 8,
            "p": 1,
            "salt": base64.b64encode(rng.randbytes(32)).decode(),
            "data": base64.b64encode(b"\x01" + rng.randbytes(12 + 80 + 16)).decode(),
            "created": "2026-01-01T00:00:00+00:00",
            "hostname": "junk",
            "username": "junk",
        }
        return json.dumps(doc).encode()
    body = header(TYPES[kind]) + b"\x01" + rng.randbytes(max(size - 5, 40))
    if kind == "data":  # and a trailer that points inside it
        body += struct.pack("<I", 60) + b"SHPE"
    return body


# --- the sample ---------------------------------------------------------------------------------


def sample(cases: list[Case], rng: random.Random) -> list[Case]:
    """The control case, :data:`SAMPLE` cases of each kind (as many distinct classes as
    possible, chosen at random), one hostile case, and one more for any class left out."""
    picked = [c for c in cases if c.cls == "control"]
    for kind, count in SAMPLE.items():
        pool = [c for c in cases if c.kind == kind and c.cls not in ("control", "hostile")]
        rng.shuffle(pool)
        chosen: list[Case] = []
        for c in pool:  # one per class first
            if len(chosen) < count and c.cls not in {x.cls for x in chosen}:
                chosen.append(c)
        chosen += [c for c in pool if c not in chosen][: count - len(chosen)]
        picked += chosen
    picked.append(rng.choice([c for c in cases if c.cls == "hostile"]))
    for cls in CLASSES:
        if not any(c.cls == cls for c in picked):
            picked.append(rng.choice([c for c in cases if c.cls == cls]))
    return picked


def shard(cases: list[Case], index: int, count: int) -> list[Case]:
    """Every ``count``-th case from ``index``: shards of the long campaign cost about the
    same, and every shard sees every kind."""
    return cases[index::count]
