//! Results back to users, level-triggered: pods' `bridgenet.io/network-status` annotation, their
//! entries in the NPWG `k8s.v1.cni.cncf.io/network-status` (see [`crate::cni::npwg`]), and the
//! NodeBridges' endpoints and address counts are derived from the IPAM journal on every pass and
//! compared with the cluster's copy, so a crash between an ADD and its report loses nothing;
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
use crate::cni::npwg;
use crate::cni::readiness::{self, ConditionPatch, Failure, Readiness};
use crate::ipam::{Allocation, Pool};
use crate::metrics::{self, NetworkUsage};
use crate::nodebridge::StatusWriter;

/// What the reports say about one network on this node, from its NodeBridge.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NetworkFacts {
    /// Its gateway addresses, IPv4 first.
    pub gateways: Vec<String>,
    /// Whether the node's resolver answers on them (`spec.dns`).
    pub dns: bool,
}

/// The `bridgenet.io/network-status` value for one pod's allocations.
pub fn network_status(
    allocs: &[Allocation],
    facts: &BTreeMap<String, NetworkFacts>,
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
                "gateway": facts.get(&network).map(|f| f.gateways.clone()).unwrap_or_default(),
            })
        })
        .collect();
    serde_json::Value::Array(list)
}

/// One pod's interfaces as NPWG entries describe them, in interface order.
pub fn npwg_attachments<'a>(
    allocs: impl IntoIterator<Item = &'a Allocation>,
    facts: &BTreeMap<String, NetworkFacts>,
) -> Vec<npwg::Attachment> {
    let mut by_if: BTreeMap<&str, npwg::Attachment> = BTreeMap::new();
    for a in allocs {
        let e = by_if
            .entry(a.ifname.as_str())
            .or_insert_with(|| npwg::Attachment {
                network: a.network.clone(),
                interface: a.ifname.clone(),
                ips: Vec::new(),
                mac: a.mac.clone(),
                nameservers: facts
                    .get(&a.network)
                    .filter(|f| f.dns)
                    .map(|f| f.gateways.clone())
                    .unwrap_or_default(),
            });
        e.ips.push(a.ip);
    }
    let mut list: Vec<npwg::Attachment> = by_if.into_values().collect();
    for a in &mut list {
        a.ips.sort_by_key(|ip| (ip.is_ipv6(), *ip));
    }
    list
}

/// The endpoints of `network` on this node, for `NodeBridge.status`. `aliases` gives the DNS
/// aliases a pod (`namespace/name`) asks for on a network, from its current annotation.
/// [Pending](Allocation::pending) allocations are none: an attach that is refused after its
/// reservation (a claim another pod holds) must not name its pod in DNS or bring the node into
/// the network's overlay, not even for a moment.
pub fn endpoints(
    allocs: &[Allocation],
    network: &str,
    aliases: impl Fn(&str, &str) -> Vec<String>,
) -> Vec<Endpoint> {
    let mut by_if: BTreeMap<(String, String), Endpoint> = BTreeMap::new();
    for a in allocs.iter().filter(|a| a.network == network && !a.pending) {
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

/// The journal's allocations by pod (`namespace/name`), for the per-pod reports.
pub(crate) struct ByPod<'a>(BTreeMap<&'a str, Vec<&'a Allocation>>);

impl<'a> ByPod<'a> {
    pub(crate) fn new(allocs: &'a [Allocation]) -> Self {
        let mut by_pod: BTreeMap<&str, Vec<&Allocation>> = BTreeMap::new();
        for a in allocs.iter().filter(|a| !a.pod.is_empty()) {
            by_pod.entry(a.pod.as_str()).or_default().push(a);
        }
        Self(by_pod)
    }

    /// The allocations of `pod`'s newest sandbox (older sandboxes' ones are leftovers awaiting
    /// their DEL), empty if it has none; `None` while a CNI call, hot-plug change or repair is
    /// under way in any of its sandboxes (`busy`), or while any of its allocations is
    /// [pending](Allocation::pending) (a call in flight, or one a crash cut short): half-made
    /// attachments are not reported.
    pub(crate) fn current(
        &self,
        pod: &PodRef,
        busy: impl Fn(&str) -> bool,
    ) -> Option<Vec<&'a Allocation>> {
        let mine = self
            .0
            .get(pod.to_string().as_str())
            .map(Vec::as_slice)
            .unwrap_or_default();
        if mine.iter().any(|a| a.pending || busy(&a.container_id)) {
            return None;
        }
        let newest = mine
            .iter()
            .map(|a| (a.since, a.container_id.as_str()))
            .max()
            .map(|(_, id)| id);
        Some(
            mine.iter()
                .filter(|a| Some(a.container_id.as_str()) == newest)
                .copied()
                .collect(),
        )
    }
}

/// A new value for one annotation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Write {
    /// Set it to this.
    Set(String),
    /// Remove it.
    Remove,
}

