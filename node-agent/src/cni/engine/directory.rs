//! The engine's ports to the cluster: what it reads of pods, namespaces and this node's
//! NodeBridges, and the notices it hands back for users. The agent implements [`Directory`]
//! with kube reflectors (`cni/kube.rs`); tests with fixed data.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;

use bridgenet_crds::ResolvedNodeBridge;

/// What the engine needs to know about a pod.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PodInfo {
    /// Its annotations; the engine reads `bridgenet.io/networks` from them.
    pub annotations: BTreeMap<String, String>,
}

/// A pod by namespace and name; displayed `namespace/name`, as allocations record it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PodRef {
    /// Its namespace, whose labels a network's `namespaceSelector` is matched against.
    pub namespace: String,
    /// Its name within the namespace.
    pub name: String,
}

impl std::fmt::Display for PodRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// Something the rest of the agent should know right away: an Event for the user.
///
/// Results (the pod's `network-status`, NodeBridge endpoints and counts) are deliberately not
/// notices: they are derived from the journal on every pass of the status writer, so that a
/// crash between an ADD and its report loses nothing. A lost rejection notice is re-derived
/// too, by the caller: the kubelet retries a refused sandbox, hot-plug re-evaluates every
/// resync.
#[derive(Clone, Debug, PartialEq)]
pub enum Notice {
    /// A pod's request was refused: an Event of type Warning on the pod.
    Rejected {
        /// The pod the Event is recorded on.
        pod: PodRef,
        /// Short CamelCase reason.
        reason: &'static str,
        /// What to do.
        message: String,
    },
}

/// The cluster as the engine sees it. The agent implements it with kube reflectors; tests with
/// fixed data.
pub trait Directory: Send + Sync + 'static {
    /// This node's NodeBridge for `network`, if the network exists here.
    fn node_bridge(&self, network: &str) -> Option<Arc<ResolvedNodeBridge>>;
    /// The pod; `Ok(None)` if the pod does not exist.
    fn pod(&self, pod: &PodRef) -> impl Future<Output = Result<Option<PodInfo>, String>> + Send;
    /// The labels of `namespace`, for a network with a `namespaceSelector`. Asked only once
    /// the engine holds that network's NodeBridge: a sandbox may start before the NodeBridge
    /// reaches the node, so whether labels are needed is not known when the pod is read.
    fn namespace_labels(
        &self,
        namespace: &str,
    ) -> impl Future<Output = Result<BTreeMap<String, String>, String>> + Send;
    /// Whether the directory has synced (STATUS answers "not available" until then).
    fn ready(&self) -> bool;
    /// Reports a notice; must not block.
    fn notify(&self, notice: Notice);
}
