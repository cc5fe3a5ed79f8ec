//! The NodeBridge controller: watches this node's NodeBridges (label `bridgenet.io/node`),
//! realizes them through the [`crate::dataplane`], holds the `bridgenet.io/agent` finalizer
//! until teardown, and reports `Ready` on the status. Each spec is resolved once per change
//! ([`specs`]); one that does not resolve is reported (`InvalidSpec`) and waits for an edit.
//!
//! Drift is repaired two ways: every NodeBridge is requeued after `--resync-interval`, and
//! monitors trigger a full pass as soon as one of bridgenet's links is deleted (rtnetlink) or
//! one of its nftables tables changes (nf_tables notifications).

pub mod peers;
pub mod specs;
pub mod status;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use bridgenet_crds::{FINALIZER_AGENT, LABEL_NODE, NetworkOverlay, NodeBridge};
use futures::StreamExt;
use k8s_openapi::api::core::v1::Node;
use kube::api::ListParams;
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::finalizer::{Event as Finalizer, finalizer};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::{Controller, watcher};
use kube::{Api, Client, Resource, ResourceExt};

use crate::dataplane::{self, Dataplane, DataplaneError, Desired, NodeContext, Teardown};
use crate::health::Readiness;
pub use peers::PeerDirectory;
pub use specs::{SpecCache, SpecError};
pub use status::StatusWriter;

/// Why the controller could not start or a reconcile failed outside the data plane.
#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    /// A Kubernetes API call failed.
    #[error("{op}: {source}")]
    Kube {
        /// What was being done.
        op: String,
        /// The client error.
        source: kube::Error,
    },
    /// The node's underlay address is unknown.
    #[error(
        "node {node} has no InternalIP address and --node-ip is not set: the overlay needs this node's underlay address"
    )]
    NoNodeIp {
        /// Node name.
        node: String,
    },
    /// Tearing the network down failed; the finalizer stays and teardown is retried.
    #[error(transparent)]
    Teardown(#[from] DataplaneError),
}

/// What every reconcile shares.
pub struct Context {
    /// NodeBridges API (cluster-scoped), for the finalizer.
    pub api: Api<NodeBridge>,
    /// Node-wide facts (name, underlay address, VXLAN port).
    pub node: NodeContext,
    /// Each NodeBridge's spec, resolved once per change.
    pub specs: SpecCache,
    /// The overlay peers each network publishes in its status.
    pub peers: PeerDirectory,
    /// Realizes and removes networks in the kernel.
    pub dataplane: Arc<Dataplane>,
    /// Writes `Ready` and the other status fields, shared with the CNI status loop.
    pub status: StatusWriter,
    /// Publishes Events on the NodeBridge as this node's agent.
    pub recorder: Recorder,
    /// `/readyz` state.
    pub readiness: Readiness,
    /// Period of the drift-repairing resync.
    pub resync: Duration,
}

/// Finds this node's underlay address: the flag, else the Node's first `InternalIP`.
pub async fn node_underlay(
    client: &Client,
    node: &str,
    flag: Option<IpAddr>,
) -> Result<IpAddr, ControllerError> {
    if let Some(ip) = flag {
        return Ok(ip);
    }
    let nodes: Api<Node> = Api::all(client.clone());
    let n = nodes
        .get(node)
        .await
        .map_err(|source| ControllerError::Kube {
            op: format!("reading Node {node}"),
            source,
        })?;
    n.status
        .and_then(|s| s.addresses)
        .unwrap_or_default()
        .into_iter()
        .filter(|a| a.type_ == "InternalIP")
        .find_map(|a| a.address.parse().ok())
        .ok_or_else(|| ControllerError::NoNodeIp {
            node: node.to_owned(),
        })
}

fn selector(node: &str) -> String {
    format!("{LABEL_NODE}={node}")
}

