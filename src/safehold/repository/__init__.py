"""The repository: safehold's on-storage format and nothing else.

Concepts (specified byte by byte in docs/format.md):

* **blob** — a chunk of file data or a tree (folder listing), compressed then sealed, named
  by the keyed BLAKE3 hash of its plaintext;
* **pack** — many blobs in one stored object, with a sealed header that lists them, so the
  index can always be rebuilt from the packs alone;
* **index** — which blob lives in which pack, at which offset;
* **snapshot** — one backup: its root tree, time, host, paths, tags and chain;
* **chain** — a run of snapshots that deduplicate against each other and nothing else;
* **lock** — a marker saying a process is using the repository.

Write order is packs -> index -> snapshot, so a crash leaves nothing a reader can see as a
snapshot until every byte it needs is stored.
"""
