//! Results back to users, level-triggered: pods' `bridgenet.io/network-status` annotation and
//! the NodeBridges' endpoints and address counts are derived from the IPAM journal on every pass
//! and compared with the cluster's copy, so a crash between an ADD and its report loses nothing;
//! rejection notices become Events on the pod.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bridgenet_crds::v1alpha1::Endpoint;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::{Api, Client, Resource};
use serde_json::json;
use tokio::sync::mpsc;

use crate::cni::engine::{Directory, Engine, Notice, PodRef, failpoint};
use crate::cni::kube::KubeDirectory;
use crate::ipam::{Allocation, Pool};
use crate::metrics::{self, NetworkUsage};
use crate::nodebridge::StatusWriter;

/// The `bridgenet.io/network-status` value for one pod's allocations.
pub fn network_status(
    allocs: &[Allocation],
    gateways: &BTreeMap<String, Vec<String>>,
) -> serde_json::Value {
    let mut by_if: BTreeMap<(String, String), Vec<&Allocation>> = BTreeMap::new();
    for a in allocs {
        by_if
            .entry((a.network.clone(), a.ifname.clone()))
            .or_default()
            .push(a);
    }
    let list: Vec<serde_json::Value> = by_if
        .into_iter()
        .map(|((network, ifname), list)| {
            json!({
                "name": network,
                "interface": ifname,
                "ips": list.iter().map(|a| a.ip.to_string()).collect::<Vec<_>>(),
                "mac": list[0].mac,
                "gateway": gateways.get(&network).cloned().unwrap_or_default(),
            })
        })
        .collect();
    serde_json::Value::Array(list)
}

/// The endpoints of `network` on this node, for `NodeBridge.status`. `aliases` gives the DNS
/// aliases a pod (`namespace/name`) asks for on a network, from its current annotation.
pub fn endpoints(
    allocs: &[Allocation],
    network: &str,
    aliases: impl Fn(&str, &str) -> Vec<String>,
) -> Vec<Endpoint> {
    let mut by_if: BTreeMap<(String, String), Endpoint> = BTreeMap::new();
    for a in allocs.iter().filter(|a| a.network == network) {
        let (namespace, pod) = a.pod.split_once('/').unwrap_or(("", a.pod.as_str()));
        let e = by_if
            .entry((a.container_id.clone(), a.ifname.clone()))
            .or_insert_with(|| Endpoint {
                namespace: namespace.to_owned(),
                pod: pod.to_owned(),
                interface: a.ifname.clone(),
                ipv4: None,
                ipv6: None,
                mac: a.mac.clone(),
                aliases: aliases(&a.pod, network),
                container_id: Some(a.container_id.clone()),
                since: Timestamp::from_second(i64::try_from(a.since).unwrap_or(0))
                    .ok()
                    .map(Time),
            });
        let text = format!("{}/{}", a.ip, a.prefix);
        if a.ip.is_ipv4() {
            e.ipv4 = Some(text);
        } else {
            e.ipv6 = Some(text);
        }
    }
    let mut list: Vec<Endpoint> = by_if.into_values().collect();
    list.sort();
    list
}

/// One write of a pod's `bridgenet.io/network-status`: `None` removes the annotation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StatusPatch {
    /// The pod to patch.
    pub pod: PodRef,
    /// The annotation's new value.
    pub value: Option<String>,
}