/// Runs the controller until the watch ends.
pub async fn run(
    client: Client,
    node: NodeContext,
    dataplane: Arc<Dataplane>,
    status: StatusWriter,
    readiness: Readiness,
    resync: Duration,
) -> Result<(), ControllerError> {
    let api: Api<NodeBridge> = Api::all(client.clone());

    // The networks' overlays first: a NodeBridge reconciled before them would be
    // programmed with no peers, and a restart would drop every flood entry of a running overlay
    // until the list arrived.
    let peers = PeerDirectory::default();
    let mut peer_changes = Box::pin(peers::watch(
        Api::<NetworkOverlay>::all(client.clone()),
        peers.clone(),
    ));
    let waiting_since = std::time::Instant::now();
    while !peers.synced() {
        match tokio::time::timeout(Duration::from_secs(10), peer_changes.next()).await {
            Ok(Some(_)) => {}
            Ok(None) => break,
            Err(_) => tracing::warn!(
                waited_s = waiting_since.elapsed().as_secs(),
                "still waiting for the first list of NetworkOverlays (the overlay peers); no NodeBridge is programmed until it arrives"
            ),
        }
    }

    // Seed the data plane with every NodeBridge of the node before the first reconcile, so
    // the first nftables transaction already holds every network's rules: reconciling one
    // network at a time from an empty set would briefly drop the others' rules after a restart.
    let existing = api
        .list(&ListParams::default().labels(&selector(&node.node_name)))
        .await
        .map_err(|source| ControllerError::Kube {
            op: format!("listing NodeBridges of node {}", node.node_name),
            source,
        })?;
    let specs = SpecCache::default();
    let mut known = BTreeMap::new();
    let mut names = std::collections::BTreeSet::new();
    for nb in &existing.items {
        names.insert(nb.spec.network.clone());
        if nb.meta().deletion_timestamp.is_none()
            && let Ok(resolved) = specs.resolve(&nb.name_any(), &nb.spec)
        {
            let d = Desired::from_resolved(&resolved, &node)
                .with_peers(&peers.of(&nb.spec.network), &node);
            known.insert(d.network.clone(), d);
        }
    }
    dataplane.seed(known);
    // Ready once every NodeBridge listed now has been programmed: each starts pending and its
    // first reconcile reports the outcome (a node without NodeBridges is ready at once).
    for nb in existing
        .items
        .iter()
        .filter(|nb| nb.meta().deletion_timestamp.is_none())
    {
        readiness.set(&nb.name_any(), Some("not programmed yet".to_owned()));
    }
    readiness.set_synced();
    dataplane.collect_orphans(&names).await;

    let reporter = Reporter {
        controller: "bridgenet-agent".into(),
        instance: Some(node.node_name.clone()),
    };
    let ctx = Arc::new(Context {
        api: api.clone(),
        recorder: Recorder::new(client.clone(), reporter),
        node: node.clone(),
        specs,
        peers,
        dataplane: dataplane.clone(),
        status,
        readiness: readiness.clone(),
        resync,
    });
    // A full pass at once when a marked link is deleted or a table of ours changes; the
    // periodic resync catches the rest.
    let firewall_drift = {
        let dataplane = dataplane.clone();
        crate::dataplane::nftmonitor::table_changes(crate::dataplane::firewall::TABLE)
            .map(move |()| dataplane.firewall_changed())
    };
    let trigger = futures::stream::select(dataplane::link_deletions(), firewall_drift);
    let wc = watcher::Config::default().labels(&selector(&node.node_name));
    let controller = Controller::new(api, wc);
    // A network whose tunnel endpoints changed: its NodeBridge on this node (found in the
    // controller's own cache, whatever its name) is reconciled at once.
    let mine = controller.store();
    let peers_changed = peer_changes.flat_map(move |change| {
        let refs: Vec<_> = match change {
            peers::PeerChange::Network(network) => mine
                .state()
                .iter()
                .filter(|nb| nb.spec.network == network)
                .map(|nb| ObjectRef::from_obj(&**nb))
                .collect(),
            peers::PeerChange::Listed => Vec::new(),
        };
        futures::stream::iter(refs)
    });
    controller
        .reconcile_all_on(trigger)
        .reconcile_on(peers_changed)
        .run(reconcile, error_policy, ctx)
        .for_each(|result| {
            if let Err(e) = result {
                tracing::debug!(error = %e, "reconcile did not complete");
            }
            futures::future::ready(())
        })
        .await;
    Ok(())
}

/// What a reconcile returns on failure: the finalizer helper's wrapper around ours.
pub type ReconcileError = kube::runtime::finalizer::Error<ControllerError>;

fn error_policy(nb: Arc<NodeBridge>, error: &ReconcileError, _ctx: Arc<Context>) -> Action {
    tracing::warn!(nodebridge = %nb.name_any(), error = %error, "reconcile failed; retrying");
    Action::requeue(Duration::from_secs(5))
}

#[tracing::instrument(skip_all, fields(nodebridge = %nb.name_any(), network = %nb.spec.network))]
async fn reconcile(nb: Arc<NodeBridge>, ctx: Arc<Context>) -> Result<Action, ReconcileError> {
    let api = ctx.api.clone();
    let result = finalizer(&api, FINALIZER_AGENT, nb, |event| async {
        match event {
            Finalizer::Apply(nb) => apply(&nb, &ctx).await,
            Finalizer::Cleanup(nb) => cleanup(&nb, &ctx).await,
        }
    })
    .await;
    settled(result)
}

