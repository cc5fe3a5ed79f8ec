//! The controller against a mocked API server (`tower_test::mock::pair`): the requests one
//! reconcile sends, in order, with their bodies, and what `error_policy` decides afterwards.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use bridgenet_crds::v1alpha1::{BridgeNetwork, NetworkOverlay, NodeBridge, NodeBridgeStatus};
use bridgenet_crds::{FINALIZER_OPERATOR, LABEL_NETWORK, LABEL_NODE};
use bridgenet_operator::controller::{
    Context, OVERLAY_HOLD, WRITE_CONCURRENCY, error_policy, reconcile,
};
use bridgenet_operator::metrics::Metrics;
use bridgenet_operator::plan::Settings;
use bridgenet_operator::scale::{network, node};
use http::{Request, Response};
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use kube::Client;
use kube::client::Body;
use kube::runtime::controller::Action;
use kube::runtime::reflector::{self, Store};
use kube::runtime::watcher;
use serde_json::{Value, json};

/// One request as the API server saw it.
#[derive(Debug, Clone)]
struct Seen {
    method: String,
    path: String,
    query: String,
    body: Value,
}

fn store_of<K>(objs: Vec<K>) -> Store<K>
where
    K: kube::Resource
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone,
{
    let (reader, mut writer) = reflector::store();
    writer.apply_watcher_event(&watcher::Event::Init);
    for o in objs {
        writer.apply_watcher_event(&watcher::Event::InitApply(o));
    }
    writer.apply_watcher_event(&watcher::Event::InitDone);
    reader
}

/// A fake API server: answers writes by echoing what was sent (the status subresource echoes
/// the network with the new status), and `conflict_on` paths with 409.
struct Api {
    handle: tower_test::mock::Handle<Request<Body>, Response<Body>>,
    network: Value,
    conflict_on: Vec<(String, String)>,
    /// Pods as (namespace, name, node), for pod lists by `spec.nodeName`.
    pods: Vec<(String, String, String)>,
    /// When not 0, NodeBridge applies are answered only once this many wait for an answer, or
    /// no further request came for [`HOLD_QUIET`]: how many a reconcile sends before any
    /// returns is then its concurrency.
    hold: usize,
    /// Sizes of the batches of held applies, in order.
    in_flight: Arc<std::sync::Mutex<Vec<usize>>>,
}

impl Api {
    async fn run(mut self) -> Vec<Seen> {
        let mut seen = Vec::new();
        // NodeBridge applies held back, answered together (see `hold`).
        let mut held = Vec::new();
        loop {
            let next = if held.is_empty() {
                self.handle.next_request().await
            } else {
                match tokio::time::timeout(HOLD_QUIET, self.handle.next_request()).await {
                    Ok(next) => next,
                    Err(_) => {
                        self.release(&mut held);
                        continue;
                    }
                }
            };
            let Some((req, send)) = next else { break };
            let method = req.method().to_string();
            let path = req.uri().path().to_owned();
            let query = req.uri().query().unwrap_or_default().to_owned();
            let bytes = req.into_body().collect_bytes().await.unwrap();
            let body: Value = if bytes.is_empty() {
                Value::Null
            } else {
                serde_json::from_slice(&bytes).unwrap()
            };
            seen.push(Seen {
                method: method.clone(),
                path: path.clone(),
                query: query.clone(),
                body: body.clone(),
            });
            let (code, answer) = if self.conflict_on.contains(&(method.clone(), path.clone())) {
                (
                    409,
                    json!({"apiVersion": "v1", "kind": "Status", "status": "Failure", "reason": "Conflict", "code": 409, "message": "the object has been modified"}),
                )
            } else if method == "GET" && path == "/api/v1/pods" {
                let node = query
                    .split('&')
                    .find_map(|kv| kv.strip_prefix("fieldSelector=spec.nodeName%3D"))
                    .unwrap_or_default()
                    .to_owned();
                let items: Vec<Value> = self
                    .pods
                    .iter()
                    .filter(|(_, _, on)| *on == node)
                    .map(|(ns, name, _)| {
                        json!({"apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadata",
                               "metadata": {"name": name, "namespace": ns}})
                    })
                    .collect();
                (
                    200,
                    json!({"apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadataList",
                           "metadata": {"resourceVersion": "1"}, "items": items}),
                )
            } else if path.ends_with("/status") {
                let mut n = self.network.clone();
                n["status"] = body["status"].clone();
                (200, n)
            } else if path.starts_with("/apis/bridgenet.io/v1alpha1/bridgenetworks/") {
                // The finalizer's JSON patch: answer with the finalizer in place (or removed).
                let mut n = self.network.clone();
                let adds = body
                    .as_array()
                    .is_some_and(|ops| ops.iter().any(|o| o["op"] == "add"));
                n["metadata"]["finalizers"] = if adds {
                    json!([FINALIZER_OPERATOR])
                } else {
                    json!([])
                };
                (200, n)
            } else if path.starts_with(NBS) && body.get("spec").is_none() {
                // A metadata-only merge patch: a real server answers with the whole object.
                let name = path.rsplit('/').next().unwrap_or_default();
                (
                    200,
                    json!({
                        "apiVersion": "bridgenet.io/v1alpha1", "kind": "NodeBridge",
                        "metadata": {"name": name},
                        "spec": {"network": "blue", "node": "b", "bridge": "br", "subnet": "172.20.0.0/16",
                                 "gateway": "172.20.0.1", "gatewayMac": "02:00:00:00:00:01", "mtu": 1450, "vni": 5000}
                    }),
                )
            } else if method == "DELETE" {
                (
                    200,
                    json!({"apiVersion": "v1", "kind": "Status", "status": "Success", "code": 200, "metadata": {}}),
                )
            } else {
                (if method == "POST" { 201 } else { 200 }, body)
            };
            let response = Response::builder()
                .status(code)
                .body(Body::from(serde_json::to_vec(&answer).unwrap()))
                .unwrap();
            if self.hold > 0 && method == "PATCH" && path.starts_with(NBS) {
                held.push((send, response));
                if held.len() == self.hold {
                    self.release(&mut held);
                }
            } else {
                send.send_response(response);
            }
        }
        seen
    }

