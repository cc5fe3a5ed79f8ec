//! Status conditions as both controllers write them: a list map keyed on `type`, whose
//! `lastTransitionTime` moves only when the status flips (the Kubernetes API conventions), and
//! the reasons they carry. The reason strings are API: `kubectl wait --for=jsonpath=...reason`,
//! printer columns and scripts match on them, so a variant's string never changes.

use std::fmt;
use std::str::FromStr;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

/// Condition type of a BridgeNetwork: the spec is valid and collides with nothing older.
pub const ACCEPTED: &str = "Accepted";
/// Condition type of both kinds: a BridgeNetwork's selected nodes, or a NodeBridge's node, have
/// programmed the network.
pub const READY: &str = "Ready";

/// NodeBridge condition: the network's resolver answers DNS on the node's gateway addresses.
pub const RESOLVER_READY: &str = "ResolverReady";

/// Every reason bridgenet puts in a condition (and in the Event announcing it).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Reason {
    /// BridgeNetwork `Accepted=True`.
    Accepted,
    /// `Accepted=False` on a BridgeNetwork breaking a schema rule (servers without CEL); on a
    /// NodeBridge, `Ready=False` for a spec the agent cannot parse.
    InvalidSpec,
    /// `Accepted=False`: the subnet overlaps an older network's or the cluster's ranges.
    SubnetOverlap,
    /// `Accepted=False`: an older network already uses the bridge name.
    DuplicateBridge,
    /// BridgeNetwork `Ready=True`: every selected node programmed the current spec.
    AllNodesReady,
    /// Some selected nodes have not programmed the current spec yet.
    NodesNotReady,
    /// The node selector matches no node.
    NoMatchingNodes,
    /// The range has no block left for some node.
    AddressesExhausted,
    /// The network is refused, so no node programs it.
    NotAccepted,
    /// Deletion waits for pods to detach.
    DeletionBlocked,
    /// Deletion waits for node agents to tear the network down.
    Deleting,
    /// NodeBridge `Ready=True`: bridge, gateway and overlay are in place.
    Programmed,
    /// A link of another owner already has the bridge's name.
    BridgeNameTaken,
    /// A link of another owner already has the VXLAN port's name.
    OverlayNameTaken,
    /// A netlink request failed, or a link vanished while it was configured.
    NetlinkFailed,
    /// The nftables rules could not be installed.
    FirewallFailed,
    /// Removing the network from the node failed.
    TeardownFailed,
    /// NodeBridge `ResolverReady=True`: the network's resolver answers on the gateway.
    Serving,
    /// `ResolverReady=False`: the resolver could not listen on a gateway address.
    ListenFailed,
    /// `ResolverReady=False`: the network has `dns: false`.
    DnsDisabled,
}

impl Reason {
    /// Every reason, for parsing.
    pub const ALL: [Reason; 20] = [
        Reason::Accepted,
        Reason::InvalidSpec,
        Reason::SubnetOverlap,
        Reason::DuplicateBridge,
        Reason::AllNodesReady,
        Reason::NodesNotReady,
        Reason::NoMatchingNodes,
        Reason::AddressesExhausted,
        Reason::NotAccepted,
        Reason::DeletionBlocked,
        Reason::Deleting,
        Reason::Programmed,
        Reason::BridgeNameTaken,
        Reason::OverlayNameTaken,
        Reason::NetlinkFailed,
        Reason::FirewallFailed,
        Reason::TeardownFailed,
        Reason::Serving,
        Reason::ListenFailed,
        Reason::DnsDisabled,
    ];

    /// The CamelCase string written to the API.
    pub const fn as_str(self) -> &'static str {
        match self {
            Reason::Accepted => "Accepted",
            Reason::InvalidSpec => "InvalidSpec",
            Reason::SubnetOverlap => "SubnetOverlap",
            Reason::DuplicateBridge => "DuplicateBridge",
            Reason::AllNodesReady => "AllNodesReady",
            Reason::NodesNotReady => "NodesNotReady",
            Reason::NoMatchingNodes => "NoMatchingNodes",
            Reason::AddressesExhausted => "AddressesExhausted",
            Reason::NotAccepted => "NotAccepted",
            Reason::DeletionBlocked => "DeletionBlocked",
            Reason::Deleting => "Deleting",
            Reason::Programmed => "Programmed",
            Reason::BridgeNameTaken => "BridgeNameTaken",
            Reason::OverlayNameTaken => "OverlayNameTaken",
            Reason::NetlinkFailed => "NetlinkFailed",
            Reason::FirewallFailed => "FirewallFailed",
            Reason::TeardownFailed => "TeardownFailed",
            Reason::Serving => "Serving",
            Reason::ListenFailed => "ListenFailed",
            Reason::DnsDisabled => "DnsDisabled",
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A reason string that is none of bridgenet's.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown condition reason {0:?}")]
pub struct UnknownReason(pub String);

impl FromStr for Reason {
    type Err = UnknownReason;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Reason::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| UnknownReason(s.to_owned()))
    }
}

