#!/usr/bin/env bash
# The main job on an embedded default: a two-node sandbox cluster on this machine (network
# namespaces as nodes, each with containerd, a kubelet stand-in and the bridgenet agent; a tiny
# scheduler; the operator; a Kubernetes API emulator — or the API server of a kubeconfig given as
# SANDBOX_KUBECONFIG), then Docker's bridge-network story told with kubectl, every line real output.
# Needs root. Everything it creates is torn down at the end, also on Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
STATE=${SANDBOX_STATE:-/tmp/bnt-sb}
WAIT=${DEMO_WAIT:-45s}

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
run() { printf '$ %s\n' "$*"; "$@" || printf '(exit %s)\n' "$?"; }

# One demo at a time on a machine: a second one waits here rather than wiping this one's state.
exec 9>/run/bnt-sb-demo-script.lock
flock 9

say "build (cargo build --workspace) and check the generated CRDs"
cargo build --workspace --locked
cargo run -q --locked -p bridgenet-crds --bin crdgen -- --check

say "bring up the sandbox: 2 nodes, containerd + kubelet stand-in + bridgenet-agent on each, the operator"
rm -rf "$STATE" && mkdir -p "$STATE"
up_args=(--nodes 2 --state-dir "$STATE" --bin-dir "$ROOT/target/debug" --ready-file "$STATE/ready")
if [[ -n "${SANDBOX_KUBECONFIG:-}" ]]; then up_args+=(--kubeconfig "$SANDBOX_KUBECONFIG"); else up_args+=(--emulator); fi
(cd tests/sandbox && exec python3 -m bnsandbox.up "${up_args[@]}") > "$STATE/up.log" 2>&1 &
UP=$!
down() {
    kill -TERM "$UP" 2>/dev/null || true
    wait "$UP" 2>/dev/null || true
    tail -n 1 "$STATE/up.log" 2>/dev/null || true
}
trap down EXIT
for _ in $(seq 300); do
    [[ -s "$STATE/ready" ]] && break
    kill -0 "$UP" 2>/dev/null || { cat "$STATE/up.log"; exit 1; }
    sleep 0.2
done
[[ -s "$STATE/ready" ]] || { echo "sandbox did not come up"; cat "$STATE/up.log"; exit 1; }
cat "$STATE/up.log"
export KUBECONFIG
KUBECONFIG=$(cat "$STATE/ready")
# kubectl finds the `kubectl bridgenet` plugin (kubectl-bridgenet, built above) on PATH.
export PATH="$ROOT/target/debug:$PATH"
podexec() { (cd tests/sandbox && python3 -m bnsandbox.podexec --state-dir "$STATE" "$@"); }
# The agent writes a pod's network-status annotation just after the attachment; wait for it
# (bounded) instead of racing it.
wait_attached() { # POD NETWORK
    for _ in $(seq 60); do
        kubectl get pod "$1" -o jsonpath='{.metadata.annotations.bridgenet\.io/network-status}' | grep -q "\"$2\"" && return 0
        sleep 0.5
    done
    echo "(no $2 attachment reported for $1)"
}
# The address POD got on NETWORK, from the agent's network-status annotation (empty if none).
network_ip() { # POD NETWORK
    kubectl get pod "$1" -o jsonpath='{.metadata.annotations.bridgenet\.io/network-status}' 2>/dev/null \
        | python3 -c 'import json,sys
try:
    e = next(e for e in json.load(sys.stdin) if e.get("name") == sys.argv[1])
    print(((e.get("ips") or [e.get("ip")])[0]).split("/")[0])
except Exception:
    pass' "$2" || true
}
NODE_NS_PREFIX=${SANDBOX_PREFIX:-bnt-sb-demo-}
on_node() { # NODE CMD...
    local node=$1; shift
    printf '$ [%s] %s\n' "$node" "$*"
    ip netns exec "$NODE_NS_PREFIX$node" "$@" || printf '(exit %s)\n' "$?"
}

say "the cluster"
run kubectl get nodes -o wide

