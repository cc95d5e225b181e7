# The kubelab lab image: one image for every compose service (controller, dns, proxy,
# echo pods, client).
#
# Build context is docker/ (small: wheels, entrypoint, manifests), not the repo root:
#   docker/wheels.sh                                   # wheels built/downloaded on the host
#   docker build -f Dockerfile -t kubelab/lab:dev docker/
# or let `docker compose build` do the second step.
#
# BASE_IMAGE defaults to the registry-free base that docker/base-image.sh makes with
# debootstrap (python3, venv, iproute2, dig, curl already inside: the build needs no
# network). With a registry, start from a standard image instead:
#   docker build --build-arg BASE_IMAGE=python:3.11-slim -f Dockerfile -t kubelab/lab:dev docker/
# and the missing tools are apt-installed. The wheels are CPython 3.11 / glibc wheels, so the
# base must carry Python 3.11.
ARG BASE_IMAGE=kubelab/base:bookworm
FROM ${BASE_IMAGE}

ENV PATH=/opt/kubelab/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1

# Tools the lab needs: ip (the proxy claims ClusterIPs), dig and curl (the client).
# Present in the debootstrap base; installed here only for other bases.
RUN set -eu; \
    missing=""; \
    command -v ip >/dev/null || missing="$missing iproute2"; \
    command -v dig >/dev/null || missing="$missing bind9-dnsutils"; \
    command -v curl >/dev/null || missing="$missing curl"; \
    if [ -n "$missing" ]; then \
        apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $missing \
        && rm -rf /var/lib/apt/lists/*; \
    fi; \
    python3 -c 'import sys; assert sys.version_info[:2] == (3, 11), "the wheels are for CPython 3.11, base has " + sys.version'; \
    python3 -m venv /opt/kubelab

# Dependencies first: this layer stays cached while only kubelab's own code changes.
COPY wheels/deps/ /tmp/wheels/deps/
RUN pip install -q --no-index /tmp/wheels/deps/*.whl && rm -rf /tmp/wheels/deps

COPY wheels/project/ /tmp/wheels/project/
RUN pip install -q --no-index --no-deps /tmp/wheels/project/*.whl && rm -rf /tmp/wheels \
    && python -c 'import kubelab.dns.zone, kubelab.proxy.table, kubelab.controller.config'

COPY pod-entrypoint.sh /usr/local/bin/kubelab-pod
COPY manifests/ /etc/kubelab/manifests/
RUN chmod 0755 /usr/local/bin/kubelab-pod

CMD ["kubelab", "--help"]
