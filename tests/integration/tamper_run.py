"""Running one tampering case and judging it (tests/integration/test_tamper_campaign.py).

A case is applied to a fresh copy of the scene's repository; then every listed snapshot is
restored with ``safehold restore`` (real processes, no index cache: each command reads the
repository as it is) and ``safehold check --read-data`` runs. Each restore is:

* **intact**: exit 0 and the restore target's manifest (every path, kind, mode, time, size
  and BLAKE2b of each file) equals the one taken when the repository was whole;
* **detected**: a non-zero exit with a message;
* **silent wrong**: exit 0 with anything else (must never happen);
* **substituted** (hostile cases only): exit 0 with exactly another snapshot's content.

The dependency rule asserted (issue 14, defect 4): restoring snapshot S with password P
depends on ``config``, P's key file, ``snapshots/S``, and every index file and pack that
lists or holds one of S's blobs (tree or data, any copy). It does not depend on locks, trash
records, chain markers, other snapshots, other key files, other index files and packs, nor
on any object added (a replayed, junk or foreign one). Damage to what S does not depend on
must leave S's restore intact; a restore that is not is **collateral** loss. Damage to what
it depends on may cost it, with exit 4 (config: 4 or 10, no repository; its key file: 4 or
12, wrong password, per README.md and docs/format.md section 5; the snapshot object
deleted: 2, no such snapshot, as when it was forgotten), and ``check`` must then exit 4
naming the damaged object (a deleted index file: exit 4; a deleted snapshot or key file is
indistinguishable from ``forget`` or ``key remove`` and is not required to be reported).
"""

from __future__ import annotations

import contextlib
import dataclasses
import random
import shutil
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from safehold.repository.repository import Repository
from safehold.storage.local import LocalStorage
from tests.conftest import CliResult
from tests.integration.helpers import Manifest
from tests.integration.tamper_cases import CLASSES, Case, apply
from tests.integration.tamper_scene import (
    KINDS,
    PASSWORDS,
    Cli,
    Scene,
    restored_manifest,
    write_files,
)

PARALLEL = 2  # restores of one case run side by side (the cases themselves do not)
INTACT, DETECTED, SILENT, SUBSTITUTED = "intact", "detected", "SILENT WRONG", "substituted"


@dataclass(frozen=True)
class Job:
    """One restore: which snapshot, with which password, and what it must give back."""

    label: str
    snap_id: str
    password: str
    expected: Manifest
    dependent: bool  # the case changed something this restore depends on
    donor: Manifest | None = None  # hostile cases: the content the rewrite points at


@dataclass
class Restored:
    job: Job
    code: int
    verdict: str
    output: str


@dataclass
class CaseResult:
    case: Case
    touched: str
    restores: list[Restored]
    check: CliResult
    check_required: bool  # the case damaged something a snapshot depends on
    check_named: bool  # check's output names the touched object
    problems: list[str] = field(default_factory=list)

    @property
    def verdict(self) -> str:
        verdicts = {r.verdict for r in self.restores}
        for v in (SILENT, SUBSTITUTED, DETECTED):
            if v in verdicts:
                return v
        return "unaffected"

    @property
    def collateral(self) -> int:
        """Restores lost that did not depend on the damaged object."""
        return sum(1 for r in self.restores if not r.job.dependent and r.verdict != INTACT)


def mentions(output: str, name: str) -> bool:
    """Whether a command's output names the object (full name, or its id's first 8 digits
    as safehold shortens them)."""
    base = name.rsplit("/", 1)[-1]
    return name in output or base[:8] in output


def restore_jobs(case: Case, scene: Scene, touched: str) -> tuple[list[Job], str]:
    """The restores a case runs, and the password ``check`` uses (one whose key file the
    case left alone)."""
    main = "pw2" if touched == scene.key_of("pw1") else "pw1"
    jobs = [
        Job(s.label, s.id, main, s.baseline, touched in s.deps or touched == scene.key_of(main))
        for s in scene.snaps
    ]
    if touched in scene.keys and scene.keys[touched] != main:
        # The damaged (or replayed) key's own password: that restore depends on it.
        first = scene.snaps[0]
        jobs.append(Job(first.label, first.id, scene.keys[touched], first.baseline, True))
    forgotten = scene.forgotten.get(touched.removeprefix("snapshots/"))
    if forgotten is not None and case.cls == "replay":
        jobs.append(Job(forgotten.label, forgotten.id, main, forgotten.baseline, True))
    return jobs, main