    /// Answers the held applies, noting how many were in flight together.
    fn release(
        &self,
        held: &mut Vec<(
            tower_test::mock::SendResponse<Response<Body>>,
            Response<Body>,
        )>,
    ) {
        self.in_flight.lock().unwrap().push(held.len());
        for (send, response) in held.drain(..) {
            send.send_response(response);
        }
    }
}

/// How long the fake server waits for one more held apply before answering those it holds.
const HOLD_QUIET: Duration = Duration::from_millis(300);

struct Scenario {
    network: BridgeNetwork,
    others: Vec<BridgeNetwork>,
    nodes: Vec<Node>,
    node_bridges: Vec<NodeBridge>,
    overlays: Vec<NetworkOverlay>,
    overlay_hold: Option<Duration>,
    conflict_on: Vec<(String, String)>,
    pods: Vec<(String, String, String)>,
    hold: usize,
    in_flight: Arc<std::sync::Mutex<Vec<usize>>>,
}

impl Scenario {
    fn new(network: BridgeNetwork, nodes: Vec<Node>) -> Self {
        Self {
            network,
            others: Vec::new(),
            nodes,
            node_bridges: Vec::new(),
            overlays: Vec::new(),
            overlay_hold: None,
            conflict_on: Vec::new(),
            pods: Vec::new(),
            hold: 0,
            in_flight: Arc::default(),
        }
    }

    /// Runs one reconcile; returns the requests in order, the result, and error_policy's
    /// decision for a failure.
    async fn reconcile(self) -> (Vec<Seen>, Result<Action, String>, Option<Action>) {
        let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let api = Api {
            handle,
            network: serde_json::to_value(&self.network).unwrap(),
            conflict_on: self.conflict_on,
            pods: self.pods,
            hold: self.hold,
            in_flight: self.in_flight,
        };
        let server = tokio::spawn(api.run());
        let client = Client::new(service, "default");
        let mut nets = self.others;
        nets.push(self.network.clone());
        let hold = self.overlay_hold.unwrap_or(OVERLAY_HOLD);
        let ctx = Arc::new(
            Context::new(
                client,
                Settings::default(),
                (
                    store_of(nets),
                    store_of(self.nodes),
                    store_of(self.node_bridges),
                ),
                Arc::new(Metrics::new()),
                "test-replica",
            )
            .with_overlays(store_of(self.overlays))
            .with_overlay_hold(hold),
        );
        let obj = Arc::new(self.network);
        let result =
            tokio::time::timeout(Duration::from_secs(10), reconcile(obj.clone(), ctx.clone()))
                .await
                .expect("reconcile hangs");
        let policy = result
            .as_ref()
            .err()
            .map(|e| error_policy(obj, e, ctx.clone()));
        let result = result.map_err(|e| format!("{e}"));
        drop(ctx);
        let seen = tokio::time::timeout(Duration::from_secs(10), server)
            .await
            .unwrap()
            .unwrap();
        (seen, result, policy)
    }
}

