#!/usr/bin/env bash
# CNI call latency of bridgenet next to Debian's reference bridge+host-local chain (ipMasq on),
# in one run: N pods (default 200) attached and detached sequentially and 4 in parallel, p50/p95
# of every ADD and DEL, the agent's RSS with N endpoints and the plugin's peak RSS.
# Root only (network namespaces prefixed bnt-cni-bench). Usage: scripts/bench-cni.sh [N]
set -euo pipefail
cd "$(dirname "$0")/.."
command -v /usr/lib/cni/bridge >/dev/null || {
    echo "bench-cni: needs containernetworking-plugins (make setup)" >&2
    exit 1
}
BNT_BENCH_PODS="${1:-200}" exec cargo bench -q -p bridgenet-agent --bench cni
