#!/usr/bin/env bash
# Validates the Kubernetes manifests under deploy/kubernetes/ against the Kubernetes API schemas,
# offline: kubernetes-validate (PyPI) carries the schemas, so no cluster is needed. Strict: an
# unknown or misspelt field is an error. Also renders the kustomization when kubectl is here.
# (The nginx configuration is checked by `nginx -t` in xtask's tests when nginx is installed.)
#
#   bash deploy/check.sh
set -euo pipefail
cd "$(dirname "$0")/.."

venv=target/deploy-venv
if [ ! -x "$venv/bin/kubernetes-validate" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check "kubernetes-validate==1.37.0"
fi
manifests=()
for f in deploy/kubernetes/*.yaml; do
  [ "$(basename "$f")" = kustomization.yaml ] || manifests+=("$f")
done
"$venv/bin/kubernetes-validate" --strict --kubernetes-version 1.37.0 "${manifests[@]}"
if command -v kubectl >/dev/null 2>&1; then
  rendered=$(mktemp --suffix=.yaml)
  trap 'rm -f "$rendered"' EXIT
  kubectl kustomize deploy/kubernetes > "$rendered"
  "$venv/bin/kubernetes-validate" --strict --quiet --kubernetes-version 1.37.0 "$rendered"
  echo "kustomization renders and validates"
fi