fn blue() -> BridgeNetwork {
    let mut n = network("blue", "172.20.0.0/16", 100);
    n.metadata.finalizers = Some(vec![FINALIZER_OPERATOR.to_owned()]);
    n
}

fn two_nodes() -> Vec<Node> {
    vec![node("a", "192.168.0.1", &[]), node("b", "192.168.0.2", &[])]
}

fn route(s: &Seen) -> String {
    format!("{} {}", s.method, s.path)
}

fn routes(seen: &[Seen]) -> Vec<String> {
    seen.iter().map(route).collect()
}

fn condition<'a>(status: &'a Value, type_: &str) -> &'a Value {
    status["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == type_)
        .unwrap_or_else(|| panic!("no {type_} condition in {status}"))
}

const NETS: &str = "/apis/bridgenet.io/v1alpha1/bridgenetworks";
const NBS: &str = "/apis/bridgenet.io/v1alpha1/nodebridges";
const OVERLAYS: &str = "/apis/bridgenet.io/v1alpha1/networkoverlays";
const EVENTS: &str = "/apis/events.k8s.io/v1/namespaces/default/events";

#[tokio::test]
async fn finalizer_is_added_before_anything_else() {
    let mut net = blue();
    net.metadata.finalizers = None;
    let (seen, result, _) = Scenario::new(net, two_nodes()).reconcile().await;
    assert_eq!(routes(&seen), [format!("PATCH {NETS}/blue")]);
    assert!(seen[0].body.to_string().contains(FINALIZER_OPERATOR));
    assert_eq!(result, Ok(Action::await_change()));
}

#[tokio::test]
async fn new_network_writes_status_then_one_node_bridge_per_node() {
    let (seen, result, _) = Scenario::new(blue(), two_nodes()).reconcile().await;
    assert_eq!(
        routes(&seen),
        [
            format!("PATCH {NETS}/blue/status"),
            format!("PATCH {NBS}/blue.a"),
            format!("PATCH {NBS}/blue.b")
        ]
    );
    // Status: server-side apply by our field manager, guarded by the resourceVersion read.
    let st = &seen[0];
    assert!(
        st.query.contains("fieldManager=bridgenet-operator") && st.query.contains("force=true"),
        "{}",
        st.query
    );
    assert_eq!(st.body["metadata"]["resourceVersion"], "1");
    let status = &st.body["status"];
    assert_eq!(
        status["blocks"],
        json!([
            {"cidr": "172.20.0.0/26", "node": "a"},
            {"cidr": "172.20.0.64/26", "node": "b"},
        ])
    );
    assert_eq!(status["readySummary"], "0/2");
    assert_eq!(status["observedGeneration"], 1);
    assert_eq!(condition(status, "Accepted")["status"], "True");
    assert_eq!(condition(status, "Ready")["reason"], "NodesNotReady");
    // NodeBridges: labels, owner, spec.
    let a = &seen[1].body;
    assert_eq!(a["metadata"]["name"], "blue.a");
    assert_eq!(a["metadata"]["labels"][LABEL_NETWORK], "blue");
    assert_eq!(a["metadata"]["labels"][LABEL_NODE], "a");
    assert_eq!(a["metadata"]["ownerReferences"][0]["uid"], "uid-blue");
    assert_eq!(a["metadata"]["ownerReferences"][0]["controller"], true);
    assert_eq!(a["spec"]["blocks"], json!(["172.20.0.0/26"]));
    assert!(
        a["spec"].get("peers").is_none(),
        "no peer list: agents read the network's tunnel endpoints"
    );
    assert!(
        !routes(&seen).iter().any(|r| r.contains("networkoverlays")),
        "no node has a pod yet: no overlay to write"
    );
    assert_eq!(a["spec"]["vni"], status["vni"]);
    assert!(seen[1].query.contains("fieldManager=bridgenet-operator"));
    assert_eq!(seen[2].body["metadata"]["name"], "blue.b");
    assert_eq!(result, Ok(Action::requeue(Duration::from_secs(300))));
}

