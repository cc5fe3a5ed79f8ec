"""The emulator over raw HTTP, request by request as kube-rs sends them."""

import pathlib

import pytest

from conftest import Emulator, unique, wait_for

BN = "/apis/bridgenet.io/v1alpha1/bridgenetworks"
NB = "/apis/bridgenet.io/v1alpha1/nodebridges"
APPLY = "application/apply-patch+yaml"


def bn(name, subnet="172.20.0.0/16", **spec):
    return {"apiVersion": "bridgenet.io/v1alpha1", "kind": "BridgeNetwork", "metadata": {"name": name},
            "spec": {"subnet": subnet, **spec}}


NB_SPEC = {"network": "n", "node": "w1", "bridge": "bn-x", "gateway": "172.20.0.1", "gatewayMac": "02:00:00:00:00:01",
           "subnet": "172.20.0.0/16", "mtu": 1450, "vni": 7, "blocks": ["172.20.0.0/26"]}


def nb(name, **meta):
    return {"apiVersion": "bridgenet.io/v1alpha1", "kind": "NodeBridge", "metadata": {"name": name, **meta},
            "spec": dict(NB_SPEC)}


def pod(name, node=None, labels=None):
    spec = {"containers": [{"name": "c", "image": "busybox"}]}
    if node:
        spec["nodeName"] = node
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": labels or {}}, "spec": spec}


# -- discovery ------------------------------------------------------------------------------------


def test_discovery_lists_builtins_and_registered_crds(api, crds):
    core = api.get("/api/v1").body
    names = {r["name"]: r for r in core["resources"]}
    assert {"pods", "pods/status", "nodes", "nodes/status", "namespaces", "events"} <= set(names)
    assert names["pods"]["namespaced"] and not names["nodes"]["namespaced"]
    groups = {g["name"] for g in api.get("/apis").body["groups"]}
    assert {"bridgenet.io", "coordination.k8s.io", "events.k8s.io", "apiextensions.k8s.io"} <= groups
    res = {r["name"]: r for r in api.get("/apis/bridgenet.io/v1alpha1").body["resources"]}
    assert res["bridgenetworks"]["shortNames"] == ["bn"]
    assert res["bridgenetworks"]["categories"] == ["bridgenet"]
    assert res["bridgenetworks"]["namespaced"] is False
    assert "bridgenetworks/status" in res
    assert api.get("/version").body["gitVersion"].startswith("v1.32")
    assert api.get("/apis/bridgenet.io").body["preferredVersion"]["version"] == "v1alpha1"


def test_openapi_v3_advertises_field_validation(api, crds):
    root = api.get("/openapi/v3").body["paths"]
    url = root["apis/bridgenet.io/v1alpha1"]["serverRelativeURL"]
    doc = api.get(url).body
    patch_op = doc["paths"]["/apis/bridgenet.io/v1alpha1/bridgenetworks/{name}"]["patch"]
    assert "fieldValidation" in [p["name"] for p in patch_op["parameters"]]


def test_unknown_resource_is_404(api):
    r = api.get("/apis/nope.io/v1/things")
    assert r.status == 404 and r.body["kind"] == "Status"


# -- create / read / update ----------------------------------------------------------------------


def test_object_metadata_and_error_reasons(api, crds):
    name = unique("meta")
    r = api.post(BN, bn(name))
    assert r.status == 201
    meta = r.body["metadata"]
    assert meta["uid"] and meta["creationTimestamp"] and meta["generation"] == 1
    assert int(meta["resourceVersion"]) > 1
    # Defaults from the CRD's schema are filled in, as by a real API server.
    assert r.body["spec"]["masquerade"] is True and r.body["spec"]["internal"] is False
    dup = api.post(BN, bn(name))
    assert dup.status == 409 and dup.body["reason"] == "AlreadyExists"
    missing = api.get(f"{BN}/{name}-nope")
    assert missing.status == 404 and missing.body["reason"] == "NotFound"
    assert missing.body["details"] == {"name": f"{name}-nope", "group": "bridgenet.io", "kind": "bridgenetworks"}
    bad = api.post(BN, bn(unique("bad"), bridge="x" * 16, mtu=1))
    assert bad.status == 422 and bad.body["reason"] == "Invalid"
    fields = {c["field"] for c in bad.body["details"]["causes"]}
    assert fields == {"spec.bridge", "spec.mtu"}
    assert api.post(BN, bn("Upper-Case")).status == 422


