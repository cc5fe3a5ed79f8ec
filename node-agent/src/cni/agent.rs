//! The attachment side of the agent as one task: install the plugin, serve the CNI socket, keep
//! the cluster caches, write results back, hot-plug, repair pods' interfaces, and reconcile
//! against the runtime.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use futures::{FutureExt, StreamExt};

use crate::app::Context;
use crate::attach;
use crate::cni::cri::Cri;
use crate::cni::engine::Engine;
use crate::cni::kube::KubeDirectory;
use crate::cni::report::status_loop;
use crate::cni::{hotplug, install, server};
use crate::nodebridge::dataplane::marked_link_losses;

/// A sandbox must be unknown to the runtime for this long before reconcile frees its
/// addresses (see [`Engine::reconcile`]).
const RECONCILE_MIN_AGE: Duration = Duration::from_secs(120);

/// Installs the plugin binary (from beside the agent binary) and chains it into the primary
/// CNI configuration. Failures are logged: the socket still serves Multus delegates.
pub fn install_plugin(ctx: &Context) {
    match std::env::current_exe().map(|exe| exe.with_file_name(install::PLUGIN_TYPE)) {
        Ok(src) if src.exists() => {
            if let Err(e) = install::install_binary(&src, &ctx.cli.cni_bin_dir) {
                tracing::error!(error = %e, "installing the bridgenet CNI plugin binary");
            }
        }
        _ => tracing::warn!("no bridgenet plugin binary beside the agent; not installing it"),
    }
    if let Err(e) = install::install_config(&ctx.cli.cni_conf_dir, &ctx.cli.socket) {
        tracing::warn!(error = %e, "not chained into the primary CNI configuration");
    }
}

/// Runs the attachment side until it fails.
pub async fn run(ctx: Context) -> anyhow::Result<()> {
    let (dir, feeds) = KubeDirectory::new(ctx.client.clone(), &ctx.cli.node_name);
    let engine = Arc::new(
        Engine::new(dir.clone(), &ctx.cli.state_dir, None).with_context(|| {
            format!(
                "opening the IPAM journal under {}",
                ctx.cli.state_dir.display()
            )
        })?,
    );
    let listener = server::bind(&ctx.cli.socket)?;
    install_plugin(&ctx);
    let cri = Cri::connect(&ctx.cli.cri_endpoint)?;
    let allocations = engine.allocations().await.len();
    tracing::info!(socket = %ctx.cli.socket.display(), allocations, "CNI socket serving");

    let server_task = server::serve(listener, engine.clone());
    let bridges = feeds.bridges.for_each(|()| async {});
    let (pod_tx, pod_rx) = tokio::sync::mpsc::unbounded_channel();
    let pods = feeds.pods.for_each(move |p| {
        let _ = pod_tx.send(p);
        async {}
    });
    let status = status_loop(
        engine.clone(),
        ctx.client.clone(),
        ctx.status.clone(),
        ctx.cli.node_name.clone(),
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
            ctx.cli.resync_interval,
        )
    };
    // The primary CNI may rewrite its configuration (e.g. on its own restart), dropping our
    // entry: pods started before we chain again lack their networks until hot-plug's next
    // resync attaches them, so re-chain at the same pace. A check reads a few small files.
    let rechain = {
        let ctx = ctx.clone();
        async move {
            let mut tick = tokio::time::interval(ctx.cli.resync_interval);
            loop {
                tick.tick().await;
                if let Err(e) = install::install_config(&ctx.cli.cni_conf_dir, &ctx.cli.socket) {
                    tracing::debug!(error = %e, "re-chaining into the primary CNI configuration");
                }
            }
        }
    };
    let repair = repair_loop(
        engine.clone(),
        cri.clone(),
        ctx.links_changed.clone(),
        ctx.cli.resync_interval,
    );
    let reconcile = {
        let engine = engine.clone();
        let every = ctx.cli.resync_interval.max(Duration::from_secs(10)) * 6;
        async move {
            let mut tick = tokio::time::interval(every);
            loop {
                tick.tick().await;
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

/// An unbounded receiver as a stream.
fn tokio_stream_from<T: Send + 'static>(
    mut rx: tokio::sync::mpsc::UnboundedReceiver<T>,
) -> impl futures::Stream<Item = T> + Unpin {
    Box::pin(futures::stream::poll_fn(move |cx| rx.poll_recv(cx)))
}
