"""The Docker bridge-network story on a two-node sandbox with the real operator, agents and CNI
plugin: what a user does with kubectl, and what they would check with ping."""

import json
import subprocess
import time

from conftest import eventually, unique


def test_attach_at_start_and_connectivity_same_node_and_across_nodes(cluster):
    net = unique("story")
    cluster.network(net, "172.30.0.0/16")
    a, b, c = unique("a"), unique("b"), unique("c")
    cluster.pod(a, net, node="node1")
    cluster.pod(b, net, node="node2")
    cluster.pod(c, net, node="node1")
    cluster.wait_ready(a, b, c)
    ip_a, ip_b, ip_c = (cluster.ip(p, net) for p in (a, b, c))
    assert all(ip.startswith("172.30.") for ip in (ip_a, ip_b, ip_c))
    assert len({ip_a, ip_b, ip_c}) == 3
    assert cluster.ping(a, ip_c), "same node"
    assert cluster.ping(a, ip_b), "across nodes"
    assert cluster.ping(b, ip_a), "across nodes, back"
    assert cluster.ping(b, "172.30.0.1"), "the gateway answers on every node"
    cluster.kubectl("wait", "--for=condition=Ready", f"bridgenetwork/{net}", "--timeout=60s")
    assert cluster.get("bridgenetwork", net)["status"]["readySummary"] == "2/2"
    eventually(lambda: cluster.get("bridgenetwork", net)["status"].get("endpoints") == 3, what="3 endpoints")


def test_networks_are_isolated_both_ways(cluster):
    red, blue = unique("red"), unique("blue")
    cluster.network(red, "172.31.0.0/24")
    cluster.network(blue, "172.31.1.0/24")
    r1, r2, b1 = unique("r1"), unique("r2"), unique("b1")
    cluster.pod(r1, red, node="node1")
    cluster.pod(r2, red, node="node2")
    cluster.pod(b1, blue, node="node1")
    cluster.wait_ready(r1, r2, b1)
    ip_r2, ip_b1, ip_r1 = cluster.ip(r2, red), cluster.ip(b1, blue), cluster.ip(r1, red)
    assert cluster.ping(r1, ip_r2), "same network still works"
    # Each pod routes the other network through its own network's gateway, so the packets really
    # leave through its bridgenet interface and it is the node that must drop them.
    for pod, net, other in ((r1, red, "172.31.1.0/24"), (b1, blue, "172.31.0.0/24")):
        entry = cluster.attachments(pod)[net]
        route = cluster.exec(pod, "ip", "route", "add", other, "via", entry["gateway"][0], "dev", entry["interface"])
        assert route.returncode == 0, route.stderr
    assert cluster.ping(r1, "172.31.0.1") and cluster.ping(b1, "172.31.1.1"), "own gateways answer"
    assert not cluster.ping(r1, ip_b1), "red -> blue"
    assert not cluster.ping(b1, ip_r1), "blue -> red"
    assert not cluster.ping(b1, ip_r2), "blue -> red on the other node"


def test_hot_attach_and_detach(cluster):
    net = unique("hot")
    cluster.network(net, "172.29.0.0/24")
    p, peer = unique("late"), unique("peer")
    cluster.pod(p, None, node="node2")
    cluster.pod(peer, net, node="node1")
    cluster.wait_ready(p, peer)
    assert net not in cluster.attachments(p)
    cluster.kubectl("annotate", "pod", p, f"bridgenet.io/networks={net}")
    ip = cluster.ip(p, net)
    iface = cluster.attachments(p)[net]["interface"]
    assert ip in cluster.exec(p, "ip", "-4", "-o", "addr", "show", iface).stdout
    assert cluster.ping(p, cluster.ip(peer, net))
    cluster.kubectl("annotate", "pod", p, "bridgenet.io/networks-")
    eventually(lambda: net not in cluster.attachments(p), what="the detach to be reported")
    eventually(lambda: cluster.exec(p, "ip", "link", "show", iface).returncode != 0, what="the interface to go")


def test_overlap_is_refused_with_a_readable_condition(cluster):
    first, second = unique("first"), unique("second")
    cluster.network(first, "172.28.0.0/16")
    cluster.network(second, "172.28.128.0/17")

    def refused():
        conds = {c["type"]: c for c in cluster.get("bridgenetwork", second).get("status", {}).get("conditions", [])}
        acc = conds.get("Accepted")
        return acc if acc and acc["status"] == "False" else None

    cond = eventually(refused, what="Accepted=False")
    assert cond["reason"] == "SubnetOverlap"
    assert first in cond["message"] and "172.28.0.0/16" in cond["message"]


def test_bad_annotation_gives_the_pod_an_event(cluster):
    p = unique("typo")
    cluster.pod(p, "no-such-network", node="node1")

    def warned():
        events = json.loads(cluster.kubectl("get", "events", "--field-selector", f"involvedObject.name={p}",
                                            "-o", "json").stdout)["items"]
        return [e for e in events if e.get("type") == "Warning"]

    events = eventually(warned, what="a Warning event on the pod")
    assert any("no-such-network" in (e.get("message") or "") for e in events), events


