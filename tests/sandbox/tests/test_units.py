"""The emulator's pure parts: selectors, JSONPath, patches, schema handling, and the kubelet
stand-in's pod DNS configuration."""

import pytest

from bnsandbox import cri, jsonpath, kubelet, patch, scheduler, schema, selectors


def obj(labels=None, **fields):
    return {"metadata": {"name": "x", "labels": labels or {}}, **fields}


@pytest.mark.parametrize(
    "sel,labels,want",
    [
        ("a=b", {"a": "b"}, True),
        ("a==b", {"a": "c"}, False),
        ("a!=b", {}, True),
        ("a!=b", {"a": "b"}, False),
        ("a in (x, y)", {"a": "y"}, True),
        ("a in (x,y)", {"a": "z"}, False),
        ("a notin (x,y)", {}, True),
        ("a notin (x,y)", {"a": "x"}, False),
        ("a", {"a": ""}, True),
        ("!a", {"a": "1"}, False),
        ("bridgenet.io/network=n1,bridgenet.io/node in (w1,w2)",
         {"bridgenet.io/network": "n1", "bridgenet.io/node": "w2"}, True),
        ("bridgenet.io/network=n1,bridgenet.io/node in (w1,w2)",
         {"bridgenet.io/network": "n1", "bridgenet.io/node": "w3"}, False),
    ],
)
def test_label_selectors(sel, labels, want):
    reqs = selectors.parse_label_selector(sel)
    assert selectors.labels_match(reqs, obj(labels)) is want


def test_label_selector_rejects_garbage():
    with pytest.raises(selectors.SelectorError):
        selectors.parse_label_selector("a in b")


def test_label_selector_object():
    reqs = selectors.selector_from_label_selector_object(
        {"matchLabels": {"t": "a"}, "matchExpressions": [{"key": "env", "operator": "NotIn", "values": ["prod"]}]}
    )
    assert selectors.labels_match(reqs, obj({"t": "a", "env": "dev"}))
    assert not selectors.labels_match(reqs, obj({"t": "a", "env": "prod"}))


def test_field_selectors():
    pod = {"metadata": {"name": "p", "namespace": "n"}, "spec": {"nodeName": "w1"}}
    match = selectors.make_filter(None, "spec.nodeName=w1,metadata.namespace!=other")
    assert match(pod)
    assert not selectors.make_filter(None, "spec.nodeName=w2")(pod)
    assert selectors.make_filter(None, "spec.nodeName=")({"metadata": {"name": "u"}, "spec": {}})


def test_jsonpath_printer_column_forms():
    o = {"status": {"conditions": [{"type": "Ready", "status": "True"}, {"type": "Accepted", "reason": "Ok"}]},
         "spec": {"items": [1, 2]}}
    assert jsonpath.evaluate(o, '.status.conditions[?(@.type=="Accepted")].reason') == ["Ok"]
    assert jsonpath.evaluate(o, ".status.conditions[0].status") == ["True"]
    assert jsonpath.evaluate(o, ".spec.items[*]") == [1, 2]
    assert jsonpath.evaluate(o, "{.spec.missing}") == []


def test_merge_patch_rfc7386():
    assert patch.merge_patch({"a": 1, "b": {"c": 1, "d": 2}}, {"b": {"c": None, "e": 3}, "l": [1]}) == {
        "a": 1, "b": {"d": 2, "e": 3}, "l": [1]}


def test_strategic_merge_patch_merges_containers_by_name():
    live = {"spec": {"containers": [{"name": "a", "image": "x"}, {"name": "b", "image": "y"}]},
            "metadata": {"finalizers": ["f1"]}}
    p = {"spec": {"containers": [{"name": "b", "image": "z"}, {"name": "c", "image": "w"}],
                  "$setElementOrder/containers": [{"name": "a"}, {"name": "b"}, {"name": "c"}]},
         "metadata": {"finalizers": ["f2"]}}
    out = patch.strategic_merge_patch(live, p)
    assert [c["image"] for c in out["spec"]["containers"]] == ["x", "z", "w"]
    assert out["metadata"]["finalizers"] == ["f1", "f2"]
    out = patch.strategic_merge_patch(out, {"spec": {"containers": [{"name": "a", "$patch": "delete"}]}})
    assert [c["name"] for c in out["spec"]["containers"]] == ["b", "c"]


def test_apply_merge_and_removal_of_unapplied_fields():
    keys = patch.builtin_list_keys
    live = {"status": {"conditions": [{"type": "A", "status": "True"}, {"type": "B", "status": "False"}],
                       "x": 1}}
    first = {"status": {"conditions": [{"type": "A", "status": "False"}], "x": 2, "y": 3}}
    merged = patch.apply_merge(live, first, keys)
    assert merged["status"]["conditions"] == [{"type": "A", "status": "False"}, {"type": "B", "status": "False"}]
    prev = patch.field_set(first, keys)
    second = {"status": {"conditions": [{"type": "A", "status": "True"}], "x": 2}}
    merged = patch.apply_merge(merged, second, keys)
    merged = patch.remove_fields(merged, prev - patch.field_set(second, keys), keys)
    # y was this manager's and is no longer applied; B was never this manager's.
    assert "y" not in merged["status"]
    assert [c["type"] for c in merged["status"]["conditions"]] == ["A", "B"]


