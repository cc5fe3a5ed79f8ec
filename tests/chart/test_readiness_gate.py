"""The readiness gate's MutatingAdmissionPolicy: rendered for the API version the cluster serves
(or the one set), valid Kubernetes for the versions that have that API, and shaped to add the gate
`bridgenet.io/networks-ready` only to pods created with the `bridgenet.io/networks` annotation.
What the CEL does is judged by a real API server in tests/real-apiserver/test_2_chart.py."""

from __future__ import annotations

import kubernetes_validate
import pytest

from conftest import render

GATE = "bridgenet.io/networks-ready"
# The first Kubernetes version whose schemas have each version of the API (kubernetes-validate).
SERVED_FROM = {"v1": ["1.36.0", "1.37.0"], "v1beta1": ["1.34.0", "1.35.0"], "v1alpha1": ["1.33.0"]}


def policy_objects(rendered):
    return rendered.of_kind("MutatingAdmissionPolicy") + rendered.of_kind("MutatingAdmissionPolicyBinding")


def test_without_a_cluster_that_serves_the_api_nothing_is_rendered_and_notes_say_so(default_render):
    # Helm's offline capabilities list no MutatingAdmissionPolicy version.
    assert policy_objects(default_render) == []
    assert "serves no MutatingAdmissionPolicy API" in default_render.notes
    assert "readinessGates" in default_render.notes


@pytest.mark.parametrize("version", sorted(SERVED_FROM))
def test_the_policy_and_its_binding_are_valid_where_their_api_exists(version):
    rendered = render({"readinessGate": {"apiVersion": version}})
    objects = policy_objects(rendered)
    assert [o["kind"] for o in objects] == ["MutatingAdmissionPolicy", "MutatingAdmissionPolicyBinding"]
    for obj in objects:
        assert obj["apiVersion"] == f"admissionregistration.k8s.io/{version}"
        for kube in SERVED_FROM[version]:
            kubernetes_validate.validate(obj, kube, strict=True)
    assert "serves no MutatingAdmissionPolicy" not in rendered.notes


def test_the_policy_adds_the_gate_to_annotated_pods_at_creation_only():
    rendered = render({"readinessGate": {"apiVersion": "v1"}})
    policy = rendered.one("MutatingAdmissionPolicy")
    binding = rendered.one("MutatingAdmissionPolicyBinding")
    assert binding["spec"]["policyName"] == policy["metadata"]["name"] == "bridgenet-readiness-gate"
    spec = policy["spec"]
    assert spec["failurePolicy"] == "Ignore"
    assert spec["matchConstraints"]["resourceRules"] == [
        {"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE"], "resources": ["pods"]}]
    conditions = {c["name"]: c["expression"] for c in spec["matchConditions"]}
    assert "'bridgenet.io/networks' in object.metadata.annotations" in conditions["asks-for-networks"]
    assert f"g.conditionType == '{GATE}'" in conditions["lacks-the-gate"]
    [mutation] = spec["mutations"]
    assert mutation["patchType"] == "JSONPatch"
    expr = mutation["jsonPatch"]["expression"]
    # Both shapes of a pod: no readinessGates yet (add the list), some already (append).
    assert 'path: "/spec/readinessGates/-"' in expr and 'path: "/spec/readinessGates",' in expr
    assert f'conditionType: "{GATE}"' in expr and f'[{{"conditionType": "{GATE}"}}]' in expr


def test_injection_can_be_turned_off_and_fail_closed():
    off = render({"readinessGate": {"inject": False, "apiVersion": "v1"}})
    assert policy_objects(off) == []
    assert "serves no MutatingAdmissionPolicy" not in off.notes
    strict = render({"readinessGate": {"apiVersion": "v1beta1", "failurePolicy": "Fail"}})
    assert strict.one("MutatingAdmissionPolicy")["spec"]["failurePolicy"] == "Fail"
