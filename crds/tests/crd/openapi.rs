//! The OpenAPI half of validation: bounds and types the API server checks before any CEL rule,
//! run with `jsonschema` on the CRD's `openAPIV3Schema`.

use serde_json::{Value, json};

use crate::{bn_object, bridge_network_schema};

/// The CRD schema as JSON Schema draft 4: OpenAPI's `nullable: true` becomes a `null` type, the
/// one OpenAPI keyword here that JSON Schema reads differently.
pub fn as_json_schema(node: &Value) -> Value {
    match node {
        Value::Object(map) => {
            let mut out = serde_json::Map::new();
            for (key, value) in map {
                if key == "properties" {
                    let props = value
                        .as_object()
                        .unwrap()
                        .iter()
                        .map(|(k, v)| (k.clone(), as_json_schema(v)))
                        .collect();
                    out.insert(key.clone(), Value::Object(props));
                } else if key != "nullable" && !key.starts_with("x-kubernetes-") {
                    out.insert(key.clone(), as_json_schema(value));
                }
            }
            if map.get("nullable") == Some(&Value::Bool(true))
                && let Some(Value::String(ty)) = map.get("type")
            {
                out.insert("type".into(), json!([ty, "null"]));
            }
            Value::Object(out)
        }
        Value::Array(items) => Value::Array(items.iter().map(as_json_schema).collect()),
        other => other.clone(),
    }
}

/// OpenAPI failures of a BridgeNetwork object, as JSON pointers to the offending values.
pub fn openapi_failures(object: &Value) -> Vec<String> {
    let schema = as_json_schema(&bridge_network_schema());
    let validator = jsonschema::draft4::new(&schema).unwrap();
    let mut paths: Vec<String> = validator
        .iter_errors(object)
        .map(|e| e.instance_path().to_string())
        .collect();
    paths.sort();
    paths.dedup();
    paths
}

/// Fields of `object` the schema does not declare: the API server prunes them silently (or, with
/// strict field validation as in `kubectl apply`, refuses the object).
pub fn unknown_fields(schema: &Value, object: &Value, path: &str) -> Vec<String> {
    let mut out = Vec::new();
    match object {
        Value::Object(map) => {
            if let Some(props) = schema.get("properties").and_then(Value::as_object) {
                for (key, value) in map {
                    match props.get(key) {
                        Some(child) => {
                            out.extend(unknown_fields(child, value, &format!("{path}.{key}")))
                        }
                        None if path.is_empty()
                            && matches!(key.as_str(), "apiVersion" | "kind" | "metadata") => {}
                        None => out.push(format!("{path}.{key}")),
                    }
                }
            } else if let Some(extra) = schema.get("additionalProperties").filter(|v| v.is_object())
            {
                for (key, value) in map {
                    out.extend(unknown_fields(extra, value, &format!("{path}.{key}")));
                }
            }
        }
        Value::Array(items) => {
            if let Some(item_schema) = schema.get("items") {
                for (i, item) in items.iter().enumerate() {
                    out.extend(unknown_fields(item_schema, item, &format!("{path}[{i}]")));
                }
            }
        }
        _ => {}
    }
    out
}

fn spec(extra: Value) -> Value {
    let mut spec = json!({"subnet": "172.20.0.0/16"});
    for (k, v) in extra.as_object().unwrap() {
        spec[k] = v.clone();
    }
    bn_object("custom-network", spec)
}

#[test]
fn accepts_a_full_valid_object() {
    let object = bn_object(
        "custom-network",
        json!({
            "subnet": "172.20.0.0/16", "gateway": "172.20.0.1", "ipRange": "172.20.8.0/21",
            "excludeAddresses": ["172.20.8.1"], "bridge": "fifteen-bytes-x", "mtu": 1450,
            "internal": false, "masquerade": true, "interPodTraffic": true, "blockSize": 26,
            "ipv6": {"subnet": "fd00:20::/64", "gateway": "fd00:20::1", "blockSize": 122},
            "nodeSelector": {"matchLabels": {"kubernetes.io/os": "linux"}},
            "namespaceSelector": {"matchExpressions": [{"key": "team", "operator": "In", "values": ["a"]}]},
        }),
    );
    assert_eq!(openapi_failures(&object), Vec::<String>::new());
    assert_eq!(
        unknown_fields(&bridge_network_schema(), &object, ""),
        Vec::<String>::new()
    );
    // Bounds are inclusive.
    for extra in [
        json!({"mtu": 576}),
        json!({"mtu": 65535}),
        json!({"blockSize": 8}),
        json!({"blockSize": 32}),
    ] {
        assert_eq!(
            openapi_failures(&spec(extra.clone())),
            Vec::<String>::new(),
            "{extra}"
        );
    }
}

