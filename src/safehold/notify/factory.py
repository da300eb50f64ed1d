"""A channel from its kind and its arguments: the one rule that the service and the
standalone agent share (each turns its configured channel into these arguments; notify
itself knows no configuration)."""

from __future__ import annotations

from typing import Any

from safehold.notify.apprise_url import AppriseChannel
from safehold.notify.base import Channel
from safehold.notify.email import EmailChannel
from safehold.notify.webhook import WebhookChannel

__all__ = ["make_channel"]

_KINDS: dict[str, type[Any]] = {
    "email": EmailChannel,
    "webhook": WebhookChannel,
    "apprise": AppriseChannel,
}


def make_channel(kind: str, options: dict[str, Any]) -> Channel:
    """The channel of ``kind`` (``email``, ``webhook``, ``apprise``) made with
    ``options``, its constructor's arguments."""
    try:
        made = _KINDS[kind]
    except KeyError:
        raise ValueError(f"unknown channel kind {kind!r}") from None
    channel: Channel = made(**options)
    return channel
