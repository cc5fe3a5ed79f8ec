"""A node that goes away gives back its address blocks (runs last: it removes node2)."""

import subprocess
import time

from conftest import attached, eventually, unique


def test_node_deleted_with_pods_attached_frees_its_blocks_after_pod_gc(cluster):
    net = unique("shrink")
    cluster.network(net, "172.23.0.0/24", blockSize=26)

    def blocks_by_node():
        out: dict[str, list[str]] = {}
        for b in cluster.get("bridgenetwork", net).get("status", {}).get("blocks") or []:
            out.setdefault(b["node"], []).append(b["cidr"])
        return out

    def on_node2(network: str | None = None):
        selector = "bridgenet.io/node=node2" + (f",bridgenet.io/network={network}" if network else "")
        return cluster.get("nodebridges", "-l", selector)["items"]

    eventually(lambda: set(blocks_by_node()) == {"node1", "node2"}, what="blocks on both nodes")
    # The node dies with a pod of the network attached (and pods of earlier tests): no drain,
    # and no agent is left to report any of them detached.
    stranded, asker, pinned = unique("stranded"), unique("asker"), unique("pinned")
    cluster.pod(stranded, networks=net, node="node2")
    cluster.pod(asker, networks=net, node="node1")
    # An address of no node's block (the operator granted it), claimed from node2.
    cluster.pod(pinned, networks=[{"name": net, "ip": "172.23.0.222"}], node="node2")
    cluster.wait_ready(stranded, asker, pinned)

    def claim_of_pinned():
        return [c for c in cluster.get("addressclaims", "-l", f"bridgenet.io/network={net}")["items"]
                if c["spec"]["address"] == "172.23.0.222"]

    assert claim_of_pinned()[0]["status"]["grantedBy"] == "operator"
    eventually(lambda: any(attached(nb) for nb in on_node2(net)), what="node2's agent to report the pod")

    def lookup() -> subprocess.CompletedProcess:
        # The network's resolver on node1 (the gateway, 172.23.0.1).
        return cluster.exec(asker, "nslookup", "-timeout=1", "-type=a", stranded, "172.23.0.1")

    eventually(lambda: f"Address: {cluster.ip(stranded, net)}" in lookup().stdout,
               what="node1's resolver to know the pod on node2")
    cluster.sb.remove_node("node2")
    eventually(lambda: "node2" not in [n["metadata"]["name"] for n in cluster.get("nodes")["items"]],
               what="node2 to be deleted")
    # While the pod is still bound to node2 its address, and so node2's block, stays taken.
    eventually(lambda: on_node2(net) and on_node2(net)[0]["metadata"].get("deletionTimestamp"),
               what="node2's NodeBridge to be deleted")
    # Node loss: the network left node2, and with it the names of its pods, on every node.
    started = time.monotonic()
    while "NXDOMAIN" not in (answer := lookup()).stdout and time.monotonic() - started < 5:
        time.sleep(0.1)
    gone_after = time.monotonic() - started
    assert "NXDOMAIN" in answer.stdout, f"the lost node's pod still resolves: {answer.stdout}"
    assert gone_after < 2.0, f"the lost node's pod resolved for {gone_after:.2f} s after its NodeBridge went"
    assert set(blocks_by_node()) == {"node1", "node2"}, blocks_by_node()
    # Kubernetes' pod garbage collector deletes the pods of a deleted node; here the test does.
    cluster.kubectl("delete", "pods", "-A", "--field-selector", "spec.nodeName=node2", "--force",
                    "--grace-period=0", "--wait=true", "--timeout=60s")
    eventually(lambda: set(blocks_by_node()) == {"node1"}, timeout=45, what="node2's blocks to be freed")
    # No agent is left on node2 to release the claim: the operator deletes the claims of a
    # node that is gone.
    eventually(lambda: not claim_of_pinned(), what="the claim of node2's pod to go with node2")
    eventually(lambda: not on_node2(net), what="node2's NodeBridge to go")
    eventually(lambda: not on_node2(), what="every network to give up its NodeBridge on node2")
