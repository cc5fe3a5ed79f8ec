"""A node that goes away gives back its address blocks (runs last: it removes node2)."""

from conftest import eventually, unique


def test_node_removal_frees_its_blocks(cluster):
    net = unique("shrink")
    cluster.network(net, "172.23.0.0/24", blockSize=26)

    def blocks_by_node():
        out: dict[str, list[str]] = {}
        for b in cluster.get("bridgenetwork", net).get("status", {}).get("blocks") or []:
            out.setdefault(b["node"], []).append(b["cidr"])
        return out

    eventually(lambda: set(blocks_by_node()) == {"node1", "node2"}, what="blocks on both nodes")
    cluster.sb.remove_node("node2")
    eventually(lambda: set(blocks_by_node()) == {"node1"}, what="node2's blocks to be freed")
    eventually(lambda: [nb["spec"]["node"] for nb in cluster.get(
        "nodebridges", "-l", f"bridgenet.io/network={net}")["items"]] == ["node1"], what="node2's NodeBridge to go")
