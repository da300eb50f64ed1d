"""``safehold key``: list, add and remove the passwords (key files) that open a repository.

Every key file wraps the same master key, so adding or removing one never touches data.
``passwd`` adds the new key before it removes the old one: a crash between the two leaves
two working keys, never none. For the same reason neither changes who can read the data:
the epilog below says so, and how to get a new master key (docs/format.md, "Keys").
"""

from __future__ import annotations

import argparse
from typing import Any

from safehold.cli.cmd_init import add_kdf_option, kdf_params
from safehold.cli.context import Context, read_password
from safehold.crypto.keys import KdfParams, open_key_file
from safehold.errors import IntegrityError, UsageError, WrongPassword
from safehold.repository.repository import Repository

NEW_PASSWORD_ENV = "SAFEHOLD_NEW_PASSWORD"

EPILOG = """\
what removing a key does not do:
  Every key file holds the same master key, which never changes: 'key remove' and
  'key passwd' delete a key file, not the key in it. Anyone who kept a copy of an old
  key file and knows its password still opens the repository and reads everything in
  it, old and new; so does anyone who took the master key from a machine that had the
  repository open. Removing a key revokes a password only from someone who never had a
  copy of its key file.

to shut out a removed key for new data, start a new repository (a new master key):
  safehold -r NEW init                      # new master key, new password
  safehold -r OLD copy --to NEW             # re-encrypts every snapshot under it
  safehold -r NEW check --read-data
  then back up to NEW only, and delete OLD where it is stored. Data already in OLD stays
  readable to whoever copied it with an old key; change the storage credentials too if
  they were shared.
"""


def register(sub: Any) -> None:
    """Add ``key`` and its subcommands (list, add, remove, passwd) to the parser."""
    p: argparse.ArgumentParser = sub.add_parser(
        "key",
        help="list, add or remove passwords (keys)",
        description="Manage the keys of a repository. Each key is the repository's master "
        "key wrapped by one password; any key opens the repository.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    actions = p.add_subparsers(dest="key_action", metavar="ACTION", required=True)

    ls = actions.add_parser("list", help="list keys", description="List the repository's keys.")
    ls.set_defaults(func=run_list)

    add = actions.add_parser(
        "add",
        help="add a key with a new password",
        description="Add a key that opens the repository with a new password. The new "
        f"password comes from --new-password-file, ${NEW_PASSWORD_ENV} or a prompt.",
    )
    _new_password_options(add)
    add.set_defaults(func=run_add)

    rm = actions.add_parser(
        "remove",
        help="remove a key",
        description="Remove the key ID (a prefix is enough). The key this command was opened "
        "with, and the last key, cannot be removed.",
    )
    rm.add_argument("key_id", metavar="ID", help="key id or unique prefix (see 'key list')")
    rm.set_defaults(func=run_remove)

    pw = actions.add_parser(
        "passwd",
        help="change the password",
        description="Replace the key this command was opened with by one with a new "
        "password: the new key is written (and checked) before the old one is removed. The "
        "master key stays the same: a copy of the old key file still opens the repository "
        "with the old password (see 'safehold key --help').",
    )
    _new_password_options(pw)
    pw.set_defaults(func=run_passwd)


def _new_password_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--new-password-file", metavar="FILE", help="read the new password from FILE")
    add_kdf_option(p)


def read_new_password(password_file: str | None) -> bytes:
    """The new password: --new-password-file, $SAFEHOLD_NEW_PASSWORD, or a prompt (asked
    twice). Never the current password's sources: those open the repository."""
    return read_password(
        password_file,
        None,
        confirm=True,
        prompt="new password",
        env=NEW_PASSWORD_ENV,
        flags="--new-password-file FILE",
    )


def _short(key_name: str) -> str:
    return key_name.removeprefix("keys/")[:8]


def run_list(args: argparse.Namespace, ctx: Context) -> int:
    """``key list``: the repository's key files, the one in use marked."""
    repo = ctx.open_repo()
    keys = repo.list_keys()
    if ctx.json:
        ctx.emit_json(keys)
        return 0
    ctx.print(f"  {'ID':8}  {'Created':19}  {'Host':20}  User")
    for k in keys:
        if "damaged" in k:
            ctx.print(f"! {k['id'][:8]}  damaged: {k['damaged']}")
            continue
        mark = "*" if k["current"] else " "
        created = str(k.get("created", ""))[:19].replace("T", " ")
        ctx.print(
            f"{mark} {k['id'][:8]}  {created:19}  {str(k.get('hostname', ''))[:20]:20}  "
            f"{k.get('username', '')}"
        )
    damaged = sum(1 for k in keys if "damaged" in k)
    note = f"; ! marks {damaged} damaged key file(s) ('key remove ID' removes one)"
    ctx.print(f"{len(keys)} key(s); * marks the key in use" + (note if damaged else ""))
    return 0


def run_add(args: argparse.Namespace, ctx: Context) -> int:
    """``key add``: a key file for another password."""
    kdf = kdf_params(args)
    repo = ctx.open_repo()
    name = _add_checked(repo, read_new_password(args.new_password_file), kdf)
    if ctx.json:
        ctx.emit_json({"added": name.removeprefix("keys/")})
    else:
        ctx.print(f"added key {_short(name)}")
    return 0


def run_remove(args: argparse.Namespace, ctx: Context) -> int:
    """``key remove``: delete a key file, under an exclusive lock."""
    repo = ctx.open_repo()
    with repo.lock("key", exclusive=True):
        name = repo.find_key(args.key_id)
        _remove(repo, name)
    if ctx.json:
        ctx.emit_json({"removed": name.removeprefix("keys/")})
    else:
        ctx.print(f"removed key {_short(name)}")
    return 0


def run_passwd(args: argparse.Namespace, ctx: Context) -> int:
    """``key passwd``: a key file for a new password, then the one in use removed."""
    kdf = kdf_params(args)
    repo = ctx.open_repo()
    new_password = read_new_password(args.new_password_file)
    with repo.lock("key", exclusive=True):
        old = repo.key_name
        new = _add_checked(repo, new_password, kdf)
        # The repository is now open through the new key (same master key), which lets
        # the old one be removed like any other.
        repo.key_name = new
        _remove(repo, old)
    if ctx.json:
        ctx.emit_json({"added": new.removeprefix("keys/"), "removed": old.removeprefix("keys/")})
    else:
        ctx.print(f"password changed: added key {_short(new)}, removed key {_short(old)}")
    return 0


def _add_checked(repo: Repository, password: bytes, kdf: KdfParams) -> str:
    """Add a key, then read it back and open it: a key that was stored damaged must be
    found now, while the password it replaces may still exist."""
    name = repo.add_key(password, kdf=kdf)
    try:
        master = open_key_file(repo.storage.get(name), password)
    except WrongPassword as exc:
        raise IntegrityError(f"the new key {_short(name)} does not open after writing") from exc
    if master != repo.master:
        raise IntegrityError(f"the new key {_short(name)} holds another master key")
    return name


def _remove(repo: Repository, name: str) -> None:
    if len(repo.list_keys()) <= 1:
        raise UsageError(
            "refusing to remove the last key: nothing could open the repository any more"
        )
    repo.remove_key(name)
