#!/usr/bin/env bash
# The main job, end to end: create a repository in a local folder, back up a sample
# folder, list it, restore it and compare. Called by `./run demo` after setup.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
work=$(mktemp -d "${TMPDIR:-/tmp}/safehold-demo.XXXXXX")
export SAFEHOLD_REPOSITORY="$work/repo"
export SAFEHOLD_PASSWORD="demo password (use --password-file in real life)"
sh() { echo "+ safehold $*"; uv run --frozen safehold "$@"; }

mkdir -p "$work/sample/docs" "$work/sample/data"
printf 'hello from safehold\n' > "$work/sample/docs/readme.txt"
seq 1 200000 > "$work/sample/data/numbers.csv"
head -c 4000000 /dev/urandom > "$work/sample/data/blob.bin"
ln -s docs/readme.txt "$work/sample/link"

sh init
sh backup "$work/sample" --tag demo
echo "more data" >> "$work/sample/docs/readme.txt"
sh backup "$work/sample" --tag demo
sh snapshots
sh ls latest "$work/sample/docs" || true
sh restore latest --target "$work/restored"
diff -r "$work/sample" "$work/restored$work/sample"
echo "restored copy is identical to the source: $work/restored$work/sample"