def test_put_with_stale_resource_version_conflicts(api, crds):
    name = unique("put")
    created = api.post(BN, bn(name)).body
    fresh = dict(created, spec=dict(created["spec"], mtu=1400))
    ok = api.put(f"{BN}/{name}", fresh)
    assert ok.status == 200 and ok.body["spec"]["mtu"] == 1400
    assert int(ok.body["metadata"]["resourceVersion"]) > int(created["metadata"]["resourceVersion"])
    stale = dict(created, spec=dict(created["spec"], mtu=1300))
    r = api.put(f"{BN}/{name}", stale)
    assert r.status == 409 and r.body["reason"] == "Conflict"
    assert "the object has been modified" in r.body["message"]
    # A merge patch carrying a stale resourceVersion is an optimistic lock too.
    r = api.patch(f"{BN}/{name}", {"metadata": {"resourceVersion": created["metadata"]["resourceVersion"]},
                                   "spec": {"mtu": 1200}})
    assert r.status == 409


def test_generation_bumps_on_spec_changes_only_and_noop_keeps_rv(api, crds):
    name = unique("gen")
    api.post(BN, bn(name))
    r1 = api.patch(f"{BN}/{name}", {"metadata": {"labels": {"a": "b"}}}).body
    assert r1["metadata"]["generation"] == 1
    r2 = api.patch(f"{BN}/{name}", {"spec": {"mtu": 1400}}).body
    assert r2["metadata"]["generation"] == 2
    r3 = api.patch(f"{BN}/{name}/status", {"status": {"endpoints": 3}}).body
    assert r3["metadata"]["generation"] == 2
    r4 = api.patch(f"{BN}/{name}", {"spec": {"mtu": 1400}}).body
    assert r4["metadata"]["resourceVersion"] == r3["metadata"]["resourceVersion"]


def test_status_subresource_touches_only_status(api, crds):
    name = unique("st")
    api.post(BN, dict(bn(name), status={"endpoints": 9}))
    got = api.get(f"{BN}/{name}").body
    assert "status" not in got or got["status"].get("endpoints", 0) == 0  # status is dropped on create
    r = api.patch(f"{BN}/{name}/status", {"spec": {"mtu": 999}, "status": {"endpoints": 2}}).body
    assert r["status"]["endpoints"] == 2 and "mtu" not in r["spec"]
    r = api.patch(f"{BN}/{name}", {"spec": {"mtu": 1400}, "status": {"endpoints": 7}}).body
    assert r["spec"]["mtu"] == 1400 and r["status"]["endpoints"] == 2
    full = api.get(f"{BN}/{name}").body
    full["status"]["endpoints"] = 5
    full["spec"]["mtu"] = 1300
    r = api.put(f"{BN}/{name}/status", full).body
    assert r["status"]["endpoints"] == 5 and r["spec"]["mtu"] == 1400


def test_json_patch_and_strategic_merge_patch(api, ns):
    r = api.post(f"/api/v1/namespaces/{ns}/pods", pod("p1"))
    assert r.status == 201 and r.body["status"]["phase"] == "Pending"
    jp = [{"op": "add", "path": "/metadata/annotations", "value": {"bridgenet.io/networks": "n1"}},
          {"op": "test", "path": "/metadata/name", "value": "p1"}]
    r = api.patch(f"/api/v1/namespaces/{ns}/pods/p1", jp, content_type="application/json-patch+json")
    assert r.status == 200 and r.body["metadata"]["annotations"] == {"bridgenet.io/networks": "n1"}
    failing = [{"op": "test", "path": "/metadata/name", "value": "other"}]
    assert api.patch(f"/api/v1/namespaces/{ns}/pods/p1", failing,
                     content_type="application/json-patch+json").status == 422
    smp = {"spec": {"containers": [{"name": "side", "image": "busybox"}]}}
    r = api.patch(f"/api/v1/namespaces/{ns}/pods/p1", smp, content_type="application/strategic-merge-patch+json")
    assert [c["name"] for c in r.body["spec"]["containers"]] == ["c", "side"]


def test_strategic_merge_patch_on_custom_resource_is_415(api, crds):
    name = unique("smp")
    api.post(BN, bn(name))
    r = api.patch(f"{BN}/{name}", {"spec": {"mtu": 1400}}, content_type="application/strategic-merge-patch+json")
    assert r.status == 415 and r.body["reason"] == "UnsupportedMediaType"