impl Write {
    fn json(&self) -> serde_json::Value {
        match self {
            Self::Set(v) => serde_json::Value::String(v.clone()),
            Self::Remove => serde_json::Value::Null,
        }
    }
}

impl From<npwg::Merge> for Option<Write> {
    fn from(m: npwg::Merge) -> Self {
        match m {
            npwg::Merge::Unchanged => None,
            npwg::Merge::Set(v) => Some(Write::Set(v)),
            npwg::Merge::Remove => Some(Write::Remove),
        }
    }
}

/// One write of a pod's status annotations; `None` leaves an annotation as it is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StatusPatch {
    /// The pod to patch.
    pub pod: PodRef,
    /// `bridgenet.io/network-status`, bridgenet's alone.
    pub bridgenet: Option<Write>,
    /// `k8s.v1.cni.cncf.io/network-status`, shared with other writers: merged into the value of
    /// the pod's version `resource_version`, and written only onto that version.
    pub npwg: Option<Write>,
    /// The pod's `metadata.resourceVersion` the patch was computed from.
    pub resource_version: Option<String>,
}

impl StatusPatch {
    /// The merge patch. A change of the shared annotation carries the resourceVersion it was
    /// merged into, so that the API server refuses it (409) if anyone wrote the pod since:
    /// a concurrent writer's entries are never overwritten with an older list.
    pub fn body(&self) -> serde_json::Value {
        let mut annotations = serde_json::Map::new();
        if let Some(w) = &self.bridgenet {
            annotations.insert(bridgenet_crds::ANNOTATION_NETWORK_STATUS.into(), w.json());
        }
        let mut metadata = serde_json::Map::new();
        if let Some(w) = &self.npwg {
            annotations.insert(npwg::ANNOTATION_NETWORK_STATUS.into(), w.json());
            if let Some(rv) = &self.resource_version {
                metadata.insert("resourceVersion".into(), rv.clone().into());
            }
        }
        metadata.insert("annotations".into(), annotations.into());
        json!({ "metadata": metadata })
    }
}

/// Something wrong with a pod's NPWG status that the agent may not fix itself: a Warning Event
/// on the pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StatusProblem {
    /// The pod.
    pub pod: PodRef,
    /// Short CamelCase reason.
    pub reason: &'static str,
    /// What is wrong.
    pub message: String,
}

/// The writes and problems of one report pass.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StatusReport {
    /// Pods whose annotations differ from the journal.
    pub patches: Vec<StatusPatch>,
    /// Multus-managed pods whose delegate entries contradict the journal, and annotations
    /// bridgenet cannot merge into.
    pub problems: Vec<StatusProblem>,
}

/// How long after a delegate ADD the delegating plugin may take to write the attachment's
/// entry; until then a missing or different entry is not a mismatch.
pub const DELEGATE_SETTLE_SECS: u64 = 15;

