//! Tests of the generated CRDs: the committed YAML is what the types generate, the schemas are
//! structural and their CEL rules bounded in cost, every CEL and OpenAPI rule accepts and rejects
//! what it should with the message a user would see, and every example in `examples/` passes.
//!
//! CEL rules run client-side through kube's `cel` feature (the `kube-cel` port of the Kubernetes
//! CEL libraries); OpenAPI bounds run through `jsonschema` on the CRD's `openAPIV3Schema`. Both
//! read the CRD exactly as `crdgen` writes it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod agreement;
mod cel;
mod drift;
mod examples;
mod openapi;
mod real_server;
mod schema;

use std::path::PathBuf;

use bridgenet_crds::{BridgeNetwork, NodeBridge};
use kube::CustomResourceExt;
use serde_json::{Value, json};

/// Every CRD as JSON, as `crdgen` renders it.
pub fn crds() -> Vec<Value> {
    vec![
        serde_json::to_value(BridgeNetwork::crd()).unwrap(),
        serde_json::to_value(NodeBridge::crd()).unwrap(),
    ]
}

/// The `openAPIV3Schema` of a CRD's first (only) version.
pub fn open_api_schema(crd: &Value) -> &Value {
    &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
}

/// The BridgeNetwork CRD's schema.
pub fn bridge_network_schema() -> Value {
    open_api_schema(&serde_json::to_value(BridgeNetwork::crd()).unwrap()).clone()
}

/// A BridgeNetwork object with the given spec, as JSON (what `kubectl apply` would send).
pub fn bn_object(name: &str, spec: Value) -> Value {
    json!({
        "apiVersion": "bridgenet.io/v1alpha1",
        "kind": "BridgeNetwork",
        "metadata": {"name": name},
        "spec": spec,
    })
}

/// The workspace's `examples/` directory.
pub fn examples_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples")
}

/// CEL failures of `object` (and `old`, for an update) as `(field path, message)` pairs, in
/// the order the validator reports them. Evaluation errors are failures too, with their text.
pub fn cel_failures(object: &Value, old: Option<&Value>) -> Vec<(String, String)> {
    match kube::core::cel::Validator::new().validate(&bridge_network_schema(), object, old) {
        Ok(()) => vec![],
        Err(errors) => errors
            .iter()
            .map(|e| (e.field_path.clone(), e.message.clone()))
            .collect(),
    }
}
