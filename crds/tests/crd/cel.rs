//! Every CEL rule of the BridgeNetwork CRD, on create and on update: what it accepts, what it
//! refuses, and the exact message and field the user sees. The table must name every rule's
//! message (checked against the CRD), so a new rule without a test fails here. Every create case
//! is also run through `bridgenet_crds::net::resolve`, the operator's Rust copy of the rules,
//! which must agree.

use std::collections::BTreeSet;

use bridgenet_crds::{BridgeNetwork, BridgeNetworkSpec, net};
use kube::core::cel::ValidationErrors;
use serde_json::{Value, json};

use crate::{bn_object, bridge_network_schema, cel_failures};

const SUBNET_FAMILY: &str =
    "subnet must be an IPv4 CIDR such as 172.20.0.0/16 (IPv6 goes in ipv6.subnet)";
const SUBNET_CANONICAL: &str =
    "subnet must be written with its network address, e.g. 172.20.0.0/16 rather than 172.20.3.4/16";
const SUBNET_SIZE: &str =
    "subnet must hold at least two host addresses: use a prefix length of /30 or shorter";
const SUBNET_IMMUTABLE: &str =
    "subnet is immutable, like a Docker network's: create a new BridgeNetwork for another subnet";
const GATEWAY_FAMILY: &str = "gateway must be an IPv4 address such as 172.20.0.1";
const GATEWAY_INSIDE: &str = "gateway must be an address inside subnet: pick one from the subnet (Docker's convention is the first host, e.g. 172.20.0.1 for 172.20.0.0/16), or omit gateway to get that default";
const GATEWAY_NETWORK: &str = "gateway must not be the subnet's network address: use a host address such as the first one (x.x.x.1), or omit gateway";
const GATEWAY_BROADCAST: &str = "gateway must not be the subnet's broadcast address: use a host address such as the first one (x.x.x.1), or omit gateway";
const GATEWAY_IMMUTABLE: &str = "gateway is immutable, like a Docker network's: create a new BridgeNetwork to use another gateway";
const RANGE_FAMILY: &str = "ipRange must be an IPv4 CIDR such as 172.20.10.0/24";
const RANGE_CANONICAL: &str = "ipRange must be written with its network address, e.g. 172.20.10.0/24 rather than 172.20.10.7/24";
const RANGE_INSIDE: &str = "ipRange must lie inside subnet: use a CIDR within the subnet (like docker --ip-range), or omit it to use the whole subnet";
const RANGE_IMMUTABLE: &str = "ipRange is immutable, since addresses are already handed out from it: create a new BridgeNetwork to change it";
const BLOCK_SIZE: &str = "blockSize must be a prefix length at least as long as the subnet's (or ipRange's): per-node blocks are carved out of it";
const BLOCK_IMMUTABLE: &str = "blockSize is immutable, since nodes already hold blocks of the old size: create a new BridgeNetwork to change it";
const EXCLUDE_IP: &str =
    "every excludeAddresses entry must be a single IP address such as 172.20.0.10";
const EXCLUDE_INSIDE: &str = "every excludeAddresses entry must be an address inside subnet (or ipv6.subnet): remove the ones outside it";
const MTU_IPV6: &str = "mtu must be at least 1280 when ipv6 is enabled (IPv6's minimum link MTU): raise mtu or remove ipv6";
const BRIDGE_NAME: &str = "bridge must be a Linux interface name: 1-15 characters of letters, digits, '_', '.', '-', starting with a letter or digit";
const BRIDGE_IMMUTABLE: &str = "bridge is immutable: pods are attached to the existing bridge; create a new BridgeNetwork to use another name";
const IPV6_ADD_REMOVE: &str = "ipv6 cannot be added to or removed from an existing network: create a new BridgeNetwork for dual stack";
const V6_SUBNET_FAMILY: &str = "ipv6.subnet must be an IPv6 CIDR such as fd00:20::/64";
const V6_SUBNET_CANONICAL: &str =
    "ipv6.subnet must be written with its network address, e.g. fd00:20::/64";
