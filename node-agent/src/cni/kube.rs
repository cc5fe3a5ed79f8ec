//! The engine's view of the cluster, from the API server: this node's NodeBridges and pods
//! (reflector caches, so ADD does not wait on the API server), namespace labels when a network
//! has a `namespaceSelector`, and the way results get back to users — Events on pods, the
//! `bridgenet.io/network-status` annotation, endpoints and counts in `NodeBridge.status`.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bridgenet_crds::v1alpha1::Endpoint;
use bridgenet_crds::{NodeBridge, NodeBridgeSpec};
use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource};
use serde_json::json;
use tokio::sync::mpsc;

use crate::cni::engine::{Directory, Engine, Notice, PodInfo, PodRef};
use crate::ipam::{Allocation, Pool};
use crate::nodebridge::StatusWriter;

/// The cluster through reflector caches.
#[derive(Clone)]
pub struct KubeDirectory {
    client: Client,
    node: String,
    bridges: Store<NodeBridge>,
    pods: Store<Pod>,
    ready: Arc<AtomicBool>,
    notices: mpsc::UnboundedSender<Notice>,
}

/// The watch streams that keep a [`KubeDirectory`] current; the caller drives them.
pub struct Feeds {
    /// NodeBridges of this node.
    pub bridges: std::pin::Pin<Box<dyn Stream<Item = ()> + Send>>,
    /// Pods of this node; yields each pod that changed.
    pub pods: std::pin::Pin<Box<dyn Stream<Item = Option<PodRef>> + Send>>,
    /// Notices for [`status_loop`].
    pub notices: mpsc::UnboundedReceiver<Notice>,
}

impl KubeDirectory {
    /// A directory for `node` and the streams feeding it.
    pub fn new(client: Client, node: &str) -> (Self, Feeds) {
        let (bridges, bridge_writer) = reflector::store();
        let (pods, pod_writer) = reflector::store();
        let bridge_stream = reflector::reflector(
            bridge_writer,
            watcher(
                Api::<NodeBridge>::all(client.clone()),
                watcher::Config::default()
                    .labels(&format!("{}={node}", bridgenet_crds::LABEL_NODE)),
            ),
        )
        .default_backoff()
        .map(|ev| {
            if let Err(e) = ev {
                tracing::warn!(error = %e, "watching NodeBridges");
            }
        });
        let pod_stream = reflector::reflector(
            pod_writer,
            watcher(
                Api::<Pod>::all(client.clone()),
                watcher::Config::default().fields(&format!("spec.nodeName={node}")),
            ),
        )
        .default_backoff()
        .touched_objects()
        .map(|ev| match ev {
            Ok(pod) => Some(PodRef {
                namespace: pod.metadata.namespace.clone().unwrap_or_default(),
                name: pod.metadata.name.clone().unwrap_or_default(),
            }),
            Err(e) => {
                tracing::warn!(error = %e, "watching this node's pods");
                None
            }
        });
        let (tx, rx) = mpsc::unbounded_channel();
        let dir = Self {
            client,
            node: node.to_owned(),
            bridges,
            pods,
            ready: Arc::default(),
            notices: tx,
        };
        (
            dir,
            Feeds {
                bridges: Box::pin(bridge_stream),
                pods: Box::pin(pod_stream),
                notices: rx,
            },
        )
    }

    /// Marks the directory ready once both caches have their first list.
    pub async fn wait_synced(&self) {
        let _ = self.bridges.wait_until_ready().await;
        let _ = self.pods.wait_until_ready().await;
        self.ready.store(true, Ordering::Release);
    }

    /// The cached pods of this node.
    pub fn pods(&self) -> Vec<Arc<Pod>> {
        self.pods.state()
    }

    /// A cached pod.
    pub fn cached_pod(&self, pod: &PodRef) -> Option<Arc<Pod>> {
        self.pods
            .get(&ObjectRef::new(&pod.name).within(&pod.namespace))
    }

    /// This node's NodeBridges.
    pub fn bridges(&self) -> Vec<Arc<NodeBridge>> {
        self.bridges
            .state()
            .into_iter()
            .filter(|nb| nb.spec.node == self.node)
            .collect()
    }
}

impl Directory for KubeDirectory {
    fn node_bridge(&self, network: &str) -> Option<NodeBridgeSpec> {
        self.bridges()
            .into_iter()
            .find(|nb| nb.spec.network == network && nb.metadata.deletion_timestamp.is_none())
            .map(|nb| nb.spec.clone())
    }

    async fn pod(&self, pod: &PodRef) -> Result<Option<PodInfo>, String> {
        let obj = match self.cached_pod(pod) {
            Some(p) => p,
            // Just created: the watch may lag the kubelet by a moment.
            None => match Api::<Pod>::namespaced(self.client.clone(), &pod.namespace)
                .get_opt(&pod.name)
                .await
                .map_err(|e| e.to_string())?
            {
                Some(p) => Arc::new(p),
                None => return Ok(None),
            },
        };
        Ok(Some(PodInfo {
            annotations: obj.metadata.annotations.clone().unwrap_or_default(),
        }))
    }

    async fn namespace_labels(&self, namespace: &str) -> Result<BTreeMap<String, String>, String> {
        Ok(Api::<Namespace>::all(self.client.clone())
            .get_metadata(namespace)
            .await
            .map_err(|e| e.to_string())?
            .metadata
            .labels
            .unwrap_or_default())
    }

    fn ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    fn notify(&self, notice: Notice) {
        let _ = self.notices.send(notice);
    }
}

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

