//! What users read in `kubectl get/describe bridgenetwork`: the status a plan aggregates from
//! the blocks, the children and the agents' reports, its conditions (with stable
//! `lastTransitionTime`, see [`set_condition`]), and the Events that go with condition changes.

use bridgenet_crds::net::{Family, ResolvedNetwork};
use bridgenet_crds::v1alpha1::{BlockAssignment, BridgeNetworkStatus, TunnelEndpoint};
use ipnet::IpNet;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use crate::blocks::{self, BlockPlan};
use crate::observed::{Membership, endpoint_count, node_address};

pub use bridgenet_crds::conditions::{
    ACCEPTED, READY, RESOLVER_READY, Reason, condition, set_condition,
};

/// A condition to set: type, status, reason and message.
pub type Cond = bridgenet_crds::conditions::Cond<'static>;

/// An Event to publish about the network.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlannedEvent {
    /// Warning rather than Normal.
    pub warning: bool,
    /// CamelCase reason.
    pub reason: String,
    /// Human-readable note.
    pub note: String,
}

/// Events for condition changes between `before` and `after`: a refusal or a blocked state
/// is announced once when it starts (or its reason changes), acceptance after a refusal once.
pub fn transition_events(before: &[Condition], after: &[Condition]) -> Vec<PlannedEvent> {
    let mut events = Vec::new();
    let changed = |type_: &str| {
        let b = condition(before, type_);
        let a = condition(after, type_);
        match (b, a) {
            (_, None) => None,
            (Some(b), Some(a)) if b.status == a.status && b.reason == a.reason => None,
            (b, Some(a)) => Some((b, a)),
        }
    };
    if let Some((b, a)) = changed(ACCEPTED) {
        if a.status == "False" {
            events.push(PlannedEvent {
                warning: true,
                reason: a.reason.clone(),
                note: a.message.clone(),
            });
        } else if b.is_some_and(|b| b.status == "False") {
            events.push(PlannedEvent {
                warning: false,
                reason: Reason::Accepted.as_str().to_owned(),
                note: a.message.clone(),
            });
        }
    }
    if let Some((_, a)) = changed(READY)
        && a.status == "False"
        && matches!(
            a.reason.parse(),
            Ok(Reason::AddressesExhausted | Reason::DeletionBlocked)
        )
    {
        events.push(PlannedEvent {
            warning: true,
            reason: a.reason.clone(),
            note: a.message.clone(),
        });
    }
    events
}

/// `ready/total`, the READY NODES column.
pub fn ready_summary(ready: i32, total: i32) -> String {
    format!("{ready}/{total}")
}

/// Joins up to `max` names, saying how many more there are.
pub fn name_list(names: &[String], max: usize) -> String {
    let mut s = names
        .iter()
        .take(max)
        .cloned()
        .collect::<Vec<_>>()
        .join(", ");
    if names.len() > max {
        s.push_str(&format!(" and {} more", names.len() - max));
    }
    s
}

/// The status of a refused network: `Accepted=False` with the refusal, `Ready=False`; the rest
/// (blocks included) stays as it was, for NodeBridges that may still exist from before.
pub(crate) fn rejected(
    prev: &BridgeNetworkStatus,
    why: Reason,
    message: &str,
    generation: Option<i64>,
    now: &Time,
) -> BridgeNetworkStatus {
    let mut status = prev.clone();
    status.observed_generation = generation;
    set_condition(
        &mut status.conditions,
        Cond {
            type_: ACCEPTED,
            status: false,
            reason: why.as_str(),
            message: message.to_owned(),
        },
        generation,
        now,
    );
    set_condition(
        &mut status.conditions,
        Cond {
            type_: READY,
            status: false,
            reason: Reason::NotAccepted.as_str(),
            message: format!("not programmed on any node: {}", why.as_str()),
        },
        generation,
        now,
    );
    status
}

/// What the status of an accepted network is aggregated from.
pub(crate) struct AcceptedFacts<'a> {
    /// The spec with defaults filled in.
    pub resolved: &'a ResolvedNetwork,
    /// Its VNI.
    pub vni: u32,
    /// The generation the status describes.
    pub generation: Option<i64>,
    /// The time to stamp on conditions that change.
    pub now: &'a Time,
    /// Members and NodeBridges (with the agents' reports).
    pub membership: &'a Membership<'a>,
    /// The planned blocks.
    pub blocks: &'a BlockPlan,
    /// Members whose NodeBridge is not ready (see `Children::not_ready`).
    pub not_ready: Vec<String>,
    /// The network's `dns` (its resolver on every node).
    pub dns: bool,
}

