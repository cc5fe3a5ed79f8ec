//! What the agent does for each CNI call (and for hot-plug): decide which networks a pod gets,
//! reserve addresses in the journal, build the interfaces, and undo exactly that on DEL/GC.
//!
//! Ordering is what makes it crash-safe: journal (fsync) → veth → result on ADD; veth gone →
//! journal free on DEL. A crash between any two steps leaves an allocation whose veth may or
//! may not exist; the runtime's DEL, CNI GC or the periodic reconcile finds it by sandbox ID and
//! removes both, and nothing else ever frees an address.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::future::Future;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock, PoisonError};
use std::time::Duration;

use bridgenet_crds::{Mac, ResolvedNodeBridge};
use kube::core::{Selector, SelectorExt};
use serde_json::Value;
use tokio::sync::{Mutex, OwnedMutexGuard};

use crate::attach::{self, AttachError, AttachSpec};
use crate::cni::annotation::{self, NetworkRequest, parse_mac};
use crate::cni::types::{
    CniError, CniResult, Command, Interface, IpConfig, NetConf, Request, Response, RouteConfig,
    code, parse_cni_args, version_result,
};
use crate::ipam::{AllocRequest, Allocation, Ipam, IpamError, Pool};
use crate::metrics;

/// What the engine needs to know about a pod.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PodInfo {
    /// The pod's annotations.
    pub annotations: BTreeMap<String, String>,
}

/// A pod's identity.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PodRef {
    /// Namespace.
    pub namespace: String,
    /// Name.
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
        /// The pod.
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
    /// This node's NodeBridge for `network`, resolved, if the network exists here and its spec
    /// resolves (an unresolvable one is reported on the NodeBridge and not used).
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

/// The container runtime as repair needs it: where a running pod's network namespace is. The
/// agent asks CRI; tests answer from their own namespaces.
pub trait Runtime: Send + Sync {
    /// Why the runtime could not answer.
    type Error: std::fmt::Display;
    /// The network namespace of sandbox `container_id` if the runtime runs it (ready);
    /// `Ok(None)` when it does not know it or it is not ready (being created or torn down).
    fn running_netns(
        &self,
        container_id: &str,
    ) -> impl Future<Output = Result<Option<PathBuf>, Self::Error>> + Send;
}

/// What one repair pass did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Repaired {
    /// Host veths put back on their bridge (re-created under them), set up, or marked.
    pub reattached: usize,
    /// Veth pairs re-created in running pods (host end deleted, or the whole node's links).
    pub recreated: usize,
    /// Interfaces that could not be repaired this pass (retried at the next).
    pub failed: usize,
}

impl Repaired {
    /// Whether the pass changed or tried to change anything.
    pub fn is_empty(&self) -> bool {
        *self == Repaired::default()
    }
}

/// Names of the steps a failure can be injected at (environment `BRIDGENET_FAILPOINT`), for
/// the crash tests: the process aborts there, like a `kill -9` at that instant.
pub mod failpoint {
    /// ADD: addresses journaled, no veth yet.
    pub const ADD_AFTER_RESERVE: &str = "add-after-reserve";
    /// ADD: veth created and configured, result not yet sent.
    pub const ADD_AFTER_ATTACH: &str = "add-after-attach";
    /// DEL: allocations looked up, nothing deleted yet.
    pub const DEL_BEFORE_DETACH: &str = "del-before-detach";
    /// DEL: veth deleted, addresses not yet freed.
    pub const DEL_AFTER_DETACH: &str = "del-after-detach";
    /// ADD: the result has reached the plugin (the runtime sees the pod networked), nothing
    /// is reported yet.
    pub const ADD_AFTER_REPLY: &str = "add-after-reply";
    /// Reporting: a pod's `bridgenet.io/network-status` is about to be written.
    pub const REPORT_BEFORE_ANNOTATION: &str = "report-before-annotation";
    /// Reporting: a NodeBridge's endpoints are about to be written.
    pub const REPORT_BEFORE_ENDPOINTS: &str = "report-before-endpoints";
    /// Every step inside a CNI call, in order: a kill at any of them fails the call.
    pub const ALL: &[&str] = &[
        ADD_AFTER_RESERVE,
        ADD_AFTER_ATTACH,
        DEL_BEFORE_DETACH,
        DEL_AFTER_DETACH,
    ];
    /// Every step from an ADD to its results being reported, in order.
    pub const REPORTING: &[&str] = &[
        ADD_AFTER_RESERVE,
        ADD_AFTER_ATTACH,
        ADD_AFTER_REPLY,
        REPORT_BEFORE_ANNOTATION,
        REPORT_BEFORE_ENDPOINTS,
    ];
}

/// Aborts the process if `name` is the armed failpoint (see [`failpoint`]).
pub(crate) fn failpoint(name: &str) {
    static ARMED: OnceLock<Option<String>> = OnceLock::new();
    if ARMED
        .get_or_init(|| std::env::var("BRIDGENET_FAILPOINT").ok())
        .as_deref()
        == Some(name)
    {
        tracing::error!(failpoint = name, "failpoint hit: aborting");
        std::process::abort();
    }
}

