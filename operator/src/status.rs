//! What users read in `kubectl get/describe bridgenetwork`: conditions with stable
//! `lastTransitionTime`, and the Events that go with condition changes.

use bridgenet_crds::v1alpha1::{BridgeNetworkStatus, NodeBridge};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

/// Condition type: the spec is valid and collides with nothing.
pub const ACCEPTED: &str = "Accepted";
/// Condition type: every selected node has programmed the network.
pub const READY: &str = "Ready";

/// Reasons of the `Ready` condition.
pub mod reason {
    /// Every selected node is ready.
    pub const ALL_NODES_READY: &str = "AllNodesReady";
    /// Some selected nodes are not ready yet.
    pub const NODES_NOT_READY: &str = "NodesNotReady";
    /// The node selector matches no node.
    pub const NO_MATCHING_NODES: &str = "NoMatchingNodes";
    /// The range has no block left for some node.
    pub const ADDRESSES_EXHAUSTED: &str = "AddressesExhausted";
    /// The network is not accepted, so nothing is programmed.
    pub const NOT_ACCEPTED: &str = "NotAccepted";
    /// Deletion waits for attached pods.
    pub const DELETION_BLOCKED: &str = "DeletionBlocked";
    /// Deletion waits for node agents to tear down.
    pub const DELETING: &str = "Deleting";
    /// `Accepted=True`.
    pub const ACCEPTED: &str = "Accepted";
}

/// A condition to set; `lastTransitionTime` is filled in by [`set_condition`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cond {
    /// Condition type.
    pub type_: &'static str,
    /// `True` or `False`.
    pub status: bool,
    /// CamelCase reason.
    pub reason: &'static str,
    /// Human-readable message.
    pub message: String,
}

/// Sets `cond` in `conditions` (a list map keyed on type). `lastTransitionTime` moves to `now`
/// only when the status flips; reason, message and observedGeneration are always refreshed.
pub fn set_condition(
    conditions: &mut Vec<Condition>,
    cond: Cond,
    generation: Option<i64>,
    now: &Time,
) {
    let status = if cond.status { "True" } else { "False" }.to_owned();
    let new = |ltt: Time| Condition {
        type_: cond.type_.to_owned(),
        status: status.clone(),
        reason: cond.reason.to_owned(),
        message: cond.message.clone(),
        observed_generation: generation,
        last_transition_time: ltt,
    };
    match conditions.iter_mut().find(|c| c.type_ == cond.type_) {
        Some(existing) => {
            let ltt = if existing.status == status {
                existing.last_transition_time.clone()
            } else {
                now.clone()
            };
            *existing = new(ltt);
        }
        None => conditions.push(new(now.clone())),
    }
    conditions.sort_by(|a, b| a.type_.cmp(&b.type_));
}

/// Finds a condition by type.
pub fn condition<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

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
                reason: reason::ACCEPTED.to_owned(),
                note: a.message.clone(),
            });
        }
    }
    if let Some((_, a)) = changed(READY)
        && a.status == "False"
        && matches!(
            a.reason.as_str(),
            reason::ADDRESSES_EXHAUSTED | reason::DELETION_BLOCKED
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

/// Status semantically equal apart from condition timestamps, which [`set_condition`] keeps.
pub fn same_status(a: Option<&BridgeNetworkStatus>, b: &BridgeNetworkStatus) -> bool {
    a == Some(b)
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
    fn transition_time_moves_only_when_status_flips() {
        let mut c = Vec::new();
        set_condition(
            &mut c,
            cond(READY, false, reason::NODES_NOT_READY),
            Some(1),
            &t(10),
        );
        set_condition(
            &mut c,
            cond(READY, false, reason::NO_MATCHING_NODES),
            Some(2),
            &t(20),
        );
        assert_eq!(c[0].last_transition_time, t(10));
        assert_eq!(c[0].reason, reason::NO_MATCHING_NODES);
        assert_eq!(c[0].observed_generation, Some(2));
        set_condition(
            &mut c,
            cond(READY, true, reason::ALL_NODES_READY),
            Some(2),
            &t(30),
        );
        assert_eq!(c[0].last_transition_time, t(30));
        set_condition(
            &mut c,
            cond(ACCEPTED, true, reason::ACCEPTED),
            Some(2),
            &t(40),
        );
        assert_eq!(c.len(), 2);
        assert_eq!(c[0].type_, ACCEPTED, "sorted by type");
    }

    #[test]
    fn events_only_on_transitions() {
        let mut before = Vec::new();
        set_condition(
            &mut before,
            cond(ACCEPTED, true, reason::ACCEPTED),
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
        assert_eq!(back[0].reason, reason::ACCEPTED);
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
