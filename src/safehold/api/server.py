"""The API served by uvicorn on the service's own event loop.

``safehold serve`` composes the two (:func:`api_companion`): the API's server is one more
task of the service's loop, beside the scheduler and the queue's worker, so that a run
queued through the API uses the same procrastinate connection as the scheduler's, and
the service's stop stops it. The socket is bound before the service starts
(:func:`bind`): an address in use is a clear error at once, and port 0 works.

uvicorn would install its own SIGINT and SIGTERM handlers (``capture_signals``); the
service owns those signals (a stop in order: scheduler, worker grace, then the API), so
:class:`_Server` leaves them alone. uvicorn's logging configuration is not applied
(``log_config=None``) and its access log is off: the service's log is configured once, by
the command line, and a request line would add nothing the API's errors do not log.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import uvicorn
from fastapi import FastAPI

from safehold import runtime
from safehold.api.app import create_app
from safehold.errors import UsageError

if TYPE_CHECKING:
    from safehold.service.serve import Service

__all__ = [
    "DEFAULT_LISTEN",
    "ApiOptions",
    "api_companion",
    "bind",
    "check_tls",
    "parse_listen",
    "serve_api",
]

DEFAULT_LISTEN = "127.0.0.1:8808"
log = logging.getLogger("safehold.api")


@dataclass(frozen=True)
class ApiOptions:
    """Where and how the API listens."""

    listen: str = DEFAULT_LISTEN
    tls_cert: Path | None = None
    tls_key: Path | None = None


class _Server(uvicorn.Server):
    """uvicorn's server without its signal handlers (the service has its own)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def parse_listen(listen: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:8808`` for IPv6) as a host and a port."""
    host, sep, port = listen.rpartition(":")
    numeric = port.isascii() and port.isdigit()
    if not sep or not numeric or not 0 <= int(port) <= 65535 or not host:
        raise UsageError(f"--listen {listen!r} is not HOST:PORT", hint="for example 127.0.0.1:8808")
    return host.strip("[]"), int(port)


def bind(listen: str) -> socket.socket:
    """A listening TCP socket on ``listen`` (``HOST:PORT``)."""
    host, port = parse_listen(listen)
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        sock = socket.socket(family, socket.SOCK_STREAM)
    except OSError as exc:
        raise UsageError(f"cannot listen on {listen}: {exc}", hint="check the host") from exc
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        # Accepted connections inherit it: uvicorn writes a response's headers and body
        # separately, and Nagle's algorithm held the body back until the client's delayed
        # ACK (40 ms on Linux) on every call.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind((host, port))
        sock.listen(1024)  # many agents may connect at once (their long polls)
    except OSError as exc:
        sock.close()
        raise UsageError(
            f"cannot listen on {listen}: {exc.strerror or exc}",
            hint="another program may hold the port: choose another with --listen HOST:PORT",
        ) from exc
    sock.set_inheritable(False)  # the jobs' child processes must not hold it
    return sock


def check_tls(options: ApiOptions) -> None:
    """Load the certificate and key once before the service starts, so that a wrong file
    is a usage error at once rather than the API's task failing in the running service."""
    if options.tls_cert is None or options.tls_key is None:
        return
    try:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(options.tls_cert, options.tls_key)
    except (OSError, ssl.SSLError) as exc:
        raise UsageError(
            f"cannot serve HTTPS with {options.tls_cert} and {options.tls_key}: "
            f"{getattr(exc, 'strerror', None) or exc}",
            hint="--tls-cert takes a PEM certificate (chain), --tls-key its unencrypted key",
        ) from exc


async def serve_api(
    app: FastAPI, sock: socket.socket, stop: asyncio.Event, options: ApiOptions
) -> None:
    """Serve ``app`` on ``sock`` until ``stop`` is set."""
    config = uvicorn.Config(
        app,
        log_config=None,
        access_log=False,
        lifespan="off",
        ssl_certfile=options.tls_cert,
        ssl_keyfile=options.tls_key,
        timeout_graceful_shutdown=5,
        server_header=False,
        # X-Forwarded-For is believed from a proxy on this machine only (the limit on
        # failed token checks counts per client address), whatever FORWARDED_ALLOW_IPS,
        # which uvicorn would otherwise read from the environment, says.
        proxy_headers=True,
        forwarded_allow_ips="127.0.0.1,::1",
    )
    server = _Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]), name="api")
    stopper = asyncio.create_task(stop.wait())
    host, port = sock.getsockname()[:2]
    scheme = "https" if options.tls_cert else "http"
    shown = f"{scheme}://{f'[{host}]' if ':' in host else host}:{port}"
    log.info("API listening on %s", shown,
             extra={"fields": {"event": "api.listening", "port": port}})  # fmt: skip
    # Where a newcomer looks first: the dashboard's address and how to get in.
    log.info("dashboard: %s/ui/ (log in with a token: safehold token create --role "
             "operator --project PROJECT, with this service's --config)", shown)  # fmt: skip
    try:
        await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        server.should_exit = True
        stopper.cancel()
        await task


def api_companion(
    sock: socket.socket, options: ApiOptions
) -> Callable[[Service, asyncio.Event], Coroutine[Any, Any, None]]:
    """What ``serve`` runs beside the service: the API over its catalog, plans and queue."""

    async def run(service: Service, stop: asyncio.Event) -> None:
        app = create_app(
            service.engine, plans=lambda: service.specs, jobs=service.jobs, vault=service.vault
        )
        runtime.settled()  # the app and its routes are made: out of the collector's passes
        await serve_api(app, sock, stop, options)

    return run
