//! Startup: logging, the Kubernetes client, and the agent's long-running tasks.
//!
//! Every part of the agent is one task in [`run`]'s `JoinSet`; the agent exits (and the
//! DaemonSet restarts it) as soon as any of them fails, or on SIGTERM/SIGINT.

use anyhow::Context as _;
use tokio::task::JoinSet;

use std::sync::Arc;

use crate::cli::Cli;
use crate::dataplane::firewall::Firewall;
use crate::dataplane::rtnl::Rtnl;
use crate::dataplane::{Dataplane, NodeContext};
use crate::health::Readiness;
use crate::nodebridge::{self, StatusWriter};

/// Entry point of the binary: logging, runtime, [`run`].
pub fn main(cli: Cli) -> anyhow::Result<()> {
    init_tracing(cli.log_json);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("building the tokio runtime")?;
    runtime.block_on(run(cli))
}

fn init_tracing(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// Everything the agent's tasks share.
#[derive(Clone)]
pub struct Context {
    /// Parsed flags.
    pub cli: Cli,
    /// Kubernetes client (in-cluster config or `KUBECONFIG`).
    pub client: kube::Client,
    /// What `/readyz` reports.
    pub readiness: Readiness,
    /// The one writer of NodeBridge status (conditions from the data plane, endpoints from
    /// attachment): every writer changes its part and the full status is applied.
    pub status: StatusWriter,
    /// Notified by the data plane when a pass changed links (a bridge re-created has lost its
    /// ports): the attachment side then repairs the pods' interfaces at once.
    pub links_changed: Arc<tokio::sync::Notify>,
}

/// Runs the agent until a task fails or a termination signal arrives.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    tracing::info!(node = %cli.node_name, version = env!("CARGO_PKG_VERSION"), "bridgenet-agent starting");
    let client = kube::Client::try_default()
        .await
        .context("building the Kubernetes client (in-cluster config or KUBECONFIG)")?;
    let status = StatusWriter::new(kube::Api::all(client.clone()));
    let ctx = Context {
        cli,
        client,
        readiness: Readiness::default(),
        status,
        links_changed: Arc::default(),
    };

    // Uninstall or restart? Known from the agent's DaemonSet, watched from now on because
    // `helm uninstall` may take our RBAC away before SIGTERM arrives.
    let mut observer = crate::uninstall::Observer::spawn(
        ctx.client.clone(),
        ctx.cli.pod_namespace.clone(),
        ctx.cli.pod_name.clone(),
    );
    let mut tasks: JoinSet<anyhow::Result<()>> = JoinSet::new();
    {
        let (addr, readiness) = (ctx.cli.health_addr, ctx.readiness.clone());
        tasks.spawn(async move {
            crate::health::serve(addr, readiness)
                .await
                .with_context(|| format!("serving health endpoints on {addr}"))
        });
    }
    {
        let ctx = ctx.clone();
        tasks.spawn(async move { run_dataplane(ctx).await });
    }
    {
        // Pod attachment: CNI socket, IPAM, hot-plug, endpoint status.
        let settings = crate::cni::agent::Settings {
            node_name: ctx.cli.node_name.clone(),
            state_dir: ctx.cli.state_dir.clone(),
            socket: ctx.cli.socket.clone(),
            cni_bin_dir: ctx.cli.cni_bin_dir.clone(),
            cni_conf_dir: ctx.cli.cni_conf_dir.clone(),
            cri_endpoint: ctx.cli.cri_endpoint.clone(),
            resync_interval: ctx.cli.resync_interval,
        };
        tasks.spawn(crate::cni::agent::run(
            ctx.client.clone(),
            settings,
            ctx.status.clone(),
            ctx.links_changed.clone(),
        ));
    }
    {
        // Name resolution on every network of this node.
        let settings = dns_settings(&ctx.cli)?;
        tasks.spawn(crate::dns::run(
            ctx.client.clone(),
            settings,
            ctx.status.clone(),
        ));
    }
    // Further parts of the agent add one `tasks.spawn(...)` each here.

    tokio::select! {
        done = tasks.join_next() => match done {
            Some(Ok(Ok(()))) => anyhow::bail!("an agent task ended unexpectedly"),
            Some(Ok(Err(e))) => Err(e),
            Some(Err(join)) => Err(anyhow::anyhow!(join).context("an agent task panicked")),
            None => Ok(()),
        },
        sig = shutdown_signal() => {
            sig?;
            tracing::info!("termination signal received, stopping");
            // Stop the tasks first: the periodic re-chaining must not undo an unchaining.
            tasks.shutdown().await;
            crate::uninstall::on_shutdown(
                &mut observer,
                &ctx.cli.cni_conf_dir,
                SHUTDOWN_LOOKUP_TIMEOUT,
            )
            .await;
            Ok(())
        }
    }
}