def make_hostile(case: Case, scene: Scene, repo: Path, jobs: list[Job]) -> list[Job]:
    """Rewrite the case's snapshot with the repository key to point at the donor's root
    tree, delete the original, and restore the rewrite instead of it."""
    victim = next(s for s in scene.snaps if "snapshots/" + s.id == case.target)
    donor = next(s for s in scene.snaps if s.label == case.op[1])
    r = Repository.open(LocalStorage(repo), PASSWORDS["pw1"].encode())
    snap = r.load_snapshot(victim.id)
    forged = dataclasses.replace(snap, tree=r.load_snapshot(donor.id).tree, id="")
    new_id = r.save_snapshot(forged)
    r.delete_snapshot(victim.id)
    out = []
    for job in jobs:
        if job.label == victim.label:
            job = dataclasses.replace(
                job, snap_id=new_id, label=victim.label + "*", donor=donor.baseline
            )
        out.append(job)
    return out


def allowed_codes(case: Case, scene: Scene, touched: str, job: Job) -> set[int]:
    if touched == "config":
        return {4, 10}
    if touched == scene.key_of(job.password):
        return {4, 12}
    if touched == "snapshots/" + job.snap_id and case.cls == "delete":
        return {2, 4}
    return {4}


def run_case(case: Case, scene: Scene, cli: Cli, work: Path, seed: int) -> CaseResult:
    rng = random.Random(f"{seed}|{case.id}")
    files = dict(scene.files)
    touched = apply(case, scene, files, rng)
    repo = work / "repo"
    write_files(repo, files)
    jobs, main = restore_jobs(case, scene, touched)
    if case.cls == "hostile":
        jobs = make_hostile(case, scene, repo, jobs)

    def restore(job: Job) -> Restored:
        target = work / "out" / f"{job.label}-{job.password}"
        res = cli(
            "-r",
            str(repo),
            "--no-cache",
            "restore",
            job.snap_id,
            "--target",
            str(target),
            password=job.password,
        )
        try:
            if res.code != 0:
                verdict = DETECTED
            else:
                got = restored_manifest(target) if target.exists() else {}
                if got == job.expected:
                    verdict = INTACT
                elif job.donor is not None and got == job.donor:
                    verdict = SUBSTITUTED
                else:
                    verdict = SILENT
        finally:
            with contextlib.suppress(FileNotFoundError):
                shutil.rmtree(target)
        return Restored(job, res.code, verdict, res.output)

    with ThreadPoolExecutor(PARALLEL) as pool:
        restores = list(pool.map(restore, jobs))
    check = cli("-r", str(repo), "--no-cache", "check", "--read-data", password=main)
    result = CaseResult(
        case,
        touched,
        restores,
        check,
        check_required=_check_required(case, scene, touched),
        check_named=bool(touched) and mentions(check.output, touched),
    )
    result.problems = judge(result, scene)
    shutil.rmtree(repo)
    return result


def _check_required(case: Case, scene: Scene, touched: str) -> bool:
    """Whether the case damaged (changed in place, or deleted) an object some listed
    snapshot depends on, in a way ``check`` can see (not a snapshot or key file deletion)."""
    if case.cls not in ("bitflip", "truncate", "delete", "swap", "junk") or not touched:
        return False
    if case.target != touched:  # an added object
        return False
    if case.cls == "delete" and case.kind in ("snapshots", "keys"):
        return False
    return touched in scene.keys or any(touched in s.deps for s in scene.snaps)


