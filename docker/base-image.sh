#!/usr/bin/env bash
# Build the lab's base image with no image registry: a debootstrap rootfs, `docker import`ed.
#
#   docker/base-image.sh [--force]
#
# The rootfs already holds everything the lab runs (python3 + venv, iproute2 for the proxy's
# VIP claim, dig and curl for the client), so building the lab image on top of it needs no
# network. The Debian mirror is read from apt's own sources at run time (no hostname in the
# repo). Skipped when the image exists, unless --force.
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/env.sh"

PACKAGES=python3,python3-venv,iproute2,bind9-dnsutils,curl,netbase,procps
SUITE=bookworm

if [ "${1:-}" != "--force" ] && docker image inspect "$KUBELAB_BASE_IMAGE" >/dev/null 2>&1; then
    log "base image $KUBELAB_BASE_IMAGE exists"
    exit 0
fi
command -v debootstrap >/dev/null || die "debootstrap is not installed: run docker/engine.sh install"

MIRROR=$(awk '/^URIs:/{print $2; exit}' /etc/apt/sources.list.d/*.sources 2>/dev/null || true)
[ -n "$MIRROR" ] || MIRROR=$(awk '$1=="deb"{print $2; exit}' /etc/apt/sources.list 2>/dev/null || true)
[ -n "$MIRROR" ] || die "no Debian mirror found in apt's sources"

work=$(mktemp -d "${TMPDIR:-/tmp}/kubelab-rootfs.XXXXXX")
trap 'rm -rf "$work"' EXIT
log "debootstrap $SUITE (minbase + $PACKAGES)"
if ! debootstrap --variant=minbase --include="$PACKAGES" "$SUITE" "$work/rootfs" "$MIRROR" >"$work/debootstrap.log" 2>&1; then
    tail -30 "$work/debootstrap.log" >&2
    cat "$work/rootfs/debootstrap/debootstrap.log" 2>/dev/null | tail -30 >&2 || true
    die "debootstrap failed"
fi
rm -rf "$work"/rootfs/var/cache/apt/archives/*.deb "$work"/rootfs/var/lib/apt/lists/* "$work"/rootfs/debootstrap
log "docker import -> $KUBELAB_BASE_IMAGE"
tar -C "$work/rootfs" -c . | docker import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change 'CMD ["bash"]' \
    - "$KUBELAB_BASE_IMAGE" >/dev/null
docker image ls "$KUBELAB_BASE_IMAGE" >&2
