"""Excludes and restore selections compared with restic 0.14 on the same tree, case by case.

For each case restic's ``backup --dry-run -vv`` lists what it would save, and safehold's
backup saves a snapshot whose paths are listed; the two sets must be equal (folders end in
``/``, as restic prints them). Restores are compared the same way: restic's ``restore
--include/--exclude`` and safehold's, listed from their targets. The command line's own
options (``--exclude-file``, ``--files-from`` and its kin, ``--dry-run --json``) are
compared through ``safehold`` itself.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from safehold.engine.backup import BackupOptions, run_backup
from safehold.engine.backup.preview import preview_backup
from safehold.engine.restore import RestoreOptions, run_restore
from safehold.engine.tree_walk import walk
from safehold.errors import UsageError
from safehold.repository.repository import Repository
from safehold.repository.snapshot import Snapshot
from safehold.storage.local import LocalStorage
from safehold.storage.memory import MemoryStorage
from tests.conftest import FAST_KDF, PASSWORD, CliRunner
from tests.servers import need_binary

SIGNATURE = "Signature: 8a477f597d28d172789f06886806bc55"
# restic -vv: "new       /path, saved in 0.001s (...)", or "unchanged /path" with a parent
_SAVED = re.compile(r"^(?:new|modified|unchanged) +(.+?)(?:, saved in .*)?$", re.MULTILINE)


def make_tree(root: Path) -> Path:
    files = {
        "README.md": b"r",
        "notes.MD": b"n",
        "cache": b"a file named cache",
        "cache2": b"c",
        "docs/sources/x.md": b"x",
        "docs/guide.md": b"g",
        "sub/docs/sources/y.md": b"y",
        "sub/cache/blob": b"b",
        "deep/top.log": b"t",
        "deep/a/b.log": b"b",
        "deep/a/b/c.log": b"c",
        "deep/a/keep.txt": b"k",
        "ct/CACHEDIR.TAG": f"{SIGNATURE}\n# a cache\n".encode(),
        "ct/data": b"d",
        "ct/inner/z": b"z",
        "badct/CACHEDIR.TAG": b"Signature: not the one\n",
        "badct/data": b"d",
        "nb/.nobackup": b"",
        "nb/file": b"f",
        "nb/in/z": b"z",
        "big/large.bin": b"L" * 3000,
        "big/exact.bin": b"E" * 2048,
        "big/small.bin": b"s" * 10,
        "weird/[a]": b"1",
        "weird/a": b"2",
        "weird/a*b": b"3",
        "weird/axb": b"4",
        "weird/-x": b"5",
        "weird/\u00e9t\u00e9.txt": b"6",
        "weird/.hidden": b"7",
        "weird/space name": b"8",
        "weird/100%": b"9",
        "Mixed/Case.TXT": b"m",
    }
    for rel, data in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    (root / "empty").mkdir()
    os.symlink("README.md", root / "link.md")
    return root


@dataclass
class Restic:
    binary: str
    repo: Path
    env: dict[str, str]

    def run(self, *args: str) -> str:
        proc = subprocess.run(
            [self.binary, "-r", str(self.repo), "--no-cache", *args],
            env=self.env,
            capture_output=True,
            text=True,
            check=False,
            timeout=120,
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr
        return proc.stdout + proc.stderr

    def selects(self, *args: str, env: dict[str, str] | None = None) -> set[str]:
        saved_env = self.env
        self.env = {**self.env, **(env or {})}
        try:
            return set(_SAVED.findall(self.run("backup", "--dry-run", "-vv", *args)))
        finally:
            self.env = saved_env


_POLY1305_MASK = bytes.fromhex("ffffff0ffcffff0ffcffff0ffcffff0f")


def _user_key(password: bytes, salt: bytes, n: int, r: int, p: int) -> tuple[bytes, bytes, bytes]:
    """restic's user key (crypto.KDF): an AES-256 key, and Poly1305-AES's k and masked r."""
    out = hashlib.scrypt(password, salt=salt, n=n, r=r, p=p, maxmem=256 << 20, dklen=64)
    return out[:32], out[32:48], bytes(a & b for a, b in zip(out[48:], _POLY1305_MASK, strict=True))


def cheap_restic_key(repo: Path, password: bytes) -> None:
    """Re-seal the repository's only key with scrypt N=1024: restic calibrates its key to
    about half a second of CPU, which every command pays once (about a minute over this
    module, on a busy machine); the key's parameters are read from its file."""
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
    from cryptography.hazmat.primitives.poly1305 import Poly1305

    (old,) = (repo / "keys").iterdir()
    key = json.loads(old.read_bytes())
    enc, _k, _r = _user_key(password, base64.b64decode(key["salt"]), key["N"], key["r"], key["p"])
    data = base64.b64decode(key["data"])
    decryptor = Cipher(algorithms.AES(enc), modes.CTR(data[:16])).decryptor()
    master = decryptor.update(data[16:-16]) + decryptor.finalize()
    json.loads(master)  # the right password: the master key's JSON
    salt, nonce = os.urandom(64), os.urandom(16)
    enc, k, r = _user_key(password, salt, 1024, 8, 1)
    encryptor = Cipher(algorithms.AES(enc), modes.CTR(nonce)).encryptor()
    sealed = encryptor.update(master) + encryptor.finalize()
    aes_k = Cipher(algorithms.AES(k), modes.ECB()).encryptor()
    mac = Poly1305.generate_tag(r + aes_k.update(nonce) + aes_k.finalize(), sealed)
    key.update(N=1024, r=8, p=1, salt=base64.b64encode(salt).decode())
    key["data"] = base64.b64encode(nonce + sealed + mac).decode()
    text = json.dumps(key).encode()
    (repo / "keys" / hashlib.sha256(text).hexdigest()).write_bytes(text)
    old.unlink()


