//! The pure planner: from a BridgeNetwork, the other networks, the nodes and the existing
//! NodeBridges, decide what every node's NodeBridge should say, which NodeBridges go, and the
//! network's status. No I/O; the controller executes the plan.
//!
//! Each decision has its module: [`admission`] (accepted or refused, and the VNI),
//! [`children`] (the NodeBridges and their digests), [`crate::blocks`] (each node's address
//! blocks), [`crate::status`] (the status aggregated from all of them), [`cleanup`] (deleting a
//! network) and [`orphans`] (endpoints of deleted nodes). All of them read what the API holds
//! through [`crate::observed`]; none imports this module back.

pub mod admission;
pub mod children;
pub mod cleanup;
pub mod orphans;
mod settings;

use std::sync::Arc;

use bridgenet_crds::net::ResolvedNetwork;
use bridgenet_crds::v1alpha1::{BridgeNetwork, BridgeNetworkStatus, NodeBridge, TunnelEndpoint};
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::ResourceExt;

pub use admission::{RejectReason, VNI_MAX, VNI_MIN, Verdict, admit_all, contend};
pub use children::{
    Children, Member, PEERS_DIGEST_ANNOTATION, node_address, node_bridge_name, peers_digest,
    strip_peers,
};
pub use cleanup::{CleanupPlan, CleanupWait, force_delete, plan_cleanup};
pub use settings::Settings;

use crate::blocks;
use crate::observed::Membership;
use crate::status::{self, PlannedEvent};

/// Everything the planner reads about one network.
pub struct PlanInput<'a> {
    /// The network.
    pub network: &'a BridgeNetwork,
    /// Its verdict from [`admit_all`].
    pub verdict: &'a Verdict,
    /// Every node in the cluster.
    pub nodes: &'a [Arc<Node>],
    /// NodeBridges; those not labelled for this network are ignored.
    pub existing: &'a [Arc<NodeBridge>],
    /// Operator settings.
    pub settings: &'a Settings,
    /// The time to stamp on conditions that change.
    pub now: &'a Time,
}

/// What to do for one network.
#[derive(Clone, Debug)]
pub struct NetworkPlan {
    /// The status to write (equal to the current one when nothing changed).
    pub status: BridgeNetworkStatus,
    /// Events for condition changes.
    pub events: Vec<PlannedEvent>,
    /// NodeBridges; `None` when the network is refused: nothing is created for it, and
    /// whatever exists from before is left alone rather than pulled from under running pods.
    pub children: Option<Children>,
    /// The network's overlay: the nodes with its pods, for its `NetworkOverlay`; `None` when
    /// the network is refused (whatever exists from before is left alone, like its children).
    pub overlay: Option<Vec<TunnelEndpoint>>,
    /// The refusal, if any.
    pub rejection: Option<(RejectReason, String)>,
    /// Blocks assigned to nodes (IPv4 and IPv6), for the metric.
    pub blocks_used: usize,
}

/// Plans one network.
pub fn plan_network(input: &PlanInput<'_>) -> NetworkPlan {
    let net = input.network;
    let prev = net.status.clone().unwrap_or_default();
    let generation = net.metadata.generation;
    match input.verdict {
        Verdict::Rejected { reason, message } => {
            let status = status::rejected(&prev, reason.reason(), message, generation, input.now);
            NetworkPlan {
                events: status::transition_events(&prev.conditions, &status.conditions),
                blocks_used: status.blocks.len(),
                status,
                children: None,
                overlay: None,
                rejection: Some((*reason, message.clone())),
            }
        }
        Verdict::Accepted { resolved, vni } => plan_accepted(input, resolved, *vni, prev),
    }
}

fn plan_accepted(
    input: &PlanInput<'_>,
    resolved: &ResolvedNetwork,
    vni: u32,
    prev: BridgeNetworkStatus,
) -> NetworkPlan {
    let net = input.network;
    // Admission checked the selector; an unparsable one cannot reach here.
    let node_selector = admission::parse_selector("nodeSelector", net.spec.node_selector.as_ref())
        .unwrap_or_default();
    let membership = Membership::new(&net.name_any(), &node_selector, input.nodes, input.existing);
    let blocks = blocks::decide(resolved, &prev, &membership);
    let children = children::plan_children(
        net,
        resolved,
        vni,
        input.settings.default_mtu,
        &membership,
        &blocks,
    );
    let status = status::accepted(
        &prev,
        &status::AcceptedFacts {
            resolved,
            vni,
            generation: net.metadata.generation,
            now: input.now,
            membership: &membership,
            blocks: &blocks,
            not_ready: children.not_ready(),
            dns: net.spec.dns,
        },
    );
    NetworkPlan {
        events: status::transition_events(&prev.conditions, &status.conditions),
        blocks_used: blocks.len(),
        status,
        children: Some(children),
        overlay: Some(status::tunnel_endpoints(&membership)),
        rejection: None,
    }
}
