"""Real kubectl (v1.32) against the emulator: the commands of the README's Docker story."""

import json
import os
import re
import select
import subprocess
import time


from conftest import CRDS, EXAMPLES, Emulator, requires_kubectl, unique, wait_for

pytestmark = requires_kubectl

NETWORK = """apiVersion: bridgenet.io/v1alpha1
kind: BridgeNetwork
metadata: {{name: {name}}}
spec: {{subnet: {subnet}, gateway: {gateway}}}
"""


def network(name, subnet="172.20.0.0/16", gateway="172.20.0.1"):
    return NETWORK.format(name=name, subnet=subnet, gateway=gateway)


def test_crds_register_short_names_and_categories(emulator, crds):
    out = emulator.kubectl("api-resources", "--api-group=bridgenet.io").stdout
    assert "bridgenetworks" in out and " bn " in out and "nbr" in out and "bnac" in out and "bno" in out
    crd = json.loads(emulator.kubectl("get", "crd", "bridgenetworks.bridgenet.io", "-o", "json").stdout)
    assert {c["type"] for c in crd["status"]["conditions"]} >= {"Established", "NamesAccepted"}
    emulator.kubectl("wait", "--for=condition=Established", "crd/nodebridges.bridgenet.io", "--timeout=10s")
    # Applying the CRDs again is a no-op.
    again = emulator.kubectl("apply", "-f", str(CRDS)).stdout
    assert again.count("unchanged") == len(list(CRDS.glob("*.yaml"))) == 4, again


def test_apply_get_describe_like_the_docker_story(emulator, crds):
    name = unique("custom-network")
    out = emulator.kubectl("apply", "-f", "-", input=network(name)).stdout
    assert f"bridgenetwork.bridgenet.io/{name} created" in out
    assert "unchanged" in emulator.kubectl("apply", "-f", "-", input=network(name)).stdout
    table = emulator.kubectl("get", "bn", name).stdout.splitlines()
    assert table[0].split() == ["NAME", "SUBNET", "GATEWAY", "BRIDGE", "READY", "NODES", "ENDPOINTS", "AGE"]
    assert table[1].split()[:2] == [name, "172.20.0.0/16"]
    wide = emulator.kubectl("get", "bridgenetworks", name, "-o", "wide").stdout.splitlines()
    assert "INTERNAL" in wide[0] and "ACCEPTED" in wide[0]
    assert name in emulator.kubectl("get", "bridgenet").stdout  # the CRD's category
    # The operator's status and an events.k8s.io/v1 Event show up where a user looks.
    emulator.client.patch(f"/apis/bridgenet.io/v1alpha1/bridgenetworks/{name}/status", {"status": {
        "gateway": "172.20.0.1", "readySummary": "2/2", "endpoints": 3,
        "conditions": [{"type": "Accepted", "status": "False", "reason": "SubnetOverlap",
                        "message": "overlaps with other-net", "lastTransitionTime": "2026-01-01T00:00:00Z"}]}})
    uid = emulator.client.get(f"/apis/bridgenet.io/v1alpha1/bridgenetworks/{name}").body["metadata"]["uid"]
    ev = {"apiVersion": "events.k8s.io/v1", "kind": "Event", "metadata": {"name": f"{name}.1"},
          "eventTime": "2026-01-01T00:00:00.000000Z", "reportingController": "bridgenet-operator",
          "reportingInstance": "op-0", "action": "Validate", "reason": "SubnetOverlap", "type": "Warning",
          "note": f"{name} overlaps with other-net",
          "regarding": {"apiVersion": "bridgenet.io/v1alpha1", "kind": "BridgeNetwork", "name": name, "uid": uid}}
    assert emulator.client.post("/apis/events.k8s.io/v1/namespaces/default/events", ev).status == 201
    row = emulator.kubectl("get", "bn", name, "-o", "wide").stdout.splitlines()[1].split()
    assert row[2:6] == ["172.20.0.1", "2/2", "3", "false"] and "SubnetOverlap" in row
    desc = emulator.kubectl("describe", "bridgenetwork", name).stdout
    assert "Subnet:" in desc and "SubnetOverlap" in desc
    assert "overlaps with other-net" in desc.split("Events:")[1], desc


def test_invalid_network_is_refused_at_apply(emulator, crds):
    bad = network(unique("bad")).replace("spec: {", "spec: {mtu: 100, bridge: a-name-longer-than-15, ")
    res = emulator.kubectl("apply", "-f", "-", input=bad, check=False)
    assert res.returncode != 0
    assert "is invalid" in res.stderr and "spec.mtu" in res.stderr and "spec.bridge" in res.stderr
    typo = network(unique("typo")).replace("spec: {", "spec: {subnett: 1, ")
    res = emulator.kubectl("apply", "-f", "-", input=typo, check=False)
    assert res.returncode != 0 and 'unknown field "spec.subnett"' in res.stderr