# -- server-side apply ---------------------------------------------------------------------------


def test_server_side_apply_creates_updates_and_drops_unapplied_fields(api, crds):
    name = unique("ssa")
    url = f"{NB}/{name}?fieldManager=bridgenet-operator&force=true"
    cfg = {"apiVersion": "bridgenet.io/v1alpha1", "kind": "NodeBridge",
           "metadata": {"name": name, "labels": {"bridgenet.io/network": "n", "bridgenet.io/node": "w1"}},
           "spec": dict(NB_SPEC, excludeAddresses=["172.20.0.9"])}
    import json

    r = api.patch(url, json.dumps(cfg), content_type=APPLY)
    assert r.status == 201, r.body
    assert r.body["spec"]["blocks"] == ["172.20.0.0/26"]
    # Another manager adds a label; the first stops applying one of its labels and a field.
    api.patch(f"{NB}/{name}", {"metadata": {"labels": {"other": "x"}}})
    api.patch(f"{NB}/{name}?fieldManager=someone-else", json.dumps(
        {"apiVersion": "bridgenet.io/v1alpha1", "kind": "NodeBridge", "metadata": {"name": name,
         "annotations": {"note": "mine"}}}), content_type=APPLY)
    cfg2 = json.loads(json.dumps(cfg))
    del cfg2["metadata"]["labels"]["bridgenet.io/node"]
    del cfg2["spec"]["excludeAddresses"]
    r = api.patch(url, json.dumps(cfg2), content_type=APPLY)
    assert r.status == 200, r.body
    assert r.body["metadata"]["labels"] == {"bridgenet.io/network": "n", "other": "x"}
    assert r.body["metadata"]["annotations"] == {"note": "mine"}
    assert "excludeAddresses" not in r.body["spec"] and r.body["spec"]["mtu"] == 1450
    # Applying the same configuration again changes nothing.
    again = api.patch(url, json.dumps(cfg2), content_type=APPLY)
    assert again.body["metadata"]["resourceVersion"] == r.body["metadata"]["resourceVersion"]
    assert api.patch(f"{NB}/{name}", json.dumps(cfg), content_type=APPLY).status == 400  # no fieldManager


def test_server_side_apply_of_status_merges_conditions_by_type(api, crds):
    import json

    name = unique("ssas")
    api.post(BN, bn(name))
    url = f"{BN}/{name}/status?fieldManager=bridgenet-operator&force=true"

    def cond(t, s):
        return {"type": t, "status": s, "reason": "R", "message": "", "lastTransitionTime": "2026-01-01T00:00:00Z"}

    api.patch(f"{BN}/{name}/status?fieldManager=agent", json.dumps(
        {"apiVersion": "bridgenet.io/v1alpha1", "kind": "BridgeNetwork", "metadata": {"name": name},
         "status": {"conditions": [cond("AgentSeen", "True")]}}), content_type=APPLY)
    body = {"apiVersion": "bridgenet.io/v1alpha1", "kind": "BridgeNetwork", "metadata": {"name": name},
            "spec": {"subnet": "10.99.0.0/16"},
            "status": {"conditions": [cond("Accepted", "True"), cond("Ready", "False")], "endpoints": 1}}
    r = api.patch(url, json.dumps(body), content_type=APPLY)
    assert r.status == 200, r.body
    assert r.body["spec"]["subnet"] == "172.20.0.0/16"  # the status subresource ignores spec
    assert [c["type"] for c in r.body["status"]["conditions"]] == ["AgentSeen", "Accepted", "Ready"]
    body["status"]["conditions"] = [cond("Accepted", "True")]
    r = api.patch(url, json.dumps(body), content_type=APPLY)
    assert r.status == 200, r.body
    assert [c["type"] for c in r.body["status"]["conditions"]] == ["AgentSeen", "Accepted"]


# -- watch ---------------------------------------------------------------------------------------


