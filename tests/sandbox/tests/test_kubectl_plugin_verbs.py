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

import datetime
import http.client
import http.server
import json
import os
import pathlib
import subprocess
import threading
import time
import urllib.parse
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


def network(server: Server, base: str, subnet: str = "172.20.0.0/16", finalizers: list | None = None,
            **spec) -> str:
    """A BridgeNetwork of this run, made with kubectl."""
    name = unique(base)
    obj = {"apiVersion": "bridgenet.io/v1alpha1", "kind": "BridgeNetwork",
           "metadata": {"name": name, "labels": {RUN_LABEL: RUN}, "finalizers": finalizers or []},
           "spec": {"subnet": subnet, **spec}}
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


# -- connect / disconnect ----------------------------------------------------------------------

NETWORKS = "bridgenet.io/networks"
STATUS = "bridgenet.io/network-status"


def pod(server: Server, base: str, networks: str | None = None, status: list | None = None,
        host_network: bool = False) -> str:
    """A pod of this run's namespace that no node ever runs (so no agent touches it), with the
    given `bridgenet.io/networks` and `bridgenet.io/network-status`."""
    name = unique(base)
    annotations = {}
    if networks is not None:
        annotations[NETWORKS] = networks
    if status is not None:
        annotations[STATUS] = json.dumps(status)
    obj = {"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": name, "namespace": server.namespace, "annotations": annotations},
           "spec": {"containers": [{"name": "c", "image": "busybox"}], "automountServiceAccountToken": False,
                    "hostNetwork": host_network, "nodeSelector": {"bnt-plugin-test": "no-such-node"}}}
    deadline = time.monotonic() + 30
    while True:
        res = server.kubectl("create", "-f", "-", input=json.dumps(obj), check=False)
        # A real server admits pods only once its controller has made the namespace's default
        # ServiceAccount, moments after the namespace.
        if res.returncode == 0 or "serviceaccount" not in res.stderr or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert res.returncode == 0, res.stderr
    return name


def annotations_of(server: Server, name: str) -> dict:
    got = server.get("pod", name, "-n", server.namespace)
    assert got is not None, f"pod {name} is gone"
    return got["metadata"].get("annotations") or {}


def write_status(server: Server, name: str, entries: list) -> None:
    """What the agent does once an attachment or detachment is done."""
    server.kubectl("annotate", "--overwrite", "pod", name, "-n", server.namespace, f"{STATUS}={json.dumps(entries)}")