/// Compares the status annotations each pod of this node carries with what the journal says it
/// has, and returns the writes that make them equal — none when they already are, so a steady
/// node writes nothing.
///
/// A pod's status comes from the allocations of its newest sandbox: older sandboxes' ones are
/// leftovers awaiting their DEL (or the reconcile), not interfaces the pod has. A pod whose
/// sandbox has a CNI call, hot-plug change or repair under way (`busy`) is left for the next
/// pass, so that half-made or half-removed attachments are never reported.
///
/// `k8s.v1.cni.cncf.io/network-status` gets bridgenet's entries merged in (see
/// [`npwg::merge`]) unless Multus manages the pod ([`npwg::managed_by_multus`]): then Multus
/// writes it, and the entries it wrote for bridgenet's delegate attachments are only checked
/// (`now`, Unix seconds, tells which attachments it has had time to report).
pub fn network_status_patches(
    pods: &[Arc<Pod>],
    allocs: &[Allocation],
    facts: &BTreeMap<String, NetworkFacts>,
    busy: impl Fn(&str) -> bool,
    now: u64,
) -> StatusReport {
    let by_pod = ByPod::new(allocs);
    let mut out = StatusReport::default();
    for pod in pods {
        let pod_ref = PodRef::of(&pod.metadata);
        let Some(current) = by_pod.current(&pod_ref, &busy) else {
            continue;
        };
        let current: Vec<Allocation> = current.into_iter().cloned().collect();
        let desired = (!current.is_empty()).then(|| network_status(&current, facts));
        let no_annotations = BTreeMap::new();
        let annotations = pod.metadata.annotations.as_ref().unwrap_or(&no_annotations);
        let carried = annotations.get(bridgenet_crds::ANNOTATION_NETWORK_STATUS);
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
        let bridgenet =
            (!same).then(|| desired.map_or(Write::Remove, |v| Write::Set(v.to_string())));
        let shared = annotations
            .get(npwg::ANNOTATION_NETWORK_STATUS)
            .map(String::as_str);
        let delegated = current.iter().any(|a| a.delegate);
        let npwg_write = if npwg::managed_by_multus(annotations, delegated) {
            let settled = current
                .iter()
                .filter(|a| a.delegate && a.since.saturating_add(DELEGATE_SETTLE_SECS) <= now);
            let problems = npwg::check_delegates(shared, &npwg_attachments(settled, facts));
            if !problems.is_empty() {
                out.problems.push(StatusProblem {
                    pod: pod_ref.clone(),
                    reason: "NetworkStatusMismatch",
                    message: format!(
                        "{} (written by Multus) disagrees with the node: {}",
                        npwg::ANNOTATION_NETWORK_STATUS,
                        problems.join("; ")
                    ),
                });
            }
            None
        } else {
            let attached = npwg_attachments(&current, facts);
            match npwg::merge(shared, &attached) {
                Ok(m) => m.into(),
                // Someone else's value that is no list: not bridgenet's to replace. Only worth
                // saying when bridgenet has entries to put there.
                Err(e) => {
                    if !attached.is_empty() {
                        out.problems.push(StatusProblem {
                            pod: pod_ref.clone(),
                            reason: "NetworkStatusUnreadable",
                            message: format!("{e}; bridgenet's entries are not added"),
                        });
                    }
                    None
                }
            }
        };
        if bridgenet.is_some() || npwg_write.is_some() {
            out.patches.push(StatusPatch {
                pod: pod_ref,
                bridgenet,
                npwg: npwg_write,
                resource_version: pod.metadata.resource_version.clone(),
            });
        }
    }
    out
}

/// How long a written `network-status` is trusted over the pod cache: the watch that brings
/// our own write back may lag a tick or two, and writing again meanwhile would be a needless
/// write (not a wrong one). After this, a difference is written again.
const WRITE_SETTLE: Duration = Duration::from_secs(10);

