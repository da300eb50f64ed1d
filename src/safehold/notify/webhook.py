"""A JSON webhook: the message's fields POSTed, signed, retried on a passing failure.

The receiver checks two headers (docs/alerts.md):

- ``X-Safehold-Timestamp``: Unix seconds when the request was signed; refuse old ones
  (replay);
- ``X-Safehold-Signature``: ``sha256=`` and the hex HMAC-SHA256, under the shared secret,
  of ``TIMESTAMP.BODY`` (the timestamp, a dot, the raw body bytes), as Stripe and Slack
  sign theirs: signing the body alone would let a recorded request be replayed later
  with a fresh timestamp.

Transport errors and 5xx answers are tried again with exponential back-off (a few
seconds in all: longer waits are the outbox's); a 4xx is final (the receiver said no).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

from safehold.notify.base import DeliveryError, Message, mask

__all__ = ["SIGNATURE_HEADER", "TIMESTAMP_HEADER", "WebhookChannel", "sign"]

SIGNATURE_HEADER = "X-Safehold-Signature"
TIMESTAMP_HEADER = "X-Safehold-Timestamp"


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """The ``X-Safehold-Signature`` value for ``body`` sent at ``timestamp``."""
    digest = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return "sha256=" + digest.hexdigest()


@dataclass(frozen=True)
class WebhookChannel:
    """A URL that takes a signed JSON POST."""

    url: str = field(repr=False)  # may hold a token in its path or query
    secret: str | None = field(default=None, repr=False)
    timeout: float = 10.0
    tries: int = 4
    backoff: float = 0.5  # seconds before the second try; doubled each time
    sleep: Callable[[float], None] = field(default=time.sleep, repr=False, compare=False)

    @property
    def label(self) -> str:
        """``webhook:SCHEME://HOST[:PORT]``: the path and query may hold tokens."""
        found = httpx.URL(self.url)
        port = f":{found.port}" if found.port else ""
        return f"webhook:{found.scheme}://{found.host}{port}"

    def post(self, payload: dict[str, Any]) -> None:
        """POST ``payload`` as signed JSON; :class:`DeliveryError` after the last try."""
        body = json.dumps(payload, default=str, sort_keys=True).encode()
        wait = self.backoff
        problem = "not tried"
        for attempt in range(1, max(self.tries, 1) + 1):
            stamp = str(int(time.time()))
            headers = {"Content-Type": "application/json", TIMESTAMP_HEADER: stamp,
                       "User-Agent": "safehold-alerts"}  # fmt: skip
            if self.secret:
                headers[SIGNATURE_HEADER] = sign(self.secret, stamp, body)
            try:
                answer = httpx.post(self.url, content=body, headers=headers, timeout=self.timeout)
            except httpx.HTTPError as exc:
                problem = f"{type(exc).__name__}: {exc}"
            else:
                if answer.status_code < 300:
                    return
                problem = f"HTTP {answer.status_code}"
                if answer.status_code < 500:
                    break  # the receiver refused it: trying again would not help
            if attempt < self.tries:
                self.sleep(wait)
                wait *= 2
        raise DeliveryError(
            f"{self.label}: {mask(problem, [self.url, self.secret or ''])}",
            hint="check the webhook's URL and that its receiver is up and accepts the "
            "signature (docs/alerts.md)",
        )

    def send(self, message: Message) -> None:
        """POST the message: its fields, its subject line as ``headline`` (``subject`` is
        a field of its own: what within the plan), and its text."""
        self.post({**message.fields, "headline": message.subject, "text": message.text})
