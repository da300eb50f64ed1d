"""The committed OpenAPI document (docs/openapi.json) is the one the API serves."""

from __future__ import annotations

import json

import httpx
import pytest

from safehold.api.openapi import openapi_text
from tests.api.conftest import Api
from tests.conftest import ROOT

COMMITTED = ROOT / "docs" / "openapi.json"
REGENERATE = "uv run --frozen python -m safehold.api.openapi > docs/openapi.json"


def test_the_committed_document_is_the_generated_one() -> None:
    assert COMMITTED.read_text() == openapi_text(), (
        f"docs/openapi.json differs from the API's document; write it again with: {REGENERATE}"
    )


@pytest.mark.slow
@pytest.mark.xdist_group("api_database")
def test_the_served_document_is_the_committed_one(api: Api) -> None:
    served = httpx.get(f"{api.url}/openapi.json", timeout=30)
    assert served.status_code == 200
    assert served.json() == json.loads(COMMITTED.read_text()), (
        f"the served OpenAPI document differs from docs/openapi.json; write it with: {REGENERATE}"
    )
