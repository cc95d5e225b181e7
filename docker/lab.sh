#!/usr/bin/env bash
# The compose lab's steps, each usable alone (the engine must answer: docker/engine.sh start).
#
#   docker/lab.sh build     wheels on the host, base image if missing, then the lab image
#   docker/lab.sh build-image   only the last step (wheels and base image already there)
#   docker/lab.sh up        docker compose up -d --wait (no build, no pull)
#   docker/lab.sh check     the client check: dig and curl from the client container
#   docker/lab.sh down      docker compose down (containers, network, volume)
#   docker/lab.sh diag      ps + the last log lines of every service (for a failed run)
#   docker/lab.sh compose ARGS...   any docker compose command on the lab
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/env.sh"

UP_TIMEOUT=${KUBELAB_UP_TIMEOUT:-90}
CHECK_TIMEOUT=${KUBELAB_CHECK_TIMEOUT:-60}
SERVICE_CIDR=172.28.96.0/20
NODE_IP=172.28.0.20
NODE_PORT=30080

build() {
    bash "$KUBELAB_ROOT/docker/wheels.sh"
    bash "$KUBELAB_ROOT/docker/base-image.sh"
    build_image
}

build_image() {
    [ -n "$(ls "$KUBELAB_ROOT"/docker/wheels/project/*.whl 2>/dev/null)" ] || die "no wheels: run docker/wheels.sh"
    log "docker build $KUBELAB_IMAGE (FROM $KUBELAB_BASE_IMAGE)"
    # --network none: the build needs nothing from outside (wheels are in the context).
    local net=(--network none)
    [ "$KUBELAB_BASE_IMAGE" = kubelab/base:bookworm ] || net=()   # other bases may apt-get
    docker build -q "${net[@]}" --build-arg "BASE_IMAGE=$KUBELAB_BASE_IMAGE" \
        -f "$KUBELAB_ROOT/Dockerfile" -t "$KUBELAB_IMAGE" "$KUBELAB_ROOT/docker" 2>&1 \
        | grep -v -e DEPRECATED -e 'BuildKit is currently disabled' -e 'environment-variable' -e '^$' >&2 || true
    docker image inspect "$KUBELAB_IMAGE" >/dev/null || die "image $KUBELAB_IMAGE was not built"
    # Each rebuild leaves the previous image dangling: keep a CI machine's disk flat.
    docker image prune -f >/dev/null || true
    docker run --rm --network none "$KUBELAB_IMAGE" \
        python -c 'import kubelab.dns.zone, kubelab.proxy.table, kubelab.runtime.register' \
        || die "the image cannot import kubelab"
}

# Bridged traffic passes the host's FORWARD chain (br_netfilter). If something on the host
# set its policy to DROP (a docker engine with iptables enabled does), let the lab's own
# bridge through, as the netns lab does for its bridge. Nothing else is touched.
allow_bridge() {
    command -v iptables >/dev/null || return 0
    if iptables -S FORWARD 2>/dev/null | grep -q -- '-P FORWARD DROP' \
        && ! iptables -C FORWARD -i kubelab0 -o kubelab0 -j ACCEPT 2>/dev/null; then
        log "FORWARD policy is DROP: allowing traffic within bridge kubelab0"
        iptables -I FORWARD 1 -i kubelab0 -o kubelab0 -j ACCEPT
    fi
}

up() {
    compose config -q
    allow_bridge
    if ! compose up -d --no-build --pull never --wait --wait-timeout "$UP_TIMEOUT"; then
        diag
        die "the lab did not become healthy within ${UP_TIMEOUT}s"
    fi
}

down() { compose down --volumes --remove-orphans -t 2; }

diag() {
    compose ps -a >&2 || true
    for svc in $(compose config --services 2>/dev/null); do
        echo "----- $svc (last 25 lines)" >&2
        compose logs --no-color --tail 25 "$svc" >&2 2>&1 || true
    done
}

# in_client CMD...: run in the client container, output on stdout.
in_client() { compose exec -T client "$@"; }

