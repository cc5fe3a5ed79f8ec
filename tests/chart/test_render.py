"""The chart renders, lints clean, and every object it produces is valid Kubernetes for the
versions we support, for the default values and for the value sets users are told about."""

from __future__ import annotations

import json
import re
import textwrap

import helm_python as helm
import jsonschema
import kubernetes_validate
import pytest
import yaml

from conftest import CHART, NAMESPACE, REPO, crd_objects, deep_merge, render

# Oldest supported (Chart.yaml kubeVersion), the one k8s-openapi is built for, the newest shipped.
KUBE_VERSIONS = ["1.31.0", "1.33.0", "1.37.0"]

VALUE_SETS = {
    "defaults": {},
    # A kind cluster with monitoring, JSON logs and no PDB.
    "kind-monitoring": {
        "fullnameOverride": "bn",
        "commonLabels": {"team": "net"},
        "imagePullSecrets": [{"name": "regcred"}],
        "operator": {
            "replicas": 1,
            "clusterCidrs": ["10.244.0.0/16", "10.96.0.0/16"],
            "logJson": True,
            "extraArgs": ["--default-mtu=1400"],
            "podDisruptionBudget": {"enabled": False},
            "metrics": {"serviceMonitor": {"enabled": True, "labels": {"release": "prom"}}},
            "image": {"tag": "dev", "pullPolicy": "Never"},
        },
        "agent": {
            "logJson": True,
            "image": {"tag": "dev", "pullPolicy": "Never"},
            "dns": {"upstream": ["192.0.2.53", "[2001:db8::53]:5353"], "clusterDNS": ["10.96.0.10"]},
        },
        "dashboards": {"enabled": True, "annotations": {"grafana_folder": "Networking"}},
    },
    # Nodes that keep CNI and containerd elsewhere (k3s layout), privileged fallback.
    "k3s-privileged": {
        "agent": {
            "privileged": True,
            "healthPort": 19091,
            "hostPaths": {
                "cniBinDir": "/var/lib/rancher/k3s/data/current/bin",
                "cniConfDir": "/var/lib/rancher/k3s/agent/etc/cni/net.d",
                "criSocketDir": "/run/k3s/containerd",
                "criSocketName": "containerd.sock",
                "netnsDir": "/var/run/netns",
                "stateDir": "/var/lib/bridgenet",
                "socketDir": "/run/bridgenet",
            },
        },
        "operator": {"metrics": {"service": {"enabled": False}}},
    },
}

BAD_VALUE_SETS = {
    "zero-replicas": {"operator": {"replicas": 0}},
    "unknown-key": {"agent": {"privilegd": True}},
    "relative-path": {"agent": {"hostPaths": {"stateDir": "var/lib/bridgenet"}}},
    "bad-cidr": {"operator": {"clusterCidrs": ["10.0.0.0"]}},
    "bad-pull-policy": {"operator": {"image": {"pullPolicy": "Sometimes"}}},
    "bad-duration": {"agent": {"resyncInterval": "ten seconds"}},
    "bad-dashboard-label": {"dashboards": {"enabled": True, "label": "grafana dashboard"}},
    "dns-upstream-by-name": {"agent": {"dns": {"upstream": ["dns.example.com"]}}},
    "tests-ipv6-subnet": {"tests": {"subnet": "fd00::/64"}},
    "tests-short-timeout": {"tests": {"timeoutSeconds": 5}},
    "readiness-gate-unknown-version": {"readinessGate": {"apiVersion": "v2"}},
    "readiness-gate-bad-failure-policy": {"readinessGate": {"failurePolicy": "Maybe"}},
}


@pytest.fixture(scope="module")
def values_schema():
    return json.loads((CHART / "values.schema.json").read_text())


def test_lint_is_clean_for_every_value_set():
    for name, values in VALUE_SETS.items():
        report = helm.lint(str(CHART), values, strict=True, namespace=NAMESPACE, kube_version="v1.31.0")
        problems = [m for m in report["messages"] if m["severity"] >= 2]
        assert not problems and not report["errors"], (name, report)


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_every_object_is_valid_kubernetes(name):
    rendered = render(VALUE_SETS[name])
    objects = rendered.objects + crd_objects()
    assert len(objects) >= 10
    for version in KUBE_VERSIONS:
        for obj in objects:
            if obj["apiVersion"].startswith("monitoring.coreos.com/"):
                # prometheus-operator's CRD; no upstream schema. Checked structurally below.
                continue
            try:
                kubernetes_validate.validate(obj, version, strict=True)
            except kubernetes_validate.ValidationError as err:
                path = ".".join(str(p) for p in err.path)
                pytest.fail(f"{name}: {obj['kind']}/{obj['metadata']['name']} invalid for {version}: {path}: {err.message}")