/// Feeds the objects the first reconcile wrote back in, with agents reporting Ready: the next
/// reconciles (a restart re-lists the same objects) write the status once and then nothing.
#[tokio::test]
async fn restart_with_converged_objects_sends_no_request() {
    let (seen, _, _) = Scenario::new(blue(), two_nodes()).reconcile().await;
    let mut net = blue();
    net.status = Some(serde_json::from_value(seen[0].body["status"].clone()).unwrap());
    let ready = |body: &Value| {
        let mut nb: NodeBridge = serde_json::from_value(body.clone()).unwrap();
        nb.metadata.generation = Some(1);
        nb.status = Some(NodeBridgeStatus {
            conditions: vec![Condition {
                type_: "Ready".into(),
                status: "True".into(),
                reason: "Programmed".into(),
                message: String::new(),
                observed_generation: Some(1),
                last_transition_time: Time(Timestamp::UNIX_EPOCH),
            }],
            observed_generation: Some(1),
            free_addresses: 61,
            ..Default::default()
        });
        nb
    };
    let nbs = vec![ready(&seen[1].body), ready(&seen[2].body)];

    let mut sc = Scenario::new(net.clone(), two_nodes());
    sc.node_bridges = nbs.clone();
    let (seen2, result, _) = sc.reconcile().await;
    assert_eq!(
        routes(&seen2),
        [format!("PATCH {NETS}/blue/status")],
        "only Ready flips"
    );
    let status = &seen2[0].body["status"];
    assert_eq!(condition(status, "Ready")["status"], "True");
    assert_eq!(status["readySummary"], "2/2");
    assert_eq!(status["blocks"], seen[0].body["status"]["blocks"]);
    assert!(result.is_ok());

    net.status = Some(serde_json::from_value(status.clone()).unwrap());
    let mut sc = Scenario::new(net, vec![two_nodes()[1].clone(), two_nodes()[0].clone()]);
    sc.node_bridges = nbs.into_iter().rev().collect();
    let (seen3, result, _) = sc.reconcile().await;
    assert!(seen3.is_empty(), "steady state sent {:?}", routes(&seen3));
    assert!(result.is_ok());
}

#[tokio::test]
async fn overlapping_younger_network_is_refused_with_condition_and_event() {
    let mut young = network("young", "172.20.5.0/24", 200);
    young.metadata.finalizers = Some(vec![FINALIZER_OPERATOR.to_owned()]);
    let mut sc = Scenario::new(young, two_nodes());
    sc.others = vec![blue()];
    let (seen, result, policy) = sc.reconcile().await;
    assert_eq!(
        routes(&seen),
        [
            format!("PATCH {NETS}/young/status"),
            format!("POST {EVENTS}")
        ]
    );
    let accepted = condition(&seen[0].body["status"], "Accepted");
    assert_eq!(accepted["status"], "False");
    assert_eq!(accepted["reason"], "SubnetOverlap");
    assert!(accepted["message"].as_str().unwrap().contains("blue"));
    let ev = &seen[1].body;
    assert_eq!(ev["type"], "Warning");
    assert_eq!(ev["reason"], "SubnetOverlap");
    assert_eq!(ev["regarding"]["name"], "young");
    assert_eq!(ev["reportingController"], "bridgenet-operator");
    assert!(result.unwrap_err().contains("SubnetOverlap"));
    assert_eq!(
        policy,
        Some(Action::await_change()),
        "waits for a change, no polling"
    );
}

/// The overlay the first reconcile wrote, as the operator's cache then holds it.
fn overlay_of(seen: &Seen) -> NetworkOverlay {
    serde_json::from_value(seen.body.clone()).unwrap()
}