@pytest.fixture(scope="module")
def restic(tmp_path_factory: pytest.TempPathFactory) -> Restic:
    binary = need_binary("restic", "restic")
    base = tmp_path_factory.mktemp("restic")
    env = {**os.environ, "RESTIC_PASSWORD": "x", "HOME": str(base)}
    r = Restic(binary, base / "repo", env)
    r.run("init")
    cheap_restic_key(r.repo, b"x")
    r.run("snapshots")  # restic opens it
    return r


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tree(tmp_path_factory.mktemp("excl") / "tree")


@pytest.fixture(scope="module")
def repo() -> Repository:
    return Repository.init(MemoryStorage(), PASSWORD, kdf=FAST_KDF)


def listed(repo: Repository, snap: Snapshot) -> set[str]:
    """The snapshot's files and folders (restic's dry run names no other kind)."""
    return {
        path + ("/" if node.type == "dir" else "")
        for path, node in walk(repo, snap.tree)
        if node.type in ("file", "dir")
    }


def saved(repo: Repository, root: Path, **options: Any) -> set[str]:
    options.setdefault("host", "h")
    snap = run_backup(repo, BackupOptions(paths=[str(root)], **options)).snapshot
    return listed(repo, snap)


R = "{root}"  # the tree's absolute path, in anchored patterns
CASES: list[tuple[list[str], dict[str, Any]]] = [
    ([], {}),
    (["-e", "docs/sources"], {"excludes": ["docs/sources"]}),
    (["-e", "deep/*.log"], {"excludes": ["deep/*.log"]}),
    (["-e", "cache/"], {"excludes": ["cache/"]}),
    (["-e", f"{R}/*.md"], {"excludes": [f"{R}/*.md"]}),
    (["-e", "*.md"], {"excludes": ["*.md"]}),
    (["-e", "**/a/*.log"], {"excludes": ["**/a/*.log"]}),
    (["-e", "deep/**/*.log"], {"excludes": ["deep/**/*.log"]}),
    (["-e", f"{R}/**/sources"], {"excludes": [f"{R}/**/sources"]}),
    (["-e", "deep/a/b"], {"excludes": ["deep/a/b"]}),
    (["-e", "sub/**"], {"excludes": ["sub/**"]}),
    (["-e", "**/cache"], {"excludes": ["**/cache"]}),
    (["-e", f"{R}/docs/"], {"excludes": [f"{R}/docs/"]}),
    (["-e", "docs/./sources/../sources"], {"excludes": ["docs/./sources/../sources"]}),
    (["-e", f"{R}/deep/*", "-e", f"!{R}/deep/a"], {"excludes": [f"{R}/deep/*", f"!{R}/deep/a"]}),
    (["-e", "*.log", "-e", "!b.log"], {"excludes": ["*.log", "!b.log"]}),
    (["-e", "deep", "-e", "!deep/a"], {"excludes": ["deep", "!deep/a"]}),
    (["-e", "!docs"], {"excludes": ["!docs"]}),
    (["-e", "weird/[a]"], {"excludes": ["weird/[a]"]}),
    (["-e", "weird/\\[a\\]"], {"excludes": ["weird/\\[a\\]"]}),
    (["-e", "weird/a\\*b"], {"excludes": ["weird/a\\*b"]}),
    (["-e", "weird/a?b"], {"excludes": ["weird/a?b"]}),
    (["-e", f"{R}/weird/[^a-m]*"], {"excludes": [f"{R}/weird/[^a-m]*"]}),
    (["-e", ".*"], {"excludes": [".*"]}),
    (
        ["-e", "\u00e9t\u00e9.txt", "-e", "space name"],
        {"excludes": ["\u00e9t\u00e9.txt", "space name"]},
    ),
    (["-e", "100%"], {"excludes": ["100%"]}),
    (["--iexclude", "readme.md"], {"iexcludes": ["readme.md"]}),
    (["--iexclude", "*.md"], {"iexcludes": ["*.md"]}),
    (["--iexclude", "MIXED/case.txt"], {"iexcludes": ["MIXED/case.txt"]}),
    (["-e", "*.md", "--iexclude", "*.TXT"], {"excludes": ["*.md"], "iexcludes": ["*.TXT"]}),
    (["--exclude-caches"], {"exclude_caches": True}),
    (["--exclude-if-present", ".nobackup"], {"exclude_if_present": [".nobackup"]}),
    (
        ["--exclude-if-present", f"CACHEDIR.TAG:{SIGNATURE}"],
        {"exclude_if_present": [f"CACHEDIR.TAG:{SIGNATURE}"]},
    ),
    (
        ["--exclude-if-present", "CACHEDIR.TAG:Signature: not"],
        {"exclude_if_present": ["CACHEDIR.TAG:Signature: not"]},
    ),
    (
        ["--exclude-caches", "--exclude-if-present", ".nobackup", "-e", "*.bin"],
        {"exclude_caches": True, "exclude_if_present": [".nobackup"], "excludes": ["*.bin"]},
    ),
    (
        ["--exclude-if-present", "data", "--exclude-if-present", "CACHEDIR.TAG"],
        {"exclude_if_present": ["data", "CACHEDIR.TAG"]},
    ),
    (["--exclude-larger-than", "2k"], {"exclude_larger_than": 2048}),
    (["--exclude-larger-than", "2047"], {"exclude_larger_than": 2047}),
    (["--exclude-larger-than", "0"], {"exclude_larger_than": 0}),
]