/// Compares the `network-status` each pod of this node carries with what the journal says it
/// has, and returns the writes that make them equal — none when they already are, so a steady
/// node writes nothing.
///
/// A pod's status comes from the allocations of its newest sandbox: older sandboxes' ones are
/// leftovers awaiting their DEL (or the reconcile), not interfaces the pod has. A pod whose
/// sandbox has a CNI call, hot-plug change or repair under way (`busy`) is left for the next
/// pass, so that half-made or half-removed attachments are never reported.
pub fn network_status_patches(
    pods: &[Arc<Pod>],
    allocs: &[Allocation],
    gateways: &BTreeMap<String, Vec<String>>,
    busy: impl Fn(&str) -> bool,
) -> Vec<StatusPatch> {
    let mut by_pod: BTreeMap<&str, Vec<&Allocation>> = BTreeMap::new();
    for a in allocs.iter().filter(|a| !a.pod.is_empty()) {
        by_pod.entry(a.pod.as_str()).or_default().push(a);
    }
    let mut out = Vec::new();
    for pod in pods {
        let pod_ref = PodRef {
            namespace: pod.metadata.namespace.clone().unwrap_or_default(),
            name: pod.metadata.name.clone().unwrap_or_default(),
        };
        let mine = by_pod
            .get(pod_ref.to_string().as_str())
            .map(Vec::as_slice)
            .unwrap_or_default();
        if mine.iter().any(|a| busy(&a.container_id)) {
            continue;
        }
        let newest = mine
            .iter()
            .map(|a| (a.since, a.container_id.as_str()))
            .max()
            .map(|(_, id)| id);
        let current: Vec<Allocation> = mine
            .iter()
            .filter(|a| Some(a.container_id.as_str()) == newest)
            .map(|a| (*a).clone())
            .collect();
        let desired = (!current.is_empty()).then(|| network_status(&current, gateways));
        let carried = pod
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(bridgenet_crds::ANNOTATION_NETWORK_STATUS));
        // Compared as JSON, not as text: key order or spacing is no difference.
        let same = match (carried, &desired) {
            (None, None) => true,
            (Some(text), Some(want)) => {
                serde_json::from_str::<serde_json::Value>(text)
                    .ok()
                    .as_ref()
                    == Some(want)
            }
            _ => false,
        };
        if !same {
            out.push(StatusPatch {
                pod: pod_ref,
                value: desired.map(|v| v.to_string()),
            });
        }
    }
    out
}

/// How long a written `network-status` is trusted over the pod cache: the watch that brings
/// our own write back may lag a tick or two, and writing again meanwhile would be a needless
/// write (not a wrong one). After this, a difference is written again.
const WRITE_SETTLE: Duration = Duration::from_secs(10);

/// The gateways of each network on this node, for `network-status`.
fn gateways(dir: &KubeDirectory) -> BTreeMap<String, Vec<String>> {
    dir.bridges()
        .iter()
        .filter_map(|nb| dir.resolved(nb))
        .map(|nb| {
            let g = nb.gateways().iter().map(ToString::to_string).collect();
            (nb.network.clone(), g)
        })
        .collect()
}

/// Publishes Events, and keeps pods' `network-status` annotation and the NodeBridges' endpoints
/// and address counts equal to what the journal says, level-triggered: every second (once the
/// caches have synced) each is derived from the journal and compared with the cluster's copy,
/// and only differences are written. Nothing depends on a notice surviving: after a restart the
/// first pass writes whatever the killed process had not.
pub async fn status_loop(
    engine: Arc<Engine<KubeDirectory>>,
    client: Client,
    status: StatusWriter,
    node: String,
    mut notices: mpsc::UnboundedReceiver<Notice>,
) {
    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: "bridgenet-agent".into(),
            instance: Some(node),
        },
    );
    let mut written: HashMap<PodRef, (Option<String>, Instant)> = HashMap::new();
    let changes = engine.journal_changes();
    // A pass every second checks everything (level-triggered); a change of the journal brings
    // the next pass forward, so a name or endpoint is out within moments of an attach or
    // detach, but never more than one pass that wrote a NodeBridge per `MIN_WRITE_GAP`, so a
    // burst of attachments costs one status write per NodeBridge per second, not one each.
    let mut next = tokio::time::Instant::now();
    let mut last_write = tokio::time::Instant::now()
        .checked_sub(MIN_WRITE_GAP)
        .unwrap_or_else(tokio::time::Instant::now);
    loop {
        tokio::select! {
            notice = notices.recv() => match notice {
                None => return,
                Some(Notice::Rejected { pod, reason, message }) => {
                    let reference = engine.directory().cached_pod(&pod).map_or_else(
                        || k8s_openapi::api::core::v1::ObjectReference {
                            api_version: Some("v1".into()),
                            kind: Some("Pod".into()),
                            namespace: Some(pod.namespace.clone()),
                            name: Some(pod.name.clone()),
                            ..Default::default()
                        },
                        |p| p.object_ref(&()),
                    );
                    let event = Event {
                        type_: EventType::Warning,
                        reason: reason.into(),
                        note: Some(message.chars().take(1000).collect()),
                        action: "AttachNetwork".into(),
                        secondary: None,
                    };
                    if let Err(e) = recorder.publish(&event, &reference).await {
                        tracing::warn!(pod = %pod, error = %e, "publishing an Event");
                    }
                }
            },
            () = changes.notified() => {
                let soonest = (last_write + MIN_WRITE_GAP).max(tokio::time::Instant::now());
                next = next.min(soonest);
            }
            () = tokio::time::sleep_until(next) => {
                next = tokio::time::Instant::now() + PASS_INTERVAL;
                let dir = engine.directory();
                // Before both caches have listed, a pod or network missing from them is no
                // evidence of anything.
                if !dir.ready() {
                    continue;
                }
                let allocs = engine.allocations().await;
                write_network_status(&engine, &client, &allocs, &mut written).await;
                if write_endpoints(dir, &status, &allocs).await {
                    last_write = tokio::time::Instant::now();
                }
            }
        }
    }
}

