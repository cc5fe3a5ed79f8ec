"""The user's story on a real cluster, in order: install, `helm test`, create networks, attach pods at start
and while running, check reachability and isolation, restart an agent, uninstall and leave the
nodes able to start pods. Each test builds on the previous ones (pytest runs them in file
order)."""

from __future__ import annotations

import json
import pathlib
import re
import subprocess
import threading

import pytest
import yaml

from conftest import NAMESPACE, REPO, TEST_NS, sh

VERSION = re.search(r'(?m)^version\s*=\s*"([^"]+)"', (REPO / "Cargo.toml").read_text().split("[workspace.package]", 1)[1]).group(1)
POD_IMAGE = f"docker.io/bridgenet/agent:{VERSION}"  # carries a static busybox (sleep, ping, ip)
EXAMPLE_NETWORKS = ["custom-network", "second-network", "internal-network", "dual-stack-network", "team-a"]


def condition(obj, ctype):
    for c in obj.get("status", {}).get("conditions", []):
        if c["type"] == ctype:
            return c
    return None


def network_ips(kube, pod, network):
    """IPv4 addresses the agent reports for `pod` on `network` (bridgenet.io/network-status)."""
    obj = kube.json("get", "pod", "-n", TEST_NS, pod)
    raw = obj["metadata"].get("annotations", {}).get("bridgenet.io/network-status")
    if not raw:
        return []
    ips = []
    for entry in json.loads(raw):
        if entry.get("name") != network:
            continue
        for ip in entry.get("ips", []) + ([entry["ip"]] if entry.get("ip") else []):
            ip = ip.split("/")[0]
            if ":" not in ip:
                ips.append(ip)
    return ips


def make_pod(kube, name, node, networks=None):
    annotations = {"bridgenet.io/networks": networks} if networks else {}
    kube.apply({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": TEST_NS, "annotations": annotations},
        "spec": {
            "nodeName": node,
            "terminationGracePeriodSeconds": 1,
            "containers": [{"name": "main", "image": POD_IMAGE, "imagePullPolicy": "Never",
                            "command": ["/bin/busybox", "sleep", "3600"]}],
        },
    })
    kube("wait", "-n", TEST_NS, "--for=condition=Ready", f"pod/{name}", "--timeout=120s")


def ping(kube, pod, ip, count=2):
    res = kube("exec", "-n", TEST_NS, pod, "--", "/bin/busybox", "ping", "-c", str(count), "-W", "2", ip,
               check=False, timeout=60)
    return res.returncode == 0


def test_operator_and_agents_come_up(cluster, workers):
    ds = cluster.json("get", "daemonset", "-n", NAMESPACE, "bridgenet-agent")
    assert ds["status"]["numberReady"] == ds["status"]["desiredNumberScheduled"] == 3
    dep = cluster.json("get", "deployment", "-n", NAMESPACE, "bridgenet-operator")
    assert dep["status"].get("readyReplicas") == 2
    lease = cluster.wait_for("the operator Lease", lambda: cluster.json("get", "lease", "-n", NAMESPACE, "bridgenet-operator"))
    pods = {p["metadata"]["name"] for p in cluster.json("get", "pods", "-n", NAMESPACE, "-l", "app.kubernetes.io/component=operator")["items"]}
    assert lease["spec"]["holderIdentity"] in pods
    # The init container installed the plugin on every node.
    for node in [n["metadata"]["name"] for n in cluster.json("get", "nodes")["items"]]:
        sh("docker", "exec", node, "test", "-x", "/opt/cni/bin/bridgenet")


def test_helm_test_passes_and_cleans_up(cluster, workers):
    """`helm test`: the self-test hook creates its networks and pods on the two workers, checks
    attach, ping across nodes and isolation, and deletes them; the hook's pod and RBAC go too."""
    from conftest import helm_test

    log = helm_test(cluster.kubeconfig)
    for check in ("PASS attach:", "across nodes", "PASS isolation:", "PASS cleanup:"):
        assert check in log, f"no {check!r} in the self-test's log:\n{log}"
    assert not cluster.json("get", "bridgenetworks", "-l", "bridgenet.io/self-test")["items"]
    assert not cluster.json("get", "pods", "-A", "-l", "bridgenet.io/self-test")["items"]
    assert not cluster.json("get", "pods", "-n", NAMESPACE, "-l", "app.kubernetes.io/component=self-test")["items"]
    assert cluster("get", "clusterrole", "bridgenet-selftest", check=False).returncode != 0, "hook RBAC left"


