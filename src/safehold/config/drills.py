"""A source's ``drill:`` block: when and how a restore drill proves its backups.

A drill restores a snapshot through the source's own restore path and hooks into a
sandbox (a scratch server or a temporary file or folder, made and removed by the drill),
runs a check against the copy and records the restore time (RTO) against ``rto_target``::

    drill:
      schedule: "0 4 * * 0"        # safehold serve runs it (none: only `safehold drill`)
      timezone: Europe/Berlin
      target: rotating             # latest | rotating (walks back through older points)
      rto_target: 15m
      timeout: 2h                  # the whole drill, sandbox start and check included
      check:                       # left out: the kind's default check
        query: "SELECT count(*) FROM orders"
        expect: "1200"
        database: shop
      on_failure: {finish_chain: true}

``check`` takes one form: ``{default: {...}}`` tunes the kind's own check (``tables``:
how many of the largest tables are counted, ``sample_keys``: how many Redis keys are
read); ``{query, expect, database}`` (PostgreSQL and MariaDB) runs the query in the
restored database and compares its output, rows on lines and fields by tabs, with
``expect``; ``{command, timeout}`` runs the user's script with the sandbox's connection
details in its environment (``SAFEHOLD_DRILL_*``, docs/drills.md) and passes when it
exits 0.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from safehold.config.plans import Seconds, TimeZone, check_schedule

__all__ = [
    "DRILL_KINDS",
    "QUERY_KINDS",
    "CheckConfig",
    "DrillConfig",
    "OnFailureConfig",
    "check_drill_kind",
]

# The source kinds a drill can make a sandbox for.
DRILL_KINDS = ("postgres", "mysql", "redis", "sqlite", "directory")
QUERY_KINDS = ("postgres", "mysql")  # the kinds a check's ``query`` runs against


class DefaultCheck(BaseModel):
    """The kind's own check, tuned."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    tables: int = Field(default=5, ge=1, le=1000)  # PostgreSQL/MariaDB: largest tables counted
    sample_keys: int = Field(default=20, ge=0, le=10000)  # Redis: keys read back
    min_rows: int = Field(default=0, ge=0)  # PostgreSQL/MariaDB: fewer rows in all fails


class CheckConfig(BaseModel):
    """``check:``: the kind's default (tuned by ``default``), a query and its expected
    output, or a command."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    default: DefaultCheck | None = None
    query: str | None = None
    expect: str | None = None
    database: str | None = None  # the restored database the query runs in
    command: str | None = None
    timeout: Seconds = 600.0  # the query's or command's

    @field_validator("expect", mode="before")
    @classmethod
    def _expect_text(cls, value: object) -> object:
        # ``expect: 42`` in YAML is an int: compared as the text the query prints.
        if isinstance(value, int | float) and not isinstance(value, bool):
            return str(value)
        return value

    @field_validator("command")
    @classmethod
    def _command_runs(cls, run: str | None, info: ValidationInfo) -> str | None:
        if run is None:
            return None
        # models.py imports this module for SourceCommon.drill: imported here, not above.
        from safehold.config.models import _check_executable

        return _check_executable(run, (info.context or {}).get("base_dir"))

    @model_validator(mode="after")
    def _one_form(self) -> CheckConfig:
        forms = [
            name
            for name, given in (
                ("default", self.default is not None),
                ("query", self.query is not None),
                ("command", self.command is not None),
            )
            if given
        ]
        if len(forms) > 1:
            raise ValueError(f"give one of default, query or command, not {' and '.join(forms)}")
        if self.query is not None and self.expect is None:
            raise ValueError("a query needs expect: the output that proves the restore")
        if self.expect is not None and self.query is None:
            raise ValueError("expect needs a query to compare with")
        if self.database is not None and self.query is None:
            raise ValueError("database names where the query runs: give a query too")
        if self.query is not None and not self.query.strip():
            raise ValueError("the query is empty")
        return self

    @property
    def form(self) -> Literal["default", "query", "command"]:
        """Which form of check this is."""
        if self.query is not None:
            return "query"
        if self.command is not None:
            return "command"
        return "default"


class OnFailureConfig(BaseModel):
    """What a failed drill does beyond recording it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # Finish the source's current chain, so that its next backup is a full one (a chain
    # whose restore failed is not one to build on).
    finish_chain: bool = False


class DrillConfig(BaseModel):
    """A source's ``drill:`` block (see the module docstring)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    timezone: TimeZone = "UTC"  # before schedule: validation reads the fields in this order
    schedule: str | None = None
    target: Literal["latest", "rotating"] = "latest"
    rto_target: Seconds | None = None
    timeout: Seconds | None = None
    paused: bool = False
    check: CheckConfig = Field(default_factory=CheckConfig)
    on_failure: OnFailureConfig = Field(default_factory=OnFailureConfig)

    @field_validator("schedule")
    @classmethod
    def _schedule_parses(cls, schedule: str | None, info: ValidationInfo) -> str | None:
        if schedule is not None:
            check_schedule(schedule, info.data.get("timezone", "UTC"))
        return schedule

    @field_validator("check", mode="before")
    @classmethod
    def _check_shorthand(cls, value: Any) -> Any:
        # ``check: default`` and ``check: null``: the kind's own check.
        if value is None or value == "default":
            return {}
        return value


def check_drill_kind(kind: str, drill: DrillConfig) -> None:
    """Raise ``ValueError`` when a ``drill:`` does not fit its source's kind."""
    if kind not in DRILL_KINDS:
        raise ValueError(
            f"a drill needs a sandbox for the source's kind, and there is none for {kind!r} "
            f"(drills restore {', '.join(DRILL_KINDS)}); remove drill: from this source"
        )
    if drill.check.form == "query" and kind not in QUERY_KINDS:
        raise ValueError(
            f"drill.check.query runs SQL, which a {kind} source has not; use "
            "check: {command: ...} or the default check"
        )
