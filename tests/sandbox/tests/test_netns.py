"""Sandbox nodes as network namespaces: connectivity over the underlay, registration as Nodes,
teardown on close, on signals, and of a killed run's leftovers. Needs root (CI runs as root)."""

import json
import os
import subprocess
import sys
import textwrap

import pytest

from bnsandbox import netns
from conftest import SANDBOX, requires_kubectl, wait_for

PREFIX = "bnt-sb-test-"

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root")


def ours():
    return sorted(n for n in netns.list_netns() if n.startswith(PREFIX))


def ping(node, ip):
    # busybox's ping: up to three packets within three seconds (a link that has just come up may
    # lose the first); success on any reply. Bounded by construction.
    return node.exec("busybox", "ping", "-c", "3", "-w", "3", "-W", "1", ip, check=False).returncode == 0


def test_nodes_reach_each_other_and_the_internet_host_then_vanish():
    with netns.Topology(["n1", "n2"], prefix=PREFIX, internet=True) as topo:
        assert ours() == [PREFIX + "internet", PREFIX + "n1", PREFIX + "n2", PREFIX + "underlay"]
        n1, n2 = topo.nodes
        assert (n1.ip, n2.ip) == ("10.251.0.11", "10.251.0.12")
        assert ping(n1, n2.ip) and ping(n2, n1.ip)
        assert ping(n1, netns.INTERNET_IP)  # via the default route
        # Nothing of the topology leaks into the host's namespace (no link named for it or
        # peered into it; another sandbox running beside this one may have its own host link).
        host_links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
        assert PREFIX not in host_links
        sleeper = n1.popen(["sleep", "600"])
        assert sleeper.poll() is None
    assert ours() == []
    assert sleeper.poll() is not None


def test_host_link_makes_the_host_reachable_from_nodes():
    with netns.Topology(["h1"], prefix=PREFIX, host_link=True) as topo:
        link = netns.host_link_name(PREFIX)
        assert link == "bnt-sb-test"
        assert ping(topo.nodes[0], netns.HOST_IP)
    gone = subprocess.run(["ip", "link", "show", link], capture_output=True)
    assert gone.returncode != 0


def test_removed_node_is_unreachable():
    with netns.Topology(["a", "b"], prefix=PREFIX) as topo:
        a, b = topo.nodes
        topo.remove_node("b")
        assert ours() == [PREFIX + "a", PREFIX + "underlay"]
        assert not ping(a, b.ip)


def test_stale_namespaces_of_a_killed_run_are_removed_at_start():
    subprocess.run(["ip", "netns", "add", PREFIX + "stale"], check=True)
    with netns.Topology(["n1"], prefix=PREFIX):
        assert PREFIX + "stale" not in ours()
    assert ours() == []


def test_refuses_to_clean_a_non_test_prefix():
    with pytest.raises(ValueError):
        netns.cleanup_stale("")


@pytest.mark.parametrize("sig", ["SIGTERM", "SIGINT"])
def test_signal_tears_everything_down(tmp_path, sig):
    script = textwrap.dedent(f"""
        import sys, time
        from bnsandbox import netns
        topo = netns.Topology(["s1", "s2"], prefix={PREFIX!r})
        topo.nodes[0].popen(["sleep", "600"])
        print("up", flush=True)
        time.sleep(60)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=SANDBOX, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "up"
        assert len(ours()) == 3
        proc.send_signal(getattr(__import__("signal"), sig))
        proc.wait(20)
        assert proc.returncode != 0
        assert ours() == []
    finally:
        if proc.poll() is None:
            proc.kill()
        netns.cleanup_stale(PREFIX)


@requires_kubectl
def test_nodes_register_with_their_internal_ip(emulator):
    kubectl = ["kubectl", "--kubeconfig", str(emulator.kubeconfig), "--cache-dir", str(emulator.cache)]
    with netns.Topology(["w1", "w2"], prefix=PREFIX) as topo:
        topo.register(kubectl)
        nodes = json.loads(emulator.kubectl("get", "nodes", "-l", "bridgenet.io/sandbox=true", "-o", "json").stdout)
        addrs = {n["metadata"]["name"]: n["status"]["addresses"][0]["address"] for n in nodes["items"]}
        assert addrs == {"w1": "10.251.0.11", "w2": "10.251.0.12"}
        wide = emulator.kubectl("get", "node", "w1", "-o", "wide").stdout
        assert "Ready" in wide and "10.251.0.11" in wide
        topo.unregister(kubectl)
        wait_for(lambda: emulator.kubectl("get", "nodes", "-l", "bridgenet.io/sandbox=true", "-o", "name").stdout == "",
                 what="nodes unregistered")
