"""The dashboard's tests reuse the API's: a real uvicorn over a real catalog, tokens of
every role in two projects."""

from __future__ import annotations

import os
from typing import Any

import pytest

from tests.api.conftest import Api, api, make_state_dir, private_cluster

__all__ = ["Api", "api", "make_state_dir", "private_cluster"]

CHROMIUM = "/usr/bin/chromium"


@pytest.fixture(scope="session")
def browser_type_launch_args() -> dict[str, Any]:
    """Debian's chromium, headless: Playwright's own browser download is not reachable
    here (scripts/test-deps.sh installs the package). ``--no-sandbox``: the tests may run
    as root, where chromium's sandbox refuses to start."""
    if not os.path.exists(CHROMIUM):
        pytest.fail(f"{CHROMIUM} is missing: run scripts/test-deps.sh (it installs chromium)")
    return {"executable_path": CHROMIUM, "headless": True, "args": ["--no-sandbox"]}


@pytest.fixture(scope="session")
def browser_context_args() -> dict[str, Any]:
    """A fixed window and locale, so that screenshots do not change for nothing."""
    return {"viewport": {"width": 1100, "height": 800}, "locale": "en-GB",
            "timezone_id": "UTC", "reduced_motion": "reduce"}  # fmt: skip
