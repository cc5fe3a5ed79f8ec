//! The engine's view of the cluster, from the API server: this node's NodeBridges and pods
//! (reflector caches, so ADD does not wait on the API server), namespace labels when a network
//! has a `namespaceSelector`, and the channel its notices leave by (see [`crate::cni::report`]
//! for the way results get back to users).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bridgenet_crds::{AddressClaim, NodeBridge, ResolvedNodeBridge};
use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::{DeleteParams, ListParams, PostParams, Preconditions};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, ResourceExt};
use tokio::sync::mpsc;

use crate::cni::engine::{ClaimWriteError, Created, Directory, Notice, PodInfo, PodRef};
use crate::nodebridge::SpecCache;

/// The engine's [`Directory`] from reflector caches of this node's NodeBridges and pods;
/// clones share the caches.
#[derive(Clone)]
pub struct KubeDirectory {
    client: Client,
    node: String,
    bridges: Store<NodeBridge>,
    specs: SpecCache,
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
    /// Notices for [`crate::cni::report::status_loop`].
    pub notices: mpsc::UnboundedReceiver<Notice>,
}

impl KubeDirectory {
    /// A directory for `node` and the streams feeding it.
    pub fn new(client: Client, node: &str) -> (Self, Feeds) {
        let (bridges, bridge_writer) = reflector::store();
        let (pods, pod_writer) = reflector::store();
        let specs = SpecCache::default();
        let (store, cache) = (bridges.clone(), specs.clone());
        let bridge_stream = reflector::reflector(
            bridge_writer,
            watcher(
                Api::<NodeBridge>::all(client.clone()),
                watcher::Config::default()
                    .labels(&format!("{}={node}", bridgenet_crds::LABEL_NODE)),
            ),
        )
        .default_backoff()
        .map(move |ev| match ev {
            // Resolved as they arrive (the store already holds them), and dropped when gone.
            Ok(watcher::Event::Apply(_) | watcher::Event::Delete(_) | watcher::Event::InitDone) => {
                let current: Vec<Arc<NodeBridge>> = store.state();
                for nb in &current {
                    let _ = cache.resolve(&nb.name_any(), &nb.spec);
                }
                cache.retain(|name| current.iter().any(|nb| nb.name_any() == name));
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "watching NodeBridges"),
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
            Ok(pod) => Some(PodRef::of(&pod.metadata)),
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
            specs,
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

    /// The pod from the cache, if the watch has brought it yet.
    pub fn cached_pod(&self, pod: &PodRef) -> Option<Arc<Pod>> {
        self.pods
            .get(&ObjectRef::new(&pod.name).within(&pod.namespace))
    }

    /// This node's NodeBridges in the cache, those being deleted included.
    pub fn bridges(&self) -> Vec<Arc<NodeBridge>> {
        self.bridges
            .state()
            .into_iter()
            .filter(|nb| nb.spec.node == self.node)
            .collect()
    }

    /// `nb` resolved, or `None` when its spec does not resolve (the NodeBridge controller
    /// reports why on its status).
    pub fn resolved(&self, nb: &NodeBridge) -> Option<Arc<ResolvedNodeBridge>> {
        self.specs.resolve(&nb.name_any(), &nb.spec).ok()
    }
}

impl Directory for KubeDirectory {
    fn node_bridge(&self, network: &str) -> Option<Arc<ResolvedNodeBridge>> {
        self.bridges()
            .into_iter()
            .find(|nb| nb.spec.network == network && nb.metadata.deletion_timestamp.is_none())
            .and_then(|nb| self.resolved(&nb))
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
            uid: obj.metadata.uid.clone().unwrap_or_default(),
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

    fn claims_enabled(&self) -> bool {
        true
    }

    fn node_name(&self) -> &str {
        &self.node
    }

    async fn create_claim(&self, claim: &AddressClaim) -> Result<Created, String> {
        match self.claims().create(&PostParams::default(), claim).await {
            Ok(c) => Ok(Created::New(Box::new(c))),
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(Created::Exists),
            Err(e) => Err(e.to_string()),
        }
    }

    async fn get_claim(&self, name: &str) -> Result<Option<AddressClaim>, String> {
        self.claims().get_opt(name).await.map_err(|e| e.to_string())
    }

    async fn list_claims(&self, network: &str) -> Result<Vec<AddressClaim>, String> {
        // No resourceVersion: a consistent read from etcd, never the watch cache, since a
        // grant made just before a block came to this node must be seen.
        let params =
            ListParams::default().labels(&format!("{}={network}", bridgenet_crds::LABEL_NETWORK));
        self.claims()
            .list(&params)
            .await
            .map(|l| l.items)
            .map_err(|e| e.to_string())
    }

    async fn replace_claim(&self, claim: &AddressClaim) -> Result<AddressClaim, ClaimWriteError> {
        let name = claim.name_any();
        self.claims()
            .replace(&name, &PostParams::default(), claim)
            .await
            .map_err(claim_write_error)
    }

    async fn replace_claim_status(
        &self,
        claim: &AddressClaim,
    ) -> Result<AddressClaim, ClaimWriteError> {
        let name = claim.name_any();
        self.claims()
            .replace_status(&name, &PostParams::default(), claim)
            .await
            .map_err(claim_write_error)
    }

    async fn delete_claim(&self, claim: &AddressClaim) -> Result<(), ClaimWriteError> {
        let params = DeleteParams {
            preconditions: Some(Preconditions {
                uid: claim.metadata.uid.clone(),
                resource_version: claim.metadata.resource_version.clone(),
            }),
            ..DeleteParams::default()
        };
        let name = claim.name_any();
        match self.claims().delete(&name, &params).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
            Err(e) => Err(claim_write_error(e)),
        }
    }
}

impl KubeDirectory {
    fn claims(&self) -> Api<AddressClaim> {
        Api::all(self.client.clone())
    }
}

/// A 409 (another write came first, or a precondition failed) is a conflict to re-decide.
fn claim_write_error(e: kube::Error) -> ClaimWriteError {
    match e {
        kube::Error::Api(s) if s.code == 409 => ClaimWriteError::Conflict,
        other => ClaimWriteError::Api(other.to_string()),
    }
}
