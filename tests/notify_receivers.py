"""Real receivers on 127.0.0.1 for the alerts' tests: an SMTP server (aiosmtpd, with a
login and optional STARTTLS) and an HTTP server that records webhooks and pings."""

from __future__ import annotations

import email
import email.policy
import json
import socket
import ssl
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from email.message import EmailMessage
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

SMTP_USER = "alerts"
SMTP_PASSWORD = "smtp-Pa55word-for-tests"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class _Handler:
    def __init__(self, server: SmtpServer) -> None:
        self.server = server

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        mail = email.message_from_bytes(envelope.content, policy=email.policy.default)
        assert isinstance(mail, EmailMessage)
        self.server.mails.append(mail)
        self.server.rcpts.append(list(envelope.rcpt_tos))
        self.server.logins.append(getattr(session, "auth_data", None))
        return "250 OK"


@dataclass
class SmtpServer:
    """aiosmtpd on 127.0.0.1; every mail parsed, with who logged in."""

    port: int
    cert: Path | None = None
    mails: list[EmailMessage] = field(default_factory=list)
    rcpts: list[list[str]] = field(default_factory=list)
    logins: list[Any] = field(default_factory=list)

    def text_and_html(self, index: int = -1) -> tuple[str, str]:
        """The plain-text and HTML parts of a mail."""
        mail = self.mails[index]
        plain = mail.get_body(("plain",))
        rich = mail.get_body(("html",))
        assert plain is not None and rich is not None
        return str(plain.get_content()), str(rich.get_content())


def _authenticate(server: Any, session: Any, envelope: Any, mechanism: str, data: Any) -> Any:
    if (
        isinstance(data, LoginPassword)
        and data.login.decode() == SMTP_USER
        and (data.password.decode() == SMTP_PASSWORD)
    ):
        return AuthResult(success=True, auth_data=SMTP_USER)
    return AuthResult(success=False, handled=False)


def make_cert(folder: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 (skips without openssl)."""
    cert, key = folder / "cert.pem", folder / "key.pem"
    made = subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        capture_output=True, timeout=60, check=False,
    )  # fmt: skip
    if made.returncode != 0:
        pytest.skip("no openssl to make a certificate")
    return cert, key


def start_smtp(*, tls_folder: Path | None = None) -> tuple[SmtpServer, Controller]:
    """An SMTP server needing a login; with ``tls_folder``, offering STARTTLS too."""
    port = free_port()
    server = SmtpServer(port)
    kwargs: dict[str, Any] = {"authenticator": _authenticate, "auth_require_tls": False}
    if tls_folder is not None:
        cert, key = make_cert(tls_folder)
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(str(cert), str(key))
        kwargs.update(tls_context=context, require_starttls=True, auth_require_tls=True)
        server.cert = cert
    controller = Controller(_Handler(server), hostname="127.0.0.1", port=port, **kwargs)
    controller.start()
    return server, controller


@pytest.fixture
def smtp_server() -> Iterator[SmtpServer]:
    server, controller = start_smtp()
    try:
        yield server
    finally:
        controller.stop()


@dataclass
class Request:
    """One request the HTTP receiver got."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        """The body as JSON."""
        return json.loads(self.body)


@dataclass
class HttpReceiver:
    """An HTTP server on 127.0.0.1 that records every request and answers ``statuses``
    in turn (then 200)."""

    port: int
    requests: list[Request] = field(default_factory=list)
    statuses: list[int] = field(default_factory=list)

    @property
    def base(self) -> str:
        """``http://127.0.0.1:PORT``."""
        return f"http://127.0.0.1:{self.port}"

    def paths(self) -> list[str]:
        """The paths requested, in order."""
        return [r.path for r in self.requests]


def start_http() -> tuple[HttpReceiver, ThreadingHTTPServer]:
    """The receiver and its server, serving in a thread."""
    receiver = HttpReceiver(0)
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def _record(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            with lock:
                receiver.requests.append(
                    Request(self.command, self.path, dict(self.headers.items()), body)
                )
                status = receiver.statuses.pop(0) if receiver.statuses else 200
            self.send_response(status)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        do_GET = do_POST = _record

        def log_message(self, format: str, *args: Any) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    receiver.port = httpd.server_address[1]
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return receiver, httpd


@pytest.fixture
def http_receiver() -> Iterator[HttpReceiver]:
    receiver, httpd = start_http()
    try:
        yield receiver
    finally:
        httpd.shutdown()
        httpd.server_close()