def test_apply_removes_a_list_map_item_the_manager_stopped_applying():
    keys = patch.builtin_list_keys
    one = {"status": {"conditions": [{"type": "A", "status": "True"}, {"type": "C", "status": "True"}]}}
    two = {"status": {"conditions": [{"type": "A", "status": "True"}]}}
    merged = patch.apply_merge({}, one, keys)
    merged = patch.remove_fields(patch.apply_merge(merged, two, keys),
                                 patch.field_set(one, keys) - patch.field_set(two, keys), keys)
    assert merged == {"status": {"conditions": [{"type": "A", "status": "True"}]}}


SCHEMA = {
    "type": "object",
    "properties": {
        "spec": {
            "type": "object",
            "required": ["subnet"],
            "properties": {
                "subnet": {"type": "string", "maxLength": 18},
                "mtu": {"type": "integer", "minimum": 576, "nullable": True},
                "masquerade": {"type": "boolean", "default": True},
            },
        },
        "status": {"type": "object", "properties": {
            "conditions": {"type": "array", "x-kubernetes-list-type": "map",
                           "x-kubernetes-list-map-keys": ["type"], "items": {"type": "object"}}}},
    },
}


def test_schema_defaults_prunes_and_validates():
    o = {"apiVersion": "x/v1", "kind": "K", "metadata": {"name": "n"}, "spec": {"subnet": "10.0.0.0/8", "bogus": 1}}
    assert schema.prune(o, SCHEMA) == ["spec.bogus"]
    schema.apply_defaults(o, SCHEMA)
    assert o["spec"] == {"subnet": "10.0.0.0/8", "masquerade": True}
    assert schema.validate(o, SCHEMA) == []
    o["spec"]["mtu"] = None
    assert schema.validate(o, SCHEMA) == []
    o["spec"]["mtu"] = 10
    o["spec"]["subnet"] = "x" * 19
    problems = schema.validate(o, SCHEMA)
    assert any(p.startswith("spec.mtu: Invalid value") for p in problems)
    assert any(p.startswith("spec.subnet: Too long") for p in problems)
    del o["spec"]["subnet"]
    assert any("Required value" in p for p in schema.validate(o, SCHEMA))


def test_schema_list_keys():
    lookup = schema.list_keys_for(SCHEMA, patch.builtin_list_keys)
    assert lookup(("status", "conditions")) == ["type"]
    assert lookup(("metadata", "finalizers")) == ["__set__"]
    assert lookup(("spec", "subnet")) is None


def _node(name, ready=True, **labels):
    return {"metadata": {"name": name, "labels": labels},
            "status": {"conditions": [{"type": "Ready", "status": "True" if ready else "False"}]}}


def test_scheduler_picks_the_least_loaded_ready_matching_node():
    nodes = [_node("a", zone="x"), _node("b", zone="y"), _node("c", ready=False, zone="x")]
    plain = {"spec": {}}
    assert scheduler.pick(plain, nodes, {"a": 2, "b": 1}) == "b"
    assert scheduler.pick(plain, nodes, {}) == "a"
    assert scheduler.pick({"spec": {"nodeSelector": {"zone": "x"}}}, nodes, {"a": 9}) == "a"
    assert scheduler.pick({"spec": {"nodeSelector": {"zone": "z"}}}, nodes, {}) is None


# -- the node kubeconfig for an existing API server (bnsandbox.forward) ---------------------------


def _kubeconfig(server: str, **cluster) -> dict:
    return {"apiVersion": "v1", "kind": "Config", "current-context": "c",
            "contexts": [{"name": "c", "context": {"cluster": "real", "user": "u"}}],
            "clusters": [{"name": "real", "cluster": {"server": server, **cluster}},
                         {"name": "other", "cluster": {"server": "https://elsewhere:6443"}}],
            "users": [{"name": "u", "user": {"token": "secret"}}]}


def test_node_kubeconfig_points_at_the_forwarder_and_keeps_the_tls_name_and_credentials():
    from bnsandbox.forward import node_kubeconfig

    flat = _kubeconfig("https://api.example.com:6443/prefix", **{"certificate-authority-data": "Q0E="})
    derived, target = node_kubeconfig(flat, "10.251.0.1", 40000)
    assert target == ("api.example.com", 6443)
    cluster = derived["clusters"][0]["cluster"]
    assert cluster == {"server": "https://10.251.0.1:40000/prefix", "certificate-authority-data": "Q0E=",
                       "tls-server-name": "api.example.com"}
    assert derived["clusters"][1] == flat["clusters"][1]  # not the current context's: untouched
    assert derived["users"] == flat["users"] and derived["contexts"] == flat["contexts"]
    assert flat["clusters"][0]["cluster"]["server"] == "https://api.example.com:6443/prefix"  # input unchanged


