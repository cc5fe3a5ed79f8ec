"""RBAC is what the binaries actually call.

charts/bridgenet/api-calls.yaml lists, per binary, every (group, resource[/subresource], verb)
it uses. Two checks keep the chart, that list and the Rust code from drifting apart:

(a) the Roles/ClusterRoles the chart binds to each component's ServiceAccount grant exactly the
    listed calls: nothing missing (the binary would get 403 Forbidden), nothing more (least
    privilege), no wildcards;
(b) a scan of each binary's Rust sources (comments and #[cfg(test)] code removed) finds which
    resources it touches (`Api<Kind>`, kube-runtime's `Recorder` → events) and which kinds of
    call it makes (`.create(&..)`, `.patch(..)`, `.patch_status(..)`, `.replace(.., &..)`,
    `.delete(.., &..)`, `.list(&..)`, `watcher(..)`/`Controller::new(..)`, `Patch::Apply` → may
    create, kube-runtime `finalizer(..)` → patch). The resources must equal the listed ones;
    every call kind found must be granted, and every granted verb other than `get` must be
    found (or its `evidence` regex must match).

What (b) cannot do, honestly: tie a verb to a resource (a grep sees `api.patch(..)` but not
which `Api<K>` `api` is), or see `get` (indistinguishable from `HashMap::get`). Those are
covered by the kind end-to-end suite, where a missing permission is a 403 in the logs.
"""

from __future__ import annotations

import pathlib
import re
import tomllib
import warnings

import pytest
import yaml

from conftest import CHART, NAMESPACE, REPO, render

API_CALLS = yaml.safe_load((CHART / "api-calls.yaml").read_text())["binaries"]

# Rust type name → (API group, resource). A new kind in the code must be added here and to
# api-calls.yaml, on purpose.
KIND_RESOURCES = {
    "BridgeNetwork": ("bridgenet.io", "bridgenetworks"),
    "NodeBridge": ("bridgenet.io", "nodebridges"),
    "AddressClaim": ("bridgenet.io", "addressclaims"),
    "NetworkOverlay": ("bridgenet.io", "networkoverlays"),
    "Pod": ("", "pods"),
    "Namespace": ("", "namespaces"),
    "Node": ("", "nodes"),
    "Lease": ("coordination.k8s.io", "leases"),
    "Event": ("events.k8s.io", "events"),
    # core/v1 Event, imported under this name where a binary reads the kubelet's events.
    "CoreEvent": ("", "events"),
    "DaemonSet": ("apps", "daemonsets"),
}
# Names that stand for a generic parameter in `Api<K>` helper signatures.
GENERIC_PARAMS = re.compile(r"^[A-Z]$|^K[A-Z]?\w*$")

MUTATING = {"create", "update", "patch", "delete", "deletecollection"}

# (regex, subresource or None, verbs it implies)
CALL_PATTERNS = [
    (r"\.create\(\s*&", None, {"create"}),
    (r"Patch::Apply\b", None, {"create", "patch"}),
    (r"\.patch\(", None, {"patch"}),
    (r"\.patch_metadata\(", None, {"patch"}),
    (r"\bfinalizer\(", None, {"patch"}),
    (r"\.replace\(\s*[^,()]+,\s*&", None, {"update"}),
    (r"\.delete\(\s*[^,()]+,\s*&", None, {"delete"}),
    (r"\.delete_collection\(", None, {"deletecollection"}),
    (r"\.list\(\s*&", None, {"list"}),
    (r"\.list_metadata\(\s*&", None, {"list"}),
    (r"\.watch\(\s*&", None, {"watch"}),
    (r"\b(?:watcher|metadata_watcher|reflector)\(", None, {"list", "watch"}),
    (r"\bController::new\(", None, {"list", "watch"}),
    (r"\.get_opt\(", None, {"get"}),
    (r"\.get_metadata(?:_opt)?\(", None, {"get"}),
    (r"\.patch_status\(", "status", {"patch"}),
    (r"\.replace_status\(", "status", {"update"}),
    (r"\.get_status\(", "status", {"get"}),
]
API_TYPE = re.compile(r"\bApi\s*(?:::\s*)?<\s*([A-Za-z_][\w:]*)\s*>")
RECORDER = re.compile(r"\bRecorder::new\(|\bevents::Recorder\b")


def strip_rust(text: str) -> str:
    """Source without comments and without `#[cfg(test)]` items (test fakes call anything)."""
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    text = re.sub(r"(?m)^\s*//.*$", "", text)
    text = re.sub(r"(?m)\s//\s.*$", "", text)
    out, pos = [], 0
    for m in re.finditer(r"#\[cfg\(test\)\]", text):
        if m.start() < pos:
            continue
        out.append(text[pos : m.start()])
        brace = text.find("{", m.end())
        semi = text.find(";", m.end())
        if brace == -1 or (semi != -1 and semi < brace):
            pos = semi + 1 if semi != -1 else len(text)
            continue
        depth, i = 0, brace
        while i < len(text):
            if text[i] == "{":
                depth += 1
            elif text[i] == "}":
                depth -= 1
                if depth == 0:
                    break
            i += 1
        pos = i + 1
    out.append(text[pos:])
    return "".join(out)


