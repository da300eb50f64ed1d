"""The dashboard's tests reuse the API's: a real uvicorn over a real catalog, tokens of
every role in two projects."""

from __future__ import annotations

from tests.api.conftest import Api, api, make_state_dir, private_cluster

__all__ = ["Api", "api", "make_state_dir", "private_cluster"]
