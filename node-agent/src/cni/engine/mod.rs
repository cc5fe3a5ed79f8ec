//! What the agent does for each CNI call (and for hot-plug): decide which networks a pod gets,
//! reserve addresses in the journal, build the interfaces, and undo exactly that on DEL/GC.
//!
//! Ordering is what makes it crash-safe: journal (fsync) → veth → result on ADD; veth gone →
//! journal free on DEL. A crash between any two steps leaves an allocation whose veth may or
//! may not exist; the runtime's DEL, CNI GC or the periodic reconcile finds it by sandbox ID and
//! removes both, and nothing else ever frees an address.
//!
//! The files: [`request`] resolves what a call asks for, [`reservation`] makes an attach all or
//! nothing, [`result`] builds the CNI result, [`repair`] puts running pods' interfaces back;
//! this file is the engine's entry points (ADD, DEL, CHECK, GC, STATUS, hot-plug, reconcile).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use bridgenet_crds::{Mac, ResolvedNodeBridge};
use serde_json::Value;
use tokio::sync::Mutex;

use crate::attach::{self, AttachError, AttachSpec};
use crate::cni::annotation::{NetworkRequest, parse_mac};
use crate::cni::types::{CniError, Command, NetConf, Request, Response, code, version_result};
use crate::ipam::{AllocRequest, Allocation, Ipam, IpamError, Pool};
use crate::metrics;

mod claims;
mod directory;
mod error;
mod locks;
mod repair;
mod request;
mod reservation;
mod result;

pub use directory::{ClaimWriteError, Created, Directory, Notice, PodInfo, PodRef};
pub use repair::{Repaired, Runtime};
pub use result::Attached;

use error::{attach_error, ipam_error};
use locks::SandboxLocks;
use reservation::Reservation;

/// The rest of an answered DEL ([`Engine::answer`]): its allocations, journaled as releasing,
/// and the lock of their sandbox, held until [`Engine::finish`] has removed them.
pub struct Releasing<'a> {
    _sandbox: locks::SandboxGuard<'a>,
    container_id: String,
    allocs: Vec<Allocation>,
}

