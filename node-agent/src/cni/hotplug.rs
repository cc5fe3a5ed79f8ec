//! Hot attach/detach (`docker network connect/disconnect`): when the `bridgenet.io/networks`
//! annotation of a running pod on this node changes, attach the networks it gained and detach
//! the ones it lost, in the pod's sandbox as the runtime reports it over CRI.
//!
//! Only READY sandboxes are touched: the runtime marks a sandbox ready after its CNI ADD has
//! returned, so hot-plug never races the plugin for a starting pod.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Instant;

use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::Pod;

use crate::cni::annotation::{self, NetworkRequest};
use crate::cni::cri::{Cri, Sandbox};
use crate::cni::engine::{Directory, Engine, Notice, PodRef, Target};
use crate::ipam::Allocation;
use crate::metrics;

/// What to change in one sandbox.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// Networks to attach, with the interface names they get.
    pub attach: Vec<NetworkRequest>,
    /// Networks to detach.
    pub detach: Vec<String>,
}

/// Compares what the annotation asks for with what the sandbox has. Attached networks keep
/// their interface; a new one whose positional name (`netN`) is taken by an existing interface
/// gets the next free `netN`.
///
/// A delegate call's attachments (a Multus NetworkAttachmentDefinition naming the network) are
/// not the annotation's to take away: they are never detached here, and a network attached
/// only that way still counts as missing, but their interface names are taken.
///
/// A [pending](Allocation::pending) attachment in a ready sandbox is a hot attach that a crash
/// cut short (hot-plug makes one at a time, so none is in flight while it looks): it is made
/// again under its own interface name, which finds its reservation in the journal, or
/// detached like any other when the annotation no longer asks for it.
pub fn plan(desired: &[NetworkRequest], attached: &[Allocation]) -> Plan {
    let have: BTreeMap<&str, &Allocation> = attached
        .iter()
        .filter(|a| !a.delegate)
        .map(|a| (a.network.as_str(), a))
        .collect();
    let want: BTreeSet<&str> = desired.iter().map(|r| r.name.as_str()).collect();
    let mut used: BTreeSet<String> = attached.iter().map(|a| a.ifname.clone()).collect();
    let mut attach = Vec::new();
    for request in desired {
        let mut request = request.clone();
        match have.get(request.name.as_str()) {
            Some(a) if !a.pending => continue,
            Some(a) => request.interface = a.ifname.clone(),
            None if used.contains(&request.interface) => {
                request.interface = (1..)
                    .map(|i| format!("net{i}"))
                    .find(|n| !used.contains(n))
                    .unwrap_or_default();
            }
            None => {}
        }
        used.insert(request.interface.clone());
        attach.push(request);
    }
    let detach = have
        .keys()
        .filter(|n| !want.contains(**n))
        .map(|n| (*n).to_owned())
        .collect();
    Plan { attach, detach }
}

/// Brings one pod's sandbox in line with its annotation.
pub async fn sync_pod<D: Directory>(
    engine: &Engine<D>,
    cri: &Cri,
    pod: &Pod,
    sandbox: &Sandbox,
    reported: &mut BTreeSet<(PodRef, String)>,
) {
    let pod_ref = PodRef {
        namespace: sandbox.namespace.clone(),
        name: sandbox.name.clone(),
    };
    if pod.metadata.deletion_timestamp.is_some()
        || pod
            .spec
            .as_ref()
            .and_then(|s| s.host_network)
            .unwrap_or(false)
    {
        return;
    }
    let value = pod
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(bridgenet_crds::ANNOTATION_NETWORKS))
        .cloned()
        .unwrap_or_default();
    let desired = match annotation::parse(&value) {
        Ok(d) => d,
        Err(e) => {
            // One Event per bad value, not one per resync.
            if reported.insert((pod_ref.clone(), value.clone())) {
                engine.directory().notify(Notice::Rejected {
                    pod: pod_ref,
                    reason: "InvalidNetworkAnnotation",
                    message: format!("annotation {}: {e}", bridgenet_crds::ANNOTATION_NETWORKS),
                });
            }
            return;
        }
    };
    let attached = engine.allocations_of(&sandbox.id).await;
    let plan = plan(&desired, &attached);
    for network in &plan.detach {
        let started = Instant::now();
        let outcome = engine.detach_interface(&sandbox.id, network).await;
        metrics::finished(metrics::Path::HotDetach, started);
        match outcome {
            Ok(()) => tracing::info!(pod = %pod_ref, network, "hot-detached"),
            Err(e) => {
                metrics::hotplug_failed(metrics::Path::HotDetach, e.code);
                tracing::warn!(pod = %pod_ref, network, error = %e.msg, "hot-detach failed");
            }
        }
    }
    if plan.attach.is_empty() {
        return;
    }
    let netns = match cri.netns_of(&sandbox.id).await {
        Ok(Some(p)) => p,
        Ok(None) => {
            tracing::warn!(pod = %pod_ref, "the runtime reports no network namespace for the sandbox");
            return;
        }
        Err(e) => {
            tracing::warn!(pod = %pod_ref, error = %e, "asking the runtime for the sandbox's netns");
            return;
        }
    };
    let target = Target {
        container_id: sandbox.id.clone(),
        netns,
        pod: Some(pod_ref.clone()),
        cni_name: String::new(),
        delegate: false,
    };
    // Each network on its own: one refused network must not hold back the others.
    for request in plan.attach {
        // Whether this node has the network is part of what was refused: a network created
        // after the refusal (`docker network connect` right after `network create`) is
        // attached at the next resync instead of waiting for the annotation to change.
        let known = engine.directory().node_bridge(&request.name).is_some();
        let key = (
            pod_ref.clone(),
            format!("{value}\u{0}{}\u{0}{known}", request.name),
        );
        if reported.contains(&key) {
            continue;
        }
        let started = Instant::now();
        let outcome = engine.attach(&target, std::slice::from_ref(&request)).await;
        metrics::finished(metrics::Path::HotAttach, started);
        match outcome {
            Ok(_) => {
                tracing::info!(pod = %pod_ref, container = %sandbox.id, network = %request.name, interface = %request.interface, "hot-attached")
            }
            Err(e) => {
                metrics::hotplug_failed(metrics::Path::HotAttach, e.code);
                tracing::warn!(pod = %pod_ref, container = %sandbox.id, network = %request.name, error = %e.msg, "hot-attach failed");
                // A refused request (Event already sent) waits for the annotation to change;
                // transient failures are retried at the next resync.
                if e.code == crate::cni::types::code::POD_REQUEST_REJECTED {
                    reported.insert(key);
                }
            }
        }
    }
}