#[tokio::test]
async fn overlay_lists_the_nodes_with_pods_and_departure_costs_two_writes() {
    let (net, mut nbs) = converged_blue().await;
    attached(&mut nbs[0]);
    attached(&mut nbs[1]);
    let mut sc = Scenario::new(net.clone(), two_nodes());
    sc.node_bridges = nbs.clone();
    let (seen, _, _) = sc.reconcile().await;
    assert_eq!(
        routes(&seen),
        [
            format!("PATCH {NETS}/blue/status"),
            format!("PATCH {OVERLAYS}/blue")
        ]
    );
    let overlay = &seen[1].body;
    assert!(seen[1].query.contains("fieldManager=bridgenet-operator"));
    assert_eq!(overlay["metadata"]["ownerReferences"][0]["uid"], "uid-blue");
    assert_eq!(overlay["metadata"]["labels"][LABEL_NETWORK], "blue");
    assert_eq!(overlay["spec"]["network"], "blue");
    assert_eq!(overlay["spec"]["nodeCount"], 2);
    assert_eq!(
        overlay["spec"]["endpoints"],
        json!([{"node": "a", "address": "192.168.0.1"}, {"node": "b", "address": "192.168.0.2"}])
    );
    let cached = overlay_of(&seen[1]);
    let mut net = net;
    net.status = Some(serde_json::from_value(seen[0].body["status"].clone()).unwrap());

    // Another pass with nothing new writes nothing: the overlay is compared with the cache.
    let mut sc = Scenario::new(net.clone(), two_nodes());
    sc.node_bridges = nbs.clone();
    sc.overlays = vec![cached.clone()];
    let (seen, _, _) = sc.reconcile().await;
    assert!(seen.is_empty(), "steady state sent {:?}", routes(&seen));

    // b leaves: its NodeBridge goes, the status and the overlay say so; a's NodeBridge is not
    // touched.
    let mut sc = Scenario::new(net, vec![two_nodes()[0].clone()]);
    sc.node_bridges = nbs;
    sc.overlays = vec![cached];
    sc.pods = vec![pod_on("b")];
    let (seen, result, _) = sc.reconcile().await;
    assert_eq!(
        routes(&seen),
        [
            PODS_ON_B.to_owned(),
            format!("PATCH {NETS}/blue/status"),
            format!("DELETE {NBS}/blue.b"),
            format!("PATCH {OVERLAYS}/blue")
        ]
    );
    assert_eq!(
        seen[3].body["spec"]["endpoints"],
        json!([{"node": "a", "address": "192.168.0.1"}])
    );
    assert!(result.is_ok());
}

/// Blue converged with a pod on each node and its overlay written: the network with its
/// status, the NodeBridges, and the overlay as the operator's cache then holds it.
async fn converged_blue_with_pods() -> (BridgeNetwork, Vec<NodeBridge>, NetworkOverlay) {
    let (mut net, mut nbs) = converged_blue().await;
    attached(&mut nbs[0]);
    attached(&mut nbs[1]);
    let mut sc = Scenario::new(net.clone(), two_nodes());
    sc.node_bridges = nbs.clone();
    let (seen, _, _) = sc.reconcile().await;
    net.status = Some(serde_json::from_value(seen[0].body["status"].clone()).unwrap());
    (net, nbs, overlay_of(&seen[1]))
}

/// A node whose last pod went stays in the overlay for the hold (a pod restarted, or refused
/// and retried, would otherwise flap every other node's flood entry), and goes after it.
#[tokio::test]
async fn a_node_without_pods_leaves_the_overlay_only_after_the_hold() {
    let (net, mut nbs, cached) = converged_blue_with_pods().await;
    nbs[1].status = None;

    let mut sc = Scenario::new(net.clone(), two_nodes());
    sc.node_bridges = nbs.clone();
    sc.overlays = vec![cached.clone()];
    let (seen, result, _) = sc.reconcile().await;
    assert!(
        !routes(&seen).iter().any(|r| r.contains("networkoverlays")),
        "b is held: {:?}",
        routes(&seen)
    );
    // Looks again when the hold ends (plus a second), not at the next resync.
    let shown = format!("{result:?}");
    assert!(
        shown.contains("requeue_after: Some(30.") || shown.contains("requeue_after: Some(31s)"),
        "{shown}"
    );

    let mut sc = Scenario::new(net, two_nodes());
    sc.node_bridges = nbs;
    sc.overlays = vec![cached];
    sc.overlay_hold = Some(Duration::ZERO);
    let (seen, _, _) = sc.reconcile().await;
    let overlay = seen
        .iter()
        .find(|s| s.path.contains("networkoverlays"))
        .expect("the overlay is written once the hold is over");
    assert_eq!(
        overlay.body["spec"]["endpoints"],
        json!([{"node": "a", "address": "192.168.0.1"}])
    );
}

#[tokio::test]
async fn joining_node_and_changed_address_cost_two_writes_at_most() {
    let (net, nbs, cached) = converged_blue_with_pods().await;

    // c joins (no pod yet): its NodeBridge and the network's status.
    let mut three = two_nodes();
    three.push(node("c", "192.168.0.3", &[]));
    let mut sc = Scenario::new(net.clone(), three);
    sc.node_bridges = nbs.clone();
    sc.overlays = vec![cached.clone()];
    let (seen, _, _) = sc.reconcile().await;
    assert_eq!(
        routes(&seen),
        [
            format!("PATCH {NETS}/blue/status"),
            format!("PATCH {NBS}/blue.c")
        ]
    );
    assert!(seen[1].body["spec"].get("peers").is_none());

    // b's InternalIP changes: only the overlay says so.
    let moved = vec![node("a", "192.168.0.1", &[]), node("b", "192.168.7.7", &[])];
    let mut sc = Scenario::new(net, moved);
    sc.node_bridges = nbs;
    sc.overlays = vec![cached];
    let (seen, _, _) = sc.reconcile().await;
    assert_eq!(routes(&seen), [format!("PATCH {OVERLAYS}/blue")]);
    assert_eq!(
        seen[0].body["spec"]["endpoints"],
        json!([{"node": "a", "address": "192.168.0.1"}, {"node": "b", "address": "192.168.7.7"}])
    );
}

