"""Addresses like Docker's (issue 13): `--ip` anywhere in the subnet on any node, one holder per
address cluster-wide, and addresses that stick to a pod's name across re-creation.

A network's /24 is carved into /26 blocks, one per node; two of the four stay unassigned. A static
address may lie in the pod's node's block, in the other node's block (that node grants it: only
its journal knows what it gave out) or in no node's block (the operator grants it). Every claim is
an AddressClaim a user can `kubectl get`.
"""

from __future__ import annotations

import ipaddress
import json

from conftest import eventually, unique

ATTACH_WITHIN = 60.0


def blocks_by_node(cluster, net: str) -> dict[str, ipaddress.IPv4Network]:
    def assigned():
        blocks = cluster.get("bridgenetwork", net).get("status", {}).get("blocks") or []
        return {b["node"]: ipaddress.ip_network(b["cidr"]) for b in blocks} if len(blocks) == 2 else None

    return eventually(assigned, what=f"{net}'s two blocks")


def claims_of(cluster, net: str) -> dict[str, dict]:
    items = cluster.get("addressclaims", "-l", f"bridgenet.io/network={net}")["items"]
    return {c["spec"]["address"]: c for c in items}


def warnings(cluster, pod: str) -> list[str]:
    events = json.loads(cluster.kubectl("get", "events", "--field-selector", f"involvedObject.name={pod}",
                                        "-o", "json").stdout)["items"]
    return [e.get("message") or e.get("note") or "" for e in events if e.get("type") == "Warning"]


def static(net: str, ip: str) -> list[dict]:
    return [{"name": net, "ip": ip}]


def test_a_static_address_works_on_any_node_whoever_owns_its_block(cluster):
    net = unique("static")
    cluster.network(net, "172.41.0.0/24")
    blocks = blocks_by_node(cluster, net)
    assigned = set(blocks.values())
    free_block = next(b for b in ipaddress.ip_network("172.41.0.0/24").subnets(new_prefix=26) if b not in assigned)
    in_node2 = str(blocks["node2"].network_address + 13)
    in_node1 = str(blocks["node1"].network_address + 14)
    nobodys = str(free_block.network_address + 15)
    a, b, c = unique("a"), unique("b"), unique("c")
    cluster.pod(a, static(net, in_node2), node="node1")
    cluster.pod(b, static(net, in_node1), node="node2")
    cluster.pod(c, static(net, nobodys), node="node1")
    cluster.wait_ready(a, b, c, timeout="90s")
    assert (cluster.ip(a, net), cluster.ip(b, net), cluster.ip(c, net)) == (in_node2, in_node1, nobodys)
    assert cluster.ping(a, in_node1), "node1 -> node2, each on an address of the other's block"
    assert cluster.ping(b, in_node2)
    assert cluster.ping(b, nobodys), "an address of no node's block, across nodes"
    claims = claims_of(cluster, net)
    assert {ip: (c["status"]["phase"], c["status"]["grantedBy"], c["spec"]["pod"]["name"])
            for ip, c in claims.items()} == {
        in_node2: ("Bound", "node2", a),
        in_node1: ("Bound", "node1", b),
        nobodys: ("Bound", "operator", c),
    }
    # Released with the pod: the claim goes once its interface is gone.
    cluster.kubectl("delete", "pod", a, "--wait=true", "--timeout=60s")
    eventually(lambda: in_node2 not in claims_of(cluster, net), what=f"{a}'s claim released")


def test_a_second_claim_is_refused_with_the_holder_named_and_the_first_keeps_working(cluster):
    net = unique("double")
    cluster.network(net, "172.42.0.0/24")
    blocks = blocks_by_node(cluster, net)
    wanted = str(blocks["node2"].network_address + 20)
    first, second = unique("first"), unique("second")
    cluster.pod(first, static(net, wanted), node="node1")
    cluster.wait_ready(first, timeout="90s")
    cluster.pod(second, static(net, wanted), node="node2")
    events = eventually(lambda: [m for m in warnings(cluster, second) if wanted in m] or None,
                        what=f"a Warning on {second} naming {wanted}", timeout=ATTACH_WITHIN)
    assert any(first in m for m in events), events
    assert cluster.ip(first, net) == wanted
    assert cluster.ping(first, "172.42.0.1"), "the first holder still works"
    assert claims_of(cluster, net)[wanted]["spec"]["pod"]["name"] == first
    assert net not in cluster.attachments(second)

    # An address a node gave out dynamically is not claimable from the other node.
    dyn, thief = unique("dyn"), unique("thief")
    cluster.pod(dyn, net, node="node1")
    cluster.wait_ready(dyn)
    taken = cluster.ip(dyn, net)
    cluster.pod(thief, static(net, taken), node="node2")
    events = eventually(lambda: [m for m in warnings(cluster, thief) if taken in m] or None,
                        what=f"a Warning on {thief} naming {taken}", timeout=ATTACH_WITHIN)
    assert any(dyn in m for m in events), events
    assert cluster.ping(dyn, "172.42.0.1")


