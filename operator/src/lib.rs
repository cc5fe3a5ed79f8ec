//! bridgenet operator: turns each `BridgeNetwork` into one `NodeBridge` per selected node
//! (bridge, gateway, address blocks, overlay peers), refuses networks that collide, and reports
//! status users can trust.
//!
//! Modules are named for what they decide: [`plan`] (the pure planner: admission and VNIs,
//! the NodeBridges and their digests, deletion, orphaned endpoints), [`blocks`] (per-node
//! address blocks), [`status`] (the status, its conditions and events), [`observed`] (the
//! nodes and NodeBridges of a network as the API holds them), [`controller`]
//! (executes plans), [`leader`] (one active replica), [`metrics`] (Prometheus and health
//! endpoints), [`selftest`] (`bridgenet-operator self-test`, the chart's `helm test`). With the `testing` feature, `scale` builds synthetic clusters for tests and
//! benchmarks.
#![forbid(unsafe_code)]

pub mod blocks;
pub mod claims;
pub mod cli;
pub mod controller;
pub mod error;
pub mod leader;
pub mod metrics;
pub mod observed;
pub mod plan;
#[cfg(feature = "testing")]
pub mod scale;
pub mod selftest;
pub mod status;

use std::sync::Arc;

use bridgenet_crds::net::BlockDefaults;
use kube::Client;
use tokio::sync::watch;

pub use cli::{Cli, Command};
pub use error::{Error, Result};

/// Sets up logging: `RUST_LOG` filters (default `info`), JSON lines with `--log-json`.
pub fn init_tracing(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    // A second init (tests) keeps the first subscriber.
    let _ = if json {
        builder.json().flatten_event(true).try_init()
    } else {
        builder.try_init()
    };
}

/// Resolves when SIGTERM or SIGINT arrives.
pub(crate) async fn termination() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        _ = term => {},
        _ = tokio::signal::ctrl_c() => {},
    }
}

/// Resolves once `rx` says stop.
async fn stopped(mut rx: watch::Receiver<bool>) {
    let _ = rx.wait_for(|stop| *stop).await;
}

/// Runs the operator until SIGTERM (Ok) or until the leader Lease is lost (Err, so that the
/// process exits and its restart campaigns again).
pub async fn run(cli: Cli) -> Result<()> {
    init_tracing(cli.log_json);
    let identity = cli.identity();
    let client = Client::try_default().await.map_err(|e| {
        Error::Startup(format!(
            "no Kubernetes client configuration (in-cluster or KUBECONFIG): {e}"
        ))
    })?;
    let settings = plan::Settings {
        default_mtu: cli.default_mtu,
        block_defaults: BlockDefaults {
            v4: cli.block_size,
            ..BlockDefaults::default()
        },
        cluster_cidrs: cli.cluster_cidrs(),
    };
    let metrics = Arc::new(metrics::Metrics::new());
    let health = Arc::new(metrics::Health::default());

    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn(async move {
        termination().await;
        tracing::info!("termination signal: finishing in-flight work");
        let _ = stop_tx.send(true);
    });
    let server = tokio::spawn(metrics::serve(
        cli.metrics_addr,
        metrics.clone(),
        health.clone(),
        stopped(stop_rx.clone()),
    ));

    let mut elector = (!cli.disable_leader_election).then(|| {
        leader::LeaderElector::new(
            client.clone(),
            &cli.lease_namespace,
            &cli.lease_name,
            &identity,
            cli.lease_duration(),
        )
    });
    let run_controller = || {
        controller::run(
            client.clone(),
            settings.clone(),
            metrics.clone(),
            health.clone(),
            &identity,
            stopped(stop_rx.clone()),
        )
    };
    let result = match elector.as_mut() {
        Some(elector) => {
            // A standby is healthy and ready: it is doing its job, which is waiting.
            health.set_ready(true);
            tracing::info!(identity = %identity, lease = %cli.lease_name, "waiting for leadership");
            let acquired = tokio::select! {
                _ = elector.acquire() => true,
                _ = stopped(stop_rx.clone()) => false,
            };
            if acquired {
                metrics.leader.set(1);
                health.set_ready(false);
                let outcome = tokio::select! {
                    _ = run_controller() => Ok(()),
                    lost = elector.hold() => Err(lost),
                };
                metrics.leader.set(0);
                if outcome.is_ok() {
                    elector.release().await;
                }
                outcome
            } else {
                Ok(())
            }
        }
        None => {
            run_controller().await;
            Ok(())
        }
    };
    if let Err(e) = &result {
        tracing::error!(error = %e, "stopping");
    }
    // The HTTP server follows the stop signal; on lost leadership there was none, so end it.
    server.abort();
    result
}
