"""Telling people: the channels an alert, a test message or a ping goes out through.

Pure transport, no catalog and no service: the service's alert engine
(``safehold.service.alerts``) and the standalone agent hand a :class:`Message` (or a
ping) to a :class:`Channel` and learn whether it went. Each channel is one module:

- :mod:`.email`: SMTP with STARTTLS and login, a text and an HTML part;
- :mod:`.webhook`: a JSON POST signed with HMAC-SHA256 of a shared secret (and a time
  stamp against replay), retried with back-off on transport errors and 5xx answers;
- :mod:`.ping`: healthchecks/cronitor-style URLs hit at a run's start, success or failure;
- :mod:`.apprise_url`: any URL the Apprise library reaches (Slack, Teams, ntfy, mailto...);
- :mod:`.messages`: what an alert says (the service's and the standalone agent's);
- :mod:`.factory`: a channel from its kind and arguments (:func:`make_channel`).

A channel raises :class:`DeliveryError` when a message did not go; retrying across
minutes and recording failures is the caller's (the service's outbox). Every channel
knows its secrets and masks them in what it raises (:func:`mask`), so an error may be
logged and stored as it is.
"""

from safehold.notify.apprise_url import AppriseChannel
from safehold.notify.base import Channel, DeliveryError, Message, mask
from safehold.notify.email import EmailChannel
from safehold.notify.factory import make_channel
from safehold.notify.messages import incident_message, trial_message
from safehold.notify.ping import ping, ping_label
from safehold.notify.webhook import WebhookChannel, sign

__all__ = [
    "AppriseChannel",
    "Channel",
    "DeliveryError",
    "EmailChannel",
    "Message",
    "WebhookChannel",
    "incident_message",
    "make_channel",
    "mask",
    "ping",
    "ping_label",
    "sign",
    "trial_message",
]