/// The endpoints of `network` on this node, for `NodeBridge.status`.
pub fn endpoints(allocs: &[Allocation], network: &str) -> Vec<Endpoint> {
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

/// What the address counts of this node's NodeBridges depend on: name, blocks, exclusions.
fn block_fingerprint(bridges: &[Arc<NodeBridge>]) -> Vec<(String, Vec<String>, Vec<String>)> {
    let mut out: Vec<_> = bridges
        .iter()
        .map(|nb| {
            (
                nb.metadata.name.clone().unwrap_or_default(),
                nb.spec.blocks.clone(),
                nb.spec.exclude_addresses.clone(),
            )
        })
        .collect();
    out.sort();
    out
}

/// Publishes Events, keeps pods' `network-status` annotation and the NodeBridges' endpoint
/// status current. Writes are batched once a second.
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
    let mut dirty_pods: BTreeSet<PodRef> = BTreeSet::new();
    let mut endpoints_dirty = true;
    // The address counts describe the node's blocks, so they are rewritten whenever the set
    // of NodeBridges or their blocks change, not only when a pod does: the operator grows a
    // node's blocks from these counts, and a NodeBridge that appears after start (or gets a
    // new block) would otherwise keep reporting the defaults.
    let mut reported_blocks: Vec<(String, Vec<String>, Vec<String>)> = Vec::new();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
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
                Some(Notice::Changed { pod }) => {
                    dirty_pods.insert(pod);
                    endpoints_dirty = true;
                }
            },
            _ = tick.tick() => {
                let dir = engine.directory();
                let blocks = block_fingerprint(&dir.bridges());
                if blocks != reported_blocks {
                    endpoints_dirty = true;
                }
                if dirty_pods.is_empty() && !endpoints_dirty {
                    continue;
                }
                let allocs = engine.allocations().await;
                let gateways: BTreeMap<String, Vec<String>> = dir
                    .bridges()
                    .iter()
                    .map(|nb| {
                        let mut g = vec![nb.spec.gateway.clone()];
                        g.extend(nb.spec.ipv6.as_ref().map(|v6| v6.gateway.clone()));
                        (nb.spec.network.clone(), g)
                    })
                    .collect();
                for pod in std::mem::take(&mut dirty_pods) {
                    let key = pod.to_string();
                    let mine: Vec<Allocation> = allocs.iter().filter(|a| a.pod == key).cloned().collect();
                    let value = if mine.is_empty() {
                        serde_json::Value::Null
                    } else {
                        serde_json::Value::String(network_status(&mine, &gateways).to_string())
                    };
                    let patch = json!({"metadata": {"annotations": {
                        bridgenet_crds::ANNOTATION_NETWORK_STATUS: value,
                    }}});
                    let api = Api::<Pod>::namespaced(client.clone(), &pod.namespace);
                    match api.patch(&pod.name, &PatchParams::default(), &Patch::Merge(&patch)).await {
                        Ok(_) => {}
                        Err(kube::Error::Api(s)) if s.code == 404 => {}
                        Err(e) => {
                            tracing::warn!(pod = %pod, error = %e, "writing network-status");
                            dirty_pods.insert(pod);
                        }
                    }
                }
                endpoints_dirty = false;
                reported_blocks = blocks;
                for nb in dir.bridges() {
                    let Some(name) = nb.metadata.name.clone() else { continue };
                    let list = endpoints(&allocs, &nb.spec.network);
                    let allocated = allocs
                        .iter()
                        .filter(|a| a.network == nb.spec.network && a.ip.is_ipv4())
                        .count();
                    let capacity = Pool::from_spec(&nb.spec).map_or(0, |p| p.capacity_v4());
                    status.seed(&name, nb.status.as_ref());
                    let result = status
                        .update(&name, |s| {
                            s.endpoint_count = i32::try_from(list.len()).unwrap_or(i32::MAX);
                            s.endpoints = list;
                            s.allocated_addresses = i64::try_from(allocated).unwrap_or(i64::MAX);
                            s.free_addresses = i64::try_from(capacity).unwrap_or(i64::MAX)
                                - s.allocated_addresses;
                        })
                        .await;
                    if let Err(e) = result {
                        tracing::warn!(nodebridge = %name, error = %e, "writing endpoints");
                        endpoints_dirty = true;
                    }
                }
            }
        }
    }
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
            host_veth: "bnv1".into(),
            mac: "02:00:00:00:00:01".into(),
            since: 1_700_000_000,
        }
    }

    #[test]
    fn status_views_merge_families_per_interface() {
        let allocs = vec![alloc("172.20.0.5", "net1"), alloc("fd00::5", "net1")];
        let eps = endpoints(&allocs, "red");
        assert_eq!(eps.len(), 1);
        assert_eq!(eps[0].ipv4.as_deref(), Some("172.20.0.5/24"));
        assert_eq!(eps[0].ipv6.as_deref(), Some("fd00::5/64"));
        assert_eq!(eps[0].pod, "web");
        assert!(eps[0].since.is_some());
        assert!(endpoints(&allocs, "blue").is_empty());
        let gw = BTreeMap::from([("red".to_owned(), vec!["172.20.0.1".to_owned()])]);
        let v = network_status(&allocs, &gw);
        assert_eq!(v[0]["interface"], "net1");
        assert_eq!(v[0]["ips"], json!(["172.20.0.5", "fd00::5"]));
        assert_eq!(v[0]["gateway"], json!(["172.20.0.1"]));
    }
}
