"""The private cluster's fixtures (tests/servers/private_cluster.py)."""

from __future__ import annotations

from tests.servers.private_cluster import private_cluster

__all__ = ["private_cluster"]
