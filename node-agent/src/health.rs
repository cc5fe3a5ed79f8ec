//! `/healthz`, `/readyz` and `/metrics`.
//!
//! Live as long as the process serves HTTP. Ready only once the first list of this node's
//! NodeBridges has been seen and every one of them is programmed, so that a DaemonSet rollout
//! waits for the data plane, not just for the process.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;

/// Shared readiness of the node: which NodeBridges are programmed.
#[derive(Clone, Debug, Default)]
pub struct Readiness {
    inner: Arc<Mutex<ReadinessState>>,
}

#[derive(Debug, Default)]
struct ReadinessState {
    synced: bool,
    bridges: BTreeMap<String, Option<String>>,
}

impl Readiness {
    /// Marks that the initial list of NodeBridges has been processed.
    pub fn set_synced(&self) {
        self.lock().synced = true;
    }

    /// Records the outcome of the last apply of NodeBridge `name`: `None` when programmed,
    /// otherwise the reason it is not.
    pub fn set(&self, name: &str, problem: Option<String>) {
        self.lock().bridges.insert(name.to_owned(), problem);
    }

    /// Forgets NodeBridge `name` (deleted and torn down).
    pub fn remove(&self, name: &str) {
        self.lock().bridges.remove(name);
    }

    /// `Ok` when ready, else a human-readable reason.
    pub fn check(&self) -> Result<(), String> {
        let state = self.lock();
        if !state.synced {
            return Err("NodeBridges of this node not listed yet".to_owned());
        }
        let problems: Vec<String> = state
            .bridges
            .iter()
            .filter_map(|(name, p)| p.as_ref().map(|p| format!("{name}: {p}")))
            .collect();
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems.join("\n"))
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ReadinessState> {
        // A panic while holding this lock cannot leave the map half-written in a way that
        // matters: every write is a single insert or remove.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The health router, separate from [`serve`] so it can be tested without a socket.
pub fn router(readiness: Readiness) -> Router {
    Router::new()
        .route("/healthz", get(|| async { (StatusCode::OK, "ok\n") }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(readiness)
}

/// The agent's counters ([`crate::metrics`]), above all its writes to the kernel.
async fn metrics() -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        crate::metrics::global().render(),
    )
}

async fn readyz(State(readiness): State<Readiness>) -> (StatusCode, String) {
    match readiness.check() {
        Ok(()) => (StatusCode::OK, "ready\n".to_owned()),
        Err(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready:\n{why}\n"),
        ),
    }
}

/// Serves the health endpoints on `addr` until the process ends.
pub async fn serve(addr: SocketAddr, readiness: Readiness) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(%addr, "health endpoints listening");
    axum::serve(listener, router(readiness)).await
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn ready_only_when_synced_and_all_programmed() {
        let r = Readiness::default();
        assert!(r.check().is_err(), "not synced yet");
        r.set_synced();
        assert!(r.check().is_ok(), "no NodeBridges: nothing to wait for");
        r.set("net-a.node1", None);
        r.set("net-b.node1", Some("BridgeNameTaken".to_owned()));
        let err = r.check().unwrap_err();
        assert!(err.contains("net-b.node1: BridgeNameTaken"), "{err}");
        r.set("net-b.node1", None);
        assert!(r.check().is_ok());
        r.set("net-c.node1", Some("x".to_owned()));
        r.remove("net-c.node1");
        assert!(r.check().is_ok());
    }

    #[tokio::test]
    async fn endpoints_answer() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let r = Readiness::default();
        let server = tokio::spawn(axum::serve(listener, router(r.clone())).into_future());
        let get = |path: &'static str| async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
            s.write_all(
                format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
            )
            .await
            .unwrap();
            let mut out = String::new();
            s.read_to_string(&mut out).await.unwrap();
            out
        };
        assert!(get("/healthz").await.starts_with("HTTP/1.1 200"));
        let metrics = get("/metrics").await;
        assert!(
            metrics.starts_with("HTTP/1.1 200")
                && metrics.contains("bridgenet_agent_nftables_writes_total"),
            "{metrics}"
        );
        assert!(get("/readyz").await.starts_with("HTTP/1.1 503"));
        r.set_synced();
        assert!(get("/readyz").await.starts_with("HTTP/1.1 200"));
        server.abort();
    }
}
