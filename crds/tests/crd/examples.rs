//! Every file in `examples/` is what it claims: the networks pass the OpenAPI schema (with no
//! field the API server would prune), the CEL rules and the operator's `net::resolve`, and do
//! not overlap; the pods ask for networks that exist, with addresses those networks can hand
//! out. Every file in `examples/invalid/` is refused, with the message its `# expect:` names.

use std::{collections::BTreeMap, path::Path};

use bridgenet_crds::{BridgeNetwork, net};
use k8s_openapi::api::core::v1::Pod;
use serde::Deserialize;
use serde_json::Value;

use crate::{
    bridge_network_schema, cel_failures, examples_dir, openapi::openapi_failures,
    openapi::unknown_fields,
};

/// The YAML documents of a file, as JSON.
fn documents(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap();
    serde_yaml::Deserializer::from_str(&text)
        .map(|doc| Value::deserialize(doc).unwrap_or_else(|e| panic!("{}: {e}", path.display())))
        .filter(|v| !v.is_null())
        .collect()
}

fn yaml_files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    files
}

/// The valid example networks by name.
fn example_networks() -> BTreeMap<String, BridgeNetwork> {
    let mut networks = BTreeMap::new();
    for path in yaml_files(&examples_dir()) {
        for doc in documents(&path) {
            if doc["kind"] == "BridgeNetwork" {
                let bn: BridgeNetwork = serde_json::from_value(doc)
                    .unwrap_or_else(|e| panic!("{}: not a BridgeNetwork: {e}", path.display()));
                let name = bn.metadata.name.clone().unwrap();
                assert!(
                    networks.insert(name.clone(), bn).is_none(),
                    "{name} defined twice"
                );
            }
        }
    }
    networks
}

#[test]
fn example_networks_pass_every_check() {
    let schema = bridge_network_schema();
    let mut seen = 0;
    for path in yaml_files(&examples_dir()) {
        for doc in documents(&path) {
            if doc["kind"] != "BridgeNetwork" {
                continue;
            }
            seen += 1;
            let file = path.display();
            assert_eq!(doc["apiVersion"], "bridgenet.io/v1alpha1", "{file}");
            assert_eq!(
                openapi_failures(&doc),
                Vec::<String>::new(),
                "{file}: OpenAPI"
            );
            assert_eq!(
                unknown_fields(&schema, &doc, ""),
                Vec::<String>::new(),
                "{file}: unknown fields"
            );
            assert_eq!(
                cel_failures(&doc, None),
                vec![],
                "{file}: CEL on the raw object"
            );
            let bn: BridgeNetwork = serde_json::from_value(doc.clone()).unwrap();
            assert!(bn.validate_cel().is_ok(), "{file}: CEL on the typed object");
            let name = bn.metadata.name.as_deref().unwrap();
            net::resolve(name, &bn.spec).unwrap_or_else(|e| panic!("{file}: {e}"));
        }
    }
    assert!(seen >= 4, "expected the example networks, found {seen}");
}

#[test]
fn example_networks_do_not_collide() {
    let resolved: Vec<_> = example_networks()
        .iter()
        .map(|(name, bn)| net::resolve(name, &bn.spec).unwrap())
        .collect();
    for (i, a) in resolved.iter().enumerate() {
        for b in &resolved[i + 1..] {
            for (pa, pb) in a.plans().zip(b.plans()) {
                assert!(
                    !pa.subnet.contains(&pb.subnet.network())
                        && !pb.subnet.contains(&pa.subnet.network()),
                    "{} and {} overlap: the operator would refuse one",
                    a.name,
                    b.name
                );
            }
            assert_ne!(
                a.bridge, b.bridge,
                "{} and {} share a bridge name",
                a.name, b.name
            );
        }
    }
    let docker = &example_networks()["custom-network"];
    assert_eq!(docker.spec.subnet, "172.20.0.0/16");
    assert_eq!(docker.spec.gateway.as_deref(), Some("172.20.0.1"));
    assert!(example_networks()["internal-network"].spec.internal);
}

#[test]
fn example_pods_ask_for_existing_networks() {
    let networks = example_networks();
    let path = examples_dir().join("pod-attached.yaml");
    let mut pods = 0;
    for doc in documents(&path) {
        let pod: Pod = serde_json::from_value(doc).unwrap();
        pods += 1;
        let annotations = pod.metadata.annotations.unwrap_or_default();
        let value = annotations
            .get(bridgenet_crds::ANNOTATION_NETWORKS)
            .unwrap_or_else(|| panic!("pod without {}", bridgenet_crds::ANNOTATION_NETWORKS))
            .trim();
        let entries: Vec<Value> = if value.starts_with('[') {
            serde_json::from_str(value).unwrap()
        } else {
            value
                .split(',')
                .map(|n| serde_json::json!({"name": n.trim()}))
                .collect()
        };
        assert!(!entries.is_empty());
        for entry in entries {
            for key in entry.as_object().unwrap().keys() {
                assert!(
                    ["name", "interface", "ip", "mac", "defaultRoute"].contains(&key.as_str()),
                    "unknown annotation key {key}"
                );
            }
            let name = entry["name"].as_str().unwrap();
            let bn = networks
                .get(name)
                .unwrap_or_else(|| panic!("no example network {name}"));
            if let Some(ip) = entry.get("ip").and_then(Value::as_str) {
                let plan = net::resolve(name, &bn.spec).unwrap();
                assert!(
                    plan.v4.is_assignable(ip.parse().unwrap()),
                    "{ip} cannot be handed out on {name}"
                );
            }
            if let Some(interface) = entry.get("interface").and_then(Value::as_str) {
                assert!(bridgenet_crds::names::is_valid_ifname(interface));
            }
        }
    }
    assert_eq!(pods, 2);
}

#[test]
fn invalid_examples_are_refused_with_their_message() {
    let files = yaml_files(&examples_dir().join("invalid"));
    assert!(files.len() >= 2);
    for path in files {
        let file = path.display();
        let text = std::fs::read_to_string(&path).unwrap();
        let expect = text
            .lines()
            .find_map(|l| l.strip_prefix("# expect: "))
            .unwrap_or_else(|| panic!("{file}: no `# expect:` line"));
        let docs = documents(&path);
        assert_eq!(docs.len(), 1, "{file}");
        let doc = &docs[0];
        let mut seen: Vec<String> = openapi_failures(doc);
        seen.extend(cel_failures(doc, None).into_iter().map(|(_, m)| m));
        assert!(
            seen.iter().any(|s| s.contains(expect)),
            "{file}: expected a failure containing {expect:?}, got {seen:?}"
        );
        // Where no CEL runs, the operator refuses it too.
        let bn: BridgeNetwork = serde_json::from_value(doc.clone()).unwrap();
        assert!(
            net::resolve("x", &bn.spec).is_err(),
            "{file}: net::resolve accepts it"
        );
    }
}