/// Period of the level-triggered report pass.
const PASS_INTERVAL: Duration = Duration::from_secs(1);
/// Least time between two passes that wrote NodeBridge statuses.
const MIN_WRITE_GAP: Duration = Duration::from_secs(1);

/// What this node holds of `network`: its attached interfaces (one per sandbox interface,
/// whatever its families), its journaled IPv4 addresses and what its blocks (`capacity_v4`
/// addresses) have left.
pub fn network_usage(allocs: &[Allocation], network: &str, capacity_v4: u64) -> NetworkUsage {
    let mine = || allocs.iter().filter(|a| a.network == network);
    let attachments = mine()
        .map(|a| (a.container_id.as_str(), a.ifname.as_str()))
        .collect::<BTreeSet<_>>()
        .len();
    let used = mine().filter(|a| a.ip.is_ipv4()).count();
    let used = u64::try_from(used).unwrap_or(u64::MAX);
    NetworkUsage {
        network: network.to_owned(),
        attachments: u64::try_from(attachments).unwrap_or(u64::MAX),
        used,
        free: capacity_v4.saturating_sub(used),
    }
}

/// Writes the `network-status` of every pod whose annotation differs from the journal.
async fn write_network_status(
    engine: &Engine<KubeDirectory>,
    client: &Client,
    allocs: &[Allocation],
    written: &mut HashMap<PodRef, (Option<String>, Instant)>,
) {
    let dir = engine.directory();
    let patches =
        network_status_patches(&dir.pods(), allocs, &gateways(dir), |id| engine.is_busy(id));
    written.retain(|_, (_, at)| at.elapsed() < WRITE_SETTLE);
    for StatusPatch { pod, value } in patches {
        if written.get(&pod).is_some_and(|(v, _)| *v == value) {
            continue;
        }
        failpoint(failpoint::REPORT_BEFORE_ANNOTATION);
        let patch = json!({"metadata": {"annotations": {
            bridgenet_crds::ANNOTATION_NETWORK_STATUS: value,
        }}});
        let api = Api::<Pod>::namespaced(client.clone(), &pod.namespace);
        match api
            .patch(&pod.name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => {
                tracing::debug!(pod = %pod, removed = value.is_none(), "network-status written");
                written.insert(pod, (value, Instant::now()));
            }
            // Deleted meanwhile: its cache entry goes with the watch event.
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            // Retried at the next pass: the difference is still there.
            Err(e) => tracing::warn!(pod = %pod, error = %e, "writing network-status"),
        }
    }
}

