//! The readiness gate `bridgenet.io/networks-ready`: a pod that lists it in
//! `spec.readinessGates` is Ready only once the agent has set the condition of that type True,
//! which it does when every network the pod's `bridgenet.io/networks` annotation asks for is
//! attached in the pod's sandbox on this node.
//!
//! Level-triggered like the `network-status` annotation (see [`crate::cni::report`]): on every
//! pass the condition each gated pod should carry is derived from the IPAM journal and the
//! pod's current annotation, compared with the condition the pod carries, and written only
//! where they differ. Whether a pod is attached never comes from an in-memory notice; only the
//! *wording* of a False condition does: the last refusal noticed for the pod (a
//! [`Failure`]) turns `Pending` into `AttachFailed` with the refusal's message. A crash drops
//! that wording, never the truth, and the refusal comes back at the next retry (the kubelet
//! retries a failed sandbox, hot-plug re-evaluates every pod after a restart).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Pod, PodCondition};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use serde_json::json;

use crate::cni::annotation;
use crate::cni::engine::PodRef;
use crate::cni::report::ByPod;
use crate::ipam::Allocation;

/// The condition type of bridgenet's readiness gate, and the gate's `conditionType`.
pub const CONDITION_NETWORKS_READY: &str = "bridgenet.io/networks-ready";

/// Reason of a True condition: every requested network is attached.
pub const REASON_ATTACHED: &str = "Attached";
/// Reason of a True condition on a gated pod that asks for no network (any more).
pub const REASON_NO_NETWORKS: &str = "NoNetworksRequested";
/// Reason of a False condition: some requested network is not attached yet.
pub const REASON_PENDING: &str = "Pending";
/// Reason of a False condition: the last attempt to attach the pod was refused.
pub const REASON_ATTACH_FAILED: &str = "AttachFailed";
/// Reason of a False condition: the `bridgenet.io/networks` annotation does not parse.
pub const REASON_INVALID_ANNOTATION: &str = "InvalidNetworkAnnotation";

/// The last refusal noticed for a pod: only the wording of a False condition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    /// The refusal's short reason (e.g. `UnknownNetwork`).
    pub reason: &'static str,
    /// What the user was told in the Event.
    pub message: String,
    /// The pod's `bridgenet.io/networks` value when the refusal was noticed: a refusal of an
    /// older value says nothing about the current one.
    pub annotation: Option<String>,
}

/// The condition a gated pod should carry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Readiness {
    /// Whether every requested network is attached.
    pub ready: bool,
    /// Short CamelCase reason.
    pub reason: &'static str,
    /// Which networks are attached, pending or refused, and why.
    pub message: String,
}

/// One write of a pod's `bridgenet.io/networks-ready` condition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConditionPatch {
    /// The pod to patch.
    pub pod: PodRef,
    /// The condition it should carry.
    pub readiness: Readiness,
    /// `lastTransitionTime`: the one the pod carries when the status stays the same, else now.
    pub last_transition: Timestamp,
    /// The pod's `metadata.resourceVersion` the patch was computed from.
    pub resource_version: Option<String>,
}

impl ConditionPatch {
    /// The strategic merge patch of `status.conditions`: pod conditions are a list keyed on
    /// `type`, so the patch replaces this one condition and leaves the kubelet's and anyone
    /// else's as they are.
    pub fn body(&self) -> serde_json::Value {
        json!({"status": {"conditions": [{
            "type": CONDITION_NETWORKS_READY,
            "status": if self.readiness.ready { "True" } else { "False" },
            "reason": self.readiness.reason,
            "message": self.readiness.message,
            "lastTransitionTime": Time(self.last_transition),
        }]}})
    }
}

/// Whether `pod` lists bridgenet's readiness gate.
pub fn has_gate(pod: &Pod) -> bool {
    pod.spec
        .as_ref()
        .and_then(|s| s.readiness_gates.as_ref())
        .is_some_and(|gates| {
            gates
                .iter()
                .any(|g| g.condition_type == CONDITION_NETWORKS_READY)
        })
}

/// The `bridgenet.io/networks` value of `pod`, if any.
pub fn networks_annotation(pod: &Pod) -> Option<&str> {
    pod.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(bridgenet_crds::ANNOTATION_NETWORKS))
        .map(String::as_str)
}