/// Runs hot-plug: on every change of a pod on this node, and for all of them every `resync`.
pub async fn run<D: Directory>(
    engine: Arc<Engine<D>>,
    cri: Cri,
    pods: impl Fn() -> Vec<Arc<Pod>>,
    mut changed: impl Stream<Item = Option<PodRef>> + Unpin,
    resync: std::time::Duration,
) {
    let mut tick = tokio::time::interval(resync);
    let mut reported = BTreeSet::new();
    loop {
        let mut wanted: Option<BTreeSet<PodRef>> = Some(BTreeSet::new());
        tokio::select! {
            ev = changed.next() => match ev {
                None => return,
                Some(Some(p)) => { if let Some(w) = wanted.as_mut() { w.insert(p); } }
                Some(None) => continue,
            },
            _ = tick.tick() => wanted = None,
        }
        let sandboxes = match cri.ready_sandboxes().await {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!(error = %e, "listing sandboxes for hot-plug");
                continue;
            }
        };
        for pod in pods() {
            let pod_ref = PodRef::of(&pod.metadata);
            if wanted.as_ref().is_some_and(|w| !w.contains(&pod_ref)) {
                continue;
            }
            let uid = pod.metadata.uid.clone().unwrap_or_default();
            let Some(sandbox) = sandboxes.iter().find(|s| s.uid == uid) else {
                continue;
            };
            sync_pod(&engine, &cri, &pod, sandbox, &mut reported).await;
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn alloc(network: &str, ifname: &str) -> Allocation {
        Allocation {
            network: network.into(),
            ip: "172.20.0.5".parse().unwrap(),
            prefix: 24,
            container_id: "sb".into(),
            ifname: ifname.into(),
            pod: "default/web".into(),
            cni_name: String::new(),
            delegate: false,
            host_veth: "bnv".into(),
            mac: String::new(),
            since: 0,
            claim: String::new(),
            sticky: false,
            releasing: false,
            pending: false,
        }
    }

    /// (network, interface) of each attachment `p` plans.
    fn attached_as(p: &Plan) -> Vec<(&str, &str)> {
        p.attach
            .iter()
            .map(|r| (r.name.as_str(), r.interface.as_str()))
            .collect()
    }

    /// `a` was being hot-attached as net2 when the agent was killed: it is attached again as
    /// net2 (its reservation's name, though the annotation's position would give it net1);
    /// once `a` is no longer asked for, it is detached.
    #[test]
    fn attaches_a_pending_network_again_under_its_own_name() {
        let mut cut_short = alloc("a", "net2");
        cut_short.pending = true;
        let attached = vec![alloc("b", "net1"), cut_short];
        let p = plan(&annotation::parse("a,b").unwrap(), &attached);
        assert!(p.detach.is_empty());
        assert_eq!(attached_as(&p), [("a", "net2")]);
        let p = plan(&annotation::parse("b").unwrap(), &attached);
        assert_eq!(
            p,
            Plan {
                attach: Vec::new(),
                detach: vec!["a".to_owned()]
            }
        );
    }

    #[test]
    fn plans_additions_and_removals_keeping_interfaces() {
        // "a,b" attached as net1/net2; the annotation becomes "b,c": detach a, attach c. c's
        // positional name net2 is b's and net1 is a's until it is gone: c gets net3.
        let attached = vec![alloc("a", "net1"), alloc("b", "net2")];
        let desired = annotation::parse("b,c").unwrap();
        let p = plan(&desired, &attached);
        assert_eq!(p.detach, vec!["a".to_owned()]);
        assert_eq!(p.attach.len(), 1);
        assert_eq!(p.attach[0].name, "c");
        assert_eq!(p.attach[0].interface, "net3");
        assert_eq!(
            plan(&annotation::parse("a,b").unwrap(), &attached),
            Plan::default()
        );
        let p = plan(&[], &attached);
        assert_eq!(p.detach.len(), 2);
    }

    /// A Multus delegate attached `a` as net1 (the pod's annotation never named it): hot-plug
    /// does not detach it, attaches `a` again from the annotation under a free name, and never
    /// hands out net1.
    #[test]
    fn leaves_delegate_attachments_alone() {
        let mut delegated = alloc("a", "net1");
        delegated.delegate = true;
        let attached = vec![delegated];
        assert_eq!(plan(&[], &attached), Plan::default());
        let p = plan(&annotation::parse("b,a").unwrap(), &attached);
        assert!(p.detach.is_empty());
        assert_eq!(attached_as(&p), [("b", "net2"), ("a", "net3")]);
    }
}