/// NodeBridges an operator from before wrote with peer lists, read by agents from before: the
/// lists stay and follow the nodes until each agent reports reading the network's status.
#[tokio::test]
async fn legacy_peer_lists_are_kept_until_their_agent_reads_the_network() {
    let (net, mut nbs) = converged_blue().await;
    let peer = |node: &str, address: &str, block: &str| bridgenet_crds::v1alpha1::Peer {
        node: node.into(),
        address: address.into(),
        blocks: vec![block.into()],
    };
    nbs[0].spec.peers = vec![peer("b", "192.168.0.2", "172.20.0.64/26")];
    nbs[1].spec.peers = vec![peer("a", "192.168.0.1", "172.20.0.0/26")];
    let mut three = two_nodes();
    three.push(node("c", "192.168.0.3", &[]));

    let mut sc = Scenario::new(net.clone(), three.clone());
    sc.node_bridges = nbs.clone();
    let (seen, _, _) = sc.reconcile().await;
    assert_eq!(
        routes(&seen),
        [
            format!("PATCH {NETS}/blue/status"),
            format!("PATCH {NBS}/blue.a"),
            format!("PATCH {NBS}/blue.b"),
            format!("PATCH {NBS}/blue.c")
        ]
    );
    let peers = |i: usize| -> Vec<String> {
        seen[i].body["spec"]["peers"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|p| p["node"].as_str().unwrap().to_owned())
                    .collect()
            })
            .unwrap_or_default()
    };
    assert_eq!(peers(1), ["b", "c"], "an old agent learns of c");
    assert_eq!(peers(2), ["a", "c"]);
    assert!(peers(3).is_empty(), "a new NodeBridge gets no list");

    // a's agent is upgraded and says so: a's list goes, b's stays as it is.
    nbs[0].status.get_or_insert_default().network_peers = true;
    let mut sc = Scenario::new(net, two_nodes());
    sc.node_bridges = nbs;
    let (seen, _, _) = sc.reconcile().await;
    assert_eq!(
        routes(&seen),
        [
            format!("PATCH {NETS}/blue/status"),
            format!("PATCH {NBS}/blue.a")
        ]
    );
    assert!(seen[1].body["spec"].get("peers").is_none());
}

#[tokio::test]
async fn stale_view_conflict_stops_before_any_node_bridge_write() {
    let mut sc = Scenario::new(blue(), two_nodes());
    sc.conflict_on = vec![("PATCH".into(), format!("{NETS}/blue/status"))];
    let (seen, result, policy) = sc.reconcile().await;
    assert_eq!(routes(&seen), [format!("PATCH {NETS}/blue/status")]);
    assert!(result.is_err());
    assert_eq!(policy, Some(Action::requeue(Duration::from_secs(1))));
}

fn attached(nb: &mut NodeBridge) {
    nb.status = Some(serde_json::from_value(json!({
        "endpoints": [{"namespace": "shop", "pod": "cart", "interface": "net1", "mac": "02:00:00:00:00:09"}],
        "endpointCount": 1
    })).unwrap());
}

async fn converged_blue() -> (BridgeNetwork, Vec<NodeBridge>) {
    let (seen, _, _) = Scenario::new(blue(), two_nodes()).reconcile().await;
    let mut net = blue();
    net.status = Some(serde_json::from_value(seen[0].body["status"].clone()).unwrap());
    let nbs = seen[1..]
        .iter()
        .map(|s| serde_json::from_value(s.body.clone()).unwrap())
        .collect();
    (net, nbs)
}

