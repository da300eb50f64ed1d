"""Plans made through the service (origin ``api``), and how the service runs them.

An API plan is a source block exactly as a configuration file's ``sources: NAME:`` (its
type and settings, hooks, ``schedule`` and every plan key) plus ``repository: DEST``, a
destination of the same project (:mod:`.destinations`), and optionally ``copies: [DEST,
...]``. It is validated by the configuration's own code: the block is put in a
configuration document beside its destinations and read with
:func:`safehold.config.parse_config`, so a problem is named by its key
(``sources.NAME.paths: field required``) exactly as in a file. The plan's row keeps the
block in ``plans.settings`` (``source``, ``repository``, ``copies``), except the strings
that hold a credential as the source's kind declares them (a ``password``, a ``url`` with
one: :func:`safehold.config.source_secrets`): those are shown and kept as ``<sealed>``,
their paths in ``secret_paths``, their values sealed in ``sealed_source`` with associated
data naming the plan. ``${VAR}`` references are kept as written (they are no secret).

A plan of the configuration file is read-only here (:class:`~safehold.errors.Conflict`):
the file stays its source of truth. Names are unique per project, whatever the origin.

**Running one.** A worker's child reads its plan from a configuration file, so the service
writes one per API plan (:func:`plans_from_catalog`): ``STATE_DIR/plans/PROJECT/NAME.yaml``,
mode 0600, replaced atomically. It holds no secret: every string that came from a sealed
destination (its location, password, options) is written as ``${SAFEHOLD_SECRET_N}``,
and so is each sealed value of the source; the plan's :attr:`PlanSpec.env` opens them
again when a run starts and gives the child those variables in its environment. The
child's own interpolation puts them back; nothing of them reaches a disk. Numbers and
booleans are written as they are.

**Its drill plan.** A block whose ``drill:`` has a ``schedule`` gets a drill plan, as a
file's source does (:mod:`.drills`): ``NAME.drill``, kind ``drill``, run from the same
generated file with the same secret environment. Its row has origin ``api`` and
``settings.drill_of = NAME``: it is written, changed and deleted with its plan's (never on
its own), and it is read back as the plan's drill, not as a plan of its own. So that the
name stays free, no API plan may be named ``*.drill``.
"""

from __future__ import annotations

import base64
import contextlib
import copy
import json
import logging
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import yaml
from sqlalchemy import Connection, Engine, text

from safehold.catalog import RunKind
from safehold.config import Config, parse_config, source_secrets
from safehold.config.alerts import plan_ping_secrets
from safehold.errors import Conflict, NotFound, SafeholdError, UsageError
from safehold.policy.schedule import parse_schedule
from safehold.service.destinations import check_name, destination_block
from safehold.service.drills import DRILL_SUFFIX, drill_plan_name
from safehold.service.plans import PlanSpec, plans_from_config
from safehold.service.vault import Vault
from safehold.storage.location import redact

__all__ = [
    "DRILL_OF",
    "SEALED",
    "SECRET_VAR",
    "PlanCache",
    "PlanView",
    "RunEnv",
    "create_plan",
    "delete_plan",
    "drill_rows",
    "get_plan",
    "list_plans",
    "listed_plans",
    "plan_aad",
    "plan_document",
    "plans_from_catalog",
    "stored_document",
    "update_plan",
]

log = logging.getLogger("safehold.service")

SECRET_VAR = "SAFEHOLD_SECRET_"  # the variables standing for the plan's secret strings
SEALED = "<sealed>"  # shown, and kept in the row, in place of a source's credential
_SECRET_REF = re.compile(r"SAFEHOLD_SECRET_", re.I)
_PLAN_KEYS = ("repository", "copies")  # an API plan's keys beyond a source block's
DRILL_OF = "drill_of"  # in a drill plan's settings: the API plan it drills
# The API plans' own rows (not their drill plans'), for the statements below.
_OWN = "origin = 'api' AND settings->>'drill_of' IS NULL"


