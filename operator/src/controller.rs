//! The BridgeNetwork controller: gathers what the planner needs from watch caches, runs it,
//! and executes the plan: status first (it records block assignments, guarded by the
//! resourceVersion the plan was made from), then NodeBridge writes and deletions, then Events.

use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bridgenet_crds::AddressClaim;
use bridgenet_crds::v1alpha1::{
    BridgeNetwork, BridgeNetworkStatus, NetworkOverlay, NetworkOverlaySpec, NodeBridge,
    TunnelEndpoint, node_bridge_labels,
};
use bridgenet_crds::{FINALIZER_AGENT, FINALIZER_OPERATOR, LABEL_NETWORK, LABEL_NODE};
use futures::{FutureExt, StreamExt, future};
use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::finalizer::{Event as Finalizer, finalizer};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Resource, ResourceExt};
use serde_json::json;
use tokio::time::Instant;

use crate::claims;
use crate::error::{Error, Result, is_not_found};
use crate::metrics::{Health, Metrics, NetworkLabel};
use crate::plan::orphans::{self, BoundPods};
use crate::plan::{self, CleanupWait, Member, PlanInput, Settings};
use crate::status::PlannedEvent;

/// Field manager of every write, so server-side apply sees one owner.
pub const MANAGER: &str = "bridgenet-operator";
/// How often an accepted network is reconciled without any change, as a safety net.
pub const RESYNC: Duration = Duration::from_secs(300);
/// Most NodeBridge writes (applies, deletes, finalizer releases) one reconcile has in flight at
/// once: a network on many nodes is written in parallel, without flooding the API server.
pub const WRITE_CONCURRENCY: usize = 16;
/// How long a node stays in a network's overlay after its last pod of the network is gone.
/// Pods come and go (a restarted pod is gone for moments at a time, the last pod of a
/// network on a node is replaced by another); without this hold every such moment would add
/// and remove the node's flood entry on every other node. (An attachment refused and retried
/// by its kubelet never counts: the agents report only attachments that succeeded.) A node
/// that leaves the network goes at once.
pub const OVERLAY_HOLD: Duration = Duration::from_secs(30);
/// How soon a network looks again at the pods of a deleted node that still hold its addresses
/// (pod deletions are not watched).
pub const ORPHAN_RECHECK: Duration = Duration::from_secs(10);

/// What every reconcile shares: the client, the watch caches the planner reads, and the
/// failure count each network's backoff grows with.
pub struct Context {
    client: Client,
    settings: Settings,
    /// The controller's own cache of BridgeNetworks.
    networks: Store<BridgeNetwork>,
    nodes: Store<Node>,
    /// NodeBridges labelled as managed by the operator, their peer lists reduced to a digest
    /// ([`plan::strip_peers`]).
    node_bridges: Store<NodeBridge>,
    recorder: Recorder,
    metrics: Arc<Metrics>,
    /// Consecutive failures by network (waiting states do not count).
    failures: Mutex<HashMap<String, u32>>,
    /// How long a reconcile waits for the caches' first full list.
    sync_timeout: Duration,
    /// AddressClaims, when watched (see [`crate::claims`]).
    claims: Option<Store<AddressClaim>>,
    /// The networks' NetworkOverlays as written; without this cache every reconcile of a network
    /// with pods writes its overlay again.
    overlays: Option<Store<NetworkOverlay>>,
    /// Since when each (network, node) still in an overlay has had no pod of the network.
    overlay_idle: Mutex<HashMap<(String, String), Instant>>,
    /// [`OVERLAY_HOLD`], or another for tests.
    overlay_hold: Duration,
}

impl Context {
    /// A context over the caches of BridgeNetworks, Nodes and NodeBridges, in that order;
    /// Events are reported as `identity` of the operator.
    pub fn new(
        client: Client,
        settings: Settings,
        stores: (Store<BridgeNetwork>, Store<Node>, Store<NodeBridge>),
        metrics: Arc<Metrics>,
        identity: &str,
    ) -> Self {
        let recorder = Recorder::new(
            client.clone(),
            Reporter {
                controller: MANAGER.to_owned(),
                instance: Some(identity.to_owned()),
            },
        );
        Self {
            client,
            settings,
            networks: stores.0,
            nodes: stores.1,
            node_bridges: stores.2,
            recorder,
            metrics,
            failures: Mutex::new(HashMap::new()),
            sync_timeout: Duration::from_secs(30),
            claims: None,
            overlays: None,
            overlay_idle: Mutex::new(HashMap::new()),
            overlay_hold: OVERLAY_HOLD,
        }
    }