/// The status of an accepted network: what is in effect, the blocks, the counts, and the
/// `Accepted` and `Ready` conditions.
pub(crate) fn accepted(prev: &BridgeNetworkStatus, f: &AcceptedFacts<'_>) -> BridgeNetworkStatus {
    let v4 = &f.resolved.v4;
    let vni = f.vni;
    let total = f.membership.names.len();
    let not_ready = &f.not_ready;
    let ready = total - not_ready.len();
    let endpoints: i32 = f.membership.mine.iter().map(|nb| endpoint_count(nb)).sum();
    let free = blocks::free_v4(f.resolved, &f.blocks.v4, f.membership);

    let mut assigned: Vec<(IpNet, String)> = f
        .blocks
        .v4
        .by_node
        .iter()
        .chain(f.blocks.v6.iter().flat_map(|a| a.by_node.iter()))
        .flat_map(|(node, blocks)| blocks.iter().map(move |b| (*b, node.clone())))
        .collect();
    assigned.sort_by_key(|(b, _)| (Family::of_net(b), b.network()));

    let mut status = prev.clone();
    status.observed_generation = f.generation;
    status.gateway = Some(v4.gateway.to_string());
    status.gateway_v6 = f.resolved.v6.as_ref().map(|p| p.gateway.to_string());
    status.bridge = Some(f.resolved.bridge.clone());
    status.vni = Some(vni);
    status.total_nodes = i32::try_from(total).unwrap_or(i32::MAX);
    status.ready_nodes = i32::try_from(ready).unwrap_or(i32::MAX);
    status.ready_summary = Some(ready_summary(status.ready_nodes, status.total_nodes));
    status.endpoints = endpoints;
    status.free_addresses = Some(i64::try_from(free.max(0)).unwrap_or(i64::MAX));
    status.blocks = assigned
        .iter()
        .map(|(b, node)| BlockAssignment {
            cidr: b.to_string(),
            node: node.clone(),
        })
        .collect();

    let mut summary = format!(
        "subnet {}, gateway {}, bridge {}, VNI {vni}",
        v4.subnet, v4.gateway, f.resolved.bridge
    );
    if let Some(v6) = &f.resolved.v6 {
        summary.push_str(&format!(
            ", IPv6 subnet {} gateway {}",
            v6.subnet, v6.gateway
        ));
    }
    set_condition(
        &mut status.conditions,
        Cond {
            type_: ACCEPTED,
            status: true,
            reason: Reason::Accepted.as_str(),
            message: summary,
        },
        f.generation,
        f.now,
    );
    let unmet = f.blocks.unmet();
    let ready_cond = if total == 0 {
        Cond {
            type_: READY,
            status: false,
            reason: Reason::NoMatchingNodes.as_str(),
            message: "the nodeSelector matches no node".to_owned(),
        }
    } else if !unmet.is_empty() {
        Cond {
            type_: READY,
            status: false,
            reason: Reason::AddressesExhausted.as_str(),
            message: format!(
                "{} has no free /{} block left for: {} ({} blocks in use); pods on those nodes get no address until blocks are released or a larger network is used",
                v4.range,
                v4.block_prefix,
                name_list(&unmet, 5),
                status.blocks.len()
            ),
        }
    } else if not_ready.is_empty() {
        Cond {
            type_: READY,
            status: true,
            reason: Reason::AllNodesReady.as_str(),
            message: format!("{ready}/{total} nodes ready"),
        }
    } else {
        Cond {
            type_: READY,
            status: false,
            reason: Reason::NodesNotReady.as_str(),
            message: format!(
                "{ready}/{total} nodes ready; waiting for {}",
                name_list(not_ready, 5)
            ),
        }
    };
    set_condition(&mut status.conditions, ready_cond, f.generation, f.now);
    if let Some(cond) = resolver_condition(f, &v4.gateway.to_string()) {
        set_condition(&mut status.conditions, cond, f.generation, f.now);
    }
    status
}

