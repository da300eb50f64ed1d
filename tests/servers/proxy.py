"""A loopback TCP proxy that injects network faults between a client and a real server.

Usable by any backend's tests: start it in front of the server's port and point the client
at ``proxy.port``. Faults can be switched on and off while traffic flows::

    with FaultProxy(server_port) as proxy:
        proxy.delay(5.0)              # every answer from the server arrives 5 s late
        proxy.reset_after(1 << 20)    # reset the first connection to send 1 MiB from now
        proxy.answer_http(503, 3)     # the next 3 HTTP requests get "503 SlowDown"
        proxy.go_away()               # refuse new connections and reset open ones
        proxy.come_back()             # listen again on the same port

HTTP-aware faults (:meth:`answer_http`) parse request heads and ``Content-Length`` bodies in
the client-to-server direction so keep-alive connections are covered too; a chunked request
body makes that connection opaque (it is then never answered by the proxy).

Threads, not asyncio: the proxy must keep running while the test's client blocks.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
import time
from types import TracebackType

__all__ = ["FaultProxy"]

_CHUNK = 64 * 1024
_SLOWDOWN_BODY = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n'
    b"<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>"
)


def _reset(sock: socket.socket) -> None:
    """Close with an RST (SO_LINGER 0), as a crashed peer or a middlebox would."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(OSError):
        sock.close()


class _Requests:
    """Tracks HTTP request boundaries in the client-to-server byte stream."""

    def __init__(self) -> None:
        self.head = b""
        self.body_left = 0
        self.opaque = False

    def at_request_start(self) -> bool:
        return not self.opaque and not self.head and self.body_left == 0

    def feed(self, data: bytes) -> bytes | None:
        """Consume ``data``; return the first request head completed by it, if any."""
        first: bytes | None = None
        while data and not self.opaque:
            if self.body_left:
                used = min(self.body_left, len(data))
                self.body_left -= used
                data = data[used:]
                continue
            self.head += data
            end = self.head.find(b"\r\n\r\n")
            if end < 0:
                return first
            head, data = self.head[: end + 4], self.head[end + 4 :]
            self.head = b""
            first = first or head
            lower = head.lower()
            if b"transfer-encoding: chunked" in lower:
                self.opaque = True
            for line in lower.split(b"\r\n"):
                if line.startswith(b"content-length:"):
                    self.body_left = int(line.split(b":", 1)[1].strip() or 0)
        return first