def _fill(value: Any, root: Path) -> Any:
    if isinstance(value, str):
        return value.replace(R, str(root))
    if isinstance(value, list):
        return [_fill(v, root) for v in value]
    if isinstance(value, dict):
        return {k: _fill(v, root) for k, v in value.items()}
    return value


@pytest.mark.parametrize(
    ("restic_args", "options"), CASES, ids=[" ".join(a) or "none" for a, _ in CASES]
)
def test_backup_saves_what_restic_saves(
    restic: Restic,
    tree: Path,
    repo: Repository,
    restic_args: list[str],
    options: dict[str, Any],
) -> None:
    expected = restic.selects(str(tree), *_fill(restic_args, tree))
    got = saved(repo, tree, **{k: _fill(v, tree) for k, v in options.items()})
    assert got == expected, (sorted(got - expected), sorted(expected - got))


def test_a_dry_run_lists_what_the_backup_saves(tree: Path, repo: Repository) -> None:
    options: dict[str, Any] = {"excludes": ["deep/*.log"], "exclude_caches": True}
    preview = preview_backup(repo, BackupOptions(paths=[str(tree)], host="dry", **options))
    assert preview.parent is None
    assert {i.status for i in preview.items} == {"new"}
    dry = {i.path + ("/" if i.type == "dir" else "") for i in preview.items if i.type != "symlink"}
    assert dry == saved(repo, tree, host="dry", **options)
    again = preview_backup(repo, BackupOptions(paths=[str(tree)], host="dry", **options))
    # (The folders above the tree, /tmp, may carry other times by now: other processes.)
    below = [i for i in again.items if i.path == str(tree) or i.path.startswith(f"{tree}/")]
    assert again.parent is not None and {i.status for i in below} == {"unchanged"}
    assert again.summary["bytes_to_read"] == 0
    assert again.summary["files_unchanged"] == sum(1 for i in again.items if i.type == "file")


