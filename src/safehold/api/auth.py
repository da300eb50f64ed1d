"""Who a request is, and what its role allows: bearer tokens, roles, and the limit on
failed token checks.

A request carries ``Authorization: Bearer shk_<id>_<secret>`` (:mod:`.tokens`). A token
that is missing, malformed, unknown, revoked or wrong is one answer, 401
``unauthenticated``: the reply never helps to tell them apart. Each wrong token counts
against the client's address; after :attr:`FailureLimiter.limit` failures within
:attr:`FailureLimiter.window` seconds, every token check from that address answers 429
``too_many_requests`` with ``Retry-After`` until the oldest failure leaves the window. A
token guessed at that pace would take longer than the universe has (a 256-bit secret);
the limit is there to keep a flood of checks from costing the service.

Roles (:class:`~safehold.catalog.TokenRole`) within the token's project: ``viewer`` reads,
``operator`` also runs, pauses, resumes and cancels, ``admin`` also manages tokens;
``agent`` has no use of these routes (its own jobs come later). A role that does not
allow a call is 403 ``forbidden``; an object of another project is 404, as if it did not
exist, whatever the role.
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict, deque
from collections.abc import Callable
from typing import Annotated

from fastapi import Depends, Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from safehold.api.state import api_state
from safehold.api.tokens import Principal, verify_token
from safehold.catalog import TokenRole
from safehold.clock import SYSTEM_CLOCK, Clock
from safehold.errors import Forbidden, TooManyRequests, Unauthenticated

__all__ = ["Admin", "FailureLimiter", "Operator", "Reader", "principal", "require"]

_bearer = HTTPBearer(auto_error=False, description="a token from `safehold token create`")


class FailureLimiter:
    """Failed token checks per client address, in a sliding window (thread-safe: token
    checks run in FastAPI's thread pool)."""

    def __init__(
        self,
        limit: int = 10,
        window: float = 60.0,
        *,
        addresses: int = 10_000,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.limit = limit
        self.window = window
        self.clock = clock
        self.addresses = addresses  # remembered at most: a flood of addresses stays bounded
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()
        self._lock = threading.Lock()

    def check(self, address: str) -> None:
        """Raise :class:`TooManyRequests` while ``address`` has used up its failures."""
        now = self.clock.monotonic()
        with self._lock:
            failures = self._failures.get(address)
            if failures is None:
                return
            while failures and failures[0] <= now - self.window:
                failures.popleft()
            if len(failures) >= self.limit:
                wait = math.ceil(failures[0] + self.window - now)
                raise TooManyRequests(
                    "too many failed token checks from this address",
                    hint=f"check the token, then try again in {wait} s",
                    retry_after=max(1, wait),
                )

    def fail(self, address: str) -> None:
        """Count a failed token check from ``address``."""
        with self._lock:
            failures = self._failures.pop(address, None) or deque(maxlen=self.limit)
            failures.append(self.clock.monotonic())
            self._failures[address] = failures  # the most recent at the end
            while len(self._failures) > self.addresses:
                self._failures.popitem(last=False)


def principal(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Security(_bearer)],
) -> Principal:
    """The token's principal, or 401 (429 for an address with too many failures)."""
    state = api_state(request)
    address = request.client.host if request.client else "unknown"
    state.limiter.check(address)
    if credentials is None:
        raise Unauthenticated(
            "this call needs a token",
            hint="send 'Authorization: Bearer TOKEN' (make one with: safehold token create)",
        )
    found = verify_token(state.engine, credentials.credentials)
    if found is None:
        state.limiter.fail(address)
        raise Unauthenticated(
            "the token is not valid (unknown, revoked or mistyped)",
            hint="make a new one with: safehold token create",
        )
    return found


def require(*roles: TokenRole) -> Callable[[Principal], Principal]:
    """A dependency: the principal, if its role is one of ``roles`` (else 403)."""

    def allowed(who: Annotated[Principal, Depends(principal)]) -> Principal:
        if who.role not in roles:
            raise Forbidden(
                f"a token of role {who.role.value} may not do this",
                hint="it needs one of: " + ", ".join(r.value for r in roles),
            )
        return who

    return allowed


Reader = Annotated[
    Principal, Depends(require(TokenRole.ADMIN, TokenRole.OPERATOR, TokenRole.VIEWER))
]
Operator = Annotated[Principal, Depends(require(TokenRole.ADMIN, TokenRole.OPERATOR))]
Admin = Annotated[Principal, Depends(require(TokenRole.ADMIN))]