def bin_source(package: str, bin_name: str) -> pathlib.Path:
    """The main file of binary `bin_name` of the Cargo package in directory `package`."""
    manifest = tomllib.loads((REPO / package / "Cargo.toml").read_text())
    for entry in manifest.get("bin", []):
        if entry.get("name") == bin_name and entry.get("path"):
            return REPO / package / entry["path"]
    single = REPO / package / "src" / "bin" / f"{bin_name}.rs"
    return single if single.exists() else REPO / package / "src" / "bin" / bin_name / "main.rs"


def sources_of(spec) -> dict[pathlib.Path, str]:
    excluded = {bin_source(b["package"], b["bin"]) for b in spec.get("exclude_bins", [])}
    # Modules another entry accounts for (a subcommand with its own ServiceAccount).
    excluded |= {REPO / f for f in spec.get("exclude_sources", [])}
    entries = list(spec.get("sources", []))
    entries += [bin_source(b["package"], b["bin"]).relative_to(REPO) for b in spec.get("bins", [])]
    files = {}
    for entry in entries:
        path = REPO / entry
        for f in [path] if path.is_file() else sorted(path.rglob("*.rs")) if path.is_dir() else []:
            if f not in excluded:
                files[f] = strip_rust(f.read_text())
    return files


def scan(files: dict[pathlib.Path, str]):
    """(resources found, {(subresource, verb)} found, unknown Api types)."""
    resources, calls, unknown = set(), set(), set()
    for text in files.values():
        for m in API_TYPE.finditer(text):
            name = m.group(1).split("::")[-1]
            if name in KIND_RESOURCES:
                resources.add(KIND_RESOURCES[name])
            elif not GENERIC_PARAMS.match(name):
                unknown.add(name)
        if RECORDER.search(text):
            resources.add(KIND_RESOURCES["Event"])
            calls |= {(None, "create"), (None, "patch")}
        for pattern, sub, verbs in CALL_PATTERNS:
            if re.search(pattern, text):
                calls |= {(sub, v) for v in verbs}
    return resources, calls, unknown


def listed(spec):
    triples = set()
    for call in spec["calls"]:
        res = call["resource"] + ("/" + call["subresource"] if call.get("subresource") else "")
        for verb in call["verbs"]:
            triples.add((call.get("scope", "cluster"), call["group"], res, verb))
    return triples


def granted(rendered, sa_name):
    """Every (scope, group, resource, verb) the chart grants to ServiceAccount `sa_name`."""
    roles = {(o["kind"], o["metadata"]["name"]): o for o in rendered.of_kind("ClusterRole") + rendered.of_kind("Role")}
    triples = set()
    for binding in rendered.of_kind("ClusterRoleBinding") + rendered.of_kind("RoleBinding"):
        if not any(s["kind"] == "ServiceAccount" and s["name"] == sa_name and s["namespace"] == NAMESPACE for s in binding["subjects"]):
            continue
        ref = binding["roleRef"]
        role = roles[(ref["kind"], ref["name"])]
        scope = "cluster" if binding["kind"] == "ClusterRoleBinding" else "namespace"
        if scope == "namespace":
            assert binding["metadata"]["namespace"] == NAMESPACE
        for rule in role["rules"]:
            # resourceNames only narrows a rule (the agent's own DaemonSet); it is allowed.
            assert "nonResourceURLs" not in rule, rule
            for field in ("apiGroups", "resources", "verbs"):
                assert "*" not in rule[field], f"wildcard in {role['metadata']['name']}: {rule}"
            for g in rule["apiGroups"]:
                for r in rule["resources"]:
                    for v in rule["verbs"]:
                        triples.add((scope, g, r, v))
    return triples


@pytest.mark.parametrize("binary", sorted(b for b, s in API_CALLS.items() if s["serviceAccount"]))
def test_chart_grants_exactly_the_listed_calls(binary, default_render):
    spec = API_CALLS[binary]
    sa = f"bridgenet-{spec['serviceAccount']}"
    have, want = granted(default_render, sa), listed(spec)
    assert sorted(want - have) == [], f"{binary}: listed but not granted (would be 403)"
    assert sorted(have - want) == [], f"{binary}: granted but not listed (more than it needs)"


def test_every_service_account_is_accounted_for(default_render):
    expected = {f"bridgenet-{s['serviceAccount']}" for s in API_CALLS.values() if s["serviceAccount"]}
    assert {o["metadata"]["name"] for o in default_render.of_kind("ServiceAccount")} == expected
    users = {
        w["spec"]["template"]["spec"]["serviceAccountName"]
        for w in default_render.of_kind("Deployment") + default_render.of_kind("DaemonSet")
    } | {p["spec"]["serviceAccountName"] for p in default_render.of_kind("Pod")}
    assert users == expected
    for b in default_render.of_kind("ClusterRoleBinding") + default_render.of_kind("RoleBinding"):
        assert {s["name"] for s in b["subjects"]} <= expected


