"""Maintain: the use cases that keep a repository healthy and its history in shape.

- ``forget.py``: ``run_forget`` removes snapshots by id or retention policy (then prune, in
  the repository, frees what nothing needs);
- ``verify.py``: ``run_check`` and ``run_repair_index``, the repository's check and index
  repair with the engine's progress;
- ``copy.py``: ``copy_snapshots`` copies snapshots between repositories, blob by verified
  blob;
- ``tag.py``: ``run_tag`` rewrites snapshots' tags (a new snapshot, then the old one
  removed, as forget removes it).

Callers import the module of their use case: these are unrelated commands, and a package
that imported all of them would make ``check`` load forget's and copy's modules, prune's
with them, at every start.
"""
