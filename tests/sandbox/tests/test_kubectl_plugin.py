"""`kubectl bridgenet ls|inspect|completion` as a user runs it: real kubectl finds the
kubectl-bridgenet binary on PATH and runs it against the emulator, with the kubeconfig taken
from KUBECONFIG (kubectl does not pass its own flags on to a plugin)."""

import json
import os
import pathlib
import re
import subprocess

import pytest

from conftest import CRDS, REPO, Emulator, requires_kubectl

# Where `cargo build` put the plugin: BRIDGENET_BIN_DIR, else the cargo target dir's debug/.
BIN_DIR = pathlib.Path(os.environ.get("BRIDGENET_BIN_DIR")
                       or pathlib.Path(os.environ.get("CARGO_TARGET_DIR", REPO / "target")) / "debug")
PLUGIN = BIN_DIR / "kubectl-bridgenet"

pytestmark = [
    requires_kubectl,
    # `make sandbox-test` builds the plugin first and sets BRIDGENET_REQUIRE_PLUGIN=1, so in CI a
    # missing binary fails the test instead of skipping it.
    pytest.mark.skipif(not PLUGIN.exists() and os.environ.get("BRIDGENET_REQUIRE_PLUGIN") != "1",
                       reason=f"{PLUGIN} is missing: run `cargo build -p bridgenet-kubectl` first"),
]

NETWORKS = """
apiVersion: bridgenet.io/v1alpha1
kind: BridgeNetwork
metadata: {name: web}
spec: {subnet: 172.20.0.0/16, gateway: 172.20.0.1, ipRange: 172.20.5.0/24, mtu: 1450,
       excludeAddresses: [172.20.5.9]}
---
apiVersion: bridgenet.io/v1alpha1
kind: BridgeNetwork
metadata: {name: backend}
spec: {subnet: 10.30.0.0/24, internal: true}
"""


def node_bridge(node: str) -> dict:
    return {"apiVersion": "bridgenet.io/v1alpha1", "kind": "NodeBridge",
            "metadata": {"name": f"web-{node}", "labels": {"bridgenet.io/network": "web", "bridgenet.io/node": node}},
            "spec": {"network": "web", "node": node, "bridge": "bn-web", "subnet": "172.20.0.0/16",
                     "gateway": "172.20.0.1", "gatewayMac": "02:42:ac:14:00:01", "blocks": [], "mtu": 1450,
                     "vni": 4242, "internal": False, "masquerade": True, "interPodTraffic": True}}


ENDPOINTS = {
    "node1": [{"namespace": "default", "pod": "web-1", "interface": "net1", "ipv4": "172.20.5.2/16",
               "mac": "02:42:ac:14:05:02", "containerId": "c1"}],
    "node2": [{"namespace": "default", "pod": "web-2", "interface": "net1", "ipv4": "172.20.5.3/16",
               "mac": "02:42:ac:14:05:03"}],
}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """An emulator of its own, so that `ls` lists exactly this module's networks."""
    emu = Emulator(tmp_path_factory.mktemp("plugin-emulator"))
    try:
        emu.kubectl("apply", "-f", str(CRDS))
        emu.kubectl("wait", "--for=condition=Established", "crd/bridgenetworks.bridgenet.io",
                    "crd/nodebridges.bridgenet.io", "--timeout=10s")
        emu.kubectl("apply", "-f", "-", input=NETWORKS)
        # What the operator and agents would report.
        api = "/apis/bridgenet.io/v1alpha1"
        assert emu.client.patch(f"{api}/bridgenetworks/web/status", {"status": {
            "gateway": "172.20.0.1", "bridge": "bn-web", "vni": 4242, "readyNodes": 2, "totalNodes": 2,
            "readySummary": "2/2", "endpoints": 2}}).status == 200
        assert emu.client.patch(f"{api}/bridgenetworks/backend/status", {"status": {
            "gateway": "10.30.0.1", "readyNodes": 1, "totalNodes": 2, "endpoints": 0}}).status == 200
        for node, eps in ENDPOINTS.items():
            assert emu.client.post(f"{api}/nodebridges", node_bridge(node)).status == 201
            assert emu.client.patch(f"{api}/nodebridges/web-{node}/status", {"status": {
                "endpoints": eps, "endpointCount": len(eps)}}).status == 200
        yield emu
    finally:
        emu.stop()


def bridgenet(cluster: Emulator, *args: str) -> subprocess.CompletedProcess:
    """`kubectl bridgenet ARGS` through kubectl's plugin discovery on PATH."""
    env = dict(os.environ, PATH=f"{BIN_DIR}{os.pathsep}{os.environ.get('PATH', '')}",
               KUBECONFIG=str(cluster.kubeconfig))
    return subprocess.run(["kubectl", "bridgenet", *args], capture_output=True, text=True, env=env, timeout=60)


def test_kubectl_discovers_the_plugin(cluster):
    env = dict(os.environ, PATH=f"{BIN_DIR}{os.pathsep}{os.environ.get('PATH', '')}")
    out = subprocess.run(["kubectl", "plugin", "list"], capture_output=True, text=True, env=env, timeout=60).stdout
    assert str(PLUGIN) in out, out


def test_ls_lists_networks_with_status(cluster):
    res = bridgenet(cluster, "ls")
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert re.split(r"\s{2,}", lines[0].strip()) == ["NAME", "SUBNET", "GATEWAY", "READY NODES", "ENDPOINTS",
                                                     "INTERNAL"]
    assert [line.split() for line in lines[1:]] == [
        ["backend", "10.30.0.0/24", "10.30.0.1", "1/2", "0", "true"],
        ["web", "172.20.0.0/16", "172.20.0.1", "2/2", "2", "false"],
    ]


