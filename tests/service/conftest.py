"""The private cluster's fixtures (tests/servers/private_cluster.py)."""

from __future__ import annotations

from tests.servers.private_cluster import make_state_dir, private_cluster

__all__ = ["make_state_dir", "private_cluster"]