const V6_SUBNET_SIZE: &str =
    "ipv6.subnet must hold host addresses: use a prefix length of /126 or shorter";
const V6_SUBNET_IMMUTABLE: &str =
    "ipv6.subnet is immutable: create a new BridgeNetwork to change it";
const V6_GATEWAY_FAMILY: &str = "ipv6.gateway must be an IPv6 address such as fd00:20::1";
const V6_GATEWAY_INSIDE: &str = "ipv6.gateway must be an address inside ipv6.subnet, or omitted to get the subnet's first host address";
const V6_GATEWAY_NETWORK: &str = "ipv6.gateway must not be the subnet-router anycast (network) address: use a host address such as ::1 of the subnet";
const V6_GATEWAY_IMMUTABLE: &str =
    "ipv6.gateway is immutable: create a new BridgeNetwork to change it";
const V6_RANGE_FORM: &str =
    "ipv6.ipRange must be an IPv6 CIDR written with its network address, e.g. fd00:20:0:0:1::/80";
const V6_RANGE_INSIDE: &str = "ipv6.ipRange must lie inside ipv6.subnet, or be omitted";
const V6_RANGE_IMMUTABLE: &str = "ipv6.ipRange is immutable, since addresses are already handed out from it: create a new BridgeNetwork to change it";
const V6_BLOCK_SIZE: &str =
    "ipv6.blockSize must be at least the prefix length of ipv6.subnet (or ipv6.ipRange)";
const V6_BLOCK_IMMUTABLE: &str = "ipv6.blockSize is immutable, since nodes already hold blocks of the old size: create a new BridgeNetwork to change it";

/// `(field path, message)` pairs, as the user sees them.
pub(crate) type Failures = Vec<(String, String)>;

/// The spec `{subnet: 172.20.0.0/16}` with `extra` merged in (a `null` removes a key).
fn with(extra: Value) -> Value {
    let mut spec = json!({"subnet": "172.20.0.0/16"});
    for (k, v) in extra.as_object().unwrap() {
        if v.is_null() {
            spec.as_object_mut().unwrap().remove(k);
        } else {
            spec[k] = v.clone();
        }
    }
    spec
}

fn v6(extra: Value) -> Value {
    let mut v6 = json!({"subnet": "fd00:20::/64"});
    for (k, v) in extra.as_object().unwrap() {
        v6[k] = v.clone();
    }
    with(json!({"ipv6": v6}))
}

fn typed(spec: &Value) -> BridgeNetwork {
    serde_json::from_value(bn_object("custom-network", spec.clone())).unwrap()
}

fn pairs(result: Result<(), ValidationErrors>) -> Vec<(String, String)> {
    match result {
        Ok(()) => vec![],
        Err(errors) => errors
            .iter()
            .map(|e| (e.field_path.clone(), e.message.clone()))
            .collect(),
    }
}

fn expect(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter()
        .map(|(p, m)| ((*p).to_owned(), (*m).to_owned()))
        .collect()
}

