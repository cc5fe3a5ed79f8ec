"""The Helm chart on a real API server: its rendered manifests are accepted (`--dry-run=server`,
then for real), and each component's ServiceAccount, as the chart binds it, may do exactly what
charts/bridgenet/api-calls.yaml lists — asked of the server's own RBAC authorizer with
`kubectl auth can-i --as=system:serviceaccount:...` — and nothing around it."""

from __future__ import annotations

import json
import time

import pytest
import yaml

from conftest import REPO, chart

NAMESPACE = chart.NAMESPACE
API_CALLS = yaml.safe_load((REPO / "charts" / "bridgenet" / "api-calls.yaml").read_text())["binaries"]
VERBS = ["get", "list", "watch", "create", "update", "patch", "delete", "deletecollection"]
# Always refused to every bridgenet component: (verb, resource, namespace or None for all).
NEVER = [
    ("get", "secrets", None), ("list", "secrets", None), ("create", "pods/exec", None),
    ("get", "configmaps", None), ("create", "serviceaccounts/token", None), ("update", "nodes/status", None),
    ("create", "pods", None), ("delete", "pods", None), ("escalate", "clusterroles.rbac.authorization.k8s.io", None),
    ("create", "customresourcedefinitions.apiextensions.k8s.io", None),
    ("get", "leases.coordination.k8s.io", "kube-system"), ("create", "leases.coordination.k8s.io", "kube-system"),
]


@pytest.fixture(scope="module")
def installed(kubectl):
    """The chart's templates applied in the release namespace (CRDs are test_1's); deleted after
    the module, before the sandbox suite starts its own operator and agents."""
    # `helm install` asks the server which MutatingAdmissionPolicy version it serves (the
    # chart's default picks the newest); the offline renderer cannot, so it is told the same.
    version = served_policy_version(kubectl)
    rendered = chart.render({"readinessGate": {"apiVersion": version}} if version else None)
    # `helm install` creates no `helm test` hook; `helm test` creates the hook's RBAC first (lower
    # weight), then its Pod. So everything but the hook's Pod is installed (its ServiceAccount's
    # grants are checked like the others), and the Pod is judged by the server (dry run) once its
    # ServiceAccount exists, never run: it would create networks and pods of its own.
    hook_pods = [o for o in rendered.objects if o["kind"] == "Pod"
                 and "helm.sh/hook" in (o["metadata"].get("annotations") or {})]
    assert hook_pods, "the chart's `helm test` hook Pod was not rendered"
    manifest = yaml.safe_dump_all([o for o in rendered.objects if o not in hook_pods], sort_keys=False)
    kubectl("create", "namespace", NAMESPACE)
    try:
        res = kubectl("apply", "--dry-run=server", "-f", "-", stdin=manifest)
        assert "Warning" not in res.stderr, res.stderr
        res = kubectl("apply", "-f", "-", stdin=manifest)
        assert "Warning" not in res.stderr, res.stderr
        res = kubectl("apply", "--dry-run=server", "-f", "-", stdin=yaml.safe_dump_all(hook_pods, sort_keys=False))
        assert "Warning" not in res.stderr, res.stderr
        rendered.objects = [o for o in rendered.objects if o not in hook_pods]
        yield rendered
    finally:
        kubectl("delete", "-f", "-", "--ignore-not-found", "--wait=true", "--timeout=120s", stdin=manifest,
                check=False)
        kubectl("delete", "namespace", NAMESPACE, "--ignore-not-found", "--timeout=120s", check=False)


def served_policy_version(kubectl) -> str | None:
    """The newest admissionregistration.k8s.io version whose MutatingAdmissionPolicy the server
    serves, as the chart's capability check picks it."""
    for version in ("v1", "v1beta1", "v1alpha1"):
        res = kubectl("get", "--raw", f"/apis/admissionregistration.k8s.io/{version}", check=False)
        if res.returncode == 0 and any(r["kind"] == "MutatingAdmissionPolicy"
                                       for r in json.loads(res.stdout)["resources"]):
            return version
    return None


def test_every_rendered_object_exists(kubectl, installed):
    for obj in installed.objects:
        ns = ["-n", obj["metadata"].get("namespace") or NAMESPACE] if obj["kind"] not in (
            "ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition") else []
        kind = obj["kind"].lower() + "." + obj["apiVersion"].split("/")[0] if "/" in obj["apiVersion"] \
            else obj["kind"].lower()
        kubectl("get", kind, obj["metadata"]["name"], *ns)


def resource_names(rendered, group: str, resource: str) -> list[str]:
    """`resourceNames` of the chart's rules for (group, resource), if the grant is limited."""
    names: list[str] = []
    for role in rendered.of_kind("Role") + rendered.of_kind("ClusterRole"):
        for rule in role.get("rules", []):
            if group in rule.get("apiGroups", []) and resource in rule.get("resources", []):
                names += rule.get("resourceNames", [])
    return names