/// The member nodes with pods of the network (endpoints their agents report) and an underlay
/// address, sorted by node: where the overlay floods (the network's `NetworkOverlay`). Changes
/// only when a node gains its first pod of the network or loses its last one, or such a
/// member's address changes.
pub(crate) fn tunnel_endpoints(membership: &Membership<'_>) -> Vec<TunnelEndpoint> {
    membership
        .selected
        .iter()
        .filter(|node| {
            membership
                .live(node.metadata.name.as_deref().unwrap_or_default())
                .is_some_and(|nb| endpoint_count(nb) > 0)
        })
        .filter_map(|node| {
            Some(TunnelEndpoint {
                node: node.metadata.name.clone()?,
                address: node_address(node)?,
            })
        })
        .collect()
}

/// `ResolverReady`: the network's DNS answers on every member node (each agent reports its
/// own in its NodeBridge). None while the network has no node.
fn resolver_condition(f: &AcceptedFacts<'_>, gateway: &str) -> Option<Cond> {
    if !f.dns {
        return Some(Cond {
            type_: RESOLVER_READY,
            status: false,
            reason: Reason::DnsDisabled.as_str(),
            message: "dns is off for this network".to_owned(),
        });
    }
    let total = f.membership.names.len();
    if total == 0 {
        return None;
    }
    let waiting: Vec<String> = f
        .membership
        .names
        .iter()
        .filter(|node| {
            !f.membership.live(node).is_some_and(|nb| {
                nb.status.as_ref().is_some_and(|s| {
                    condition(&s.conditions, RESOLVER_READY).is_some_and(|c| c.status == "True")
                })
            })
        })
        .cloned()
        .collect();
    let serving = total - waiting.len();
    Some(if waiting.is_empty() {
        Cond {
            type_: RESOLVER_READY,
            status: true,
            reason: Reason::Serving.as_str(),
            message: format!("answering DNS at {gateway} on {serving}/{total} nodes"),
        }
    } else {
        Cond {
            type_: RESOLVER_READY,
            status: false,
            reason: Reason::NodesNotReady.as_str(),
            message: format!(
                "answering DNS on {serving}/{total} nodes; waiting for {}",
                name_list(&waiting, 5)
            ),
        }
    })
}

/// The `Ready` condition of a network being deleted: held by the pods in `blocked_by`, else
/// waiting for `remaining` NodeBridges to be torn down.
pub(crate) fn deleting(blocked_by: &[String], remaining: usize) -> Cond {
    if !blocked_by.is_empty() {
        Cond {
            type_: READY,
            status: false,
            reason: Reason::DeletionBlocked.as_str(),
            message: format!(
                "deletion waits for {} attached pod interfaces: {}; detach them (remove the network from the pods' {} annotation) or annotate the network {}=true",
                blocked_by.len(),
                name_list(blocked_by, 5),
                bridgenet_crds::ANNOTATION_NETWORKS,
                bridgenet_crds::ANNOTATION_FORCE_DELETE,
            ),
        }
    } else {
        Cond {
            type_: READY,
            status: false,
            reason: Reason::Deleting.as_str(),
            message: format!("waiting for {remaining} nodes to tear the network down"),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use k8s_openapi::jiff::Timestamp;

    fn t(secs: i64) -> Time {
        Time(Timestamp::from_second(secs).unwrap())
    }

    fn cond(type_: &'static str, status: bool, reason: &'static str) -> Cond {
        Cond {
            type_,
            status,
            reason,
            message: format!("{reason} message"),
        }
    }

    #[test]
    fn events_only_on_transitions() {
        let mut before = Vec::new();
        set_condition(
            &mut before,
            cond(ACCEPTED, true, Reason::Accepted.as_str()),
            None,
            &t(1),
        );
        let mut after = before.clone();
        set_condition(
            &mut after,
            cond(ACCEPTED, false, "SubnetOverlap"),
            None,
            &t(2),
        );
        let ev = transition_events(&before, &after);
        assert_eq!(ev.len(), 1);
        assert!(ev[0].warning);
        assert_eq!(ev[0].reason, "SubnetOverlap");
        assert!(transition_events(&after, &after).is_empty());
        let back = transition_events(&after, &before);
        assert_eq!(back[0].reason, Reason::Accepted.as_str());
        assert!(!back[0].warning);
        // A brand-new network that is accepted needs no event.
        assert!(transition_events(&[], &before).is_empty());
    }

    #[test]
    fn name_list_is_bounded() {
        let names: Vec<String> = (0..7).map(|i| format!("n{i}")).collect();
        assert_eq!(name_list(&names, 3), "n0, n1, n2 and 4 more");
    }
}