@dataclass(frozen=True)
class PlanView:
    """A plan as the service shows it."""

    project: str
    name: str
    origin: str  # 'file' (read-only here) or 'api'
    schedule: str
    timezone: str
    paused: bool  # paused at run time (``plan pause``); the block may pause it too
    repository: str | None  # an API plan's destination (None: a file plan)
    copies: list[str]
    source: dict[str, Any] | None  # an API plan's source block, as given

    def to_json(self) -> dict[str, Any]:
        """The view as JSON (``--json``, the API)."""
        return {
            "project": self.project,
            "name": self.name,
            "origin": self.origin,
            "schedule": self.schedule,
            "timezone": self.timezone,
            "paused": self.paused,
            "repository": self.repository,
            "copies": self.copies,
            "source": self.source,
        }


# --- the generated document -----------------------------------------------------------


def _hide(value: Any, env: dict[str, str]) -> Any:
    """``value`` with every string replaced by a new ``${SAFEHOLD_SECRET_N}`` (its value
    put in ``env``); the walk's order is the block's, so the same block always gives the
    same numbers."""
    if isinstance(value, str):
        var = f"{SECRET_VAR}{len(env) + 1}"
        env[var] = value
        return "${" + var + "}"
    if isinstance(value, dict):
        return {k: _hide(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [_hide(v, env) for v in value]
    return value


def _destination(block: dict[str, Any], env: dict[str, str], name: str | None) -> dict[str, Any]:
    fmt = block.pop("format", "repository")
    hidden: dict[str, Any] = _hide(block, env)
    if name is not None:  # a copy: its name shows in the run's lines; the format is plain
        hidden = {"name": name, "format": fmt, **hidden}
    return hidden


def _repository_block(
    db: Connection, vault: Vault, project: str, name: str, repository: str
) -> dict[str, Any]:
    block = destination_block(db, vault, project, repository)
    if block.get("format", "repository") != "repository":
        raise UsageError(
            f"plan {project}/{name}: repository: destination {repository!r} is an archive",
            hint="a plan's repository must be a safehold repository; put archives in copies",
        )
    return block


def plan_document(
    db: Connection,
    vault: Vault,
    project: str,
    name: str,
    source: Mapping[str, Any],
    repository: str,
    copies: list[str],
    secrets: Sequence[tuple[Sequence[str | int], str]] = (),
) -> tuple[str, dict[str, str]]:
    """The configuration document that runs the plan, and the environment its
    ``${SAFEHOLD_SECRET_N}`` stand for: the destinations' strings, and the source's
    ``secrets`` (each a path in the block and its value, put at that path)."""
    env: dict[str, str] = {}
    repo = _destination(_repository_block(db, vault, project, name, repository), env, None)
    dests = [_destination(destination_block(db, vault, project, c), env, c) for c in copies]
    document: dict[str, Any] = {"version": 1, "repository": repo}
    if dests:
        document["destinations"] = dests
    block = copy.deepcopy(dict(source))
    for path, value in secrets:
        _put(block, path, _hide(value, env))
    document["sources"] = {name: block}
    return yaml.safe_dump(document, sort_keys=False, allow_unicode=True), env


def _put(block: Any, path: Sequence[str | int], value: Any) -> None:
    for step in path[:-1]:
        block = block[step]
    block[path[-1]] = value


def _leaves(
    value: Any, path: tuple[str | int, ...] = ()
) -> Iterator[tuple[tuple[str | int, ...], str]]:
    """Every string in a block, with its path."""
    if isinstance(value, str):
        yield path, value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from _leaves(v, (*path, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _leaves(v, (*path, i))


def plan_aad(project: str, name: str) -> bytes:
    """The associated data binding a plan's sealed source values to the plan."""
    return b"safehold-plan\0" + project.encode() + b"\0" + name.encode()


def _seal_source(
    vault: Vault, project: str, name: str, source: dict[str, Any], secrets: Sequence[str]
) -> dict[str, Any]:
    """The row's keys for a source block: the block with each string that holds a
    credential (as the source's kind says: a password, a URL with one) replaced by
    :data:`SEALED`, the paths of those strings, and their values sealed."""
    found = [(list(path), leaf) for path, leaf in _leaves(source)
             if any(secret and secret in leaf for secret in secrets)]  # fmt: skip
    shown = copy.deepcopy(source)
    for path, _ in found:
        _put(shown, path, SEALED)
    out: dict[str, Any] = {"source": shown, "secret_paths": [path for path, _ in found]}
    if found:
        values = json.dumps([leaf for _, leaf in found]).encode()
        sealed = vault.seal(values, aad=plan_aad(project, name))
        out["sealed_source"] = base64.b64encode(sealed).decode()
    return out


def stored_document(
    db: Connection, vault: Vault, project: str, name: str, settings: Mapping[str, Any]
) -> tuple[str, dict[str, str]]:
    """:func:`plan_document` for a plan as its row keeps it (its source's credentials
    sealed)."""
    paths = settings.get("secret_paths") or []
    values: list[str] = []
    if paths:
        sealed = base64.b64decode(settings["sealed_source"])
        values = json.loads(vault.open(sealed, aad=plan_aad(project, name)))
    return plan_document(
        db,
        vault,
        project,
        name,
        {**settings["source"], "project": project},
        settings["repository"],
        list(settings.get("copies") or []),
        list(zip(paths, values, strict=True)),
    )


def _split(project: str, name: str, block: Any) -> tuple[dict[str, Any], str, list[str]]:
    """The source block, the repository's and the copies' names; errors name the key."""
    where = f"plan {project}/{name}"
    if not isinstance(block, Mapping):
        raise UsageError(f"{where}: must be a mapping (type:, schedule:, repository:, ...)")
    source = {k: v for k, v in block.items() if k not in _PLAN_KEYS}
    repository = block.get("repository")
    if not isinstance(repository, str) or not repository:
        raise UsageError(
            f"{where}: repository: field required (the name of a destination of project {project})",
            hint=f"list them with 'safehold destinations list --project {project}'",
        )
    copies = block.get("copies") or []
    if not isinstance(copies, list) or not all(isinstance(c, str) for c in copies):
        raise UsageError(f"{where}: copies: must be a list of destination names")
    if repository in copies or len(set(copies)) != len(copies):
        raise UsageError(f"{where}: copies: a destination is named twice")
    given = source.get("project")
    if given is not None and given != project:
        raise UsageError(
            f"{where}: project: the block says {given!r}, the plan is made in {project!r}",
            hint="leave project: out of the block",
        )
    source["project"] = project
    if _mentions_secret_vars(source):
        raise UsageError(
            f"{where}: the block names a {SECRET_VAR}N variable",
            hint="those stand for destinations' credentials; a plan cannot read them",
        )
    return source, repository, copies


def _mentions_secret_vars(value: Any) -> bool:
    if isinstance(value, str):
        return bool(_SECRET_REF.search(value))
    if isinstance(value, dict):
        return any(_mentions_secret_vars(k) or _mentions_secret_vars(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_mentions_secret_vars(v) for v in value)
    return False


def _check(
    db: Connection, vault: Vault, project: str, name: str, block: Any
) -> tuple[dict[str, Any], PlanSpec, PlanSpec | None]:
    """Validate an API plan's block as the file's are: its settings row, its spec and its
    drill plan's (None: no ``drill: {schedule}``)."""
    check_name("plan", name)
    source, repository, copies = _split(project, name, block)
    for dest in (repository, *copies):
        # Held until the plan is written: a destination cannot be deleted meanwhile.
        db.execute(
            text("SELECT 1 FROM destinations WHERE project = :p AND name = :n FOR SHARE"),
            {"p": project, "n": dest},
        )
    # The source's own values are in this document only here, in memory, to validate it.
    document, env = plan_document(db, vault, project, name, source, repository, copies)
    config = parse_config(document, path=f"<plan {project}/{name}>", env={**os.environ, **env})
    spec, drill = _specs(config, project, name)
    secrets = source_secrets(config.sources[name].settings)
    secrets += plan_ping_secrets(config.sources[name].common.ping)  # ping URLs are tokens
    given = {k: v for k, v in source.items() if k != "project"}
    settings = {
        **{k: v for k, v in spec.settings().items() if k != "config"},
        **_seal_source(vault, project, name, given, secrets),
        "repository": repository,
        "copies": copies,
    }
    return settings, spec, drill


def _specs(config: Config, project: str, name: str) -> tuple[PlanSpec, PlanSpec | None]:
    """The plan's spec and its drill plan's, made by the file's own code (None: the block
    has no ``drill: {schedule}``)."""
    found = plans_from_config(config)
    spec = found.get(f"{project}/{name}")
    if spec is None:
        raise UsageError(
            f"plan {project}/{name}: sources.{name}.schedule: field required (a plan made "
            "through the service runs on a schedule)",
            hint='add e.g. schedule: "@daily"',
        )
    return spec, found.get(f"{project}/{drill_plan_name(name)}")


def _write_drill(db: Connection, project: str, name: str, drill: PlanSpec | None) -> None:
    """Make the row of plan ``name``'s drill plan agree with its block: written or changed
    when the block has a drill schedule (its slots and runs stay), deleted when not."""
    if drill is None:
        db.execute(
            text(
                "DELETE FROM plans WHERE project = :p AND name = :n AND origin = 'api' "
                "AND settings->>'drill_of' = :of"
            ),
            {"p": project, "n": drill_plan_name(name), "of": name},
        )
        return
    settings = {k: v for k, v in drill.settings().items() if k != "config"}
    row = db.execute(
        text(
            "INSERT INTO plans (project, name, origin, source, schedule, timezone, settings) "
            "VALUES (:p, :n, 'api', NULL, :s, :tz, CAST(:st AS jsonb)) "
            "ON CONFLICT (project, name) DO UPDATE SET schedule = excluded.schedule, "
            "timezone = excluded.timezone, settings = excluded.settings, updated_at = now() "
            "WHERE plans.origin = 'api' AND plans.settings->>'drill_of' = :of RETURNING id"
        ),
        {**_row_params(project, drill.name, drill, {**settings, DRILL_OF: name}), "of": name},
    ).one_or_none()
    if row is None:  # another plan has the name (one of the file's, or an older API plan)
        raise Conflict(
            f"project {project} already has a plan {drill.name!r}, the name of plan "
            f"{name}'s drill plan",
            hint=f"rename or delete plan {drill.name}, or leave drill: schedule out",
        )


# --- create, change, delete, show -------------------------------------------------------


def create_plan(
    engine: Engine, vault: Vault, project: str, name: str, block: Mapping[str, Any]
) -> PlanView:
    """Make the API plan ``name`` in ``project``; refused if the name is taken (by a plan
    of either origin)."""
    check_name("plan", name)
    if name.endswith(DRILL_SUFFIX):
        raise UsageError(
            f"plan {project}/{name}: a name ending in {DRILL_SUFFIX} is a drill plan's",
            hint=f"choose another name; a plan's drill: {{schedule: ...}} makes its drill "
            f"plan, NAME{DRILL_SUFFIX}",
        )
    with engine.begin() as db:
        settings, spec, drill = _check(db, vault, project, name, block)
        row = db.execute(
            text(
                "INSERT INTO plans (project, name, origin, source, schedule, timezone, settings) "
                "VALUES (:p, :n, 'api', NULL, :s, :tz, CAST(:st AS jsonb)) "
                "ON CONFLICT (project, name) DO NOTHING RETURNING id"
            ),
            _row_params(project, name, spec, settings),
        ).one_or_none()
        if row is None:
            origin = _origin(db, project, name)
            raise Conflict(
                f"project {project} already has a plan {name!r}"
                + (" (from the configuration file)" if origin == "file" else ""),
                hint="choose another name" + ("" if origin == "file" else ", or update it"),
            )
        _write_drill(db, project, name, drill)
    return get_plan(engine, project, name)


def update_plan(
    engine: Engine, vault: Vault, project: str, name: str, block: Mapping[str, Any]
) -> PlanView:
    """Replace the API plan's block with ``block``. Its slots, runs and restore points
    stay; a changed schedule applies from the next tick. Its drill plan follows the
    block's ``drill:`` (made, changed, or deleted with its ledger)."""
    with engine.begin() as db:
        _must_be_api(db, project, name, "changed")
        block = _keep_sealed(db, vault, project, name, block)
        settings, spec, drill = _check(db, vault, project, name, block)
        db.execute(
            text(
                "UPDATE plans SET schedule = :s, timezone = :tz, settings = CAST(:st AS jsonb), "
                "updated_at = now() WHERE project = :p AND name = :n AND origin = 'api'"
            ),
            _row_params(project, name, spec, settings),
        )
        _write_drill(db, project, name, drill)
    return get_plan(engine, project, name)


def _keep_sealed(
    db: Connection, vault: Vault, project: str, name: str, block: Mapping[str, Any]
) -> Mapping[str, Any]:
    """``block`` with each :data:`SEALED` left where the stored block had a sealed value
    put back to that value: a client that cannot read a credential can send the block it
    was shown, changed elsewhere, and keep it."""
    settings = db.execute(
        text("SELECT settings FROM plans WHERE project = :p AND name = :n"),
        {"p": project, "n": name},
    ).scalar_one()
    paths = settings.get("secret_paths") or []
    if not paths or not isinstance(block, Mapping):
        return block
    sealed = base64.b64decode(settings["sealed_source"])
    values = json.loads(vault.open(sealed, aad=plan_aad(project, name)))
    out = copy.deepcopy(dict(block))
    for path, value in zip(paths, values, strict=True):
        try:
            if _get(out, path) == SEALED:
                _put(out, path, value)
        except (KeyError, IndexError, TypeError):
            continue  # the new block has no value there
    return out


def _get(block: Any, path: Sequence[str | int]) -> Any:
    for step in path:
        block = block[step]
    return block


def delete_plan(engine: Engine, project: str, name: str) -> None:
    """Delete the API plan with its ledger, runs and restore points, and its drill plan's
    (the snapshots stay in the repository)."""
    with engine.begin() as db:
        _must_be_api(db, project, name, "deleted")
        db.execute(
            text("DELETE FROM plans WHERE project = :p AND name = :n AND origin = 'api'"),
            {"p": project, "n": name},
        )
        _write_drill(db, project, name, None)


def get_plan(engine: Engine, project: str, name: str) -> PlanView:
    """Plan ``name`` of ``project``, of either origin."""
    with engine.connect() as db:
        row = db.execute(
            text(f"SELECT {_VIEW_COLUMNS} FROM plans WHERE project = :p AND name = :n"),
            {"p": project, "n": name},
        ).one_or_none()
    if row is None:
        raise _not_found(project, name)
    return _view(row)


def list_plans(engine: Engine, project: str) -> list[PlanView]:
    """The plans of ``project``, of either origin, by name."""
    with engine.connect() as db:
        rows = db.execute(
            text(f"SELECT {_VIEW_COLUMNS} FROM plans WHERE project = :p ORDER BY name"),
            {"p": project},
        ).all()
    return [_view(row) for row in rows]


_VIEW_COLUMNS = "project, name, origin, schedule, timezone, paused, settings"


def _view(row: Any) -> PlanView:
    api = row.origin == "api"
    settings = row.settings or {}
    return PlanView(
        project=row.project,
        name=row.name,
        origin=row.origin,
        schedule=row.schedule,
        timezone=row.timezone,
        paused=row.paused,
        repository=settings.get("repository") if api else None,
        copies=list(settings.get("copies") or []) if api else [],
        source=settings.get("source") if api else None,
    )


def _row_params(project: str, name: str, spec: PlanSpec, settings: dict[str, Any]) -> Any:
    return {
        "p": project,
        "n": name,
        "s": spec.schedule.expression,
        "tz": spec.schedule.timezone,
        "st": json.dumps(settings),
    }


def _origin(db: Connection, project: str, name: str) -> str | None:
    found: str | None = db.execute(
        text("SELECT origin FROM plans WHERE project = :p AND name = :n FOR UPDATE"),
        {"p": project, "n": name},
    ).scalar()
    return found


def _must_be_api(db: Connection, project: str, name: str, what: str) -> None:
    origin = _origin(db, project, name)
    if origin is None:
        raise _not_found(project, name)
    drill_of: str | None = db.execute(
        text("SELECT settings->>'drill_of' FROM plans WHERE project = :p AND name = :n"),
        {"p": project, "n": name},
    ).scalar()
    if drill_of is not None:
        raise Conflict(
            f"plan {project}/{name} is the drill plan of plan {drill_of} and cannot be "
            f"{what} on its own",
            hint=f"change plan {drill_of}'s drill: block (without it, its drill plan goes)",
        )
    if origin != "api":
        raise Conflict(
            f"plan {project}/{name} is declared in the configuration file and cannot be "
            f"{what} through the service",
            hint="change the file and reload the service (safehold serve --reload)",
        )


def _not_found(project: str, name: str) -> NotFound:
    return NotFound(
        f"project {project} has no plan {name!r}",
        hint=f"list them with 'safehold plans --project {project}'",
    )


# --- running them ---------------------------------------------------------------------


class RunEnv:
    """A plan's secret environment, made when a run starts: the destinations are opened
    then, so a changed password is used by the next run and nothing is kept between."""

    def __init__(
        self, engine: Engine, vault: Vault, project: str, name: str, settings: dict[str, Any]
    ) -> None:
        self.engine = engine
        self.vault = vault
        self.project = project
        self.name = name
        self.settings = settings

    def __repr__(self) -> str:
        return f"RunEnv({self.project}/{self.name})"

    def __call__(self) -> dict[str, str]:
        """The ``SAFEHOLD_SECRET_N`` variables of the plan's document."""
        with self.engine.connect() as db:
            _, env = stored_document(db, self.vault, self.project, self.name, self.settings)
        return env


def _write_private(path: Path, content: str) -> None:
    """``content`` at ``path``, mode 0600, replaced atomically (a reader sees the old file
    or the new one, never a part)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.new")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(content)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


# What a reading of the API plans keeps for the next: per plan, what its specs were made
# from (its row's and its destinations' updated_at) and the specs (its own, its drill's).
PlanCache = dict[str, tuple[tuple[Any, ...], tuple[PlanSpec, ...]]]


def plans_from_catalog(
    engine: Engine, vault: Vault, state_dir: Path, *, cache: PlanCache | None = None
) -> dict[str, PlanSpec]:
    """The API plans as the workers run them, keyed ``project/name``: each with its
    generated configuration file (written under ``STATE_DIR/plans``) and its secret
    environment, and beside it its drill plan (``NAME.drill``) if its block has a drill
    schedule, with the same file and environment. A plan that no longer validates (a
    destination gone, a script removed) is left out and logged; the others run.

    With ``cache`` (kept by the caller between calls), a plan whose row and destinations
    have not changed since is not built again: a change to one plan of thousands costs
    one plan's work."""
    cache = {} if cache is None else cache
    root = state_dir / "plans"
    out: dict[str, PlanSpec] = {}
    with engine.connect() as db:
        rows = db.execute(
            text(f"SELECT project, name, settings, updated_at FROM plans WHERE {_OWN}")
        ).all()
        changed = {
            (r.project, r.name): r.updated_at
            for r in db.execute(text("SELECT project, name, updated_at FROM destinations"))
        }
        for row in rows:
            key = f"{row.project}/{row.name}"
            path = root / row.project / f"{row.name}.yaml"
            settings = dict(row.settings)
            dests = [settings.get("repository"), *(settings.get("copies") or [])]
            stamp = (row.updated_at, *(changed.get((row.project, d)) for d in dests))
            kept = cache.get(key)
            if kept is not None and kept[0] == stamp and path.exists():
                out.update((spec.key, spec) for spec in kept[1])
                continue
            try:
                specs = _runnable(db, engine, vault, path, row.project, row.name, settings)
            except SafeholdError as exc:
                log.error("plan %s: %s; it does not run until fixed", key, exc.message)
                continue
            cache[key] = (stamp, specs)
            out.update((spec.key, spec) for spec in specs)
    for key in set(cache) - set(out):
        del cache[key]
    _remove_stale(root, set(out))
    return out


def _runnable(
    db: Connection,
    engine: Engine,
    vault: Vault,
    path: Path,
    project: str,
    name: str,
    settings: dict[str, Any],
) -> tuple[PlanSpec, ...]:
    """One API plan's spec and its drill plan's (if any), its generated file written."""
    document, env = stored_document(db, vault, project, name, settings)
    _write_private(path, document)
    config = parse_config(document, path=str(path), env={**os.environ, **env})
    spec, drill = _specs(config, project, name)
    # The limits' and locks' names: locations without credentials, so that the spec
    # holds no secret between runs. The drill's child reads the same file with the same
    # environment (the plan's: its row's settings open the sealed values).
    places = [config.repository, *config.destinations]
    run_env = RunEnv(engine, vault, project, name, settings)
    limits = tuple(
        (redact(p.location), p.max_concurrent_jobs)
        for p in places
        if p is not None and p.max_concurrent_jobs is not None
    )
    repository = redact(places[0].location) if places[0] else ""
    return tuple(
        replace(s, env=run_env, origin="api", repository=repository, limits=limits)
        for s in (spec, drill)
        if s is not None
    )


def listed_plans(engine: Engine) -> dict[str, PlanSpec]:
    """The API plans (and their drill plans) as listings and commands that queue a run
    see them: their schedule, pause, kind and lock, from their rows alone (no key needed,
    no file written). Not for running them: that is :func:`plans_from_catalog`."""
    with engine.connect() as db:
        rows = db.execute(
            text("SELECT project, name, schedule, timezone, settings FROM plans "
                 "WHERE origin = 'api'")
        ).all()  # fmt: skip
    out = {}
    for row in rows:
        key = f"{row.project}/{row.name}"
        settings = row.settings or {}
        out[key] = PlanSpec(
            project=row.project,
            name=row.name,
            config_path="",
            schedule=parse_schedule(row.schedule, key=key, timezone=row.timezone),
            paused=bool(settings.get("paused")),
            retries=int(settings.get("retries") or 0),
            retention=bool(settings.get("retention")),
            agent=settings.get("agent"),
            kind=RunKind(settings.get("kind") or RunKind.BACKUP.value),
            origin="api",
        )
    return out


def drill_rows(engine: Engine, drills: Sequence[PlanSpec]) -> dict[str, int]:
    """Write the rows of API plans' drill plans that have none (a plan made before its
    drill got a plan of its own); their ids, keyed ``project/name``. A name taken by
    another plan is logged and left out: that drill does not run."""
    ids: dict[str, int] = {}
    for drill in drills:
        parent = drill.name.removesuffix(DRILL_SUFFIX)
        try:
            with engine.begin() as db:
                _write_drill(db, drill.project, parent, drill)
                ids[drill.key] = db.execute(
                    text("SELECT id FROM plans WHERE project = :p AND name = :n"),
                    {"p": drill.project, "n": drill.name},
                ).scalar_one()
        except Conflict as exc:
            log.error("plan %s: %s; it does not run (%s)", drill.key, exc.message, exc.hint)
    return ids


def _remove_stale(root: Path, keep: set[str]) -> None:
    """Delete the generated files of plans that are gone."""
    for path in _generated(root):
        key = f"{path.parent.name}/{path.stem}"
        if key not in keep:
            with contextlib.suppress(OSError):
                path.unlink()


def _generated(root: Path) -> Iterator[Path]:
    if not root.is_dir():
        return
    for project in root.iterdir():
        if project.is_dir():
            yield from project.glob("*.yaml")
