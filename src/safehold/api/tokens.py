"""The API's bearer tokens in the catalog: made, listed, revoked and checked.

A token reads ``shk_<id>_<secret>``: ``id`` (16 hex digits) finds its row, ``secret`` is
32 random bytes (base64url) of which only the SHA-256 is stored. A fast hash is right for
a secret this long: there is no dictionary to try, unlike a password, and a check costs
one hash, so a flood of bad tokens costs the service little. The comparison is constant
time (:func:`hmac.compare_digest`). The clear token exists only in :class:`NewToken`,
returned once to whoever made it; nothing here logs it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, text

from safehold.catalog import TokenRole
from safehold.errors import NotFound, UsageError

__all__ = [
    "PREFIX",
    "NewToken",
    "Principal",
    "TokenInfo",
    "check_project",
    "create_token",
    "list_tokens",
    "revoke_token",
    "verify_token",
    "verify_tokens",
]

PREFIX = "shk"
_TOKEN = re.compile(r"shk_([0-9a-f]{16})_([A-Za-z0-9_-]{43})")
_PROJECT = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
# last_used_at is written at most this often per token: a read-only API call should not
# be a write each time.
_USED_EVERY = "60 seconds"


@dataclass(frozen=True)
class Principal:
    """Who a request is: a token's id, project and role."""

    token_id: str
    project: str
    role: TokenRole


@dataclass(frozen=True)
class TokenInfo:
    """A token as listed: everything but its secret, which is not kept."""

    id: str
    project: str
    role: str
    name: str
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None

    def to_json(self) -> dict[str, Any]:
        """The token as ``token list --json`` and the API show it."""
        return {
            "id": self.id,
            "project": self.project,
            "role": self.role,
            "name": self.name,
            "created_at": self.created_at,
            "last_used_at": self.last_used_at,
            "revoked_at": self.revoked_at,
        }


@dataclass(frozen=True)
class NewToken:
    """A token just made: its row, and the clear token, shown this once."""

    info: TokenInfo
    token: str = field(repr=False)


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode("ascii")).hexdigest()


def check_project(name: str) -> str:
    """``name`` if it may be a token's project: 1-64 letters, digits, '.', '_' or '-',
    starting with a letter or digit (``_repository``, the prune plans', is the service's)."""
    if not _PROJECT.fullmatch(name):
        raise UsageError(
            f"{name!r} is not a project name",
            hint="1-64 letters, digits, '.', '_' or '-', starting with a letter or digit",
        )
    return name


def check_role(role: str) -> TokenRole:
    """``role`` as a :class:`TokenRole`."""
    try:
        return TokenRole(role)
    except ValueError:
        raise UsageError(
            f"{role!r} is not a role", hint="one of: " + ", ".join(r.value for r in TokenRole)
        ) from None


def create_token(engine: Engine, *, project: str, role: str, name: str = "") -> NewToken:
    """Make a token of ``role`` in ``project`` (recorded as a project if new)."""
    check_project(project)
    checked = check_role(role)
    token_id = secrets.token_hex(8)
    secret = base64.urlsafe_b64encode(secrets.token_bytes(32)).rstrip(b"=").decode("ascii")
    with engine.begin() as db:
        db.execute(
            text("INSERT INTO projects (name) VALUES (:p) ON CONFLICT DO NOTHING"),
            {"p": project},
        )
        row = db.execute(
            text(
                "INSERT INTO tokens (id, project, role, name, secret_sha256) "
                "VALUES (:id, :p, :role, :name, :h) RETURNING " + _COLUMNS
            ),
            {"id": token_id, "p": project, "role": checked.value, "name": name,
             "h": _digest(secret)},
        ).one()  # fmt: skip
    return NewToken(TokenInfo(*row), f"{PREFIX}_{token_id}_{secret}")


_COLUMNS = "id, project, role, name, created_at, last_used_at, revoked_at"


def list_tokens(engine: Engine, *, project: str | None = None) -> list[TokenInfo]:
    """The tokens, of one project or all, oldest first; revoked ones included."""
    with engine.connect() as db:
        rows = db.execute(
            text(
                f"SELECT {_COLUMNS} FROM tokens "
                "WHERE CAST(:p AS text) IS NULL OR project = :p ORDER BY created_at, id"
            ),
            {"p": project},
        ).all()
    return [TokenInfo(*row) for row in rows]


def revoke_token(engine: Engine, token_id: str, *, project: str | None = None) -> TokenInfo:
    """Revoke the token ``token_id`` (of ``project`` when given: another project's is not
    found); revoking twice keeps the first time."""
    with engine.begin() as db:
        row = db.execute(
            text(
                "UPDATE tokens SET revoked_at = coalesce(revoked_at, now()) WHERE id = :id "
                f"AND (CAST(:p AS text) IS NULL OR project = :p) RETURNING {_COLUMNS}"
            ),
            {"id": token_id, "p": project},
        ).one_or_none()
    if row is None:
        raise NotFound(f"no token {token_id!r}", hint="list them with: safehold token list")
    return TokenInfo(*row)


def verify_token(engine: Engine, token: str) -> Principal | None:
    """Who ``token`` is; None when it is malformed, unknown, revoked or wrong (the caller
    answers all four alike)."""
    return verify_tokens(engine, [token])[0]


def verify_tokens(engine: Engine, tokens: Sequence[str]) -> list[Principal | None]:
    """:func:`verify_token` of each of ``tokens``, in one transaction (a browser session
    holds the tokens of several projects and checks them all on every request)."""
    parsed = [_TOKEN.fullmatch(token) for token in tokens]
    ids = [found.group(1) for found in parsed if found is not None]
    if not ids:
        return [None] * len(tokens)  # none is even shaped like a token: no query
    with engine.begin() as db:
        found_rows = db.execute(
            text(
                "SELECT id, project, role, secret_sha256 FROM tokens "
                "WHERE id = ANY(:ids) AND revoked_at IS NULL"
            ),
            {"ids": ids},
        )
        rows: dict[str, Any] = {row[0]: row[1:] for row in found_rows}
        out: list[Principal | None] = []
        for found in parsed:
            if found is None:
                out.append(None)
                continue
            token_id, secret = found.groups()
            row = rows.get(token_id)
            # The hash is compared even when there is no row, so that an unknown id takes
            # as long as a wrong secret.
            expected = row[2] if row is not None else "0" * 64
            if not hmac.compare_digest(_digest(secret), expected) or row is None:
                out.append(None)
                continue
            out.append(Principal(token_id, row[0], TokenRole(row[1])))
        used = sorted({who.token_id for who in out if who is not None})
        if used:
            db.execute(
                text(
                    "UPDATE tokens SET last_used_at = now() WHERE id = ANY(:ids) AND "
                    f"(last_used_at IS NULL OR last_used_at < now() - interval '{_USED_EVERY}')"
                ),
                {"ids": used},
            )
    return out