def test_a_backup_path_the_excludes_take_is_refused(tree: Path, repo: Repository) -> None:
    """restic saves an empty snapshot, silently; safehold says so before writing anything."""
    before = repo.list_snapshots()
    for options in (
        {"excludes": ["tree"]},
        {"iexcludes": ["TREE"]},
        {"excludes": [str(tree.parent)]},
        {"exclude_larger_than": 1},
    ):
        path = tree / "big" / "large.bin" if "exclude_larger_than" in options else tree
        with pytest.raises(UsageError, match="is excluded"):
            run_backup(repo, BackupOptions(paths=[str(path)], host="refused", **options))
    assert repo.list_snapshots() == before


def test_a_configured_source_excludes_as_the_command_line(
    cli: CliRunner, cli_repo: str, restic: Restic, tree: Path, tmp_path: Path
) -> None:
    config = tmp_path / "safehold.yaml"
    config.write_text(
        f"""\
repository: {{location: {cli_repo}, password_env: REPO_PW}}
sources:
  files:
    type: directory
    paths: [{tree}]
    excludes: ["deep/*.log", "weird/a?b"]
    iexcludes: ["*.MD"]
    exclude_caches: true
    exclude_if_present: [.nobackup]
    exclude_larger_than: 2k
"""
    )
    env = {"REPO_PW": PASSWORD.decode(), "SAFEHOLD_STATE_DIR": str(tmp_path / "state")}
    res = cli("backup", "--config", str(config), "--json", env=env)
    assert res.code == 0, res.output
    snapshot = json.loads(res.stdout)["snapshot"]
    expected = restic.selects(
        str(tree),
        *("-e", "deep/*.log", "-e", "weird/a?b", "--iexclude", "*.MD", "--exclude-caches"),
        *("--exclude-if-present", ".nobackup", "--exclude-larger-than", "2k"),
    )
    repo = Repository.open(LocalStorage(cli_repo), PASSWORD)
    repo.load_index()
    assert listed(repo, repo.find_snapshot(snapshot)) == expected
    res = cli("backup", "--config", str(config), "--exclude-caches", "--dry-run", env=env)
    assert (
        res.code == 2 and "--exclude-caches, --dry-run cannot be used with --config" in res.stderr
    )


# --- restore --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def both(restic: Restic, tree: Path, repo: Repository) -> Snapshot:
    restic.run("backup", str(tree))
    return run_backup(repo, BackupOptions(paths=[str(tree)], host="restore")).snapshot


def _listing(target: Path) -> set[str]:
    out = set()
    for dirpath, dirnames, filenames in os.walk(target):
        rel = "/" + os.path.relpath(dirpath, target)
        for d in dirnames:
            out.add(os.path.normpath(f"{rel}/{d}") + "/")
        out.update(os.path.normpath(f"{rel}/{f}") for f in filenames)
    return out


