"""Ready only when attached: a pod that asks for a network does not become Ready before the
network is attached on its node. The readiness gate `bridgenet.io/networks-ready` holds it back
while its network does not exist (condition False, the refusal as its message), lets it go once
the BridgeNetwork is applied and the pod attached (condition True, READINESS GATES 1/1), and holds
it again while a network hot-attached later is not attached yet. A pod without the gate gets no
condition at all.

On a real API server the gate comes from the chart's MutatingAdmissionPolicy (installed here for
the test, as `helm install` would, and removed after): the test does not write it and checks it
was injected. The emulator runs no admission policies, so there the test writes the gate itself."""

from __future__ import annotations

import json
import re
import time

import pytest
import yaml

from conftest import EXTERNAL, REPO, eventually, unique

GATE = "bridgenet.io/networks-ready"
# A failed sandbox is retried by the kubelet (the stand-in every 3 s, a real one with backoff),
# and hot-plug retries at its next resync (10 s): generous, but bounded.
SETTLE = 120.0


def policy_version(cluster) -> str | None:
    """The newest admissionregistration.k8s.io version whose MutatingAdmissionPolicy the server
    serves, as the chart picks it."""
    for version in ("v1", "v1beta1", "v1alpha1"):
        res = cluster.kubectl("get", "--raw", f"/apis/admissionregistration.k8s.io/{version}", check=False)
        if res.returncode == 0 and any(r["kind"] == "MutatingAdmissionPolicy"
                                       for r in json.loads(res.stdout)["resources"]):
            return version
    return None


@pytest.fixture(scope="module")
def injected(cluster):
    """Whether the API server itself adds the gate: on a real one, the chart's policy and
    binding are applied for this module (and removed after); the emulator has no admission."""
    if not EXTERNAL:
        yield False
        return
    version = policy_version(cluster)
    if version is None:
        pytest.skip("the API server serves no MutatingAdmissionPolicy API")
    import importlib.util
    spec = importlib.util.spec_from_file_location("chart_helpers", REPO / "tests" / "chart" / "conftest.py")
    chart = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(chart)
    rendered = chart.render({"readinessGate": {"apiVersion": version}})
    objects = rendered.of_kind("MutatingAdmissionPolicy") + rendered.of_kind("MutatingAdmissionPolicyBinding")
    assert len(objects) == 2, [o["kind"] for o in objects]
    manifest = yaml.safe_dump_all(objects, sort_keys=False)
    cluster.kubectl("apply", "-f", "-", input=manifest)
    try:
        # The API server loads a new policy through an informer: a pod created at once may be
        # admitted before it is in effect. Wait until a dry-run pod gets the gate.
        probe = json.dumps({"apiVersion": "v1", "kind": "Pod",
                            "metadata": {"name": unique("probe"), "namespace": "default",
                                         "annotations": {"bridgenet.io/networks": "probe"}},
                            "spec": {"containers": [{"name": "main", "image": "busybox:1.36"}]}})

        def in_effect():
            res = cluster.kubectl("create", "--dry-run=server", "-o", "json", "-f", "-", input=probe, check=False)
            gates = json.loads(res.stdout).get("spec", {}).get("readinessGates") if res.returncode == 0 else None
            return bool(gates)

        eventually(in_effect, timeout=30, what="the readiness-gate policy to take effect")
        yield True
    finally:
        cluster.kubectl("delete", "-f", "-", "--ignore-not-found", input=manifest, check=False)


def gated_pod(cluster, name: str, networks: str, injected: bool) -> None:
    """A busybox pod asking for `networks`, with the gate: written into its spec only where no
    admission policy adds it."""
    spec = {"containers": [{"name": "main", "image": "busybox:1.36",
                            "command": ["sh", "-c", "trap 'exit 0' TERM; while true; do sleep 1; done"]}],
            "terminationGracePeriodSeconds": 5, "nodeSelector": {"kubernetes.io/hostname": "node1"}}
    if not injected:
        spec["readinessGates"] = [{"conditionType": GATE}]
    cluster.apply({"apiVersion": "v1", "kind": "Pod",
                   "metadata": {"name": name, "namespace": "default",
                                "annotations": {"bridgenet.io/networks": networks}},
                   "spec": spec})


def conditions(cluster, pod: str) -> dict[str, dict]:
    return {c["type"]: c for c in cluster.get("pod", pod).get("status", {}).get("conditions") or []}


def gate_condition(cluster, pod: str, status: str, message: str | None = None):
    """`pod`'s networks-ready condition once it has `status` (and `message` in its message)."""
    def found():
        c = conditions(cluster, pod).get(GATE)
        return c if c and c["status"] == status and (message is None or message in c.get("message", "")) else None

    return eventually(found, timeout=SETTLE, what=f"{pod}'s {GATE} condition {status} ({message or 'any message'})")


