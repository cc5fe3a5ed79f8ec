//! The engine's ports to the cluster: what it reads of pods, namespaces and this node's
//! NodeBridges, and the notices it hands back for users. The agent implements [`Directory`]
//! with kube reflectors (`cni/kube.rs`); tests with fixed data.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;

use bridgenet_crds::{AddressClaim, ResolvedNodeBridge};

/// What the engine needs to know about a pod.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PodInfo {
    /// Its annotations; the engine reads `bridgenet.io/networks` from them.
    pub annotations: BTreeMap<String, String>,
    /// Its UID, recorded in the `AddressClaim`s it holds.
    pub uid: String,
}

/// Why a guarded write of an `AddressClaim` did not happen.
#[derive(Debug, thiserror::Error)]
pub enum ClaimWriteError {
    /// The claim changed (or was replaced) since it was read: read it again and decide again.
    #[error("the address claim changed since it was read")]
    Conflict,
    /// The API server could not be asked.
    #[error("{0}")]
    Api(String),
}

/// What creating an `AddressClaim` found.
#[derive(Debug)]
pub enum Created {
    /// Created: the claim is this call's.
    New(Box<AddressClaim>),
    /// A claim of that name (the same network and address) already exists.
    Exists,
}

const NO_CLAIMS: &str = "this agent has no AddressClaim store";

/// A pod by namespace and name; displayed `namespace/name`, as allocations record it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PodRef {
    /// Its namespace, whose labels a network's `namespaceSelector` is matched against.
    pub namespace: String,
    /// Its name within the namespace.
    pub name: String,
}

impl PodRef {
    /// The pod an object's metadata names.
    pub fn of(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> Self {
        Self {
            namespace: meta.namespace.clone().unwrap_or_default(),
            name: meta.name.clone().unwrap_or_default(),
        }
    }
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

    /// Whether addresses can be claimed cluster-wide (`AddressClaim`s): a static address
    /// anywhere in the subnet, sticky addresses. Without it a static address must lie in this
    /// node's blocks.
    fn claims_enabled(&self) -> bool {
        false
    }
    /// This node's name, as claims record it.
    fn node_name(&self) -> &str {
        ""
    }
    /// Creates a claim (the API server's name uniqueness decides between claimers).
    fn create_claim(
        &self,
        claim: &AddressClaim,
    ) -> impl Future<Output = Result<Created, String>> + Send {
        let _ = claim;
        async { Err(NO_CLAIMS.to_owned()) }
    }
    /// Reads a claim from the API server (not a cache); `None` if there is none.
    fn get_claim(
        &self,
        name: &str,
    ) -> impl Future<Output = Result<Option<AddressClaim>, String>> + Send {
        let _ = name;
        async { Err(NO_CLAIMS.to_owned()) }
    }
    /// Every claim of `network`, as of now (a consistent read, not a cache).
    fn list_claims(
        &self,
        network: &str,
    ) -> impl Future<Output = Result<Vec<AddressClaim>, String>> + Send {
        let _ = network;
        async { Err(NO_CLAIMS.to_owned()) }
    }
    /// Replaces a claim's spec, guarded by its `resourceVersion`.
    fn replace_claim(
        &self,
        claim: &AddressClaim,
    ) -> impl Future<Output = Result<AddressClaim, ClaimWriteError>> + Send {
        let _ = claim;
        async { Err(ClaimWriteError::Api(NO_CLAIMS.to_owned())) }
    }
    /// Replaces a claim's status, guarded by its `resourceVersion`.
    fn replace_claim_status(
        &self,
        claim: &AddressClaim,
    ) -> impl Future<Output = Result<AddressClaim, ClaimWriteError>> + Send {
        let _ = claim;
        async { Err(ClaimWriteError::Api(NO_CLAIMS.to_owned())) }
    }
    /// Deletes a claim if it still is the one read (its UID and `resourceVersion`); a claim
    /// already gone is success.
    fn delete_claim(
        &self,
        claim: &AddressClaim,
    ) -> impl Future<Output = Result<(), ClaimWriteError>> + Send {
        let _ = claim;
        async { Err(ClaimWriteError::Api(NO_CLAIMS.to_owned())) }
    }
}
