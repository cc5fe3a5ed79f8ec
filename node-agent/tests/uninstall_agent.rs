//! The agent binary's shutdown on the sandbox's Kubernetes API emulator: SIGTERM while its
//! DaemonSet exists (rolling update, restart) keeps the CNI chaining; SIGTERM after the
//! DaemonSet was deleted (uninstall) removes it, leaving the primary conflist exactly as it was,
//! and a single-plugin `.conf` the agent converted at start back in place, byte for byte.
//!
//! The emulator serves no built-in `apps/v1`, so the test registers `daemonsets.apps` as a
//! CustomResourceDefinition with the real group, version, kind and plural: the agent's requests
//! (GET and a `metadata.name` field-selected watch of
//! `/apis/apps/v1/namespaces/<ns>/daemonsets`) are the ones it makes against a real API server.
//! Needs root (`make root-test`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod dataplane_support;
mod root_support;

use dataplane_support::Node;
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use root_support::require_root;
use serde_json::{Value, json};

const NS: &str = "kube-system";
const DS: &str = "bridgenet-agent";
const POD: &str = "bridgenet-agent-x7k2p";

fn primary() -> Value {
    json!({"cniVersion": "1.0.0", "name": "k8s-pod-network", "plugins": [
        {"type": "bridge", "bridge": "cni0", "ipam": {"type": "host-local"}},
        {"type": "portmap", "capabilities": {"portMappings": true}},
    ]})
}

fn conflist(node: &Node) -> Value {
    serde_json::from_slice(&std::fs::read(node.dir().join("net.d/10-primary.conflist")).unwrap())
        .unwrap()
}

fn chained(node: &Node) -> bool {
    conflist(node)["plugins"]
        .as_array()
        .unwrap()
        .iter()
        .any(|p| p["type"] == "bridgenet")
}

/// The agent's log without terminal colour sequences (`ESC [ ... m`).
fn log(node: &Node) -> String {
    let raw = node.agent_log();
    let mut out = String::with_capacity(raw.len());
    let mut chars = raw.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c == 'm' {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn daemonset_crd() -> CustomResourceDefinition {
    serde_json::from_value(json!({
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": "daemonsets.apps"},
        "spec": {"group": "apps", "scope": "Namespaced",
                 "names": {"plural": "daemonsets", "singular": "daemonset", "kind": "DaemonSet",
                           "listKind": "DaemonSetList"},
                 "versions": [{"name": "v1", "served": true, "storage": true,
                               "schema": {"openAPIV3Schema": {"type": "object",
                                          "x-kubernetes-preserve-unknown-fields": true}}}]},
    }))
    .unwrap()
}

/// Creates the DaemonSet and the agent's Pod controlled by it; returns nothing, panics on error.
fn create_daemonset_and_pod(node: &Node) {
    node.kube(|c| async move {
        let dss: Api<DaemonSet> = Api::namespaced(c.clone(), NS);
        let ds: DaemonSet = serde_json::from_value(json!({
            "apiVersion": "apps/v1", "kind": "DaemonSet", "metadata": {"name": DS, "namespace": NS},
        }))
        .unwrap();
        let ds = dss.create(&PostParams::default(), &ds).await.unwrap();
        let pod: Pod = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": POD, "namespace": NS, "ownerReferences": [{
                "apiVersion": "apps/v1", "kind": "DaemonSet", "name": DS,
                "uid": ds.uid().unwrap(), "controller": true, "blockOwnerDeletion": true}]},
            // Another node: nothing for the agent's attachment side to do with it.
            "spec": {"nodeName": "n-other", "containers": [{"name": "agent", "image": "x"}]},
        }))
        .unwrap();
        Api::<Pod>::namespaced(c, NS)
            .create(&PostParams::default(), &pod)
            .await
            .unwrap();
    });
}

/// A node with its API emulator serving the CRDs, the agent's DaemonSet and the agent's Pod, and
/// an empty CNI configuration directory.
fn node_with_daemonset(tag: &str) -> Node {
    let node = Node::new(tag, env!("CARGO_BIN_EXE_bridgenet-agent"));
    node.kube(|c| async move {
        let crds: Api<CustomResourceDefinition> = Api::all(c);
        let pp = PatchParams::apply("bridgenet-test").force();
        for crd in bridgenet_crds::crdgen::all()
            .into_iter()
            .chain([daemonset_crd()])
        {
            crds.patch(&crd.name_any(), &pp, &Patch::Apply(&crd))
                .await
                .unwrap();
        }
    });
    // The emulator takes a moment to serve a new CRD's group.
    node.eventually("apps/v1 daemonsets served", || {
        node.kube(|c| async move {
            Api::<DaemonSet>::namespaced(c, NS)
                .list(&Default::default())
                .await
                .is_ok()
        })
    });
    create_daemonset_and_pod(&node);
    std::fs::create_dir_all(node.dir().join("net.d")).unwrap();
    node
}

