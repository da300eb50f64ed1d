"""The channels against real receivers on 127.0.0.1: aiosmtpd for e-mail, a local HTTP
server for webhooks and pings, and Apprise's own json:// and mailto:// URL kinds."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from safehold.notify import (
    AppriseChannel,
    DeliveryError,
    EmailChannel,
    Message,
    WebhookChannel,
    ping,
    sign,
)
from tests.notify_receivers import (
    SMTP_PASSWORD,
    SMTP_USER,
    HttpReceiver,
    SmtpServer,
    http_receiver,
    smtp_server,
    start_smtp,
)

__all__ = ["http_receiver", "smtp_server"]

SECRET = "webhook-shared-secret-123"
MESSAGE = Message(
    "[safehold] ALERT: backup failed: shop/db",
    "Backup failed for shop/db.\nrun id: 1234\nnext step: look <here>\n",
    "<html><body><h2>backup failed</h2><td class='run-id'>1234</td>"
    "<td>look &lt;here&gt;</td></body></html>",
    {"project": "shop", "plan": "db", "run_id": "1234", "hint": "look <here>"},
)


def email_channel(server: SmtpServer, **kw: object) -> EmailChannel:
    options: dict[str, object] = {
        "host": "127.0.0.1", "port": server.port, "tls": "none", "username": SMTP_USER,
        "password": SMTP_PASSWORD, "sender": "safehold@example.org",
        "to": ("ops@example.org", "dba@example.org"),
    }  # fmt: skip
    options.update(kw)
    return EmailChannel(**options)  # type: ignore[arg-type]


def test_email_has_a_text_and_an_html_part_and_logs_in(smtp_server: SmtpServer) -> None:
    email_channel(smtp_server).send(MESSAGE)
    assert len(smtp_server.mails) == 1
    mail = smtp_server.mails[0]
    assert mail["Subject"] == MESSAGE.subject
    assert smtp_server.rcpts[0] == ["ops@example.org", "dba@example.org"]
    assert smtp_server.logins[0] == SMTP_USER
    plain, rich = smtp_server.text_and_html()
    assert "run id: 1234" in plain
    assert "<td class='run-id'>1234</td>" in rich


def test_email_wrong_password_is_masked(smtp_server: SmtpServer) -> None:
    channel = email_channel(smtp_server, password="not-the-Right-one-999")
    with pytest.raises(DeliveryError) as caught:
        channel.send(MESSAGE)
    assert "not-the-Right-one-999" not in str(caught.value)
    assert "sending failed" in str(caught.value)
    assert smtp_server.mails == []


def test_email_starttls_and_refusing_clear_text(tmp_path: Path) -> None:
    server, controller = start_smtp(tls_folder=tmp_path)
    try:
        assert server.cert is not None
        email_channel(server, tls="starttls", ca_file=str(server.cert)).send(MESSAGE)
        assert len(server.mails) == 1 and server.logins == [SMTP_USER]
        # Without TLS this server refuses the login (auth_require_tls): an error, not a drop.
        with pytest.raises(DeliveryError):
            email_channel(server, tls="none").send(MESSAGE)
        assert len(server.mails) == 1
    finally:
        controller.stop()


def test_starttls_is_required_when_asked(smtp_server: SmtpServer) -> None:
    with pytest.raises(DeliveryError, match="does not offer STARTTLS"):
        email_channel(smtp_server, tls="starttls").send(MESSAGE)


def test_webhook_is_signed_over_timestamp_and_body(http_receiver: HttpReceiver) -> None:
    WebhookChannel(url=f"{http_receiver.base}/hook/tok3nABC123456", secret=SECRET).send(MESSAGE)
    (request,) = http_receiver.requests
    assert request.method == "POST" and request.path == "/hook/tok3nABC123456"
    stamp = request.headers["X-Safehold-Timestamp"]
    assert abs(int(stamp) - time.time()) < 60
    assert request.headers["X-Safehold-Signature"] == sign(SECRET, stamp, request.body)
    assert request.headers["X-Safehold-Signature"] != sign("other", stamp, request.body)
    body = request.json()
    assert body["project"] == "shop" and body["run_id"] == "1234"
    assert body["headline"] == MESSAGE.subject


def test_webhook_retries_5xx_then_succeeds(http_receiver: HttpReceiver) -> None:
    http_receiver.statuses = [503, 502]
    waits: list[float] = []
    WebhookChannel(url=f"{http_receiver.base}/h", secret=SECRET, sleep=waits.append).send(MESSAGE)
    assert len(http_receiver.requests) == 3
    assert waits == [0.5, 1.0]  # exponential back-off


def test_webhook_4xx_is_final_and_the_url_is_masked(http_receiver: HttpReceiver) -> None:
    http_receiver.statuses = [403]
    url = f"{http_receiver.base}/hook/s3cretTOKEN99887766"
    with pytest.raises(DeliveryError, match="HTTP 403") as caught:
        WebhookChannel(url=url, secret=SECRET, sleep=lambda s: None).send(MESSAGE)
    assert len(http_receiver.requests) == 1
    assert "s3cretTOKEN99887766" not in str(caught.value)


def test_webhook_unreachable_is_tried_and_reported() -> None:
    from tests.notify_receivers import free_port

    waits: list[float] = []
    channel = WebhookChannel(url=f"http://127.0.0.1:{free_port()}/h", sleep=waits.append)
    with pytest.raises(DeliveryError, match="ConnectError"):
        channel.send(MESSAGE)
    assert waits == [0.5, 1.0, 2.0]


def test_ping_get_and_retry(http_receiver: HttpReceiver) -> None:
    ping(f"{http_receiver.base}/ping/abc-123/start")
    http_receiver.statuses = [500]
    ping(f"{http_receiver.base}/ping/abc-123/fail", sleep=lambda s: None)
    assert http_receiver.paths() == ["/ping/abc-123/start", "/ping/abc-123/fail",
                                     "/ping/abc-123/fail"]  # fmt: skip


def test_apprise_json_url(http_receiver: HttpReceiver) -> None:
    AppriseChannel(f"json://127.0.0.1:{http_receiver.port}/apprise").send(MESSAGE)
    (request,) = http_receiver.requests
    assert request.path == "/apprise"
    body = request.json()
    assert body["title"] == MESSAGE.subject
    assert "1234" in body["message"]


def test_apprise_mailto_url(smtp_server: SmtpServer) -> None:
    url = (
        f"mailto://{SMTP_USER}:{SMTP_PASSWORD}@127.0.0.1:{smtp_server.port}"
        "?smtp=127.0.0.1&from=safehold@example.org&to=ops@example.org&mode=insecure"
    )
    AppriseChannel(url).send(MESSAGE)
    assert len(smtp_server.mails) == 1
    mail = smtp_server.mails[0]
    assert mail["Subject"] == MESSAGE.subject
    assert smtp_server.rcpts[0] == ["ops@example.org"]
    assert "1234" in mail.get_body(("html", "plain")).get_content()  # type: ignore[union-attr]


def test_apprise_failure_is_raised() -> None:
    from tests.notify_receivers import free_port

    with pytest.raises(DeliveryError, match="apprise:json"):
        AppriseChannel(f"json://127.0.0.1:{free_port()}/x").send(MESSAGE)
