"""Restarts that must not disturb anything: the agent (killed like a crash) keeps pods connected,
and the operator changes no block assignment."""

import time

from conftest import eventually, unique


def test_agent_restart_keeps_pods_connected(cluster):
    net = unique("steady")
    cluster.network(net, "172.25.0.0/24")
    a, b = unique("a"), unique("b")
    cluster.pod(a, net, node="node1")
    cluster.pod(b, net, node="node2")
    cluster.wait_ready(a, b)
    ip_a, ip_b = cluster.ip(a, net), cluster.ip(b, net)
    before = (cluster.attachments(a), cluster.attachments(b))
    assert cluster.ping(a, ip_b)
    cluster.sb.restart("agent/node1", hard=True)
    cluster.sb.restart("agent/node2", hard=True)
    # Connected throughout the restart and after it, with the same addresses and MACs.
    for _ in range(5):
        assert cluster.ping(a, ip_b)
    time.sleep(3)
    assert cluster.ping(a, ip_b) and cluster.ping(b, ip_a)
    assert (cluster.attachments(a), cluster.attachments(b)) == before


def test_operator_restart_changes_no_assignment(cluster):
    net = unique("kept")
    cluster.network(net, "172.24.0.0/22", blockSize=26)
    p = unique("p")
    cluster.pod(p, net, node="node2")
    cluster.wait_ready(p)
    cluster.ip(p, net)

    def assignment():
        blocks = cluster.get("bridgenetwork", net).get("status", {}).get("blocks") or []
        nbs = cluster.get("nodebridges", "-l", f"bridgenet.io/network={net}")["items"]
        return (sorted((b["cidr"], b["node"]) for b in blocks),
                sorted((nb["spec"]["node"], tuple(nb["spec"]["blocks"])) for nb in nbs))

    eventually(lambda: assignment()[0] and len(assignment()[1]) == 2, what="blocks assigned on both nodes")
    time.sleep(2)
    before = assignment()
    cluster.sb.restart("operator")
    time.sleep(5)
    assert assignment() == before
    assert cluster.ping(p, "172.24.0.1")
