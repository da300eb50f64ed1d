"""The ``reports:`` block: each project's periodic HTML report, and where it goes.

::

    reports:
      period: 7d                 # 1d, 7d, 1w, 12h ...: periods end on these boundaries
      folder: /var/lib/safehold/reports   # default: STATE_DIR/reports
      smtp: {host: mail.example.com, port: 587, starttls: true,
             username: safehold, password: "${SMTP_PASSWORD}", sender: safehold@example.com}
      projects:
        default: {email: [ops@example.com]}

A project with plans but no receivers still gets its report: written to the folder and
summed up in one log line. See docs/reports.md.
"""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, SecretStr

__all__ = ["ProjectReceivers", "ReportsConfig", "SmtpConfig", "parse_period"]

_PERIOD = re.compile(r"([0-9]+)([hdw])")
_UNIT = {"h": 3600, "d": 86400, "w": 7 * 86400}
MIN_PERIOD = 3600  # a report an hour is already more than anyone reads


def parse_period(value: object) -> object:
    """``"7d"``, ``"1w"``, ``"12h"`` (or seconds) as whole seconds; anything else is left
    for pydantic to reject."""
    if isinstance(value, str):
        found = _PERIOD.fullmatch(value.strip())
        if found is None:
            raise ValueError(f"{value!r} is not a report period (write e.g. 1d, 7d, 1w, 12h)")
        return int(found.group(1)) * _UNIT[found.group(2)]
    return value


class SmtpConfig(BaseModel):
    """The SMTP server reports are sent through (until alerts' e-mail channel is shared)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    host: str
    port: int = Field(default=25, ge=1, le=65535)
    starttls: bool = False
    username: str | None = None
    password: SecretStr | None = None  # use ${VAR}: a literal password in a file is weak
    sender: str = "safehold@localhost"
    timeout: float = Field(default=30.0, gt=0)
    # The CA that signed the server's certificate, for a relay with a private CA
    # (default: the system's CAs). The certificate is always verified.
    ca_file: str | None = None


class ProjectReceivers(BaseModel):
    """Who gets one project's report."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    email: list[str] = Field(default_factory=list)


class ReportsConfig(BaseModel):
    """The ``reports:`` block."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    period: Annotated[int, BeforeValidator(parse_period), Field(ge=MIN_PERIOD)] = 7 * 86400
    folder: str | None = None  # where the HTML files go (default: STATE_DIR/reports)
    smtp: SmtpConfig | None = None
    projects: dict[str, ProjectReceivers] = Field(default_factory=dict)
    # Report the projects not listed under projects: too (to the log); off: listed only.
    all_projects: bool = True
