"""The ``alerts:`` block: who is told, through which channels; and a source's ``ping:``.

```yaml
alerts:
  evaluate_every: 60s        # how often the service looks for new and cleared incidents
  receivers:
    ops:
      projects: [shop]       # default: every project
      channels:
        - type: email
          host: smtp.example.org
          username: alerts
          password: ${SMTP_PASSWORD}
          from: safehold@example.org
          to: [ops@example.org]
        - type: webhook
          url: https://hooks.example.org/safehold
          secret: ${WEBHOOK_SECRET}
        - type: apprise
          url: ntfy://ntfy.sh/${NTFY_TOPIC}
```

Channels are a list of mappings with a ``type``; unknown keys are errors, so a typo
never silently drops an alert. Passwords, secrets and URLs (which carry tokens) are
``SecretStr``: never shown in ``repr``, errors or logs (:func:`alerts_secrets` lists them
for masking).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

from safehold.config.plans import Seconds, check_project

__all__ = [
    "AlertsConfig",
    "AppriseConfig",
    "ChannelConfig",
    "EmailConfig",
    "PingConfig",
    "ReceiverConfig",
    "WebhookConfig",
    "alerts_secrets",
    "plan_ping_secrets",
]

_ADDRESS = re.compile(r"[^@\s<>]+@[^@\s<>]+")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def _http_url(value: SecretStr | None) -> SecretStr | None:
    """An http(s) URL with a host; the message never repeats the URL (it may be a token)."""
    if value is None:
        return None
    try:
        parts = urlsplit(value.get_secret_value())
    except ValueError:
        raise ValueError("not a URL (it is not shown: it may hold a token)") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("must be an http:// or https:// URL with a host")
    return value


class _Channel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    name: str | None = None  # how logs and `alerts test` call it (default: TYPE-N)


class EmailConfig(_Channel):
    """E-mail through an SMTP server."""

    type: Literal["email"]
    host: str
    port: int = Field(default=587, ge=1, le=65535)
    # starttls (default): upgrade, refusing a server that cannot; ssl: port 465; none:
    # clear text, for a relay on this machine.
    tls: Literal["starttls", "ssl", "none"] = "starttls"
    username: str | None = None
    password: SecretStr | None = None
    sender: str = Field(alias="from")
    to: list[str] = Field(min_length=1)
    ca_file: str | None = None
    timeout: Seconds = 30.0

    @field_validator("sender")
    @classmethod
    def _sender(cls, value: str) -> str:
        if not _ADDRESS.search(value):
            raise ValueError(f"not an e-mail address: {value!r}")
        return value

    @field_validator("to")
    @classmethod
    def _addresses(cls, value: list[str]) -> list[str]:
        for address in value:
            if not _ADDRESS.fullmatch(address):
                raise ValueError(f"not an e-mail address: {address!r}")
        return value

    def transport(self) -> dict[str, Any]:
        """The arguments of :class:`safehold.notify.EmailChannel` (the password revealed:
        for the channel only, never for a log)."""
        return {
            "host": self.host, "port": self.port, "tls": self.tls, "username": self.username,
            "password": self.password.get_secret_value() if self.password else None,
            "sender": self.sender, "to": tuple(self.to), "ca_file": self.ca_file,
            "timeout": self.timeout,
        }  # fmt: skip


class WebhookConfig(_Channel):
    """A JSON POST, signed with ``secret`` (HMAC-SHA256; docs/alerts.md)."""

    type: Literal["webhook"]
    url: SecretStr
    secret: SecretStr | None = None
    timeout: Seconds = 10.0

    _url = field_validator("url")(_http_url)

    def transport(self) -> dict[str, Any]:
        """The arguments of :class:`safehold.notify.WebhookChannel` (secrets revealed)."""
        return {
            "url": self.url.get_secret_value(),
            "secret": self.secret.get_secret_value() if self.secret else None,
            "timeout": self.timeout,
        }


class AppriseConfig(_Channel):
    """Any Apprise URL (slack://, ntfy://, msteams://, tgram://, json://, mailto://...)."""

    type: Literal["apprise"]
    url: SecretStr

    @field_validator("url")
    @classmethod
    def _understood(cls, value: SecretStr) -> SecretStr:
        import apprise

        url = value.get_secret_value()
        if "://" not in url:
            raise ValueError("must be an Apprise URL, SCHEME://... (it is not shown)")
        import logging

        logging.getLogger("apprise").setLevel(logging.CRITICAL + 1)  # it logs the URL
        if apprise.Apprise.instantiate(url) is None:
            scheme = url.split("://", 1)[0]
            raise ValueError(
                f"Apprise does not understand this {scheme}:// URL (the URL is not shown: "
                "see https://github.com/caronc/apprise/wiki for its forms)"
            )
        return value

    def transport(self) -> dict[str, Any]:
        """The arguments of :class:`safehold.notify.AppriseChannel` (the URL revealed)."""
        return {"url": self.url.get_secret_value()}


ChannelConfig = Annotated[EmailConfig | WebhookConfig | AppriseConfig, Field(discriminator="type")]


class ReceiverConfig(BaseModel):
    """People to tell, for some projects (default: all), through their channels."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    projects: list[str] | None = None
    channels: list[ChannelConfig] = Field(min_length=1)

    @field_validator("projects")
    @classmethod
    def _projects(cls, value: list[str] | None) -> list[str] | None:
        if value is not None:
            if not value:
                raise ValueError("give at least one project, or leave projects: out (all)")
            for name in value:
                check_project(name)
        return value

    def covers(self, project: str) -> bool:
        """Whether this receiver hears of ``project``'s incidents."""
        return self.projects is None or project in self.projects

    def named_channels(self) -> list[tuple[str, ChannelConfig]]:
        """Each channel with its name (``name:``, else ``TYPE-N`` counted from 1)."""
        return [(c.name or f"{c.type}-{i}", c) for i, c in enumerate(self.channels, 1)]


class AlertsConfig(BaseModel):
    """The top-level ``alerts:`` block."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    receivers: dict[str, ReceiverConfig] = Field(default_factory=dict)
    evaluate_every: Seconds = Field(default=60.0, ge=1.0)
    # An agent silent this long is lost (it heart-beats every 5 s).
    agent_stale_after: Seconds = Field(default=300.0, ge=15.0)
    # A message is tried this many times, waiting retry_delay, then twice that... (at
    # most an hour between two), before it is recorded as failed for good.
    max_attempts: int = Field(default=10, ge=1, le=100)
    retry_delay: Seconds = Field(default=30.0, ge=0.0)

    @field_validator("receivers")
    @classmethod
    def _receiver_names(cls, value: dict[str, ReceiverConfig]) -> dict[str, ReceiverConfig]:
        for name, receiver in value.items():
            if not _NAME.fullmatch(name):
                raise ValueError(f"a receiver's name is 1-64 letters, digits, '.', '_' or '-': "
                                 f"{name!r}")  # fmt: skip
            names = [n for n, _ in receiver.named_channels()]
            twice = sorted({n for n in names if names.count(n) > 1})
            if twice:
                raise ValueError(f"receiver {name}: two channels named {', '.join(twice)}")
        return value


class PingConfig(BaseModel):
    """A source's ``ping:`` URLs (healthchecks.io, cronitor...), each optional."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    start: SecretStr | None = None
    success: SecretStr | None = None
    fail: SecretStr | None = None

    _urls = field_validator("start", "success", "fail")(_http_url)

    def url(self, event: str) -> str | None:
        """The URL for ``start``, ``success`` or ``fail`` (None: not configured)."""
        found: SecretStr | None = getattr(self, event, None)
        return None if found is None else found.get_secret_value()


def _url_parts(url: str) -> Iterator[str]:
    yield url
    try:
        parts = urlsplit(url)
    except ValueError:
        return
    if parts.password:
        yield parts.password
    # A token in the path (ntfy topics, healthchecks ids, Slack's three parts): the parts
    # that look random, not words such as "hooks" that masking would blot out everywhere.
    for part in parts.path.split("/"):
        if len(part) >= 12 and any(c.isdigit() for c in part):
            yield part


def alerts_secrets(alerts: AlertsConfig | None, pings: list[PingConfig] | None = None) -> list[str]:
    """Every credential of the block (passwords, webhook secrets, URLs and their tokens)
    and of the given ``ping:`` blocks, for masking."""
    found: list[str] = []
    for receiver in alerts.receivers.values() if alerts else []:
        for channel in receiver.channels:
            if isinstance(channel, EmailConfig) and channel.password is not None:
                found.append(channel.password.get_secret_value())
            elif isinstance(channel, WebhookConfig):
                found += _url_parts(channel.url.get_secret_value())
                if channel.secret is not None:
                    found.append(channel.secret.get_secret_value())
            elif isinstance(channel, AppriseConfig):
                found += _url_parts(channel.url.get_secret_value())
    for block in pings or []:
        for event in ("start", "success", "fail"):
            url = block.url(event)
            if url:
                found += _url_parts(url)
    return found


def plan_ping_secrets(ping: PingConfig | None) -> list[str]:
    """A plan's ping URLs, whole (each is the credential that lets anyone ping)."""
    if ping is None:
        return []
    return [url for url in (ping.url(e) for e in ("start", "success", "fail")) if url]