def readiness_gates_column(cluster, pod: str) -> str:
    """The READINESS GATES column of `kubectl get pod -o wide`, e.g. `1/1`."""
    out = cluster.kubectl("get", "pod", pod, "-o", "wide").stdout.splitlines()
    header, row = out[0], out[1]
    return row[header.index("READINESS GATES"):].split()[0]


def test_a_pod_is_ready_only_once_its_networks_are_attached(cluster, injected):
    first, second, pod, plain = unique("gate-a"), unique("gate-b"), unique("gated"), unique("ungated")

    # The pod asks for a network that does not exist yet: its sandbox is refused, and it stays
    # un-Ready with the refusal as the reason.
    gated_pod(cluster, pod, first, injected)
    spec = cluster.get("pod", pod)["spec"]
    assert [g["conditionType"] for g in spec.get("readinessGates") or []] == [GATE], \
        "the admission policy did not add the gate" if injected else spec
    refused = gate_condition(cluster, pod, "False", f'"{first}" does not exist')
    assert refused["reason"] == "AttachFailed"
    assert f"not attached yet: {first}" in refused["message"]
    assert conditions(cluster, pod)["Ready"]["status"] != "True"
    assert readiness_gates_column(cluster, pod) == "0/1"

    # `docker network create`: the kubelet's retry attaches it, the condition turns True, and
    # only then the pod is Ready.
    cluster.network(first, "172.43.0.0/24")
    attached = gate_condition(cluster, pod, "True")
    assert attached["reason"] == "Attached" and attached["message"] == f"attached: {first} (net1)"
    cluster.wait_ready(pod, timeout=f"{SETTLE:.0f}s")
    assert readiness_gates_column(cluster, pod) == "1/1"
    since = attached["lastTransitionTime"]

    # `docker network connect` to a network that is not there yet: the pod is held back again
    # while its containers run on.
    cluster.kubectl("annotate", "--overwrite", "pod", pod, f"bridgenet.io/networks={first},{second}")
    waiting = gate_condition(cluster, pod, "False", f"not attached yet: {second}")
    assert waiting["reason"] in ("Pending", "AttachFailed"), waiting
    assert waiting["lastTransitionTime"] >= since
    now = conditions(cluster, pod)
    assert now["ContainersReady"]["status"] == "True"
    eventually(lambda: conditions(cluster, pod)["Ready"]["status"] == "False", timeout=30,
               what=f"{pod} to be un-Ready while {second} is missing")

    cluster.network(second, "172.43.1.0/24")
    attached = gate_condition(cluster, pod, "True", f"{second} (net2)")
    assert attached["message"] == f"attached: {first} (net1), {second} (net2)"
    cluster.wait_ready(pod, timeout=f"{SETTLE:.0f}s")
    assert set(cluster.attachments(pod)) == {first, second}

    # A pod created without the annotation has no gate (nothing adds one later: gates are
    # immutable); attached by annotation afterwards, it gets no condition either.
    cluster.pod(plain, node="node1")
    cluster.wait_ready(plain)
    cluster.kubectl("annotate", "pod", plain, f"bridgenet.io/networks={first}")
    cluster.ip(plain, first)
    got = cluster.get("pod", plain)
    assert not got["spec"].get("readinessGates")
    assert GATE not in conditions(cluster, plain)
    assert conditions(cluster, plain)["Ready"]["status"] == "True"
    assert re.fullmatch(r"<none>", readiness_gates_column(cluster, plain))


def test_a_steady_gated_pod_is_not_written_again(cluster, injected):
    """The condition is written on change only: its lastTransitionTime and the pod's
    resourceVersion stay put across many report passes."""
    net, pod = unique("gate-s"), unique("steady")
    cluster.network(net, "172.43.2.0/24")
    gated_pod(cluster, pod, net, injected)
    gate_condition(cluster, pod, "True")
    cluster.wait_ready(pod, timeout=f"{SETTLE:.0f}s")
    # Let the kubelet's and the agent's last writes land, then watch for more.
    eventually(lambda: readiness_gates_column(cluster, pod) == "1/1", what="the gate counted")
    before = cluster.get("pod", pod)
    time.sleep(12)  # a dozen report passes of the agent, two resyncs of the kubelet stand-in
    after = cluster.get("pod", pod)
    assert after["metadata"]["resourceVersion"] == before["metadata"]["resourceVersion"], \
        "the pod was written while steady"
    assert conditions(cluster, pod)[GATE] == {c["type"]: c for c in before["status"]["conditions"]}[GATE]
