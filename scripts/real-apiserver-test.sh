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
# paths; the control plane then also runs the node lifecycle controller). SANDBOX_REAL_CONTROLLER_MANAGER
# is not used here: the control plane started below has a controller manager of its own.
# BRIDGENET_BIN_DIR: bridgenet's binaries, already built; nothing is built then, so the CEL step
# (a cargo test) is skipped. Without the three required binaries it prints `SKIPPED: <reason>`
# and succeeds: no Kubernetes binary can be had on CI machines, and none is ever part of this
# repository.
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
for var in SANDBOX_REAL_KUBELET SANDBOX_REAL_SCHEDULER; do
    if [[ -n "${!var:-}" && ! -x "${!var}" ]]; then
        echo "real-apiserver-test: $var=${!var} is not an executable file" >&2
        exit 1
    fi
done
if [[ -n "${SANDBOX_REAL_CONTROLLER_MANAGER:-}" ]]; then
    # A second controller manager would run the same controllers twice against one server.
    echo "real-apiserver-test: ignoring SANDBOX_REAL_CONTROLLER_MANAGER: the control plane runs KUBE_CONTROLLER_MANAGER"
    unset SANDBOX_REAL_CONTROLLER_MANAGER
fi

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
if [[ -n "${BRIDGENET_BIN_DIR:-}" ]]; then
    echo "== SKIPPED every CEL case of the unit tables: BRIDGENET_BIN_DIR is set, and this run builds nothing"
else
    echo "== every CEL case of the unit tables, judged by the real API server"
    BRIDGENET_REAL_KUBECONFIG="$kubeconfig" cargo test -q --locked -p bridgenet-crds --test crd -- \
        --ignored real_server
    cargo build --workspace --locked -q
fi
echo "== kubectl bridgenet create/connect/disconnect/rm against the real API server (no operator or agent yet: the tests play their part)"
plugin_dir="${BRIDGENET_BIN_DIR:-$PWD/target/debug}"
(cd tests/sandbox && SANDBOX_KUBECONFIG="$kubeconfig" BRIDGENET_BIN_DIR="$plugin_dir" BRIDGENET_REQUIRE_PLUGIN=1 \
    python3 -m pytest -q -p no:cacheprovider tests/test_kubectl_plugin_verbs.py)
echo "== the sandbox end-to-end suite against the real API server${SANDBOX_REAL_KUBELET:+, real kubelets}${SANDBOX_REAL_SCHEDULER:+, real kube-scheduler}"
(cd tests/sandbox && SANDBOX_KUBECONFIG="$kubeconfig" python3 -m pytest -q -p no:cacheprovider e2e)
