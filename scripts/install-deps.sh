#!/usr/bin/env bash
# Installs what the lab and its tests need on a fresh Debian machine, then the project
# itself into .venv. Idempotent: a second run only checks. Usage: scripts/install-deps.sh [--test]
set -euo pipefail
cd "$(dirname "$0")/.."

# Tools the tests drive for real: dig (bind9-dnsutils), curl, ip/nft for the netns lab.
APT_PACKAGES=(bind9-dnsutils curl iproute2 nftables procps)
missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  if [ "$(id -u)" = 0 ]; then
    echo "installing apt packages: ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  else
    echo "missing apt packages (install them as root): ${missing[*]}" >&2
  fi
fi

extra=""
[ "${1:-}" = "--test" ] && extra="[test]"
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
stamp=".venv/.installed${extra:+-test}"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  .venv/bin/pip install -q -U pip
  .venv/bin/pip install -q -e ".${extra}"
  touch "$stamp"
fi
