//! The agent's writer of `NodeBridge.status`.
//!
//! The agent owns the whole status through one server-side-apply field manager
//! (`bridgenet-agent`), so every apply must carry the *full* status: with SSA, fields the
//! manager owned and left out of an apply are removed. Two parts of the agent fill it — the
//! data plane (`Ready` condition, `observedGeneration`) and the CNI/attachment side (endpoints
//! and address counts) — so this book keeps the last full status of each NodeBridge and every
//! writer changes only its part through [`StatusWriter::update`]. On first sight of an object
//! (e.g. after an agent restart) the book is seeded from the object's current status, so
//! nothing written before the restart is lost.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};

use bridgenet_crds::conditions;
use bridgenet_crds::{NodeBridge, NodeBridgeStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use kube::Api;
use kube::api::{Patch, PatchParams};

/// Field manager of every status write by the agent.
pub const FIELD_MANAGER: &str = "bridgenet-agent";

/// Type of the condition the data plane reports.
pub const CONDITION_READY: &str = conditions::READY;

/// Keeps the full status of each NodeBridge of this node and applies it.
#[derive(Clone)]
pub struct StatusWriter {
    api: Api<NodeBridge>,
    book: Arc<Mutex<Book>>,
    /// Held from computing a status to having applied it, so that two writers' applies reach
    /// the API server in the order their statuses were computed (a later full status always
    /// contains the earlier writer's part).
    write: Arc<tokio::sync::Mutex<()>>,
}

#[derive(Default)]
struct Book {
    /// The full status each writer's latest change adds up to.
    desired: BTreeMap<String, NodeBridgeStatus>,
    /// What the API server was last given (or had on first sight): a failed write is retried
    /// by the next update even when that update itself changes nothing.
    applied: BTreeMap<String, NodeBridgeStatus>,
}

impl StatusWriter {
    /// A writer for cluster-scoped NodeBridges.
    pub fn new(api: Api<NodeBridge>) -> Self {
        StatusWriter {
            api,
            book: Arc::default(),
            write: Arc::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Book> {
        // Each critical section is a single map operation: a poisoned lock holds no torn state.
        self.book.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Seeds the book with the status an object already has, unless it is known.
    pub fn seed(&self, name: &str, current: Option<&NodeBridgeStatus>) {
        let mut book = self.lock();
        if !book.desired.contains_key(name) {
            let current = current.cloned().unwrap_or_default();
            book.desired.insert(name.to_owned(), current.clone());
            book.applied.insert(name.to_owned(), current);
        }
    }

    /// The status the book holds for `name`.
    pub fn get(&self, name: &str) -> Option<NodeBridgeStatus> {
        self.lock().desired.get(name).cloned()
    }

    /// Forgets a NodeBridge (deleted).
    pub fn forget(&self, name: &str) {
        let mut book = self.lock();
        book.desired.remove(name);
        book.applied.remove(name);
    }

    /// Changes `name`'s status with `change` and applies the full result, unless the API
    /// server already has exactly that. Returns whether a write was sent.
    pub async fn update(
        &self,
        name: &str,
        change: impl FnOnce(&mut NodeBridgeStatus),
    ) -> Result<bool, kube::Error> {
        let _write = self.write.lock().await;
        let status = {
            let mut book = self.lock();
            let entry = book.desired.entry(name.to_owned()).or_default();
            change(entry);
            let status = entry.clone();
            if book.applied.get(name) == Some(&status) {
                return Ok(false);
            }
            status
        };
        self.apply(name, &status).await?;
        self.lock().applied.insert(name.to_owned(), status);
        Ok(true)
    }

    /// Applies `status` as the complete status of `name`.
    pub async fn apply(&self, name: &str, status: &NodeBridgeStatus) -> Result<(), kube::Error> {
        let body = serde_json::json!({
            "apiVersion": "bridgenet.io/v1alpha1",
            "kind": "NodeBridge",
            "status": status,
        });
        let pp = PatchParams::apply(FIELD_MANAGER).force();
        self.api
            .patch_status(name, &pp, &Patch::Apply(&body))
            .await
            .map(|_| ())
    }
}

/// Sets condition `type_` in `conditions` (see [`conditions::set_condition`]), stamping a
/// status flip with the current time.
pub fn set_condition(
    conditions: &mut Vec<Condition>,
    type_: &str,
    ok: bool,
    reason: &str,
    message: &str,
    generation: Option<i64>,
) {
    let cond = conditions::Cond {
        type_,
        status: ok,
        reason,
        message: message.to_owned(),
    };
    conditions::set_condition(conditions, cond, generation, &Time(Timestamp::now()));
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn transition_time_moves_only_on_status_change() {
        let mut c = Vec::new();
        set_condition(&mut c, "Ready", false, "BridgeNameTaken", "x", Some(1));
        let t0 = c[0].last_transition_time.clone();
        std::thread::sleep(std::time::Duration::from_millis(5));
        set_condition(&mut c, "Ready", false, "NetlinkFailed", "y", Some(2));
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].last_transition_time, t0, "same status: time kept");
        assert_eq!(c[0].reason, "NetlinkFailed");
        set_condition(&mut c, "Ready", true, "Programmed", "", Some(2));
        assert_ne!(c[0].last_transition_time, t0);
        assert_eq!(c[0].status, "True");
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod writer_tests {
    use super::*;
    use bridgenet_crds::v1alpha1::Endpoint;
    use http::{Request, Response};
    use kube::client::Body;

    type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

    fn writer() -> (StatusWriter, Handle) {
        let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let client = kube::Client::new(service, "default");
        (StatusWriter::new(Api::all(client)), handle)
    }

    /// Answers one request with `code`; returns the request's path+query and JSON body.
    async fn answer(handle: &mut Handle, code: u16) -> (String, serde_json::Value) {
        let (req, send) = handle.next_request().await.expect("a request");
        let uri = req.uri().to_string();
        assert_eq!(req.method(), http::Method::PATCH);
        let body = req.into_body().collect_bytes().await.unwrap();
        let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
        let reply = if code == 200 {
            serde_json::json!({"apiVersion": "bridgenet.io/v1alpha1", "kind": "NodeBridge",
                "metadata": {"name": "net-a.n1"},
                "spec": {"network": "net-a", "node": "n1", "bridge": "br", "subnet": "10.0.0.0/24",
                         "gateway": "10.0.0.1", "gatewayMac": "02:00:00:00:00:01", "mtu": 1450, "vni": 1},
                "status": json["status"]})
        } else {
            serde_json::json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                "message": "unavailable", "reason": "ServiceUnavailable", "code": code})
        };
        send.send_response(
            Response::builder()
                .status(code)
                .body(Body::from(serde_json::to_vec(&reply).unwrap()))
                .unwrap(),
        );
        (uri, json)
    }

    #[tokio::test]
    async fn writers_merge_into_one_full_status_and_failed_writes_are_retried() {
        let (w, mut handle) = writer();
        let server = tokio::spawn(async move {
            let (uri, body) = answer(&mut handle, 200).await;
            assert!(
                uri.starts_with("/apis/bridgenet.io/v1alpha1/nodebridges/net-a.n1/status?"),
                "{uri}"
            );
            assert!(
                uri.contains("fieldManager=bridgenet-agent") && uri.contains("force=true"),
                "{uri}"
            );
            assert_eq!(body["status"]["conditions"][0]["reason"], "Programmed");
            // The endpoint writer's apply carries the data plane's condition too.
            let (_, body) = answer(&mut handle, 200).await;
            assert_eq!(body["status"]["endpointCount"], 1);
            assert_eq!(body["status"]["conditions"][0]["reason"], "Programmed");
            // A failed write...
            let (_, body) = answer(&mut handle, 503).await;
            assert_eq!(body["status"]["endpointCount"], 0);
            // ...is sent again by the next update even though it changes nothing.
            let (_, body) = answer(&mut handle, 200).await;
            assert_eq!(body["status"]["endpointCount"], 0);
            handle
        });
        w.seed("net-a.n1", None);
        let ready = |s: &mut NodeBridgeStatus| {
            set_condition(
                &mut s.conditions,
                CONDITION_READY,
                true,
                "Programmed",
                "ok",
                Some(1),
            );
            s.observed_generation = Some(1);
        };
        assert!(w.update("net-a.n1", ready).await.unwrap());
        assert!(
            !w.update("net-a.n1", ready).await.unwrap(),
            "unchanged: no write"
        );
        let endpoint = Endpoint {
            namespace: "default".into(),
            pod: "web".into(),
            interface: "net1".into(),
            ipv4: Some("10.0.0.5/24".into()),
            ipv6: None,
            mac: "02:00:00:00:00:05".into(),
            aliases: Vec::new(),
            container_id: None,
            since: None,
        };
        assert!(
            w.update("net-a.n1", |s| {
                s.endpoints = vec![endpoint];
                s.endpoint_count = 1;
            })
            .await
            .unwrap()
        );
        let clear = |s: &mut NodeBridgeStatus| {
            s.endpoints.clear();
            s.endpoint_count = 0;
        };
        assert!(w.update("net-a.n1", clear).await.is_err());
        assert!(w.update("net-a.n1", clear).await.unwrap(), "retried");
        let _handle = server.await.unwrap();
    }
}