RESTORE_CASES: list[list[str]] = [
    ["--include", "*.md"],
    ["--include", "docs/sources"],
    ["--include", f"{R}/deep"],
    ["--include", f"{R}/deep/a/b.log"],
    ["--include", "deep/*.log", "--include", "*.bin"],
    ["--include", f"{R}/**/z"],
    ["--iinclude", "*.txt"],
    ["--exclude", "*.md"],
    ["--exclude", "deep/a"],
    ["--exclude", f"{R}/weird/*", "--exclude", f"!{R}/weird/a"],
    ["--iexclude", "MIXED", "--iexclude", "*.LOG"],
]


@pytest.mark.parametrize("args", RESTORE_CASES, ids=[" ".join(a) for a in RESTORE_CASES])
def test_restore_writes_what_restic_writes(
    restic: Restic, tree: Path, repo: Repository, both: Snapshot, tmp_path: Path, args: list[str]
) -> None:
    args = _fill(args, tree)
    restic.run("restore", "latest", "--target", str(tmp_path / "restic"), *args)
    opts: dict[str, list[str]] = {"includes": [], "excludes": [], "iincludes": [], "iexcludes": []}
    for flag, value in zip(args[::2], args[1::2], strict=True):
        opts[flag.lstrip("-") + "s"].append(value)
    run_restore(repo, both, RestoreOptions(target=str(tmp_path / "ours"), **opts))
    expected = _listing(tmp_path / "restic")
    got = _listing(tmp_path / "ours")
    assert got == expected, (sorted(got - expected), sorted(expected - got))


@pytest.mark.parametrize(
    "opts",
    [
        {"includes": ["no-such-name"]},
        {"includes": ["/no/such/path"]},
        {"includes": [f"{R}/deep/a/no-such"]},  # its folders exist: none is made
        {"excludes": ["*"]},
        {"includes": ["*.md"], "excludes": ["*.md"]},
    ],
)
def test_a_selection_that_takes_nothing_fails_and_writes_nothing(
    tree: Path, repo: Repository, both: Snapshot, tmp_path: Path, opts: dict[str, list[str]]
) -> None:
    target = tmp_path / "out"
    with pytest.raises(UsageError, match=f"nothing in snapshot {both.short_id}"):
        run_restore(repo, both, RestoreOptions(target=str(target), **_fill(opts, tree)))
    assert not any(target.iterdir())


# --- the command line -----------------------------------------------------------------------


def _dry_json(cli: CliRunner, repo: str, *args: str, env: dict[str, str] | None = None) -> set[str]:
    res = cli("-r", repo, "--json", "backup", "--dry-run", *args, env=env)
    assert res.code == 0, res.output
    out = json.loads(res.stdout)
    assert out["dry_run"] is True
    return {
        i["path"] + ("/" if i["type"] == "dir" else "")
        for i in out["items"]
        if i["type"] != "symlink"
    }


def test_exclude_files_as_restic_reads_them(
    cli: CliRunner, cli_repo: str, restic: Restic, tree: Path, tmp_path: Path
) -> None:
    (tmp_path / "ex.txt").write_bytes(
        b"\xef\xbb\xbf# what not to save\n  *.log  \r\n\n$SUBDIR/cache\n$$RECYCLE.BIN\n"
    )
    (tmp_path / "iex.txt").write_text("*.MD\nMIXED\n")
    args = [
        str(tree),
        "--exclude-file",
        str(tmp_path / "ex.txt"),
        "--iexclude-file",
        str(tmp_path / "iex.txt"),
    ]
    expected = restic.selects(*args, env={"SUBDIR": "sub"})
    got = _dry_json(cli, cli_repo, *args, env={"SUBDIR": "sub"})
    assert got == expected
    assert f"{tree}/sub/cache/" not in got and f"{tree}/deep/a/keep.txt" in got


