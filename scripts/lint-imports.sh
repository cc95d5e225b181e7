#!/usr/bin/env bash
# Checks the import contracts in .importlinter (DESIGN: the data planes never import the
# controller, the runtime or each other). import-linter finds modules on the file system,
# which setuptools' default editable install doesn't provide for our folder -> kubelab.*
# mapping, so this builds the `kubelab/` tree it expects out of symlinks and points it there.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
tree="$(mktemp -d)"
trap 'rm -rf "$tree"' EXIT
mkdir "$tree/kubelab"
for component in controller dns proxy runtime; do
  ln -s "$root/$component" "$tree/kubelab/$component"
done
cd "$tree"
PYTHONPATH="$tree" "$root/.venv/bin/lint-imports" --no-cache "$root/.importlinter"
