"""What every channel shares: the message, the channel's Protocol, its error and masking."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

from safehold.errors import SafeholdError

__all__ = ["MASK", "Channel", "DeliveryError", "Message", "mask"]

MASK = "***"
_MIN_SECRET = 4  # shorter "secrets" would mask ordinary words everywhere


@dataclass(frozen=True)
class Message:
    """One notification: a subject, a plain-text and an HTML body, and the structured
    ``fields`` a webhook sends as JSON (project, plan, run id, phase, error, hint...)."""

    subject: str
    text: str
    html: str
    fields: dict[str, Any] = field(default_factory=dict)


class DeliveryError(SafeholdError):
    """A message did not go out through a channel; the message names the channel and why
    (secrets masked). Raised by :meth:`Channel.send`; the caller retries later."""


class Channel(Protocol):
    """A way to reach people. ``send`` blocks until the message was accepted by the
    receiving side (the SMTP server, the webhook's 2xx answer) or raises
    :class:`DeliveryError`; it never returns having silently dropped the message."""

    @property
    def label(self) -> str:
        """What logs and records call the channel, with no secret in it."""

    def send(self, message: Message) -> None:
        """Deliver ``message`` or raise :class:`DeliveryError`."""


def mask(text: str, secrets: Iterable[str]) -> str:
    """``text`` with each of ``secrets`` (4 characters or more) replaced by ``***``,
    longest first, so that a secret that contains another is masked whole."""
    for secret in sorted({s for s in secrets if s and len(s) >= _MIN_SECRET}, key=len,
                         reverse=True):  # fmt: skip
        text = text.replace(secret, MASK)
    return text