/// Names of the steps a failure can be injected at (environment `BRIDGENET_FAILPOINT`), for
/// the crash tests: the process aborts there, like a `kill -9` at that instant.
pub mod failpoint {
    /// ADD: addresses journaled, no veth yet.
    pub const ADD_AFTER_RESERVE: &str = "add-after-reserve";
    /// ADD: veth created and configured, result not yet sent.
    pub const ADD_AFTER_ATTACH: &str = "add-after-attach";
    /// DEL: allocations journaled as releasing, the answer not yet sent.
    pub const DEL_AFTER_MARK: &str = "del-after-mark";
    /// Removing interfaces (after a DEL's answer; GC, hot detach): nothing deleted yet.
    pub const DEL_BEFORE_DETACH: &str = "del-before-detach";
    /// Removing interfaces: veth deleted, addresses not yet freed.
    pub const DEL_AFTER_DETACH: &str = "del-after-detach";
    /// Removing interfaces: veth deleted and address claims released, addresses not yet freed.
    pub const DEL_AFTER_CLAIMS: &str = "del-after-claims";
    /// ADD: addresses journaled and their claims created, not yet granted.
    pub const ADD_AFTER_CLAIM: &str = "add-after-claim";
    /// ADD: the result has reached the plugin (the runtime sees the pod networked), nothing
    /// is reported yet.
    pub const ADD_AFTER_REPLY: &str = "add-after-reply";
    /// Reporting: a pod's `bridgenet.io/network-status` is about to be written.
    pub const REPORT_BEFORE_ANNOTATION: &str = "report-before-annotation";
    /// Reporting: a NodeBridge's endpoints are about to be written.
    pub const REPORT_BEFORE_ENDPOINTS: &str = "report-before-endpoints";
    /// Every step inside a CNI call, in order: a kill at any of them fails the call.
    pub const ALL: &[&str] = &[ADD_AFTER_RESERVE, ADD_AFTER_ATTACH, DEL_AFTER_MARK];
    /// Every step of a DEL after its answer, in order: the call succeeded, and a kill at any
    /// of them must still end with the interface gone and the address free.
    pub const AFTER_DEL_ANSWER: &[&str] = &[DEL_BEFORE_DETACH, DEL_AFTER_DETACH, DEL_AFTER_CLAIMS];
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

/// Where an attach puts a pod's interfaces, and what its allocations are recorded under.
#[derive(Clone, Debug)]
pub struct Target {
    /// The sandbox (CNI's container ID): the key of its allocations and of its lock.
    pub container_id: String,
    /// Path of the pod's network namespace, where the pod ends of the veths go.
    pub netns: PathBuf,
    /// The pod, recorded with each allocation and told of refusals; `None` for a delegate
    /// call without `K8S_POD_*` arguments.
    pub pod: Option<PodRef>,
    /// CNI configuration name (empty for hot-plug).
    pub cni_name: String,
    /// A delegate call (the configuration names the network): recorded with the allocations,
    /// so that hot-plug, which follows `bridgenet.io/networks`, leaves them alone.
    pub delegate: bool,
}

/// Attaches and detaches pod interfaces for CNI calls, hot-plug and repair, over the IPAM
/// journal and a [`Directory`]; one per agent, shared by its tasks.
pub struct Engine<D> {
    dir: D,
    ipam: Mutex<Ipam>,
    journal_changes: Arc<tokio::sync::Notify>,
    sandboxes: SandboxLocks,
    host_netns: Option<PathBuf>,
    network_grace: Duration,
    /// Per network, the blocks for which the claims were last re-read (see [`claims`]).
    fenced: Mutex<HashMap<String, Vec<ipnet::IpNet>>>,
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
/// How long an ADD waits for an answered DEL of another sandbox of its pod to be finished.
const RELEASE_WAIT: Duration = Duration::from_secs(5);
const RELEASE_POLL: Duration = Duration::from_millis(5);

/// The addresses journaled for one admitted request, with the request and its NodeBridge.
type Reserved<'r> = (Vec<Allocation>, &'r NetworkRequest, Arc<ResolvedNodeBridge>);

impl<D: Directory> Engine<D> {
    /// An engine over the journal in `state_dir`. `host_netns` is the namespace holding the
    /// bridges (`None`: the agent's own — only tests run the node elsewhere).
    pub fn new(dir: D, state_dir: &Path, host_netns: Option<PathBuf>) -> Result<Self, IpamError> {
        let ipam = Ipam::open(state_dir)?;
        Ok(Self {
            dir,
            journal_changes: ipam.changes(),
            ipam: Mutex::new(ipam),
            sandboxes: SandboxLocks::default(),
            host_netns,
            network_grace: NEW_NETWORK_GRACE,
            fenced: Mutex::default(),
        })
    }

    /// Sets how long an ADD waits for a network the node does not know yet
    /// ([`NEW_NETWORK_GRACE`] by default).
    pub fn with_network_grace(mut self, grace: Duration) -> Self {
        self.network_grace = grace;
        self
    }

    /// Notified after the journal's allocations changed (an attach reserved addresses, a
    /// detach freed them): the reports follow at once instead of at their next tick.
    pub fn journal_changes(&self) -> Arc<tokio::sync::Notify> {
        self.journal_changes.clone()
    }

    /// The cluster as this engine sees it.
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

    /// Handles one CNI call to its end: for a DEL, the interfaces are gone and the addresses
    /// free when it returns.
    pub async fn handle(&self, req: Request) -> Response {
        let (response, rest) = self.answer(req).await;
        if let Some(rest) = rest {
            self.finish(rest).await;
        }
        response
    }

