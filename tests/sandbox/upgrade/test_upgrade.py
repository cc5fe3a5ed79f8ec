"""An upgrade from the NodeBridge shape with peer lists (`spec.peers`, written by the operator
into every NodeBridge) to the one without (agents flood to the nodes the network's
`NetworkOverlay` lists), done as a user does it: the new CRDs, then the operator, then the
agents one node at a time. Pods on two nodes ping each other across the overlay the whole time.

The old binaries and CRDs are those of `BRIDGENET_UPGRADE_FROM` (a directory with `bin/` and
`crds/`, made by scripts/build-upgrade-from.sh); the new ones are this tree's
(`BRIDGENET_BIN_DIR`, default target/debug). Root, like the end-to-end suite; one sandbox per
machine, so it runs after that suite, never beside it."""

from __future__ import annotations

import importlib.util
import json
import os
import pathlib
import subprocess
import sys
import time

import pytest

SANDBOX = pathlib.Path(__file__).resolve().parents[1]
REPO = SANDBOX.parents[1]
sys.path.insert(0, str(SANDBOX))

from bnsandbox import up  # noqa: E402

# The end-to-end suite's Cluster (kubectl, pods, ping), loaded under another module name: this
# directory has no conftest of its own to collide with it.
_spec = importlib.util.spec_from_file_location("e2e_conftest", SANDBOX / "e2e" / "conftest.py")
e2e = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(e2e)

NEW_BIN = pathlib.Path(os.environ.get("BRIDGENET_BIN_DIR", REPO / "target" / "debug"))
OLD = os.environ.get("BRIDGENET_UPGRADE_FROM")
PREFIX = "bnt-sb-upg-"
NET = "bnt-upgrade"


def _missing() -> str | None:
    reason = e2e._missing()
    if reason:
        return reason
    if not OLD:
        return "BRIDGENET_UPGRADE_FROM is not set (make upgrade-test builds the old version and sets it)"
    for path in (pathlib.Path(OLD) / "bin" / "bridgenet-agent", pathlib.Path(OLD) / "crds"):
        if not path.exists():
            return f"{path} is missing: run scripts/build-upgrade-from.sh"
    return None


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    reason = _missing()
    if reason:
        if os.environ.get("BRIDGENET_REQUIRE_UPGRADE") == "1":
            pytest.fail(reason, pytrace=False)
        pytest.skip(reason)
    old = pathlib.Path(OLD)
    sandbox = up.Sandbox(2, tmp_path_factory.mktemp("sandbox"), prefix=PREFIX, bin_dir=old / "bin",
                         crds=old / "crds", log=lambda m: None)
    try:
        yield e2e.Cluster(sandbox)
    finally:
        sandbox.close()


class Pinger:
    """`ping` from a pod to an address, 5 packets a second, in the background; `lost()` counts
    the requests that got no reply so far (from the sequence numbers answered)."""

    def __init__(self, cluster, pod: str, ip: str) -> None:
        argv = cluster.exec_argv(pod, "ping", "-i", "0.2", "-W", "1", ip)
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                     cwd=SANDBOX)
        self.started = time.monotonic()

    def stop(self) -> tuple[int, int, str]:
        self.proc.terminate()
        out, _ = self.proc.communicate(timeout=15)
        seqs = {int(s.split("=")[1]) for line in out.splitlines() for s in line.split() if s.startswith("seq=")}
        sent = int((time.monotonic() - self.started) / 0.2)
        # The last second's requests may still be in flight when ping stops.
        sent = max(max(seqs, default=0) + 1, sent - 5)
        return sent, sent - len(seqs), out


def _peers_in_spec(cluster) -> dict[str, int]:
    return {nb["spec"]["node"]: len(nb["spec"].get("peers") or [])
            for nb in cluster.node_bridges({NET})}


def _reads_network(cluster) -> dict[str, bool]:
    return {nb["spec"]["node"]: bool((nb.get("status") or {}).get("networkPeers"))
            for nb in cluster.node_bridges({NET})}


def _overlay(cluster) -> list[str]:
    """The nodes the network's NetworkOverlay lists (none while it has none)."""
    res = cluster.kubectl("get", "networkoverlay", NET, "-o", "json", "--ignore-not-found")
    obj = json.loads(res.stdout) if res.stdout.strip() else {}
    return [e["node"] for e in obj.get("spec", {}).get("endpoints") or []]


def _flood_entries(cluster, node: str) -> list[str]:
    """The VXLAN port's all-zeros FDB entries on `node`: where it floods broadcasts."""
    sb_node = next(n for n in cluster.sb.topo.nodes if n.name == node)
    out = sb_node.exec("bridge", "fdb", "show").stdout
    return sorted(line.split(" dst ")[1].split()[0] for line in out.splitlines()
                  if line.startswith("00:00:00:00:00:00") and " dst " in line)