def test_ls_wide_adds_range_bridge_vni_mtu(cluster):
    res = bridgenet(cluster, "ls", "-o", "wide")
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert "IP RANGE" in lines[0] and lines[0].rstrip().endswith("AGE")
    web = lines[2].split()
    assert web[:6] == ["web", "172.20.0.0/16", "172.20.0.1", "2/2", "2", "false"]
    assert web[6:11] == ["<none>", "172.20.5.0/24", "bn-web", "4242", "1450"]


def test_ls_json_matches_kubectl_get(cluster):
    res = bridgenet(cluster, "ls", "-o", "json")
    assert res.returncode == 0, res.stderr
    mine = json.loads(res.stdout)
    theirs = json.loads(cluster.kubectl("get", "bridgenetworks", "-o", "json").stdout)
    assert mine["kind"] == "List" and mine["apiVersion"] == "v1"
    assert [i["metadata"]["name"] for i in mine["items"]] == ["backend", "web"]
    assert {i["metadata"]["uid"]: i["spec"] for i in mine["items"]} == \
        {i["metadata"]["uid"]: i["spec"] for i in theirs["items"]}
    assert mine["items"][1]["status"]["readySummary"] == "2/2"


def test_inspect_shows_ipam_options_and_every_attached_pod(cluster):
    res = bridgenet(cluster, "inspect", "web")
    assert res.returncode == 0, res.stderr
    [web] = json.loads(res.stdout)
    uid = cluster.client.get("/apis/bridgenet.io/v1alpha1/bridgenetworks/web").body["metadata"]["uid"]
    assert web["Name"] == "web" and web["Id"] == uid and web["Driver"] == "bridge"
    assert web["Internal"] is False and web["EnableIPv6"] is False
    assert web["IPAM"]["Config"] == [{"Subnet": "172.20.0.0/16", "IPRange": "172.20.5.0/24",
                                      "Gateway": "172.20.0.1", "ExcludedAddresses": ["172.20.5.9"]}]
    assert web["Options"] == {"masquerade": "true", "interPodTraffic": "true", "mtu": "1450",
                              "bridge": "bn-web", "vni": "4242"}
    assert web["Containers"] == {
        "default/web-1/net1": {"Name": "web-1", "Namespace": "default", "Node": "node1", "Interface": "net1",
                               "EndpointID": "c1", "MacAddress": "02:42:ac:14:05:02",
                               "IPv4Address": "172.20.5.2/16", "IPv6Address": ""},
        "default/web-2/net1": {"Name": "web-2", "Namespace": "default", "Node": "node2", "Interface": "net1",
                               "EndpointID": "", "MacAddress": "02:42:ac:14:05:03",
                               "IPv4Address": "172.20.5.3/16", "IPv6Address": ""},
    }


def test_inspect_table(cluster):
    res = bridgenet(cluster, "inspect", "--format", "table", "web")
    assert res.returncode == 0, res.stderr
    assert "Subnet:            172.20.0.0/16" in res.stdout
    rows = [line.split() for line in res.stdout.splitlines() if line.startswith("default ")]
    assert rows == [["default", "web-1", "node1", "net1", "172.20.5.2/16", "<none>", "02:42:ac:14:05:02"],
                    ["default", "web-2", "node2", "net1", "172.20.5.3/16", "<none>", "02:42:ac:14:05:03"]]


def test_inspect_missing_network_is_an_error_in_dockers_words_and_others_still_print(cluster):
    res = bridgenet(cluster, "inspect", "missing")
    assert res.returncode != 0
    assert json.loads(res.stdout) == []
    assert "Error: No such network: missing" in res.stderr
    res = bridgenet(cluster, "inspect", "backend", "missing")
    assert res.returncode != 0
    assert [n["Name"] for n in json.loads(res.stdout)] == ["backend"]
    assert "Error: No such network: missing" in res.stderr


def test_kubeconfig_and_context_flags_after_the_plugin_name(cluster):
    env = dict(os.environ, PATH=f"{BIN_DIR}{os.pathsep}{os.environ.get('PATH', '')}")
    env.pop("KUBECONFIG", None)
    ctx = json.loads(cluster.kubectl("config", "view", "-o", "json").stdout)["current-context"]
    res = subprocess.run(["kubectl", "bridgenet", "--kubeconfig", str(cluster.kubeconfig), "--context", ctx, "ls"],
                         capture_output=True, text=True, env=env, timeout=60)
    assert res.returncode == 0, res.stderr
    assert res.stdout.splitlines()[2].split()[0] == "web"
    res = subprocess.run(["kubectl", "bridgenet", "--kubeconfig", str(cluster.kubeconfig), "--context", "nope", "ls"],
                         capture_output=True, text=True, env=env, timeout=60)
    assert res.returncode != 0 and "nope" in res.stderr


@pytest.mark.parametrize("shell,marker", [("bash", "complete -F"), ("zsh", "#compdef"), ("fish", "complete -c")])
def test_completion_scripts(cluster, shell, marker):
    res = bridgenet(cluster, "completion", shell)
    assert res.returncode == 0, res.stderr
    assert marker in res.stdout
    for verb in ("ls", "inspect", "create", "connect", "disconnect", "rm"):
        assert verb in res.stdout, verb
    # Flags of the new verbs complete too.
    assert all(flag in res.stdout for flag in ("aux-address", "alias", "force-delete")), res.stdout
