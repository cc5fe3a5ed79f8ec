"""`kubectl bridgenet create|connect|disconnect|rm` as a user runs them: real kubectl finds the
kubectl-bridgenet binary on PATH, and each verb is judged by what it prints, its exit status and
what it left in the API.

No operator or agent runs here, so the tests play their part where a verb waits for them: they
write the pod's `bridgenet.io/network-status` (or a Warning Event) as the agent would, and put a
finalizer and a `DeletionBlocked` condition on a network as the operator would.

The API server is this module's emulator, or with `SANDBOX_KUBECONFIG` an existing one (a real
API server: then the CEL messages are checked too). Everything is set up through kubectl, so both
work the same; the one emulator-only test races an edit through a proxy. On a real server, run it
where no bridgenet operator or agent runs, since the tests stand in for them. Every object carries
this run's suffix, and the module deletes what it made."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import uuid

import pytest
import yaml

from conftest import CRDS, KUBECTL, Emulator, requires_kubectl
from test_kubectl_plugin import BIN_DIR, PLUGIN

EXTERNAL = os.environ.get("SANDBOX_KUBECONFIG") or None
RUN = uuid.uuid4().hex[:6]
# On every BridgeNetwork the module makes, so that the end deletes exactly those.
RUN_LABEL = "bnt-plugin-run"

pytestmark = [
    requires_kubectl,
    pytest.mark.skipif(not PLUGIN.exists() and os.environ.get("BRIDGENET_REQUIRE_PLUGIN") != "1",
                       reason=f"{PLUGIN} is missing: run `cargo build -p bridgenet-kubectl` first"),
]
emulator_only = pytest.mark.skipif(EXTERNAL is not None, reason="needs the emulator (a proxy in front of it)")
real_server_only = pytest.mark.skipif(EXTERNAL is None, reason="the emulator does not evaluate CEL rules")


class Server:
    """The API server the verbs run against, driven only through kubectl."""

    def __init__(self, kubeconfig: pathlib.Path, cache: pathlib.Path, emulator: Emulator | None) -> None:
        self.kubeconfig = kubeconfig
        self.cache = cache
        self.emulator = emulator
        self.namespace = f"bnt-plugin-{RUN}"

    def kubectl(self, *args: str, check: bool = True, input: str | None = None) -> subprocess.CompletedProcess:
        cmd = [KUBECTL or "kubectl", "--kubeconfig", str(self.kubeconfig), "--cache-dir", str(self.cache), *args]
        res = subprocess.run(cmd, capture_output=True, text=True, input=input, timeout=60)
        if check and res.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed ({res.returncode}):\n{res.stdout}\n{res.stderr}")
        return res

    def get(self, *args: str) -> dict | None:
        res = self.kubectl("get", *args, "-o", "json", check=False)
        if res.returncode != 0:
            assert "NotFound" in res.stderr, res.stderr
            return None
        return json.loads(res.stdout)

    def env(self, kubeconfig: pathlib.Path | None = None) -> dict[str, str]:
        return dict(os.environ, PATH=f"{BIN_DIR}{os.pathsep}{os.environ.get('PATH', '')}",
                    KUBECONFIG=str(kubeconfig or self.kubeconfig))

    def bridgenet(self, *args: str, kubeconfig: pathlib.Path | None = None) -> subprocess.CompletedProcess:
        """`kubectl bridgenet ARGS` through kubectl's plugin discovery on PATH."""
        return subprocess.run(["kubectl", "bridgenet", *args], capture_output=True, text=True,
                              env=self.env(kubeconfig), timeout=90)

    def start(self, *args: str) -> subprocess.Popen:
        """The same, running while the test plays the agent."""
        return subprocess.Popen(["kubectl", "bridgenet", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, env=self.env())


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("plugin-verbs")
    emu = None
    if EXTERNAL:
        srv = Server(pathlib.Path(EXTERNAL), tmp / "kubectl-cache", None)
    else:
        emu = Emulator(tmp)
        srv = Server(emu.kubeconfig, emu.cache, emu)
    try:
        srv.kubectl("apply", "-f", str(CRDS))
        srv.kubectl("wait", "--for=condition=Established", "crd/bridgenetworks.bridgenet.io", "--timeout=30s")
        srv.kubectl("create", "namespace", srv.namespace)
        yield srv
    finally:
        try:
            if srv.get("namespace", srv.namespace) is not None:
                srv.kubectl("delete", "namespace", srv.namespace, "--wait=false", check=False)
            left = srv.get("bridgenetworks", "-l", f"{RUN_LABEL}={RUN}") or {"items": []}
            for item in left["items"]:
                name = item["metadata"]["name"]
                if item["metadata"].get("finalizers"):
                    srv.kubectl("patch", "bridgenetwork", name, "--type=merge", "-p",
                                '{"metadata":{"finalizers":null}}', check=False)
                srv.kubectl("delete", "bridgenetwork", name, "--ignore-not-found", "--wait=false", check=False)
        finally:
            if emu is not None:
                emu.stop()


def unique(base: str) -> str:
    return f"{base}-{RUN}-{uuid.uuid4().hex[:4]}"


def network(server: Server, base: str, subnet: str = "172.20.0.0/16", **spec) -> str:
    """A BridgeNetwork of this run, made with kubectl."""
    name = unique(base)
    obj = {"apiVersion": "bridgenet.io/v1alpha1", "kind": "BridgeNetwork",
           "metadata": {"name": name, "labels": {RUN_LABEL: RUN}}, "spec": {"subnet": subnet, **spec}}
    server.kubectl("create", "-f", "-", input=json.dumps(obj))
    return name


# -- create ------------------------------------------------------------------------------------


def test_create_dry_run_prints_every_flag_mapped_onto_the_spec(server):
    name = unique("dry")
    res = server.bridgenet(
        "create", name, "--driver=bridge", "--subnet=172.20.0.0/16", "--subnet", "fd00:20::/64", "--ipv6",
        "--gateway=172.20.0.254", "--gateway=fd00:20::fe", "--ip-range=172.20.5.0/24",
        "--aux-address", "router=172.20.0.2", "--aux-address", "dns6=fd00:20::53", "--internal", "--no-dns",
        "-o", "com.docker.network.bridge.enable_ip_masquerade=false",
        "--opt", "com.docker.network.bridge.enable_icc=false",
        "--opt", "com.docker.network.bridge.name=br-dry", "-o", "com.docker.network.driver.mtu=1400",
        "--label", "team=db", "--dry-run", "-o", "yaml")
    assert res.returncode == 0, res.stderr
    assert yaml.safe_load(res.stdout) == {
        "apiVersion": "bridgenet.io/v1alpha1", "kind": "BridgeNetwork",
        "metadata": {"name": name, "labels": {"team": "db"}},
        "spec": {"subnet": "172.20.0.0/16", "gateway": "172.20.0.254", "ipRange": "172.20.5.0/24",
                 "excludeAddresses": ["172.20.0.2", "fd00:20::53"],
                 "ipv6": {"subnet": "fd00:20::/64", "gateway": "fd00:20::fe"},
                 "bridge": "br-dry", "mtu": 1400, "internal": True, "masquerade": False,
                 "interPodTraffic": False, "dns": False},
    }
    assert server.get("bridgenetwork", name) is None, "a dry run creates nothing"


def test_create_dry_run_json_and_server_side(server):
    name = unique("dry")
    res = server.bridgenet("create", name, "--subnet", "10.40.0.0/24", "--dry-run=client", "-o", "json")
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["spec"] == {"subnet": "10.40.0.0/24", "internal": False, "masquerade": True,
                                              "interPodTraffic": True, "dns": True}
    # The server validates and answers with the object, and stores nothing.
    res = server.bridgenet("create", name, "--subnet", "10.40.0.0/24", "--dry-run=server", "-o", "json")
    assert res.returncode == 0, res.stderr
    checked = json.loads(res.stdout)
    assert checked["metadata"]["name"] == name and checked["spec"]["subnet"] == "10.40.0.0/24"
    assert checked["metadata"].get("creationTimestamp")
    assert server.get("bridgenetwork", name) is None


def test_create_prints_the_uid_like_docker_prints_the_id(server):
    name = unique("made")
    res = server.bridgenet("create", name, "--subnet=10.41.0.0/24", "--gateway=10.41.0.1", "--mtu=1400",
                           "--label", f"{RUN_LABEL}={RUN}")
    assert res.returncode == 0, res.stderr
    made = server.get("bridgenetwork", name)
    assert made is not None
    assert res.stdout == made["metadata"]["uid"] + "\n"
    assert made["spec"]["gateway"] == "10.41.0.1" and made["spec"]["mtu"] == 1400
    assert made["metadata"]["labels"] == {RUN_LABEL: RUN}
    assert [f["manager"] for f in made["metadata"].get("managedFields", [])] in ([], ["kubectl-bridgenet"])


def test_create_of_a_taken_name_is_dockers_error(server):
    name = network(server, "taken", "10.42.0.0/24")
    res = server.bridgenet("create", name, "--subnet=10.43.0.0/24")
    assert res.returncode == 1
    assert res.stderr == f"Error response from daemon: network with name {name} already exists\n"
    assert res.stdout == ""


@pytest.mark.parametrize("flags,message", [
    ([], "Error: --subnet with an IPv4 CIDR is required: bridgenet has no default address pool"),
    (["--subnet=10.44.0.0/33"], "Error: invalid CIDR address: 10.44.0.0/33"),
    (["--subnet=10.44.0.0/24", "--gateway=10.45.0.1"], "Error: no matching subnet for gateway 10.45.0.1"),
    (["--subnet=10.44.0.0/24", "--ip-range=10.44.0.0/16"], "Error: no matching subnet for range 10.44.0.0/16"),
    (["--subnet=10.44.0.0/24", "--ipv6"], "Error: --ipv6 needs an IPv6 --subnet"),
    (["--subnet=10.44.0.0/24", "-o", "com.docker.network.bridge.host_binding_ipv4=0.0.0.0"],
     "Error: unsupported driver option com.docker.network.bridge.host_binding_ipv4"),
    (["--subnet=10.44.0.0/24", "--driver", "macvlan"], 'Error: bridgenet has only the bridge driver, not "macvlan"'),
])
def test_create_refuses_bad_flags_before_calling_the_server(server, flags, message):
    name = unique("bad")
    res = server.bridgenet("create", name, *flags)
    assert res.returncode == 1, res.stderr
    assert res.stderr.startswith(message), res.stderr
    assert server.get("bridgenetwork", name) is None


def test_create_shows_the_servers_validation_message(server):
    name = unique("invalid")
    res = server.bridgenet("create", name, "--subnet=10.46.0.0/24", "--mtu=100")
    assert res.returncode == 1
    first = res.stderr.splitlines()[0]
    assert first.startswith("Error response from daemon: "), res.stderr
    assert "spec.mtu" in first and "576" in first, res.stderr
    res = server.bridgenet("create", "Not_A_Name", "--subnet=10.46.0.0/24")
    assert res.returncode == 1
    assert res.stderr.startswith("Error response from daemon: "), res.stderr
    assert "metadata.name" in res.stderr


@real_server_only
def test_create_shows_the_servers_cel_message(server):
    name = unique("cel")
    res = server.bridgenet("create", name, "--subnet=10.47.0.0/24", "--gateway=10.47.0.255")
    assert res.returncode == 1
    assert res.stderr.startswith("Error response from daemon: "), res.stderr
    assert "gateway must not be the subnet's broadcast address" in res.stderr
    res = server.bridgenet("create", name, "--subnet=10.47.0.0/24", "--gateway=10.47.0.255", "--dry-run=server")
    assert res.returncode == 1 and "broadcast address" in res.stderr
    assert server.get("bridgenetwork", name) is None