/// Writes each NodeBridge's endpoints and address counts where they differ from the journal
/// (the status book compares; an equal status is not written). The counts describe the node's
/// blocks and are recomputed on every pass, so a NodeBridge that appears or gets a new block is
/// reported at once: the operator grows a node's blocks from them.
/// Writes each NodeBridge's endpoints and counts where they differ; whether any was written.
async fn write_endpoints(
    dir: &KubeDirectory,
    status: &StatusWriter,
    allocs: &[Allocation],
) -> bool {
    let mut usage = Vec::new();
    let mut wrote = false;
    for nb in dir.bridges() {
        let Some(name) = nb.metadata.name.clone() else {
            continue;
        };
        let list = endpoints(allocs, &nb.spec.network, |pod, network| {
            pod_aliases(dir, pod, network)
        });
        let allocated = allocs
            .iter()
            .filter(|a| a.network == nb.spec.network && a.ip.is_ipv4())
            .count();
        let capacity = dir
            .resolved(&nb)
            .map_or(0, |r| Pool::from_resolved(&r).capacity_v4());
        usage.push(network_usage(allocs, &nb.spec.network, capacity));
        status.seed(&name, nb.status.as_ref());
        if status.get(&name).map(|s| s.endpoints) != Some(list.clone()) {
            failpoint(failpoint::REPORT_BEFORE_ENDPOINTS);
        }
        let result = status
            .update(&name, |s| {
                s.endpoint_count = i32::try_from(list.len()).unwrap_or(i32::MAX);
                s.endpoints = list;
                s.allocated_addresses = i64::try_from(allocated).unwrap_or(i64::MAX);
                s.free_addresses =
                    i64::try_from(capacity).unwrap_or(i64::MAX) - s.allocated_addresses;
            })
            .await;
        // Retried at the next pass: the book keeps what was not applied.
        match result {
            Ok(sent) => wrote |= sent,
            Err(e) => tracing::warn!(nodebridge = %name, error = %e, "writing endpoints"),
        }
    }
    metrics::set_network_usage(&usage);
    wrote
}

