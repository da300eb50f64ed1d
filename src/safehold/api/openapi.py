"""The API's OpenAPI document, as committed in docs/openapi.json.

``python -m safehold.api.openapi > docs/openapi.json`` writes it again after a change to
the routes or schemas; a test fails while the committed one differs from the served one.
"""

from __future__ import annotations

import json
import sys

from safehold.api.app import create_app

__all__ = ["openapi_text"]


def openapi_text() -> str:
    """The document as committed: indented JSON and a final newline."""
    return json.dumps(create_app().openapi(), indent=2, ensure_ascii=False) + "\n"


if __name__ == "__main__":
    sys.stdout.write(openapi_text())
