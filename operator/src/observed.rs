//! What the planner observes about one network: its nodes and its NodeBridges as the API
//! holds them, with the agents' reports read from their status. The bottom of the planner's
//! modules: [`crate::blocks`], [`crate::status`] and [`crate::plan`] read it, it reads none of
//! them.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use bridgenet_crds::conditions::{READY, condition};
use bridgenet_crds::v1alpha1::NodeBridge;
use bridgenet_crds::{LABEL_NETWORK, LABEL_NODE};
use k8s_openapi::api::core::v1::Node;
use kube::ResourceExt;
use kube::core::{Selector, SelectorExt};

/// The network and node labels of a NodeBridge.
pub(crate) fn labels_of(nb: &NodeBridge) -> (Option<&str>, Option<&str>) {
    let l = nb.metadata.labels.as_ref();
    (
        l.and_then(|l| l.get(LABEL_NETWORK)).map(String::as_str),
        l.and_then(|l| l.get(LABEL_NODE)).map(String::as_str),
    )
}

/// The node a NodeBridge is for (its label, else its spec).
pub(crate) fn node_of(nb: &NodeBridge) -> &str {
    labels_of(nb).1.unwrap_or(&nb.spec.node)
}

/// The underlay address of a node: its first IPv4 `InternalIP`, else its first `InternalIP`.
pub fn node_address(node: &Node) -> Option<String> {
    let addrs = node.status.as_ref()?.addresses.as_ref()?;
    let internal = addrs.iter().filter(|a| a.type_ == "InternalIP");
    internal
        .clone()
        .find(|a| a.address.parse::<std::net::Ipv4Addr>().is_ok())
        .or_else(|| internal.clone().next())
        .map(|a| a.address.clone())
}

/// Whether the NodeBridge is terminating.
pub(crate) fn is_deleting(nb: &NodeBridge) -> bool {
    nb.metadata.deletion_timestamp.is_some()
}

/// The nodes an accepted network is on, and the NodeBridges it has.
pub(crate) struct Membership<'a> {
    /// Every node in the cluster, terminating or not.
    pub all_nodes: BTreeSet<&'a str>,
    /// Nodes the selector matches that are not terminating, sorted by name.
    pub selected: Vec<&'a Node>,
    /// Names of `selected`, in the same order.
    pub names: Vec<String>,
    /// `names` as a set.
    pub member_set: BTreeSet<String>,
    /// The NodeBridges labelled for this network.
    pub mine: Vec<&'a Arc<NodeBridge>>,
    /// `mine` by the node each is for.
    pub by_node: BTreeMap<&'a str, Vec<&'a Arc<NodeBridge>>>,
}

impl<'a> Membership<'a> {
    /// Selects the members of network `name` among `nodes`, and its NodeBridges among `existing`.
    pub fn new(
        name: &str,
        node_selector: &Selector,
        nodes: &'a [Arc<Node>],
        existing: &'a [Arc<NodeBridge>],
    ) -> Self {
        let all_nodes: BTreeSet<&str> = nodes
            .iter()
            .map(|n| n.metadata.name.as_deref().unwrap_or(""))
            .collect();
        let mut selected: Vec<&Node> = nodes
            .iter()
            .map(AsRef::as_ref)
            .filter(|n| n.metadata.deletion_timestamp.is_none())
            .filter(|n| {
                node_selector.matches(n.metadata.labels.as_ref().unwrap_or(&BTreeMap::new()))
            })
            .collect();
        selected.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
        let names: Vec<String> = selected.iter().map(|n| n.name_any()).collect();
        let member_set = names.iter().cloned().collect();

        let mine: Vec<&Arc<NodeBridge>> = existing
            .iter()
            .filter(|nb| labels_of(nb).0 == Some(name))
            .collect();
        let mut by_node: BTreeMap<&str, Vec<&Arc<NodeBridge>>> = BTreeMap::new();
        for nb in &mine {
            by_node.entry(node_of(nb)).or_default().push(nb);
        }
        Self {
            all_nodes,
            selected,
            names,
            member_set,
            mine,
            by_node,
        }
    }

    /// The live (not terminating) NodeBridge of `node`, the one its agent reports on.
    pub fn live(&self, node: &str) -> Option<&'a Arc<NodeBridge>> {
        self.by_node
            .get(node)
            .and_then(|v| v.iter().find(|nb| !is_deleting(nb)))
            .copied()
    }
}

/// Whether a NodeBridge's agent reports it programmed for its current spec.
pub fn node_bridge_ready(nb: &NodeBridge) -> bool {
    let Some(status) = &nb.status else {
        return false;
    };
    let ready = condition(&status.conditions, READY).is_some_and(|c| c.status == "True");
    // Servers that keep no generation (the test emulator) leave both unset: then the
    // condition alone counts.
    let current = match nb.metadata.generation {
        Some(generation) => status.observed_generation == Some(generation),
        None => true,
    };
    ready && current
}

/// Endpoints a NodeBridge reports (the list, or the count if the agent only sends that).
pub fn endpoint_count(nb: &NodeBridge) -> i32 {
    nb.status.as_ref().map_or(0, |s| {
        s.endpoint_count
            .max(i32::try_from(s.endpoints.len()).unwrap_or(i32::MAX))
    })
}
