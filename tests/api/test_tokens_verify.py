"""Several tokens checked in one go (a browser session of several projects) answer as each
checked alone: the valid ones with their project and role, every other kind None."""

from __future__ import annotations

import pytest
from sqlalchemy import text

from safehold.api.tokens import create_token, revoke_token, verify_token, verify_tokens
from safehold.catalog import TokenRole
from tests.api.conftest import Api

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("api_database")]


def test_tokens_checked_together_answer_as_each_alone(api: Api) -> None:
    viewer = create_token(api.engine, project="default", role="viewer", name="v")
    admin = create_token(api.engine, project="beta", role="admin", name="a")
    revoked = create_token(api.engine, project="default", role="admin", name="r")
    revoke_token(api.engine, revoked.info.id)
    wrong_secret = viewer.token[:-4] + ("AAAA" if not viewer.token.endswith("AAAA") else "BBBB")
    unknown_id = "shk_" + "0" * 16 + viewer.token[len("shk_") + 16 :]
    tokens = [viewer.token, "not a token", admin.token, revoked.token, unknown_id, wrong_secret]
    with api.engine.begin() as db:
        db.execute(
            text("UPDATE tokens SET last_used_at = NULL WHERE id = ANY(:ids)"),
            {"ids": [viewer.info.id, admin.info.id]},
        )

    together = verify_tokens(api.engine, tokens)

    assert together == [verify_token(api.engine, token) for token in tokens]
    assert [who and (who.token_id, who.project, who.role) for who in together] == [
        (viewer.info.id, "default", TokenRole.VIEWER),
        None,
        (admin.info.id, "beta", TokenRole.ADMIN),
        None,
        None,
        None,
    ]
    with api.engine.connect() as db:
        used = db.execute(
            text("SELECT id FROM tokens WHERE id = ANY(:ids) AND last_used_at IS NOT NULL"),
            {"ids": [viewer.info.id, admin.info.id, revoked.info.id]},
        ).scalars()
        assert sorted(used) == sorted([viewer.info.id, admin.info.id])
    assert verify_tokens(api.engine, []) == []