say "docker network create --subnet=172.20.0.0/16 --gateway=172.20.0.1 custom-network"
run cat examples/custom-network.yaml
run kubectl apply -f examples/custom-network.yaml
run kubectl wait --for=condition=Ready bridgenetwork/custom-network --timeout="$WAIT"

say "docker network ls"
run kubectl bridgenet ls
run kubectl get bridgenetworks -o wide
run kubectl get nodebridges -o custom-columns='NAME:.metadata.name,NODE:.spec.node,BRIDGE:.spec.bridge,GATEWAY:.spec.gateway,READY:.status.conditions[?(@.type=="Ready")].status'

say "docker network create --internal internal-network"
run kubectl apply -f examples/internal-network.yaml

say "docker run --network custom-network web; docker run --network custom-network --ip 172.20.0.50 db (+ internal-network)"
run kubectl apply -f examples/pod-attached.yaml
run kubectl wait --for=condition=Ready pod/web pod/db --timeout="$WAIT"
run kubectl get pods -o wide
wait_attached web custom-network
wait_attached db internal-network
for p in web db; do
    printf '$ kubectl get pod %s -o jsonpath={.metadata.annotations.bridgenet\\.io/network-status}\n' "$p"
    kubectl get pod "$p" -o jsonpath='{.metadata.annotations.bridgenet\.io/network-status}' || true
    echo
done

say "docker exec web ip addr; ping db across nodes"
run podexec web -- ip -4 -o addr
DB_IP=$(network_ip db custom-network)
if [[ -n "$DB_IP" ]]; then run podexec web -- ping -c 2 -W 1 "$DB_IP"; else echo "(db has no custom-network address yet)"; fi

say "the gateway 172.20.0.1 answers on every node (the same address and MAC on each bridge)"
run podexec web -- ping -c 1 -W 1 172.20.0.1
run podexec db -- ping -c 1 -W 1 172.20.0.1

say "docker network connect internal-network web (hot attach: the pod keeps running)"
# kubectl bridgenet connect edits the pod's annotation (guarded by its resourceVersion) and waits
# for the agent's report; the raw views follow.
run kubectl bridgenet connect internal-network web
run kubectl get pod web -o jsonpath='{.metadata.annotations.bridgenet\.io/networks}'
echo
run kubectl get pod web -o jsonpath='{.metadata.annotations.bridgenet\.io/network-status}'
echo
run podexec web -- ip -4 -o addr

say "docker network disconnect internal-network web"
run kubectl bridgenet disconnect internal-network web
run kubectl get pod web -o jsonpath='{.metadata.annotations.bridgenet\.io/networks}'
echo
run podexec web -- ip -4 -o addr

say "isolation: a pod on another network cannot reach web"
run kubectl apply -f examples/second-network.yaml
kubectl apply -f - <<'EOF'
apiVersion: v1
kind: Pod
metadata:
  name: stranger
  annotations: {bridgenet.io/networks: second-network}
spec:
  containers: [{name: stranger, image: "busybox:1.36", command: [sleep, "3600"]}]
