//! Prometheus metrics and the HTTP endpoints `/metrics`, `/healthz`, `/readyz`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::error::{Error, Result};

/// Label of the failure counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    /// Short error label (see `Error::metric_label`).
    pub reason: String,
}

/// Label of per-network gauges.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct NetworkLabel {
    /// BridgeNetwork name.
    pub network: String,
}

/// The operator's metrics, all prefixed `bridgenet_operator_`.
pub struct Metrics {
    registry: Registry,
    /// Reconciles run.
    pub reconciles: Counter,
    /// Failed reconciles by `Error::metric_label`; states a network waits in are not failures.
    pub failures: Family<ReasonLabel, Counter>,
    /// Reconcile duration.
    pub duration: Histogram,
    /// BridgeNetworks known.
    pub networks: Gauge,
    /// Nodes known.
    pub nodes: Gauge,
    /// Address blocks assigned, by network.
    pub blocks_used: Family<NetworkLabel, Gauge>,
    /// 1 while this replica holds the Lease.
    pub leader: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Registers every metric.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("bridgenet_operator");
        let reconciles = Counter::default();
        let failures = Family::<ReasonLabel, Counter>::default();
        let duration = Histogram::new(exponential_buckets(0.001, 2.0, 15));
        let networks = Gauge::default();
        let nodes = Gauge::default();
        let blocks_used = Family::<NetworkLabel, Gauge>::default();
        let leader = Gauge::default();
        registry.register(
            "reconciles",
            "BridgeNetwork reconciles run",
            reconciles.clone(),
        );
        registry.register(
            "reconcile_failures",
            "BridgeNetwork reconciles that failed, by reason",
            failures.clone(),
        );
        registry.register(
            "reconcile_duration_seconds",
            "Time one BridgeNetwork reconcile took",
            duration.clone(),
        );
        registry.register(
            "networks",
            "BridgeNetworks in the cluster",
            networks.clone(),
        );
        registry.register("nodes", "Nodes in the cluster", nodes.clone());
        registry.register(
            "blocks_used",
            "Address blocks assigned to nodes, by network",
            blocks_used.clone(),
        );
        registry.register(
            "leader",
            "1 while this replica holds the leader Lease",
            leader.clone(),
        );
        Self {
            registry,
            reconciles,
            failures,
            duration,
            networks,
            nodes,
            blocks_used,
            leader,
        }
    }

    /// Records one reconcile.
    pub fn observe(&self, took: Duration, failure: Option<&'static str>) {
        self.reconciles.inc();
        self.duration.observe(took.as_secs_f64());
        if let Some(reason) = failure {
            self.failures
                .get_or_create(&ReasonLabel {
                    reason: reason.to_owned(),
                })
                .inc();
        }
    }

    /// The OpenMetrics text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// Liveness and readiness, flipped by the rest of the operator.
#[derive(Default)]
pub struct Health {
    ready: AtomicBool,
}

impl Health {
    /// Marks the operator ready (standing by for the Lease, or leading with synced caches).
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::SeqCst);
    }

    /// Whether `/readyz` answers 200.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
    }
}

#[derive(Clone)]
struct AppState {
    metrics: Arc<Metrics>,
    health: Arc<Health>,
}

/// The HTTP routes.
pub fn router(metrics: Arc<Metrics>, health: Arc<Health>) -> Router {
    Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz_handler))
        .with_state(AppState { metrics, health })
}

async fn metrics_handler(State(s): State<AppState>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        s.metrics.render(),
    )
}

async fn readyz_handler(State(s): State<AppState>) -> impl IntoResponse {
    if s.health.is_ready() {
        (StatusCode::OK, "ok")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready")
    }
}

/// Binds `addr` and serves until `shutdown` resolves.
pub async fn serve(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| Error::Startup(format!("bind metrics address {addr}: {e}")))?;
    tracing::info!(%addr, "serving /metrics, /healthz, /readyz");
    axum::serve(listener, router(metrics, health))
        .with_graceful_shutdown(shutdown)
        .await
        .map_err(|e| Error::Startup(format!("metrics server: {e}")))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn exposition_has_every_metric() {
        let m = Metrics::new();
        m.observe(Duration::from_millis(3), Some("SubnetOverlap"));
        m.networks.set(2);
        m.blocks_used
            .get_or_create(&NetworkLabel {
                network: "a".into(),
            })
            .set(4);
        let text = m.render();
        for needle in [
            "bridgenet_operator_reconciles_total 1",
            "bridgenet_operator_reconcile_failures_total{reason=\"SubnetOverlap\"} 1",
            "bridgenet_operator_reconcile_duration_seconds_bucket",
            "bridgenet_operator_networks 2",
            "bridgenet_operator_blocks_used{network=\"a\"} 4",
            "bridgenet_operator_leader 0",
        ] {
            assert!(text.contains(needle), "missing {needle} in\n{text}");
        }
    }
}
