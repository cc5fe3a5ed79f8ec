//! Endpoints orphaned by a deleted node.
//!
//! A node that no longer exists has no agent to report its pods detached, so its NodeBridge
//! can list endpoints for good, holding the node's blocks and any deletion of the network.
//! Such endpoints count only while their pods are still bound to that node; once the pods are
//! gone (Kubernetes' pod garbage collector deletes the pods of a deleted node) the NodeBridge
//! is planned as listing none: its blocks are released, its agent finalizer let go, and
//! deleting the network is not held by pods that no longer exist. When in doubt (the pods
//! could not be listed, or a truncated endpoint list sits next to remaining pods) the
//! endpoints stay.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use bridgenet_crds::v1alpha1::NodeBridge;
use k8s_openapi::api::core::v1::Node;
use kube::ResourceExt;

use crate::observed::{endpoint_count, labels_of, node_of};

/// `(namespace, name)` of the pods bound to one node.
pub type BoundPods = HashSet<(String, String)>;

/// Nodes whose bound pods must be listed before planning `network`: deleted nodes whose
/// NodeBridge of this network still lists endpoints. In order of first appearance, each once.
pub fn nodes_to_check(
    network: &str,
    nodes: &[Arc<Node>],
    existing: &[Arc<NodeBridge>],
) -> Vec<String> {
    let live_nodes: HashSet<String> = nodes.iter().map(|n| n.name_any()).collect();
    let mut out: Vec<String> = Vec::new();
    for nb in existing {
        if is_candidate(nb, network, &live_nodes) {
            let node = node_of(nb);
            if !out.iter().any(|n| n == node) {
                out.push(node.to_owned());
            }
        }
    }
    out
}

/// Only this network's NodeBridges of deleted nodes that list endpoints: the planner looks at
/// no other, so neither do the pod lists.
fn is_candidate(nb: &NodeBridge, network: &str, live_nodes: &HashSet<String>) -> bool {
    labels_of(nb).0 == Some(network) && !live_nodes.contains(node_of(nb)) && endpoint_count(nb) != 0
}

/// The NodeBridges as the planner should see them, given the pods bound to each node of
/// [`nodes_to_check`] (`None`: the API could not say). Also says whether any orphan candidate
/// kept its endpoints: nothing the controller watches changes when the pod garbage collector
/// runs, so the caller looks again soon.
pub fn without_orphaned_endpoints(
    network: &str,
    nodes: &[Arc<Node>],
    existing: Vec<Arc<NodeBridge>>,
    pods_on: &HashMap<String, Option<BoundPods>>,
) -> (Vec<Arc<NodeBridge>>, bool) {
    let mut waiting = false;
    let live_nodes: HashSet<String> = nodes.iter().map(|n| n.name_any()).collect();
    let mut out = Vec::with_capacity(existing.len());
    for nb in existing {
        if !is_candidate(&nb, network, &live_nodes) {
            out.push(nb);
            continue;
        }
        let node = node_of(&nb).to_owned();
        let Some(Some(bound)) = pods_on.get(&node) else {
            waiting = true;
            out.push(nb);
            continue;
        };
        let Some(status) = &nb.status else {
            out.push(nb);
            continue;
        };
        let listed_all =
            usize::try_from(status.endpoint_count).unwrap_or(0) <= status.endpoints.len();
        let any_live = status
            .endpoints
            .iter()
            .any(|e| bound.contains(&(e.namespace.clone(), e.pod.clone())));
        if any_live || (!listed_all && !bound.is_empty()) {
            waiting = true;
            out.push(nb);
            continue;
        }
        tracing::info!(nodebridge = %nb.name_any(), %node, endpoints = status.endpoint_count,
            "node no longer exists and none of its listed pods is bound to it; planning without them");
        let mut view = (*nb).clone();
        if let Some(st) = view.status.as_mut() {
            st.endpoints.clear();
            st.endpoint_count = 0;
        }
        out.push(Arc::new(view));
    }
    (out, waiting)
}