/// One attachment made (for results and status).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attached {
    /// Network.
    pub network: String,
    /// Interface in the pod.
    pub interface: String,
    /// MAC of the interface.
    pub mac: String,
    /// MTU.
    pub mtu: u32,
    /// Addresses with prefix.
    pub addresses: Vec<(IpAddr, u8)>,
    /// Gateways of the network (per family).
    pub gateways: Vec<IpAddr>,
    /// Default routes installed.
    pub default_routes: Vec<IpAddr>,
}

/// Where a pod's interfaces go.
#[derive(Clone, Debug)]
pub struct Target {
    /// Sandbox ID.
    pub container_id: String,
    /// The pod's netns path.
    pub netns: PathBuf,
    /// The pod.
    pub pod: Option<PodRef>,
    /// CNI configuration name (empty for hot-plug).
    pub cni_name: String,
}

/// One lock per sandbox: a CNI call, a hot-plug change and a repair of the same sandbox never
/// interleave (a repair must not re-create an interface that a DEL is deleting, nor one that
/// an ADD is still creating), while calls for different sandboxes run in parallel.
#[derive(Default)]
struct SandboxLocks {
    /// Entries exist only while someone holds or waits for the lock.
    held: std::sync::Mutex<HashMap<String, Arc<Mutex<()>>>>,
}

/// A held sandbox lock; the map entry goes with its last holder.
struct SandboxGuard<'a> {
    locks: &'a SandboxLocks,
    id: String,
    guard: Option<OwnedMutexGuard<()>>,
}

impl SandboxLocks {
    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Mutex<()>>>> {
        // Every critical section is one map operation: a poisoned lock holds no torn state.
        self.held.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn entry(&self, id: &str) -> Arc<Mutex<()>> {
        self.map().entry(id.to_owned()).or_default().clone()
    }

    async fn lock(&self, id: &str) -> SandboxGuard<'_> {
        let guard = self.entry(id).lock_owned().await;
        SandboxGuard {
            locks: self,
            id: id.to_owned(),
            guard: Some(guard),
        }
    }

    fn try_lock(&self, id: &str) -> Option<SandboxGuard<'_>> {
        let held = self.entry(id).try_lock_owned().ok();
        match held {
            Some(guard) => Some(SandboxGuard {
                locks: self,
                id: id.to_owned(),
                guard: Some(guard),
            }),
            None => {
                self.release(id);
                None
            }
        }
    }

    fn is_busy(&self, id: &str) -> bool {
        self.map().contains_key(id)
    }

    /// Drops the entry of `id` unless someone else still holds or awaits it.
    fn release(&self, id: &str) {
        let mut map = self.map();
        if map.get(id).is_some_and(|m| Arc::strong_count(m) == 1) {
            map.remove(id);
        }
    }
}

impl Drop for SandboxGuard<'_> {
    fn drop(&mut self) {
        // The guard holds a reference to the entry: release it before counting holders.
        drop(self.guard.take());
        self.locks.release(&self.id);
    }
}

/// The agent's CNI logic.
pub struct Engine<D> {
    dir: D,
    ipam: Mutex<Ipam>,
    sandboxes: SandboxLocks,
    host_netns: Option<PathBuf>,
    network_grace: Duration,
}

/// How long an ADD waits for a network this node does not know yet. `kubectl apply` of a
/// BridgeNetwork and a pod together (Docker's `network create` then `run --network`) starts
/// the pod's sandbox while the operator and agent are still setting the network up, a few
/// hundred milliseconds; failing at once would make the kubelet retry with back-off and show
/// the user sandbox errors for what is only a moment's wait. A network that never appears
/// still fails with its message, this much later.
pub const NEW_NETWORK_GRACE: Duration = Duration::from_secs(5);
/// How long an attach waits for a known network's bridge to be created on the node.
const BRIDGE_GRACE: Duration = Duration::from_secs(2);
const GRACE_POLL: Duration = Duration::from_millis(25);

fn reject(pod: Option<&PodRef>, msg: String, details: &str) -> CniError {
    let who = pod.map(|p| format!("pod {p}: ")).unwrap_or_default();
    CniError::new(code::POD_REQUEST_REJECTED, format!("{who}{msg}"), details)
}

fn ipam_error(e: IpamError, pod: Option<&PodRef>) -> CniError {
    if e.is_request_error() {
        reject(
            pod,
            e.to_string(),
            "pick another address in the bridgenet.io/networks annotation, or omit \"ip\" to get a free one",
        )
    } else if matches!(e, IpamError::Exhausted { .. }) {
        CniError::new(
            code::TRY_AGAIN_LATER,
            e.to_string(),
            "this node's address blocks are full: delete pods on this network here, or give the network a larger blockSize/ipRange",
        )
    } else {
        CniError::new(
            code::IPAM_FAILURE,
            e.to_string(),
            "the agent cannot record addresses under --state-dir: check the node's disk and the agent's logs",
        )
    }
}

