"""The service's commands against a service elsewhere: ``--server URL`` (or
``$SAFEHOLD_SERVER``) with ``--token-file FILE`` (or ``$SAFEHOLD_TOKEN_FILE``).

``plans``, ``runs`` (``jobs``), ``plan run|pause|resume`` and ``restore-points`` then ask
the service's REST API instead of opening its catalog, and print the same lines and the
same ``--json``. The token decides the project. An API error becomes the safehold error
its status stands for, with the service's message and hint, and that error's exit code.
"""

from __future__ import annotations

import argparse
import os
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

from safehold.errors import (
    Conflict,
    DatabaseUnreachable,
    ExitCode,
    Forbidden,
    NotFound,
    SafeholdError,
    Unauthenticated,
    UsageError,
)

__all__ = ["RemoteService", "remote_from", "with_times"]

TIMES = ("queued_at", "started_at", "ended_at", "slot_at", "next_slot", "last_slot",
         "last_success", "taken_at", "held_at", "forgotten_at", "at", "created_at")  # fmt: skip


class _ServiceError(SafeholdError):
    """An error the service answered that no other class stands for."""

    exit_code = ExitCode.FAILURE


_BY_STATUS: dict[int, type[SafeholdError]] = {
    400: UsageError, 401: Unauthenticated, 403: Forbidden, 404: NotFound, 409: Conflict,
    422: UsageError, 503: DatabaseUnreachable,
}  # fmt: skip


class RemoteService:
    """A client of one service's API, with one token."""

    def __init__(self, server: str, token: str) -> None:
        if not server.startswith(("http://", "https://")):
            raise UsageError(
                f"--server {server!r} is not an http:// or https:// URL",
                hint="e.g. https://backup.example.com:8808",
            )
        self.server = server.rstrip("/")
        self.client = httpx.Client(
            base_url=self.server, headers={"Authorization": f"Bearer {token}"}, timeout=60
        )

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        """One call to ``/api/v1`` + ``path``; its JSON, or the error it stands for."""
        try:
            reply = self.client.request(method, "/api/v1" + path, **kwargs)
        except httpx.HTTPError as exc:
            raise DatabaseUnreachable(
                f"the service at {self.server} cannot be reached ({type(exc).__name__})",
                hint="check --server, and that 'safehold serve' runs there",
            ) from None
        if reply.status_code >= 400:
            try:
                error = reply.json()["error"]
                message, hint = str(error["message"]), error.get("hint")
            except (ValueError, KeyError, TypeError):
                message, hint = f"the service answered HTTP {reply.status_code}", None
            raise _BY_STATUS.get(reply.status_code, _ServiceError)(message, hint=hint)
        if reply.status_code == 204 or not reply.content:
            return None
        return reply.json()

    def project(self) -> str:
        """The token's project."""
        found = self.call("GET", "/projects")
        return str(found[0]["name"]) if found else "default"


def remote_from(args: argparse.Namespace) -> RemoteService | None:
    """The remote service the options or the environment name (None: the local catalog)."""
    server = getattr(args, "server", None) or os.environ.get("SAFEHOLD_SERVER")
    if not server:
        return None
    token_file = getattr(args, "token_file", None) or os.environ.get("SAFEHOLD_TOKEN_FILE")
    if not token_file:
        raise UsageError(
            "--server needs a token: --token-file FILE (or $SAFEHOLD_TOKEN_FILE)",
            hint="make one on the service's machine: safehold token create --role viewer",
        )
    try:
        token = Path(token_file).read_text(encoding="utf-8").strip().splitlines()[0]
    except (OSError, IndexError):
        raise UsageError(f"cannot read a token from {token_file}") from None
    return RemoteService(server, token)


def with_times(row: dict[str, Any]) -> dict[str, Any]:
    """``row`` with its ISO times as datetimes, as the local catalog gives them."""
    for key in TIMES:
        value = row.get(key)
        if isinstance(value, str):
            row[key] = datetime.fromisoformat(value)
    return row
