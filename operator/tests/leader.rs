//! Leader election against a mocked API server: the Lease calls a candidate and a leader make.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use bridgenet_operator::leader::LeaderElector;
use http::{Request, Response};
use kube::Client;
use kube::client::Body;
use serde_json::{Value, json};

const LEASE: &str = "/apis/coordination.k8s.io/v1/namespaces/bridgenet-system/leases";

/// Serves `answers` in order (status, body), recording (method, path, body).
async fn serve(
    mut handle: tower_test::mock::Handle<Request<Body>, Response<Body>>,
    answers: Vec<(u16, Value)>,
) -> Vec<(String, String, Value)> {
    let mut seen = Vec::new();
    for (code, answer) in answers {
        let Some((req, send)) = handle.next_request().await else {
            break;
        };
        let method = req.method().to_string();
        let path = req.uri().path().to_owned();
        let bytes = req.into_body().collect_bytes().await.unwrap();
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap()
        };
        seen.push((method, path, body));
        send.send_response(
            Response::builder()
                .status(code)
                .body(Body::from(serde_json::to_vec(&answer).unwrap()))
                .unwrap(),
        );
    }
    seen
}

fn not_found() -> Value {
    json!({"apiVersion": "v1", "kind": "Status", "status": "Failure", "reason": "NotFound", "code": 404, "message": "not found"})
}

fn lease(holder: &str, rv: &str) -> Value {
    json!({
        "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": "bridgenet-operator", "namespace": "bridgenet-system", "resourceVersion": rv},
        "spec": {"holderIdentity": holder, "leaseDurationSeconds": 15, "renewTime": "2026-01-01T00:00:00.000000Z", "leaseTransitions": 2}
    })
}

fn elector(client: Client) -> LeaderElector {
    LeaderElector::new(
        client,
        "bridgenet-system",
        "bridgenet-operator",
        "me",
        Duration::from_secs(15),
    )
}

#[tokio::test]
async fn missing_lease_is_created_holding_it() {
    let (svc, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let server = tokio::spawn(serve(
        handle,
        vec![(404, not_found()), (201, lease("me", "7"))],
    ));
    let mut e = elector(Client::new(svc, "default"));
    assert!(e.try_acquire_or_renew().await.unwrap());
    drop(e);
    let seen = server.await.unwrap();
    assert_eq!(
        (seen[0].0.as_str(), seen[0].1.as_str()),
        ("GET", format!("{LEASE}/bridgenet-operator").as_str())
    );
    assert_eq!((seen[1].0.as_str(), seen[1].1.as_str()), ("POST", LEASE));
    assert_eq!(seen[1].2["spec"]["holderIdentity"], "me");
    assert_eq!(seen[1].2["spec"]["leaseDurationSeconds"], 15);
}

#[tokio::test]
async fn lease_held_by_another_is_left_alone_and_our_own_is_renewed_with_its_version() {
    let (svc, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let server = tokio::spawn(serve(
        handle,
        vec![
            (200, lease("other", "5")),
            (200, lease("me", "9")),
            (200, lease("me", "10")),
        ],
    ));
    let mut e = elector(Client::new(svc, "default"));
    // Someone else renews in time: a candidate only reads.
    assert!(!e.try_acquire_or_renew().await.unwrap());
    // Our own (e.g. after a restart with the same identity): renewed, not a transition.
    assert!(e.try_acquire_or_renew().await.unwrap());
    drop(e);
    let seen = server.await.unwrap();
    let methods: Vec<&str> = seen.iter().map(|s| s.0.as_str()).collect();
    assert_eq!(methods, ["GET", "GET", "PATCH"]);
    let patch = &seen[2].2;
    assert_eq!(
        patch["metadata"]["resourceVersion"], "9",
        "optimistic lock on the version read"
    );
    assert_eq!(patch["spec"]["holderIdentity"], "me");
    assert_eq!(patch["spec"]["leaseTransitions"], 2);
}

#[tokio::test]
async fn losing_the_race_for_a_free_lease_is_not_leadership() {
    let (svc, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let conflict = json!({"apiVersion": "v1", "kind": "Status", "status": "Failure", "reason": "Conflict", "code": 409, "message": "modified"});
    let server = tokio::spawn(serve(handle, vec![(200, lease("", "3")), (409, conflict)]));
    let mut e = elector(Client::new(svc, "default"));
    assert!(!e.try_acquire_or_renew().await.unwrap());
    drop(e);
    let seen = server.await.unwrap();
    assert_eq!(
        seen[1].2["spec"]["leaseTransitions"], 3,
        "a takeover counts a transition"
    );
}
