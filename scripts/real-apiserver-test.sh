#!/usr/bin/env bash
# bridgenet against a real Kubernetes control plane on this machine's loopback (see
# tests/real-apiserver/): the CRDs and the chart installed, every example and every CEL case of
# the unit tables judged by the real server, the chart's RBAC asked of the real authorizer, and
# the whole sandbox end-to-end suite run against it.
#
#   KUBE_APISERVER=/path/kube-apiserver KUBE_CONTROLLER_MANAGER=/path/kube-controller-manager \
#   ETCD=/usr/bin/etcd make real-apiserver-test
#
# Optional, for real nodes in the sandbox: SANDBOX_REAL_KUBELET, SANDBOX_REAL_SCHEDULER (binary
# paths). Without the three required binaries it prints `SKIPPED: <reason>` and succeeds: no
# Kubernetes binary can be had on CI machines, and none is ever part of this repository.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
for var in KUBE_APISERVER KUBE_CONTROLLER_MANAGER ETCD; do
    path="${!var:-}"
    if [[ -z "$path" ]]; then
        missing+=("$var is not set")
    elif [[ ! -x "$path" ]]; then
        missing+=("$var=$path is not an executable file")
    fi
done
if ((${#missing[@]})); then
    echo "SKIPPED: real-apiserver-test needs the binaries of a real control plane: $(IFS=';'; echo "${missing[*]}")"
    exit 0
fi
for var in SANDBOX_REAL_KUBELET SANDBOX_REAL_SCHEDULER SANDBOX_REAL_CONTROLLER_MANAGER; do
    if [[ -n "${!var:-}" && ! -x "${!var}" ]]; then
        echo "real-apiserver-test: $var=${!var} is not an executable file" >&2
        exit 1
    fi
done

"$KUBE_APISERVER" --version
state="${REAL_APISERVER_STATE:-/tmp/bn-real-apiserver}"
ready="$state.ready"
rm -f "$ready"
python3 tests/real-apiserver/cluster.py --state-dir "$state" --ready-file "$ready" &
cluster=$!
stop() {
    kill "$cluster" 2>/dev/null || true
    wait "$cluster" 2>/dev/null || true
}
trap stop EXIT
for _ in $(seq 600); do
    [[ -s "$ready" ]] && break
    kill -0 "$cluster" 2>/dev/null || { echo "real-apiserver-test: the control plane did not start" >&2; exit 1; }
    sleep 0.2
done
[[ -s "$ready" ]] || { echo "real-apiserver-test: the control plane did not start in 120 s" >&2; exit 1; }
kubeconfig="$(cat "$ready")"

echo "== CRDs, examples, chart and RBAC on the real API server"
REAL_KUBECONFIG="$kubeconfig" python3 -m pytest -q -p no:cacheprovider tests/real-apiserver
echo "== every CEL case of the unit tables, judged by the real API server"
BRIDGENET_REAL_KUBECONFIG="$kubeconfig" cargo test -q --locked -p bridgenet-crds --test crd -- \
    --ignored real_server
echo "== the sandbox end-to-end suite against the real API server"
cargo build --workspace --locked -q
(cd tests/sandbox && SANDBOX_KUBECONFIG="$kubeconfig" python3 -m pytest -q -p no:cacheprovider e2e)
