"""The OpenAPI document fuzzed with schemathesis against the real API: every operation,
with data that fits the schema and data that does not, answers without a server error
and as the document says (status codes, content types, bodies)."""

from __future__ import annotations

import json

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.core.parameters import ParameterLocation
from schemathesis.specs.openapi.checks import positive_data_acceptance

from tests.api.conftest import Api
from tests.conftest import ROOT

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("api_database")]


# The committed document (test_openapi.py keeps it the served one). Not schemathesis's
# lazy fixture loader: it reaches into pytest internals that pytest 9 no longer has.
schema = schemathesis.openapi.from_dict(json.loads((ROOT / "docs" / "openapi.json").read_text()))


@schema.parametrize()
@settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
def test_every_operation(case: schemathesis.Case, api: Api) -> None:
    # A cursor is opaque: one the API did not give is refused (400) however well it fits
    # the schema's string.
    excluded = [positive_data_acceptance] if "cursor" in (case.query or {}) else []
    # A case that leaves the token out on purpose is sent without one (and must be 401).
    dropped = case.meta is not None and case.meta.is_negative_at(ParameterLocation.HEADER)
    token = {} if dropped else {"Authorization": f"Bearer {api.tokens['default', 'admin']}"}
    case.call_and_validate(base_url=api.url, headers=token, excluded_checks=excluded)