def test_watch_from_resource_version_sees_only_later_events(api, crds):
    label = unique("w")
    a = api.post(BN, dict(bn(unique("wa")), metadata={"name": unique("wa"), "labels": {"t": label}})).body
    rv = a["metadata"]["resourceVersion"]
    b = api.post(BN, dict(bn("x"), metadata={"name": unique("wb"), "labels": {"t": label}})).body
    w = api.watch(f"{BN}?watch=true&resourceVersion={rv}&labelSelector=t%3D{label}")
    try:
        ev = w.next()
        assert ev["type"] == "ADDED" and ev["object"]["metadata"]["name"] == b["metadata"]["name"]
        api.patch(f"{BN}/{a['metadata']['name']}", {"spec": {"mtu": 1400}})
        ev = w.next()
        assert ev["type"] == "MODIFIED" and ev["object"]["spec"]["mtu"] == 1400
        assert int(ev["object"]["metadata"]["resourceVersion"]) > int(b["metadata"]["resourceVersion"])
        api.delete(f"{BN}/{b['metadata']['name']}")
        ev = w.next()
        assert ev["type"] == "DELETED" and ev["object"]["metadata"]["name"] == b["metadata"]["name"]
    finally:
        w.close()


def test_watch_without_resource_version_starts_with_synthetic_adds(api, ns):
    for i in range(3):
        api.post(f"/api/v1/namespaces/{ns}/pods", pod(f"p{i}"))
    w = api.watch(f"/api/v1/namespaces/{ns}/pods?watch=1")
    try:
        names = sorted(w.next()["object"]["metadata"]["name"] for _ in range(3))
        assert names == ["p0", "p1", "p2"]
    finally:
        w.close()


def test_watch_bookmarks_and_initial_events_end(api, ns):
    api.post(f"/api/v1/namespaces/{ns}/pods", pod("p"))
    w = api.watch(f"/api/v1/namespaces/{ns}/pods?watch=true&sendInitialEvents=true&allowWatchBookmarks=true"
                  "&resourceVersionMatch=NotOlderThan")
    try:
        assert w.next()["type"] == "ADDED"
        mark = w.next()
        assert mark["type"] == "BOOKMARK"
        assert mark["object"]["metadata"]["annotations"] == {"k8s.io/initial-events-end": "true"}
        # Periodic bookmarks follow (0.5 s in this session's emulator).
        later = w.next()
        assert later["type"] == "BOOKMARK" and int(later["object"]["metadata"]["resourceVersion"]) >= int(
            mark["object"]["metadata"]["resourceVersion"])
    finally:
        w.close()


def test_watch_selector_transitions_look_like_add_and_delete(api, ns):
    api.post(f"/api/v1/namespaces/{ns}/pods", pod("p", labels={"sel": "no"}))
    rv = api.get(f"/api/v1/namespaces/{ns}/pods").body["metadata"]["resourceVersion"]
    w = api.watch(f"/api/v1/namespaces/{ns}/pods?watch=true&resourceVersion={rv}&labelSelector=sel%3Dyes")
    try:
        api.patch(f"/api/v1/namespaces/{ns}/pods/p", {"metadata": {"labels": {"sel": "yes"}}})
        assert w.next()["type"] == "ADDED"
        api.patch(f"/api/v1/namespaces/{ns}/pods/p", {"metadata": {"labels": {"sel": "no"}}})
        assert w.next()["type"] == "DELETED"
    finally:
        w.close()


def test_watch_timeout_closes_the_stream(api, ns):
    w = api.watch(f"/api/v1/namespaces/{ns}/pods?watch=true&timeoutSeconds=1")
    try:
        with pytest.raises(EOFError):
            w.next()
    finally:
        w.close()


def test_watch_from_a_compacted_resource_version_is_410_gone(tmp_path):
    emu = Emulator(tmp_path, "--watch-history", "5")
    try:
        api = emu.client
        first = api.post("/api/v1/namespaces/default/configmaps", {"metadata": {"name": "c0"}}).body
        for i in range(1, 10):
            api.post("/api/v1/namespaces/default/configmaps", {"metadata": {"name": f"c{i}"}})
        w = api.watch(f"/api/v1/namespaces/default/configmaps?watch=true&resourceVersion={first['metadata']['resourceVersion']}")
        try:
            ev = w.next()
            assert w.status == 200 and ev["type"] == "ERROR"
            assert ev["object"]["code"] == 410 and ev["object"]["reason"] == "Expired"
        finally:
            w.close()
        # The recent past is still there.
        last = api.get("/api/v1/namespaces/default/configmaps").body["metadata"]["resourceVersion"]
        w = api.watch(f"/api/v1/namespaces/default/configmaps?watch=true&resourceVersion={int(last) - 1}")
        try:
            assert w.next()["object"]["metadata"]["name"] == "c9"
        finally:
            w.close()
    finally:
        emu.stop()


