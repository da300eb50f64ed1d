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

# The same folder as a plan that `safehold serve` runs every three seconds, with its own
# private PostgreSQL (the machine's postgresql package) under a state folder in $work.
if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
  echo "(skipping 'safehold serve': install the postgresql package to see it)"
  exit 0
fi
chmod 711 "$work"   # as root the cluster runs as the postgres user, who must pass through
cat > "$work/safehold.yaml" <<YAML
repository: {location: $work/repo, password_env: SAFEHOLD_PASSWORD}
service: {state_dir: $work/state}
sources:
  sample:
    type: directory
    paths: [$work/sample]
    schedule: "*/3 * * * * *"
    retention: {keep_last: 3}
YAML
token=$(uv run --frozen safehold token create --config "$work/safehold.yaml" \
  --project default --role viewer)
echo "$token" > "$work/token"
# Port 0: any free port (the default, 8808, may be taken on this machine).
echo "+ safehold serve --config $work/safehold.yaml --listen 127.0.0.1:0   (for 12 seconds)"
uv run --frozen safehold serve --config "$work/safehold.yaml" --workers 1 \
  --listen 127.0.0.1:0 > "$work/serve.log" 2>&1 &
serve=$!
sleep 12
url=$(grep -o 'API listening on http://[0-9.:]*' "$work/serve.log" | head -1 | cut -d' ' -f4)
if [ -n "$url" ]; then
  echo "+ safehold plans --server $url --token-file $work/token   (through the REST API)"
  uv run --frozen safehold plans --server "$url" --token-file "$work/token"
fi
kill -TERM "$serve"
wait "$serve" || true
tail -n 5 "$work/serve.log"
sh plans --config "$work/safehold.yaml"
sh runs --config "$work/safehold.yaml"
sh snapshots
