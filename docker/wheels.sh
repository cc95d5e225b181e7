#!/usr/bin/env bash
# Fill docker/wheels/ on the host, so the image build installs with `pip --no-index`.
#
#   docker/wheels.sh
#
# Why on the host: HTTPS from inside a container fails certificate verification on these
# machines (the egress proxy's CA is trusted by the host only), so pip cannot reach PyPI
# during `docker build`. The host's pip can. Layout:
#   docker/wheels/deps/     the dependencies' wheels; refreshed only when pyproject's
#                           dependency list changes (stamp file), so warm runs stay offline
#   docker/wheels/project/  the kubelab wheel, rebuilt every time (it is the code under test)
# The host Python must be CPython 3.11 on glibc (the image's is Debian 12's 3.11).
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/env.sh"

out=$KUBELAB_ROOT/docker/wheels
mkdir -p "$out/deps" "$out/project"
"$KUBELAB_PYTHON" -c 'import sys; assert sys.version_info[:2] == (3, 11), sys.version' \
    || die "$KUBELAB_PYTHON is not Python 3.11: the image's wheels must match its interpreter"

stamp=$("$KUBELAB_PYTHON" - "$KUBELAB_ROOT/pyproject.toml" <<'PY'
import hashlib, sys, tomllib
deps = tomllib.load(open(sys.argv[1], "rb"))["project"].get("dependencies", [])
print(hashlib.sha256("\n".join(sorted(deps)).encode()).hexdigest()[:16])
PY
)
pip=("$KUBELAB_PYTHON" -m pip --disable-pip-version-check -q)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
# Build from a copy of the sources: setuptools' build/ tree in the work tree could carry
# stale modules into the wheel, and the work tree stays untouched.
src=$tmp/src
mkdir -p "$src"
"$KUBELAB_PYTHON" - "$KUBELAB_ROOT" "$src" <<'PY'
import shutil, sys, tomllib
from pathlib import Path
root, dst = Path(sys.argv[1]), Path(sys.argv[2])
cfg = tomllib.load(open(root / "pyproject.toml", "rb"))
for name in ["pyproject.toml", "README.md", "LICENSE", "setup.cfg", "MANIFEST.in"]:
    if (root / name).is_file():
        shutil.copy2(root / name, dst / name)
for folder in sorted(set(cfg["tool"]["setuptools"]["package-dir"].values())):
    shutil.copytree(root / folder, dst / folder, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
PY
if [ -f "$out/deps/.stamp-$stamp" ]; then
    log "dependency wheels up to date ($stamp); building the kubelab wheel"
    "${pip[@]}" wheel --no-deps -w "$tmp" "$src" 2>"$tmp/err" || { cat "$tmp/err" >&2; die "pip wheel failed"; }
else
    log "downloading dependency wheels and building the kubelab wheel"
    "${pip[@]}" wheel -w "$tmp" "$src" 2>"$tmp/err" || { cat "$tmp/err" >&2; die "pip wheel failed"; }
    rm -rf "$out/deps"; mkdir -p "$out/deps"
    find "$tmp" -maxdepth 1 -name '*.whl' ! -name 'kubelab-*' -exec mv {} "$out/deps/" \;
    touch "$out/deps/.stamp-$stamp"
fi
rm -f "$out"/project/*.whl
mv "$tmp"/kubelab-*.whl "$out/project/"
deps=("$out"/deps/*.whl)
log "wheels: ${#deps[@]} dependencies + $(basename "$out"/project/*.whl)"
