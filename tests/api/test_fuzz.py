"""The OpenAPI document fuzzed with schemathesis against the real API: every operation,
with data that fits the schema and data that does not, answers without a server error
and as the document says (status codes, content types, bodies).

The operations are parametrized here rather than by schemathesis's pytest plugin: its
items share one node id, which pytest-xdist's ``--dist loadgroup`` (scripts/test.sh)
takes for one test and runs once.
"""

from __future__ import annotations

import json

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.core.parameters import ParameterLocation
from schemathesis.generation.modes import GenerationMode
from schemathesis.specs.openapi.checks import positive_data_acceptance

from tests.api.conftest import Api
from tests.conftest import ROOT

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("api_database")]

# The committed document (test_openapi.py keeps it the served one).
SCHEMA = schemathesis.openapi.from_dict(json.loads((ROOT / "docs" / "openapi.json").read_text()))
OPERATIONS = [result.ok() for result in SCHEMA.get_all_operations()]
FREE_BLOCKS = {
    "POST /api/v1/plans", "PUT /api/v1/plans/{name}", "POST /api/v1/destinations",
    "PATCH /api/v1/destinations/{name}", "POST /api/v1/endpoints", "PATCH /api/v1/endpoints/{name}",
}  # fmt: skip
# Negative data for every operation that takes any (a route without parameters, body or
# token has nothing to get wrong).
CASES = [
    pytest.param(op, mode, id=f"{op.label} {mode}")
    for op in OPERATIONS
    for mode in GenerationMode
    if mode.is_positive or set(op.definition.raw) & {"parameters", "requestBody", "security"}
]


@pytest.mark.parametrize(("operation", "mode"), CASES)
def test_every_operation(operation: schemathesis.APIOperation, mode: GenerationMode,
                         api: Api) -> None:  # fmt: skip
    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck),
              database=None)  # fmt: skip
    def fuzz(case: schemathesis.Case) -> None:
        # A cursor is opaque: one the API did not give is refused (400) however well it
        # fits the schema's string.
        excluded = [positive_data_acceptance] if "cursor" in (case.query or {}) else []
        # A destination's or a plan's block is checked by the configuration's own rules
        # (which keys go together, what a source type takes), which no JSON schema states:
        # a block that fits the schema may still be refused (400, naming the key).
        if operation.label in FREE_BLOCKS:
            excluded = [positive_data_acceptance]
        # This service has no repository (the fixture's file names one never made): a
        # resync, which reads it, must fail, and says so with 502 (documented).
        if operation.label == "POST /api/v1/catalog/resync":
            excluded = [not_a_server_error]
        # A case that leaves the token out on purpose is sent without one (and must be 401).
        dropped = case.meta is not None and case.meta.is_negative_at(ParameterLocation.HEADER)
        token = {} if dropped else {"Authorization": f"Bearer {api.tokens['default', 'admin']}"}
        case.call_and_validate(base_url=api.url, headers=token, excluded_checks=excluded)

    fuzz()