/// The gateways and resolver of each network on this node, for `network-status`.
fn facts(dir: &KubeDirectory) -> BTreeMap<String, NetworkFacts> {
    dir.bridges()
        .iter()
        .filter_map(|nb| dir.resolved(nb))
        .map(|nb| {
            let f = NetworkFacts {
                gateways: nb.gateways().iter().map(ToString::to_string).collect(),
                dns: nb.dns,
            };
            (nb.network.clone(), f)
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
    let mut written: HashMap<PodRef, (StatusPatch, Instant)> = HashMap::new();
    let mut told: HashMap<PodRef, String> = HashMap::new();
    let mut conditions: HashMap<PodRef, (Readiness, Option<String>, Instant)> = HashMap::new();
    let mut failures: BTreeMap<PodRef, Failure> = BTreeMap::new();
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
                    let cached = engine.directory().cached_pod(&pod);
                    failures.insert(pod.clone(), Failure {
                        reason,
                        message: message.clone(),
                        annotation: cached
                            .as_deref()
                            .and_then(readiness::networks_annotation)
                            .map(ToOwned::to_owned),
                    });
                    let reference = cached.map_or_else(
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
                let problems = write_network_status(&engine, &client, &allocs, &mut written).await;
                tell_problems(&recorder, dir, problems, &mut told).await;
                write_readiness(&engine, &client, &allocs, &mut failures, &mut conditions).await;
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
/// whatever its families; a pending reservation is none yet), its journaled IPv4 addresses
/// and what its blocks (`capacity_v4` addresses) have left.
pub fn network_usage(allocs: &[Allocation], network: &str, capacity_v4: u64) -> NetworkUsage {
    let mine = || allocs.iter().filter(|a| a.network == network);
    let attachments = mine()
        .filter(|a| !a.pending)
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

/// Attempts at one pod's write when other writers keep changing it between our read and our
/// write (each conflict re-reads the pod and merges again).
const CONFLICT_ATTEMPTS: usize = 3;

/// Writes the status annotations of every pod whose annotations differ from the journal, and
/// returns the problems found on the way.
async fn write_network_status(
    engine: &Engine<KubeDirectory>,
    client: &Client,
    allocs: &[Allocation],
    written: &mut HashMap<PodRef, (StatusPatch, Instant)>,
) -> Vec<StatusProblem> {
    let dir = engine.directory();
    let facts = facts(dir);
    let now = unix_now();
    let busy = |id: &str| engine.is_busy(id);
    let report = network_status_patches(&dir.pods(), allocs, &facts, busy, now);
    written.retain(|_, (_, at)| at.elapsed() < WRITE_SETTLE);
    for patch in report.patches {
        // The same patch computed from the same version of the pod: our write has not come
        // back through the watch yet. A pod someone else changed has a new version meanwhile.
        if written.get(&patch.pod).is_some_and(|(w, _)| *w == patch) {
            continue;
        }
        let pod = patch.pod.clone();
        let api = Api::<Pod>::namespaced(client.clone(), &pod.namespace);
        let mut patch = patch;
        for _ in 0..CONFLICT_ATTEMPTS {
            failpoint(failpoint::REPORT_BEFORE_ANNOTATION);
            let sent = api
                .patch(
                    &pod.name,
                    &PatchParams::default(),
                    &Patch::Merge(&patch.body()),
                )
                .await;
            match sent {
                Ok(_) => {
                    tracing::debug!(pod = %pod, bridgenet = ?patch.bridgenet, npwg = ?patch.npwg, "network-status written");
                    written.insert(pod.clone(), (patch, Instant::now()));
                    break;
                }
                // Written by someone else since the cache's copy: merge into what it is now.
                Err(kube::Error::Api(s)) if s.code == 409 => {
                    let fresh = match api.get_opt(&pod.name).await {
                        Ok(Some(p)) => Arc::new(p),
                        Ok(None) => break,
                        Err(e) => {
                            tracing::warn!(pod = %pod, error = %e, "re-reading a pod to merge its network-status");
                            break;
                        }
                    };
                    match network_status_patches(&[fresh], allocs, &facts, busy, now)
                        .patches
                        .pop()
                    {
                        Some(again) => patch = again,
                        None => break,
                    }
                }
                // Deleted meanwhile: its cache entry goes with the watch event.
                Err(kube::Error::Api(s)) if s.code == 404 => break,
                // Retried at the next pass: the difference is still there.
                Err(e) => {
                    tracing::warn!(pod = %pod, error = %e, "writing network-status");
                    break;
                }
            }
        }
    }
    report.problems
}

/// Writes the `bridgenet.io/networks-ready` condition of every gated pod whose condition
/// differs from the journal (see [`readiness::condition_patches`]); forgets the refusals of
/// pods that are gone or attached since.
async fn write_readiness(
    engine: &Engine<KubeDirectory>,
    client: &Client,
    allocs: &[Allocation],
    failures: &mut BTreeMap<PodRef, Failure>,
    written: &mut HashMap<PodRef, (Readiness, Option<String>, Instant)>,
) {
    let dir = engine.directory();
    let pods = dir.pods();
    let busy = |id: &str| engine.is_busy(id);
    let patches = readiness::condition_patches(&pods, allocs, busy, failures, Timestamp::now());
    // A refusal stays the wording of a False condition until the pod is gone or its condition
    // is written True (only pods with something to write can have changed).
    failures.retain(|pod, _| {
        pods.iter().any(|p| {
            p.metadata.namespace.as_deref() == Some(pod.namespace.as_str())
                && p.metadata.name.as_deref() == Some(pod.name.as_str())
        }) && !patches.iter().any(|c| c.pod == *pod && c.readiness.ready)
    });
    written.retain(|_, (_, _, at)| at.elapsed() < WRITE_SETTLE);
    for patch in patches {
        // Computed again from the same version of the pod: our write has not come back
        // through the watch yet.
        if written
            .get(&patch.pod)
            .is_some_and(|(r, rv, _)| *r == patch.readiness && *rv == patch.resource_version)
        {
            continue;
        }
        send_condition(client, &patch).await;
        written.insert(
            patch.pod.clone(),
            (patch.readiness, patch.resource_version, Instant::now()),
        );
    }
}

/// One condition write; failures are logged and retried at the next pass (the difference is
/// still there).
async fn send_condition(client: &Client, patch: &ConditionPatch) {
    let pod = &patch.pod;
    let api = Api::<Pod>::namespaced(client.clone(), &pod.namespace);
    let sent = api
        .patch_status(
            &pod.name,
            &PatchParams::default(),
            &Patch::Strategic(patch.body()),
        )
        .await;
    match sent {
        Ok(_) => tracing::info!(
            pod = %pod,
            ready = patch.readiness.ready,
            reason = patch.readiness.reason,
            message = %patch.readiness.message,
            "{} written",
            readiness::CONDITION_NETWORKS_READY
        ),
        // Deleted meanwhile: its cache entry goes with the watch event.
        Err(kube::Error::Api(s)) if s.code == 404 => {}
        Err(e) => {
            tracing::warn!(pod = %pod, error = %e, "writing {}", readiness::CONDITION_NETWORKS_READY)
        }
    }
}

/// Publishes each problem as a Warning Event on its pod, once: `told` remembers what each pod
/// was told last, and forgets pods whose problem went away (a recurrence is told again).
async fn tell_problems(
    recorder: &Recorder,
    dir: &KubeDirectory,
    problems: Vec<StatusProblem>,
    told: &mut HashMap<PodRef, String>,
) {
    told.retain(|pod, _| problems.iter().any(|p| p.pod == *pod));
    for problem in problems {
        if told.get(&problem.pod) == Some(&problem.message) {
            continue;
        }
        tracing::warn!(pod = %problem.pod, reason = problem.reason, "{}", problem.message);
        let Some(pod) = dir.cached_pod(&problem.pod) else {
            continue;
        };
        let event = Event {
            type_: EventType::Warning,
            reason: problem.reason.into(),
            note: Some(problem.message.chars().take(1000).collect()),
            action: "ReportNetworkStatus".into(),
            secondary: None,
        };
        if let Err(e) = recorder.publish(&event, &pod.object_ref(&())).await {
            tracing::warn!(pod = %problem.pod, error = %e, "publishing an Event");
        }
        told.insert(problem.pod, problem.message);
    }
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
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
            claim: String::new(),
            sticky: false,
            releasing: false,
            pending: false,
        }
    }

    fn red_facts() -> BTreeMap<String, NetworkFacts> {
        BTreeMap::from([(
            "red".to_owned(),
            NetworkFacts {
                gateways: vec!["172.20.0.1".to_owned()],
                dns: true,
            },
        )])
    }

    /// Long after every allocation of these tests.
    const NOW: u64 = 1_800_000_000;

    #[test]
    fn status_views_merge_families_per_interface() {
        let allocs = vec![alloc("fd00::5", "net1"), alloc("172.20.0.5", "net1")];
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
        // A reservation whose attach has not succeeded is no endpoint (nor a name in DNS).
        let mut refused = alloc("172.20.0.6", "net1");
        refused.container_id = "sb2".into();
        refused.pending = true;
        let with_refused = [allocs.clone(), vec![refused]].concat();
        assert_eq!(endpoints(&with_refused, "red", |_, _| Vec::new()).len(), 1);
        let v = network_status(&allocs, &red_facts());
        assert_eq!(v[0]["interface"], "net1");
        assert_eq!(v[0]["ips"], json!(["fd00::5", "172.20.0.5"]));
        assert_eq!(v[0]["gateway"], json!(["172.20.0.1"]));
        let npwg = npwg_attachments(&allocs, &red_facts());
        assert_eq!(npwg.len(), 1);
        assert_eq!(
            npwg[0].ips,
            [
                "172.20.0.5".parse::<std::net::IpAddr>().unwrap(),
                "fd00::5".parse().unwrap()
            ]
        );
        assert_eq!(npwg[0].nameservers, ["172.20.0.1"]);
        let mut quiet = red_facts();
        quiet.values_mut().for_each(|f| f.dns = false);
        assert!(npwg_attachments(&allocs, &quiet)[0].nameservers.is_empty());
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

    fn pod_with(name: &str, annotations: &[(&str, &str)]) -> Arc<Pod> {
        let mut p = Pod::default();
        p.metadata.namespace = Some("default".into());
        p.metadata.name = Some(name.into());
        p.metadata.resource_version = Some("7".into());
        if !annotations.is_empty() {
            p.metadata.annotations = Some(
                annotations
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                    .collect(),
            );
        }
        Arc::new(p)
    }

    fn pod(name: &str, status: Option<&str>) -> Arc<Pod> {
        match status {
            Some(s) => pod_with(name, &[(bridgenet_crds::ANNOTATION_NETWORK_STATUS, s)]),
            None => pod_with(name, &[]),
        }
    }

    fn web() -> PodRef {
        PodRef {
            namespace: "default".into(),
            name: "web".into(),
        }
    }

    /// The pure half of the level-triggered status writer: after a restart it finds every pod
    /// whose annotation the journal contradicts, and on a steady node it finds none.
    #[test]
    fn network_status_patches_follow_the_journal_not_notices() {
        let facts = red_facts();
        let web_alloc = alloc("172.20.0.5", "net1");
        let reported = network_status(std::slice::from_ref(&web_alloc), &facts).to_string();
        let shared = npwg::merge(None, &npwg_attachments([&web_alloc], &facts)).unwrap();
        let npwg::Merge::Set(shared) = shared else {
            panic!("{shared:?}")
        };
        let idle = |_: &str| false;
        let patches = |pods: &[Arc<Pod>], allocs: &[Allocation]| {
            network_status_patches(pods, allocs, &facts, idle, NOW).patches
        };
        // Attached but never reported (the agent died before its report): written.
        let p = patches(&[pod("web", None)], std::slice::from_ref(&web_alloc));
        assert_eq!(
            p,
            vec![StatusPatch {
                pod: web(),
                bridgenet: Some(Write::Set(reported.clone())),
                npwg: Some(Write::Set(shared.clone())),
                resource_version: Some("7".into()),
            }]
        );
        // Already reported, whatever the spacing: nothing to write.
        let spaced = serde_json::to_string_pretty(
            &serde_json::from_str::<serde_json::Value>(&reported).unwrap(),
        )
        .unwrap();
        let steady = pod_with(
            "web",
            &[
                (bridgenet_crds::ANNOTATION_NETWORK_STATUS, &spaced),
                (npwg::ANNOTATION_NETWORK_STATUS, &shared),
            ],
        );
        assert!(
            patches(
                std::slice::from_ref(&steady),
                std::slice::from_ref(&web_alloc)
            )
            .is_empty()
        );
        // Reported, then detached (the agent died before removing it): removed.
        let p = patches(&[steady], &[]);
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].bridgenet, Some(Write::Remove));
        assert_eq!(p[0].npwg, Some(Write::Remove));
        // A pod bridgenet never attached carries nothing and gets nothing.
        assert!(patches(&[pod("plain", None)], std::slice::from_ref(&web_alloc)).is_empty());
        // A sandbox with a call in flight is left for the next pass.
        assert!(
            network_status_patches(
                &[pod("web", None)],
                std::slice::from_ref(&web_alloc),
                &facts,
                |id| id == "sb1",
                NOW
            )
            .patches
            .is_empty()
        );
        // A reservation whose attach has not succeeded (in flight, or cut short by a crash)
        // is left for the pass after it settles, like a call in flight.
        let mut pending = web_alloc.clone();
        pending.pending = true;
        assert!(patches(&[pod("web", None)], &[pending]).is_empty());
        // A leftover of an older sandbox of the same pod is not the pod's interface.
        let mut old = alloc("172.20.0.9", "net1");
        old.container_id = "sb0".into();
        old.since -= 60;
        let p = patches(&[pod("web", None)], &[old, web_alloc]);
        assert_eq!(p[0].bridgenet, Some(Write::Set(reported)));
        assert_eq!(p[0].npwg, Some(Write::Set(shared)));
    }

    /// On a pod no Multus manages, bridgenet's NPWG entries go beside the primary's and anyone
    /// else's, onto the version of the pod they were merged into; the patch of its own
    /// annotation alone is not guarded.
    #[test]
    fn npwg_entries_are_merged_beside_others_onto_the_version_read() {
        let facts = red_facts();
        let web_alloc = alloc("172.20.0.5", "net1");
        let reported = network_status(std::slice::from_ref(&web_alloc), &facts).to_string();
        let primary = r#"{"name":"cbr0","interface":"eth0","ips":["10.250.1.5"],"default":true}"#;
        let others = format!("[{primary}]");
        let p = network_status_patches(
            &[pod_with(
                "web",
                &[
                    (bridgenet_crds::ANNOTATION_NETWORK_STATUS, &reported),
                    (npwg::ANNOTATION_NETWORK_STATUS, &others),
                ],
            )],
            std::slice::from_ref(&web_alloc),
            &facts,
            |_| false,
            NOW,
        );
        assert!(p.problems.is_empty());
        let [patch] = p.patches.as_slice() else {
            panic!("{p:?}")
        };
        assert_eq!(patch.bridgenet, None);
        let Some(Write::Set(merged)) = &patch.npwg else {
            panic!("{patch:?}")
        };
        assert!(merged.starts_with(&format!("[{primary},")), "{merged}");
        assert_eq!(
            patch.body(),
            json!({"metadata": {"resourceVersion": "7", "annotations": {
                npwg::ANNOTATION_NETWORK_STATUS: merged,
            }}})
        );
        let own = StatusPatch {
            pod: web(),
            bridgenet: Some(Write::Remove),
            npwg: None,
            resource_version: Some("7".into()),
        };
        assert_eq!(
            own.body(),
            json!({"metadata": {"annotations": {bridgenet_crds::ANNOTATION_NETWORK_STATUS: null}}})
        );
        // A shared value that is no list is not replaced; the user hears of it.
        let p = network_status_patches(
            &[pod_with(
                "web",
                &[
                    (bridgenet_crds::ANNOTATION_NETWORK_STATUS, &reported),
                    (npwg::ANNOTATION_NETWORK_STATUS, "oops"),
                ],
            )],
            std::slice::from_ref(&web_alloc),
            &facts,
            |_| false,
            NOW,
        );
        assert!(p.patches.is_empty());
        assert_eq!(p.problems[0].reason, "NetworkStatusUnreadable");
    }

    /// Multus writes the shared annotation of the pods it manages: the agent writes none of it
    /// there (its own annotation still), and checks the entries of delegate attachments once
    /// Multus has had time to write them.
    #[test]
    fn multus_managed_pods_are_checked_not_written() {
        let facts = red_facts();
        let mut delegated = alloc("172.20.0.7", "net5");
        delegated.delegate = true;
        let reported = network_status(std::slice::from_ref(&delegated), &facts).to_string();
        let entry = |ip: &str| {
            format!(
                r#"[{{"name":"default/red-nad","interface":"net5","ips":["{ip}"],"mac":"02:00:00:00:00:01","default":false,"dns":{{}}}}]"#
            )
        };
        let check = |shared: Option<&str>, since: u64, selects: bool| {
            let mut ann = vec![(bridgenet_crds::ANNOTATION_NETWORK_STATUS, reported.as_str())];
            if let Some(s) = shared {
                ann.push((npwg::ANNOTATION_NETWORK_STATUS, s));
            }
            if selects {
                ann.push((npwg::ANNOTATION_NETWORKS, "red-nad"));
            }
            let mut a = delegated.clone();
            a.since = since;
            network_status_patches(&[pod_with("web", &ann)], &[a], &facts, |_| false, NOW)
        };
        let good = entry("172.20.0.7");
        let r = check(Some(&good), 0, true);
        assert_eq!(r, StatusReport::default());
        // A delegate attachment alone is enough to know Multus is there.
        assert_eq!(check(Some(&good), 0, false), StatusReport::default());
        let r = check(Some(&entry("172.20.0.8")), 0, true);
        assert!(r.patches.is_empty());
        assert_eq!(r.problems.len(), 1);
        assert_eq!(r.problems[0].reason, "NetworkStatusMismatch");
        assert!(r.problems[0].message.contains("172.20.0.8"), "{r:?}");
        let r = check(None, 0, true);
        assert!(r.problems[0].message.contains("no entry"), "{r:?}");
        // Just attached: Multus writes after the ADD returns.
        assert_eq!(check(None, NOW - 2, true), StatusReport::default());
        // A chained attachment on a pod that selects NADs: not written either.
        let mut chained = delegated.clone();
        chained.delegate = false;
        let p = pod_with(
            "web",
            &[
                (bridgenet_crds::ANNOTATION_NETWORK_STATUS, &reported),
                (npwg::ANNOTATION_NETWORKS, "other-nad"),
            ],
        );
        assert_eq!(
            network_status_patches(&[p], &[chained], &facts, |_| false, NOW),
            StatusReport::default()
        );
    }
}