/// The condition `pod` should carry, given the allocations of its current sandbox (`current`)
/// and the last refusal noticed for it.
pub fn desired(pod: &Pod, current: &[&Allocation], failure: Option<&Failure>) -> Readiness {
    let value = networks_annotation(pod).unwrap_or_default();
    let requests = match annotation::parse(value) {
        Ok(r) => r,
        Err(e) => {
            return Readiness {
                ready: false,
                reason: REASON_INVALID_ANNOTATION,
                message: format!("annotation {}: {e}", bridgenet_crds::ANNOTATION_NETWORKS),
            };
        }
    };
    if requests.is_empty() {
        return Readiness {
            ready: true,
            reason: REASON_NO_NETWORKS,
            message: format!(
                "{} asks for no network",
                bridgenet_crds::ANNOTATION_NETWORKS
            ),
        };
    }
    // A delegate call's attachment (Multus) is not the annotation's: hot-plug attaches the
    // annotation's network beside it, so it does not count here either.
    let attached: BTreeMap<&str, BTreeSet<&str>> =
        current
            .iter()
            .filter(|a| !a.delegate)
            .fold(BTreeMap::new(), |mut m, a| {
                m.entry(a.network.as_str())
                    .or_default()
                    .insert(a.ifname.as_str());
                m
            });
    let missing: Vec<&str> = requests
        .iter()
        .map(|r| r.name.as_str())
        .filter(|n| !attached.contains_key(n))
        .collect();
    if missing.is_empty() {
        let list: Vec<String> = requests
            .iter()
            .map(|r| {
                let ifs: Vec<&str> = attached
                    .get(r.name.as_str())
                    .map(|s| s.iter().copied().collect())
                    .unwrap_or_default();
                format!("{} ({})", r.name, ifs.join(", "))
            })
            .collect();
        return Readiness {
            ready: true,
            reason: REASON_ATTACHED,
            message: format!("attached: {}", list.join(", ")),
        };
    }
    let waiting = format!("not attached yet: {}", missing.join(", "));
    match failure.filter(|f| f.annotation.as_deref() == networks_annotation(pod)) {
        Some(f) => Readiness {
            ready: false,
            reason: REASON_ATTACH_FAILED,
            message: format!(
                "{waiting}; last attempt refused ({}): {}",
                f.reason, f.message
            ),
        },
        None => Readiness {
            ready: false,
            reason: REASON_PENDING,
            message: waiting,
        },
    }
}

/// The `bridgenet.io/networks-ready` condition `pod` carries, if any.
pub fn carried(pod: &Pod) -> Option<&PodCondition> {
    pod.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == CONDITION_NETWORKS_READY)
}

