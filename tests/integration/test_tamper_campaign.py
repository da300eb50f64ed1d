"""The tampering campaign (issue 14): every kind of repository object damaged in every way,
and what that costs, through the real command line.

A small repository is built once with ``safehold`` itself (tests/integration/tamper_scene.py:
two chains, an isolated snapshot, a stream snapshot, a forgotten snapshot whose trash record
waits for a live lock, a second waiting record, a finished chain, two key files, and the
objects that earlier prunes, ``forget`` and ``key remove`` removed, kept for replays). Each
case (tests/integration/tamper_cases.py: bit flips, truncation, deletion, swaps, replays,
junk, and a hostile key holder's rewritten snapshots) damages one object of a fresh copy;
then every listed snapshot is restored with ``safehold restore`` and ``safehold check
--read-data`` runs (tests/integration/tamper_run.py, whose docstring states the dependency
rule asserted). The test prints, per object kind and per class, how many cases were tried,
left every restore intact, were detected, gave silently wrong data, lost a snapshot that did
not depend on the damaged object (collateral), and were flagged by ``check``; it fails on
any silent wrong data, any collateral loss, a traceback, an undocumented exit code, or a
``check`` that passes or does not name what was damaged.

The default run takes a seeded sample of about 35 cases covering every object kind and
every class (``SAFEHOLD_TAMPER_SEED`` repeats one; the seed is printed). ``--long`` runs
every case (about 500), in shards that the test workers share. With
``SAFEHOLD_TAMPER_REPORT=FILE`` every case is appended to FILE as a JSON line, and
``python -m tests.integration.tamper_run FILE`` prints the counts of all shards together.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from safehold.repository.format import T_INDEX, open_object
from safehold.repository.index import decode_index
from safehold.repository.repository import Repository
from safehold.storage.local import LocalStorage
from tests.conftest import PASSWORD, CliRunner
from tests.integration.tamper_cases import CLASSES, all_cases, sample, shard
from tests.integration.tamper_run import (
    SILENT,
    as_json,
    describe,
    run_case,
    table,
)
from tests.integration.tamper_scene import KINDS, Cli, Scene, build_scene

SHARDS = 8  # --long: ~60 cases each, a few minutes per shard


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "part" in metafunc.fixturenames:
        if metafunc.config.getoption("--long"):
            parts = [f"shard-{i}-of-{SHARDS}" for i in range(SHARDS)]
        else:
            parts = ["sample"]
        metafunc.parametrize("part", parts)


@pytest.fixture(scope="module")
def scene(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scene]:
    work = tmp_path_factory.mktemp("tamper")
    built = build_scene(work)
    yield built
    if built.live_lock is not None:
        built.live_lock.release()
    shutil.rmtree(work, ignore_errors=True)


@pytest.fixture
def seed() -> int:
    value = int(os.environ.get("SAFEHOLD_TAMPER_SEED", "0")) or random.randrange(1, 2**31)
    print(f"tamper campaign seed: {value} (set SAFEHOLD_TAMPER_SEED to repeat)")
    return value


def test_tamper_campaign(part: str, scene: Scene, seed: int, tmp_path: Path) -> None:
    cases = all_cases(scene)
    if part == "sample":
        chosen = sample(cases, random.Random(seed))
        assert {c.kind for c in chosen} == set(KINDS)
        assert {c.cls for c in chosen} == set(CLASSES)
    else:
        index, count = (int(x) for x in part.split("-")[1::2])
        chosen = shard(cases, index, count)
    cli = Cli(tmp_path / "home")
    results = []
    for case in chosen:
        res = run_case(case, scene, cli, tmp_path / "case", seed)
        results.append(res)
        print(describe(res))
    rows = [as_json(r) for r in results]
    if report := os.environ.get("SAFEHOLD_TAMPER_REPORT"):
        with open(report, "a") as f:
            f.writelines(json.dumps(row) + "\n" for row in rows)

    print(f"\ntamper campaign ({part}, seed {seed}): {len(results)} of {len(cases)} cases")
    print(table(rows))
    problems = [f"{describe(r)}\n    " + "\n    ".join(r.problems) for r in results if r.problems]
    silent = sum(1 for r in results if r.verdict == SILENT)
    collateral = sum(1 for r in results if r.collateral)
    assert silent == 0 and collateral == 0 and not problems, (
        f"{silent} silent wrong, {collateral} with collateral loss, "
        f"{len(problems)} with problems:\n" + "\n".join(problems)
    )


def test_restore_of_a_damaged_snapshot_exits_4(
    cli: CliRunner, cli_repo: str, tmp_path: Path
) -> None:
    # README.md: 4 is damaged data found. The campaign met this with every bit flip,
    # truncation, junk or swap of a snapshot object: restore skipped the damaged snapshot
    # with a warning, then said "no snapshot with id" (exit 2) until 3e0a363.
    src = tmp_path / "src"
    src.mkdir()
    (src / "f.txt").write_text("content\n")
    done = cli("-r", cli_repo, "backup", "--json", str(src))
    assert done.code == 0, done.output
    snap = json.loads(done.stdout)["snapshot"]
    path = Path(cli_repo) / "snapshots" / snap
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 1
    path.write_bytes(bytes(raw))

    res = cli("-r", cli_repo, "restore", snap, "--target", str(tmp_path / "out"))
    assert "Traceback" not in res.output
    assert f"snapshots/{snap}" in res.stderr  # named ...
    assert res.code == 4, res.output  # ... and damage, not "no snapshot with id" (2)


def test_an_index_file_naming_a_swept_pack_costs_no_restore(
    cli: CliRunner, cli_repo: str, tmp_path: Path
) -> None:
    # The campaign's replay of an index file that a prune replaced: it lists the pack the
    # prune repacked and then deleted, whose blobs the live index lists in the new pack.
    # Readers took the first location and exited 4 on the missing pack (2 of 501 cases
    # before cc9ea75); they now load the index again and read the live copy.
    src = tmp_path / "src"
    src.mkdir()
    (src / "big.bin").write_bytes(os.urandom(1_300_000))
    (src / "state.bin").write_bytes(os.urandom(400_000))
    first = cli("-r", cli_repo, "backup", "--json", str(src))
    (src / "state.bin").write_bytes(os.urandom(400_000))
    second = cli("-r", cli_repo, "backup", "--json", str(src))
    assert first.code == second.code == 0, first.output + second.output
    repo = Repository.open(LocalStorage(Path(cli_repo)), PASSWORD)
    old = [
        rec
        for name in repo.list_index_files()
        for rec in decode_index(repo.load_object(name, T_INDEX), name)
    ]
    forgot = cli("-r", cli_repo, "forget", json.loads(first.stdout)["snapshot"], "--prune")
    assert forgot.code == 0, forgot.output
    stored = repo.list_packs()
    assert any(rec.pack_id not in stored for rec in old), "prune deleted no pack"

    # Those records again, in a file whose name sorts first (readers take a blob's first
    # location in name order; the campaign's replay under the old name hits when it does).
    live = repo.list_index_files()
    while (name := repo.write_index(old)) > min(live):
        repo.storage.delete(name)
    assert open_object(repo.aead, repo.storage.get(name), T_INDEX, name)

    out = tmp_path / "out"
    snap = json.loads(second.stdout)["snapshot"]
    res = cli("-r", cli_repo, "--no-cache", "restore", snap, "--target", str(out))
    assert res.code == 0, res.output  # was: exit 4, "pack ... missing from the storage"
    restored = out / str(src).lstrip("/")
    assert (restored / "big.bin").read_bytes() == (src / "big.bin").read_bytes()
