"""The local index cache through the command line: where it goes, and --no-cache."""

from __future__ import annotations

from pathlib import Path

from tests.conftest import CliRunner


def cache_files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def test_backups_keep_the_index_in_the_cache_dir(
    cli: CliRunner, cli_repo: str, sample_tree: Path, tmp_path: Path
) -> None:
    env = {"SAFEHOLD_CACHE_DIR": str(tmp_path / "env-cache")}
    res = cli("-r", cli_repo, "backup", str(sample_tree), env=env)
    assert res.code == 0, res.output
    files = cache_files(tmp_path / "env-cache")
    assert "CACHEDIR.TAG" in files
    assert len([f for f in files if f.endswith("/index")]) == 1
    # --cache-dir wins over the variable; the restore works from the cache.
    res = cli("--cache-dir", str(tmp_path / "opt-cache"), "-r", cli_repo, "backup",
              str(sample_tree), env=env)  # fmt: skip
    assert res.code == 0, res.output
    assert any(f.endswith("/index") for f in cache_files(tmp_path / "opt-cache"))
    res = cli("-r", cli_repo, "restore", "latest", "--target", str(tmp_path / "out"), env=env)
    assert res.code == 0, res.output
    restored = tmp_path / "out" / sample_tree.relative_to("/")
    assert sorted(p.name for p in restored.rglob("*")) == sorted(
        p.name for p in sample_tree.rglob("*")
    )


def test_no_cache_writes_none(
    cli: CliRunner, cli_repo: str, sample_tree: Path, tmp_path: Path
) -> None:
    env = {"SAFEHOLD_CACHE_DIR": str(tmp_path / "cache")}
    res = cli("-r", cli_repo, "--no-cache", "backup", str(sample_tree), env=env)
    assert res.code == 0, res.output
    res = cli("-r", cli_repo, "restore", "latest", "--no-cache", "--target",
              str(tmp_path / "out"), env=env)  # fmt: skip
    assert res.code == 0, res.output
    assert not (tmp_path / "cache").exists()


def test_a_damaged_cache_is_rebuilt_silently(
    cli: CliRunner, cli_repo: str, sample_tree: Path, tmp_path: Path
) -> None:
    env = {"SAFEHOLD_CACHE_DIR": str(tmp_path / "cache")}
    assert cli("-r", cli_repo, "backup", str(sample_tree), env=env).code == 0
    (index,) = [p for p in (tmp_path / "cache").rglob("index") if p.is_file()]
    index.write_bytes(b"SHIC\x01 not a sealed message")
    res = cli("-r", cli_repo, "restore", "latest", "--target", str(tmp_path / "out"), env=env)
    assert res.code == 0, res.output
    assert res.stderr == ""
    assert index.read_bytes()[:5] == b"SHIC\x01" and len(index.read_bytes()) > 100