/// Compares the condition each gated pod of this node carries with what the journal and its
/// annotation say, and returns the writes that make them equal — none when they already are,
/// so a steady node writes nothing. Pods without the gate are never written; neither are pods
/// that are being deleted or have finished, nor pods with a CNI call, hot-plug change or
/// repair under way in their sandbox (`busy`): half-made attachments are not reported.
///
/// A pod's attachments are the allocations of its newest sandbox, as for `network-status`.
pub fn condition_patches(
    pods: &[Arc<Pod>],
    allocs: &[Allocation],
    busy: impl Fn(&str) -> bool,
    failures: &BTreeMap<PodRef, Failure>,
    now: Timestamp,
) -> Vec<ConditionPatch> {
    let by_pod = ByPod::new(allocs);
    let mut out = Vec::new();
    for pod in pods.iter().filter(|p| has_gate(p)) {
        let finished = pod
            .status
            .as_ref()
            .and_then(|s| s.phase.as_deref())
            .is_some_and(|p| p == "Succeeded" || p == "Failed");
        if pod.metadata.deletion_timestamp.is_some() || finished {
            continue;
        }
        let pod_ref = PodRef::of(&pod.metadata);
        let Some(current) = by_pod.current(&pod_ref, &busy) else {
            continue;
        };
        let want = desired(pod, &current, failures.get(&pod_ref));
        let status = if want.ready { "True" } else { "False" };
        let have = carried(pod);
        let same = have.is_some_and(|c| {
            c.status == status
                && c.reason.as_deref() == Some(want.reason)
                && c.message.as_deref() == Some(want.message.as_str())
        });
        if same {
            continue;
        }
        let last_transition = have
            .filter(|c| c.status == status)
            .and_then(|c| c.last_transition_time.as_ref())
            .map_or(now, |t| t.0);
        out.push(ConditionPatch {
            pod: pod_ref,
            readiness: want,
            last_transition,
            resource_version: pod.metadata.resource_version.clone(),
        });
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{PodReadinessGate, PodSpec, PodStatus};

    fn alloc(network: &str, ifname: &str, container: &str, since: u64) -> Allocation {
        Allocation {
            network: network.into(),
            ip: "172.20.0.5".parse().unwrap(),
            prefix: 24,
            container_id: container.into(),
            ifname: ifname.into(),
            pod: "default/web".into(),
            cni_name: String::new(),
            delegate: false,
            host_veth: "bnv1".into(),
            mac: "02:00:00:00:00:01".into(),
            since,
            claim: String::new(),
            sticky: false,
            releasing: false,
            pending: false,
        }
    }

    fn pod(networks: Option<&str>, gate: bool, condition: Option<PodCondition>) -> Pod {
        let mut p = Pod::default();
        p.metadata.namespace = Some("default".into());
        p.metadata.name = Some("web".into());
        p.metadata.resource_version = Some("7".into());
        if let Some(n) = networks {
            p.metadata.annotations = Some(BTreeMap::from([(
                bridgenet_crds::ANNOTATION_NETWORKS.to_owned(),
                n.to_owned(),
            )]));
        }
        p.spec = Some(PodSpec {
            readiness_gates: gate.then(|| {
                vec![PodReadinessGate {
                    condition_type: CONDITION_NETWORKS_READY.into(),
                }]
            }),
            ..Default::default()
        });
        p.status = Some(PodStatus {
            phase: Some("Running".into()),
            conditions: Some(
                [PodCondition {
                    type_: "Ready".into(),
                    status: "False".into(),
                    ..Default::default()
                }]
                .into_iter()
                .chain(condition)
                .collect(),
            ),
            ..Default::default()
        });
        p
    }

    fn cond(status: &str, reason: &str, message: &str, at: i64) -> PodCondition {
        PodCondition {
            type_: CONDITION_NETWORKS_READY.into(),
            status: status.into(),
            reason: Some(reason.into()),
            message: Some(message.into()),
            last_transition_time: Some(Time(Timestamp::from_second(at).unwrap())),
            ..Default::default()
        }
    }

    fn web() -> PodRef {
        PodRef {
            namespace: "default".into(),
            name: "web".into(),
        }
    }

    const NOW: i64 = 1_800_000_000;

    fn patches(
        pods: &[Pod],
        allocs: &[Allocation],
        failures: &BTreeMap<PodRef, Failure>,
    ) -> Vec<ConditionPatch> {
        let pods: Vec<Arc<Pod>> = pods.iter().cloned().map(Arc::new).collect();
        condition_patches(
            &pods,
            allocs,
            |_| false,
            failures,
            Timestamp::from_second(NOW).unwrap(),
        )
    }

    /// The story of one gated pod: pending until its network is attached, True once it is,
    /// False again while a hot-attached second network is missing — derived from the journal
    /// each time, and nothing written once the pod carries what the journal says.
    #[test]
    fn follows_the_journal_through_attach_and_hot_attach() {
        let none = BTreeMap::new();
        // Scheduled, nothing attached yet: False, Pending, naming the network.
        let p = patches(&[pod(Some("red"), true, None)], &[], &none);
        assert_eq!(p.len(), 1);
        assert_eq!(
            p[0].readiness,
            Readiness {
                ready: false,
                reason: REASON_PENDING,
                message: "not attached yet: red".into(),
            }
        );
        assert_eq!(p[0].last_transition.as_second(), NOW);
        assert_eq!(
            p[0].body(),
            json!({"status": {"conditions": [{
                "type": CONDITION_NETWORKS_READY, "status": "False", "reason": "Pending",
                "message": "not attached yet: red", "lastTransitionTime": "2027-01-15T08:00:00Z",
            }]}})
        );
        // Attached: True, a new transition.
        let pending = cond("False", REASON_PENDING, "not attached yet: red", NOW - 50);
        let red = alloc("red", "net1", "sb1", 100);
        let p = patches(
            &[pod(Some("red"), true, Some(pending))],
            std::slice::from_ref(&red),
            &none,
        );
        assert_eq!(p[0].readiness.reason, REASON_ATTACHED);
        assert_eq!(p[0].readiness.message, "attached: red (net1)");
        assert!(p[0].readiness.ready);
        assert_eq!(p[0].last_transition.as_second(), NOW);
        // Steady: nothing to write.
        let attached = cond("True", REASON_ATTACHED, "attached: red (net1)", NOW - 40);
        assert!(
            patches(
                &[pod(Some("red"), true, Some(attached.clone()))],
                std::slice::from_ref(&red),
                &none
            )
            .is_empty()
        );
        // The annotation gains blue: False, Pending for blue only.
        let p = patches(
            &[pod(Some("red,blue"), true, Some(attached))],
            std::slice::from_ref(&red),
            &none,
        );
        assert_eq!(
            (p[0].readiness.ready, p[0].readiness.reason),
            (false, REASON_PENDING)
        );
        assert_eq!(p[0].readiness.message, "not attached yet: blue");
        // Blue attached too: True again.
        let blue = alloc("blue", "net2", "sb1", 120);
        let p = patches(
            &[pod(
                Some("red,blue"),
                true,
                Some(cond(
                    "False",
                    REASON_PENDING,
                    "not attached yet: blue",
                    NOW - 5,
                )),
            )],
            &[red, blue],
            &none,
        );
        assert_eq!(p[0].readiness.message, "attached: red (net1), blue (net2)");
    }

    /// lastTransitionTime moves only when the status does: a new reason or message under the
    /// same status keeps the pod's time.
    #[test]
    fn transition_time_changes_only_with_the_status() {
        let mut failures = BTreeMap::new();
        failures.insert(
            web(),
            Failure {
                reason: "UnknownNetwork",
                message: "network \"red\" does not exist on this node".into(),
                annotation: Some("red".into()),
            },
        );
        let pending = cond("False", REASON_PENDING, "not attached yet: red", NOW - 50);
        let p = patches(&[pod(Some("red"), true, Some(pending))], &[], &failures);
        assert_eq!(p[0].readiness.reason, REASON_ATTACH_FAILED);
        assert!(
            p[0].readiness
                .message
                .contains("refused (UnknownNetwork): network \"red\" does not exist"),
            "{:?}",
            p[0].readiness
        );
        assert_eq!(p[0].last_transition.as_second(), NOW - 50);
    }

    /// A refusal noticed for an older annotation value does not explain the current one.
    #[test]
    fn a_refusal_of_another_annotation_is_not_the_reason() {
        let failures = BTreeMap::from([(
            web(),
            Failure {
                reason: "UnknownNetwork",
                message: "network \"gone\" does not exist on this node".into(),
                annotation: Some("gone".into()),
            },
        )]);
        let p = patches(&[pod(Some("red"), true, None)], &[], &failures);
        assert_eq!(p[0].readiness.reason, REASON_PENDING);
    }

    #[test]
    fn pods_without_the_gate_are_never_written() {
        let red = alloc("red", "net1", "sb1", 100);
        assert!(patches(&[pod(Some("red"), false, None)], &[red], &BTreeMap::new()).is_empty());
        assert!(patches(&[pod(None, false, None)], &[], &BTreeMap::new()).is_empty());
    }

    /// The newest sandbox's allocations are the pod's; a leftover of an older one is not; a
    /// sandbox with a call in flight waits; Multus delegate attachments do not count.
    #[test]
    fn only_the_current_settled_sandbox_counts() {
        let old = alloc("red", "net1", "sb0", 10);
        let none = BTreeMap::new();
        let mut newer = alloc("blue", "net1", "sb1", 20);
        newer.ip = "172.30.0.5".parse().unwrap();
        let p = patches(&[pod(Some("red"), true, None)], &[old, newer], &none);
        assert_eq!(p[0].readiness.reason, REASON_PENDING);
        let red = alloc("red", "net1", "sb1", 100);
        let pods = [Arc::new(pod(Some("red"), true, None))];
        let busy = condition_patches(
            &pods,
            std::slice::from_ref(&red),
            |id| id == "sb1",
            &none,
            Timestamp::from_second(NOW).unwrap(),
        );
        assert!(busy.is_empty());
        let mut delegated = red;
        delegated.delegate = true;
        let p = patches(&[pod(Some("red"), true, None)], &[delegated], &none);
        assert_eq!(p[0].readiness.reason, REASON_PENDING);
    }

    #[test]
    fn bad_or_empty_annotations_have_their_own_reasons() {
        let none = BTreeMap::new();
        let p = patches(&[pod(Some("[{oops"), true, None)], &[], &none);
        assert_eq!(
            (p[0].readiness.ready, p[0].readiness.reason),
            (false, REASON_INVALID_ANNOTATION)
        );
        // The gate stays when the annotation goes (gates are immutable): the pod must not be
        // held un-Ready for a network it no longer asks for.
        let p = patches(&[pod(None, true, None)], &[], &none);
        assert_eq!(
            (p[0].readiness.ready, p[0].readiness.reason),
            (true, REASON_NO_NETWORKS)
        );
    }

    #[test]
    fn finished_or_deleted_pods_are_left_alone() {
        let none = BTreeMap::new();
        let mut done = pod(Some("red"), true, None);
        if let Some(s) = done.status.as_mut() {
            s.phase = Some("Succeeded".into());
        }
        assert!(patches(&[done], &[], &none).is_empty());
        let mut leaving = pod(Some("red"), true, None);
        leaving.metadata.deletion_timestamp = Some(Time(Timestamp::from_second(NOW).unwrap()));
        assert!(patches(&[leaving], &[], &none).is_empty());
    }
}