/// Specs every rule must accept, including the boundaries of each.
pub(crate) fn valid_specs() -> Vec<Value> {
    vec![
        json!({"subnet": "172.20.0.0/16", "gateway": "172.20.0.1"}),
        json!({"subnet": "172.21.0.0/16"}),
        with(json!({"gateway": "172.20.255.254"})),
        with(json!({"gateway": "172.20.0.255"})),
        with(json!({"gateway": "172.20.1.0"})),
        json!({"subnet": "10.0.0.0/8", "gateway": "10.200.3.7"}),
        json!({"subnet": "10.0.0.0/8", "gateway": "10.255.255.254"}),
        json!({"subnet": "0.0.0.0/0", "gateway": "0.0.0.1"}),
        json!({"subnet": "10.0.0.0/30", "gateway": "10.0.0.2"}),
        with(json!({"ipRange": "172.20.0.0/16"})),
        with(json!({"ipRange": "172.20.10.0/24", "blockSize": 24})),
        with(json!({"ipRange": "172.20.10.0/24", "blockSize": 32})),
        with(json!({"blockSize": 16})),
        with(json!({"excludeAddresses": ["172.20.0.10", "172.20.255.254"]})),
        with(json!({"mtu": 576})),
        with(json!({"mtu": 9000, "internal": true, "masquerade": false, "interPodTraffic": false})),
        with(json!({"bridge": "br-custom"})),
        with(json!({"bridge": "a"})),
        with(json!({"bridge": "br0.100_x-y"})),
        with(json!({"bridge": "fifteen-bytes-x"})),
        with(json!({"nodeSelector": {"matchLabels": {"bridgenet": "yes"}}})),
        v6(json!({})),
        v6(json!({"gateway": "fd00:20::1", "ipRange": "fd00:20:0:0:1::/80", "blockSize": 122})),
        v6(json!({"ipRange": "fd00:20:0:0:1::/80", "blockSize": 80})),
        v6(json!({"gateway": "fd00:20::ffff:ffff:ffff:ffff"})),
        {
            let mut s = v6(json!({}));
            s["mtu"] = json!(1280);
            s["excludeAddresses"] = json!(["172.20.0.9", "fd00:20::9"]);
            s
        },
    ]
}