# -- selectors and pagination --------------------------------------------------------------------


def test_list_selectors_and_pagination(api, ns):
    api.post(f"/api/v1/namespaces/{ns}/pods", pod("a", node="w1", labels={"app": "x", "tier": "1"}))
    api.post(f"/api/v1/namespaces/{ns}/pods", pod("b", node="w2", labels={"app": "y"}))
    api.post(f"/api/v1/namespaces/{ns}/pods", pod("c", node="w1"))
    base = f"/api/v1/namespaces/{ns}/pods"

    def names(q):
        r = api.get(f"{base}?{q}")
        assert r.status == 200, r.body
        return [i["metadata"]["name"] for i in r.body["items"]]

    assert names("fieldSelector=spec.nodeName%3Dw1") == ["a", "c"]
    assert names("fieldSelector=spec.nodeName!%3Dw1") == ["b"]
    assert names("fieldSelector=metadata.name%3Db") == ["b"]
    assert names("labelSelector=app") == ["a", "b"]
    assert names("labelSelector=!app") == ["c"]
    assert names("labelSelector=app%20in%20(x,z)") == ["a"]
    assert names("labelSelector=app%20notin%20(x)") == ["b", "c"]
    assert names("labelSelector=app!%3Dx,tier!%3D2") == ["b", "c"]
    page = api.get(f"{base}?limit=2").body
    assert [i["metadata"]["name"] for i in page["items"]] == ["a", "b"] and page["metadata"]["continue"]
    rest = api.get(f"{base}?limit=2&continue={page['metadata']['continue']}").body
    assert [i["metadata"]["name"] for i in rest["items"]] == ["c"] and "continue" not in rest["metadata"]
    assert api.get(f"{base}?labelSelector=a%20in%20b").status == 400
    everywhere = api.get("/api/v1/pods?fieldSelector=metadata.namespace%3D" + ns).body
    assert everywhere["kind"] == "PodList" and len(everywhere["items"]) == 3


# -- deletion: finalizers, garbage collection, namespaces ----------------------------------------


def test_finalizers_hold_deletion_until_removed(api, crds):
    name = unique("fin")
    api.post(BN, dict(bn(name), metadata={"name": name, "finalizers": ["bridgenet.io/operator"]}))
    r = api.delete(f"{BN}/{name}")
    assert r.status == 202 and r.body["metadata"]["deletionTimestamp"]
    assert api.get(f"{BN}/{name}").body["metadata"]["deletionTimestamp"]
    more = api.patch(f"{BN}/{name}", {"metadata": {"finalizers": ["bridgenet.io/operator", "other"]}})
    assert more.status == 403
    rv = api.get(f"{BN}/{name}").body["metadata"]["resourceVersion"]
    w = api.watch(f"{BN}?watch=true&resourceVersion={rv}&fieldSelector=metadata.name%3D{name}")
    try:
        r = api.patch(f"{BN}/{name}", {"metadata": {"finalizers": None}})
        assert r.status == 200
        ev = w.next()
        assert ev["type"] == "DELETED" and not ev["object"]["metadata"].get("finalizers")
    finally:
        w.close()
    assert api.get(f"{BN}/{name}").status == 404


def test_owner_reference_garbage_collection(api, crds):
    owner = api.post(BN, bn(unique("own"))).body
    ref = {"apiVersion": "bridgenet.io/v1alpha1", "kind": "BridgeNetwork", "name": owner["metadata"]["name"],
           "uid": owner["metadata"]["uid"], "controller": True}
    kept = api.post(BN, bn(unique("own2"))).body
    ref2 = {**ref, "name": kept["metadata"]["name"], "uid": kept["metadata"]["uid"], "controller": False}
    child, shared, held = unique("child"), unique("shared"), unique("held")
    for name, refs, fins in ((child, [ref], []), (shared, [ref, ref2], []), (held, [ref], ["bridgenet.io/agent"])):
        assert api.post(NB, nb(name, ownerReferences=refs, finalizers=fins)).status == 201
    api.delete(f"{BN}/{owner['metadata']['name']}", {"propagationPolicy": "Background"})
    wait_for(lambda: api.get(f"{NB}/{child}").status == 404, what="child collected")
    # A child with a finalizer is marked for deletion and waits for its finalizer.
    assert wait_for(lambda: api.get(f"{NB}/{held}").body["metadata"].get("deletionTimestamp"))
    # A child with another live owner stays.
    assert api.get(f"{NB}/{shared}").status == 200
    api.patch(f"{NB}/{held}", {"metadata": {"finalizers": None}})
    assert api.get(f"{NB}/{held}").status == 404