/// A condition as a controller decides it; [`set_condition`] adds `observedGeneration` and
/// `lastTransitionTime`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cond<'a> {
    /// Condition type ([`ACCEPTED`], [`READY`]).
    pub type_: &'a str,
    /// `True` or `False`.
    pub status: bool,
    /// CamelCase reason; the agent's come from its error types, all listed in [`Reason`].
    pub reason: &'a str,
    /// What the user is told.
    pub message: String,
}

/// Sets `cond` in `conditions`, replacing the condition of the same type. `lastTransitionTime`
/// moves to `now` only when the status flips; reason, message and observedGeneration are always
/// refreshed. The list is kept sorted by type, so the same conditions always serialize the same
/// way and an unchanged status compares equal.
pub fn set_condition(
    conditions: &mut Vec<Condition>,
    cond: Cond<'_>,
    generation: Option<i64>,
    now: &Time,
) {
    let status = if cond.status { "True" } else { "False" };
    let existing = conditions.iter_mut().find(|c| c.type_ == cond.type_);
    let last_transition_time = match &existing {
        Some(c) if c.status == status => c.last_transition_time.clone(),
        _ => now.clone(),
    };
    let new = Condition {
        type_: cond.type_.to_owned(),
        status: status.to_owned(),
        reason: cond.reason.to_owned(),
        message: cond.message,
        observed_generation: generation,
        last_transition_time,
    };
    match existing {
        Some(c) => *c = new,
        None => conditions.push(new),
    }
    conditions.sort_by(|a, b| a.type_.cmp(&b.type_));
}

/// The condition of type `type_`, if set.
pub fn condition<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use k8s_openapi::jiff::Timestamp;

    fn t(secs: i64) -> Time {
        Time(Timestamp::from_second(secs).unwrap())
    }

    fn cond(type_: &str, status: bool, reason: Reason) -> Cond<'_> {
        Cond {
            type_,
            status,
            reason: reason.as_str(),
            message: format!("{reason} message"),
        }
    }

    // Moved here from the operator's status.rs with set_condition itself.
    #[test]
    fn transition_time_moves_only_when_status_flips() {
        let mut c = Vec::new();
        set_condition(
            &mut c,
            cond(READY, false, Reason::NodesNotReady),
            Some(1),
            &t(10),
        );
        set_condition(
            &mut c,
            cond(READY, false, Reason::NoMatchingNodes),
            Some(2),
            &t(20),
        );
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].last_transition_time, t(10));
        assert_eq!(c[0].reason, Reason::NoMatchingNodes.as_str());
        assert_eq!(c[0].message, "NoMatchingNodes message");
        assert_eq!(c[0].observed_generation, Some(2));
        set_condition(
            &mut c,
            cond(READY, true, Reason::AllNodesReady),
            Some(2),
            &t(30),
        );
        assert_eq!(c[0].last_transition_time, t(30));
        assert_eq!(c[0].status, "True");
        set_condition(
            &mut c,
            cond(ACCEPTED, true, Reason::Accepted),
            Some(2),
            &t(40),
        );
        assert_eq!(c.len(), 2);
        assert_eq!(c[0].type_, ACCEPTED, "sorted by type");
        assert_eq!(
            condition(&c, READY).map(|c| c.reason.as_str()),
            Some("AllNodesReady")
        );
    }

    #[test]
    fn reasons_round_trip_and_are_distinct() {
        for r in Reason::ALL {
            assert_eq!(r.as_str().parse::<Reason>(), Ok(r));
            assert_eq!(r.to_string(), r.as_str());
        }
        let distinct: std::collections::BTreeSet<&str> =
            Reason::ALL.iter().map(|r| r.as_str()).collect();
        assert_eq!(distinct.len(), Reason::ALL.len());
        assert!("Bogus".parse::<Reason>().is_err());
    }
}