#[tokio::test]
async fn deletion_with_attached_pods_is_held_and_announced() {
    let (mut net, mut nbs) = converged_blue().await;
    attached(&mut nbs[0]);
    net.metadata.deletion_timestamp = Some(Time(Timestamp::UNIX_EPOCH));
    let mut sc = Scenario::new(net, two_nodes());
    sc.node_bridges = nbs;
    let (seen, result, policy) = sc.reconcile().await;
    assert_eq!(
        routes(&seen),
        [
            format!("PATCH {NETS}/blue/status"),
            format!("POST {EVENTS}")
        ]
    );
    let ready = condition(&seen[0].body["status"], "Ready");
    assert_eq!(ready["reason"], "DeletionBlocked");
    assert!(
        ready["message"]
            .as_str()
            .unwrap()
            .contains("shop/cart on a")
    );
    assert_eq!(seen[1].body["reason"], "DeletionBlocked");
    assert!(result.unwrap_err().contains("blocked"));
    assert_eq!(policy, Some(Action::requeue(Duration::from_secs(30))));
}

#[tokio::test]
async fn forced_deletion_deletes_node_bridges_then_waits_for_agents() {
    let (mut net, mut nbs) = converged_blue().await;
    attached(&mut nbs[0]);
    net.metadata.deletion_timestamp = Some(Time(Timestamp::UNIX_EPOCH));
    net.metadata.annotations.get_or_insert_default().insert(
        bridgenet_crds::ANNOTATION_FORCE_DELETE.into(),
        "true".into(),
    );
    let mut sc = Scenario::new(net, two_nodes());
    sc.node_bridges = nbs;
    let (seen, result, policy) = sc.reconcile().await;
    assert_eq!(
        routes(&seen),
        [
            format!("PATCH {NETS}/blue/status"),
            format!("DELETE {NBS}/blue.a"),
            format!("DELETE {NBS}/blue.b")
        ]
    );
    assert_eq!(
        condition(&seen[0].body["status"], "Ready")["reason"],
        "Deleting"
    );
    assert!(result.unwrap_err().contains("torn down"));
    assert_eq!(policy, Some(Action::requeue(Duration::from_secs(5))));
}

#[tokio::test]
async fn finalizer_goes_once_every_node_bridge_is_gone() {
    let (mut net, _) = converged_blue().await;
    net.metadata.deletion_timestamp = Some(Time(Timestamp::UNIX_EPOCH));
    let (seen, result, _) = Scenario::new(net, two_nodes()).reconcile().await;
    assert_eq!(routes(&seen), [format!("PATCH {NETS}/blue")]);
    // kube's finalizer helper: test-and-remove, so another controller's finalizer is safe.
    let ops = seen[0].body.as_array().unwrap();
    assert_eq!(ops[0]["op"], "test");
    assert_eq!(ops[0]["value"], FINALIZER_OPERATOR);
    assert_eq!(ops[1]["op"], "remove");
    assert_eq!(result, Ok(Action::await_change()));
}

#[tokio::test]
async fn agent_finalizer_of_a_vanished_node_is_released() {
    let (net, mut nbs) = converged_blue().await;
    // Node b was deleted; its NodeBridge is terminating and no agent is left to let it go.
    nbs[1].metadata.deletion_timestamp = Some(Time(Timestamp::UNIX_EPOCH));
    nbs[1].metadata.finalizers = Some(vec![
        bridgenet_crds::FINALIZER_AGENT.to_owned(),
        "other/keep".to_owned(),
    ]);
    nbs[1].metadata.resource_version = Some("42".to_owned());
    let mut sc = Scenario::new(net, vec![node("a", "192.168.0.1", &[])]);
    sc.node_bridges = nbs;
    let (seen, result, _) = sc.reconcile().await;
    assert_eq!(
        routes(&seen),
        [
            format!("PATCH {NETS}/blue/status"),
            format!("PATCH {NBS}/blue.b")
        ]
    );
    // A merge patch that keeps everyone else's finalizers, guarded by the version read.
    let release = &seen[1];
    assert!(!release.query.contains("fieldManager"), "{}", release.query);
    assert_eq!(
        release.body["metadata"]["finalizers"],
        json!(["other/keep"])
    );
    assert_eq!(release.body["metadata"]["resourceVersion"], "42");
    assert!(result.is_ok());
}

const PODS_ON_B: &str = "GET /api/v1/pods";

fn pod_on(node: &str) -> (String, String, String) {
    ("shop".into(), "cart".into(), node.into())
}