def test_example_networks_become_ready(cluster, workers):
    cluster("label", "node", workers[0], "bridgenet.io/team-a=true", "--overwrite")
    for path in sorted((REPO / "examples").glob("*network*.yaml")):
        cluster.apply(path)
    cluster("create", "namespace", TEST_NS)
    for name in EXAMPLE_NETWORKS:
        bn = cluster.wait_for(f"{name} Ready", lambda: (lambda o: o if (condition(o, "Ready") or {}).get("status") == "True" else None)(
            cluster.json("get", "bridgenetwork", name)))
        assert condition(bn, "Accepted")["status"] == "True"
    nbrs = cluster.json("get", "nodebridges", "-l", "bridgenet.io/network=custom-network")["items"]
    assert len(nbrs) == 3
    team = cluster.json("get", "nodebridges", "-l", "bridgenet.io/network=team-a")["items"]
    assert [n["spec"]["node"] for n in team] == [workers[0]]
    listing = cluster("get", "bridgenetworks").stdout
    assert "172.20.0.0/16" in listing and "172.20.0.1" in listing


def test_invalid_networks_are_refused_at_apply(cluster):
    for path in sorted((REPO / "examples" / "invalid").glob("*.yaml")):
        res = cluster("apply", "--dry-run=server", "-f", str(path), check=False)
        assert res.returncode != 0, f"{path.name} was accepted"


def test_overlap_with_the_pod_network_is_refused(cluster):
    cluster.apply({"apiVersion": "bridgenet.io/v1alpha1", "kind": "BridgeNetwork",
                   "metadata": {"name": "overlaps-pods"}, "spec": {"subnet": "10.244.200.0/24"}})
    bn = cluster.wait_for("Accepted=False", lambda: (lambda o: o if (condition(o, "Accepted") or {}).get("status") == "False" else None)(
        cluster.json("get", "bridgenetwork", "overlaps-pods")))
    assert condition(bn, "Accepted")["reason"] == "SubnetOverlap"
    cluster("delete", "bridgenetwork", "overlaps-pods", "--wait=true", timeout=120)


def test_pods_attached_at_start_reach_each_other_across_nodes(cluster, workers):
    make_pod(cluster, "a1", workers[0], "custom-network")
    make_pod(cluster, "a2", workers[1], "custom-network")
    make_pod(cluster, "b1", workers[0], "second-network")
    a2 = cluster.wait_for("a2 address", lambda: network_ips(cluster, "a2", "custom-network"))
    assert a2[0].startswith("172.20.")
    assert ping(cluster, "a1", a2[0]), "a1 cannot reach a2 on another node"
    assert ping(cluster, "a1", "172.20.0.1"), "a1 cannot reach its gateway"
    assert cluster.wait_for("b1 address", lambda: network_ips(cluster, "b1", "second-network"))[0].startswith("172.21.")


def test_networks_are_isolated(cluster):
    b1 = network_ips(cluster, "b1", "second-network")[0]
    a1 = network_ips(cluster, "a1", "custom-network")[0]
    assert not ping(cluster, "a1", b1), "custom-network reached second-network on the same node"
    assert not ping(cluster, "a2", b1), "custom-network reached second-network across nodes"
    assert not ping(cluster, "b1", a1), "second-network reached custom-network"


def test_hot_attach_and_detach(cluster, workers):
    make_pod(cluster, "c1", workers[1])
    assert network_ips(cluster, "c1", "custom-network") == []
    cluster("annotate", "pod", "-n", TEST_NS, "c1", "bridgenet.io/networks=custom-network")
    ip = cluster.wait_for("c1 hot-attached", lambda: network_ips(cluster, "c1", "custom-network"))[0]
    assert ping(cluster, "a1", ip), "a1 cannot reach the hot-attached c1"
    links = cluster("exec", "-n", TEST_NS, "c1", "--", "/bin/busybox", "ip", "-o", "link").stdout
    assert "net1" in links
    cluster("annotate", "pod", "-n", TEST_NS, "c1", "bridgenet.io/networks-")
    cluster.wait_for("c1 detached", lambda: network_ips(cluster, "c1", "custom-network") == [] or None)
    cluster.wait_for("net1 gone", lambda: "net1" not in cluster("exec", "-n", TEST_NS, "c1", "--", "/bin/busybox", "ip", "-o", "link").stdout)
    assert not ping(cluster, "a1", ip)


