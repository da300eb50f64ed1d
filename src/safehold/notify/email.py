"""E-mail over SMTP: STARTTLS (or implicit TLS), a login, and a text and an HTML part.

Blocking (``smtplib``); the service calls it in a thread. The password is masked in every
error this raises: SMTP servers echo parts of a failed login.
"""

from __future__ import annotations

import smtplib
import ssl
from collections.abc import Sequence
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from typing import Literal

from safehold.notify.base import DeliveryError, Message, mask

__all__ = ["EmailChannel"]


@dataclass(frozen=True)
class EmailChannel:
    """An SMTP server and the addresses a message goes to.

    ``tls``: ``starttls`` (default: upgrade a plain connection, refusing a server that
    cannot), ``ssl`` (TLS from the first byte, port 465) or ``none`` (loopback relays
    only). ``ca_file`` trusts a private CA instead of the system's.
    """

    host: str
    sender: str
    to: Sequence[str]
    port: int = 587
    tls: Literal["starttls", "ssl", "none"] = "starttls"
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    ca_file: str | None = None
    timeout: float = 30.0

    @property
    def label(self) -> str:
        """``email:HOST:PORT -> a@x, b@y`` (no credentials)."""
        return f"email:{self.host}:{self.port} -> {', '.join(self.to)}"

    def build(self, message: Message) -> EmailMessage:
        """The MIME message: text first, the HTML part as its alternative."""
        mail = EmailMessage()
        mail["Subject"] = message.subject
        mail["From"] = self.sender
        mail["To"] = ", ".join(self.to)
        mail["Date"] = formatdate(localtime=False)
        mail["Message-ID"] = make_msgid(domain="safehold")
        mail.set_content(message.text)
        mail.add_alternative(message.html, subtype="html")
        return mail

    def _context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=self.ca_file)

    def send(self, message: Message) -> None:
        """Send ``message`` to every address; :class:`DeliveryError` if the server did not
        take it for all of them."""
        mail = self.build(message)
        try:
            if self.tls == "ssl":
                smtp: smtplib.SMTP = smtplib.SMTP_SSL(
                    self.host, self.port, timeout=self.timeout, context=self._context()
                )
            else:
                smtp = smtplib.SMTP(self.host, self.port, timeout=self.timeout)
            with smtp:
                smtp.ehlo()
                if self.tls == "starttls":
                    # Refuse to go on in clear text: the login and the alert would leak.
                    if not smtp.has_extn("starttls"):
                        raise DeliveryError(
                            f"{self.label}: the server does not offer STARTTLS",
                            hint="use tls: ssl (port 465), or tls: none for a loopback relay",
                        )
                    smtp.starttls(context=self._context())
                    smtp.ehlo()
                if self.username is not None:
                    smtp.login(self.username, self.password or "")
                refused = smtp.send_message(mail)
        except DeliveryError:
            raise
        except (smtplib.SMTPException, OSError, ssl.SSLError) as exc:
            detail = mask(str(exc) or type(exc).__name__, [self.password or ""])
            raise DeliveryError(
                f"{self.label}: sending failed: {detail}",
                hint="check the SMTP host, port, tls and login of this channel",
            ) from None
        if refused:
            raise DeliveryError(
                f"{self.label}: the server refused {', '.join(sorted(refused))}",
                hint="check the addresses in to:",
            )