def test_values_match_their_schema(values_schema, default_values):
    jsonschema.Draft7Validator.check_schema(values_schema)
    validator = jsonschema.Draft7Validator(values_schema)
    validator.validate(default_values)
    for name, values in VALUE_SETS.items():
        errors = list(validator.iter_errors(deep_merge(default_values, values)))
        assert not errors, (name, [e.message for e in errors])


@pytest.mark.parametrize("name", sorted(BAD_VALUE_SETS))
def test_bad_values_are_refused(name, values_schema, default_values):
    values = BAD_VALUE_SETS[name]
    assert list(jsonschema.Draft7Validator(values_schema).iter_errors(deep_merge(default_values, values)))
    # And Helm itself refuses them at install time, naming the key.
    with pytest.raises(helm.HelmValuesError):
        render(values)


def test_service_monitor_needs_the_service():
    with pytest.raises(helm.HelmRenderError, match="serviceMonitor"):
        render({"operator": {"metrics": {"service": {"enabled": False}, "serviceMonitor": {"enabled": True}}}})


def test_every_namespaced_object_lives_in_the_release_namespace(default_render):
    cluster_scoped = {"ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition"}
    names = set()
    for obj in default_render.objects:
        key = (obj["kind"], obj["metadata"]["name"])
        assert key not in names, f"duplicate {key}"
        names.add(key)
        labels = obj["metadata"]["labels"]
        assert labels["app.kubernetes.io/instance"] == "bridgenet"
        assert labels["app.kubernetes.io/managed-by"] == "Helm"
        if obj["kind"] in cluster_scoped:
            assert "namespace" not in obj["metadata"]
        else:
            assert obj["metadata"]["namespace"] == NAMESPACE, key


def test_chart_crds_are_the_generated_ones():
    generated = sorted((REPO / "crds" / "yaml").glob("*.yaml"))
    assert [p.name for p in generated] == sorted(p.name for p in (CHART / "crds").glob("*.yaml"))
    for path in generated:
        assert (CHART / "crds" / path.name).read_text() == path.read_text(), path.name
    kinds = {c["spec"]["names"]["kind"] for c in crd_objects()}
    assert kinds == {"BridgeNetwork", "NodeBridge", "AddressClaim", "NetworkOverlay"}


def _container(workload, name):
    return next(c for c in workload["spec"]["template"]["spec"]["containers"] if c["name"] == name)