def judge(result: CaseResult, scene: Scene) -> list[str]:
    """Every rule of the module docstring this case broke."""
    case, touched = result.case, result.touched
    problems: list[str] = []
    for r in result.restores:
        what = f"restore {r.job.label} ({r.job.password}): exit {r.code}"
        if "Traceback" in r.output:
            problems.append(f"{what} with a traceback: {_tail(r.output)}")
        if r.verdict == SILENT:
            problems.append(f"{what} but the restored files differ: SILENT WRONG DATA")
        if not r.job.dependent and r.verdict != INTACT:
            problems.append(
                f"{what}: collateral (it does not depend on {touched}): {_tail(r.output)}"
            )
        if r.verdict == DETECTED and r.job.dependent:
            allowed = allowed_codes(case, scene, touched, r.job)
            if r.code not in allowed:
                problems.append(f"{what}, expected {sorted(allowed)}: {_tail(r.output)}")
            if not r.output.strip():
                problems.append(f"{what} without a message")
            key_damaged = touched == scene.key_of(r.job.password) and case.cls != "delete"
            if key_damaged and not mentions(r.output, touched):
                # docs/format.md section 5: the error names the damaged key files skipped.
                problems.append(f"{what} does not name {touched}: {_tail(r.output)}")
    chk = result.check
    expected_check = {4, 10} if touched == "config" else {0, 4}
    if chk.code not in expected_check or "Traceback" in chk.output:
        problems.append(f"check: exit {chk.code}: {_tail(chk.output)}")
    elif result.check_required:
        if chk.code not in (4, 10):
            problems.append(f"check exit {chk.code} after damage to {touched}")
        elif case.cls != "delete" and not result.check_named:
            problems.append(f"check does not name {touched}: {_tail(chk.output)}")
    if case.cls == "control" and (result.verdict != "unaffected" or chk.code != 0):
        problems.append(f"the untouched repository: {result.verdict}, check {chk.code}")
    return problems


def _tail(text: str, lines: int = 4) -> str:
    return " / ".join(text.strip().splitlines()[-lines:])


# --- counting ------------------------------------------------------------------------------

COLUMNS = (
    "tried",
    "unaffected",
    "detected",
    "silent wrong",
    "collateral",
    "substituted",
    "check flagged",
    "problems",
)


def as_json(res: CaseResult) -> dict[str, Any]:
    """One case as a JSON object (the rows :func:`table` counts)."""
    return {
        "kind": res.case.kind,
        "class": res.case.cls,
        "variant": res.case.variant,
        "role": res.case.role,
        "touched": res.touched,
        "verdict": res.verdict,
        "collateral": res.collateral,
        "restores": [
            {
                "snapshot": r.job.label,
                "password": r.job.password,
                "code": r.code,
                "verdict": r.verdict,
                "dependent": r.job.dependent,
                "named": bool(res.touched) and mentions(r.output, res.touched),
            }
            for r in res.restores
        ],
        "check": res.check.code,
        "check_named": res.check_named,
        "check_required": res.check_required,
        "problems": res.problems,
    }


def tally(rows: list[dict[str, Any]], key: str) -> dict[str, Counter[str]]:
    out: dict[str, Counter[str]] = {}
    for row in rows:
        count = out.setdefault(row[key], Counter())
        count["tried"] += 1
        count[{SILENT: "silent wrong"}.get(row["verdict"], row["verdict"])] += 1
        count["collateral"] += 1 if row["collateral"] else 0
        count["check flagged"] += 1 if row["check"] == 4 else 0
        count["problems"] += 1 if row["problems"] else 0
    order = KINDS if key == "kind" else CLASSES
    return {k: out[k] for k in order if k in out}


def table(rows: list[dict[str, Any]]) -> str:
    """Counts per object kind and per class of damage, one line each, and the totals."""
    lines = []
    for key in ("kind", "class"):
        counts = tally(rows, key)
        total: Counter[str] = Counter()
        for count in counts.values():
            total.update(count)
        lines.append(f"{'by ' + key:<10}" + "".join(f"{c:>14}" for c in COLUMNS))
        for name, count in [*counts.items(), ("all", total)]:
            lines.append(f"{name:<10}" + "".join(f"{count[c]:>14}" for c in COLUMNS))
        lines.append("")
    return "\n".join(lines)


def describe(res: CaseResult) -> str:
    restores = ", ".join(f"{r.job.label}:{r.verdict}({r.code})" for r in res.restores)
    return (
        f"[{res.case.id}] {res.touched or '-'}: {res.verdict}; {restores}; "
        f"check {res.check.code}{' naming it' if res.check_named else ''}"
    )


if __name__ == "__main__":
    # python -m tests.integration.tamper_run FILE...: the counts over the JSON lines that
    # runs with SAFEHOLD_TAMPER_REPORT=FILE wrote (the long campaign's shards, together).
    import json
    import sys

    rows = [json.loads(line) for f in sys.argv[1:] for line in Path(f).read_text().splitlines()]
    print(table(rows))
    for row in rows:
        for problem in row["problems"]:
            print(f"[{row['kind']} | {row['role']} | {row['class']}:{row['variant']}] {problem}")
