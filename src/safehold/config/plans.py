"""The keys that make a source a plan for ``safehold serve``, and the ``service:`` block.

A source block with a ``schedule:`` (service-backup's ``cron_schedule``) is a **plan**: the
service runs it on that schedule. Its other scheduling keys (in
:class:`~safehold.config.models.SourceCommon`) say what
happens around a slot: paused, overlapping runs, a minimum interval between runs
(staffeln's ``backup_min_interval``), catching up after a downtime, retries, and the
retention applied after each successful run (``forget``'s rules, or the OSB backup
manager's ``DAYS``/``HOURS``/``FILES``). A source without a schedule is still run by hand
(``safehold backup --config FILE --source NAME``) and ignores these keys.

The ``repository:`` block's ``prune:`` (:class:`PruneConfig`) gives the repository a
prune of its own schedule, which the service runs apart from the backups.

The ``repository:`` block's ``verify:`` (:class:`VerifyConfig`) re-reads the repository's
packs in slices on a schedule of its own, so that every pack is read again within
``period`` (docs/verification.md).

The top-level ``service:`` block (:class:`ServiceConfig`) says where the service keeps its
state and which database it uses.
"""

from __future__ import annotations

import re
from typing import Annotated
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    ValidationInfo,
    field_validator,
    model_validator,
)

from safehold.errors import UsageError
from safehold.policy import Duration, RetentionPolicy, from_osb, parse_duration
from safehold.policy.retention import keep_tag_sets
from safehold.policy.schedule import parse_schedule

__all__ = [
    "AGENT_NAME",
    "DEFAULT_PROJECT",
    "PruneConfig",
    "RetentionConfig",
    "Seconds",
    "ServiceConfig",
    "TimeZone",
    "VerifyConfig",
    "check_project",
    "check_schedule",
    "check_timezone",
    "parse_seconds",
]

DEFAULT_PROJECT = "default"
_PROJECT = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
AGENT_NAME = _PROJECT  # an agent's name, as ``safehold agent --name`` takes it

_SECONDS_PART = re.compile(r"([0-9]+(?:\.[0-9]+)?)(h|ms|m|s)")
_SECONDS_FULL = re.compile(r"(?:[0-9]+(?:\.[0-9]+)?(?:h|ms|m|s))+")
_UNIT = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}


def parse_seconds(value: object) -> object:
    """``90``, ``"90s"``, ``"5m"``, ``"1h30m"``, ``"500ms"`` -> seconds (a float).

    Anything else is passed on for pydantic to reject with its usual message.
    """
    if isinstance(value, str):
        text = value.strip().replace(" ", "")
        if _SECONDS_FULL.fullmatch(text):
            return sum(float(n) * _UNIT[u] for n, u in _SECONDS_PART.findall(text))
        try:
            return float(text)
        except ValueError:
            raise ValueError(
                f"{value!r} is not a duration (write seconds, or e.g. 30s, 5m, 1h30m)"
            ) from None
    return value


# A duration in seconds, written as a number or with units (90, "90s", "5m", "1h30m").
Seconds = Annotated[float, BeforeValidator(parse_seconds), Field(gt=0)]


def check_timezone(zone: str) -> str:
    """An IANA time zone name this machine knows."""
    try:
        ZoneInfo(zone)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(
            f"unknown time zone {zone!r} (use an IANA name such as UTC or Europe/Berlin)"
        ) from None
    return zone


# A time zone field: an IANA name this machine knows (checked where it is declared).
TimeZone = Annotated[str, AfterValidator(check_timezone)]