def test_server_side_apply_and_replace_conflict(emulator, crds):
    name = unique("ssa-net")
    out = emulator.kubectl("apply", "--server-side", "-f", "-", input=network(name)).stdout
    assert "serverside-applied" in out
    live = emulator.kubectl("get", "bn", name, "-o", "json").stdout
    emulator.kubectl("annotate", "bn", name, "touched=yes")
    res = emulator.kubectl("replace", "-f", "-", input=live, check=False)
    assert res.returncode != 0 and "the object has been modified" in res.stderr


def test_pods_annotate_selectors_and_wide_output(emulator):
    ns = unique("kns")
    emulator.kubectl("create", "namespace", ns)
    node = unique("node")
    emulator.client.post("/api/v1/nodes", {"metadata": {"name": node, "labels": {"node-role.kubernetes.io/worker": ""}},
                                           "status": {"addresses": [{"type": "InternalIP", "address": "10.251.0.11"}],
                                                      "conditions": [{"type": "Ready", "status": "True"}]}})
    nodes = emulator.kubectl("get", "nodes", node, "-o", "wide").stdout
    assert "10.251.0.11" in nodes and "Ready" in nodes and "worker" in nodes
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web", "namespace": ns, "labels": {"app": "web"}},
           "spec": {"nodeName": node, "containers": [{"name": "c", "image": "busybox", "command": ["sleep", "1d"]}]}}
    emulator.kubectl("apply", "-f", "-", input=json.dumps(pod))
    emulator.kubectl("run", "other", "-n", ns, "--image=busybox", "--restart=Never", "--", "sleep", "1d")
    emulator.kubectl("annotate", "-n", ns, "pod", "web", "bridgenet.io/networks=custom-network")
    got = json.loads(emulator.kubectl("get", "-n", ns, "pod", "web", "-o", "json").stdout)
    assert got["metadata"]["annotations"]["bridgenet.io/networks"] == "custom-network"
    on_node = emulator.kubectl("get", "pods", "-A", "--field-selector", f"spec.nodeName={node}", "-o", "name").stdout
    assert on_node.split() == ["pod/web"]
    assert emulator.kubectl("get", "pods", "-n", ns, "-l", "app in (web)", "-o", "name").stdout.split() == ["pod/web"]
    assert emulator.kubectl("get", "pods", "-n", ns, "-l", "!app", "-o", "name").stdout.split() == ["pod/other"]
    # The kubelet stand-in's view: status written through the status subresource.
    emulator.client.patch(f"/api/v1/namespaces/{ns}/pods/web/status", {"status": {
        "phase": "Running", "podIP": "10.88.0.5",
        "conditions": [{"type": "Ready", "status": "True"}],
        "containerStatuses": [{"name": "c", "ready": True, "restartCount": 0, "image": "busybox", "imageID": "",
                               "state": {"running": {}}}]}})
    emulator.kubectl("wait", "-n", ns, "--for=condition=Ready", "pod/web", "--timeout=10s")
    wide = emulator.kubectl("get", "pods", "-n", ns, "web", "-o", "wide").stdout.splitlines()[1].split()
    assert wide[:3] == ["web", "1/1", "Running"] and "10.88.0.5" in wide and node in wide
    emulator.kubectl("delete", "namespace", ns, "--timeout=20s")
    assert emulator.kubectl("get", "ns", ns, check=False).returncode != 0
    emulator.kubectl("delete", "node", node)