# retry SECONDS DESCRIPTION CMD...: until CMD succeeds (its stdout kept in $REPLY_OUT).
retry() {
    local limit=$1 what=$2; shift 2
    local deadline=$((SECONDS + limit)) out
    while :; do
        if out=$("$@" 2>/dev/null); then REPLY_OUT=$out; return 0; fi
        if [ $SECONDS -ge $deadline ]; then
            log "FAIL: $what (last output: ${out:-<none>})"
            return 1
        fi
        sleep 0.5
    done
}

# The Service's ClusterIP as the registry has it (read with the token the controller wrote).
cluster_ip() {
    compose exec -T controller python - <<'PY'
import json, urllib.request, yaml
cfg = yaml.safe_load(open("/var/run/kubelab/kubeconfig"))
token = cfg["users"][0]["user"].get("token")
req = urllib.request.Request("http://127.0.0.1:6443/api/v1/namespaces/default/services/echo")
if token:
    req.add_header("Authorization", "Bearer " + token)
print(json.load(urllib.request.urlopen(req, timeout=3))["spec"]["clusterIP"])
PY
}

dig_is() {  # dig_is NAME WANT: the A answer for NAME is exactly WANT
    local got; got=$(in_client dig +short +time=1 +tries=1 "$1" A) || return 1
    echo "$got"
    [ "$got" = "$2" ]
}

hostname_via() {  # hostname_via URL: an echo pod's name from URL
    local got; got=$(in_client curl -fsS --max-time 3 "$1") || return 1
    echo "$got"
    [[ "$got" =~ ^echo-[0-9]+$ ]]
}

FAILED=0
# expect SECONDS DESCRIPTION CMD...: log ok/FAIL with CMD's output; count failures.
expect() {
    local limit=$1 what=$2; shift 2
    if retry "$limit" "$what" "$@"; then log "ok   $what -> $(tr '\n' ' ' <<<"$REPLY_OUT")"
    else FAILED=$((FAILED + 1)); fi
}

spread() {  # 9 requests through the ClusterIP reach at least 2 different pods
    local names
    names=$(in_client sh -c 'for i in 1 2 3 4 5 6 7 8 9; do curl -fsS --max-time 3 http://echo/hostname; done' | sort -u)
    echo "$names"
    [ "$(wc -l <<<"$names")" -ge 2 ]
}

check() {
    local t0=$SECONDS ip
    retry "$CHECK_TIMEOUT" "the registry has Service default/echo with a ClusterIP" cluster_ip || return 1
    ip=$REPLY_OUT
    python3 -c "import ipaddress,sys; sys.exit(ipaddress.ip_address('$ip') not in ipaddress.ip_network('$SERVICE_CIDR'))" \
        || { log "FAIL: ClusterIP $ip is not in $SERVICE_CIDR"; return 1; }
    log "Service default/echo has ClusterIP $ip"
    expect "$CHECK_TIMEOUT" "dig +short echo.default.svc.cluster.local (== $ip)" dig_is echo.default.svc.cluster.local "$ip"
    expect "$CHECK_TIMEOUT" "curl http://echo.default.svc.cluster.local/hostname" hostname_via http://echo.default.svc.cluster.local/hostname
    expect 10 "curl http://echo/hostname (search path)" hostname_via http://echo/hostname
    expect 10 "curl http://$NODE_IP:$NODE_PORT/hostname (NodePort)" hostname_via "http://$NODE_IP:$NODE_PORT/hostname"
    expect 20 "9 requests to http://echo/hostname reach 2+ pods" spread
    log "client check: $FAILED failed, took $((SECONDS - t0))s"
    [ "$FAILED" = 0 ]
}

case "${1:-}" in
    build) build ;;
    build-image) build_image ;;
    up) up ;;
    check) check ;;
    down) down ;;
    diag) diag ;;
    compose) shift; compose "$@" ;;
    *) echo "usage: $0 build|build-image|up|check|down|diag|compose ARGS..." >&2; exit 2 ;;
esac