    /// Handles one CNI call up to its answer. A DEL answers once its allocations are journaled
    /// as releasing, and returns the rest (deleting the interfaces, which the kernel takes tens
    /// of milliseconds for, then freeing the addresses) for [`Engine::finish`] to do after the
    /// answer is sent: the runtime stops waiting, and an address is still free only once its
    /// interface is gone. The rest holds the sandbox's lock, so a call that follows for the
    /// same sandbox waits for it.
    #[tracing::instrument(
        skip_all,
        fields(command = %req.command, container = %req.container_id, ifname = %req.ifname)
    )]
    pub async fn answer(&self, req: Request) -> (Response, Option<Releasing<'_>>) {
        let version = req
            .config
            .get("cniVersion")
            .and_then(Value::as_str)
            .unwrap_or(crate::cni::types::CNI_VERSION)
            .to_owned();
        let started = Instant::now();
        let mut rest = None;
        let result = match serde_json::to_vec(&req.config)
            .map_err(|e| CniError::new(code::DECODE_FAILURE, e.to_string(), ""))
            .and_then(|b| NetConf::parse(&b))
        {
            Ok(conf) => match req.command {
                Command::Add => self.add(&conf, &req).await,
                Command::Del => self.del(&conf, &req).await.map(|r| {
                    rest = r;
                    Value::Null
                }),
                Command::Check => self.check(&conf, &req).await.map(|()| Value::Null),
                Command::Gc => self.gc(&conf).await.map(|()| Value::Null),
                Command::Status => self.status().map(|()| Value::Null),
                Command::Version => Ok(version_result(Some(&conf.cni_version))),
            },
            Err(e) => Err(e),
        };
        match req.command {
            Command::Add => metrics::finished(metrics::Path::CniAdd, started),
            Command::Del => metrics::finished(metrics::Path::CniDel, started),
            _ => {}
        }
        let response = match result {
            Ok(v) => Response::Ok(v),
            Err(e) => {
                metrics::cni_failed(req.command, e.code);
                tracing::warn!(code = e.code, msg = %e.msg, "CNI call failed");
                Response::Error(e.with_version(&version))
            }
        };
        (response, rest)
    }

    /// What a DEL left for after its answer: deletes the interfaces and frees the addresses.
    /// What fails stays journaled as releasing and is tried again by
    /// [`Engine::finish_releasing`].
    pub async fn finish(&self, rest: Releasing<'_>) {
        match self.remove_locked(&rest.allocs).await {
            Ok(()) => tracing::info!(
                container = %rest.container_id,
                detached = rest.allocs.len(),
                "detached"
            ),
            Err(e) => tracing::warn!(
                container = %rest.container_id,
                error = %e.msg,
                "deleting the interfaces of an answered DEL; trying again later"
            ),
        }
    }

    /// Finishes every DEL that answered but whose interfaces are not known to be gone (an
    /// agent killed right after answering, a deletion that failed): at start, before serving,
    /// and at every reconcile.
    pub async fn finish_releasing(&self) {
        let releasing = self.ipam.lock().await.releasing();
        if releasing.is_empty() {
            return;
        }
        match self.remove(&releasing).await {
            Ok(()) => tracing::info!(
                detached = releasing.len(),
                "finished the detach of answered DELs"
            ),
            Err(e) => tracing::warn!(error = %e.msg, "finishing the detach of answered DELs"),
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

    async fn add(&self, conf: &NetConf, req: &Request) -> Result<Value, CniError> {
        if req.container_id.is_empty() || req.netns.is_empty() {
            return Err(CniError::new(
                code::INVALID_ENV,
                "CNI_CONTAINERID and CNI_NETNS are required for ADD",
                "this is a container runtime bug or a hand-made call",
            ));
        }
        let pod = request::pod_of(conf, req)?;
        let requests = request::requested(&self.dir, conf, req, pod.as_ref()).await?;
        request::await_networks(&self.dir, &requests, self.network_grace).await;
        let target = Target {
            container_id: req.container_id.clone(),
            netns: PathBuf::from(&req.netns),
            pod: pod.clone(),
            cni_name: conf.name.clone(),
            delegate: conf.network.is_some(),
        };
        let attached = self.attach(&target, &requests).await?;
        let mut result = result::cni_result(&conf.cni_version, &req.netns, &attached);
        if conf.network.is_some() {
            result.dns = result::delegate_dns(&attached);
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
        // A DEL of this sandbox that answered but could not delete its interfaces: finish it
        // before anything is made under the same names.
        let unfinished: Vec<Allocation> = self
            .ipam
            .lock()
            .await
            .of_container(&target.container_id)
            .into_iter()
            .filter(|a| a.releasing)
            .collect();
        if !unfinished.is_empty() {
            self.remove_locked(&unfinished).await?;
        }
        let pod = target.pod.as_ref();
        if let Some(pod) = pod {
            self.await_releases_of(pod).await;
        }
        // Timed from here: waiting for another call on the same sandbox is not attaching.
        let mut watch = metrics::Stopwatch::start();
        let planned = request::admit_all(&self.dir, requests, pod).await?;
        watch.lap(metrics::Phase::Admit);
        if planned.is_empty() {
            return Ok(Vec::new());
        }
        // Reserve everything first (one journal write each), then build interfaces.
        let mut reservation = Reservation::new(self);
        let outcome = async {
            let reserved = self.reserve(&mut reservation, target, planned).await?;
            watch.lap(metrics::Phase::Reserve);
            failpoint(failpoint::ADD_AFTER_RESERVE);
            reservation.making_interfaces();
            let made = self.make_interfaces(target, &reserved).await;
            watch.lap(metrics::Phase::Interfaces);
            made
        }
        .await;
        let done = reservation.settle(outcome).await?;
        tracing::info!(pod = ?pod.map(ToString::to_string), attached = done.len(), "attached");
        Ok(done)
    }

    /// Waits (up to [`RELEASE_WAIT`]) until no other sandbox of `pod` has an answered DEL still
    /// being finished: a runtime that replaces a failed sandbox calls DEL and then ADD for the
    /// new one at once, and the new sandbox must find the pod's addresses (a static one, a
    /// sticky claim) free, as it would have had the DEL finished before answering.
    async fn await_releases_of(&self, pod: &PodRef) {
        let holder = pod.to_string();
        let deadline = tokio::time::Instant::now() + RELEASE_WAIT;
        while self
            .ipam
            .lock()
            .await
            .all()
            .any(|a| a.releasing && a.pod == holder)
        {
            if tokio::time::Instant::now() >= deadline {
                tracing::warn!(pod = %pod, "a DEL of another sandbox of the pod is still being finished; going on");
                return;
            }
            tokio::time::sleep(RELEASE_POLL).await;
        }
    }

    /// Journals the addresses of every admitted request, holding them in `reservation`. A
    /// request the pool refuses (its address taken, the blocks full) fails the call.
    async fn reserve<'r>(
        &self,
        reservation: &mut Reservation<'_, D>,
        target: &Target,
        planned: Vec<(&'r NetworkRequest, Arc<ResolvedNodeBridge>)>,
    ) -> Result<Vec<Reserved<'r>>, CniError> {
        let pod = target.pod.as_ref();
        let mut reserved = Vec::new();
        for (request, spec) in planned {
            let host_veth = attach::host_veth_name(&target.container_id, &request.interface);
            self.ensure_fenced(&spec).await?;
            let claimed = self.plan_claims(target, request, &spec).await?;
            let pool = Pool::from_resolved(&spec);
            let alloc = self.ipam.lock().await.allocate(
                &pool,
                &AllocRequest {
                    container_id: target.container_id.clone(),
                    ifname: request.interface.clone(),
                    pod: pod.map(ToString::to_string).unwrap_or_default(),
                    cni_name: target.cni_name.clone(),
                    delegate: target.delegate,
                    host_veth,
                    mac: Mac::new(request.mac.unwrap_or_else(attach::random_mac)).to_string(),
                    ip: request.ip.or(request.ip6),
                    claims: claimed.as_ref().map(|c| c.plan.clone()),
                },
            );
            match alloc {
                Ok(a) => {
                    reservation.hold(&a);
                    if let Some(claimed) = &claimed {
                        self.settle_claims(target, claimed, &a, &pool).await?;
                    }
                    reserved.push((a, request, spec));
                }
                Err(e) => {
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
        Ok(reserved)
    }

    /// Creates the pod interface of each reservation in the sandbox; stops at the first
    /// failure (the caller's reservation undoes them all).
    async fn make_interfaces(
        &self,
        target: &Target,
        reserved: &[Reserved<'_>],
    ) -> Result<Vec<Attached>, CniError> {
        let mut done = Vec::new();
        for (allocs, request, spec) in reserved {
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
                    resolver: spec.dns,
                }),
                Err(e) => return Err(attach_error(e)),
            }
        }
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
        let gone: Vec<Allocation> = allocs
            .iter()
            .filter(|a| !failed.contains(&a.host_veth))
            .cloned()
            .collect();
        let kept = self.release_claims(&gone).await;
        failpoint(failpoint::DEL_AFTER_CLAIMS);
        let free: Vec<Allocation> = gone
            .into_iter()
            .filter(|a| !kept.contains(&(a.network.clone(), a.ip)))
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

    async fn del(&self, conf: &NetConf, req: &Request) -> Result<Option<Releasing<'_>>, CniError> {
        let sandbox = self.sandboxes.lock(&req.container_id).await;
        let allocs = self.ipam.lock().await.of_container(&req.container_id);
        let allocs = self.selected(conf, req, allocs);
        if allocs.is_empty() {
            return Ok(None);
        }
        let allocs = self
            .ipam
            .lock()
            .await
            .mark_releasing(&allocs)
            .map_err(|e| ipam_error(e, None))?;
        failpoint(failpoint::DEL_AFTER_MARK);
        Ok(Some(Releasing {
            _sandbox: sandbox,
            container_id: req.container_id.clone(),
            allocs,
        }))
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
        self.free_stale(
            |a| a.cni_name == conf.name && !valid.contains(&a.container_id),
            "CNI GC frees attachments of sandboxes the runtime no longer knows",
        )
        .await
        .map(|_| ())
    }

    /// Frees the allocations `is_stale` selects, interfaces first (see [`Engine::remove`]),
    /// then sweeps stray pod veths; returns how many were freed. `why` is the log line.
    async fn free_stale(
        &self,
        is_stale: impl Fn(&Allocation) -> bool,
        why: &str,
    ) -> Result<usize, CniError> {
        let stale: Vec<Allocation> = self
            .ipam
            .lock()
            .await
            .all()
            .filter(|a| is_stale(a))
            .cloned()
            .collect();
        if !stale.is_empty() {
            tracing::info!(count = stale.len(), "{why}");
            self.remove(&stale).await?;
        }
        self.sweep_stray_veths().await.map_err(attach_error)?;
        Ok(stale.len())
    }

    /// Every live allocation of sandbox `container_id` (one per address, so two for a
    /// dual-stack interface).
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
        self.free_stale(
            |a| !live.contains(&a.container_id) && a.since + min_age.as_secs() <= now,
            "reconcile frees attachments of sandboxes that are gone",
        )
        .await
    }

    /// Detaches the interface hot-plug (or the annotation at ADD) gave a running sandbox on
    /// `network` (hot-unplug); a delegate call's attachment to the same network stays.
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
            .filter(|a| a.network == network && !a.delegate)
            .collect();
        self.remove_locked(&allocs).await
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
