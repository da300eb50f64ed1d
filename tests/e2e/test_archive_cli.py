"""``safehold archive`` through the real command line."""

from __future__ import annotations

import json
import time
from pathlib import Path

from tests.conftest import CliRunner
from tests.integration.helpers import assert_same_tree, restored_root, tree_manifest


def test_write_list_restore_forget(
    cli: CliRunner, cli_repo: str, sample_tree: Path, tmp_path: Path
) -> None:
    dest = str(tmp_path / "plain")
    phrase = tmp_path / "phrase"
    phrase.write_text("archive secret\n")
    assert cli("-r", cli_repo, "backup", str(sample_tree)).code == 0
    res = cli(
        "-r",
        cli_repo,
        "archive",
        "write",
        "--to",
        dest,
        "--prefix",
        "svc",
        "--passphrase-file",
        str(phrase),
        "--json",
    )
    assert res.code == 0, res.output
    written = json.loads(res.stdout)
    assert written["encrypted"] and written["name"].startswith("svc/")
    assert (Path(dest) / (written["name"] + ".sha256")).is_file()

    listed = cli("archive", "list", dest, "--prefix", "svc", "--json")
    assert listed.code == 0, listed.output
    assert [e["name"] for e in json.loads(listed.stdout)] == [written["name"]]

    # Encrypted and no passphrase: a usage error that says so, nothing extracted.
    target = tmp_path / "out"
    res = cli("archive", "restore", dest, "latest", "--prefix", "svc", "--target", str(target))
    assert res.code == 2 and "passphrase" in res.stderr, res.output
    res = cli(
        "archive",
        "restore",
        dest,
        "--prefix",
        "svc",
        "--target",
        str(target),
        env={"SAFEHOLD_ARCHIVE_PASSPHRASE": "wrong"},
    )
    assert res.code == 12, res.output
    res = cli(
        "archive",
        "restore",
        dest,
        written["snapshot"],
        "--prefix",
        "svc",
        "--target",
        str(target),
        "--passphrase-file",
        str(phrase),
    )
    assert res.code == 0, res.output
    assert_same_tree(tree_manifest(sample_tree), restored_root(target, sample_tree), mtimes=False)

    # A newer snapshot's archive, then keep only the newest. Archive names carry the
    # snapshot's time to the second: two in one second have no order, so the next second.
    time.sleep(1.1)
    (sample_tree / "hello.txt").write_text("changed\n")
    assert cli("-r", cli_repo, "backup", str(sample_tree)).code == 0
    assert cli("-r", cli_repo, "archive", "write", "--to", dest, "--prefix", "svc").code == 0
    res = cli("archive", "forget", dest, "--prefix", "svc", "--keep-last", "1", "--json")
    assert res.code == 0, res.output
    out = json.loads(res.stdout)
    assert len(out["keep"]) == 1 and len(out["remove"]) == 1
    assert out["remove"][0]["name"] == written["name"]
    left = json.loads(cli("archive", "list", dest, "--prefix", "svc", "--json").stdout)
    assert [e["name"] for e in left] == [out["keep"][0]["name"]]
    assert "keep_last" not in res.stderr
    assert cli("archive", "forget", dest, "--prefix", "svc").code == 2
