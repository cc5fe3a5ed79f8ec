//! The attachment side of the agent as one task: install the plugin, serve the CNI socket, keep
//! the cluster caches, write results back, hot-plug, repair pods' interfaces, and reconcile
//! against the runtime.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use futures::{FutureExt, StreamExt};

use crate::attach;
use crate::cni::cri::Cri;
use crate::cni::engine::Engine;
use crate::cni::kube::KubeDirectory;
use crate::cni::report::status_loop;
use crate::cni::{hotplug, install, server};
use crate::dataplane::marked_link_losses;
use crate::nodebridge::StatusWriter;

/// A sandbox must be unknown to the runtime for this long before reconcile frees its
/// addresses (see [`Engine::reconcile`]).
const RECONCILE_MIN_AGE: Duration = Duration::from_secs(120);

/// Where the attachment side finds the host's CNI and runtime, and how often it re-checks.
#[derive(Clone, Debug)]
pub struct Settings {
    /// The node this agent runs on (NodeBridges and pods are filtered on it).
    pub node_name: String,
    /// Directory of the IPAM journal.
    pub state_dir: PathBuf,
    /// Unix socket the CNI plugin talks to.
    pub socket: PathBuf,
    /// Where the plugin binary is installed.
    pub cni_bin_dir: PathBuf,
    /// Where the primary CNI configuration is chained into.
    pub cni_conf_dir: PathBuf,
    /// CRI endpoint of the container runtime.
    pub cri_endpoint: String,
    /// Period of hot-plug, repair and re-chaining passes (reconcile runs every sixth).
    pub resync_interval: Duration,
}

/// Installs the plugin binary (from beside the agent binary) into `cni_bin_dir` and chains it
/// into the primary CNI configuration of `cni_conf_dir`. Failures are logged: the socket still
/// serves Multus delegates.
pub fn install_plugin(settings: &Settings) {
    match std::env::current_exe().map(|exe| exe.with_file_name(install::PLUGIN_TYPE)) {
        Ok(src) if src.exists() => {
            if let Err(e) = install::install_binary(&src, &settings.cni_bin_dir) {
                tracing::error!(error = %e, "installing the bridgenet CNI plugin binary");
            }
        }
        _ => tracing::warn!("no bridgenet plugin binary beside the agent; not installing it"),
    }
    if let Err(e) = install::install_config(&settings.cni_conf_dir, &settings.socket) {
        tracing::warn!(error = %e, "not chained into the primary CNI configuration");
    }
}

/// Runs the attachment side until it fails. `status` is the agent's one NodeBridge status
/// writer (endpoints go through it); `links_changed` is notified by the data plane when a pass
/// changed links, and triggers a repair pass at once.
pub async fn run(
    client: kube::Client,
    settings: Settings,
    status: StatusWriter,
    links_changed: Arc<tokio::sync::Notify>,
) -> anyhow::Result<()> {
    let (dir, feeds) = KubeDirectory::new(client.clone(), &settings.node_name);
    let client_for_claims = client.clone();
    let engine = Arc::new(
        Engine::new(dir.clone(), &settings.state_dir, None).with_context(|| {
            format!(
                "opening the IPAM journal under {}",
                settings.state_dir.display()
            )
        })?,
    );
    let listener = server::bind(&settings.socket)?;
    install_plugin(&settings);
    let cri = Cri::connect(&settings.cri_endpoint)?;
    let allocations = engine.allocations().await.len();
    tracing::info!(socket = %settings.socket.display(), allocations, "CNI socket serving");

    let server_task = server::serve(listener, engine.clone());
    let bridges = feeds.bridges.for_each(|()| async {});
    let (pod_tx, pod_rx) = tokio::sync::mpsc::unbounded_channel();
    let pods = feeds.pods.for_each(move |p| {
        let _ = pod_tx.send(p);
        async {}
    });
    let status = status_loop(
        engine.clone(),
        client,
        status,
        settings.node_name.clone(),
        feeds.notices,
    );
    {
        // STATUS answers "not available" until the caches have their first list.
        let dir = dir.clone();
        tokio::spawn(async move { dir.wait_synced().await });
    }
    let hotplug = {
        let dir = dir.clone();
        hotplug::run(
            engine.clone(),
            cri.clone(),
            move || dir.pods(),
            tokio_stream_from(pod_rx),
            settings.resync_interval,
        )
    };
    // The primary CNI may rewrite its configuration (e.g. on its own restart), dropping our
    // entry: pods started before we chain again lack their networks until hot-plug's next
    // resync attaches them, so re-chain at the same pace. A check reads a few small files.
    let rechain = {
        let settings = settings.clone();
        async move {
            let mut tick = tokio::time::interval(settings.resync_interval);
            loop {
                tick.tick().await;
                if let Err(e) = install::install_config(&settings.cni_conf_dir, &settings.socket) {
                    tracing::debug!(error = %e, "re-chaining into the primary CNI configuration");
                }
            }
        }
    };
    let claims = claims_loop(client_for_claims, engine.clone());
    let repair = repair_loop(
        engine.clone(),
        cri.clone(),
        links_changed,
        settings.resync_interval,
    );
    let reconcile = {
        let engine = engine.clone();
        let every = settings.resync_interval.max(Duration::from_secs(10)) * 6;
        async move {
            let mut tick = tokio::time::interval(every);
            loop {
                tick.tick().await;
                engine.finish_releasing().await;
                engine.refence_all(RECONCILE_MIN_AGE).await;
                match cri.sandbox_ids().await {
                    Ok(live) => match engine.reconcile(&live, RECONCILE_MIN_AGE).await {
                        Ok(0) => {}
                        Ok(n) => tracing::info!(
                            freed = n,
                            "reconcile freed attachments of vanished sandboxes"
                        ),
                        Err(e) => tracing::warn!(error = %e.msg, "reconcile"),
                    },
                    Err(e) => {
                        tracing::warn!(error = %e, "listing sandboxes for reconcile; nothing freed")
                    }
                }
            }
        }
    };
    tokio::select! {
        r = server_task => r.context("CNI socket server")?,
        () = bridges => anyhow::bail!("NodeBridge watch ended"),
        () = pods => anyhow::bail!("pod watch ended"),
        () = status => anyhow::bail!("status writer ended"),
        () = hotplug => anyhow::bail!("hot-plug ended"),
        () = reconcile => anyhow::bail!("reconcile ended"),
        () = repair => anyhow::bail!("repair ended"),
        () = claims => anyhow::bail!("address claim watch ended"),
        () = rechain => anyhow::bail!("re-chaining ended"),
    }
    Ok(())
}