def test_get_watch_streams_changes(emulator, crds):
    name = unique("watched")
    emulator.kubectl("apply", "-f", "-", input=network(name))
    proc = subprocess.Popen(
        [*_kubectl(emulator), "get", "bn", name, "-w", "--output-watch-events", "--request-timeout=0"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    try:
        out = _read_until(proc, name.encode(), 10)  # the initial row
        # kubectl prints its GET, then watches from resourceVersion 0: a change that lands
        # before the watch starts is in the watch's initial ADDED (as from a real server), which
        # kubectl does not print, having printed the object already. Nothing shows when the
        # watch has started, so change the object until a change is streamed.
        buf = bytearray(out)
        modified = None
        for i in range(1, 21):
            emulator.client.patch(f"/apis/bridgenet.io/v1alpha1/bridgenetworks/{name}/status",
                                  {"status": {"readySummary": f"{i}/{i}"}})
            _read_for(proc, buf, 0.5)
            modified = re.search(rb"^MODIFIED .*\n", bytes(buf), re.MULTILINE)
            if modified:
                break
            assert proc.poll() is None, f"kubectl exited: {bytes(buf)!r} {proc.stderr.read()!r}"
        assert modified, f"no change streamed in 10 s: {bytes(buf)!r}"
        row = modified.group(0).decode()
        assert name in row and re.search(r"\b(\d+)/\1\b", row), row
    finally:
        proc.terminate()
        proc.wait(5)


def _read_for(proc, buf: bytearray, seconds: float) -> None:
    """Appends to `buf` what the process prints on stdout within `seconds`."""
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        ready, _, _ = select.select([proc.stdout], [], [], left)
        if ready:
            chunk = os.read(proc.stdout.fileno(), 4096)
            if not chunk:
                return
            buf += chunk


def _read_until(proc, needle: bytes, timeout: float, seen: bytes = b"") -> bytes:
    """Reads the process' stdout until `needle` appears after what was `seen`, without ever
    blocking past the deadline."""
    deadline = time.monotonic() + timeout
    buf = seen
    while needle not in buf[len(seen):]:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"no {needle!r} within {timeout}s in {buf!r}")
        ready, _, _ = select.select([proc.stdout], [], [], left)
        if ready:
            chunk = os.read(proc.stdout.fileno(), 4096)
            if not chunk:
                raise AssertionError(f"kubectl exited: {buf!r} {proc.stderr.read()!r}")
            buf += chunk
    return buf


def test_delete_waits_for_finalizers(emulator, crds):
    name = unique("held")
    emulator.kubectl("apply", "-f", "-", input=network(name))
    emulator.kubectl("patch", "bn", name, "--type=merge", "-p",
                     json.dumps({"metadata": {"finalizers": ["bridgenet.io/operator"]}}))
    emulator.kubectl("delete", "bn", name, "--wait=false")
    got = json.loads(emulator.kubectl("get", "bn", name, "-o", "json").stdout)
    assert got["metadata"]["deletionTimestamp"]
    waiter = subprocess.Popen([*_kubectl(emulator), "wait", "--for=delete", f"bn/{name}", "--timeout=20s"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(0.5)
    assert waiter.poll() is None  # still held by the finalizer
    emulator.kubectl("patch", "bn", name, "--type=json", "-p", '[{"op":"remove","path":"/metadata/finalizers"}]')
    out, err = waiter.communicate(timeout=20)
    assert waiter.returncode == 0, err
    wait_for(lambda: emulator.kubectl("get", "bn", name, check=False).returncode != 0, what="gone")


def test_examples_are_accepted(emulator, crds):
    files = sorted(EXAMPLES.glob("*.yaml")) if EXAMPLES.is_dir() else []
    docs = [(f.name, f.read_text()) for f in files] or [("inline", network("docker-story"))]
    for fname, text in docs:
        res = emulator.kubectl("apply", "--dry-run=server", "-f", "-", input=text, check=False)
        assert res.returncode == 0, f"{fname}: {res.stderr}"


def test_invalid_examples_refused_by_the_schema_are_refused(emulator, crds):
    # examples/invalid/*.yaml say what refuses them; the emulator runs the OpenAPI schema but
    # not CEL rules (see tests/sandbox/README.md), so only the schema's refusals are checked.
    files = sorted((EXAMPLES / "invalid").glob("*.yaml")) if (EXAMPLES / "invalid").is_dir() else []
    schema_refused = [f for f in files if "OpenAPI schema" in f.read_text()]
    for f in schema_refused:
        text = f.read_text()
        expect = next(ln.split("expect:", 1)[1].strip() for ln in text.splitlines() if "expect:" in ln)
        res = emulator.kubectl("apply", "--dry-run=server", "-f", "-", input=text, check=False)
        assert res.returncode != 0, f"{f.name} was accepted"
        assert expect.strip("/").replace("/", ".") in res.stderr, f"{f.name}: {res.stderr}"


def _kubectl(emulator):
    return ["kubectl", "--kubeconfig", str(emulator.kubeconfig), "--cache-dir", str(emulator.cache)]




def test_https_with_the_kubeconfig_ca(tmp_path):
    import asyncio

    from bnsandbox.kube import Kube

    emu = Emulator(tmp_path, "--tls-dir", str(tmp_path / "tls"))
    try:
        assert emu.url.startswith("https://127.0.0.1:")
        assert "certificate-authority-data" in emu.kubeconfig.read_text()
        assert "default" in emu.kubectl("get", "namespaces", "-o", "name").stdout
        emu.kubectl("apply", "-f", str(CRDS))

        async def through_the_kubelets_client():
            async with Kube(str(emu.kubeconfig)) as kube:
                return await kube.request("GET", "/apis/bridgenet.io/v1alpha1/bridgenetworks")

        assert asyncio.run(through_the_kubelets_client())["kind"] == "BridgeNetworkList"
    finally:
        emu.stop()
