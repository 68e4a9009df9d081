#!/usr/bin/env bash
# Rebuild demo/filter/add-header.wasm from assembly/index.ts.
#
# The npm dependencies (pinned in package.json / package-lock.json) are
# installed into a temporary directory, so no node_modules/ is left in the
# repository. Needs node and npm (tested with node 20 / npm 11).
#
# Usage: demo/filter/build.sh
#   KEEP_BUILD_DIR=1  keep the temporary build directory for inspection
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
out="$here/add-header.wasm"

work="$(mktemp -d "${TMPDIR:-/tmp}/csi-wasm-filter.XXXXXX")"
cleanup() {
  if [[ "${KEEP_BUILD_DIR:-}" == 1 ]]; then
    echo "build.sh: build directory kept at $work" >&2
  else
    rm -rf "$work"
  fi
}
trap cleanup EXIT

cp "$here/package.json" "$work/"
cp -R "$here/assembly" "$work/"
cd "$work"

if [[ -f "$here/package-lock.json" ]]; then
  cp "$here/package-lock.json" "$work/"
  npm ci --no-audit --no-fund
else
  # First build (or lock file deleted on purpose): resolve and record versions.
  npm install --no-audit --no-fund
  cp "$work/package-lock.json" "$here/package-lock.json"
  echo "build.sh: wrote $here/package-lock.json" >&2
fi

./node_modules/.bin/asc assembly/index.ts \
  --binaryFile add-header.wasm \
  --optimize \
  --use abort=abort_proc_exit

# Sanity check: Wasm magic "\0asm" followed by binary format version 1.
header="$(od -An -tx1 -N8 add-header.wasm | tr -d ' \n')"
if [[ "$header" != "0061736d01000000" ]]; then
  echo "build.sh: add-header.wasm is not a version-1 Wasm module (header $header)" >&2
  exit 1
fi

# Drive the module through one HTTP stream with a mock proxy-wasm host.
node "$here/smoke-test.mjs" add-header.wasm

cp add-header.wasm "$out"
echo "build.sh: wrote $out ($(wc -c <"$out") bytes)"
