#!/bin/sh
# kubelab-proxy vs haproxy vs direct, on loopback (see driver.py). Bounded: ~3 minutes.
#   apt-get install -y wrk nginx haproxy curl
# Usage: bench/proxy/run.sh [--seconds N] [--repeat N] [--bulk-mb N] [--json]
set -eu
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
py=${PYTHON:-$root/.venv/bin/python}
[ -x "$py" ] || py=python3
exec timeout 600 "$py" "$here/driver.py" --python "$py" "$@"
