"""Any service the Apprise library reaches (``slack://``, ``ntfy://``, ``msteams://``,
``tgram://``, ``json://``, ``mailto://`` ...): one URL each, no code of our own for them.

An Apprise URL usually holds its token; only its scheme is shown (:attr:`label`), and
Apprise's own log lines, which may quote the URL, are kept out of the service's log
(:func:`_quiet`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from safehold.notify.base import DeliveryError, Message, mask

__all__ = ["AppriseChannel", "check_url"]


def _quiet() -> None:
    # Apprise logs the URLs it fails on, tokens included.
    logging.getLogger("apprise").setLevel(logging.CRITICAL + 1)


def check_url(url: str) -> str | None:
    """Why Apprise cannot use ``url`` (None: it can); the message has no secret in it."""
    import apprise

    _quiet()
    if apprise.Apprise.instantiate(url) is None:
        scheme = url.split("://", 1)[0] if "://" in url else "?"
        return f"Apprise does not understand this {scheme}:// URL (its token is not shown)"
    return None


@dataclass(frozen=True)
class AppriseChannel:
    """One Apprise URL."""

    url: str = field(repr=False)

    @property
    def label(self) -> str:
        """``apprise:SCHEME``."""
        return "apprise:" + (self.url.split("://", 1)[0] if "://" in self.url else "?")

    def send(self, message: Message) -> None:
        """Notify through Apprise, HTML where the service takes it, else the text."""
        import apprise

        _quiet()
        sender = apprise.Apprise()
        if not sender.add(self.url):
            raise DeliveryError(
                f"{self.label}: Apprise does not understand this URL",
                hint="see https://github.com/caronc/apprise/wiki for its URL forms",
            )
        try:
            ok = sender.notify(
                title=message.subject, body=message.html, body_format=apprise.NotifyFormat.HTML
            )
        except Exception as exc:  # a plugin's own failure: reported, never lost
            raise DeliveryError(
                f"{self.label}: {mask(str(exc), [self.url])}",
                hint="check the Apprise URL",
            ) from None
        if not ok:
            raise DeliveryError(
                f"{self.label}: the service did not take the message",
                hint="check the Apprise URL and that its service is reachable",
            )