def _resolves_and_pings(cluster, pod: str, ip: str) -> bool:
    """Whether `pod` reaches `ip` after forgetting its neighbours: the ARP request is a
    broadcast, which crosses the overlay only through the sending node's flood entries (a
    ping of a known neighbour would ride the learned unicast entry and prove nothing)."""
    iface = cluster.attachments(pod)[NET]["interface"]
    cluster.exec(pod, "ip", "neigh", "flush", "dev", iface)
    return cluster.ping(pod, ip)


def test_upgrade_keeps_running_pods_connected(cluster):
    cluster.network(NET, "172.29.0.0/24")
    a, b = "upg-a", "upg-b"
    cluster.pod(a, NET, node="node1")
    cluster.pod(b, NET, node="node2")
    cluster.wait_ready(a, b)
    ip_a, ip_b = cluster.ip(a, NET), cluster.ip(b, NET)
    before = (cluster.attachments(a), cluster.attachments(b))
    assert cluster.ping(a, ip_b) and cluster.ping(b, ip_a)
    # The old shape: each NodeBridge lists the other node.
    assert _peers_in_spec(cluster) == {"node1": 1, "node2": 1}
    underlay = {n.name: n.ip for n in cluster.sb.topo.nodes}
    assert _flood_entries(cluster, "node1") == [underlay["node2"]]

    pingers = [Pinger(cluster, a, ip_b), Pinger(cluster, b, ip_a)]
    try:
        cluster.sb.apply_crds(REPO / "crds" / "yaml")
        cluster.sb.upgrade("operator", NEW_BIN)
        # The new operator publishes the overlay and keeps the old agents' lists.
        e2e.eventually(lambda: len(_overlay(cluster)) == 2, 60, "the network's overlay")
        time.sleep(2)
        assert _peers_in_spec(cluster) == {"node1": 1, "node2": 1}, "an old agent's list is kept"
        assert _resolves_and_pings(cluster, a, ip_b) and _resolves_and_pings(cluster, b, ip_a)

        cluster.sb.upgrade("agent/node1", NEW_BIN)
        e2e.eventually(lambda: _reads_network(cluster) == {"node1": True, "node2": False}, 60,
                       "node1's new agent reporting networkPeers")
        # node1's list goes; node2, still old, keeps its list.
        e2e.eventually(lambda: _peers_in_spec(cluster) == {"node1": 0, "node2": 1}, 60,
                       "the operator dropping node1's peer list")
        time.sleep(2)
        assert _flood_entries(cluster, "node1") == [underlay["node2"]], "node1 still floods to node2"
        assert _flood_entries(cluster, "node2") == [underlay["node1"]], "old node2 still floods to node1"
        assert _resolves_and_pings(cluster, a, ip_b) and _resolves_and_pings(cluster, b, ip_a)

        cluster.sb.upgrade("agent/node2", NEW_BIN)
        e2e.eventually(lambda: _peers_in_spec(cluster) == {"node1": 0, "node2": 0}, 60,
                       "no peer list left")
        time.sleep(3)
    finally:
        results = [p.stop() for p in pingers]
    for (sent, lost, out), who in zip(results, (f"{a}→{ip_b}", f"{b}→{ip_a}")):
        assert sent >= 25, f"{who}: the pinger ran too briefly:\n{out[-2000:]}"
        # Every agent restart rebuilds nothing, so nothing should be lost; allow one packet
        # that happens to meet the moment a flood entry is rewritten.
        assert lost <= 1, f"{who}: {lost} of {sent} pings lost during the upgrade:\n{out[-2000:]}"

    assert _flood_entries(cluster, "node1") == [underlay["node2"]]
    assert _flood_entries(cluster, "node2") == [underlay["node1"]]
    assert _resolves_and_pings(cluster, a, ip_b) and _resolves_and_pings(cluster, b, ip_a)
    assert (cluster.attachments(a), cluster.attachments(b)) == before, "pods kept their addresses and MACs"
    # A pod started after the upgrade reaches the old ones across the overlay.
    c = "upg-c"
    cluster.pod(c, NET, node="node2")
    cluster.wait_ready(c)
    assert cluster.ping(c, ip_a)
    assert sorted(_overlay(cluster)) == ["node1", "node2"]
    print(json.dumps({"pings": [(s, lost) for s, lost, _ in results]}))
    cluster.kubectl("delete", "pod", a, b, c, "--wait=true", "--timeout=60s")
    cluster.kubectl("delete", "bridgenetwork", NET, "--wait=true", "--timeout=60s")