    /// The cached address claims of `network`; `None` when claims are not watched.
    fn claims_of(&self, network: &str) -> Option<Vec<Arc<AddressClaim>>> {
        self.claims.as_ref().map(|store| {
            store
                .state()
                .into_iter()
                .filter(|c| c.spec.network == network)
                .collect()
        })
    }

    /// Compares each network's overlay with this cache of them before writing it.
    pub fn with_overlays(mut self, overlays: Store<NetworkOverlay>) -> Self {
        self.overlays = Some(overlays);
        self
    }

    /// Keeps a node without pods in an overlay for `hold` instead of [`OVERLAY_HOLD`].
    pub fn with_overlay_hold(mut self, hold: Duration) -> Self {
        self.overlay_hold = hold;
        self
    }

    /// Also tends the networks' address claims, from this cache of them.
    pub fn with_claims(mut self, claims: Store<AddressClaim>) -> Self {
        self.claims = Some(claims);
        self
    }

    fn consecutive_failures(&self, name: &str) -> u32 {
        self.failures
            .lock()
            .map(|m| m.get(name).copied().unwrap_or(0))
            .unwrap_or(0)
    }

    fn record_outcome(&self, name: &str, failed: bool) {
        if let Ok(mut m) = self.failures.lock() {
            if failed {
                *m.entry(name.to_owned()).or_default() += 1;
            } else {
                m.remove(name);
            }
        }
    }
}

/// Reconciles one BridgeNetwork (the controller's entry point). Waiting states (see
/// [`Error::is_waiting`]) come back as errors for `error_policy` to requeue, but count as
/// neither failures in the metric nor steps of the backoff.
#[tracing::instrument(skip_all, fields(network = %net.name_any()))]
pub async fn reconcile(net: Arc<BridgeNetwork>, ctx: Arc<Context>) -> Result<Action> {
    let started = Instant::now();
    let name = net.name_any();
    let result = reconcile_inner(net, &ctx).await;
    let failure = result.as_ref().err().filter(|e| !e.is_waiting());
    ctx.metrics
        .observe(started.elapsed(), failure.map(Error::metric_label));
    ctx.record_outcome(&name, failure.is_some());
    result
}

/// Invalid or refused specs wait for a change; transient failures back off exponentially.
#[tracing::instrument(skip_all, fields(network = %net.name_any()))]
pub fn error_policy(net: Arc<BridgeNetwork>, err: &Error, ctx: Arc<Context>) -> Action {
    let name = net.name_any();
    let after = err.retry_after(ctx.consecutive_failures(&name).saturating_sub(1));
    if err.is_waiting() {
        tracing::info!(reason = err.metric_label(), "{err}")
    } else {
        tracing::warn!(reason = err.metric_label(), error = %err, "reconcile failed")
    }
    match after {
        Some(d) => Action::requeue(d),
        None => Action::await_change(),
    }
}

/// Whether a cache has finished its first full list. Polled rather than awaited: the store's
/// readiness is a oneshot channel that wakes only the last task waiting on it, so concurrent
/// reconciles awaiting it would strand each other.
fn is_synced<K>(store: &Store<K>) -> bool
where
    K: kube::Resource + Clone + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone,
{
    store
        .wait_until_ready()
        .now_or_never()
        .is_some_and(|r| r.is_ok())
}

