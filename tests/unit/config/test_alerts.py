"""The alerts: block, a source's rpo_target: and ping:: strict validation, clear messages,
secrets never shown."""

from __future__ import annotations

import pytest

from safehold.config import parse_config
from safehold.config.alerts import EmailConfig, WebhookConfig, alerts_secrets
from safehold.errors import ConfigError

GOOD = """\
alerts:
  evaluate_every: 2m
  receivers:
    ops:
      projects: [shop, default]
      channels:
        - type: email
          host: smtp.example.org
          username: alerts
          password: ${SMTP_PASSWORD}
          from: Safehold <safehold@example.org>
          to: [ops@example.org]
        - type: webhook
          url: https://hooks.example.org/in/${HOOK_TOKEN}
          secret: ${HOOK_SECRET}
        - type: apprise
          name: phone
          url: ntfy://ntfy.sh/${NTFY_TOPIC}
sources:
  db:
    type: directory
    paths: [/srv]
    schedule: "@hourly"
    rpo_target: 1h30m
    ping: {start: "https://hc-ping.com/0b9e6c1c-1234-4a1e-9d2b-5f0e2e6a8a11/start"}
"""
ENV = {"SMTP_PASSWORD": "smtp-secret-pw", "HOOK_TOKEN": "tok3n-0123456789abcdef",
       "HOOK_SECRET": "shared-hmac-secret", "NTFY_TOPIC": "backups-x7k2p9q4r1"}  # fmt: skip


def bad(text: str) -> str:
    with pytest.raises(ConfigError) as info:
        parse_config(text, path="f.yaml", env=ENV)
    return str(info.value)


def test_a_full_block_loads_and_its_secrets_are_known() -> None:
    config = parse_config(GOOD, path="f.yaml", env=ENV)
    assert config.alerts is not None and config.warnings == []
    assert config.alerts.evaluate_every == 120.0
    ops = config.alerts.receivers["ops"]
    assert ops.covers("shop") and not ops.covers("other")
    assert [n for n, _ in ops.named_channels()] == ["email-1", "webhook-2", "phone"]
    assert isinstance(ops.channels[0], EmailConfig) and ops.channels[0].port == 587
    assert isinstance(ops.channels[1], WebhookConfig)
    assert config.sources["db"].common.rpo_target == 5400.0
    secrets = alerts_secrets(config.alerts, [config.sources["db"].common.ping])  # type: ignore[list-item]
    for value in ENV.values():
        assert value in secrets
    assert "0b9e6c1c-1234-4a1e-9d2b-5f0e2e6a8a11" in secrets
    assert "hooks" not in secrets  # plain words of a URL are not masked everywhere
    assert "smtp-secret-pw" not in repr(config.alerts)


def ops(channels: str, more: str = "") -> str:
    """An alerts: block with one receiver ``ops`` and these channels."""
    return f"alerts: {{receivers: {{ops: {{{more}channels: [{channels}]}}}}}}"


MAIL = "type: email, host: h, from: a@b.c"
SRC = "sources: {s: {type: directory, paths: [/x], "


@pytest.mark.parametrize(
    ("block", "expected"),
    [
        (ops(""), "alerts.receivers.ops.channels: list should have at least 1 item"),
        (ops("{type: sms, to: x}"), "expected tags: 'email', 'webhook', 'apprise'"),
        (ops(f"{{{MAIL}, to: [nope]}}"), "not an e-mail address: 'nope'"),
        (ops(f"{{{MAIL}, to: [a@b.c], pasword: x}}"), "channels.0.email.pasword: unknown key"),
        (ops("{type: webhook, url: 'ftp://h/secretpath'}"), "must be an http:// or https://"),
        (ops("{type: apprise, url: 'nosuch://tok3n'}"), "apprise does not understand this nos"),
        (ops("{type: apprise, url: 'json://h'}", "projects: ['-bad'], "), "projects"),
        (
            ops("{type: apprise, url: 'json://h'}, {type: apprise, url: 'json://h', name: "
                "apprise-1}"),
            "two channels named apprise-1",
        ),
        ("alerts: {evaluate_every: 0s}", "alerts.evaluate_every"),
        ("alerts: {email: ops@example.org}", "alerts.email: unknown key"),
        (SRC + "rpo_target: soon}}", "sources.s.rpo_target"),
        (SRC + "ping: {begin: 'http://h/x'}}}", "sources.s.ping.begin: unknown key"),
        (SRC + "ping: {fail: 'hc-ping/x'}}}", "sources.s.ping.fail: must be an http"),
    ],
)  # fmt: skip
def test_problems_are_named(block: str, expected: str) -> None:
    message = bad(block)
    assert expected in message
    assert "secretpath" not in message and "tok3n" not in message


def test_no_alerts_block_is_none() -> None:
    assert parse_config("sources: {}", path="f.yaml").alerts is None