def test_orphan_propagation_keeps_children(api, crds):
    owner = api.post(BN, bn(unique("orph"))).body
    ref = {"apiVersion": "bridgenet.io/v1alpha1", "kind": "BridgeNetwork", "name": owner["metadata"]["name"],
           "uid": owner["metadata"]["uid"]}
    child = unique("orphan")
    assert api.post(NB, nb(child, ownerReferences=[ref])).status == 201
    api.delete(f"{BN}/{owner['metadata']['name']}?propagationPolicy=Orphan")
    got = api.get(f"{NB}/{child}").body
    assert "ownerReferences" not in got["metadata"]


def test_namespace_deletion_removes_its_contents(api):
    name = unique("nsdel")
    api.post("/api/v1/namespaces", {"metadata": {"name": name}})
    api.post(f"/api/v1/namespaces/{name}/pods", pod("p"))
    r = api.delete(f"/api/v1/namespaces/{name}")
    assert r.body["status"]["phase"] == "Terminating"
    assert api.post(f"/api/v1/namespaces/{name}/pods", pod("q")).status == 403
    wait_for(lambda: api.get(f"/api/v1/namespaces/{name}").status == 404, what="namespace gone")
    assert api.get(f"/api/v1/namespaces/{name}/pods/p").status == 404
    assert api.post("/api/v1/namespaces/nowhere/pods", pod("p")).status == 404


def test_crd_lifecycle_registers_and_unregisters_the_resource(api):
    crd = {"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
           "metadata": {"name": "widgets.example.io"},
           "spec": {"group": "example.io", "scope": "Namespaced",
                    "names": {"plural": "widgets", "singular": "widget", "kind": "Widget", "shortNames": ["wd"]},
                    "versions": [{"name": "v1", "served": True, "storage": True,
                                  "schema": {"openAPIV3Schema": {"type": "object",
                                                                 "x-kubernetes-preserve-unknown-fields": True}}}]}}
    r = api.post("/apis/apiextensions.k8s.io/v1/customresourcedefinitions", crd)
    assert r.status == 201
    conds = {c["type"]: c["status"] for c in r.body["status"]["conditions"]}
    assert conds["Established"] == "True"
    assert api.post("/apis/example.io/v1/namespaces/default/widgets",
                    {"metadata": {"name": "w"}, "anything": {"goes": 1}}).status == 201
    assert api.get("/apis/example.io/v1/namespaces/default/widgets/w").body["anything"] == {"goes": 1}
    api.delete("/apis/apiextensions.k8s.io/v1/customresourcedefinitions/widgets.example.io")
    wait_for(lambda: api.get("/apis/example.io/v1/namespaces/default/widgets").status == 404, what="CRD removed")
    bad = dict(crd, metadata={"name": "wrong.example.io"})
    assert api.post("/apis/apiextensions.k8s.io/v1/customresourcedefinitions", bad).status == 422


# -- leases and events ---------------------------------------------------------------------------


def test_leases_take_over_with_optimistic_locking(api):
    url = "/apis/coordination.k8s.io/v1/namespaces/kube-system/leases"
    name = unique("lease")
    lease = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": {"name": name},
             "spec": {"holderIdentity": "a", "leaseDurationSeconds": 15}}
    created = api.post(url, lease).body
    mine = dict(created, spec=dict(created["spec"], holderIdentity="b"))
    assert api.put(f"{url}/{name}", mine).status == 200
    theirs = dict(created, spec=dict(created["spec"], holderIdentity="c"))
    assert api.put(f"{url}/{name}", theirs).status == 409
    assert api.get(f"{url}/{name}").body["spec"]["holderIdentity"] == "b"