/// Bound of the API lookups deciding uninstall vs. restart at SIGTERM; well inside the chart's
/// `terminationGracePeriodSeconds`.
const SHUTDOWN_LOOKUP_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// `bridgenet-agent uninstall-cni`: removes bridgenet from the CNI configuration of the
/// directory: our entry from every conflist, and a single-plugin config converted at install
/// back in place of its generated conflist.
pub fn uninstall_cni(cmd: &crate::cli::UninstallCni) -> anyhow::Result<()> {
    init_tracing(false);
    let files = crate::cni::install::uninstall_config(&cmd.cni_conf_dir)?;
    tracing::info!(files, dir = %cmd.cni_conf_dir.display(), "removed bridgenet from the CNI configuration");
    Ok(())
}

/// The resolvers' settings from the flags; the upstream resolvers default to the node's.
fn dns_settings(cli: &Cli) -> anyhow::Result<crate::dns::Settings> {
    let upstream = if cli.dns_upstream.is_empty() {
        let path = std::path::Path::new("/etc/resolv.conf");
        match crate::dns::upstream::resolv_conf_servers(path) {
            Ok(servers) => servers,
            Err(e) => {
                tracing::warn!(error = %e, "reading /etc/resolv.conf: the networks' DNS forwards nothing");
                Vec::new()
            }
        }
    } else {
        cli.dns_upstream.clone()
    };
    Ok(crate::dns::Settings {
        node: cli.node_name.clone(),
        upstream,
        cluster: cli.cluster_dns.clone(),
        cluster_domain: cli.cluster_domain.clone(),
        port: 53,
        client_rate: cli.dns_client_qps,
    })
}

/// The NodeBridge controller and the node's data plane.
async fn run_dataplane(ctx: Context) -> anyhow::Result<()> {
    let underlay =
        nodebridge::node_underlay(&ctx.client, &ctx.cli.node_name, ctx.cli.node_ip).await?;
    let node = NodeContext {
        node_name: ctx.cli.node_name.clone(),
        underlay,
        vxlan_port: ctx.cli.vxlan_port,
    };
    tracing::info!(node = %node.node_name, %underlay, port = node.vxlan_port, "data plane starting");
    let rtnl = Rtnl::connect().context("opening a netlink socket")?;
    let firewall = Firewall::new(Some(ctx.cli.nft.clone()));
    // Each NodeBridge's periodic pass comes one resync after its last; a check younger than
    // half of that is trusted, so every periodic pass verifies the rules (the generation, one
    // netlink request, when nothing committed since) and rules deleted by hand are back within
    // one resync, not two.
    let dataplane = Arc::new(
        Dataplane::new(rtnl, firewall, ctx.cli.resync_interval / 2)
            .with_change_signal(ctx.links_changed.clone()),
    );
    nodebridge::run(
        ctx.client.clone(),
        node,
        dataplane,
        ctx.status.clone(),
        ctx.readiness.clone(),
        ctx.cli.resync_interval,
    )
    .await?;
    anyhow::bail!("the NodeBridge watch ended")
}

async fn shutdown_signal() -> anyhow::Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    tokio::select! {
        _ = term.recv() => Ok(()),
        r = tokio::signal::ctrl_c() => r.context("waiting for SIGINT"),
    }
}