/// Repairs pods' interfaces ([`Engine::repair`]) at start, every `resync`, as soon as the data
/// plane changed links (a bridge re-created after `ip link del` has lost its ports), and as soon
/// as a pod's host veth is deleted or set down: drift is repaired within one resync, usually
/// within a second, without restarting any pod. A burst of events (a host network restart
/// deletes every link at once) makes one pass.
async fn repair_loop(
    engine: Arc<Engine<KubeDirectory>>,
    cri: Cri,
    links_changed: Arc<tokio::sync::Notify>,
    resync: Duration,
) {
    let mut veths = marked_link_losses(attach::POD_ALIAS_PREFIX);
    let mut tick = tokio::time::interval(resync);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = links_changed.notified() => {}
            Some(()) = veths.next() => {}
        }
        while let Some(Some(())) = veths.next().now_or_never() {}
        let started = std::time::Instant::now();
        match engine.repair(&cri).await {
            Ok(done) if done.is_empty() => {}
            Ok(done) => tracing::info!(
                reattached = done.reattached,
                recreated = done.recreated,
                failed = done.failed,
                took_ms = started.elapsed().as_millis(),
                "repair pass put pod interfaces back on their networks"
            ),
            Err(e) => tracing::warn!(error = %e.msg, "repair pass failed; retrying at the next"),
        }
    }
}

/// How often claims waiting for this node's decision are looked at again (a decision whose
/// write failed is retried).
const CLAIM_RETRY: Duration = Duration::from_secs(5);

/// Follows every `AddressClaim`: their addresses are kept out of this node's dynamic
/// allocation, and those waiting for this node (their address is in its blocks) are granted
/// or refused ([`Engine::observe_claim`]).
async fn claims_loop(client: kube::Client, engine: Arc<Engine<KubeDirectory>>) {
    use kube::runtime::{WatchStreamExt, reflector, watcher};
    let (store, writer) = reflector::store();
    let mut events = std::pin::pin!(
        reflector::reflector(
            writer,
            watcher(
                kube::Api::<bridgenet_crds::AddressClaim>::all(client),
                watcher::Config::default(),
            ),
        )
        .default_backoff()
    );
    let mut tick = tokio::time::interval(CLAIM_RETRY);
    loop {
        tokio::select! {
            ev = events.next() => match ev {
                Some(Ok(watcher::Event::Apply(c) | watcher::Event::InitApply(c))) => {
                    engine.observe_claim(&c).await;
                }
                Some(Ok(watcher::Event::Delete(c))) => engine.forget_claim(&c).await,
                Some(Ok(_)) => {}
                Some(Err(e)) => tracing::warn!(error = %e, "watching address claims"),
                None => return,
            },
            _ = tick.tick() => engine.decide_waiting(&store.state()).await,
        }
    }
}

/// An unbounded receiver as a stream.
fn tokio_stream_from<T: Send + 'static>(
    mut rx: tokio::sync::mpsc::UnboundedReceiver<T>,
) -> impl futures::Stream<Item = T> + Unpin {
    Box::pin(futures::stream::poll_fn(move |cx| rx.poll_recv(cx)))
}