fn attach_error(e: AttachError) -> CniError {
    match e {
        AttachError::NoBridge(_) => CniError::new(
            code::TRY_AGAIN_LATER,
            e.to_string(),
            "the agent has not programmed this network on the node yet; the kubelet will retry (check `kubectl get nodebridges` for Ready)",
        ),
        AttachError::Mismatch(m) => CniError::new(
            code::POD_REQUEST_REJECTED,
            m,
            "choose another interface name in the bridgenet.io/networks annotation",
        ),
        other => CniError::new(
            code::NETLINK_FAILURE,
            other.to_string(),
            "the kernel refused to set up the pod's interface; see the bridgenet agent's logs on this node",
        ),
    }
}

impl<D: Directory> Engine<D> {
    /// An engine over the journal in `state_dir`. `host_netns` is the namespace holding the
    /// bridges (`None`: the agent's own — only tests run the node elsewhere).
    pub fn new(dir: D, state_dir: &Path, host_netns: Option<PathBuf>) -> Result<Self, IpamError> {
        Ok(Self {
            dir,
            ipam: Mutex::new(Ipam::open(state_dir)?),
            sandboxes: SandboxLocks::default(),
            host_netns,
            network_grace: NEW_NETWORK_GRACE,
        })
    }

    /// Sets how long an ADD waits for a network the node does not know yet
    /// ([`NEW_NETWORK_GRACE`] by default).
    pub fn with_network_grace(mut self, grace: Duration) -> Self {
        self.network_grace = grace;
        self
    }