def when_annotation(server: Server, name: str, want, then, timeout: float = 20) -> None:
    """Plays the agent: waits until the pod's networks annotation satisfies `want`, then `then()`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if want(annotations_of(server, name).get(NETWORKS)):
            then()
            return
        time.sleep(0.05)
    raise AssertionError(f"the networks annotation of {name} never matched: {annotations_of(server, name)}")


def agent_event(server: Server, pod_name: str, reason: str, note: str) -> None:
    """A Warning Event about the pod as the agent posts it (events.k8s.io/v1, like kube's Recorder)."""
    uid = server.get("pod", pod_name, "-n", server.namespace)["metadata"]["uid"]
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    server.kubectl("create", "-f", "-", input=json.dumps({
        "apiVersion": "events.k8s.io/v1", "kind": "Event",
        "metadata": {"name": f"{pod_name}.{uuid.uuid4().hex[:10]}", "namespace": server.namespace},
        "eventTime": now, "reportingController": "bridgenet-agent", "reportingInstance": "node1",
        "action": "AttachNetwork", "reason": reason, "note": note, "type": "Warning",
        "regarding": {"apiVersion": "v1", "kind": "Pod", "name": pod_name, "namespace": server.namespace,
                      "uid": uid}}))


def finish(proc: subprocess.Popen, timeout: float = 40) -> subprocess.CompletedProcess:
    out, err = proc.communicate(timeout=timeout)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def test_connect_keeps_the_comma_form_and_prints_what_the_agent_reports(server):
    net = network(server, "web")
    p = pod(server, "api", networks="other")
    proc = server.start("connect", net, p, "-n", server.namespace, "--timeout", "30s")
    entry = {"name": net, "interface": "net2", "ips": ["172.20.0.5"], "mac": "02:42:ac:14:00:05",
             "gateway": ["172.20.0.1"]}
    try:
        when_annotation(server, p, lambda v: v == f"other,{net}",
                        lambda: write_status(server, p, [{"name": "other", "interface": "net1"}, entry]))
    finally:
        res = finish(proc)
    assert res.returncode == 0, res.stderr
    header, row = res.stdout.splitlines()
    assert header.split() == ["NAMESPACE", "POD", "NETWORK", "INTERFACE", "IPS", "MAC", "GATEWAY"]
    assert row.split() == [server.namespace, p, net, "net2", "172.20.0.5", "02:42:ac:14:00:05", "172.20.0.1"]
    assert res.stderr == ""


def test_connect_with_an_address_and_aliases_writes_the_json_form(server):
    net = network(server, "web", ipv6={"subnet": "fd00:20::/64"})
    p = pod(server, "api", networks="a,b")
    res = server.bridgenet("connect", net, p, "-n", server.namespace, "--ip6", "fd00:20::9",
                           "--alias", "DB", "--alias", "sql", "--interface", "data0", "--timeout=0")
    assert res.returncode == 0, res.stderr
    assert res.stdout == ""
    assert json.loads(annotations_of(server, p)[NETWORKS]) == [
        {"name": "a"}, {"name": "b"},
        {"name": net, "interface": "data0", "ip6": "fd00:20::9", "aliases": ["db", "sql"]}]


def test_connect_to_a_pod_without_networks_and_to_a_json_list(server):
    net = network(server, "web")
    bare = pod(server, "bare")
    assert server.bridgenet("connect", net, bare, "-n", server.namespace, "--timeout", "0").returncode == 0
    assert annotations_of(server, bare)[NETWORKS] == net
    listed = pod(server, "listed", networks='[{"name": "a", "interface": "net2", "defaultRoute": true}]')
    assert server.bridgenet("connect", net, listed, "-n", server.namespace, "--timeout", "0").returncode == 0
    # `a` has net2, so the new entry cannot have its positional name.
    assert json.loads(annotations_of(server, listed)[NETWORKS]) == [
        {"name": "a", "interface": "net2", "defaultRoute": True}, {"name": net, "interface": "net1"}]


def test_connect_without_an_agent_times_out_saying_so(server):
    net = network(server, "web")
    p = pod(server, "api")
    start = time.monotonic()
    res = server.bridgenet("connect", net, p, "-n", server.namespace, "--timeout", "1s")
    assert time.monotonic() - start < 15
    assert res.returncode == 1
    assert res.stderr == (
        f"Error: timed out after 1s waiting for the bridgenet agent to attach pod {server.namespace}/{p} to network "
        f"{net}: the pod's {STATUS} does not list it yet. Its {NETWORKS} annotation asks for it, so the agent "
        "attaches it when it can; the pod is not on a node yet\n")
    assert annotations_of(server, p)[NETWORKS] == net


def test_connect_reports_the_agents_warning_and_ignores_earlier_ones(server):
    net = network(server, "web")
    p = pod(server, "api")
    agent_event(server, p, "InvalidNetworkAnnotation", "an earlier complaint, already seen")
    proc = server.start("connect", net, p, "-n", server.namespace, "--ip", "172.20.0.9", "--timeout", "30s")
    try:
        when_annotation(server, p, lambda v: v is not None and net in v,
                        lambda: agent_event(server, p, "AddressUnavailable",
                                            f"172.20.0.9 is taken on network {net}"))
    finally:
        res = finish(proc)
    assert res.returncode == 1
    assert res.stderr == (
        f"Error response from daemon: the bridgenet agent could not attach pod {server.namespace}/{p} to network "
        f"{net}: AddressUnavailable: 172.20.0.9 is taken on network {net}\n"
        f"The pod's {NETWORKS} annotation still asks for {net}, so the agent retries; "
        f"`kubectl bridgenet disconnect {net} {p} -n {server.namespace}` takes it back.\n")


def test_connect_refusals_in_dockers_words_change_nothing(server):
    net = network(server, "web")
    ns = server.namespace
    on = pod(server, "on", networks=f"a,{net}")
    cases = [
        (["connect", net, on], f"Error response from daemon: endpoint with name {on} already exists in network {net}"),
        (["connect", "nope-" + RUN, on], f"Error: No such network: nope-{RUN}"),
        (["connect", net, "nopod"], f"Error response from daemon: No such container: {ns}/nopod"),
        (["connect", net, on, "--ip", "10.9.9.9"],
         "Error: Invalid address 10.9.9.9: It does not belong to any of this network's subnets"),
        (["connect", net, on, "--alias", "no_underscores"], 'Error: invalid alias "no_underscores"'),
    ]
    for args, message in cases:
        res = server.bridgenet(*args, "-n", ns, "--timeout", "5s")
        assert res.returncode == 1, (args, res.stderr)
        assert res.stderr.startswith(message), (args, res.stderr)
    assert annotations_of(server, on)[NETWORKS] == f"a,{net}"
    host = pod(server, "host", host_network=True)
    res = server.bridgenet("connect", net, host, "-n", ns)
    assert res.returncode == 1
    assert res.stderr == ("Error response from daemon: container cannot be disconnected from host network or "
                          "connected to host network\n")
    assert NETWORKS not in annotations_of(server, host)


class RacingProxy:
    """An HTTP proxy in front of the emulator that, when the plugin sends its first PATCH of a
    pod, first lets `race` change that pod, as another client would between the plugin's read
    and its write. It records each request's method, path and answer."""

    def __init__(self, upstream: str, race) -> None:
        target = urllib.parse.urlparse(upstream)
        self.log: list[tuple[str, str, int]] = []
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def forward(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                path = self.path.split("?")[0]
                if self.command == "PATCH" and "/pods/" in path and not any(m == "PATCH" for m, _, _ in proxy.log):
                    race()
                conn = http.client.HTTPConnection(target.hostname, target.port, timeout=30)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "connection")}
                conn.request(self.command, self.path, body=body or None, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
                conn.close()
                proxy.log.append((self.command, path, resp.status))
                self.send_response(resp.status)
                for k, v in resp.getheaders():
                    if k.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = forward

            def log_message(self, *args) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def kubeconfig(self, original: pathlib.Path, path: pathlib.Path) -> pathlib.Path:
        cfg = yaml.safe_load(original.read_text())
        cfg["clusters"][0]["cluster"]["server"] = self.url
        path.write_text(yaml.safe_dump(cfg))
        return path

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@emulator_only
def test_connect_recomputes_its_edit_when_the_pod_changed_underneath(server, tmp_path):
    net = network(server, "web")
    p = pod(server, "api", networks="other")
    # Another client connects the pod to `racer` between the plugin's read and its write.
    proxy = RacingProxy(server.emulator.url, lambda: server.kubectl(
        "annotate", "--overwrite", "pod", p, "-n", server.namespace, f"{NETWORKS}=other,racer"))
    try:
        res = server.bridgenet("connect", net, p, "-n", server.namespace, "--timeout", "0",
                               kubeconfig=proxy.kubeconfig(server.kubeconfig, tmp_path / "kubeconfig"))
    finally:
        proxy.stop()
    assert res.returncode == 0, res.stderr
    # The stale write was refused, and the second one kept the other client's change.
    assert annotations_of(server, p)[NETWORKS] == f"other,racer,{net}"
    pod_calls = [(m, code) for m, path, code in proxy.log if path.endswith(f"/pods/{p}")]
    assert pod_calls == [("GET", 200), ("PATCH", 409), ("GET", 200), ("PATCH", 200)], proxy.log


def test_disconnect_keeps_the_form_and_waits_until_the_agent_drops_the_interface(server):
    net = network(server, "web")
    status = [{"name": "a", "interface": "net1"}, {"name": net, "interface": "net2"}, {"name": "b", "interface": "net3"}]
    p = pod(server, "api", networks=f"a,{net},b", status=status)
    proc = server.start("disconnect", net, p, "-n", server.namespace, "--timeout", "30s")
    try:
        time.sleep(0.5)
        assert proc.poll() is None, "disconnect returned while the agent still reports the interface"
        when_annotation(server, p, lambda v: v == "a,b",
                        lambda: write_status(server, p, [status[0], status[2]]))
    finally:
        res = finish(proc)
    assert res.returncode == 0, res.stderr
    assert (res.stdout, res.stderr) == ("", "")


def test_disconnect_of_the_last_network_removes_the_annotation(server):
    net = network(server, "web")
    p = pod(server, "api", networks=f'[{{"name": "a", "interface": "x"}}, {{"name": "{net}", "ip": "172.20.0.9"}}]')
    assert server.bridgenet("disconnect", net, p, "-n", server.namespace, "--timeout", "0").returncode == 0
    assert json.loads(annotations_of(server, p)[NETWORKS]) == [{"name": "a", "interface": "x"}]
    assert server.bridgenet("disconnect", "a", p, "-n", server.namespace, "--timeout", "0").returncode == 0
    assert NETWORKS not in annotations_of(server, p)


def test_disconnect_refusals_in_dockers_words(server):
    net = network(server, "web")
    ns = server.namespace
    p = pod(server, "api", networks="a")
    res = server.bridgenet("disconnect", net, p, "-n", ns)
    assert res.returncode == 1
    assert res.stderr == f"Error response from daemon: container {p} is not connected to network {net}\n"
    res = server.bridgenet("disconnect", "nope-" + RUN, p, "-n", ns)
    assert res.returncode == 1 and res.stderr == f"Error: No such network: nope-{RUN}\n"
    res = server.bridgenet("disconnect", "nope-" + RUN, "nopod", "-n", ns)
    assert res.returncode == 1 and res.stderr == f"Error: No such network: nope-{RUN}\n"
    res = server.bridgenet("disconnect", net, "nopod", "-n", ns)
    assert res.returncode == 1 and res.stderr == f"Error response from daemon: No such container: {ns}/nopod\n"
    assert annotations_of(server, p)[NETWORKS] == "a"
    # `a` is no BridgeNetwork (any more), but the pod asks for it: disconnecting still cleans up.
    res = server.bridgenet("disconnect", "a", p, "-n", ns, "--timeout", "0")
    assert res.returncode == 0, res.stderr
    assert NETWORKS not in annotations_of(server, p)


def test_disconnect_without_an_agent_times_out_saying_so(server):
    net = network(server, "web")
    p = pod(server, "api", networks=net, status=[{"name": net, "interface": "net1"}])
    res = server.bridgenet("disconnect", net, p, "-n", server.namespace, "--timeout", "500ms")
    assert res.returncode == 1
    assert res.stderr.startswith(
        f"Error: timed out after 500ms waiting for the bridgenet agent to detach pod {server.namespace}/{p} from "
        f"network {net}: the pod's {STATUS} still lists it."), res.stderr
    assert NETWORKS not in annotations_of(server, p)


# -- rm ----------------------------------------------------------------------------------------

OPERATOR_FINALIZER = "bridgenet.io/operator"
# The operator's words (operator/src/status.rs, `deleting`).
BLOCKED = ("deletion waits for 2 attached pod interfaces: default/db on node1, default/web on node2; detach them "
           "(remove the network from the pods' bridgenet.io/networks annotation) or annotate the network "
           "bridgenet.io/force-delete=true")


def ready_condition(server: Server, name: str, reason: str, message: str) -> None:
    """What the operator reports on the network's status."""
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    server.kubectl("patch", "bridgenetwork", name, "--subresource=status", "--type=merge", "-p", json.dumps(
        {"status": {"conditions": [{"type": "Ready", "status": "False", "reason": reason, "message": message,
                                    "lastTransitionTime": now}]}}))


def release(server: Server, name: str) -> None:
    """What the operator does once the network is torn down."""
    server.kubectl("patch", "bridgenetwork", name, "--type=merge", "-p", '{"metadata":{"finalizers":null}}')


def test_rm_removes_each_network_and_prints_its_name(server):
    a, b = network(server, "rm-a", "10.50.0.0/24"), network(server, "rm-b", "10.51.0.0/24")
    res = server.bridgenet("rm", a, b)
    assert res.returncode == 0, res.stderr
    assert (res.stdout, res.stderr) == (f"{a}\n{b}\n", "")
    assert server.get("bridgenetwork", a) is None and server.get("bridgenetwork", b) is None
    c = network(server, "rm-c", "10.52.0.0/24")
    res = server.bridgenet("remove", c)
    assert (res.returncode, res.stdout) == (0, f"{c}\n"), res.stderr


def test_rm_of_a_missing_network_is_dockers_error_and_the_others_still_go(server):
    a = network(server, "rm-a", "10.53.0.0/24")
    res = server.bridgenet("rm", f"nope-{RUN}", a)
    assert res.returncode == 1
    assert (res.stdout, res.stderr) == (f"{a}\n", f"Error: No such network: nope-{RUN}\n")
    assert server.get("bridgenetwork", a) is None
    # Docker's -f: a network that does not exist is no error.
    res = server.bridgenet("rm", "-f", f"nope-{RUN}")
    assert (res.returncode, res.stdout, res.stderr) == (0, "", "")


def test_rm_of_a_network_pods_use_is_dockers_active_endpoints_error(server):
    name = network(server, "held", "10.54.0.0/24", finalizers=[OPERATOR_FINALIZER])
    ready_condition(server, name, "DeletionBlocked", BLOCKED)
    start = time.monotonic()
    res = server.bridgenet("rm", name)
    assert time.monotonic() - start < 4, "the condition was there: no need to wait out the timeout"
    assert res.returncode == 1
    assert res.stdout == ""
    first, second = res.stderr.splitlines()
    assert first == (f"Error response from daemon: error while removing network: network {name} has active "
                     "endpoints (default/db on node1, default/web on node2)")
    assert second.startswith("The deletion stays pending: the network goes once they disconnect"), second
    assert f"kubectl bridgenet rm --force-delete {name}" in second
    held = server.get("bridgenetwork", name)
    assert held is not None and held["metadata"].get("deletionTimestamp")
    release(server, name)


def test_rm_waits_for_the_operator_to_finish(server):
    name = network(server, "slow", "10.55.0.0/24", finalizers=[OPERATOR_FINALIZER])
    proc = server.start("rm", name, "--timeout", "20s")
    try:
        time.sleep(0.7)
        assert proc.poll() is None, "rm returned while the network still exists"
        release(server, name)
    finally:
        res = finish(proc)
    assert res.returncode == 0, res.stderr
    assert (res.stdout, res.stderr) == (f"{name}\n", "")


def test_rm_force_delete_annotates_the_network_and_reports_an_unfinished_deletion(server):
    name = network(server, "forced", "10.56.0.0/24", finalizers=[OPERATOR_FINALIZER])
    res = server.bridgenet("rm", "--force-delete", "--timeout", "1s", name)
    assert res.returncode == 0, res.stderr
    assert res.stdout == f"{name}\n"
    assert res.stderr == (f"Warning: network {name} is still being deleted (finalizers: {OPERATOR_FINALIZER}); "
                          f"`kubectl get bridgenetwork {name}` shows when it is gone\n")
    forced = server.get("bridgenetwork", name)
    assert forced["metadata"]["annotations"]["bridgenet.io/force-delete"] == "true"
    release(server, name)
    assert server.get("bridgenetwork", name) is None


# -- ls and inspect, here too so that they also run against a real API server -------------------


def test_ls_and_inspect_read_what_the_operator_and_agents_report(server):
    name = network(server, "seen", "172.26.0.0/24", gateway="172.26.0.1", excludeAddresses=["172.26.0.9"])
    server.kubectl("patch", "bridgenetwork", name, "--subresource=status", "--type=merge", "-p", json.dumps({
        "status": {"gateway": "172.26.0.1", "bridge": "bn-seen", "vni": 4343, "readyNodes": 1, "totalNodes": 1,
                   "readySummary": "1/1", "endpoints": 1}}))
    nb = f"{name}.node-a"
    server.kubectl("create", "-f", "-", input=json.dumps({
        "apiVersion": "bridgenet.io/v1alpha1", "kind": "NodeBridge",
        "metadata": {"name": nb, "labels": {"bridgenet.io/network": name, "bridgenet.io/node": "node-a",
                                            RUN_LABEL: RUN}},
        "spec": {"network": name, "node": "node-a", "bridge": "bn-seen", "subnet": "172.26.0.0/24",
                 "gateway": "172.26.0.1", "gatewayMac": "02:42:ac:1a:00:01", "mtu": 1450, "vni": 4343}}))
    try:
        server.kubectl("patch", "nodebridge", nb, "--subresource=status", "--type=merge", "-p", json.dumps({
            "status": {"endpointCount": 1, "endpoints": [{
                "namespace": server.namespace, "pod": "web", "interface": "net1", "ipv4": "172.26.0.2/24",
                "mac": "02:42:ac:1a:00:02", "aliases": ["front"]}]}}))
        res = server.bridgenet("ls")
        assert res.returncode == 0, res.stderr
        rows = [line.split() for line in res.stdout.splitlines()[1:]]
        assert [name, "172.26.0.0/24", "172.26.0.1", "1/1", "1", "false"] in rows, res.stdout
        res = server.bridgenet("inspect", name)
        assert res.returncode == 0, res.stderr
        [seen] = json.loads(res.stdout)
        assert seen["Name"] == name and seen["Driver"] == "bridge"
        assert seen["Id"] == server.get("bridgenetwork", name)["metadata"]["uid"]
        assert seen["IPAM"]["Config"] == [{"Subnet": "172.26.0.0/24", "Gateway": "172.26.0.1",
                                           "ExcludedAddresses": ["172.26.0.9"]}]
        assert seen["Containers"] == {f"{server.namespace}/web/net1": {
            "Name": "web", "Namespace": server.namespace, "Node": "node-a", "Interface": "net1",
            "EndpointID": "", "MacAddress": "02:42:ac:1a:00:02", "IPv4Address": "172.26.0.2/24",
            "IPv6Address": ""}}
        missing = unique("missing")
        res = server.bridgenet("inspect", name, missing)
        assert res.returncode == 1
        assert [n["Name"] for n in json.loads(res.stdout)] == [name]
        assert f"Error: No such network: {missing}" in res.stderr
    finally:
        server.kubectl("delete", "nodebridge", nb, "--ignore-not-found", "--wait=false", check=False)