class RetentionConfig(BaseModel):
    """A plan's retention: ``forget``'s keep rules, or OSB's ``type`` and ``period``.

    ``{keep_daily: 7, keep_weekly: 4}`` keeps as ``safehold forget --keep-daily 7
    --keep-weekly 4`` does; ``{type: DAYS, period: 30}`` keeps 30 days (OSB's forms:
    ``DAYS``, ``HOURS``, ``FILES``). Durations are written as ``forget`` takes them
    (``30d``, ``1y6m``, ``12h``); ``keep_tags`` holds ``TAG[,TAG]`` sets.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    keep_last: int | None = None
    keep_hourly: int | None = None
    keep_daily: int | None = None
    keep_weekly: int | None = None
    keep_monthly: int | None = None
    keep_yearly: int | None = None
    keep_within: str | None = None
    keep_within_hourly: str | None = None
    keep_within_daily: str | None = None
    keep_within_weekly: str | None = None
    keep_within_monthly: str | None = None
    keep_within_yearly: str | None = None
    keep_tags: list[str] = Field(default_factory=list)
    type: str | None = None  # OSB: FILES, DAYS or HOURS
    period: int | None = None

    def policy(self) -> RetentionPolicy:
        """The rules as :func:`safehold.policy.apply_retention` takes them."""
        if self.type is not None or self.period is not None:
            return from_osb(self.type or "", self.period if self.period is not None else 0)

        def within(unit: str) -> Duration | None:
            text = getattr(self, f"keep_within_{unit}" if unit else "keep_within")
            return parse_duration(text) if text is not None else None

        return RetentionPolicy(
            keep_last=self.keep_last,
            keep_hourly=self.keep_hourly,
            keep_daily=self.keep_daily,
            keep_weekly=self.keep_weekly,
            keep_monthly=self.keep_monthly,
            keep_yearly=self.keep_yearly,
            keep_within=within(""),
            keep_within_hourly=within("hourly"),
            keep_within_daily=within("daily"),
            keep_within_weekly=within("weekly"),
            keep_within_monthly=within("monthly"),
            keep_within_yearly=within("yearly"),
            keep_tags=keep_tag_sets(self.keep_tags),
        )

    @model_validator(mode="after")
    def _valid(self) -> RetentionConfig:
        osb = self.type is not None or self.period is not None
        keeps = [n for n in type(self).model_fields if n.startswith("keep_") and getattr(self, n)]
        if osb and keeps:
            raise ValueError("give keep_* rules or OSB's type and period, not both")
        if not osb and not keeps:
            # An empty policy would keep nothing at all: never what a plan means.
            raise ValueError("give at least one keep_* rule, or type and period (DAYS 30)")
        try:
            self.policy()
        except UsageError as exc:
            raise ValueError(str(exc).splitlines()[0]) from None
        return self


class PruneConfig(BaseModel):
    """The ``repository:`` block's ``prune:``: when ``safehold serve`` prunes it.

    ``{schedule: "@weekly"}`` runs ``safehold prune --config FILE`` weekly, as a job of
    its own that backups never wait for (the repository lets them run during a prune).
    ``max_unused`` is ``prune --max-unused``: a percentage (``10%``) or ``unlimited``.
    ``timeout``, ``retries`` and ``retry_delay`` mean what they mean in a source's block.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    timezone: TimeZone = "UTC"  # before schedule: validation reads the fields in this order
    schedule: str
    max_unused: str | None = None
    paused: bool = False
    timeout: Seconds | None = None  # the prune's process is stopped past it, as a run's
    retries: int = Field(default=0, ge=0, le=20)
    retry_delay: Seconds = 60.0

    @field_validator("schedule")
    @classmethod
    def _schedule_parses(cls, schedule: str, info: ValidationInfo) -> str:
        check_schedule(schedule, info.data.get("timezone", "UTC"))
        return schedule

    @field_validator("max_unused", mode="before")
    @classmethod
    def _percentage(cls, value: object) -> object:
        if isinstance(value, int | float) and not isinstance(value, bool):
            value = f"{value:g}%"
        if isinstance(value, str) and value.strip().lower() != "unlimited":
            try:
                number = float(value.strip().removesuffix("%"))
            except ValueError:
                raise ValueError(f"{value!r} is not a percentage (write e.g. 10%)") from None
            if not 0 <= number <= 100:
                raise ValueError(f"{value!r} is not between 0% and 100%")
        return value


class VerifyConfig(BaseModel):
    """The ``repository:`` block's ``verify:``: re-read every pack within ``period``.

    ``{period: 30d, schedule: "@daily"}`` makes ``safehold serve`` run a slice of
    ``check --read-data`` daily, each reading the packs read least recently (never-read
    first), about ``stored bytes x interval / period`` of them (with :attr:`margin`), so
    that every pack is read again at least once in 30 days. ``period`` is written as
    ``forget``'s durations are (``30d``, ``4w``, ``1m``, ``12h``): verification periods
    are days and weeks, which :data:`Seconds` does not write. ``timeout``, ``retries`` and
    ``retry_delay`` mean what they mean in a source's block.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    timezone: TimeZone = "UTC"  # before schedule: validation reads the fields in this order
    period: str = "30d"
    schedule: str = "@daily"
    # A slice reads this much more than its exact share (1.25: a quarter more), so that
    # growth between two slices and uneven pack sizes do not push a pack past the period.
    margin: float = Field(default=1.25, ge=1.0, le=10.0)
    paused: bool = False
    timeout: Seconds | None = None
    retries: int = Field(default=0, ge=0, le=20)
    retry_delay: Seconds = 60.0

    @field_validator("period")
    @classmethod
    def _period_parses(cls, period: str) -> str:
        try:
            duration = parse_duration(period)
        except UsageError as exc:
            raise ValueError(f"{exc.args[0]} ({exc.hint})" if exc.hint else exc.args[0]) from None
        if duration.is_zero():
            raise ValueError("the period must be longer than zero (for example 30d)")
        return period

    @field_validator("schedule")
    @classmethod
    def _schedule_parses(cls, schedule: str, info: ValidationInfo) -> str:
        check_schedule(schedule, info.data.get("timezone", "UTC"))
        return schedule

    def period_duration(self) -> Duration:
        """``period`` as :func:`safehold.policy.parse_duration` reads it."""
        return parse_duration(self.period)


class ServiceConfig(BaseModel):
    """The ``service:`` block: where ``safehold serve`` keeps its state and catalog."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # Default: /var/lib/safehold for root, else ~/.local/share/safehold.
    state_dir: str | None = None
    # A shared PostgreSQL for several processes or machines; none = a private cluster.
    database: SecretStr | None = None
    workers: int | None = Field(default=None, ge=1, le=256)
    # Accepted for the API issue; not used yet.
    listen: str | None = None
    # The service's secret key, which seals the destinations' credentials in the catalog
    # (default: $SAFEHOLD_SERVICE_KEY_FILE, else STATE_DIR/service.key). Every machine
    # sharing the database needs a copy of the same file.
    key_file: str | None = None


def check_schedule(expression: str, timezone: str) -> None:
    """Raise ``ValueError`` with the schedule's problem (for pydantic to place it)."""
    try:
        ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError):
        timezone = "UTC"  # the time zone's own validator reports it
    try:
        parse_schedule(expression, key="check", timezone=timezone)
    except UsageError as exc:
        raise ValueError(f"{exc.args[0]} ({exc.hint})" if exc.hint else exc.args[0]) from None


def check_project(name: str) -> str:
    """A project name: 1-64 letters, digits, '.', '_' or '-'."""
    if not _PROJECT.fullmatch(name):
        raise ValueError("a project name is 1-64 letters, digits, '.', '_' or '-'")
    return name