/// Specs refused on create, with every `(field, message)` the user sees.
pub(crate) fn invalid_specs() -> Vec<(Value, Failures)> {
    vec![
        (
            json!({"subnet": "bogus", "gateway": "172.20.0.1"}),
            expect(&[("spec.subnet", SUBNET_FAMILY)]),
        ),
        (
            json!({"subnet": "fd00::/64"}),
            expect(&[("spec.subnet", SUBNET_FAMILY)]),
        ),
        (
            json!({"subnet": "172.20.0.0/33"}),
            expect(&[("spec.subnet", SUBNET_FAMILY)]),
        ),
        (
            json!({"subnet": "172.20.3.4/16"}),
            expect(&[("spec.subnet", SUBNET_CANONICAL)]),
        ),
        (
            json!({"subnet": "10.0.0.0/31"}),
            expect(&[("spec.subnet", SUBNET_SIZE)]),
        ),
        (
            json!({"subnet": "10.0.0.1/32"}),
            expect(&[("spec.subnet", SUBNET_SIZE)]),
        ),
        (
            with(json!({"gateway": "172.21.0.1"})),
            expect(&[("spec", GATEWAY_INSIDE)]),
        ),
        (
            with(json!({"gateway": "172.20.0.0"})),
            expect(&[("spec", GATEWAY_NETWORK)]),
        ),
        (
            with(json!({"gateway": "172.20.255.255"})),
            expect(&[("spec", GATEWAY_BROADCAST)]),
        ),
        (
            json!({"subnet": "10.0.0.0/30", "gateway": "10.0.0.3"}),
            expect(&[("spec", GATEWAY_BROADCAST)]),
        ),
        (
            json!({"subnet": "10.0.0.0/8", "gateway": "10.255.255.255"}),
            expect(&[("spec", GATEWAY_BROADCAST)]),
        ),
        (
            json!({"subnet": "0.0.0.0/0", "gateway": "255.255.255.255"}),
            expect(&[("spec", GATEWAY_BROADCAST)]),
        ),
        (
            with(json!({"gateway": "fd00::1"})),
            expect(&[("spec.gateway", GATEWAY_FAMILY)]),
        ),
        (
            with(json!({"gateway": "nope"})),
            expect(&[("spec.gateway", GATEWAY_FAMILY)]),
        ),
        (
            with(json!({"gateway": "172.020.0.1"})),
            expect(&[("spec.gateway", GATEWAY_FAMILY)]),
        ),
        (
            with(json!({"ipRange": "172.21.0.0/24"})),
            expect(&[("spec", RANGE_INSIDE)]),
        ),
        (
            with(json!({"ipRange": "172.20.0.0/15"})),
            expect(&[("spec", RANGE_INSIDE)]),
        ),
        (
            with(json!({"ipRange": "172.20.10.7/24"})),
            expect(&[("spec.ipRange", RANGE_CANONICAL)]),
        ),
        (
            with(json!({"ipRange": "fd00::/64"})),
            expect(&[("spec.ipRange", RANGE_FAMILY)]),
        ),
        (
            with(json!({"blockSize": 15})),
            expect(&[("spec", BLOCK_SIZE)]),
        ),
        (
            with(json!({"ipRange": "172.20.10.0/24", "blockSize": 20})),
            expect(&[("spec", BLOCK_SIZE)]),
        ),
        (
            with(json!({"excludeAddresses": ["10.0.0.1"]})),
            expect(&[("spec", EXCLUDE_INSIDE)]),
        ),
        (
            with(json!({"excludeAddresses": ["172.20.0.5", "fd00::5"]})),
            expect(&[("spec", EXCLUDE_INSIDE)]),
        ),
        (
            with(json!({"excludeAddresses": ["172.20.0.0/24"]})),
            expect(&[("spec.excludeAddresses", EXCLUDE_IP)]),
        ),
        (
            {
                let mut s = v6(json!({}));
                s["mtu"] = json!(1000);
                s
            },
            expect(&[("spec", MTU_IPV6)]),
        ),
        (
            with(json!({"bridge": "-bridge"})),
            expect(&[("spec.bridge", BRIDGE_NAME)]),
        ),
        (
            with(json!({"bridge": "br custom"})),
            expect(&[("spec.bridge", BRIDGE_NAME)]),
        ),
        (
            with(json!({"bridge": "br/custom"})),
            expect(&[("spec.bridge", BRIDGE_NAME)]),
        ),
        (
            v6(json!({"subnet": "172.22.0.0/16"})),
            expect(&[("spec.ipv6.subnet", V6_SUBNET_FAMILY)]),
        ),
        (
            v6(json!({"subnet": "fd00:20::5/64"})),
            expect(&[("spec.ipv6.subnet", V6_SUBNET_CANONICAL)]),
        ),
        (
            v6(json!({"subnet": "fd00:20::/127"})),
            expect(&[("spec.ipv6.subnet", V6_SUBNET_SIZE)]),
        ),
        (
            v6(json!({"gateway": "fd00:21::1"})),
            expect(&[("spec.ipv6", V6_GATEWAY_INSIDE)]),
        ),
        (
            v6(json!({"gateway": "fd00:20::"})),
            expect(&[("spec.ipv6", V6_GATEWAY_NETWORK)]),
        ),
        (
            v6(json!({"gateway": "172.20.0.1"})),
            expect(&[("spec.ipv6.gateway", V6_GATEWAY_FAMILY)]),
        ),
        (
            v6(json!({"ipRange": "fd00:21::/80"})),
            expect(&[("spec.ipv6", V6_RANGE_INSIDE)]),
        ),
        (
            v6(json!({"ipRange": "fd00:20::1/80"})),
            expect(&[("spec.ipv6.ipRange", V6_RANGE_FORM)]),
        ),
        (
            v6(json!({"ipRange": "172.20.0.0/24"})),
            expect(&[("spec.ipv6.ipRange", V6_RANGE_FORM)]),
        ),
        (
            v6(json!({"ipRange": "fd00:20::/80", "blockSize": 64})),
            expect(&[("spec.ipv6", V6_BLOCK_SIZE)]),
        ),
        // Several mistakes at once: each is reported, none hides behind an evaluation error.
        (
            json!({"subnet": "172.20.0.0", "gateway": "172.20.0.1", "ipRange": "x", "blockSize": 24,
                   "excludeAddresses": ["y"]}),
            expect(&[
                ("spec.excludeAddresses", EXCLUDE_IP),
                ("spec.ipRange", RANGE_FAMILY),
                ("spec.subnet", SUBNET_FAMILY),
            ]),
        ),
    ]
}