#[test]
fn refuses_out_of_bounds_and_wrong_types() {
    let too_many: Vec<String> = (0..257).map(|i| format!("172.20.1.{}", i % 250)).collect();
    let cases = [
        (json!({"bridge": "sixteen-bytes-xx"}), "/spec/bridge"),
        (json!({"bridge": ""}), "/spec/bridge"),
        (json!({"mtu": 100}), "/spec/mtu"),
        (json!({"mtu": 575}), "/spec/mtu"),
        (json!({"mtu": 70000}), "/spec/mtu"),
        (json!({"mtu": "1500"}), "/spec/mtu"),
        (json!({"mtu": 1500.5}), "/spec/mtu"),
        (json!({"blockSize": 7}), "/spec/blockSize"),
        (json!({"blockSize": 33}), "/spec/blockSize"),
        (json!({"subnet": 42}), "/spec/subnet"),
        (
            json!({"subnet": "172.20.0.0/16/extra-long"}),
            "/spec/subnet",
        ),
        (json!({"gateway": "172.200.200.200x"}), "/spec/gateway"),
        (json!({"gateway": 1}), "/spec/gateway"),
        (json!({"internal": "yes"}), "/spec/internal"),
        (json!({"masquerade": 1}), "/spec/masquerade"),
        (
            json!({"excludeAddresses": "172.20.0.1"}),
            "/spec/excludeAddresses",
        ),
        (
            json!({"excludeAddresses": too_many}),
            "/spec/excludeAddresses",
        ),
        (
            json!({"excludeAddresses": ["x".repeat(40)]}),
            "/spec/excludeAddresses/0",
        ),
        (json!({"ipv6": {"gateway": "fd00::1"}}), "/spec/ipv6"),
        (
            json!({"ipv6": {"subnet": "fd00::/64", "blockSize": 63}}),
            "/spec/ipv6/blockSize",
        ),
        (
            json!({"ipv6": {"subnet": "fd00::/64", "blockSize": 129}}),
            "/spec/ipv6/blockSize",
        ),
        (
            json!({"nodeSelector": {"matchLabels": {"a": 1}}}),
            "/spec/nodeSelector/matchLabels/a",
        ),
        (
            json!({"nodeSelector": {"matchExpressions": [{"key": "a"}]}}),
            "/spec/nodeSelector/matchExpressions/0",
        ),
    ];
    for (extra, path) in cases {
        assert_eq!(
            openapi_failures(&spec(extra.clone())),
            vec![path.to_owned()],
            "for {extra}"
        );
    }
}

#[test]
fn refuses_a_missing_subnet_or_spec() {
    assert_eq!(
        openapi_failures(&bn_object("n", json!({"gateway": "172.20.0.1"}))),
        vec!["/spec"]
    );
    let no_spec = json!({"apiVersion": "bridgenet.io/v1alpha1", "kind": "BridgeNetwork", "metadata": {"name": "n"}});
    assert_eq!(openapi_failures(&no_spec), vec![""]);
}

/// What the API server does with `null` before validating: a `null` for a field whose schema is
/// not `nullable` is dropped, as if the field were absent.
pub fn prune_nulls(schema: &Value, object: &mut Value) {
    match object {
        Value::Object(map) => {
            let props = schema.get("properties").and_then(Value::as_object);
            map.retain(|key, value| {
                let nullable = props
                    .and_then(|p| p.get(key))
                    .is_some_and(|s| s.get("nullable") == Some(&Value::Bool(true)));
                !value.is_null() || nullable
            });
            for (key, value) in map.iter_mut() {
                if let Some(child) = props.and_then(|p| p.get(key)) {
                    prune_nulls(child, value);
                }
            }
        }
        Value::Array(items) => {
            if let Some(item_schema) = schema.get("items") {
                items.iter_mut().for_each(|i| prune_nulls(item_schema, i));
            }
        }
        _ => {}
    }
}

#[test]
fn explicit_nulls_in_the_spec_read_as_absent() {
    // A Helm template with an empty value writes `gateway: null`. The spec's optional fields are
    // not nullable, so the API server drops such nulls and the object is stored, validated and
    // read as if the field were absent.
    let schema = bridge_network_schema();
    let mut object = spec(
        json!({"gateway": null, "mtu": null, "ipv6": null, "ipRange": null,
        "bridge": null, "blockSize": null, "nodeSelector": null, "namespaceSelector": null}),
    );
    prune_nulls(&schema, &mut object);
    assert_eq!(object["spec"], json!({"subnet": "172.20.0.0/16"}));
    assert_eq!(openapi_failures(&object), Vec::<String>::new());
    assert_eq!(crate::cel_failures(&object, None), vec![]);
    let mut dual = spec(
        json!({"ipv6": {"subnet": "fd00::/64", "gateway": null, "ipRange": null, "blockSize": null}}),
    );
    prune_nulls(&schema, &mut dual);
    assert_eq!(dual["spec"]["ipv6"], json!({"subnet": "fd00::/64"}));
    // Unpruned, a null is a type error, so nothing relies on a kept null.
    assert_eq!(
        openapi_failures(&spec(json!({"gateway": null}))),
        vec!["/spec/gateway"]
    );
}

#[test]
fn unknown_fields_are_found() {
    let object = spec(json!({"subnett": "x", "ipv6": {"subnet": "fd00::/64", "gw": "fd00::1"}}));
    assert_eq!(
        unknown_fields(&bridge_network_schema(), &object, ""),
        vec![".spec.ipv6.gw".to_owned(), ".spec.subnett".to_owned()]
    );
}
