#!/usr/bin/env bash
# Fetches the dashboard's one front-end library, htmx, from the npm registry, pinned and
# checked, and puts it where safehold.web serves it from. The project does not commit
# other projects' code: this script is how a checkout (./run setup) or a package build
# gets it. Without it the dashboard works, only without live updates (a running run's page
# reloads itself instead).
#
#   scripts/web-assets.sh            into src/safehold/web/static/vendor/ (ignored by git)
#   SAFEHOLD_WEB_ASSETS=DIR scripts/web-assets.sh
#                                    into DIR; run `safehold serve` with the same variable
#
# The tarball's sha512 must equal the integrity pinned below (npm's own `dist.integrity`
# of that version): a registry that serves anything else is refused.
set -euo pipefail

HTMX_VERSION=2.0.4
HTMX_INTEGRITY="sha512-HLxMCdfXDOJirs3vBZl/ZLoY+c7PfM4Ahr2Ad4YXh6d22T5ltbTXFFkpx9Tgb2vvmWFMbIc3LqN2ToNkZJvyYQ=="

here="$(cd "$(dirname "$0")/.." && pwd)"
dest="${SAFEHOLD_WEB_ASSETS:-$here/src/safehold/web/static/vendor}"
say() { printf '== %s\n' "$*" >&2; }

if [ -f "$dest/htmx.min.js" ] && [ "$(cat "$dest/htmx.version" 2>/dev/null)" = "$HTMX_VERSION" ]; then
  exit 0
fi
if ! command -v npm >/dev/null 2>&1; then
  say "npm is missing: the dashboard will work without live updates (install npm and run $0)"
  exit 0
fi
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
say "fetching htmx.org@$HTMX_VERSION from the npm registry"
if ! (cd "$work" && npm pack --silent "htmx.org@$HTMX_VERSION" >/dev/null 2>"$work/npm.err"); then
  # No registry (offline, a proxy): not fatal, the pages work without live updates.
  say "could not fetch htmx.org@$HTMX_VERSION from npm: $(tail -n 1 "$work/npm.err")"
  say "the dashboard will work without live updates; run $0 again when npm can reach its registry"
  exit 0
fi
tarball="$work/htmx.org-$HTMX_VERSION.tgz"
actual="sha512-$(openssl dgst -sha512 -binary "$tarball" | base64 -w0)"
if [ "$actual" != "$HTMX_INTEGRITY" ]; then
  say "htmx.org-$HTMX_VERSION.tgz does not match its pinned sha512: refusing it"
  say "expected $HTMX_INTEGRITY"
  say "got      $actual"
  exit 1
fi
tar -xzf "$tarball" -C "$work" package/dist/htmx.min.js package/LICENSE
mkdir -p "$dest"
install -m 0644 "$work/package/dist/htmx.min.js" "$dest/htmx.min.js"
install -m 0644 "$work/package/LICENSE" "$dest/htmx.LICENSE"
printf '%s\n' "$HTMX_VERSION" > "$dest/htmx.version"
say "htmx $HTMX_VERSION is in $dest"
