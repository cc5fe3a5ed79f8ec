#!/usr/bin/env bash
# What a pod waits for, in one run:
# 1. CNI call latency of bridgenet next to Debian's reference bridge+host-local chain (ipMasq on),
#    for each pod count given (default 200 and 1000, so that what grows with the pods on a node
#    shows): the pods attached and detached sequentially and 4 in parallel, p50/p95 of every ADD
#    and DEL, the time until all were attached, the agent's RSS with that many endpoints and the
#    plugin's peak RSS;
# 2. in the two-node sandbox with the real operator and agents (release build): a new network
#    Ready on every node, hot attach and hot detach of a running pod, 30 pods Ready, and the
#    whole agent's memory with 1,000 endpoints on 50 networks (tests/sandbox/latency_bench.py).
# Root only (network namespaces prefixed bnt-cni-bench and bnt-sb-bench-). Usage:
# scripts/bench-cni.sh [PODS...]
set -euo pipefail
cd "$(dirname "$0")/.."
command -v /usr/lib/cni/bridge >/dev/null || {
    echo "bench-cni: needs containernetworking-plugins (make setup)" >&2
    exit 1
}
counts=("$@")
((${#counts[@]})) || counts=(200 1000)
for pods in "${counts[@]}"; do
    BNT_BENCH_PODS="$pods" cargo bench -q -p bridgenet-agent --bench cni
done
cargo build -q --release --workspace --locked
cd tests/sandbox
python3 latency_bench.py --bin-dir ../../target/release