    /// Waits (bounded) until every requested network has a NodeBridge on this node.
    async fn await_networks(&self, requests: &[NetworkRequest]) {
        let deadline = tokio::time::Instant::now() + self.network_grace;
        while requests
            .iter()
            .any(|r| self.dir.node_bridge(&r.name).is_none())
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(GRACE_POLL).await;
        }
    }

    /// The directory.
    pub fn directory(&self) -> &D {
        &self.dir
    }

    /// Whether a CNI call, hot-plug change or repair of sandbox `container_id` is under way
    /// (its interfaces and allocations may be half-made or half-gone).
    pub fn is_busy(&self, container_id: &str) -> bool {
        self.sandboxes.is_busy(container_id)
    }

    /// A copy of every live allocation.
    pub async fn allocations(&self) -> Vec<Allocation> {
        self.ipam.lock().await.all().cloned().collect()
    }

    /// Handles one CNI call.
    pub async fn handle(&self, req: Request) -> Response {
        let version = req
            .config
            .get("cniVersion")
            .and_then(Value::as_str)
            .unwrap_or(crate::cni::types::CNI_VERSION)
            .to_owned();
        let result = match serde_json::to_vec(&req.config)
            .map_err(|e| CniError::new(code::DECODE_FAILURE, e.to_string(), ""))
            .and_then(|b| NetConf::parse(&b))
        {
            Ok(conf) => match req.command {
                Command::Add => self.add(&conf, &req).await,
                Command::Del => self.del(&conf, &req).await.map(|()| Value::Null),
                Command::Check => self.check(&conf, &req).await.map(|()| Value::Null),
                Command::Gc => self.gc(&conf).await.map(|()| Value::Null),
                Command::Status => self.status().map(|()| Value::Null),
                Command::Version => Ok(version_result(Some(&conf.cni_version))),
            },
            Err(e) => Err(e),
        };
        match result {
            Ok(v) => Response::Ok(v),
            Err(e) => {
                tracing::warn!(command = %req.command, container = %req.container_id, code = e.code, msg = %e.msg, "CNI call failed");
                Response::Error(e.with_version(&version))
            }
        }
    }

    fn status(&self) -> Result<(), CniError> {
        if self.dir.ready() {
            Ok(())
        } else {
            Err(CniError::new(
                code::NOT_AVAILABLE,
                "bridgenet agent has not synced with the API server yet",
                "wait for the agent on this node to become ready (`kubectl -n bridgenet-system get pods -o wide`)",
            ))
        }
    }

    /// Which networks this CNI call is about: the delegate's one, or the pod's annotation.
    async fn requested(
        &self,
        conf: &NetConf,
        req: &Request,
        pod: Option<&PodRef>,
    ) -> Result<Vec<NetworkRequest>, CniError> {
        let info = match pod {
            Some(p) => match self.dir.pod(p).await {
                Ok(Some(info)) => info,
                Ok(None) if conf.network.is_some() => PodInfo::default(),
                Ok(None) => {
                    return Err(CniError::new(
                        code::TRY_AGAIN_LATER,
                        format!("pod {p} is not known to the API server yet"),
                        "the kubelet retries the sandbox; if it persists, check the agent's connection to the API server",
                    ));
                }
                Err(e) => {
                    return Err(CniError::new(
                        code::TRY_AGAIN_LATER,
                        format!("reading pod {p} from the API server: {e}"),
                        "the kubelet retries the sandbox; check the agent's connection to the API server",
                    ));
                }
            },
            None => PodInfo::default(),
        };
        if let Some(network) = &conf.network {
            let runtime = conf.extra.get("runtimeConfig");
            let mac = runtime
                .and_then(|r| r.get("mac"))
                .and_then(Value::as_str)
                .map(|m| {
                    parse_mac(m).ok_or_else(|| {
                        reject(
                            pod,
                            format!("runtimeConfig mac {m:?} is not a unicast MAC"),
                            "",
                        )
                    })
                })
                .transpose()?;
            let ip = runtime
                .and_then(|r| r.get("ips"))
                .and_then(Value::as_array)
                .and_then(|ips| ips.first())
                .and_then(Value::as_str)
                .map(|s| {
                    s.split('/')
                        .next()
                        .unwrap_or_default()
                        .parse::<IpAddr>()
                        .map_err(|_| {
                            reject(pod, format!("runtimeConfig ip {s:?} is not an address"), "")
                        })
                })
                .transpose()?;
            return Ok(vec![NetworkRequest {
                name: network.clone(),
                interface: req.ifname.clone(),
                ip,
                mac,
                default_route: false,
            }]);
        }
        let Some(value) = info.annotations.get(bridgenet_crds::ANNOTATION_NETWORKS) else {
            return Ok(Vec::new());
        };
        match annotation::parse(value) {
            Ok(list) => Ok(list),
            Err(e) => {
                let msg = format!("annotation {}: {e}", bridgenet_crds::ANNOTATION_NETWORKS);
                if let Some(p) = pod {
                    self.dir.notify(Notice::Rejected {
                        pod: p.clone(),
                        reason: "InvalidNetworkAnnotation",
                        message: msg.clone(),
                    });
                }
                Err(reject(
                    pod,
                    msg,
                    "fix the annotation: a network name, a comma list, or a JSON list of {name, interface, ip, mac}",
                ))
            }
        }
    }

    /// Checks a request against this node's NodeBridge for it (`spec`) and the namespace
    /// selector (`labels`: the pod's namespace labels, read when some spec has a selector).
    fn admit(
        request: &NetworkRequest,
        spec: Option<Arc<ResolvedNodeBridge>>,
        pod: Option<&PodRef>,
        labels: &BTreeMap<String, String>,
    ) -> Result<Arc<ResolvedNodeBridge>, (&'static str, String, &'static str)> {
        let Some(spec) = spec else {
            return Err((
                "UnknownNetwork",
                format!("network {:?} does not exist on this node", request.name),
                "create the BridgeNetwork (kubectl get bridgenetworks), or check that its nodeSelector selects this node",
            ));
        };
        if let (Some(selector), Some(p)) = (&spec.namespace_selector, pod) {
            let admitted = Selector::try_from(selector.clone())
                .map(|s| s.matches(labels))
                .unwrap_or(false);
            if !admitted {
                return Err((
                    "NamespaceNotAdmitted",
                    format!(
                        "network {:?} does not admit pods of namespace {:?} (namespaceSelector)",
                        request.name, p.namespace
                    ),
                    "label the namespace to match the BridgeNetwork's namespaceSelector, or use another network",
                ));
            }
        }
        Ok(spec)
    }

    async fn add(&self, conf: &NetConf, req: &Request) -> Result<Value, CniError> {
        if req.container_id.is_empty() || req.netns.is_empty() {
            return Err(CniError::new(
                code::INVALID_ENV,
                "CNI_CONTAINERID and CNI_NETNS are required for ADD",
                "this is a container runtime bug or a hand-made call",
            ));
        }
        let args = parse_cni_args(&req.args);
        let pod = match (args.get("K8S_POD_NAMESPACE"), args.get("K8S_POD_NAME")) {
            (Some(ns), Some(name)) => Some(PodRef {
                namespace: ns.clone(),
                name: name.clone(),
            }),
            _ if conf.network.is_some() => None,
            _ => {
                return Err(CniError::new(
                    code::INVALID_ENV,
                    "CNI_ARGS lacks K8S_POD_NAMESPACE/K8S_POD_NAME",
                    "bridgenet reads the pod's bridgenet.io/networks annotation; without a pod, configure \"network\" in the CNI config",
                ));
            }
        };
        let requests = self.requested(conf, req, pod.as_ref()).await?;
        self.await_networks(&requests).await;
        let target = Target {
            container_id: req.container_id.clone(),
            netns: PathBuf::from(&req.netns),
            pod: pod.clone(),
            cni_name: conf.name.clone(),
        };
        let attached = self.attach(&target, &requests).await?;
        let mut result = CniResult {
            cni_version: conf.cni_version.clone(),
            ..CniResult::default()
        };
        for a in &attached {
            let index = result.interfaces.len();
            result.interfaces.push(Interface {
                name: a.interface.clone(),
                mac: a.mac.clone(),
                mtu: Some(a.mtu),
                sandbox: req.netns.clone(),
            });
            for (ip, prefix) in &a.addresses {
                result.ips.push(IpConfig {
                    version: None,
                    address: format!("{ip}/{prefix}"),
                    gateway: a
                        .gateways
                        .iter()
                        .find(|g| g.is_ipv6() == ip.is_ipv6())
                        .map(ToString::to_string),
                    interface: Some(index),
                });
            }
            for gw in &a.default_routes {
                result.routes.push(RouteConfig {
                    dst: if gw.is_ipv6() { "::/0" } else { "0.0.0.0/0" }.into(),
                    gw: Some(gw.to_string()),
                });
            }
        }
        failpoint(failpoint::ADD_AFTER_ATTACH);
        Ok(result.append_to(conf.prev_result.as_ref(), &conf.cni_version))
    }

    /// Attaches `requests` to the sandbox, all or nothing. Used by ADD and by hot-plug.
    pub async fn attach(
        &self,
        target: &Target,
        requests: &[NetworkRequest],
    ) -> Result<Vec<Attached>, CniError> {
        let _sandbox = self.sandboxes.lock(&target.container_id).await;
        let pod = target.pod.as_ref();
        let specs: Vec<Option<Arc<ResolvedNodeBridge>>> = requests
            .iter()
            .map(|r| self.dir.node_bridge(&r.name))
            .collect();
        let labels = match pod {
            Some(p) if specs.iter().flatten().any(|s| s.namespace_selector.is_some()) => self
                .dir
                .namespace_labels(&p.namespace)
                .await
                .map_err(|e| {
                    CniError::new(
                        code::TRY_AGAIN_LATER,
                        format!("reading the labels of namespace {}: {e}", p.namespace),
                        "the kubelet retries the sandbox; check the agent's connection to the API server",
                    )
                })?,
            _ => BTreeMap::new(),
        };
        let mut planned = Vec::new();
        for (request, spec) in requests.iter().zip(specs) {
            match Self::admit(request, spec, pod, &labels) {
                Ok(spec) => planned.push((request, spec)),
                Err((reason, msg, details)) => {
                    if let Some(p) = pod {
                        self.dir.notify(Notice::Rejected {
                            pod: p.clone(),
                            reason,
                            message: msg.clone(),
                        });
                    }
                    return Err(reject(pod, msg, details));
                }
            }
        }
        if planned.is_empty() {
            return Ok(Vec::new());
        }
        // Reserve everything first (one journal write each), then build interfaces.
        let mut reserved: Vec<(Vec<Allocation>, &NetworkRequest, Arc<ResolvedNodeBridge>)> =
            Vec::new();
        {
            let mut ipam = self.ipam.lock().await;
            for (request, spec) in planned {
                let host_veth = attach::host_veth_name(&target.container_id, &request.interface);
                let alloc = ipam.allocate(
                    &Pool::from_resolved(&spec),
                    &AllocRequest {
                        container_id: target.container_id.clone(),
                        ifname: request.interface.clone(),
                        pod: pod.map(ToString::to_string).unwrap_or_default(),
                        cni_name: target.cni_name.clone(),
                        host_veth,
                        mac: Mac::new(request.mac.unwrap_or_else(attach::random_mac)).to_string(),
                        ip: request.ip,
                    },
                );
                match alloc {
                    Ok(a) => reserved.push((a, request, spec)),
                    Err(e) => {
                        let undo: Vec<Allocation> =
                            reserved.into_iter().flat_map(|r| r.0).collect();
                        if let Err(e2) = ipam.release(&undo) {
                            tracing::error!(error = %e2, "releasing addresses of a failed ADD");
                        }
                        if e.is_request_error()
                            && let Some(p) = pod
                        {
                            self.dir.notify(Notice::Rejected {
                                pod: p.clone(),
                                reason: "AddressUnavailable",
                                message: e.to_string(),
                            });
                        }
                        return Err(ipam_error(e, pod));
                    }
                }
            }
        }
        failpoint(failpoint::ADD_AFTER_RESERVE);
        let mut done = Vec::new();
        let mut failure = None;
        for (allocs, request, spec) in &reserved {
            if allocs.is_empty() {
                continue;
            }
            let gateways = spec.gateways();
            let default_routes = if request.default_route {
                gateways.clone()
            } else {
                vec![]
            };
            let spec_a = self.attach_spec(spec, allocs, &target.netns, default_routes.clone());
            let (mac, addresses) = (spec_a.mac, spec_a.addresses.clone());
            // The NodeBridge may be seconds old: its bridge may still be being created.
            let deadline = tokio::time::Instant::now() + BRIDGE_GRACE;
            let mut outcome = attach::attach(spec_a.clone()).await;
            while matches!(outcome, Err(AttachError::NoBridge(_)))
                && tokio::time::Instant::now() < deadline
            {
                tokio::time::sleep(GRACE_POLL).await;
                outcome = attach::attach(spec_a.clone()).await;
            }
            match outcome {
                Ok(()) => done.push(Attached {
                    network: request.name.clone(),
                    interface: request.interface.clone(),
                    mac: Mac::new(mac).to_string(),
                    mtu: spec.mtu,
                    addresses,
                    gateways,
                    default_routes,
                }),
                Err(e) => {
                    failure = Some(attach_error(e));
                    break;
                }
            }
        }
        if let Some(err) = failure {
            // All or nothing: undo this call's interfaces and addresses.
            let all: Vec<Allocation> = reserved.into_iter().flat_map(|r| r.0).collect();
            if let Err(e) = self.remove_locked(&all).await {
                tracing::error!(error = %e.msg, "rolling back a failed ADD");
            }
            return Err(err);
        }
        tracing::info!(container = %target.container_id, pod = ?pod.map(ToString::to_string), attached = done.len(), "attached");
        Ok(done)
    }

    /// The interface one attachment (the allocations of one sandbox interface, both families)
    /// gets in the pod at `netns`: what ADD creates and what repair re-creates, from the
    /// journal's name, MAC and addresses.
    fn attach_spec(
        &self,
        spec: &ResolvedNodeBridge,
        allocs: &[Allocation],
        netns: &Path,
        default_routes: Vec<IpAddr>,
    ) -> AttachSpec {
        let first = allocs.first();
        let field = |f: fn(&Allocation) -> &String| first.map(f).cloned().unwrap_or_default();
        AttachSpec {
            host_netns: self.host_netns.clone(),
            pod_netns: netns.to_owned(),
            host_veth: field(|a| &a.host_veth),
            alias: attach::pod_alias(&field(|a| &a.container_id), &field(|a| &a.ifname)),
            pod_ifname: field(|a| &a.ifname),
            bridge: spec.bridge.clone(),
            mtu: spec.mtu,
            mac: parse_mac(&field(|a| &a.mac)).unwrap_or_else(attach::random_mac),
            addresses: allocs.iter().map(|a| (a.ip, a.prefix)).collect(),
            default_routes,
        }
    }

    /// Deletes the interfaces of `allocs`, then frees their addresses. An address whose
    /// interface could not be deleted stays allocated (the next DEL/GC tries again). Takes
    /// each sandbox's lock in turn; every error is returned after all were tried.
    pub async fn remove(&self, allocs: &[Allocation]) -> Result<(), CniError> {
        let mut by_sandbox: BTreeMap<&str, Vec<Allocation>> = BTreeMap::new();
        for a in allocs {
            by_sandbox
                .entry(a.container_id.as_str())
                .or_default()
                .push(a.clone());
        }
        let mut first_error = None;
        for (id, list) in by_sandbox {
            let _sandbox = self.sandboxes.lock(id).await;
            if let Err(e) = self.remove_locked(&list).await {
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// [`Engine::remove`] for a caller that holds the sandboxes' locks.
    async fn remove_locked(&self, allocs: &[Allocation]) -> Result<(), CniError> {
        failpoint(failpoint::DEL_BEFORE_DETACH);
        let veths: BTreeSet<&str> = allocs.iter().map(|a| a.host_veth.as_str()).collect();
        let mut failed = BTreeSet::new();
        let mut first_error = None;
        for veth in veths {
            if let Err(e) = attach::detach(self.host_netns.as_deref(), veth).await {
                tracing::error!(veth, error = %e, "deleting a pod veth");
                failed.insert(veth.to_owned());
                first_error.get_or_insert(e);
            }
        }
        failpoint(failpoint::DEL_AFTER_DETACH);
        let free: Vec<Allocation> = allocs
            .iter()
            .filter(|a| !failed.contains(&a.host_veth))
            .cloned()
            .collect();
        self.ipam
            .lock()
            .await
            .release(&free)
            .map_err(|e| ipam_error(e, None))?;
        match first_error {
            Some(e) => Err(attach_error(e)),
            None => Ok(()),
        }
    }

    fn selected(&self, conf: &NetConf, req: &Request, allocs: Vec<Allocation>) -> Vec<Allocation> {
        match &conf.network {
            // Delegate mode: only the network and interface this call is about.
            Some(net) => allocs
                .into_iter()
                .filter(|a| &a.network == net && (req.ifname.is_empty() || a.ifname == req.ifname))
                .collect(),
            None => allocs,
        }
    }

    async fn del(&self, conf: &NetConf, req: &Request) -> Result<(), CniError> {
        let _sandbox = self.sandboxes.lock(&req.container_id).await;
        let allocs = self.ipam.lock().await.of_container(&req.container_id);
        let allocs = self.selected(conf, req, allocs);
        if allocs.is_empty() {
            return Ok(());
        }
        self.remove_locked(&allocs).await?;
        tracing::info!(container = %req.container_id, detached = allocs.len(), "detached");
        Ok(())
    }

    async fn check(&self, conf: &NetConf, req: &Request) -> Result<(), CniError> {
        let allocs = self.ipam.lock().await.of_container(&req.container_id);
        let allocs = self.selected(conf, req, allocs);
        let mut by_if: BTreeMap<(String, String), Vec<&Allocation>> = BTreeMap::new();
        for a in &allocs {
            by_if
                .entry((a.network.clone(), a.ifname.clone()))
                .or_default()
                .push(a);
        }
        if by_if.is_empty() && conf.network.is_some() {
            return Err(CniError::new(
                code::CHECK_FAILED,
                format!(
                    "no attachment of {} for this sandbox",
                    conf.network.as_deref().unwrap_or_default()
                ),
                "the pod lost its interface; delete the pod to recreate it",
            ));
        }
        for ((network, ifname), list) in by_if {
            let bridge = self
                .dir
                .node_bridge(&network)
                .map(|s| s.bridge.clone())
                .ok_or_else(|| {
                    CniError::new(
                        code::CHECK_FAILED,
                        format!("network {network} no longer exists on this node"),
                        "",
                    )
                })?;
            attach::check(
                self.host_netns.as_deref(),
                Path::new(&req.netns),
                attach::Expected {
                    host_veth: list[0].host_veth.clone(),
                    bridge,
                    pod_ifname: ifname,
                    addresses: list.iter().map(|a| a.ip).collect(),
                },
            )
            .await
            .map_err(|e| {
                CniError::new(
                    code::CHECK_FAILED,
                    e.to_string(),
                    "delete the pod to recreate its interfaces",
                )
            })?;
        }
        Ok(())
    }

    async fn gc(&self, conf: &NetConf) -> Result<(), CniError> {
        let valid: HashSet<String> = conf.valid_attachments()?.into_iter().collect();
        let stale: Vec<Allocation> = self
            .ipam
            .lock()
            .await
            .all()
            .filter(|a| a.cni_name == conf.name && !valid.contains(&a.container_id))
            .cloned()
            .collect();
        if !stale.is_empty() {
            tracing::info!(
                count = stale.len(),
                "CNI GC frees attachments of sandboxes the runtime no longer knows"
            );
            self.remove(&stale).await?;
        }
        self.sweep_stray_veths().await.map_err(attach_error)
    }

    /// The allocations of one sandbox.
    pub async fn allocations_of(&self, container_id: &str) -> Vec<Allocation> {
        self.ipam.lock().await.of_container(container_id)
    }

    /// Frees every allocation older than `min_age` whose sandbox is not in `live` (the
    /// runtime's sandboxes, from CRI). Returns how many were freed.
    ///
    /// `min_age` covers sandboxes being created: a runtime may list a sandbox only once its
    /// CNI ADD has returned, so a young allocation can belong to an ADD in flight.
    pub async fn reconcile(
        &self,
        live: &HashSet<String>,
        min_age: std::time::Duration,
    ) -> Result<usize, CniError> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let stale: Vec<Allocation> = self
            .ipam
            .lock()
            .await
            .all()
            .filter(|a| !live.contains(&a.container_id) && a.since + min_age.as_secs() <= now)
            .cloned()
            .collect();
        if !stale.is_empty() {
            tracing::info!(
                count = stale.len(),
                "reconcile frees attachments of sandboxes that are gone"
            );
            self.remove(&stale).await?;
        }
        self.sweep_stray_veths().await.map_err(attach_error)?;
        Ok(stale.len())
    }

    /// Detaches one interface of a running sandbox (hot-unplug).
    pub async fn detach_interface(
        &self,
        container_id: &str,
        network: &str,
    ) -> Result<(), CniError> {
        let _sandbox = self.sandboxes.lock(container_id).await;
        let allocs: Vec<Allocation> = self
            .ipam
            .lock()
            .await
            .of_container(container_id)
            .into_iter()
            .filter(|a| a.network == network)
            .collect();
        self.remove_locked(&allocs).await
    }

    /// Puts every running pod's interfaces back on their networks, as the journal records them
    /// (same interface name, MAC and addresses), after links were deleted by hand or by a host
    /// network restart. Reads only when everything is in place.
    ///
    /// - A host veth not on its bridge (the bridge was deleted and re-created: the kernel
    ///   released its ports), down, or without its marker is put back, up and marked.
    /// - A host veth that is gone took the pod end with it (veth pairs die together): the
    ///   pair is re-created in the pod's namespace, as hot-plug would, if the runtime runs the
    ///   sandbox; a sandbox it does not run is left to DEL and the reconcile.
    /// - A network whose bridge is missing is skipped: the data plane re-creates the bridge
    ///   and triggers another pass.
    ///
    /// Sandboxes with a CNI call or hot-plug change in flight are skipped (their lock is held).
    pub async fn repair<R: Runtime>(&self, runtime: &R) -> Result<Repaired, CniError> {
        let mut interfaces: BTreeMap<(String, String), Vec<Allocation>> = BTreeMap::new();
        for a in self.allocations().await {
            interfaces
                .entry((a.container_id.clone(), a.ifname.clone()))
                .or_default()
                .push(a);
        }
        if interfaces.is_empty() {
            return Ok(Repaired::default());
        }
        let host = self.host_netns.as_deref();
        let links = attach::host_links(host).await.map_err(attach_error)?;
        let by_name: HashMap<&str, &attach::HostLink> =
            links.iter().map(|l| (l.name.as_str(), l)).collect();
        let mut done = Repaired::default();
        for ((container, ifname), allocs) in interfaces {
            let Some(first) = allocs.first() else {
                continue;
            };
            let Some(spec) = self.dir.node_bridge(&first.network) else {
                continue;
            };
            let Some(bridge) = by_name
                .get(spec.bridge.as_str())
                .filter(|l| l.kind == "bridge")
            else {
                continue;
            };
            let alias = attach::pod_alias(&container, &ifname);
            let veth = by_name.get(first.host_veth.as_str());
            if let Some(v) = veth {
                if v.kind != "veth" {
                    tracing::warn!(veth = %v.name, kind = %v.kind, pod = %first.pod, "a link that is not a veth has a pod veth's name; not touching it");
                    continue;
                }
                if v.master == Some(bridge.index) && v.up && v.alias.as_deref() == Some(&alias) {
                    continue;
                }
            }
            let Some(_sandbox) = self.sandboxes.try_lock(&container) else {
                continue;
            };
            // Still journaled now that the lock is ours: a DEL may have just finished.
            if !self
                .ipam
                .lock()
                .await
                .of_container(&container)
                .iter()
                .any(|a| a.ifname == ifname)
            {
                continue;
            }
            let outcome = match veth {
                Some(v) => attach::reattach(host, v.index, bridge.index, alias)
                    .await
                    .map(|()| metrics::Repair::Reattached),
                None => match runtime.running_netns(&container).await {
                    Ok(Some(netns)) => self
                        .recreate(&spec, &allocs, &netns)
                        .await
                        .map(|()| metrics::Repair::Recreated),
                    Ok(None) => continue,
                    Err(e) => {
                        tracing::warn!(container = %container, error = %e, "asking the runtime for a sandbox to repair");
                        done.failed += 1;
                        continue;
                    }
                },
            };
            match outcome {
                Ok(what) => {
                    metrics::repaired(what);
                    match what {
                        metrics::Repair::Reattached => done.reattached += 1,
                        metrics::Repair::Recreated => done.recreated += 1,
                    }
                    tracing::info!(pod = %first.pod, container = %container, interface = %ifname, network = %first.network, bridge = %spec.bridge, action = ?what, "pod interface repaired");
                }
                Err(e) => {
                    done.failed += 1;
                    tracing::warn!(pod = %first.pod, container = %container, interface = %ifname, network = %first.network, error = %e, "repairing a pod interface failed; retrying at the next pass");
                }
            }
        }
        Ok(done)
    }

    /// Re-creates one pod interface in a running pod, with a default route if its annotation
    /// still asks for one there.
    async fn recreate(
        &self,
        spec: &ResolvedNodeBridge,
        allocs: &[Allocation],
        netns: &Path,
    ) -> Result<(), AttachError> {
        let Some(first) = allocs.first() else {
            return Ok(());
        };
        let default_route = match first.pod.split_once('/') {
            Some((namespace, name)) => {
                let pod = PodRef {
                    namespace: namespace.to_owned(),
                    name: name.to_owned(),
                };
                match self.dir.pod(&pod).await {
                    Ok(Some(info)) => info
                        .annotations
                        .get(bridgenet_crds::ANNOTATION_NETWORKS)
                        .and_then(|v| annotation::parse(v).ok())
                        .is_some_and(|requests| {
                            // A sandbox has one interface per network (hot-plug keys on
                            // it), whatever position the network has in the list now.
                            requests
                                .iter()
                                .any(|r| r.name == first.network && r.default_route)
                        }),
                    _ => false,
                }
            }
            None => false,
        };
        let routes = if default_route {
            spec.gateways()
        } else {
            Vec::new()
        };
        let attach_spec = self.attach_spec(spec, allocs, netns, routes);
        let host_veth = attach_spec.host_veth.clone();
        let result = attach::attach(attach_spec).await;
        if result.is_err() {
            // Whatever half of it was made: the next pass starts clean.
            if let Err(e) = attach::detach(self.host_netns.as_deref(), &host_veth).await {
                tracing::warn!(veth = %host_veth, error = %e, "removing a half-repaired pod veth");
            }
        }
        result
    }

    /// Deletes pod veths that bridgenet marked (kind `veth`, alias [`attach::POD_ALIAS_PREFIX`])
    /// but that no allocation names: only possible if the journal was lost, but then they would
    /// hold a bridge port forever. Never by name prefix: a network's VXLAN port shares the pod
    /// veths' `bnv`, and a periodic sweep by prefix deleted the overlay of every network.
    async fn sweep_stray_veths(&self) -> Result<(), AttachError> {
        let known: HashSet<String> = self
            .ipam
            .lock()
            .await
            .all()
            .map(|a| a.host_veth.clone())
            .collect();
        let links = attach::host_links(self.host_netns.as_deref()).await?;
        for link in links
            .into_iter()
            .filter(|l| l.is_pod_veth() && !known.contains(&l.name))
        {
            // Re-check under the lock: an ADD may have just journaled it.
            if self
                .ipam
                .lock()
                .await
                .all()
                .any(|a| a.host_veth == link.name)
            {
                continue;
            }
            tracing::warn!(veth = %link.name, alias = ?link.alias, "deleting a stray pod veth with no allocation");
            attach::detach(self.host_netns.as_deref(), &link.name).await?;
        }
        Ok(())
    }
}
