#!/bin/bash
# A compose "pod": the workload (default: the built-in echo server) plus the register
# sidecar, which makes this container a Pod in the lab's registry and removes it on stop.
#
#   kubelab-pod [WORKLOAD CMD...]
#
# Environment (set in docker-compose.yml):
#   KUBELAB_SERVER  registry API URL (http://controller:6443)
#   POD_NAME, POD_NAMESPACE, POD_LABELS (k=v,k=v), POD_PORT (8080)
#   POD_READY_PATH  HTTP path the sidecar probes on 127.0.0.1:POD_PORT for readiness (/healthz)
#   KUBELAB_KUBECONFIG  kubeconfig `kubelab up` wrote (the API token), shared by a volume
# On SIGTERM the sidecar is stopped first (it deletes the Pod, so endpoints drop this
# container before its server goes away), then the workload.
set -u
: "${POD_NAME:=$(hostname)}" "${POD_NAMESPACE:=default}" "${POD_PORT:=8080}"
: "${POD_LABELS:=}" "${POD_READY_PATH:=/healthz}" "${KUBELAB_SERVER:=http://controller:6443}"
export POD_NAME POD_NAMESPACE POD_PORT

if [ $# -eq 0 ]; then
    set -- python -m kubelab.runtime.echo --host 0.0.0.0 --port "$POD_PORT"
fi
creds=()
if [ -n "${KUBELAB_KUBECONFIG:-}" ]; then
    creds=(--kubeconfig "$KUBELAB_KUBECONFIG")
fi
"$@" &
workload=$!

python -m kubelab.runtime.register --server "$KUBELAB_SERVER" --name "$POD_NAME" \
    --namespace "$POD_NAMESPACE" --labels "$POD_LABELS" --ip auto --port "$POD_PORT" \
    --ready-path "$POD_READY_PATH" "${creds[@]}" &
sidecar=$!

stop() {
    kill -TERM "$sidecar" 2>/dev/null
    wait "$sidecar" 2>/dev/null
    kill -TERM "$workload" 2>/dev/null
    wait "$workload" 2>/dev/null
    exit 0
}
trap stop TERM INT

# Either process dying ends the pod (compose restarts it per its restart policy).
while kill -0 "$workload" 2>/dev/null && kill -0 "$sidecar" 2>/dev/null; do
    wait -n 2>/dev/null || sleep 1
done
echo "kubelab-pod: $(kill -0 "$workload" 2>/dev/null && echo sidecar || echo workload) exited" >&2
kill -TERM "$sidecar" "$workload" 2>/dev/null
wait
exit 1