def test_egress_masquerade_and_internal(cluster):
    out, inner = unique("out"), unique("inner")
    cluster.network(out, "172.27.0.0/24")
    cluster.network(inner, "172.27.1.0/24", internal=True)
    po, pi = unique("po"), unique("pi")
    cluster.pod(po, out, node="node1")
    cluster.pod(pi, inner, node="node2")
    cluster.wait_ready(po, pi)
    cluster.ip(po, out)
    cluster.ip(pi, inner)
    # 10.251.255.1 is the sandbox's "internet" host, which has no route back to pod subnets: a
    # reply only comes back if the node masqueraded. Pods keep their default route on eth0 (the
    # primary network), so each pod routes the internet host through its network's gateway, as
    # a Docker container on that network would.
    for pod, net in ((po, out), (pi, inner)):
        entry = cluster.attachments(pod)[net]
        route = cluster.exec(pod, "ip", "route", "add", "10.251.255.1/32", "via", entry["gateway"][0],
                             "dev", entry["interface"])
        assert route.returncode == 0, route.stderr
    assert cluster.ping(po, "10.251.255.1"), "egress is masqueraded through the node"
    assert not cluster.ping(pi, "10.251.255.1"), "an internal network has no egress"


def test_network_deletion_waits_for_its_pods_then_cleans_up(cluster):
    net = unique("gone")
    cluster.network(net, "172.26.0.0/24")
    p = unique("holder")
    cluster.pod(p, net, node="node1")
    cluster.wait_ready(p)
    cluster.ip(p, net)
    bridge = eventually(lambda: cluster.get("bridgenetwork", net).get("status", {}).get("bridge"), what="bridge")
    node_ns = cluster.sb.topo.node("node1").netns
    assert subprocess.run(["ip", "-n", node_ns, "link", "show", bridge], capture_output=True).returncode == 0
    cluster.kubectl("delete", "bridgenetwork", net, "--wait=false")
    # Held by the operator's finalizer while a pod is attached (checked over a few seconds).
    time.sleep(3)
    assert cluster.get("bridgenetwork", net)["metadata"].get("deletionTimestamp")
    assert net in cluster.attachments(p)
    cluster.kubectl("delete", "pod", p)
    eventually(lambda: cluster.kubectl("get", "bridgenetwork", net, check=False).returncode != 0,
               what="the network to be deleted")
    eventually(lambda: not cluster.get("nodebridges", "-l", f"bridgenet.io/network={net}")["items"],
               what="its NodeBridges to be gone")
    eventually(lambda: subprocess.run(["ip", "-n", node_ns, "link", "show", bridge], capture_output=True).returncode != 0,
               what="the bridge to be removed from the node")


def test_namespace_selector_refuses_other_tenants(cluster):
    net = unique("tenant")
    allowed, other = unique("team-a"), unique("team-b")
    cluster.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": allowed, "labels": {"team": "a"}}})
    cluster.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": other, "labels": {"team": "b"}}})
    cluster.network(net, "172.21.0.0/24", namespaceSelector={"matchLabels": {"team": "a"}})
    ok, refused = unique("ok"), unique("refused")
    cluster.pod(ok, net, node="node1", namespace=allowed)
    cluster.pod(refused, net, node="node1", namespace=other)
    cluster.wait_ready(ok, namespace=allowed)
    assert cluster.ip(ok, net, namespace=allowed).startswith("172.21.0.")

    def warned():
        events = json.loads(cluster.kubectl("get", "events", "-n", other, "--field-selector",
                                            f"involvedObject.name={refused}", "-o", "json").stdout)["items"]
        return [e for e in events if e.get("type") == "Warning"]

    events = eventually(warned, what="a Warning event on the refused pod")
    assert any(net in (e.get("message") or "") for e in events), events
    assert net not in cluster.attachments(refused, namespace=other)
    # The admitted pod's sandbox may start before its node has the network (applied just
    # before): it waits for it, and is judged on its namespace's labels, never refused.
    admitted = json.loads(cluster.kubectl("get", "events", "-n", allowed, "--field-selector",
                                          f"involvedObject.name={ok}", "-o", "json").stdout)["items"]
    assert not [e for e in admitted if e.get("reason") == "NamespaceNotAdmitted"], admitted


def test_a_network_without_pods_is_ready_with_one_block_per_node(cluster):
    """Before any pod attaches, each node holds exactly one block: an agent's first status
    report (no counts yet) must not read as a full node and make the operator grow it."""
    net = unique("idle")
    # A subnet no other test of the session uses: networks of earlier tests stay, and an
    # overlap would (rightly) be refused.
    cluster.network(net, "172.22.0.0/16")
    cluster.kubectl("wait", "--for=condition=Ready", f"bridgenetwork/{net}", "--timeout=60s")

    def counts_reported():
        items = cluster.get("nodebridges", "-l", f"bridgenet.io/network={net}")["items"]
        return len(items) == 2 and all(nb.get("status", {}).get("freeAddresses", 0) > 0 for nb in items)

    eventually(counts_reported, what="both agents report their free addresses")
    status = cluster.get("bridgenetwork", net)["status"]
    assert status["readySummary"] == "2/2"
    assert sorted(b["node"] for b in status["blocks"]) == ["node1", "node2"], status["blocks"]
    for nb in cluster.get("nodebridges", "-l", f"bridgenet.io/network={net}")["items"]:
        assert len(nb["spec"]["blocks"]) == 1, nb["spec"]["blocks"]
        assert nb["status"]["allocatedAddresses"] + nb["status"]["freeAddresses"] in (62, 64)
    cluster.kubectl("delete", "bridgenetwork", net, "--wait=true", "--timeout=60s")
