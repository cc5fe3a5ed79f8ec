//! Deleting a network: held while pods are attached (unless forced), then every NodeBridge is
//! deleted, and the network's finalizer goes once the agents have let them go.

use std::collections::BTreeSet;
use std::sync::Arc;

use bridgenet_crds::v1alpha1::{BridgeNetwork, BridgeNetworkStatus, NodeBridge};
use bridgenet_crds::{ANNOTATION_FORCE_DELETE, FINALIZER_AGENT};
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::ResourceExt;

use crate::observed::{is_deleting, labels_of, node_of};
use crate::status::{self, PlannedEvent};

/// What deleting a network takes.
#[derive(Clone, Debug, Default)]
pub struct CleanupPlan {
    /// Pods still attached (`namespace/pod on node`); non-empty means deletion is held.
    pub blocked_by: Vec<String>,
    /// NodeBridges to delete now.
    pub deletes: Vec<String>,
    /// Terminating NodeBridges of nodes that no longer exist: their agent finalizer is removed.
    pub release_agent_finalizer: Vec<Arc<NodeBridge>>,
    /// NodeBridges that still exist; the network's finalizer stays until none does.
    pub remaining: usize,
    /// The status to write, when it changes.
    pub status: Option<BridgeNetworkStatus>,
    /// Events for condition changes.
    pub events: Vec<PlannedEvent>,
}

/// What a deletion step leaves the network waiting for, once its writes are done.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CleanupWait {
    /// Pods are attached; names up to five of them.
    Blocked(String),
    /// This many NodeBridges are still being torn down by their agents.
    Teardown(usize),
}

impl CleanupPlan {
    /// What deletion waits for after this step; `None` when the finalizer can go.
    pub fn waiting_for(&self) -> Option<CleanupWait> {
        if !self.blocked_by.is_empty() {
            Some(CleanupWait::Blocked(status::name_list(&self.blocked_by, 5)))
        } else if self.remaining > 0 {
            Some(CleanupWait::Teardown(self.remaining))
        } else {
            None
        }
    }
}

/// Whether the network carries `bridgenet.io/force-delete: "true"`.
pub fn force_delete(net: &BridgeNetwork) -> bool {
    net.annotations()
        .get(ANNOTATION_FORCE_DELETE)
        .is_some_and(|v| v == "true")
}

/// Plans one step of deleting `net`: held while pods are attached (unless forced), then every
/// NodeBridge is deleted, and the network's finalizer goes once the agents have let them go.
pub fn plan_cleanup(
    net: &BridgeNetwork,
    nodes: &[Arc<Node>],
    existing: &[Arc<NodeBridge>],
    now: &Time,
) -> CleanupPlan {
    let name = net.name_any();
    let generation = net.metadata.generation;
    let mine: Vec<&Arc<NodeBridge>> = existing
        .iter()
        .filter(|nb| labels_of(nb).0 == Some(name.as_str()))
        .collect();
    let forced = force_delete(net);
    let mut plan = CleanupPlan::default();
    if !forced {
        for nb in &mine {
            let node = node_of(nb);
            let Some(st) = &nb.status else { continue };
            for ep in &st.endpoints {
                plan.blocked_by
                    .push(format!("{}/{} on {node}", ep.namespace, ep.pod));
            }
            let unnamed = i64::from(st.endpoint_count) - st.endpoints.len() as i64;
            if unnamed > 0 && st.endpoints.is_empty() {
                plan.blocked_by
                    .push(format!("{unnamed} endpoints on {node}"));
            }
        }
        plan.blocked_by.sort();
    }
    let all_nodes: BTreeSet<&str> = nodes
        .iter()
        .filter_map(|n| n.metadata.name.as_deref())
        .collect();
    if plan.blocked_by.is_empty() {
        for nb in &mine {
            if !is_deleting(nb) {
                plan.deletes.push(nb.name_any());
            } else if !all_nodes.contains(node_of(nb))
                && nb.finalizers().iter().any(|f| f == FINALIZER_AGENT)
            {
                plan.release_agent_finalizer.push((*nb).clone());
            }
        }
        plan.remaining = mine.len();
        // The cache's order is a hash map's: sort so that the same input gives the same plan.
        plan.deletes.sort();
        plan.release_agent_finalizer.sort_by_key(|nb| nb.name_any());
    }

    let prev = net.status.clone().unwrap_or_default();
    let mut status = prev.clone();
    status::set_condition(
        &mut status.conditions,
        status::deleting(&plan.blocked_by, plan.remaining),
        generation,
        now,
    );
    // With nothing left the object is about to go: a status write would be wasted.
    let worth_saying = !plan.blocked_by.is_empty() || plan.remaining > 0;
    if worth_saying && status != prev {
        plan.events = status::transition_events(&prev.conditions, &status.conditions);
        plan.status = Some(status);
    }
    plan
}