def test_node_kubeconfig_defaults_ports_and_keeps_an_explicit_server_name():
    from bnsandbox.forward import node_kubeconfig

    derived, target = node_kubeconfig(_kubeconfig("https://[::1]", **{"tls-server-name": "kubernetes"}), "10.251.0.1", 1)
    assert target == ("::1", 443)
    assert derived["clusters"][0]["cluster"]["tls-server-name"] == "kubernetes"
    derived, target = node_kubeconfig(_kubeconfig("http://localhost"), "10.251.0.1", 2)
    assert target == ("localhost", 80)
    assert derived["clusters"][0]["cluster"] == {"server": "http://10.251.0.1:2"}  # no TLS, no server name
    with pytest.raises(ValueError):
        node_kubeconfig(_kubeconfig("unix:///run/api.sock"), "10.251.0.1", 3)


def test_forwarder_relays_both_ways_passes_half_close_and_is_bounded():
    import asyncio

    from bnsandbox.forward import Forwarder

    async def scenario():
        async def upstream(reader, writer):
            data = await reader.read()  # until the client's half-close arrives
            writer.write(data.upper())
            await writer.drain()
            writer.close()

        up = await asyncio.start_server(upstream, "127.0.0.1", 0)
        fwd = Forwarder(("127.0.0.1", up.sockets[0].getsockname()[1]), max_connections=1)
        relay = await asyncio.start_server(fwd.handle, "127.0.0.1", 0)
        port = relay.sockets[0].getsockname()[1]
        async with up, relay:
            r1, w1 = await asyncio.open_connection("127.0.0.1", port)
            await asyncio.sleep(0.1)  # the first connection holds the only slot
            r2, w2 = await asyncio.open_connection("127.0.0.1", port)
            assert await asyncio.wait_for(r2.read(), 5) == b""  # refused: closed at once
            w2.close()
            w1.write(b"hello " * 20000)
            w1.write_eof()
            assert await asyncio.wait_for(r1.read(), 5) == b"HELLO " * 20000
            w1.close()
            await asyncio.sleep(0.1)  # the slot is given back
            r3, w3 = await asyncio.open_connection("127.0.0.1", port)
            w3.write(b"again")
            w3.write_eof()
            assert await asyncio.wait_for(r3.read(), 5) == b"AGAIN"
            w3.close()

    asyncio.run(scenario())


NODE_RESOLV = """# the node's
nameserver 10.255.255.53
search corp.example
options ndots:1 timeout:2
"""
CLUSTER_FORM = {"nameservers": ["172.20.0.1"], "searches": ["ns.svc.cluster.local", "svc.cluster.local"],
                "options": [{"name": "ndots", "value": "5"}, {"name": "edns0"}]}


def test_pod_dns_policy_none_takes_dns_config_alone():
    got = kubelet.pod_dns_config({"dnsPolicy": "None", "dnsConfig": CLUSTER_FORM}, NODE_RESOLV)
    assert got == cri.DnsConfig(["172.20.0.1"], ["ns.svc.cluster.local", "svc.cluster.local"], ["ndots:5", "edns0"])
    # What goes to the runtime: PodSandboxConfig field 4, DNSConfig fields 1, 2, 3 (CRI api.proto).
    encoded = cri.sandbox_config(cri.SandboxMeta("p", "u", "ns"), "p", "/l", {}, {}, dns=got)
    assert b"\x22" + bytes([len(got.encode())]) + got.encode() in encoded
    assert got.encode().startswith(b"\x0a\x0a172.20.0.1\x12\x14ns.svc.cluster.local")


def test_pod_dns_config_is_merged_into_the_nodes_for_other_policies():
    # No dnsConfig: nothing to send, the runtime copies the node's resolv.conf.
    assert kubelet.pod_dns_config({}, NODE_RESOLV) is None
    assert kubelet.pod_dns_config({"dnsPolicy": "Default"}, NODE_RESOLV) is None
    got = kubelet.pod_dns_config({"dnsPolicy": "ClusterFirst", "dnsConfig": {
        "nameservers": ["10.255.255.53", "172.20.0.1"], "searches": ["corp.example", "x.test"],
        "options": [{"name": "ndots", "value": "5"}, {"name": "rotate"}]}}, NODE_RESOLV)
    assert got == cri.DnsConfig(["10.255.255.53", "172.20.0.1"], ["corp.example", "x.test"],
                                ["ndots:5", "timeout:2", "rotate"])


def test_kubelet_counts_readiness_gates_like_the_kubelet():
    gate = "bridgenet.io/networks-ready"
    pod = {"spec": {"readinessGates": [{"conditionType": gate}]},
           "status": {"conditions": [{"type": "ContainersReady", "status": "True"}]}}
    ok, msg = kubelet.readiness_gates(pod)
    assert not ok and gate in msg
    pod["status"]["conditions"].append({"type": gate, "status": "False"})
    assert not kubelet.readiness_gates(pod)[0]
    pod["status"]["conditions"][-1]["status"] = "True"
    assert kubelet.readiness_gates(pod) == (True, "")
    assert kubelet.readiness_gates({"spec": {}, "status": {}}) == (True, "")