#[tokio::test]
async fn a_deleted_node_whose_pods_are_gone_gives_its_blocks_back() {
    let (net, mut nbs) = converged_blue().await;
    // Node b was deleted without a drain: its NodeBridge still lists shop/cart, and no agent is
    // left to report it detached. The pod garbage collector has deleted the pod.
    attached(&mut nbs[1]);
    let mut sc = Scenario::new(net, vec![node("a", "192.168.0.1", &[])]);
    sc.node_bridges = nbs;
    let (seen, result, _) = sc.reconcile().await;
    assert_eq!(
        routes(&seen),
        [
            PODS_ON_B.to_owned(),
            format!("PATCH {NETS}/blue/status"),
            format!("DELETE {NBS}/blue.b")
        ]
    );
    assert!(
        seen[0].query.contains("fieldSelector=spec.nodeName%3Db"),
        "{}",
        seen[0].query
    );
    assert_eq!(
        seen[1].body["status"]["blocks"],
        json!([{"cidr": "172.20.0.0/26", "node": "a"}]),
        "b's block is free again"
    );
    assert_eq!(result, Ok(Action::requeue(Duration::from_secs(300))));
}

#[tokio::test]
async fn a_deleted_node_keeps_its_blocks_while_its_pods_are_bound_to_it() {
    let (net, mut nbs) = converged_blue().await;
    attached(&mut nbs[1]);
    let mut sc = Scenario::new(net, vec![node("a", "192.168.0.1", &[])]);
    sc.node_bridges = nbs;
    sc.pods = vec![pod_on("b")];
    let (seen, result, _) = sc.reconcile().await;
    assert_eq!(
        routes(&seen),
        [
            PODS_ON_B.to_owned(),
            format!("PATCH {NETS}/blue/status"),
            format!("DELETE {NBS}/blue.b")
        ]
    );
    assert_eq!(
        seen[1].body["status"]["blocks"],
        json!([{"cidr": "172.20.0.0/26", "node": "a"}, {"cidr": "172.20.0.64/26", "node": "b"}]),
        "b's block stays b's while shop/cart holds an address in it"
    );
    // Pod deletions are not watched: it looks again soon.
    assert_eq!(result, Ok(Action::requeue(Duration::from_secs(10))));
}

#[tokio::test]
async fn deleting_a_network_is_not_held_by_pods_of_a_deleted_node_that_are_gone() {
    let (mut net, mut nbs) = converged_blue().await;
    attached(&mut nbs[1]);
    net.metadata.deletion_timestamp = Some(Time(Timestamp::UNIX_EPOCH));
    // The same pod name now runs on node a: a different pod, not the one b listed.
    let mut sc = Scenario::new(net.clone(), vec![node("a", "192.168.0.1", &[])]);
    sc.node_bridges = nbs.clone();
    sc.pods = vec![pod_on("a")];
    let (seen, result, _) = sc.reconcile().await;
    assert_eq!(
        routes(&seen),
        [
            PODS_ON_B.to_owned(),
            format!("PATCH {NETS}/blue/status"),
            format!("DELETE {NBS}/blue.a"),
            format!("DELETE {NBS}/blue.b")
        ]
    );
    assert_eq!(
        condition(&seen[1].body["status"], "Ready")["reason"],
        "Deleting"
    );
    assert!(result.unwrap_err().contains("torn down"));

    // While the pod is still bound to b, deletion is held and names it.
    let mut sc = Scenario::new(net, vec![node("a", "192.168.0.1", &[])]);
    sc.node_bridges = nbs;
    sc.pods = vec![pod_on("b")];
    let (seen, result, _) = sc.reconcile().await;
    assert_eq!(routes(&seen)[0], PODS_ON_B);
    assert!(result.unwrap_err().contains("blocked"));
}

/// A network on 40 nodes: its NodeBridges go out 16 at a time (the status first, alone), not
/// one after another, and every one of them is written.
#[tokio::test]
async fn node_bridges_are_written_concurrently_within_the_bound() {
    let nodes: Vec<Node> = (0..40)
        .map(|i| node(&format!("n{i:02}"), &format!("192.168.1.{}", i + 1), &[]))
        .collect();
    let mut sc = Scenario::new(blue(), nodes);
    sc.hold = WRITE_CONCURRENCY;
    let in_flight = sc.in_flight.clone();
    let (seen, result, _) = sc.reconcile().await;
    assert!(result.is_ok(), "{result:?}");
    assert_eq!(route(&seen[0]), format!("PATCH {NETS}/blue/status"));
    let mut written: Vec<String> = seen[1..].iter().map(route).collect();
    written.sort();
    let expected: Vec<String> = (0..40)
        .map(|i| format!("PATCH {NBS}/blue.n{i:02}"))
        .collect();
    assert_eq!(written, expected);
    // 40 applies with 16 in flight: two full batches, then the 8 left.
    assert_eq!(*in_flight.lock().unwrap(), [16, 16, 8]);
}
