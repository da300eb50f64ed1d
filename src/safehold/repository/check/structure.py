"""Structure checks: the config, the key files, the index files and the pack listing."""

from __future__ import annotations

import json

from safehold.crypto.keys import key_file_meta
from safehold.errors import IntegrityError, ObjectNotFound
from safehold.ids import PackId
from safehold.repository.check.report import ERROR, WARNING, why
from safehold.repository.check.state import CheckState
from safehold.repository.format import T_CONFIG, T_INDEX, open_object
from safehold.repository.format import storage_id as hash_name
from safehold.repository.index import IndexLoader
from safehold.repository.repository import RepoConfig, pack_name
from safehold.repository.trash import list_trash

__all__ = ["StructureChecks"]


class StructureChecks(CheckState):
    """Checks that need no pack contents: the config and key files, index files, the packs
    listed against the index, locks, the trash."""

    def check_config_and_keys(self) -> None:
        """Check that the config and every key file can be read."""
        storage = self.repo.storage
        try:
            raw = storage.get("config")
            RepoConfig.from_json(json.loads(open_object(self.repo.aead, raw, T_CONFIG, "config")))
        except (IntegrityError, ObjectNotFound, ValueError, KeyError, TypeError) as exc:
            msg = f"the repository config cannot be read: {why(exc)}"
            hint = "restore the config object from a copy of the repository"
            self.add(ERROR, "config-damaged", "config", msg, hint=hint)
        names = sorted(o.name for o in storage.list("keys/"))
        if self.repo.key_name and self.repo.key_name not in names:
            msg = "the key file this check was opened with is gone"
            hint = "add a key with 'safehold key add' while the repository still opens"
            self.add(ERROR, "key-missing", self.repo.key_name, msg, hint=hint)
        for name in names:
            try:
                raw = storage.get(name)
                if hash_name(raw) != name.removeprefix("keys/"):
                    raise IntegrityError(f"{name} does not match its name")
                key_file_meta(raw)
            except ObjectNotFound:
                continue  # removed while we listed
            except IntegrityError as exc:
                msg = (
                    f"the key file is damaged or malformed ({exc.message}): no password "
                    "opens the repository through it"
                )
                hint = "if its password matters, add a new key with 'safehold key add'; then "
                hint += "remove this one with 'safehold key remove'"
                self.add(ERROR, "key-damaged", name, msg, hint=hint)

    def load_index(self) -> None:
        """Load every index file into the check's own index, reporting those that cannot be read;
        a file prune replaced meanwhile is followed to its replacement."""
        loaded: set[str] = set()
        loader = IndexLoader()
        # Prune writes a replacement index before deleting the old file: when a file
        # vanishes under us, a fresh listing shows what replaced it.
        for _attempt in range(3):
            vanished = False
            for name in self.repo.list_index_files():
                if name in loaded:
                    continue
                try:
                    listed = loader.add_file(self.repo.load_object(name, T_INDEX), name)
                except ObjectNotFound:
                    vanished = True
                    continue
                except IntegrityError as exc:
                    listed = []
                    msg = (
                        f"the index file is damaged ({exc.message}); "
                        "the packs it lists are unknown until the index is rebuilt"
                    )
                    hint = "run 'safehold repair index': it rebuilds the index from the packs"
                    self.add(ERROR, "index-damaged", name, msg, hint=hint)
                loaded.add(name)
                for pack_id in listed:
                    self.index_file_of.setdefault(pack_id, name)
            if not vanished:
                break
        # Sorted once (IndexLoader), not added pack by pack and merged afterwards.
        self.index = loader.finish()
        self.blob_marks = self.index.run_marks()
        self.report.index_files = len(loaded)

    def check_packs(self) -> None:
        """List the stored packs and compare them with the index and the trash: missing packs,
        wrong sizes, packs no index lists."""
        self.listed = self.repo.list_packs()
        self.report.packs = len(self.listed)
        damaged: list[str] = []
        self.trashed = {p for rec in list_trash(self.repo, damaged=damaged) for p in rec.packs}
        for name in damaged:
            msg = (
                "the trash record cannot be read; the packs it names (garbage prune was "
                "going to delete) show up as unindexed"
            )
            hint = "delete it; backups adopt its packs and a later prune frees them"
            self.add(ERROR, "trash-damaged", name, msg, hint=hint)
        for pack_id, (indexed_size, blobs) in sorted(self.index.pack_summaries().items()):
            where = self.index_file_of.get(pack_id, "the index")
            size = self.listed.get(pack_id)
            if size is None:
                self.bad_packs[pack_id] = ("pack-missing", "is missing")
                msg = (
                    f"the pack is missing; {where} lists it with {blobs} blobs, "
                    "lost unless another pack holds them (the snapshots and paths that need "
                    "them are listed)"
                )
                self.add(ERROR, "pack-missing", pack_name(pack_id), msg, pack=pack_id.hex())
            elif size != indexed_size:
                self.bad_packs[pack_id] = ("pack-size", "has the wrong size")
                msg = (
                    f"the pack is {size} bytes but {where} records {indexed_size}: "
                    "it was truncated or overwritten"
                )
                hint = "run 'safehold check --read-data' to see which blobs survive"
                self.add(ERROR, "pack-size", pack_name(pack_id), msg, hint=hint, pack=pack_id.hex())
        for pack_id in sorted(self.listed):
            if pack_id not in self.index.packs and pack_id not in self.trashed:
                self._unindexed(pack_id)

    def _unindexed(self, pack_id: PackId) -> None:
        name = pack_name(pack_id)
        try:
            rec = self.repo.read_pack_header(pack_id, self.listed[pack_id])
        except ObjectNotFound:
            return  # deleted since the listing
        except IntegrityError as exc:
            msg = (
                f"the pack is in no index and its header cannot be read ({exc.message}); "
                "nothing reads it: 'safehold repair index' salvages what any index listed "
                "in it, then it can be deleted by hand (or kept for analysis)"
            )
            self.add(WARNING, "pack-unindexed-damaged", name, msg, pack=pack_id.hex())
            return
        self.extra.add_pack(rec)

    def unindexed_warnings(self) -> None:
        """After the walk, which tells a lost index (snapshots need the pack) from an
        interrupted backup (nothing does yet)."""
        for pack_id, rec in sorted(self.extra.packs.items()):
            if pack_id in self.needed_extra:
                why = "its index file was lost or damaged: snapshots need its blobs"
                hint = "'safehold repair index' adds it back"
            else:
                why = "left by an interrupted backup"
                hint = "the next backup or 'safehold repair index' adopts it"
            msg = f"the pack is in no index ({why}); it holds {len(rec.entries)} blob(s); {hint}"
            self.add(WARNING, "pack-unindexed", pack_name(pack_id), msg, pack=pack_id.hex())