def test_events_v1_and_core_are_one_store(api, ns):
    ev = {"apiVersion": "events.k8s.io/v1", "kind": "Event", "metadata": {"name": "e1"},
          "eventTime": "2026-01-01T00:00:00.000000Z", "reportingController": "bridgenet.io/operator",
          "reportingInstance": "op-1", "action": "Reconcile", "reason": "SubnetOverlap", "type": "Warning",
          "note": "overlaps with other", "regarding": {"kind": "Pod", "name": "p", "namespace": ns, "uid": "u1"}}
    r = api.post(f"/apis/events.k8s.io/v1/namespaces/{ns}/events", ev)
    assert r.status == 201, r.body
    core = api.get(f"/api/v1/namespaces/{ns}/events?fieldSelector=involvedObject.name%3Dp,involvedObject.uid%3Du1")
    [item] = core.body["items"]
    assert item["message"] == "overlaps with other" and item["reportingComponent"] == "bridgenet.io/operator"
    assert item["count"] == 1 and item["lastTimestamp"]
    back = api.get(f"/apis/events.k8s.io/v1/namespaces/{ns}/events/e1").body
    assert back["note"] == "overlaps with other" and back["regarding"]["name"] == "p"
    assert back["apiVersion"] == "events.k8s.io/v1"
    series = {"series": {"count": 2, "lastObservedTime": "2026-01-01T00:01:00.000000Z"}}
    assert api.patch(f"/apis/events.k8s.io/v1/namespaces/{ns}/events/e1", series).status == 200


def test_nodes_keep_status_on_create_and_pods_do_not(api):
    name = unique("node")
    node = {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name},
            "status": {"addresses": [{"type": "InternalIP", "address": "10.251.0.11"}]}}
    r = api.post("/api/v1/nodes", node)
    assert r.body["status"]["addresses"][0]["address"] == "10.251.0.11"
    api.delete(f"/api/v1/nodes/{name}")


def test_pod_binding_sets_the_node_once(api, ns):
    api.post(f"/api/v1/namespaces/{ns}/pods", pod("p"))
    binding = {"apiVersion": "v1", "kind": "Binding", "metadata": {"name": "p"},
               "target": {"apiVersion": "v1", "kind": "Node", "name": "w1"}}
    r = api.post(f"/api/v1/namespaces/{ns}/pods/p/binding", binding)
    assert r.status == 201, r.body
    got = api.get(f"/api/v1/namespaces/{ns}/pods/p").body
    assert got["spec"]["nodeName"] == "w1"
    assert {"type": "PodScheduled", "status": "True"}.items() <= got["status"]["conditions"][0].items()
    again = api.post(f"/api/v1/namespaces/{ns}/pods/p/binding", dict(binding, target={"name": "w2"}))
    assert again.status == 409 and again.body["reason"] == "Conflict"
    assert api.get(f"/api/v1/namespaces/{ns}/pods/p/binding").status == 405


def test_dry_run_stores_nothing(api, crds):
    name = unique("dry")
    r = api.post(f"{BN}?dryRun=All", bn(name))
    assert r.status == 201
    assert api.get(f"{BN}/{name}").status == 404


def test_table_output_uses_printer_columns(api, crds):
    name = unique("tbl")
    api.post(BN, bn(name))
    api.patch(f"{BN}/{name}/status", {"status": {"readySummary": "1/2", "endpoints": 4, "conditions": [
        {"type": "Accepted", "status": "True", "reason": "Valid", "message": "", "lastTransitionTime": "2026-01-01T00:00:00Z"}]}})
    t = api.get(f"{BN}/{name}", headers={"Accept": "application/json;as=Table;v=v1;g=meta.k8s.io"}).body
    assert t["kind"] == "Table"
    cols = [c["name"] for c in t["columnDefinitions"]]
    assert cols[:3] == ["Name", "Subnet", "Gateway"] and "Accepted" in cols
    cells = dict(zip(cols, t["rows"][0]["cells"]))
    assert cells["Ready Nodes"] == "1/2" and cells["Endpoints"] == 4 and cells["Accepted"] == "Valid"
    assert t["rows"][0]["object"]["kind"] == "PartialObjectMetadata"


def test_sandbox_package_has_no_stray_state(tmp_path):
    # The emulator writes only where told: the kubeconfig and ready file of its tmp dir.
    emu = Emulator(tmp_path)
    try:
        assert emu.kubeconfig.exists()
        assert sorted(p.name for p in pathlib.Path(tmp_path).iterdir() if p.is_file()) == [
            "apiserver.log", "kubeconfig", "ready"]
    finally:
        emu.stop()