def test_twenty_concurrent_claims_of_five_addresses_end_with_five_holders(cluster):
    net = unique("race")
    cluster.network(net, "172.47.0.0/24")
    blocks = blocks_by_node(cluster, net)
    addresses = [str(blocks["node1"].network_address + 30), str(blocks["node1"].network_address + 31),
                 str(blocks["node2"].network_address + 30), str(blocks["node2"].network_address + 31),
                 "172.47.0.250"]
    pods = [unique(f"r{i}") for i in range(20)]
    docs = []
    for i, p in enumerate(pods):
        docs.append({"apiVersion": "v1", "kind": "Pod",
                     "metadata": {"name": p, "namespace": "default",
                                  "annotations": {"bridgenet.io/networks": json.dumps(static(net, addresses[i % 5]))}},
                     "spec": {"nodeSelector": {"kubernetes.io/hostname": "node1" if i % 2 else "node2"},
                              "terminationGracePeriodSeconds": 5,
                              "containers": [{"name": "main", "image": "busybox:1.36",
                                              "command": ["sh", "-c", "trap 'exit 0' TERM; while true; do sleep 1; done"]}]}})
    import yaml
    cluster.apply(yaml.safe_dump_all(docs))

    def holders():
        got = {}
        for p in pods:
            entry = cluster.attachments(p).get(net)
            if entry and entry.get("ips"):
                got[p] = entry["ips"][0].split("/")[0]
        return got if len(got) >= 5 else None

    got = eventually(holders, what="five holders", timeout=ATTACH_WITHIN)
    # Every claimer has had its answer by now; nothing changes after.
    import time
    time.sleep(5)
    got = holders()
    assert sorted(got.values()) == sorted(addresses), got
    claims = claims_of(cluster, net)
    assert sorted(claims) == sorted(addresses)
    assert {c["spec"]["pod"]["name"]: a for a, c in claims.items()} == got
    assert all(c["status"]["phase"] == "Bound" for c in claims.values())


def test_a_recreated_sticky_pod_gets_its_address_back_on_the_other_node(cluster):
    net = unique("sticky")
    cluster.network(net, "172.44.0.0/24", stickyAddresses=True)
    p, peer = unique("db"), unique("peer")
    cluster.pod(p, net, node="node1")
    cluster.pod(peer, net, node="node1")
    cluster.wait_ready(p, peer)
    before = cluster.ip(p, net)
    assert claims_of(cluster, net)[before]["spec"]["sticky"] is True
    cluster.kubectl("delete", "pod", p, "--wait=true", "--timeout=60s")
    eventually(lambda: claims_of(cluster, net).get(before, {}).get("status", {}).get("phase") == "Released",
               what="the sticky claim released, not deleted")
    cluster.pod(p, net, node="node2")
    cluster.wait_ready(p, timeout="90s")
    assert cluster.ip(p, net) == before, "same name, same address, other node"
    claim = claims_of(cluster, net)[before]
    assert (claim["status"]["phase"], claim["spec"]["node"]) == ("Bound", "node2")
    assert cluster.ping(peer, before), "reachable at its old address across nodes"
    # A pod of another name never gets it.
    other = unique("other")
    cluster.pod(other, net, node="node1")
    cluster.wait_ready(other)
    assert cluster.ip(other, net) != before


def test_a_sticky_address_is_free_again_once_its_hold_is_over(cluster):
    net = unique("hold")
    cluster.network(net, "172.45.0.0/24", stickyAddresses=True, stickyHoldSeconds=3)
    p = unique("gone")
    cluster.pod(p, net, node="node2")
    cluster.wait_ready(p)
    ip = cluster.ip(p, net)
    cluster.kubectl("delete", "pod", p, "--wait=true", "--timeout=60s")
    eventually(lambda: claims_of(cluster, net).get(ip, {}).get("status", {}).get("phase") == "Released",
               what="the sticky claim released")
    # The operator deletes it once the hold (3 s) is over; the address is anyone's again.
    eventually(lambda: ip not in claims_of(cluster, net), timeout=30, what="the claim deleted after its hold")