class FaultProxy:
    """Forwards 127.0.0.1:``port`` to ``target_host:target_port``, with faults on demand."""

    def __init__(self, target_port: int, *, target_host: str = "127.0.0.1", port: int = 0):
        self.target = (target_host, target_port)
        self._lock = threading.Lock()
        self._delay = 0.0
        self._reset_after: int | None = None
        self._reset_count = 0
        self._reset_gen = 0  # bumped on each reset_after: byte counts restart from there
        self._http_status = 503
        self._http_left = 0
        self._conns: set[socket.socket] = set()
        self._listener: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self.connections = 0  # accepted so far
        self.answered = 0  # requests the proxy answered itself
        self.resets = 0  # connections reset by reset_after
        self.bytes_up = 0  # client -> server, forwarded
        self._away_at: int | None = None  # go_away when bytes_up would pass this
        self._listen(port)

    # --- lifecycle --------------------------------------------------------------------------

    @property
    def port(self) -> int:
        return self._port

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._port}"

    def _listen(self, port: int) -> None:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", port))
        listener.listen(64)
        self._port = int(listener.getsockname()[1])
        self._listener = listener
        self._thread = threading.Thread(target=self._accept, args=(listener,), daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.go_away()

    def __enter__(self) -> FaultProxy:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # --- faults -----------------------------------------------------------------------------

    def delay(self, seconds: float) -> None:
        """Hold every chunk from the server for ``seconds`` before passing it on (0: off)."""
        with self._lock:
            self._delay = seconds

    def reset_after(self, n_bytes: int | None, *, connections: int = 1) -> None:
        """Reset the first ``connections`` connections (open or new) that send ``n_bytes``
        up from now on."""
        with self._lock:
            self._reset_after = n_bytes
            self._reset_count = connections if n_bytes is not None else 0
            self._reset_gen += 1

    def answer_http(self, status: int = 503, requests: int = 1) -> None:
        """Answer the next ``requests`` HTTP requests with ``status`` (S3-style SlowDown body)."""
        with self._lock:
            self._http_status = status
            self._http_left = requests

    def clear(self) -> None:
        with self._lock:
            self._delay = 0.0
            self._reset_after = None
            self._reset_count = 0
            self._http_left = 0

    def go_away(self) -> None:
        """Stop listening (new connections are refused) and reset every open connection."""
        listener, self._listener = self._listener, None
        if listener is not None:
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)
            listener.close()
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None
        with self._lock:
            conns, self._conns = set(self._conns), set()
        for sock in conns:
            _reset(sock)

    def go_away_after(self, n_bytes: int) -> None:
        """:meth:`go_away` as soon as ``n_bytes`` more have gone up, from the thread that
        forwards them (a watcher polling ``bytes_up`` can wake too late)."""
        with self._lock:
            self._away_at = self.bytes_up + n_bytes

    def come_back(self) -> None:
        """Listen again on the same port (after :meth:`go_away`)."""
        if self._listener is None:
            self._listen(self._port)

    # --- machinery --------------------------------------------------------------------------

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # closed by go_away
            with self._lock:
                self.connections += 1
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _track(self, *socks: socket.socket) -> None:
        with self._lock:
            self._conns.update(socks)

    def _untrack(self, *socks: socket.socket) -> None:
        with self._lock:
            self._conns.difference_update(socks)

    def _serve(self, client: socket.socket) -> None:
        try:
            upstream = socket.create_connection(self.target, timeout=10)
        except OSError:
            _reset(client)
            return
        upstream.settimeout(None)
        self._track(client, upstream)
        down = threading.Thread(target=self._pump_down, args=(upstream, client), daemon=True)
        down.start()
        try:
            self._pump_up(client, upstream)
        finally:
            self._untrack(client, upstream)
            for sock in (client, upstream):
                with contextlib.suppress(OSError):
                    sock.close()
            down.join(1)

    def _take_http_answer(self) -> int | None:
        with self._lock:
            if self._http_left <= 0:
                return None
            self._http_left -= 1
            self.answered += 1
            return self._http_status

    def _must_reset(self, gen: int, sent: int) -> bool:
        with self._lock:
            if gen != self._reset_gen or self._reset_after is None or self._reset_count <= 0:
                return False
            if sent < self._reset_after:
                return False
            self._reset_count -= 1
            self.resets += 1
            return True

    def _pump_up(self, client: socket.socket, upstream: socket.socket) -> None:
        requests = _Requests()
        gen, sent = -1, 0  # bytes sent since reset_after was last armed
        while True:
            try:
                data = client.recv(_CHUNK)
            except OSError:
                return
            if not data:
                with contextlib.suppress(OSError):
                    upstream.shutdown(socket.SHUT_WR)
                return
            if requests.at_request_start():
                status = self._take_http_answer()
                if status is not None:
                    self._answer(client, requests, data, status)
                    return
            requests.feed(data)
            with self._lock:
                if gen != self._reset_gen:
                    gen, sent = self._reset_gen, 0
            if self._must_reset(gen, sent + len(data)):
                _reset(client)
                _reset(upstream)
                return
            with self._lock:
                away = self._away_at is not None and self.bytes_up + len(data) > self._away_at
                if away:
                    self._away_at = None
            if away:
                self.go_away()  # resets this connection too; nothing more goes up
                return
            try:
                upstream.sendall(data)
            except OSError:
                _reset(client)
                return
            sent += len(data)
            with self._lock:
                self.bytes_up += len(data)

    def _answer(self, client: socket.socket, requests: _Requests, data: bytes, status: int) -> None:
        """Answer one request ourselves, then close the connection."""
        head = requests.feed(data)
        client.settimeout(5)
        try:
            while head is None:
                more = client.recv(_CHUNK)
                if not more:
                    return
                head = requests.feed(more)
            if b"expect: 100-continue" not in head.lower():
                # The client sends the body regardless: take it, or it sees a reset
                # instead of our answer.
                while requests.body_left > 0:
                    more = client.recv(min(_CHUNK, requests.body_left))
                    if not more:
                        return
                    requests.body_left -= len(more)
            body = _SLOWDOWN_BODY if status == 503 else b""
            reason = {503: "Slow Down", 500: "Internal Server Error"}.get(status, "Error")
            client.sendall(
                f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/xml\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
                + body
            )
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                client.close()

    def _pump_down(self, upstream: socket.socket, client: socket.socket) -> None:
        while True:
            try:
                data = upstream.recv(_CHUNK)
            except OSError:
                return
            if not data:
                with contextlib.suppress(OSError):
                    client.shutdown(socket.SHUT_WR)
                return
            with self._lock:
                delay = self._delay
            if delay:
                time.sleep(delay)
            try:
                client.sendall(data)
            except OSError:
                return