def test_the_agent_cannot_touch_what_is_not_its_business(default_render):
    have = granted(default_render, "bridgenet-agent")
    assert not any(r in ("secrets", "configmaps", "bridgenetworks") for _, _, r, _ in have)
    # Creates, replaces and deletes only address claims (its pods' addresses) and Events.
    assert not any(v in ("create", "delete", "update", "deletecollection") for _, g, r, v in have
                   if g != "events.k8s.io" and not r.startswith("addressclaims"))
    assert not any(v == "deletecollection" for _, _, _, v in have)
    # Writes: its NodeBridges' status and finalizers, pods' annotations, address claims, the
    # readiness-gate condition (pods/status), events.
    writes = {(g, r) for _, g, r, v in have if v in MUTATING}
    assert writes == {
        ("bridgenet.io", "nodebridges/status"),
        ("bridgenet.io", "nodebridges"),
        ("bridgenet.io", "addressclaims"),
        ("bridgenet.io", "addressclaims/status"),
        ("", "pods"),
        ("", "pods/status"),
        ("events.k8s.io", "events"),
    }


def test_the_scanner_sees_calls():
    """The scan itself, on code shaped like the binaries', so that a scanner that silently finds
    nothing cannot pass the cross-check below."""
    sample = strip_rust(
        """
        use kube::runtime::events::Recorder;
        async fn run(client: Client) {
            let nbs: Api<NodeBridge> = Api::all(client.clone());
            let pods = Api::<Pod>::all(client);
            nbs.patch_status(&name, &pp, &Patch::Apply(&status)).await?; // writes status
            pods.patch(&name, &PatchParams::default(), &patch).await?;
            let w = watcher(nbs, cfg);
            let s = "a-b".replace('-', "_");
        }
        #[cfg(test)]
        mod tests {
            fn t() { let x: Api<Secret> = todo(); x.delete("a", &dp); }
        }
        """
    )
    resources, calls, unknown = scan({pathlib.Path("x.rs"): sample})
    assert resources == {("bridgenet.io", "nodebridges"), ("", "pods"), ("events.k8s.io", "events")}
    assert unknown == set()
    assert calls == {("status", "patch"), (None, "patch"), (None, "create"), (None, "list"), (None, "watch")}


@pytest.mark.parametrize("binary", sorted(API_CALLS))
def test_listed_calls_match_the_source(binary):
    spec = API_CALLS[binary]
    files = sources_of(spec)
    if not files:
        pytest.skip(f"{binary}: no source yet ({spec.get('sources') or spec.get('bins')})")
    resources, calls, unknown = scan(files)
    assert not unknown, f"{binary}: Api<{sorted(unknown)}> not in KIND_RESOURCES; add it there and to api-calls.yaml"
    if not spec["calls"]:
        assert not resources and not calls, f"{binary} must make no API call, found {resources} {calls}"
        return
    if not resources:
        pytest.skip(f"{binary}: its sources make no Kubernetes API call yet (placeholder)")
    listed_resources = {(c["group"], c["resource"]) for c in spec["calls"]}
    unlisted = resources - listed_resources
    assert not unlisted, f"{binary}: the source uses {sorted(unlisted)}, which api-calls.yaml does not list"
    # Calls marked `pending` are granted for code that is still being written (the reason says
    # which); they are exempt from "must be used" until the source shows them.
    pending = [c for c in spec["calls"] if c.get("pending")]
    settled = [c for c in spec["calls"] if not c.get("pending")]
    unused = {(c["group"], c["resource"]) for c in settled} - resources
    assert not unused, f"{binary}: api-calls.yaml lists {sorted(unused)} but the source never uses them"
    for call in pending:
        warnings.warn(f"{binary}: pending grant {call['resource']} {call['verbs']}: {call['pending']}")

    listed_calls = {(c.get("subresource"), v) for c in spec["calls"] for v in c["verbs"]}
    missing = {c for c in calls if c not in listed_calls}
    assert not missing, f"{binary}: the source makes {sorted(missing, key=str)} calls that api-calls.yaml does not grant"

    text = "\n".join(files.values())
    for call in settled:
        if call.get("evidence"):
            assert re.search(call["evidence"], text), f"{binary}: no evidence /{call['evidence']}/ for {call}"
            continue
        for verb in call["verbs"]:
            if verb == "get":
                continue
            assert (call.get("subresource"), verb) in calls, (
                f"{binary}: grants {verb} on {call['resource']}{'/' + call['subresource'] if call.get('subresource') else ''} "
                "but its source shows no such call; drop it from api-calls.yaml and the chart"
            )


@pytest.mark.parametrize("release", ["bridgenet", "other"])
def test_agent_may_watch_only_its_own_daemonset(release):
    # The agent tells uninstall from restart by watching its DaemonSet: a resourceNames that
    # missed the DaemonSet's rendered name would make every watch 403 and every uninstall
    # leave the CNI chaining behind.
    rendered = render(release=release)
    ds = rendered.of_kind("DaemonSet")[0]["metadata"]["name"]
    rules = [r for role in rendered.of_kind("Role") for r in role["rules"] if "daemonsets" in r["resources"]]
    assert rules and all(r["resourceNames"] == [ds] for r in rules), rules