def test_files_from_as_restic_reads_them(
    cli: CliRunner, cli_repo: str, restic: Restic, tree: Path, tmp_path: Path
) -> None:
    (tmp_path / "globs").write_text(
        f"# globbed\n{tree}/deep/*\n  {tree}/weird/.h*  \n\n{tree}/b?g/small.bin\n"
    )
    (tmp_path / "verbatim").write_text(f"{tree}/weird/a*b\n\n{tree}/weird/space name\n")
    (tmp_path / "raw").write_bytes(
        f"{tree}/weird/[a]\0{tree}/Mixed\0".encode() + os.fsencode(f"{tree}/weird/été.txt") + b"\0"
    )
    args = [
        "--files-from",
        str(tmp_path / "globs"),
        "--files-from-verbatim",
        str(tmp_path / "verbatim"),
        "--files-from-raw",
        str(tmp_path / "raw"),
    ]
    expected = restic.selects(*args)
    got = _dry_json(cli, cli_repo, *args)
    assert got == expected
    assert f"{tree}/weird/a*b" in got and f"{tree}/weird/axb" not in got
    assert f"{tree}/weird/.hidden" in got and f"{tree}/deep/a/keep.txt" in got


def test_files_from_refuses_what_names_nothing(
    cli: CliRunner, cli_repo: str, tmp_path: Path
) -> None:
    """restic skips it with a warning; a PATH that does not exist stops a backup here, and
    so does a listed one."""
    (tmp_path / "list").write_text(f"{tmp_path}/no-such-*\n")
    res = cli("-r", cli_repo, "backup", "--files-from", str(tmp_path / "list"))
    assert res.code == 2 and "line 1" in res.stderr and "matches nothing" in res.stderr
    (tmp_path / "raw").write_bytes(b"/etc")
    res = cli("-r", cli_repo, "backup", "--files-from-raw", str(tmp_path / "raw"))
    assert res.code == 2 and "not ended by a NUL" in res.stderr


def test_a_dry_run_writes_nothing_to_the_repository(
    cli: CliRunner, cli_repo: str, tree: Path
) -> None:
    before = sorted(p.relative_to(cli_repo) for p in Path(cli_repo).rglob("*"))
    res = cli("-r", cli_repo, "backup", "-n", str(tree), "-e", "*.bin")
    assert res.code == 0, res.output
    assert f"new       {tree}/README.md" in res.stdout
    assert f"{tree}/big/large.bin" not in res.stdout
    assert "would save: " in res.stdout and "nothing was read or written" in res.stdout
    assert sorted(p.relative_to(cli_repo) for p in Path(cli_repo).rglob("*")) == before
    res = cli("-r", cli_repo, "backup", "-n", "--stdin-name", "x")
    assert res.code == 2 and "dry-run" in res.stderr


def test_restore_dry_run_lists_and_writes_nothing(
    cli: CliRunner, cli_repo: str, tree: Path, tmp_path: Path
) -> None:
    assert cli("-r", cli_repo, "-q", "backup", str(tree)).code == 0
    target = tmp_path / "target"
    res = cli(
        "-r",
        cli_repo,
        "--json",
        "restore",
        "latest",
        "-t",
        str(target),
        "--dry-run",
        "-i",
        "docs",
        "-e",
        "guide.md",
    )
    assert res.code == 0, res.output
    out = json.loads(res.stdout)
    paths = {i["path"] for i in out["items"]}
    base = f"{target}{tree}"
    assert f"{base}/docs/sources/x.md" in paths and f"{base}/sub/docs/sources/y.md" in paths
    assert f"{base}/docs/guide.md" not in paths and f"{base}/README.md" not in paths
    assert out["files"] == 2 and not target.exists()
    res = cli("-r", cli_repo, "restore", "latest", "-t", str(target), "--dry-run", "-i", "nope")
    assert res.code == 2 and "nothing in snapshot" in res.stderr and not target.exists()
    res = cli("-r", cli_repo, "restore", "latest", "-t", str(target), "-e", "*")
    assert res.code == 2 and "is left by --exclude '*'" in res.stderr


def test_help_names_the_pattern_syntax_and_the_argument_vector(cli: CliRunner) -> None:
    res = cli("backup", "--help")
    assert "restic's syntax" in res.stdout and "'**' spans any number of folders" in res.stdout
    assert "without a shell" in res.stdout and "sh -c '" in res.stdout
    assert "restic's syntax" in cli("restore", "--help").stdout