/// Deletes the agent's DaemonSet the way Helm does (background propagation) and waits until
/// the agent's watch has seen it.
fn delete_daemonset(node: &Node) {
    node.kube(|c| async move {
        Api::<DaemonSet>::namespaced(c, NS)
            .delete(DS, &DeleteParams::background())
            .await
            .unwrap();
    });
    node.eventually("DaemonSet deletion seen by the watch", || {
        log(node).contains("state=Gone")
    });
}

#[test]
#[ignore = "needs root"]
fn sigterm_unchains_only_when_the_daemonset_is_gone() {
    require_root();
    let mut node = node_with_daemonset("uninst");
    std::fs::write(
        node.dir().join("net.d/10-primary.conflist"),
        serde_json::to_vec_pretty(&primary()).unwrap(),
    )
    .unwrap();
    let env = [("POD_NAME", POD), ("POD_NAMESPACE", NS)];

    // A restart: the DaemonSet stays, so does the chaining.
    node.start_agent_with_env(&env);
    node.eventually("chained at start", || chained(&node));
    node.eventually("DaemonSet seen present", || {
        log(&node).contains("state=Present")
    });
    assert!(node.terminate_agent().success(), "{}", node.agent_log());
    assert!(
        chained(&node),
        "a restart must keep the chaining; log:\n{}",
        node.agent_log()
    );
    assert!(
        log(&node).contains("keeping the CNI chaining"),
        "{}",
        node.agent_log()
    );

    // An uninstall: the DaemonSet is deleted (background propagation, as Helm does), then the
    // agent gets SIGTERM.
    node.start_agent_with_env(&env);
    node.eventually("DaemonSet seen present again", || {
        log(&node).contains("state=Present")
    });
    delete_daemonset(&node);
    assert!(chained(&node), "nothing unchains before SIGTERM");
    assert!(node.terminate_agent().success(), "{}", node.agent_log());
    assert_eq!(
        conflist(&node),
        primary(),
        "uninstall must leave the primary conflist as it was; log:\n{}",
        node.agent_log()
    );
    assert!(
        log(&node).contains("uninstall: removed bridgenet from the CNI configuration"),
        "{}",
        node.agent_log()
    );
}

/// A single-plugin `.conf` primary: the agent converts it into a conflist at start, and its
/// uninstall gives the `.conf` back byte for byte, with nothing else left in the directory.
#[test]
#[ignore = "needs root"]
fn uninstall_gives_back_a_converted_single_plugin_conf() {
    require_root();
    let mut node = node_with_daemonset("uninsc");
    let net_d = node.dir().join("net.d");
    let single = b"{ \"cniVersion\": \"1.0.0\", \"name\": \"containerd-net\",\n  \"type\": \"bridge\", \"bridge\": \"cni0\", \"ipam\": {\"type\": \"host-local\"} }\n";
    std::fs::write(net_d.join("10-containerd-net.conf"), single).unwrap();
    let files = || {
        let mut names: Vec<String> = std::fs::read_dir(&net_d)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    };
    node.start_agent_with_env(&[("POD_NAME", POD), ("POD_NAMESPACE", NS)]);
    node.eventually("converted at start", || {
        files()
            == [
                "10-containerd-net.conf.bridgenet-orig",
                "10-containerd-net.conflist",
            ]
    });
    let conflist: Value =
        serde_json::from_slice(&std::fs::read(net_d.join("10-containerd-net.conflist")).unwrap())
            .unwrap();
    assert_eq!(conflist["name"], "containerd-net");
    assert_eq!(conflist["plugins"][0]["type"], "bridge");
    assert_eq!(conflist["plugins"][1]["type"], "bridgenet");
    node.eventually("DaemonSet seen present", || {
        log(&node).contains("state=Present")
    });
    delete_daemonset(&node);
    assert!(node.terminate_agent().success(), "{}", node.agent_log());
    assert_eq!(files(), ["10-containerd-net.conf"], "{}", node.agent_log());
    assert_eq!(
        std::fs::read(net_d.join("10-containerd-net.conf")).unwrap(),
        single,
        "the original, byte for byte; log:\n{}",
        node.agent_log()
    );
}