async fn wait_synced(ctx: &Context) -> Result<()> {
    let deadline = Instant::now() + ctx.sync_timeout;
    loop {
        let pending = if !is_synced(&ctx.networks) {
            Some("BridgeNetworks")
        } else if !is_synced(&ctx.nodes) {
            Some("Nodes")
        } else if !is_synced(&ctx.node_bridges) {
            Some("NodeBridges")
        } else if ctx.overlays.as_ref().is_some_and(|s| !is_synced(s)) {
            Some("NetworkOverlays")
        } else {
            None
        };
        match pending {
            None => return Ok(()),
            Some(what) if Instant::now() >= deadline => {
                return Err(Error::CachesNotSynced { what });
            }
            Some(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

async fn reconcile_inner(net: Arc<BridgeNetwork>, ctx: &Arc<Context>) -> Result<Action> {
    // Planning on a partial list would delete the NodeBridges of nodes not listed yet.
    wait_synced(ctx).await?;
    let name = net.name_any();
    let api: Api<BridgeNetwork> = Api::all(ctx.client.clone());
    finalizer(&api, FINALIZER_OPERATOR, net, |event| async {
        match event {
            Finalizer::Apply(net) => apply(net, ctx).await,
            Finalizer::Cleanup(net) => cleanup(net, ctx).await,
        }
    })
    .await
    .map_err(|source| Error::Finalizer {
        network: name,
        source: Box::new(source),
    })
}

fn now() -> Time {
    Time(Timestamp::now())
}

async fn apply(net: Arc<BridgeNetwork>, ctx: &Context) -> Result<Action> {
    let name = net.name_any();
    // The object handed to us may be newer than the cache's copy; plan with it.
    let mut networks: Vec<Arc<BridgeNetwork>> = ctx
        .networks
        .state()
        .into_iter()
        .filter(|n| n.name_any() != name)
        .collect();
    networks.push(net.clone());
    let verdicts = plan::admit_all(&networks, &ctx.settings);
    let verdict = verdicts.get(&name).ok_or(Error::MissingField {
        kind: "BridgeNetwork",
        field: "metadata.name",
    })?;
    let nodes = ctx.nodes.state();
    let (existing, waiting_for_pod_gc) =
        without_orphaned_endpoints(ctx, &name, &nodes, ctx.node_bridges.state()).await;
    let now = now();
    let plan = plan::plan_network(&PlanInput {
        network: &net,
        verdict,
        nodes: &nodes,
        existing: &existing,
        settings: &ctx.settings,
        now: &now,
    });
    ctx.metrics
        .networks
        .set(i64::try_from(networks.len()).unwrap_or(i64::MAX));
    ctx.metrics
        .nodes
        .set(i64::try_from(nodes.len()).unwrap_or(i64::MAX));
    ctx.metrics
        .blocks_used
        .get_or_create(&NetworkLabel {
            network: name.clone(),
        })
        .set(i64::try_from(plan.blocks_used).unwrap_or(i64::MAX));

    if net.status.as_ref() != Some(&plan.status) {
        patch_status(ctx, &net, &plan.status).await?;
    }
    if let Some(children) = &plan.children {
        let mut writes = Vec::new();
        for (i, member) in children.members.iter().enumerate() {
            if children.needs_write(i) {
                writes.push(write_node_bridge(ctx, &net, member, move || {
                    children.spec_for(i)
                }));
            }
        }
        bounded(writes).await?;
        let mut deletes = Vec::new();
        for nb in &children.deletes {
            deletes.push(delete_node_bridge(ctx, nb));
        }
        bounded(deletes).await?;
        let mut releases = Vec::new();
        for nb in &children.release_agent_finalizer {
            releases.push(release_agent_finalizer(ctx, nb));
        }
        bounded(releases).await?;
    }
    let mut overlay_recheck = None;
    if let (Some(endpoints), Some(children)) = (plan.overlay, &plan.children) {
        let members: BTreeSet<&str> = children.members.iter().map(|m| m.node.as_str()).collect();
        overlay_recheck = write_overlay(ctx, &net, endpoints, &members).await?;
    }
    publish(ctx, &net, &plan.events).await;
    let next_expiry = if plan.rejection.is_none() {
        tend_claims(ctx, &net, &nodes).await?
    } else {
        None
    };
    let next_expiry = match (next_expiry, overlay_recheck) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };

    match plan.rejection {
        Some((reason, message)) => Err(Error::Rejected {
            network: name,
            reason: reason.as_str(),
            message,
        }),
        None if waiting_for_pod_gc => Ok(Action::requeue(ORPHAN_RECHECK)),
        None => {
            Ok(Action::requeue(next_expiry.map_or(RESYNC, |e| {
                e.min(RESYNC) + Duration::from_secs(1)
            })))
        }
    }
}

async fn cleanup(net: Arc<BridgeNetwork>, ctx: &Context) -> Result<Action> {
    let name = net.name_any();
    let nodes = ctx.nodes.state();
    let (existing, _) =
        without_orphaned_endpoints(ctx, &name, &nodes, ctx.node_bridges.state()).await;
    let plan = plan::plan_cleanup(&net, &nodes, &existing, &now());
    if let Some(status) = &plan.status {
        patch_status(ctx, &net, status).await?;
    }
    publish(ctx, &net, &plan.events).await;
    let waiting = plan.waiting_for();
    if let Some(CleanupWait::Blocked(message)) = waiting {
        return Err(Error::DeletionBlocked {
            network: name,
            message,
        });
    }
    let mut deletes = Vec::new();
    for nb in &plan.deletes {
        deletes.push(delete_node_bridge(ctx, nb));
    }
    bounded(deletes).await?;
    let mut releases = Vec::new();
    for nb in &plan.release_agent_finalizer {
        releases.push(release_agent_finalizer(ctx, nb));
    }
    bounded(releases).await?;
    if let Some(CleanupWait::Teardown(remaining)) = waiting {
        return Err(Error::WaitingForTeardown {
            network: name,
            remaining,
        });
    }
    delete_overlay(ctx, &name).await?;
    if let Ok(mut idle) = ctx.overlay_idle.lock() {
        idle.retain(|(network, _), _| *network != name);
    }
    if let Some(all) = ctx.claims_of(&name) {
        let mine: Vec<&AddressClaim> = all.iter().map(|c| &**c).collect();
        let failed = claims::delete_all(&ctx.client, &mine).await;
        if failed > 0 {
            return Err(Error::WaitingForTeardown {
                network: name,
                remaining: failed,
            });
        }
    }
    ctx.metrics.blocks_used.remove(&NetworkLabel {
        network: name.clone(),
    });
    tracing::info!("network torn down on every node; releasing finalizer");
    Ok(Action::await_change())
}

/// Grants, expires and collects the network's address claims (see [`crate::claims`]);
/// returns when the next sticky hold runs out.
async fn tend_claims(
    ctx: &Context,
    net: &BridgeNetwork,
    nodes: &[Arc<Node>],
) -> Result<Option<Duration>> {
    let name = net.name_any();
    let Some(all) = ctx.claims_of(&name) else {
        return Ok(None);
    };
    let mine: Vec<&AddressClaim> = all.iter().map(|c| &**c).collect();
    if mine.is_empty() {
        return Ok(None);
    }
    // Granting needs the blocks as they are now, not as this reconcile's copy says: a
    // consistent read, only when some claim waits.
    let waiting = mine
        .iter()
        .any(|c| c.status.as_ref().and_then(|s| s.phase).is_none());
    let current = if waiting {
        let api: Api<BridgeNetwork> = Api::all(ctx.client.clone());
        api.get(&name)
            .await
            .map_err(|e| Error::kube("get", "BridgeNetwork", &name, e))?
    } else {
        net.clone()
    };
    let assigned: Vec<ipnet::IpNet> = current
        .status
        .iter()
        .flat_map(|s| s.blocks.iter())
        .filter_map(|b| b.cidr.parse().ok())
        .collect();
    let node_names: BTreeSet<String> = nodes.iter().map(|n| n.name_any()).collect();
    let plan = claims::plan(&current, &assigned, &mine, &node_names, Timestamp::now());
    claims::carry_out(&ctx.client, &plan, &mine).await;
    Ok(plan.next_expiry)
}

/// The NodeBridges as the planner should see them, with the endpoints of deleted nodes whose
/// pods are gone dropped (see [`plan::orphans`]): one metadata list of pods per such node (field
/// selector `spec.nodeName`), only while such a NodeBridge exists. Also says whether any of them
/// kept its endpoints, so that the caller looks again soon.
async fn without_orphaned_endpoints(
    ctx: &Context,
    network: &str,
    nodes: &[Arc<Node>],
    existing: Vec<Arc<NodeBridge>>,
) -> (Vec<Arc<NodeBridge>>, bool) {
    let mut pods_on = HashMap::new();
    for node in orphans::nodes_to_check(network, nodes, &existing) {
        let bound = pods_bound_to(ctx, &node).await;
        pods_on.insert(node, bound);
    }
    orphans::without_orphaned_endpoints(network, nodes, existing, &pods_on)
}

/// `(namespace, name)` of the pods bound to `node`; `None` when the API could not say.
async fn pods_bound_to(ctx: &Context, node: &str) -> Option<BoundPods> {
    let api: Api<Pod> = Api::all(ctx.client.clone());
    let params = ListParams::default().fields(&format!("spec.nodeName={node}"));
    match api.list_metadata(&params).await {
        Ok(list) => Some(
            list.items
                .iter()
                .map(|p| (p.namespace().unwrap_or_default(), p.name_any()))
                .collect(),
        ),
        Err(e) => {
            tracing::warn!(%node, error = %e, "listing the pods of a deleted node; keeping its endpoints");
            None
        }
    }
}

/// Writes the status with server-side apply. The resourceVersion the plan was made from is a
/// precondition: block assignments are decided from that version, and a stale view must not
/// overwrite a newer assignment (the API answers 409 and we re-plan).
async fn patch_status(
    ctx: &Context,
    net: &BridgeNetwork,
    status: &BridgeNetworkStatus,
) -> Result<()> {
    let name = net.name_any();
    let mut metadata = json!({ "name": name });
    if let Some(rv) = &net.metadata.resource_version {
        metadata["resourceVersion"] = json!(rv);
    }
    let body = json!({
        "apiVersion": BridgeNetwork::api_version(&()),
        "kind": BridgeNetwork::kind(&()),
        "metadata": metadata,
        "status": status,
    });
    let api: Api<BridgeNetwork> = Api::all(ctx.client.clone());
    api.patch_status(
        &name,
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(&body),
    )
    .await
    .map_err(|e| Error::kube("patch status of", "BridgeNetwork", &name, e))?;
    Ok(())
}

/// Runs `writes` with at most [`WRITE_CONCURRENCY`] in flight, every one to its end, and returns
/// the first failure. Each write is idempotent and the plan they come from was guarded by the
/// status write before them, so their order does not matter; one failing does not stop the
/// others, and the retry after it rewrites only what still differs.
///
/// Takes the writes collected: a stream over a closure would make the reconcile's future
/// lifetime-generic over the closure, which the controller cannot prove `Send`.
async fn bounded<F>(writes: Vec<F>) -> Result<()>
where
    F: Future<Output = Result<()>>,
{
    let mut first = Ok(());
    let mut results = futures::stream::iter(writes).buffer_unordered(WRITE_CONCURRENCY);
    while let Some(result) = results.next().await {
        if first.is_ok() {
            first = result;
        }
    }
    first
}

/// Server-side-applies one NodeBridge, creating it if missing. Always apply, never POST:
/// fields written by a create belong to an `Update` entry of our manager, which a later apply
/// does not own, so a peer dropped from the applied list would stay in the object. An object
/// of that name carrying another network's or node's labels is never overwritten.
async fn write_node_bridge(
    ctx: &Context,
    net: &BridgeNetwork,
    member: &Member,
    spec: impl FnOnce() -> bridgenet_crds::NodeBridgeSpec,
) -> Result<()> {
    let network = net.name_any();
    if member.existing.is_none()
        && let Some(other) = ctx.node_bridges.get(&ObjectRef::new(&member.name))
    {
        let labels = other.labels();
        if labels.get(LABEL_NETWORK) != Some(&network)
            || labels.get(LABEL_NODE) != Some(&member.node)
        {
            tracing::warn!(node = %member.node, nodebridge = %member.name,
                "a NodeBridge of that name belongs to something else; not overwriting it");
            return Ok(());
        }
    }
    let mut nb = NodeBridge::new(&member.name, spec());
    nb.metadata.labels = Some(node_bridge_labels(&network, &member.node));
    match net.controller_owner_ref(&()) {
        Some(owner) => nb.metadata.owner_references = Some(vec![owner]),
        // Only servers that keep no uid (the test emulator) get here; a real API server always
        // sets one.
        None => {
            tracing::warn!("network has no uid; NodeBridge written without owner reference")
        }
    }
    let api: Api<NodeBridge> = Api::all(ctx.client.clone());
    api.patch(
        &member.name,
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(&nb),
    )
    .await
    .map_err(|e| Error::kube("apply", "NodeBridge", &member.name, e))?;
    tracing::info!(node = %member.node, nodebridge = %member.name,
        created = member.existing.is_none(), "applied NodeBridge");
    Ok(())
}

/// Server-side-applies the network's NetworkOverlay (named like the network, owned by it)
/// when its endpoints differ from the cached object's; a network without pods and without an
/// overlay gets none. `active` are the member nodes with pods of the network; a member the
/// cached overlay lists that has none any more stays for [`OVERLAY_HOLD`] (see there). Returns
/// when such a node's hold runs out, for the next look.
async fn write_overlay(
    ctx: &Context,
    net: &BridgeNetwork,
    active: Vec<TunnelEndpoint>,
    members: &BTreeSet<&str>,
) -> Result<Option<Duration>> {
    let name = net.name_any();
    let cached = ctx
        .overlays
        .as_ref()
        .and_then(|s| s.get(&ObjectRef::new(&name)));
    let (endpoints, recheck) = hold_idle(ctx, &name, active, cached.as_deref(), members);
    match &cached {
        Some(have) if have.spec.endpoints == endpoints && have.spec.network == name => {
            return Ok(recheck);
        }
        None if endpoints.is_empty() => return Ok(recheck),
        _ => {}
    }
    let mut overlay = NetworkOverlay::new(
        &name,
        NetworkOverlaySpec {
            network: name.clone(),
            node_count: i32::try_from(endpoints.len()).unwrap_or(i32::MAX),
            endpoints,
        },
    );
    overlay.metadata.labels = Some([(LABEL_NETWORK.to_owned(), name.clone())].into());
    overlay.metadata.owner_references = net.controller_owner_ref(&()).map(|o| vec![o]);
    let api: Api<NetworkOverlay> = Api::all(ctx.client.clone());
    api.patch(
        &name,
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(&overlay),
    )
    .await
    .map_err(|e| Error::kube("apply", "NetworkOverlay", &name, e))?;
    tracing::debug!(nodes = overlay.spec.node_count, "applied NetworkOverlay");
    Ok(recheck)
}

/// `active` plus the members `cached` lists that have had no pod for less than the hold, sorted
/// by node, and how soon the first of those holds runs out.
fn hold_idle(
    ctx: &Context,
    network: &str,
    active: Vec<TunnelEndpoint>,
    cached: Option<&NetworkOverlay>,
    members: &BTreeSet<&str>,
) -> (Vec<TunnelEndpoint>, Option<Duration>) {
    let now = Instant::now();
    let Ok(mut idle) = ctx.overlay_idle.lock() else {
        return (active, None);
    };
    let is_active = |node: &str| active.iter().any(|e| e.node == node);
    let mut recheck: Option<Duration> = None;
    let mut held = Vec::new();
    for e in cached.map_or(&[][..], |c| &c.spec.endpoints[..]) {
        if is_active(&e.node) || !members.contains(e.node.as_str()) {
            continue;
        }
        let since = *idle
            .entry((network.to_owned(), e.node.clone()))
            .or_insert(now);
        let left = ctx.overlay_hold.saturating_sub(now.duration_since(since));
        if left.is_zero() {
            continue;
        }
        recheck = Some(recheck.map_or(left, |r| r.min(left)));
        held.push(e.clone());
    }
    // Only the held nodes keep an entry: those with pods again, those that left the network
    // and those whose hold ended above are forgotten here.
    idle.retain(|(net, node), _| net != network || held.iter().any(|e| e.node == *node));
    let mut endpoints = active;
    endpoints.extend(held);
    endpoints.sort_by(|a, b| a.node.cmp(&b.node));
    (endpoints, recheck)
}

/// Deletes the network's NetworkOverlay (its owner reference would too, where a garbage
/// collector runs).
async fn delete_overlay(ctx: &Context, name: &str) -> Result<()> {
    if ctx
        .overlays
        .as_ref()
        .is_some_and(|s| s.get(&ObjectRef::new(name)).is_none())
    {
        return Ok(());
    }
    let api: Api<NetworkOverlay> = Api::all(ctx.client.clone());
    match api.delete(name, &DeleteParams::default()).await {
        Ok(_) => Ok(()),
        Err(e) if is_not_found(&e) => Ok(()),
        Err(e) => Err(Error::kube("delete", "NetworkOverlay", name, e)),
    }
}

async fn delete_node_bridge(ctx: &Context, name: &str) -> Result<()> {
    let api: Api<NodeBridge> = Api::all(ctx.client.clone());
    match api.delete(name, &DeleteParams::default()).await {
        Ok(_) => {
            tracing::info!(nodebridge = %name, "deleting NodeBridge");
            Ok(())
        }
        Err(e) if is_not_found(&e) => Ok(()),
        Err(e) => Err(Error::kube("delete", "NodeBridge", name, e)),
    }
}

/// Drops the agent's finalizer from a terminating NodeBridge whose node no longer exists.
async fn release_agent_finalizer(ctx: &Context, nb: &NodeBridge) -> Result<()> {
    let name = nb.name_any();
    let remaining: Vec<&String> = nb
        .finalizers()
        .iter()
        .filter(|f| *f != FINALIZER_AGENT)
        .collect();
    let patch = json!({
        "metadata": {
            "finalizers": remaining,
            "resourceVersion": nb.metadata.resource_version,
        }
    });
    let api: Api<NodeBridge> = Api::all(ctx.client.clone());
    match api
        .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        Err(e) if !is_not_found(&e) => Err(Error::kube(
            "remove agent finalizer from",
            "NodeBridge",
            &name,
            e,
        )),
        _ => {
            tracing::info!(nodebridge = %name, node = %nb.spec.node,
                "node no longer exists; removed the agent finalizer in its place");
            Ok(())
        }
    }
}

async fn publish(ctx: &Context, net: &BridgeNetwork, events: &[PlannedEvent]) {
    let reference = net.object_ref(&());
    for ev in events {
        let event = Event {
            type_: if ev.warning {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: ev.reason.clone(),
            note: Some(ev.note.chars().take(1000).collect()),
            action: "Reconcile".to_owned(),
            secondary: None,
        };
        // An Event that cannot be written must not fail the reconcile: the condition
        // already says the same thing.
        if let Err(e) = ctx.recorder.publish(&event, &reference).await {
            tracing::warn!(reason = %ev.reason, error = %e, "publishing event");
        }
    }
}

/// Networks whose verdict may change when `changed` changes: those sharing address space or
/// the bridge name with it. A deleted or edited older network frees its subnet for them.
fn related_networks(
    store: &Store<BridgeNetwork>,
    changed: &BridgeNetwork,
    settings: &Settings,
) -> Vec<ObjectRef<BridgeNetwork>> {
    let name = changed.name_any();
    let resolve = |net: &BridgeNetwork, name: &str| {
        bridgenet_crds::net::resolve_with(name, &net.spec, settings.block_defaults).ok()
    };
    let Some(mine) = resolve(changed, &name) else {
        return Vec::new();
    };
    store
        .state()
        .iter()
        .filter(|other| other.name_any() != name)
        .filter(|other| resolve(other, &other.name_any()).is_some_and(|r| plan::contend(&r, &mine)))
        .map(|other| ObjectRef::from_obj(&**other))
        .collect()
}

/// What of a Node matters to networks: its name, labels (selectors), underlay address and
/// whether it is going away. Status heartbeats change none of these and trigger nothing.
fn node_fingerprint(node: &Node) -> u64 {
    let mut h = DefaultHasher::new();
    node.metadata.name.hash(&mut h);
    node.metadata.labels.hash(&mut h);
    plan::node_address(node).hash(&mut h);
    node.metadata.deletion_timestamp.is_some().hash(&mut h);
    h.finish()
}

/// Drops what no reconcile reads from a cached object: its managedFields, which on a network
/// with many blocks or a NodeBridge listing many endpoints are as large as the rest of it, and
/// the caches hold every NodeBridge of every network.
fn slim<K: Resource>(obj: &mut K) {
    obj.meta_mut().managed_fields = None;
}

/// A cached Node reduced to what networks read of it (see [`node_fingerprint`]): name, labels,
/// deletion and its addresses. A real Node's status (images, conditions, capacity) is most of
/// its size, and the cache holds every Node of the cluster.
fn slim_node(node: &mut Node) {
    slim(node);
    node.metadata.annotations = None;
    node.spec = None;
    if let Some(status) = node.status.take() {
        node.status = Some(k8s_openapi::api::core::v1::NodeStatus {
            addresses: status.addresses,
            ..Default::default()
        });
    }
}

/// Runs the controller until `shutdown` resolves (then finishes in-flight reconciles).
pub async fn run(
    client: Client,
    settings: Settings,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    identity: &str,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) {
    let networks: Api<BridgeNetwork> = Api::all(client.clone());
    let nodes_api: Api<Node> = Api::all(client.clone());
    let nb_api: Api<NodeBridge> = Api::all(client.clone());

    let (node_store, node_writer) = reflector::store();
    let mut seen: HashMap<String, u64> = HashMap::new();
    let node_stream = watcher(nodes_api, watcher::Config::default())
        .default_backoff()
        .modify(slim_node)
        .reflect(node_writer)
        .filter(move |ev| {
            let pass = match ev {
                Ok(watcher::Event::Apply(n)) | Ok(watcher::Event::InitApply(n)) => {
                    let fp = node_fingerprint(n);
                    seen.insert(n.name_any(), fp) != Some(fp)
                }
                Ok(watcher::Event::Delete(n)) => {
                    seen.remove(&n.name_any());
                    true
                }
                _ => true,
            };
            future::ready(pass)
        })
        .touched_objects();

    let (nb_store, nb_writer) = reflector::store();
    let nb_stream = watcher(
        nb_api,
        watcher::Config::default().labels("app.kubernetes.io/managed-by=bridgenet-operator"),
    )
    .default_backoff()
    .modify(|nb| {
        slim(nb);
        plan::strip_peers(nb);
    })
    .reflect(nb_writer)
    .touched_objects();

    let (overlay_store, overlay_writer) = reflector::store();
    let overlay_stream = watcher(
        Api::<NetworkOverlay>::all(client.clone()),
        watcher::Config::default(),
    )
    .default_backoff()
    .modify(slim)
    .reflect(overlay_writer)
    .touched_objects();

    let (claim_store, claim_writer) = reflector::store();
    let claim_stream = watcher(
        Api::<AddressClaim>::all(client.clone()),
        watcher::Config::default(),
    )
    .default_backoff()
    .modify(slim)
    .reflect(claim_writer)
    .touched_objects();

    // No debounce: a network is reconciled at the first event, and the events that come while
    // it is being reconciled are merged into one more pass right after it, which is what keeps a
    // burst from costing a reconcile each. A debounce window would only add its length to every
    // reaction (a new network waited through it three times before Ready), and under a steady
    // stream of events (every node's agent reporting) it would keep the network from being
    // reconciled at all while the stream lasts.
    let (net_store, net_writer) = reflector::store();
    let network_stream = watcher(networks.clone(), watcher::Config::default())
        .default_backoff()
        .modify(slim)
        .reflect(net_writer)
        .applied_objects();
    let controller = Controller::for_stream(network_stream, net_store.clone());
    let ctx = Arc::new(
        Context::new(
            client,
            settings.clone(),
            (net_store.clone(), node_store.clone(), nb_store.clone()),
            metrics,
            identity,
        )
        .with_claims(claim_store)
        .with_overlays(overlay_store.clone()),
    );

    let ready = {
        let (a, b, c, d) = (net_store.clone(), node_store, nb_store, overlay_store);
        async move {
            while !(is_synced(&a) && is_synced(&b) && is_synced(&c) && is_synced(&d)) {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            tracing::info!("caches synced");
            health.set_ready(true);
        }
    };
    tokio::spawn(ready);

    let all_networks = net_store.clone();
    let related_store = net_store.clone();
    controller
        .owns_stream(nb_stream)
        .owns_stream(overlay_stream)
        .watches_stream(node_stream, move |_node| {
            all_networks
                .state()
                .iter()
                .map(|n| ObjectRef::from_obj(&**n))
                .collect::<Vec<_>>()
        })
        .watches_stream(claim_stream, |claim: AddressClaim| {
            Some(ObjectRef::<BridgeNetwork>::new(&claim.spec.network))
        })
        .watches(networks, watcher::Config::default(), move |changed| {
            related_networks(&related_store, &changed, &settings)
        })
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(|res| {
            match res {
                Ok((obj, _)) => tracing::debug!(network = %obj.name, "reconciled"),
                Err(e) => tracing::debug!(error = %e, "reconcile error"),
            }
            future::ready(())
        })
        .await;
}