/// Updates: `(old, new, failures)`.
pub(crate) fn updates() -> Vec<(Value, Value, Failures)> {
    let base = with(
        json!({"gateway": "172.20.0.1", "ipRange": "172.20.0.0/17", "bridge": "br-a", "blockSize": 26}),
    );
    let change = |extra: Value| {
        let mut s = base.clone();
        for (k, v) in extra.as_object().unwrap() {
            if v.is_null() {
                s.as_object_mut().unwrap().remove(k);
            } else {
                s[k] = v.clone();
            }
        }
        s
    };
    let dual = v6(json!({"gateway": "fd00:20::1", "ipRange": "fd00:20::/80", "blockSize": 122}));
    let dual_change = |extra: Value| {
        let mut s = dual.clone();
        for (k, v) in extra.as_object().unwrap() {
            s["ipv6"][k] = v.clone();
        }
        s
    };
    vec![
        // Allowed: same spec, and every mutable field.
        (base.clone(), base.clone(), vec![]),
        (
            base.clone(),
            change(json!({"mtu": 1400, "internal": true, "masquerade": false})),
            vec![],
        ),
        (
            base.clone(),
            change(json!({"interPodTraffic": false, "excludeAddresses": ["172.20.0.7"]})),
            vec![],
        ),
        (
            base.clone(),
            change(json!({"nodeSelector": {"matchLabels": {"a": "b"}}, "namespaceSelector": {}})),
            vec![],
        ),
        (dual.clone(), dual.clone(), vec![]),
        // Refused: every immutable field.
        (
            base.clone(),
            json!({"subnet": "172.30.0.0/16", "gateway": "172.30.0.1", "ipRange": "172.30.0.0/17",
                   "bridge": "br-a", "blockSize": 26}),
            expect(&[
                ("spec", GATEWAY_IMMUTABLE),
                ("spec", RANGE_IMMUTABLE),
                ("spec.subnet", SUBNET_IMMUTABLE),
            ]),
        ),
        (
            base.clone(),
            change(json!({"gateway": "172.20.0.254"})),
            expect(&[("spec", GATEWAY_IMMUTABLE)]),
        ),
        (
            base.clone(),
            change(json!({"gateway": null})),
            expect(&[("spec", GATEWAY_IMMUTABLE)]),
        ),
        (
            with(json!({})),
            with(json!({"gateway": "172.20.0.1"})),
            expect(&[("spec", GATEWAY_IMMUTABLE)]),
        ),
        (
            base.clone(),
            change(json!({"ipRange": "172.20.128.0/17"})),
            expect(&[("spec", RANGE_IMMUTABLE)]),
        ),
        (
            with(json!({})),
            with(json!({"ipRange": "172.20.0.0/24"})),
            expect(&[("spec", RANGE_IMMUTABLE)]),
        ),
        (
            base.clone(),
            change(json!({"bridge": "br-b"})),
            expect(&[("spec", BRIDGE_IMMUTABLE)]),
        ),
        (
            base.clone(),
            change(json!({"bridge": null})),
            expect(&[("spec", BRIDGE_IMMUTABLE)]),
        ),
        (
            base.clone(),
            change(json!({"blockSize": 24})),
            expect(&[("spec", BLOCK_IMMUTABLE)]),
        ),
        (
            with(json!({})),
            with(json!({"blockSize": 26})),
            expect(&[("spec", BLOCK_IMMUTABLE)]),
        ),
        (
            with(json!({})),
            v6(json!({})),
            expect(&[("spec", IPV6_ADD_REMOVE)]),
        ),
        (
            v6(json!({})),
            with(json!({})),
            expect(&[("spec", IPV6_ADD_REMOVE)]),
        ),
        (
            dual.clone(),
            dual_change(
                json!({"subnet": "fd00:21::/64", "gateway": "fd00:21::1", "ipRange": "fd00:21::/80"}),
            ),
            expect(&[
                ("spec.ipv6", V6_GATEWAY_IMMUTABLE),
                ("spec.ipv6", V6_RANGE_IMMUTABLE),
                ("spec.ipv6.subnet", V6_SUBNET_IMMUTABLE),
            ]),
        ),
        (
            dual.clone(),
            dual_change(json!({"gateway": "fd00:20::2"})),
            expect(&[("spec.ipv6", V6_GATEWAY_IMMUTABLE)]),
        ),
        (
            dual.clone(),
            dual_change(json!({"ipRange": "fd00:20:0:0:1::/80"})),
            expect(&[("spec.ipv6", V6_RANGE_IMMUTABLE)]),
        ),
        (
            dual.clone(),
            dual_change(json!({"blockSize": 120})),
            expect(&[("spec.ipv6", V6_BLOCK_IMMUTABLE)]),
        ),
    ]
}