EOF
run kubectl wait --for=condition=Ready pod/stranger --timeout="$WAIT"
wait_attached stranger second-network
WEB_IP=$(network_ip web custom-network)
if [[ -n "$WEB_IP" ]]; then
    # Send it through stranger's own bridgenet gateway, so that it is the node that must drop it.
    GW=$(kubectl get pod stranger -o jsonpath='{.metadata.annotations.bridgenet\.io/network-status}' \
        | python3 -c 'import json,sys; e=json.load(sys.stdin)[0]; print(e["gateway"][0], e["interface"])' || true)
    [[ -n "$GW" ]] && run podexec stranger -- ip route add 172.20.0.0/16 via ${GW% *} dev ${GW#* }
    run podexec stranger -- ping -c 2 -W 1 "$WEB_IP"
fi

say "docker run --network-alias: pods find each other by name (DNS at the gateway, on every node)"
run kubectl apply -f examples/pod-dns.yaml
run kubectl wait --for=condition=Ready pod/store pod/client --timeout="$WAIT"
wait_attached store custom-network
wait_attached client custom-network
run kubectl wait --for=condition=ResolverReady bridgenetwork/custom-network --timeout="$WAIT"
# Every node learns a new pod's name from the endpoints its node reports; wait for it (bounded).
for _ in $(seq 40); do
    podexec web -- nslookup -timeout=1 postgres 172.20.0.1 >/dev/null 2>&1 && break
    sleep 0.25
done
run kubectl get pods -o wide
run podexec web -- nslookup db 172.20.0.1
run podexec web -- nslookup postgres 172.20.0.1
run podexec web -- nslookup 172.20.0.50 172.20.0.1
echo "# client's resolv.conf names the gateway, so plain names work inside it:"
run podexec --in-container client -- cat /etc/resolv.conf
run podexec --in-container client -- nslookup store
echo "# other names go to the node's resolvers (the sandbox runs one that knows upstream.test):"
run podexec web -- nslookup www.upstream.test 172.20.0.1
echo "# a pod on another network asking its own gateway: custom-network's names are not there"
run podexec stranger -- nslookup web 172.21.0.1

say "docker run --network static-net --ip 172.41.0.77: any address of the subnet, on any node"
run cat examples/sticky-network.yaml
run kubectl apply -f examples/sticky-network.yaml
run kubectl wait --for=condition=Ready bridgenetwork/static-net --timeout="$WAIT"
run kubectl get nodebridges -l bridgenet.io/network=static-net -o custom-columns='NODE:.spec.node,BLOCKS:.spec.blocks'
# The pod goes to the node whose block does NOT hold 172.41.0.77: the other node grants the claim.
ELSEWHERE=$(kubectl get nodebridges -l bridgenet.io/network=static-net -o json | python3 -c '
import ipaddress, json, sys
nbs = json.load(sys.stdin)["items"]
print(next(nb["spec"]["node"] for nb in nbs
           if not any(ipaddress.ip_address("172.41.0.77") in ipaddress.ip_network(b) for b in nb["spec"]["blocks"])))')
OTHER=$(kubectl get nodes -o jsonpath='{.items[*].metadata.name}' | tr ' ' '\n' | grep -vx "$ELSEWHERE" | head -1)
echo "# 172.41.0.77 is not in $ELSEWHERE's block: pinned goes to $ELSEWHERE"
# These pods carry the readiness gate bridgenet.io/networks-ready: Ready only once their networks
# are attached. On a cluster the chart's MutatingAdmissionPolicy adds it to every pod created with
# the annotation; the demo installs no chart (and the emulator runs no admission), so they list it.
pinned_pod() { # NAME NODE ANNOTATION
    printf '$ kubectl apply -f - # pod %s on %s, bridgenet.io/networks: %s, readinessGates: [bridgenet.io/networks-ready]\n' "$1" "$2" "$3"
    kubectl apply -f - <<EOF
apiVersion: v1
kind: Pod
metadata:
  name: $1
  annotations: {bridgenet.io/networks: '$3'}
spec:
  nodeName: $2
  readinessGates: [{conditionType: bridgenet.io/networks-ready}]
  containers: [{name: main, image: "busybox:1.36", command: [sleep, "3600"]}]
EOF
}
pinned_pod pinned "$ELSEWHERE" '[{"name":"static-net","ip":"172.41.0.77"}]'
run kubectl wait --for=condition=Ready pod/pinned --timeout="$WAIT"
wait_attached pinned static-net
run podexec pinned -- ip -4 -o addr show net1
run kubectl get addressclaims -o wide
echo "# a second pod asking for the same address, on the other node, is refused and told who has it:"
pinned_pod copycat "$OTHER" '[{"name":"static-net","ip":"172.41.0.77"}]'
for _ in $(seq 40); do
    kubectl get events --field-selector involvedObject.name=copycat,reason=AddressInUse -o name | grep -q . && break
    sleep 0.5
done
run kubectl get events --field-selector involvedObject.name=copycat,reason=AddressInUse
run kubectl delete pod copycat --wait=false

say "sticky addresses: a pod deleted and created again with its name gets its address back, on the other node"
pinned_pod keeper "$ELSEWHERE" static-net
run kubectl wait --for=condition=Ready pod/keeper --timeout="$WAIT"
wait_attached keeper static-net
KEEPER_IP=$(network_ip keeper static-net)
echo "# keeper on $ELSEWHERE has $KEEPER_IP"
run kubectl delete pod keeper --wait=true --timeout=60s
# The claim is released (not deleted) once the agent has removed keeper's interface.
run kubectl wait --for=jsonpath='{.status.phase}'=Released "addressclaim/static-net.${KEEPER_IP//./-}" --timeout="$WAIT"
run kubectl get addressclaims
pinned_pod keeper "$OTHER" static-net
run kubectl wait --for=condition=Ready pod/keeper --timeout="$WAIT"
wait_attached keeper static-net
echo "# keeper, created again on $OTHER, has $(network_ip keeper static-net)"
run kubectl get addressclaims
run kubectl get pods pinned keeper -o wide
run podexec pinned -- ping -c 2 -W 1 "$(network_ip keeper static-net)"

say "readiness gate: a pod is Ready only while every network it asks for is attached"
echo "# keeper now also asks for late-net, which does not exist yet:"
run kubectl annotate pod keeper --overwrite bridgenet.io/networks=static-net,late-net
run kubectl wait --for=condition=bridgenet.io/networks-ready=False pod/keeper --timeout="$WAIT"
run kubectl get pod keeper -o wide
run kubectl get pod keeper -o jsonpath='{.status.conditions[?(@.type=="bridgenet.io/networks-ready")].message}'
echo
kubectl apply -f - <<'EOF'
apiVersion: bridgenet.io/v1alpha1
kind: BridgeNetwork
metadata: {name: late-net}
spec: {subnet: 172.42.0.0/24}
EOF
run kubectl wait --for=condition=Ready pod/keeper --timeout="$WAIT"
run kubectl get pod keeper -o wide
run kubectl get pod keeper -o jsonpath='{.status.conditions[?(@.type=="bridgenet.io/networks-ready")].message}'
echo

say "docker network inspect custom-network"
run kubectl bridgenet inspect --format table custom-network
run kubectl describe bridgenetwork custom-network
echo "# the endpoints, per node:"
run kubectl get nodebridges -l bridgenet.io/network=custom-network \
    -o custom-columns='NODE:.spec.node,POD:.status.endpoints[*].pod,INTERFACE:.status.endpoints[*].interface,IPV4:.status.endpoints[*].ipv4,MAC:.status.endpoints[*].mac'

say "refused at apply: a bridge name longer than Linux allows"
run kubectl apply -f examples/invalid/bridge-name-too-long.yaml

say "refused by the operator: a network overlapping custom-network"
kubectl apply -f - <<'EOF'
apiVersion: bridgenet.io/v1alpha1
kind: BridgeNetwork
metadata: {name: overlapping}
spec: {subnet: 172.20.128.0/17}
EOF
run kubectl wait --for=condition=Accepted=False bridgenetwork/overlapping --timeout="$WAIT"
run kubectl get bridgenetworks -o wide
run kubectl get events --field-selector involvedObject.name=overlapping

say "sandbox failures the kubelet stand-in reported (and retried)"
run kubectl get events --field-selector reason=FailedCreatePodSandBox

say "docker network rm custom-network while pods use it: held until they detach"
run kubectl delete bridgenetwork custom-network --wait=false
run kubectl wait --for=jsonpath='{.status.conditions[?(@.type=="Ready")].reason}'=DeletionBlocked bridgenetwork/custom-network --timeout="$WAIT"
run kubectl get bridgenetwork custom-network -o jsonpath='{.status.conditions[?(@.type=="Ready")].message}'
echo

say "delete the pods, then every network: nothing of bridgenet is left on the nodes"
run kubectl delete pod web db stranger store client pinned keeper --wait=true --timeout=60s
run kubectl delete bridgenetworks --all --wait=true --timeout=60s
run kubectl get bridgenetworks,nodebridges
for node in node1 node2; do
    on_node "$node" ip -br link show type bridge
    on_node "$node" ip -br link show type vxlan
    on_node "$node" sh -c 'nft list tables | grep bridgenet || echo "no bridgenet nftables tables"'
done

say "tear down"