/// The aliases pod `namespace/name` asks for on `network`, read from its annotation in the pod
/// cache; none when the pod is not cached or its annotation does not parse (its attachment
/// then did not come from it either).
fn pod_aliases(dir: &KubeDirectory, pod: &str, network: &str) -> Vec<String> {
    let Some((namespace, name)) = pod.split_once('/') else {
        return Vec::new();
    };
    let pod = PodRef {
        namespace: namespace.to_owned(),
        name: name.to_owned(),
    };
    dir.cached_pod(&pod)
        .and_then(|p| {
            let value = p
                .metadata
                .annotations
                .as_ref()?
                .get(bridgenet_crds::ANNOTATION_NETWORKS)?;
            let requests = crate::cni::annotation::parse(value).ok()?;
            requests.into_iter().find(|r| r.name == network)
        })
        .map(|r| r.aliases)
        .unwrap_or_default()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn alloc(ip: &str, ifname: &str) -> Allocation {
        Allocation {
            network: "red".into(),
            ip: ip.parse().unwrap(),
            prefix: if ip.contains(':') { 64 } else { 24 },
            container_id: "sb1".into(),
            ifname: ifname.into(),
            pod: "default/web".into(),
            cni_name: String::new(),
            delegate: false,
            host_veth: "bnv1".into(),
            mac: "02:00:00:00:00:01".into(),
            since: 1_700_000_000,
        }
    }

    #[test]
    fn status_views_merge_families_per_interface() {
        let allocs = vec![alloc("172.20.0.5", "net1"), alloc("fd00::5", "net1")];
        let eps = endpoints(&allocs, "red", |pod, network| {
            if pod == "default/web" && network == "red" {
                vec!["db".to_owned()]
            } else {
                Vec::new()
            }
        });
        assert_eq!(eps.len(), 1);
        assert_eq!(eps[0].ipv4.as_deref(), Some("172.20.0.5/24"));
        assert_eq!(eps[0].ipv6.as_deref(), Some("fd00::5/64"));
        assert_eq!(eps[0].pod, "web");
        assert_eq!(eps[0].aliases, ["db"]);
        assert!(eps[0].since.is_some());
        assert!(endpoints(&allocs, "blue", |_, _| Vec::new()).is_empty());
        let gw = BTreeMap::from([("red".to_owned(), vec!["172.20.0.1".to_owned()])]);
        let v = network_status(&allocs, &gw);
        assert_eq!(v[0]["interface"], "net1");
        assert_eq!(v[0]["ips"], json!(["172.20.0.5", "fd00::5"]));
        assert_eq!(v[0]["gateway"], json!(["172.20.0.1"]));
    }

    #[test]
    fn usage_counts_interfaces_and_ipv4_addresses() {
        let mut other = alloc("172.20.0.6", "net1");
        other.container_id = "sb2".into();
        let mut blue = alloc("172.30.0.5", "net2");
        blue.network = "blue".into();
        let allocs = vec![
            alloc("172.20.0.5", "net1"),
            alloc("fd00::5", "net1"),
            other,
            blue,
        ];
        let u = network_usage(&allocs, "red", 254);
        assert_eq!(
            u,
            NetworkUsage {
                network: "red".into(),
                attachments: 2,
                used: 2,
                free: 252,
            }
        );
        let blue = network_usage(&allocs, "blue", 0);
        assert_eq!((blue.attachments, blue.used, blue.free), (1, 1, 0));
        assert_eq!(network_usage(&allocs, "green", 16).free, 16);
    }

    fn pod(name: &str, status: Option<&str>) -> Arc<Pod> {
        let mut p = Pod::default();
        p.metadata.namespace = Some("default".into());
        p.metadata.name = Some(name.into());
        if let Some(s) = status {
            p.metadata.annotations = Some(BTreeMap::from([(
                bridgenet_crds::ANNOTATION_NETWORK_STATUS.to_owned(),
                s.to_owned(),
            )]));
        }
        Arc::new(p)
    }

    /// The pure half of the level-triggered status writer: after a restart it finds every pod
    /// whose annotation the journal contradicts, and on a steady node it finds none.
    #[test]
    fn network_status_patches_follow_the_journal_not_notices() {
        let gw = BTreeMap::from([("red".to_owned(), vec!["172.20.0.1".to_owned()])]);
        let web = alloc("172.20.0.5", "net1");
        let reported = network_status(std::slice::from_ref(&web), &gw).to_string();
        let idle = |_: &str| false;
        // Attached but never reported (the agent died before its report): written.
        let p = network_status_patches(&[pod("web", None)], std::slice::from_ref(&web), &gw, idle);
        assert_eq!(
            p,
            vec![StatusPatch {
                pod: PodRef {
                    namespace: "default".into(),
                    name: "web".into()
                },
                value: Some(reported.clone()),
            }]
        );
        // Already reported, whatever the spacing: nothing to write.
        let spaced = serde_json::to_string_pretty(
            &serde_json::from_str::<serde_json::Value>(&reported).unwrap(),
        )
        .unwrap();
        assert!(
            network_status_patches(
                &[pod("web", Some(&spaced))],
                std::slice::from_ref(&web),
                &gw,
                idle
            )
            .is_empty()
        );
        // Reported, then detached (the agent died before removing it): removed.
        let p = network_status_patches(&[pod("web", Some(&reported))], &[], &gw, idle);
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].value, None);
        // A pod bridgenet never attached carries nothing and gets nothing.
        assert!(
            network_status_patches(&[pod("plain", None)], std::slice::from_ref(&web), &gw, idle)
                .is_empty()
        );
        // A sandbox with a call in flight is left for the next pass.
        assert!(
            network_status_patches(
                &[pod("web", None)],
                std::slice::from_ref(&web),
                &gw,
                |id| id == "sb1"
            )
            .is_empty()
        );
        // A leftover of an older sandbox of the same pod is not the pod's interface.
        let mut old = alloc("172.20.0.9", "net1");
        old.container_id = "sb0".into();
        old.since -= 60;
        let p = network_status_patches(&[pod("web", None)], &[old, web], &gw, idle);
        assert_eq!(p[0].value, Some(reported));
    }
}