def test_endpoints_are_reported(cluster):
    bn = cluster.wait_for("2 endpoints", lambda: (lambda o: o if o.get("status", {}).get("endpoints", 0) >= 2 else None)(
        cluster.json("get", "bridgenetwork", "custom-network")))
    assert bn["status"]["readyNodes"] == bn["status"]["totalNodes"] == 3


def test_agent_restart_does_not_disturb_running_pods(cluster, workers):
    a2 = network_ips(cluster, "a2", "custom-network")[0]
    before = cluster("get", "pod", "-n", TEST_NS, "a1", "-o", "jsonpath={.metadata.annotations.bridgenet\\.io/network-status}").stdout
    result = {}

    def pinger():  # 40 pings, 10 s, while the agent of a1's node restarts
        result["out"] = cluster("exec", "-n", TEST_NS, "a1", "--", "/bin/busybox", "ping", "-c", "40", "-i", "0.25", "-W", "2", a2,
                                check=False, timeout=90).stdout

    thread = threading.Thread(target=pinger)
    thread.start()
    agent = cluster.json("get", "pods", "-n", NAMESPACE, "-l", "app.kubernetes.io/component=agent",
                         "--field-selector", f"spec.nodeName={workers[0]}")["items"][0]["metadata"]["name"]
    cluster("delete", "pod", "-n", NAMESPACE, agent, "--wait=true", timeout=120)
    cluster("rollout", "status", "-n", NAMESPACE, "daemonset/bridgenet-agent", "--timeout=180s", timeout=200)
    thread.join(timeout=120)
    received = int(re.search(r"(\d+) packets received", result.get("out", "")).group(1))
    assert received >= 38, f"pings lost while the agent restarted: {result.get('out')}"
    after = cluster("get", "pod", "-n", TEST_NS, "a1", "-o", "jsonpath={.metadata.annotations.bridgenet\\.io/network-status}").stdout
    assert json.loads(after) == json.loads(before), "the restart changed a running pod's attachment"


def test_uninstall_leaves_nodes_able_to_start_pods(cluster, workers):
    from conftest import helm_uninstall

    cluster("delete", "namespace", TEST_NS, "--wait=true", timeout=300)
    cluster("delete", "bridgenetworks", "--all", "--wait=true", timeout=300)
    cluster.wait_for("NodeBridges gone", lambda: not cluster.json("get", "nodebridges")["items"])
    helm_uninstall(cluster.kubeconfig)
    cluster.wait_for("agents gone", lambda: not cluster.json("get", "pods", "-n", NAMESPACE)["items"], timeout=180)
    nodes = [n["metadata"]["name"] for n in cluster.json("get", "nodes")["items"]]
    for node in nodes:
        bridges = sh("docker", "exec", node, "ip", "-o", "link", "show", "type", "bridge").stdout
        assert not re.search(r"\b(bn-[0-9a-f]{12}|br-team-a)\b", bridges), f"{node}: bridges left: {bridges}"
        tables = sh("docker", "exec", node, "nft", "list", "tables", check=False).stdout
        assert "bridgenet" not in tables, f"{node}: nftables left: {tables}"
        confs = sh("docker", "exec", node, "sh", "-c", "cat /etc/cni/net.d/*").stdout
        assert '"bridgenet"' not in confs, f"{node}: CNI chaining left: {confs}"
    cluster("create", "namespace", "after-uninstall")
    for node in nodes:
        name = f"plain-{node}"[:63]
        cluster.apply({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": "after-uninstall"},
                       "spec": {"nodeName": node, "tolerations": [{"operator": "Exists"}],
                                "containers": [{"name": "main", "image": POD_IMAGE, "imagePullPolicy": "Never",
                                                "command": ["/bin/busybox", "sleep", "60"]}]}})
    cluster("wait", "-n", "after-uninstall", "--for=condition=Ready", "pod", "--all", "--timeout=120s", timeout=150)
