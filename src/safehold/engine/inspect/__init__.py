"""Inspect: reading snapshots without restoring them.

- ``diff.py``: ``diff_trees`` compares two snapshots' trees;
- ``stats.py``: ``compute_stats`` and ``list_chains`` count what snapshots hold and store;
- ``find.py``: ``find_in_snapshot`` searches snapshots with the backup's patterns;
- ``mount.py``: ``serve`` offers snapshots as a read-only file system through FUSE;
  ``mount_view.py`` (``MountView``) is the part that knows nothing of FUSE.

They walk snapshot trees through ``engine/tree_walk.py`` or load trees directly. Callers
import the module of their use case: each is its own command, and none should pay at start
for loading the others.
"""