/// A NodeBridge that is gone by the time its finalizer is to be added or removed (the operator
/// or an uninstall removed it first) needs nothing more: done, not a failure to retry forever.
fn settled(result: Result<Action, ReconcileError>) -> Result<Action, ReconcileError> {
    use kube::runtime::finalizer::Error as F;
    match result {
        Err(F::AddFinalizer(kube::Error::Api(s)) | F::RemoveFinalizer(kube::Error::Api(s)))
            if s.code == 404 =>
        {
            tracing::debug!("gone before its finalizer was updated");
            Ok(Action::await_change())
        }
        other => other,
    }
}

async fn publish(ctx: &Context, nb: &NodeBridge, type_: EventType, reason: &str, note: String) {
    let event = Event {
        type_,
        reason: reason.to_owned(),
        note: Some(note),
        action: "Program".to_owned(),
        secondary: None,
    };
    if let Err(e) = ctx.recorder.publish(&event, &nb.object_ref(&())).await {
        tracing::warn!(error = %e, "could not publish event");
    }
}

async fn apply(nb: &NodeBridge, ctx: &Context) -> Result<Action, ControllerError> {
    let name = nb.name_any();
    let generation = nb.meta().generation;
    ctx.status.seed(&name, nb.status.as_ref());
    let resolution = ctx.specs.resolve(&name, &nb.spec);
    let outcome = match &resolution {
        Err(e) => Err((e.reason(), e.to_string())),
        Ok(resolved) => ctx
            .dataplane
            .realize(
                Desired::from_resolved(resolved, &ctx.node)
                    .with_peers(&ctx.peers.of(&nb.spec.network), &ctx.node),
            )
            .await
            .map_err(|e| (e.reason(), e.to_string())),
    };
    let (ok, reason, message) = match &outcome {
        Ok(_) => (
            true,
            "Programmed",
            format!(
                "bridge {}, gateway and overlay are in place",
                nb.spec.bridge
            ),
        ),
        Err((reason, message)) => (false, *reason, message.clone()),
    };
    let was = ctx.status.get(&name).and_then(|s| {
        s.conditions
            .into_iter()
            .find(|c| c.type_ == status::CONDITION_READY)
    });
    let changed_reason = was
        .as_ref()
        .map(|c| (c.status.as_str() == "True", c.reason.as_str()))
        != Some((ok, reason));
    ctx.readiness
        .set(&name, (!ok).then(|| format!("{reason}: {message}")));
    // The Event goes before the status that records the transition: killed in between, the
    // restarted agent still sees the old condition and publishes the Event again (at least
    // once), where the other order would lose it for good.
    if changed_reason {
        if ok {
            publish(ctx, nb, EventType::Normal, reason, message.clone()).await;
        } else {
            tracing::warn!(reason, %message, "NodeBridge not programmed");
            publish(ctx, nb, EventType::Warning, reason, message.clone()).await;
        }
    }
    ctx.status
        .update(&name, |s| {
            status::set_condition(
                &mut s.conditions,
                status::CONDITION_READY,
                ok,
                reason,
                &message,
                generation,
            );
            s.observed_generation = generation;
            s.network_peers = true;
        })
        .await
        .map_err(|source| ControllerError::Kube {
            op: format!("writing the status of NodeBridge {name}"),
            source,
        })?;
    if resolution.is_err() {
        // The condition says what to fix; resolving the same spec again cannot succeed, so
        // wait for the spec to change instead of polling it (or counting it as a failure).
        return Ok(Action::await_change());
    }
    Ok(Action::requeue(ctx.resync))
}

async fn cleanup(nb: &NodeBridge, ctx: &Context) -> Result<Action, ControllerError> {
    let name = nb.name_any();
    let teardown = Teardown::from_spec(&nb.spec);
    if let Err(e) = ctx.dataplane.remove(&teardown).await {
        publish(ctx, nb, EventType::Warning, e.reason(), e.to_string()).await;
        return Err(e.into());
    }
    ctx.status.forget(&name);
    ctx.readiness.remove(&name);
    ctx.specs.forget(&name);
    tracing::info!("torn down; releasing finalizer");
    Ok(Action::await_change())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use kube::core::Status;
    use kube::runtime::finalizer::Error as F;

    use super::*;

    fn api(code: u16) -> kube::Error {
        let mut status = Status::failure("nodebridges.bridgenet.io \"x\" not found", "NotFound");
        status.code = code;
        kube::Error::Api(Box::new(status))
    }

    #[test]
    fn a_nodebridge_gone_before_its_finalizer_changes_is_done() {
        assert_eq!(
            settled(Err(F::RemoveFinalizer(api(404)))).unwrap(),
            Action::await_change()
        );
        assert_eq!(
            settled(Err(F::AddFinalizer(api(404)))).unwrap(),
            Action::await_change()
        );
    }

    #[test]
    fn other_finalizer_failures_are_still_retried() {
        assert!(settled(Err(F::RemoveFinalizer(api(409)))).is_err());
        assert!(settled(Err(F::AddFinalizer(api(500)))).is_err());
    }
}