def test_operator_deployment_is_ha_probed_and_restricted(default_render):
    dep = default_render.one("Deployment", "-operator")
    assert dep["spec"]["replicas"] == 2
    pod = dep["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "bridgenet-operator"
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    assert "hostNetwork" not in pod
    c = _container(dep, "operator")
    sc = c["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False and sc["readOnlyRootFilesystem"] is True
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    assert c["ports"] == [{"name": "metrics", "containerPort": 8080, "protocol": "TCP"}]
    assert c["resources"]["requests"] and c["resources"]["limits"]["memory"]
    assert "--metrics-addr=0.0.0.0:8080" in c["args"]
    env = {e["name"]: e for e in c["env"]}
    assert env["POD_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"
    assert env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert not any(a.startswith("--cluster-cidrs") for a in c["args"])
    anti = pod["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    assert anti[0]["podAffinityTerm"]["labelSelector"]["matchLabels"] == dep["spec"]["selector"]["matchLabels"]
    pdb = default_render.one("PodDisruptionBudget")
    assert pdb["spec"]["minAvailable"] == 1
    assert pdb["spec"]["selector"] == dep["spec"]["selector"]
    svc = default_render.one("Service", "-metrics")
    assert svc["spec"]["selector"] == dep["spec"]["selector"]["matchLabels"]
    assert svc["spec"]["ports"][0]["targetPort"] == "metrics"
    assert not default_render.of_kind("ServiceMonitor")


def test_operator_value_set_reaches_the_flags():
    r = render(VALUE_SETS["kind-monitoring"])
    dep = r.one("Deployment", "bn-operator")
    c = _container(dep, "operator")
    assert dep["spec"]["replicas"] == 1
    assert "--cluster-cidrs=10.244.0.0/16,10.96.0.0/16" in c["args"]
    assert "--log-json" in c["args"] and "--default-mtu=1400" in c["args"]
    assert c["image"] == "bridgenet/operator:dev" and c["imagePullPolicy"] == "Never"
    assert dep["spec"]["template"]["spec"]["imagePullSecrets"] == [{"name": "regcred"}]
    assert not r.of_kind("PodDisruptionBudget")
    sm = r.one("ServiceMonitor")
    svc = r.one("Service", "-metrics")
    assert sm["metadata"]["labels"]["release"] == "prom"
    assert all(svc["metadata"]["labels"][k] == v for k, v in sm["spec"]["selector"]["matchLabels"].items())
    assert sm["spec"]["endpoints"][0]["port"] == svc["spec"]["ports"][0]["name"]
    assert all(o["metadata"]["labels"]["team"] == "net" for o in r.objects)


def test_agent_daemonset_has_what_the_node_needs_and_no_more(default_render):
    ds = default_render.one("DaemonSet", "-agent")
    pod = ds["spec"]["template"]["spec"]
    assert pod["hostNetwork"] is True and pod["dnsPolicy"] == "ClusterFirstWithHostNet"
    assert pod["serviceAccountName"] == "bridgenet-agent"
    assert {"operator": "Exists"} in pod["tolerations"]
    assert pod["priorityClassName"] == "system-node-critical"
    assert "hostPID" not in pod and "hostIPC" not in pod
    c = _container(ds, "agent")
    sc = c["securityContext"]
    assert "privileged" not in sc
    assert sc["allowPrivilegeEscalation"] is False and sc["readOnlyRootFilesystem"] is True
    assert sc["capabilities"] == {"drop": ["ALL"], "add": ["NET_ADMIN", "NET_RAW", "SYS_ADMIN", "NET_BIND_SERVICE"]}
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "health"}
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert c["ports"][0]["containerPort"] == 9091
    env = {e["name"]: e for e in c["env"]}
    assert env["NODE_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"
    assert "--health-addr=0.0.0.0:9091" in c["args"]
    assert "--cri-endpoint=unix:///run/containerd/containerd.sock" in c["args"]
    assert "--socket=/run/bridgenet/cni.sock" in c["args"]
    # The networks' DNS: the agent's resolv.conf upstream and no cluster DNS unless named.
    assert "--cluster-domain=cluster.local" in c["args"] and "--dns-client-qps=500" in c["args"]
    assert not [a for a in c["args"] if a.startswith(("--dns-upstream", "--cluster-dns"))]

    volumes = {v["name"]: v["hostPath"]["path"] for v in pod["volumes"]}
    assert volumes == {
        "cni-bin": "/opt/cni/bin",
        "cni-conf": "/etc/cni/net.d",
        "cri-socket": "/run/containerd",
        "netns": "/var/run/netns",
        "state": "/var/lib/bridgenet",
        "socket-dir": "/run/bridgenet",
    }
    mounts = {m["name"]: m for m in c["volumeMounts"]}
    assert set(mounts) == set(volumes)
    assert mounts["netns"]["mountPropagation"] == "HostToContainer"
    # Read-only where the agent only reads or connects.
    assert mounts["cri-socket"]["readOnly"] and mounts["cni-bin"]["readOnly"] and mounts["netns"]["readOnly"]
    assert not mounts["cni-conf"].get("readOnly") and not mounts["state"].get("readOnly")

    init = pod["initContainers"]
    assert [i["name"] for i in init] == ["install-cni"]
    script = init[0]["command"][-1]
    assert init[0]["image"] == c["image"] == "bridgenet/agent:0.1.0"
    # Copy then atomic rename, so a concurrent exec never sees a half-written plugin.
    assert re.search(r"cp /usr/libexec/bridgenet/bridgenet /host/cni-bin/\.bridgenet\.new", script)
    assert re.search(r"mv -f /host/cni-bin/\.bridgenet\.new /host/cni-bin/bridgenet", script)
    assert init[0]["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert [m["name"] for m in init[0]["volumeMounts"]] == ["cni-bin"]


def test_agent_value_set_moves_paths_and_can_fall_back_to_privileged():
    r = render(VALUE_SETS["k3s-privileged"])
    ds = r.one("DaemonSet", "-agent")
    c = _container(ds, "agent")
    assert c["securityContext"]["privileged"] is True and "capabilities" not in c["securityContext"]
    assert "--cni-bin-dir=/var/lib/rancher/k3s/data/current/bin" in c["args"]
    assert "--cri-endpoint=unix:///run/k3s/containerd/containerd.sock" in c["args"]
    assert "--health-addr=0.0.0.0:19091" in c["args"]
    mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
    assert mounts["cni-conf"] == "/var/lib/rancher/k3s/agent/etc/cni/net.d"
    assert not r.of_kind("Service")


def test_notes_tell_the_next_command(default_render):
    notes = default_render.notes
    assert "kubectl apply -f -" in notes and "kind: BridgeNetwork" in notes
    assert "rollout status daemonset/bridgenet-agent" in notes
    assert "bridgenet.io/networks=custom-network" in notes
    # The BridgeNetwork in the notes is itself valid against the CRD's schema.
    block = re.search(r"<<'YAML'\n(.*?)\n\s*YAML\n", notes, re.S).group(1)
    doc = yaml.safe_load(textwrap.dedent(block))
    crd = next(c for c in crd_objects() if c["spec"]["names"]["kind"] == "BridgeNetwork")
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    jsonschema.validate(doc, schema)
    assert doc["spec"] == {"subnet": "172.20.0.0/16", "gateway": "172.20.0.1"}


def test_package_contains_the_chart_and_not_the_test_lists(tmp_path):
    archive = helm.package(str(CHART), destination=str(tmp_path))
    with helm.Chart.load(archive) as chart:
        assert chart.name == "bridgenet"
        assert len(chart.crds) == len(list((CHART / "crds").glob("*.yaml"))) == 4
        assert chart.schema is not None
        assert not any(f["name"] == "api-calls.yaml" for f in chart.files)


def test_dns_values_become_agent_flags():
    ds = render(VALUE_SETS["kind-monitoring"]).one("DaemonSet", "-agent")
    args = _container(ds, "agent")["args"]
    assert "--dns-upstream=192.0.2.53,[2001:db8::53]:5353" in args
    assert "--cluster-dns=10.96.0.10" in args


HOOK_OBJECTS = ["ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding", "Pod"]


def test_helm_test_hook_runs_the_self_test(default_render):
    """`helm test`: one Pod running `bridgenet-operator self-test` with the agent image for its
    test pods, and its ServiceAccount and RBAC also test hooks, created before it (lower weight)
    and deleted with it when it passes."""
    hooks = [o for o in default_render.objects if (o["metadata"].get("annotations") or {}).get("helm.sh/hook")]
    assert sorted(o["kind"] for o in hooks) == sorted(HOOK_OBJECTS)
    weights = {}
    for obj in hooks:
        ann = obj["metadata"]["annotations"]
        assert ann["helm.sh/hook"] == "test", obj["kind"]
        assert ann["helm.sh/hook-delete-policy"] == "before-hook-creation,hook-succeeded", obj["kind"]
        assert obj["metadata"]["name"] == "bridgenet-selftest"
        weights[obj["kind"]] = int(ann.get("helm.sh/hook-weight", "0"))
    assert max(w for k, w in weights.items() if k != "Pod") < weights["Pod"], weights
    assert weights["ServiceAccount"] < weights["RoleBinding"] and weights["ClusterRole"] < weights["ClusterRoleBinding"]

    pod = default_render.one("Pod")
    spec = pod["spec"]
    assert spec["serviceAccountName"] == "bridgenet-selftest"
    assert spec["restartPolicy"] == "Never"
    assert spec["securityContext"]["runAsNonRoot"] is True
    (container,) = spec["containers"]
    version = yaml.safe_load((CHART / "Chart.yaml").read_text())["appVersion"]
    assert container["image"] == f"bridgenet/operator:{version}"
    assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
    args = container["args"]
    assert args[0] == "self-test"
    assert {a.split("=", 1)[0]: a.split("=", 1)[1] for a in args[1:]} == {
        "--namespace": NAMESPACE,
        "--image": f"bridgenet/agent:{version}",
        "--image-pull-policy": "IfNotPresent",
        "--subnet": "172.31.254.0/24",
        "--isolation-subnet": "172.31.255.0/24",
        "--timeout": "180",
    }


def test_helm_test_values_reach_the_hook_and_can_turn_it_off():
    rendered = render({"fullnameOverride": "bn", "tests": {"subnet": "10.99.0.0/24", "isolationSubnet": "10.99.1.0/24",
                                                           "timeoutSeconds": 300},
                       "agent": {"image": {"tag": "dev", "pullPolicy": "Never"}}})
    args = rendered.one("Pod", "bn-selftest")["spec"]["containers"][0]["args"]
    assert {"--subnet=10.99.0.0/24", "--isolation-subnet=10.99.1.0/24", "--timeout=300",
            "--image=bridgenet/agent:dev", "--image-pull-policy=Never"} <= set(args)
    off = render({"tests": {"enabled": False}})
    assert not off.of_kind("Pod")
    assert not [o for o in off.objects if "selftest" in o["metadata"]["name"]]
