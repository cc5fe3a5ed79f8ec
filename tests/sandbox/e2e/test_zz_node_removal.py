"""A node that goes away gives back its address blocks (runs last: it removes node2)."""

from conftest import attached, eventually, unique


def test_node_removal_frees_its_blocks(cluster):
    net = unique("shrink")
    cluster.network(net, "172.23.0.0/24", blockSize=26)

    def blocks_by_node():
        out: dict[str, list[str]] = {}
        for b in cluster.get("bridgenetwork", net).get("status", {}).get("blocks") or []:
            out.setdefault(b["node"], []).append(b["cidr"])
        return out

    def on_node2():
        return cluster.get("nodebridges", "-l", "bridgenet.io/node=node2")["items"]

    eventually(lambda: set(blocks_by_node()) == {"node1", "node2"}, what="blocks on both nodes")
    # Drained first, as a node is before it is deleted: its pods (earlier tests left some there)
    # go while its kubelet and agent still run, so their interfaces are detached and reported.
    # A pod the agent never reported gone would keep its network's blocks on node2, and hold the
    # network's deletion, for good.
    cluster.kubectl("delete", "pods", "-A", "-l", cluster.selector, "--field-selector", "spec.nodeName=node2",
                    "--wait=true", "--timeout=60s")
    eventually(lambda: not any(attached(nb) for nb in on_node2()), what="node2's agent to report no endpoints")
    cluster.sb.remove_node("node2")
    eventually(lambda: set(blocks_by_node()) == {"node1"}, what="node2's blocks to be freed")
    eventually(lambda: [nb["spec"]["node"] for nb in cluster.get(
        "nodebridges", "-l", f"bridgenet.io/network={net}")["items"]] == ["node1"], what="node2's NodeBridge to go")
    eventually(lambda: not on_node2(), what="every network to give up its NodeBridge on node2")