def can_i(kubectl, sa: str, verb: str, resource: str, namespace: str | None,
          subresource: str | None = None) -> bool:
    args = ["auth", "can-i", verb, resource, f"--as=system:serviceaccount:{NAMESPACE}:{sa}"]
    args += ["-n", namespace] if namespace else ["--all-namespaces"]
    if subresource:
        args.append(f"--subresource={subresource}")
    res = kubectl(*args, check=False)
    answer = res.stdout.strip()
    assert answer in ("yes", "no"), f"kubectl {' '.join(args)}: {res.stdout}{res.stderr}"
    return answer == "yes"


CASES = [(binary, call) for binary, spec in sorted(API_CALLS.items()) if spec["serviceAccount"]
         for call in spec["calls"]]


@pytest.mark.parametrize("binary,call", CASES,
                         ids=[f"{b}:{c.get('group') or 'core'}/{c['resource']}"
                              f"{'/' + c['subresource'] if c.get('subresource') else ''}" for b, c in CASES])
def test_service_account_may_do_exactly_its_listed_calls(kubectl, installed, binary, call):
    sa = f"bridgenet-{API_CALLS[binary]['serviceAccount']}"
    group, resource = call.get("group", ""), call["resource"]
    full = f"{resource}.{group}" if group else resource
    names = resource_names(installed, group, resource)
    target = f"{full}/{names[0]}" if names else full
    namespace = NAMESPACE if call.get("scope") == "namespace" else None
    for verb in VERBS:
        allowed = can_i(kubectl, sa, verb, target, namespace, call.get("subresource"))
        assert allowed == (verb in call["verbs"]), (
            f"{sa} {'may' if allowed else 'may not'} {verb} {target}"
            f"{'/' + call['subresource'] if call.get('subresource') else ''}"
            f" in {namespace or 'all namespaces'}; api-calls.yaml lists {call['verbs']}")
    if namespace:
        # A namespaced grant stays in the release namespace.
        assert not any(can_i(kubectl, sa, v, target, "kube-system", call.get("subresource"))
                       for v in call["verbs"]), f"{sa} reaches {target} outside {NAMESPACE}"
    if names:
        # A grant limited by name: another object of that kind is out of reach.
        assert not any(can_i(kubectl, sa, v, f"{full}/someone-else", namespace, call.get("subresource"))
                       for v in call["verbs"] if v not in ("list", "watch", "create"))


@pytest.mark.parametrize("binary", sorted(b for b, s in API_CALLS.items() if s["serviceAccount"]))
@pytest.mark.parametrize("verb,resource,namespace", NEVER, ids=[f"{v}-{r}-{n or 'all'}" for v, r, n in NEVER])
def test_service_account_is_refused_what_it_does_not_need(kubectl, installed, binary, verb, resource, namespace):
    sa = f"bridgenet-{API_CALLS[binary]['serviceAccount']}"
    assert not can_i(kubectl, sa, verb, resource, namespace), f"{sa} may {verb} {resource}"


GATE = "bridgenet.io/networks-ready"


def admitted_pod(kubectl, name: str, annotations: dict | None, gates: list[str] | None) -> dict:
    """The Pod as the API server would store it (`--dry-run=server` runs admission, mutating
    policies included), without creating it."""
    pod = {"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": name, "namespace": NAMESPACE, **({"annotations": annotations} if annotations else {})},
           "spec": {"containers": [{"name": "main", "image": "busybox:1.36"}]}}
    if gates is not None:
        pod["spec"]["readinessGates"] = [{"conditionType": g} for g in gates]
    res = kubectl("create", "--dry-run=server", "-o", "json", "-f", "-", stdin=json.dumps(pod))
    return json.loads(res.stdout)


def gates(pod: dict) -> list[str]:
    return [g["conditionType"] for g in pod["spec"].get("readinessGates") or []]


def test_pods_asking_for_networks_get_the_readiness_gate_from_the_policy(kubectl, installed):
    if not installed.of_kind("MutatingAdmissionPolicy"):
        pytest.skip("this API server serves no MutatingAdmissionPolicy API: the chart installs no policy")
    networks = {"bridgenet.io/networks": "custom-network"}
    # A new policy takes effect once the server's policy informers have it: moments.
    deadline = time.monotonic() + 30
    while gates(admitted_pod(kubectl, "gated", networks, None)) != [GATE]:
        assert time.monotonic() < deadline, "the policy never added the gate to an annotated pod"
        time.sleep(0.5)
    # A list that is there already is appended to, not replaced.
    assert gates(admitted_pod(kubectl, "gated-too", networks, ["example.com/other"])) == ["example.com/other", GATE]
    # A pod that has the gate keeps exactly one.
    assert gates(admitted_pod(kubectl, "has-it", networks, [GATE])) == [GATE]
    # A pod that asks for no network gets nothing.
    assert gates(admitted_pod(kubectl, "plain", None, None)) == []
    assert gates(admitted_pod(kubectl, "other-annotation", {"example.com/x": "y"}, None)) == []
    assert gates(admitted_pod(kubectl, "empty", {"bridgenet.io/networks": ""}, None)) == []
