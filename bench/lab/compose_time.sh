#!/usr/bin/env bash
# How long from `docker compose up` to a passing client check, against a peer measured in
# the same run: the same seven containers on the same network doing nothing (`sleep`), i.e.
# what docker itself costs. The ratio is what kubelab adds on top of the container engine.
#
#   bench/lab/compose_time.sh [RUNS]        (default 3; needs root; starts the engine if needed)
#
# Per run it prints: up -d (containers created and started), healthy (`up --wait` returned),
# dns (the client's dig gives the ClusterIP), curl (curl via the service name reaches a pod);
# then the medians and the ratio curl / peer-healthy. Bounded: each wait gives up after 120 s.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
. docker/env.sh

RUNS=${1:-3}
LIMIT=120

bash docker/engine.sh install >/dev/null
bash docker/engine.sh start
bash docker/lab.sh build >/dev/null
bash docker/lab.sh down >/dev/null 2>&1 || true

now() { date +%s.%N; }
since() { python3 -c "print(f'{$(now) - $1:.2f}')"; }
until_ok() {  # until_ok CMD...: poll every 0.1 s, at most LIMIT seconds
    local deadline=$((SECONDS + LIMIT))
    until "$@" >/dev/null 2>&1; do
        [ $SECONDS -lt $deadline ] || { log "gave up after ${LIMIT}s: $*"; return 1; }
        sleep 0.1
    done
}
in_client() { compose exec -T client "$@"; }
dig_ok() { [[ "$(in_client dig +short +time=1 +tries=1 echo.default.svc.cluster.local)" =~ ^172\.28\.9[6-9]|^172\.28\.1[01][0-9]\. ]]; }
curl_ok() { [[ "$(in_client curl -fsS --max-time 2 http://echo.default.svc.cluster.local/hostname)" =~ ^echo-[0-9]+$ ]]; }

# The peer: the same image, services, network (fixed subnet, internal) and healthchecks
# that pass at once; no kubelab process runs.
peer_dir=$(mktemp -d)
trap 'docker compose -p kubelab-peer -f "$peer_dir/compose.yml" down -t 1 -v >/dev/null 2>&1 || true; rm -rf "$peer_dir"' EXIT
{
    echo "services:"
    for s in dns proxy controller echo-1 echo-2 echo-3 client; do
        cat <<YML
  $s:
    image: $KUBELAB_IMAGE
    pull_policy: never
    init: true
    command: ["sleep", "infinity"]
    networks: [lab]
    healthcheck: {test: ["CMD", "true"], interval: 1s, timeout: 2s, retries: 60}
YML
    done
    cat <<YML
networks:
  lab:
    driver: bridge
    internal: true
    ipam: {config: [{subnet: 172.28.0.0/16, ip_range: 172.28.0.128/25}]}
YML
} >"$peer_dir/compose.yml"

declare -a P_HEALTHY L_UP L_HEALTHY L_DNS L_CURL
for i in $(seq 1 "$RUNS"); do
    t0=$(now)
    docker compose -p kubelab-peer -f "$peer_dir/compose.yml" up -d --wait --wait-timeout $LIMIT >/dev/null 2>&1
    P_HEALTHY+=("$(since "$t0")")
    docker compose -p kubelab-peer -f "$peer_dir/compose.yml" down -t 1 -v >/dev/null 2>&1

    t0=$(now)
    compose up -d --no-build --pull never >/dev/null 2>&1
    L_UP+=("$(since "$t0")")
    compose up -d --no-build --pull never --wait --wait-timeout $LIMIT >/dev/null 2>&1
    L_HEALTHY+=("$(since "$t0")")
    until_ok dig_ok; L_DNS+=("$(since "$t0")")
    until_ok curl_ok; L_CURL+=("$(since "$t0")")
    compose down -t 2 -v >/dev/null 2>&1
    printf 'run %d: peer healthy %ss | kubelab up -d %ss, healthy %ss, dig ok %ss, curl ok %ss\n' \
        "$i" "${P_HEALTHY[-1]}" "${L_UP[-1]}" "${L_HEALTHY[-1]}" "${L_DNS[-1]}" "${L_CURL[-1]}"
done

median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
mp=$(median "${P_HEALTHY[@]}"); mc=$(median "${L_CURL[@]}")
echo "---- compose lab, median of $RUNS runs (seconds)"
printf 'peer (7 idle containers) healthy  %s\n' "$mp"
printf 'kubelab healthy                   %s\n' "$(median "${L_HEALTHY[@]}")"
printf 'kubelab dig answers ClusterIP     %s\n' "$(median "${L_DNS[@]}")"
printf 'kubelab curl reaches a pod        %s\n' "$mc"
python3 -c "print(f'ratio kubelab-ready / peer-healthy  {$mc / $mp:.2f}x')"