fn sorted(mut v: Vec<(String, String)>) -> Vec<(String, String)> {
    v.sort();
    v
}

#[test]
fn valid_specs_pass_cel_and_resolve() {
    for spec in valid_specs() {
        let failures = pairs(typed(&spec).validate_cel());
        assert!(failures.is_empty(), "{spec} was refused: {failures:?}");
        let parsed: BridgeNetworkSpec = serde_json::from_value(spec.clone()).unwrap();
        if let Err(e) = net::resolve("custom-network", &parsed) {
            panic!("{spec} passes CEL but net::resolve refuses it: {e}");
        }
    }
}

#[test]
fn invalid_specs_fail_with_the_exact_messages() {
    for (spec, expected) in invalid_specs() {
        let failures = sorted(pairs(typed(&spec).validate_cel()));
        assert_eq!(failures, sorted(expected), "for {spec}");
        let parsed: BridgeNetworkSpec = serde_json::from_value(spec.clone()).unwrap();
        assert!(
            net::resolve("custom-network", &parsed).is_err(),
            "{spec} fails CEL but net::resolve accepts it"
        );
    }
}

#[test]
fn updates_keep_immutable_fields() {
    for (old, new, expected) in updates() {
        // The new object is itself valid, so only transition rules can fail.
        assert!(
            pairs(typed(&new).validate_cel()).is_empty(),
            "{new} must be valid on its own"
        );
        let failures = sorted(pairs(typed(&new).validate_cel_update(&typed(&old))));
        assert_eq!(failures, sorted(expected), "for update {old} -> {new}");
    }
}

#[test]
fn untyped_objects_give_the_same_answers() {
    // What the API server sees is JSON, not our struct: defaults are not filled in and an absent
    // list is absent. The messages must not depend on that.
    let object = bn_object(
        "n",
        json!({"subnet": "172.20.0.0/16", "gateway": "172.21.0.1"}),
    );
    assert_eq!(
        cel_failures(&object, None),
        expect(&[("spec", GATEWAY_INSIDE)])
    );
    let object = bn_object(
        "n",
        json!({"subnet": "172.20.0.0/16", "excludeAddresses": []}),
    );
    assert_eq!(cel_failures(&object, None), vec![]);
}

#[test]
fn the_tables_cover_every_rule() {
    let mut in_crd = BTreeSet::new();
    collect_messages(&bridge_network_schema(), &mut in_crd);
    let mut tested = BTreeSet::new();
    for (_, expected) in invalid_specs() {
        tested.extend(expected.into_iter().map(|(_, m)| m));
    }
    for (_, _, expected) in updates() {
        tested.extend(expected.into_iter().map(|(_, m)| m));
    }
    let untested: Vec<_> = in_crd.difference(&tested).collect();
    assert!(
        untested.is_empty(),
        "rules without a failing case: {untested:#?}"
    );
    let unknown: Vec<_> = tested.difference(&in_crd).collect();
    assert!(unknown.is_empty(), "messages no rule has: {unknown:#?}");
}

fn collect_messages(node: &Value, out: &mut BTreeSet<String>) {
    match node {
        Value::Object(map) => {
            if let Some(rules) = map
                .get("x-kubernetes-validations")
                .and_then(Value::as_array)
            {
                for rule in rules {
                    out.insert(rule["message"].as_str().unwrap().to_owned());
                }
            }
            for (key, child) in map {
                if key != "x-kubernetes-validations" {
                    collect_messages(child, out);
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|c| collect_messages(c, out)),
        _ => {}
    }
}
