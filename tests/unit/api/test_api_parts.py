"""The API's pure parts: the limit on failed token checks (under a fake clock), cursors,
``--listen``, error codes."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from safehold.api.auth import FailureLimiter
from safehold.api.cursor import decode_cursor, encode_cursor
from safehold.api.errors import error_code
from safehold.api.server import bind, parse_listen
from safehold.clock import FakeClock
from safehold.errors import RequestTooLarge, TooManyRequests, UsageError


def test_failures_are_counted_per_address_in_a_sliding_window() -> None:
    clock = FakeClock()
    limiter = FailureLimiter(limit=3, window=60, clock=clock)
    for _ in range(3):
        limiter.check("a")
        limiter.fail("a")
        clock.advance(10)
    with pytest.raises(TooManyRequests) as refused:
        limiter.check("a")
    assert refused.value.retry_after == 30  # the first failure leaves the window in 30 s
    limiter.check("b")  # another address is not concerned
    clock.advance(30)
    limiter.check("a")  # one failure has left the window
    limiter.fail("a")
    with pytest.raises(TooManyRequests):
        limiter.check("a")


def test_the_addresses_remembered_are_bounded() -> None:
    limiter = FailureLimiter(limit=1, window=60, addresses=2, clock=FakeClock())
    for address in ("a", "b", "c"):
        limiter.fail(address)
    limiter.check("a")  # forgotten: the oldest of three
    for address in ("b", "c"):
        with pytest.raises(TooManyRequests):
            limiter.check(address)


def test_a_cursor_round_trips_and_a_foreign_one_is_a_usage_error() -> None:
    at = datetime(2026, 12, 6, 23, 0, 0, 123456, tzinfo=UTC)
    assert decode_cursor(encode_cursor(at, "some-id")) == (at, "some-id")
    for foreign in ("", "garbage", encode_cursor(at, "x")[:-3], "W10", "WzEsMl0"):
        with pytest.raises(UsageError, match="cursor"):
            decode_cursor(foreign)


def test_listen_addresses() -> None:
    assert parse_listen("127.0.0.1:8808") == ("127.0.0.1", 8808)
    assert parse_listen("[::1]:0") == ("::1", 0)
    for wrong in ("8808", "host:", ":80", "host:99999", "host:http"):
        with pytest.raises(UsageError):
            parse_listen(wrong)


def test_error_codes_are_the_class_names_in_snake_case() -> None:
    assert error_code(RequestTooLarge) == "request_too_large"
    assert error_code(UsageError) == "usage_error"


def test_the_listening_socket_sends_small_writes_at_once() -> None:
    """TCP_NODELAY on the listening socket (accepted connections inherit it): without it
    every response's body waited for the client's delayed ACK, 40 ms a call."""
    import socket

    sock = bind("127.0.0.1:0")
    try:
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
        client = socket.create_connection(sock.getsockname())
        accepted, _ = sock.accept()
        try:
            assert accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
        finally:
            accepted.close()
            client.close()
    finally:
        sock.close()
