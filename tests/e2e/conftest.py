"""The private cluster's fixtures for the end-to-end tests of ``safehold serve``."""

from __future__ import annotations

from tests.servers.private_cluster import make_state_dir

__all__ = ["make_state_dir"]
