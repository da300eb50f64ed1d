"""Ping URLs in the healthchecks.io / cronitor style: a plain GET at a run's start, on its
success and on its failure, so that an outside dead-man switch notices a silent plan.

A ping is tried a few times with back-off; a failure raises :class:`DeliveryError` with
the URL masked (the URL is the credential: anyone holding it can ping).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import httpx

from safehold.notify.base import DeliveryError, mask

__all__ = ["ping", "ping_label"]


def ping_label(url: str) -> str:
    """``ping:SCHEME://HOST``: the path (the check's id) is a secret."""
    found = httpx.URL(url)
    return f"ping:{found.scheme}://{found.host}"


def ping(
    url: str,
    *,
    body: str = "",
    timeout: float = 10.0,
    tries: int = 3,
    backoff: float = 0.5,
    sleep: Callable[[float], None] = time.sleep,
) -> None:
    """Hit ``url`` (GET, or POST with ``body`` as healthchecks takes a failure's log)."""
    wait = backoff
    problem = "not tried"
    for attempt in range(1, max(tries, 1) + 1):
        try:
            if body:
                answer = httpx.post(url, content=body.encode()[:10_000], timeout=timeout)
            else:
                answer = httpx.get(url, timeout=timeout)
        except httpx.HTTPError as exc:
            problem = f"{type(exc).__name__}: {exc}"
        else:
            if answer.status_code < 300:
                return
            problem = f"HTTP {answer.status_code}"
            if answer.status_code < 500:
                break
        if attempt < tries:
            sleep(wait)
            wait *= 2
    raise DeliveryError(
        f"{ping_label(url)}: {mask(problem, [url])}",
        hint="check the plan's ping: URLs and that the monitoring service is reachable",
    )
