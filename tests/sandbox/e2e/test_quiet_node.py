"""An unchanged node changes nothing: with pods on two networks across two nodes, several periodic
resyncs and an agent restart keep every bridgenet link (bridges, VXLAN ports, pod veths) as the
same interface, and the agents count no netlink or nftables write."""

import json
import time
import urllib.error
import urllib.request

from conftest import eventually, unique

# The agents' --resync-interval in the sandbox (the default); waiting this long covers two
# periodic resyncs (the NodeBridge controller, hot-plug, repair) and many status ticks.
RESYNCS = 2.5 * 10.0


def bridgenet_links(node) -> dict[str, int]:
    """Name -> ifindex of every bridgenet link on `node`: bridges (`bn-…`), VXLAN ports
    (`bnvx-…`) and pod veths (`bnv…`); nothing else on a sandbox node is named `bn…`."""
    out = json.loads(node.exec("ip", "-d", "-j", "link", "show").stdout)
    return {link["ifname"]: link["ifindex"] for link in out
            if link["ifname"].startswith("bn") or (link.get("ifalias") or "").startswith("bridgenet")}


WRITE_METRICS = ("bridgenet_agent_netlink_writes_total", "bridgenet_agent_nftables_writes_total")


def writes(node) -> dict[str, float]:
    """The agent's kernel-write counters (`/metrics`), one per series (`…_total{op="neigh_add"}`),
    so that a failure names the kind of write; empty when the agent serves none."""
    try:
        with urllib.request.urlopen(f"http://{node.ip}:9091/metrics", timeout=5) as resp:
            text = resp.read().decode()
    except urllib.error.HTTPError:
        return {}
    series = {}
    for line in text.splitlines():
        if line.startswith(WRITE_METRICS):
            name, value = line.rsplit(" ", 1)
            series[name] = float(value)
    return series


def overlays_settled(cluster) -> bool:
    """Whether every NetworkOverlay lists only nodes whose NodeBridge of its network reports
    endpoints (a node is listed while its agent reports pods there, and for a hold after)."""
    def count(nb: dict) -> int:
        status = nb.get("status") or {}
        return max(status.get("endpointCount", 0), len(status.get("endpoints") or []))

    counts = {nb["metadata"]["name"]: count(nb) for nb in cluster.get("nodebridges")["items"]}
    return all(counts.get(f"{o['spec']['network']}.{e['node']}", 0) > 0
               for o in cluster.get("networkoverlays")["items"]
               for e in o["spec"].get("endpoints") or [])


def ready(node) -> bool:
    try:
        with urllib.request.urlopen(f"http://{node.ip}:9091/readyz", timeout=2) as resp:
            return resp.status == 200
    except OSError:
        return False


def test_an_unchanged_node_changes_nothing_over_resyncs_and_a_restart(cluster):
    red, blue = unique("qred"), unique("qblue")
    cluster.network(red, "172.19.0.0/24")
    cluster.network(blue, "172.19.1.0/24")
    pods = {(red, "node1"): unique("r1"), (red, "node2"): unique("r2"),
            (blue, "node1"): unique("b1"), (blue, "node2"): unique("b2")}
    for (net, node), pod in pods.items():
        cluster.pod(pod, net, node=node)
    cluster.wait_ready(*pods.values())
    for net in (red, blue):
        one, two = pods[(net, "node1")], pods[(net, "node2")]
        assert cluster.ping(one, cluster.ip(two, net)) and cluster.ping(two, cluster.ip(one, net))
    nodes = cluster.sb.topo.nodes
    # Everything settled: per node, two networks' bridge and VXLAN port and two pod veths.
    eventually(lambda: all(len(bridgenet_links(n)) >= 2 * 2 + 2 for n in nodes), what="links on both nodes")
    # Earlier tests' pods still terminating would change their networks' overlays (a node losing
    # its last pod of a network is flooded to no more): real changes, not resyncs. Measure after.
    eventually(lambda: not any(p["metadata"].get("deletionTimestamp") for p in cluster.get("pods", "-A")["items"]),
               120, "every terminating pod gone")
    # And their nodes out of those overlays: a node stays in a network's overlay for the
    # operator's hold (30 s) after its last pod of the network is gone.
    eventually(lambda: overlays_settled(cluster), 90, "every overlay down to the nodes with pods of its network")
    time.sleep(3)
    links = {n.name: bridgenet_links(n) for n in nodes}
    counted = {n.name: writes(n) for n in nodes}

    time.sleep(RESYNCS)
    assert {n.name: bridgenet_links(n) for n in nodes} == links, "periodic resyncs re-created links"
    assert {n.name: writes(n) for n in nodes} == counted, "periodic resyncs wrote to the kernel"

    for n in nodes:
        cluster.sb.restart(f"agent/{n.name}", hard=True)
    for n in nodes:
        eventually(lambda n=n: ready(n), what=f"the restarted agent on {n.name} to be ready")
    # The restart runs every start-up pass at once (data plane, firewall check, repair, the
    # reconcile against the runtime and its sweep), then periodic ones.
    time.sleep(RESYNCS)
    assert {n.name: bridgenet_links(n) for n in nodes} == links, "the restart re-created links"
    for n in nodes:
        counters = writes(n)
        assert {m for m in WRITE_METRICS if any(k.startswith(m) for k in counters)} == set(WRITE_METRICS), \
            f"the restarted agent on {n.name} serves no write counters: {counters}"
        assert {k: v for k, v in counters.items() if v} == {}, f"the restarted agent on {n.name} wrote"
    for net in (red, blue):
        one, two = pods[(net, "node1")], pods[(net, "node2")]
        assert cluster.ping(one, cluster.ip(two, net))
