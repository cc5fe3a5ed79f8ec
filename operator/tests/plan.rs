//! The planner without a cluster: membership (join, leave, selector change), block stability
//! across restarts, growth and exhaustion, admission (overlap, duplicate bridge, invalid spec,
//! VNI) and deletion planning.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use bridgenet_crds::v1alpha1::{
    BridgeNetwork, BridgeNetworkStatus, Endpoint, NodeBridge, NodeBridgeStatus, Peer,
    node_bridge_labels,
};
use bridgenet_crds::{ANNOTATION_FORCE_DELETE, FINALIZER_AGENT};
use bridgenet_operator::plan::{
    self, NetworkPlan, PlanInput, RejectReason, Settings, Verdict, admit_all, node_bridge_name,
    plan_cleanup,
};
use bridgenet_operator::scale::{network, node};
use bridgenet_operator::{observed, status};
use ipnet::IpNet;
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;

fn t(s: i64) -> Time {
    Time(Timestamp::from_second(s).unwrap())
}

fn nodes(names: &[&str]) -> Vec<Arc<Node>> {
    names
        .iter()
        .enumerate()
        .map(|(i, n)| {
            Arc::new(node(
                n,
                &format!("192.168.0.{}", i + 10),
                &[("role", "worker")],
            ))
        })
        .collect()
}

fn net(name: &str, spec: serde_json::Value, created: i64) -> BridgeNetwork {
    let mut n = network(name, "10.0.0.0/8", created);
    n.spec = serde_json::from_value(spec).unwrap();
    n
}

struct World {
    nets: Vec<Arc<BridgeNetwork>>,
    nodes: Vec<Arc<Node>>,
    nbs: Vec<Arc<NodeBridge>>,
    settings: Settings,
}

impl World {
    fn new(nets: Vec<BridgeNetwork>, nodes: Vec<Arc<Node>>) -> Self {
        Self {
            nets: nets.into_iter().map(Arc::new).collect(),
            nodes,
            nbs: Vec::new(),
            settings: Settings::default(),
        }
    }

    fn verdict(&self, name: &str) -> Verdict {
        admit_all(&self.nets, &self.settings).remove(name).unwrap()
    }

    fn plan(&self, name: &str) -> NetworkPlan {
        let verdict = self.verdict(name);
        let network = self
            .nets
            .iter()
            .find(|n| n.metadata.name.as_deref() == Some(name))
            .unwrap();
        plan::plan_network(&PlanInput {
            network,
            verdict: &verdict,
            nodes: &self.nodes,
            existing: &self.nbs,
            settings: &self.settings,
            now: &t(100),
        })
    }

    /// Executes a plan the way the controller does (status, NodeBridge writes, deletions),
    /// with agents that report Ready at once.
    fn apply(&mut self, name: &str, plan: &NetworkPlan) {
        for n in &mut self.nets {
            if n.metadata.name.as_deref() == Some(name) {
                Arc::make_mut(n).status = Some(plan.status.clone());
            }
        }
        let Some(children) = &plan.children else {
            return;
        };
        for (i, m) in children.members.iter().enumerate() {
            if !children.needs_write(i) {
                continue;
            }
            self.nbs
                .retain(|nb| nb.metadata.name.as_deref() != Some(m.name.as_str()));
            let mut nb = NodeBridge::new(&m.name, children.spec_for(i));
            nb.metadata.labels = Some(node_bridge_labels(name, &m.node));
            nb.metadata.generation = Some(1);
            nb.status = Some(ready_status(Some(1)));
            self.nbs.push(Arc::new(nb));
        }
        self.nbs.retain(|nb| {
            !children
                .deletes
                .contains(nb.metadata.name.as_ref().unwrap())
        });
    }

    fn nb(&self, node: &str) -> &NodeBridge {
        self.nbs.iter().find(|nb| nb.spec.node == node).unwrap()
    }

    fn nb_mut(&mut self, node: &str) -> &mut NodeBridge {
        let nb = self.nbs.iter_mut().find(|nb| nb.spec.node == node).unwrap();
        Arc::make_mut(nb)
    }
}

fn ready_status(observed: Option<i64>) -> NodeBridgeStatus {
    NodeBridgeStatus {
        conditions: vec![Condition {
            type_: "Ready".into(),
            status: "True".into(),
            reason: "Programmed".into(),
            message: String::new(),
            observed_generation: observed,
            last_transition_time: t(1),
        }],
        observed_generation: observed,
        free_addresses: 60,
        ..Default::default()
    }
}

fn blocks_by_node(status: &BridgeNetworkStatus) -> BTreeMap<String, Vec<String>> {
    let mut m: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for b in &status.blocks {
        m.entry(b.node.clone()).or_default().push(b.cidr.clone());
    }
    m
}

fn cond<'a>(s: &'a BridgeNetworkStatus, type_: &str) -> &'a Condition {
    status::condition(&s.conditions, type_).unwrap()
}

fn assert_disjoint(s: &BridgeNetworkStatus) {
    let blocks: Vec<IpNet> = s.blocks.iter().map(|b| b.cidr.parse().unwrap()).collect();
    for (i, a) in blocks.iter().enumerate() {
        for b in &blocks[i + 1..] {
            assert!(!a.contains(b) && !b.contains(a), "{a} and {b} overlap");
        }
    }
}

#[test]
fn every_selected_node_gets_a_node_bridge_with_its_blocks_and_no_peers() {
    let w = World::new(
        vec![net(
            "blue",
            serde_json::json!({"subnet": "172.20.0.0/16"}),
            1,
        )],
        nodes(&["node-b", "node-a"]),
    );
    let p = w.plan("blue");
    let c = p.children.as_ref().unwrap();
    assert_eq!(
        c.members
            .iter()
            .map(|m| m.node.as_str())
            .collect::<Vec<_>>(),
        ["node-a", "node-b"]
    );
    let a = c.spec_for(0);
    assert_eq!(a.network, "blue");
    assert_eq!(a.gateway, "172.20.0.1");
    assert_eq!(a.subnet, "172.20.0.0/16");
    assert_eq!(a.mtu, 1450);
    assert_eq!(a.gateway_mac, bridgenet_crds::names::gateway_mac("blue"));
    assert_eq!(a.blocks, ["172.20.0.0/26"]);
    // The block holds the subnet's network address and the gateway: both reserved.
    assert_eq!(a.exclude_addresses, ["172.20.0.0", "172.20.0.1"]);
    assert!(a.peers.is_empty(), "peers come from the network's status");
    assert!(c.matches(0, &a));
    assert!(!c.matches(1, &a));
    let b = c.spec_for(1);
    assert_ne!(a, b);
    assert_eq!(c.members[0].name, "blue.node-a");
    // Status: blocks recorded, nothing ready yet, no event for a plain acceptance.
    assert_eq!(p.status.blocks.len(), 2);
    assert_eq!(p.status.total_nodes, 2);
    assert_eq!(p.status.ready_summary.as_deref(), Some("0/2"));
    assert_eq!(
        p.status.vni,
        Some(match w.verdict("blue") {
            Verdict::Accepted { vni, .. } => vni,
            Verdict::Rejected { .. } => unreachable!(),
        })
    );
    assert_eq!(cond(&p.status, "Accepted").status, "True");
    assert_eq!(cond(&p.status, "Ready").reason, "NodesNotReady");
    assert_eq!(p.status.free_addresses, Some(65536 - 3));
    assert!(p.events.is_empty());
}

#[test]
fn converges_then_plans_nothing_and_keeps_transition_times() {
    let mut w = World::new(
        vec![net(
            "blue",
            serde_json::json!({"subnet": "172.20.0.0/16"}),
            1,
        )],
        nodes(&["a", "b", "c"]),
    );
    let p = w.plan("blue");
    w.apply("blue", &p);
    let p2 = w.plan("blue");
    assert_eq!(cond(&p2.status, "Ready").status, "True");
    assert_eq!(p2.status.ready_summary.as_deref(), Some("3/3"));
    w.apply("blue", &p2);
    let p3 = w.plan("blue");
    let c = p3.children.as_ref().unwrap();
    assert!((0..3).all(|i| !c.needs_write(i)));
    assert!(c.deletes.is_empty());
    assert_eq!(
        Some(&p3.status),
        w.nets[0].status.as_ref(),
        "steady state writes no status"
    );
    assert_eq!(
        cond(&p3.status, "Accepted").last_transition_time,
        cond(&p.status, "Accepted").last_transition_time
    );
}

#[test]
fn joining_node_gets_a_new_block_and_others_keep_theirs() {
    let mut w = World::new(
        vec![net(
            "blue",
            serde_json::json!({"subnet": "172.20.0.0/16"}),
            1,
        )],
        nodes(&["m", "z"]),
    );
    let p = w.plan("blue");
    w.apply("blue", &p);
    let before = blocks_by_node(&p.status);
    // "a" sorts first but must not take anyone's block.
    w.nodes.push(Arc::new(node("a", "192.168.0.99", &[])));
    let p2 = w.plan("blue");
    let after = blocks_by_node(&p2.status);
    assert_eq!(after["m"], before["m"]);
    assert_eq!(after["z"], before["z"]);
    assert_eq!(after["a"], ["172.20.0.128/26"]);
    assert_disjoint(&p2.status);
    // Existing nodes are not rewritten for it: O(1) writes per node event.
    let c = p2.children.as_ref().unwrap();
    let writes: Vec<&str> = (0..c.members.len())
        .filter(|i| c.needs_write(*i))
        .map(|i| c.members[i].node.as_str())
        .collect();
    assert_eq!(writes, ["a"]);
}

#[test]
fn restart_and_relist_give_the_same_assignment() {
    let mut w = World::new(
        vec![net(
            "blue",
            serde_json::json!({"subnet": "172.20.0.0/24"}),
            1,
        )],
        nodes(&["c", "a", "b"]),
    );
    let p = w.plan("blue");
    w.apply("blue", &p);
    // A fresh operator: same objects, listed in another order.
    w.nodes.reverse();
    w.nbs.reverse();
    let p2 = w.plan("blue");
    assert_eq!(p2.status.blocks, p.status.blocks);
    // Even with the status lost (e.g. restored from a backup without status), the NodeBridge
    // specs give every node its blocks back.
    Arc::make_mut(&mut w.nets[0]).status = None;
    let p3 = w.plan("blue");
    assert_eq!(blocks_by_node(&p3.status), blocks_by_node(&p.status));
}

#[test]
fn leaving_node_loses_its_node_bridge_and_its_block_is_reused_only_when_empty() {
    let mut w = World::new(
        vec![net(
            "blue",
            serde_json::json!({"subnet": "172.20.0.0/24"}),
            1,
        )],
        nodes(&["a", "b"]),
    );
    let p = w.plan("blue");
    w.apply("blue", &p);
    let b_block = blocks_by_node(&p.status)["b"].clone();

    // b leaves while a pod is still attached there: its NodeBridge goes, its block stays.
    w.nb_mut("b").status.as_mut().unwrap().endpoints = vec![Endpoint {
        namespace: "default".into(),
        pod: "web".into(),
        interface: "net1".into(),
        ipv4: Some("172.20.0.70/24".into()),
        ipv6: None,
        mac: "02:00:00:00:00:01".into(),
        aliases: Vec::new(),
        container_id: None,
        since: None,
    }];
    w.nodes.retain(|n| n.metadata.name.as_deref() != Some("b"));
    w.nodes.push(Arc::new(node("c", "192.168.0.50", &[])));
    let p2 = w.plan("blue");
    let c2 = p2.children.as_ref().unwrap();
    assert_eq!(c2.deletes, ["blue.b"]);
    let by = blocks_by_node(&p2.status);
    assert_eq!(by["b"], b_block, "retained while endpoints remain");
    assert_ne!(by["c"], b_block);
    assert_eq!(p2.status.endpoints, 1);
    assert_disjoint(&p2.status);
    // a is not rewritten; b, gone, is no tunnel endpoint any more.
    let ia = c2.members.iter().position(|m| m.node == "a").unwrap();
    assert!(!c2.needs_write(ia));
    assert!(p2.overlay.as_ref().unwrap().iter().all(|t| t.node != "b"));

    // Once b's NodeBridge is gone, its block is free again and goes to the next node.
    w.apply("blue", &p2);
    assert!(w.nbs.iter().all(|nb| nb.spec.node != "b"));
    w.nodes.push(Arc::new(node("d", "192.168.0.51", &[])));
    let p3 = w.plan("blue");
    let by = blocks_by_node(&p3.status);
    assert!(!by.contains_key("b"));
    assert_eq!(by["d"], b_block);
}

#[test]
fn selector_change_moves_the_network() {
    let mut w = World::new(
        vec![net(
            "edge",
            serde_json::json!({"subnet": "172.21.0.0/16", "nodeSelector": {"matchLabels": {"zone": "edge"}}}),
            1,
        )],
        vec![
            Arc::new(node("a", "192.168.0.1", &[("zone", "edge")])),
            Arc::new(node("b", "192.168.0.2", &[("zone", "core")])),
        ],
    );
    let p = w.plan("edge");
    assert_eq!(p.children.as_ref().unwrap().members.len(), 1);
    w.apply("edge", &p);
    // The node's labels change: a leaves, b joins.
    w.nodes = vec![
        Arc::new(node("a", "192.168.0.1", &[("zone", "core")])),
        Arc::new(node("b", "192.168.0.2", &[("zone", "edge")])),
    ];
    let p2 = w.plan("edge");
    let c = p2.children.as_ref().unwrap();
    assert_eq!(
        c.members
            .iter()
            .map(|m| m.node.as_str())
            .collect::<Vec<_>>(),
        ["b"]
    );
    assert_eq!(c.deletes, ["edge.a"]);
    // a had no endpoints: its block is released and b may take it.
    assert_eq!(blocks_by_node(&p2.status)["b"], ["172.21.0.0/26"]);
    // A selector matching nothing.
    Arc::make_mut(&mut w.nets[0]).spec.node_selector =
        Some(serde_json::from_value(serde_json::json!({"matchLabels": {"zone": "mars"}})).unwrap());
    let p3 = w.plan("edge");
    assert_eq!(cond(&p3.status, "Ready").reason, "NoMatchingNodes");
}

#[test]
fn exhausted_range_is_reported_and_never_double_assigned() {
    let mut w = World::new(
        vec![net(
            "tiny",
            serde_json::json!({"subnet": "172.22.0.0/24"}),
            1,
        )],
        nodes(&["a", "b", "c", "d", "e"]),
    );
    let p = w.plan("tiny");
    assert_eq!(p.status.blocks.len(), 4);
    assert_disjoint(&p.status);
    let ready = cond(&p.status, "Ready");
    assert_eq!(ready.reason, "AddressesExhausted");
    assert!(ready.message.contains('e'), "{}", ready.message);
    // e still gets a NodeBridge (the overlay spans it) but without blocks.
    let c = p.children.as_ref().unwrap();
    assert!(c.spec_for(4).blocks.is_empty());
    // Announced once, when the condition first says so.
    assert_eq!(p.events.len(), 1);
    assert_eq!(p.events[0].reason, "AddressesExhausted");
    assert!(p.events[0].warning);
    w.apply("tiny", &p);
    let p2 = w.plan("tiny");
    assert!(p2.events.is_empty());
    assert_eq!(p2.status.blocks, p.status.blocks);
}

/// Network `blue` (172.20.0.0/24, /26 blocks) planned and applied on nodes `a` and `b`.
fn blue_planned_on_a_and_b() -> World {
    let mut w = World::new(
        vec![net(
            "blue",
            serde_json::json!({"subnet": "172.20.0.0/24"}),
            1,
        )],
        nodes(&["a", "b"]),
    );
    let p = w.plan("blue");
    w.apply("blue", &p);
    w
}

/// What `node`'s agent reports as its address counts in its NodeBridge status.
fn report_counts(w: &mut World, node: &str, allocated: i64, free: i64) {
    let st = w.nb_mut(node).status.as_mut().unwrap();
    st.allocated_addresses = allocated;
    st.free_addresses = free;
}

#[test]
fn nearly_full_node_gets_one_more_block_once() {
    let mut w = blue_planned_on_a_and_b();
    // a reports 4 free addresses for its current spec (generation 1 observed): 58 of the 62
    // assignable addresses of 172.20.0.0/26 (all but the network address and the gateway).
    report_counts(&mut w, "a", 58, 4);
    let p2 = w.plan("blue");
    let by = blocks_by_node(&p2.status);
    assert_eq!(by["a"], ["172.20.0.0/26", "172.20.0.128/26"]);
    assert_eq!(by["b"], ["172.20.0.64/26"]);
    // Same report again before the agent saw the new spec: no third block.
    w.apply("blue", &p2);
    {
        let nb = w.nb_mut("a");
        nb.metadata.generation = Some(2);
        nb.status.as_mut().unwrap().free_addresses = 4; // observed_generation still 1
    }
    let p3 = w.plan("blue");
    assert_eq!(blocks_by_node(&p3.status)["a"].len(), 2);
    // A report that is not current counts as not ready either.
    let ia = p3
        .children
        .as_ref()
        .unwrap()
        .members
        .iter()
        .position(|m| m.node == "a")
        .unwrap();
    assert!(!observed::node_bridge_ready(
        p3.children.as_ref().unwrap().members[ia]
            .existing
            .as_ref()
            .unwrap()
    ));
}

#[test]
fn counts_that_do_not_describe_the_current_blocks_never_grow_a_node() {
    let mut w = blue_planned_on_a_and_b();
    // The data plane reported Ready for the current generation, but the endpoint writer has
    // not filled the counts in yet: 0 allocated, 0 free must not read as "full".
    report_counts(&mut w, "a", 0, 0);
    for _ in 0..3 {
        let p = w.plan("blue");
        assert_eq!(blocks_by_node(&p.status)["a"], ["172.20.0.0/26"]);
        w.apply("blue", &p);
    }
    // Counts for a smaller block set than the spec holds (a report from before a growth).
    report_counts(&mut w, "a", 30, 2);
    assert_eq!(blocks_by_node(&w.plan("blue").status)["a"].len(), 1);
}

#[test]
fn overlapping_networks_older_wins_and_loser_gets_nothing() {
    let w = World::new(
        vec![
            net(
                "young",
                serde_json::json!({"subnet": "172.20.128.0/17"}),
                20,
            ),
            net("old", serde_json::json!({"subnet": "172.20.0.0/16"}), 10),
        ],
        nodes(&["a"]),
    );
    assert!(matches!(w.verdict("old"), Verdict::Accepted { .. }));
    let p = w.plan("young");
    assert!(p.children.is_none());
    let (reason, message) = p.rejection.clone().unwrap();
    assert_eq!(reason, RejectReason::SubnetOverlap);
    assert!(message.contains("old"), "{message}");
    let accepted = cond(&p.status, "Accepted");
    assert_eq!(
        (accepted.status.as_str(), accepted.reason.as_str()),
        ("False", "SubnetOverlap")
    );
    assert_eq!(cond(&p.status, "Ready").reason, "NotAccepted");
    assert_eq!(p.events.len(), 1);
    assert!(p.events[0].warning);

    // Same creation time: the name decides, the same way for every caller.
    let w2 = World::new(
        vec![
            net("b", serde_json::json!({"subnet": "172.20.0.0/16"}), 10),
            net("a", serde_json::json!({"subnet": "172.20.0.0/16"}), 10),
        ],
        nodes(&["a"]),
    );
    assert!(matches!(w2.verdict("a"), Verdict::Accepted { .. }));
    assert!(matches!(
        w2.verdict("b"),
        Verdict::Rejected {
            reason: RejectReason::SubnetOverlap,
            ..
        }
    ));
}

#[test]
fn rejected_networks_do_not_block_others() {
    // "mid" overlaps "old" and is refused; "new" overlaps only "mid", so it is accepted.
    let w = World::new(
        vec![
            net("old", serde_json::json!({"subnet": "172.20.0.0/24"}), 1),
            net("mid", serde_json::json!({"subnet": "172.20.0.0/23"}), 2),
            net("new", serde_json::json!({"subnet": "172.20.1.0/24"}), 3),
        ],
        vec![],
    );
    assert!(matches!(w.verdict("mid"), Verdict::Rejected { .. }));
    assert!(matches!(w.verdict("new"), Verdict::Accepted { .. }));
}

#[test]
fn cluster_cidrs_duplicate_bridge_and_invalid_spec_are_refused() {
    let mut w = World::new(
        vec![
            net("pods", serde_json::json!({"subnet": "10.244.8.0/24"}), 1),
            net(
                "br1",
                serde_json::json!({"subnet": "172.30.0.0/24", "bridge": "br-x"}),
                2,
            ),
            net(
                "br2",
                serde_json::json!({"subnet": "172.31.0.0/24", "bridge": "br-x"}),
                3,
            ),
            net(
                "bad",
                serde_json::json!({"subnet": "172.29.0.0/24", "gateway": "10.0.0.1"}),
                4,
            ),
            net(
                "badsel",
                serde_json::json!({"subnet": "172.28.0.0/24",
                "nodeSelector": {"matchExpressions": [{"key": "k", "operator": "Bogus"}]}}),
                5,
            ),
        ],
        vec![],
    );
    w.settings.cluster_cidrs = vec!["10.244.0.0/16".parse().unwrap()];
    let reason = |n: &str| match w.verdict(n) {
        Verdict::Rejected { reason, message } => (reason, message),
        Verdict::Accepted { .. } => panic!("{n} accepted"),
    };
    let (r, m) = reason("pods");
    assert_eq!(r, RejectReason::SubnetOverlap);
    assert!(
        m.contains("10.244.0.0/16") && m.contains("cluster-cidrs"),
        "{m}"
    );
    assert!(matches!(w.verdict("br1"), Verdict::Accepted { .. }));
    let (r, m) = reason("br2");
    assert_eq!(r, RejectReason::DuplicateBridge);
    assert!(m.contains("br1"), "{m}");
    let (r, m) = reason("bad");
    assert_eq!(r, RejectReason::InvalidSpec);
    assert!(m.contains("gateway"), "{m}");
    assert_eq!(reason("badsel").0, RejectReason::InvalidSpec);
}

#[test]
fn vnis_are_unique_persisted_and_collisions_go_to_the_younger() {
    let mut nets: Vec<BridgeNetwork> = (0..50)
        .map(|i| {
            net(
                &format!("n{i}"),
                serde_json::json!({"subnet": format!("172.16.{i}.0/24")}),
                i,
            )
        })
        .collect();
    let w = World::new(nets.clone(), vec![]);
    let verdicts = admit_all(&w.nets, &w.settings);
    let vnis: BTreeSet<u32> = verdicts
        .values()
        .map(|v| match v {
            Verdict::Accepted { vni, .. } => *vni,
            Verdict::Rejected { .. } => panic!("rejected"),
        })
        .collect();
    assert_eq!(vnis.len(), 50);
    assert!(
        vnis.iter()
            .all(|v| (plan::VNI_MIN..=plan::VNI_MAX).contains(v))
    );
    // Persisted VNIs are kept; a clash (two networks claiming 5000) goes to the older.
    nets[3].status = Some(BridgeNetworkStatus {
        vni: Some(5000),
        ..Default::default()
    });
    nets[7].status = Some(BridgeNetworkStatus {
        vni: Some(5000),
        ..Default::default()
    });
    let w = World::new(nets, vec![]);
    let v = admit_all(&w.nets, &w.settings);
    let vni = |n: &str| match &v[n] {
        Verdict::Accepted { vni, .. } => *vni,
        Verdict::Rejected { .. } => panic!(),
    };
    assert_eq!(vni("n3"), 5000);
    assert_ne!(vni("n7"), 5000);
}

#[test]
fn dual_stack_nodes_get_ipv6_blocks_too() {
    let w = World::new(
        vec![net(
            "ds",
            serde_json::json!({"subnet": "172.20.0.0/16", "ipv6": {"subnet": "fd00:20::/64"}}),
            1,
        )],
        nodes(&["a", "b"]),
    );
    let p = w.plan("ds");
    let c = p.children.as_ref().unwrap();
    let a = c.spec_for(0);
    assert_eq!(a.blocks, ["172.20.0.0/26", "fd00:20::/122"]);
    assert_eq!(a.ipv6.as_ref().unwrap().gateway, "fd00:20::1");
    assert!(a.exclude_addresses.contains(&"fd00:20::1".to_owned()));
    assert_eq!(p.status.gateway_v6.as_deref(), Some("fd00:20::1"));
    assert_eq!(p.status.blocks.len(), 4);
}

#[test]
fn refused_network_keeps_its_recorded_blocks_and_children() {
    let mut w = World::new(
        vec![net(
            "blue",
            serde_json::json!({"subnet": "172.20.0.0/16"}),
            5,
        )],
        nodes(&["a"]),
    );
    let p = w.plan("blue");
    w.apply("blue", &p);
    // The operator is restarted with --cluster-cidrs covering the network.
    w.settings.cluster_cidrs = vec!["172.20.0.0/15".parse().unwrap()];
    let p2 = w.plan("blue");
    assert!(p2.children.is_none(), "existing NodeBridges are left alone");
    assert_eq!(p2.status.blocks, p.status.blocks);
    assert_eq!(p2.status.vni, p.status.vni);
}

#[test]
fn deletion_is_held_by_attached_pods_unless_forced() {
    let mut w = World::new(
        vec![net(
            "blue",
            serde_json::json!({"subnet": "172.20.0.0/16"}),
            1,
        )],
        nodes(&["a", "b"]),
    );
    let p = w.plan("blue");
    w.apply("blue", &p);
    w.nb_mut("a").status.as_mut().unwrap().endpoints = vec![Endpoint {
        namespace: "shop".into(),
        pod: "cart".into(),
        interface: "net1".into(),
        ipv4: None,
        ipv6: None,
        mac: "02:00:00:00:00:02".into(),
        aliases: Vec::new(),
        container_id: None,
        since: None,
    }];
    let mut netobj = (*w.nets[0]).clone();
    netobj.metadata.deletion_timestamp = Some(t(50));
    let c = plan_cleanup(&netobj, &w.nodes, &w.nbs, &t(60));
    assert_eq!(c.blocked_by, ["shop/cart on a"]);
    assert!(c.deletes.is_empty());
    let s = c.status.unwrap();
    let ready = cond(&s, "Ready");
    assert_eq!(ready.reason, "DeletionBlocked");
    assert!(ready.message.contains("shop/cart") && ready.message.contains(ANNOTATION_FORCE_DELETE));
    assert_eq!(c.events.len(), 1);
    assert_eq!(c.events[0].reason, "DeletionBlocked");

    netobj
        .metadata
        .annotations
        .get_or_insert_default()
        .insert(ANNOTATION_FORCE_DELETE.into(), "true".into());
    let c = plan_cleanup(&netobj, &w.nodes, &w.nbs, &t(60));
    assert!(c.blocked_by.is_empty());
    assert_eq!(c.deletes, ["blue.a", "blue.b"]);
    assert_eq!(c.remaining, 2);
}

#[test]
fn agent_finalizer_is_released_only_for_nodes_that_no_longer_exist() {
    let mut w = World::new(
        vec![net(
            "blue",
            serde_json::json!({"subnet": "172.20.0.0/16"}),
            1,
        )],
        nodes(&["a", "b"]),
    );
    let p = w.plan("blue");
    w.apply("blue", &p);
    for n in ["a", "b"] {
        let nb = w.nb_mut(n);
        nb.metadata.deletion_timestamp = Some(t(70));
        nb.metadata.finalizers = Some(vec![FINALIZER_AGENT.into()]);
    }
    w.nodes.retain(|n| n.metadata.name.as_deref() == Some("a"));
    let mut netobj = (*w.nets[0]).clone();
    netobj.metadata.deletion_timestamp = Some(t(65));
    let c = plan_cleanup(&netobj, &w.nodes, &w.nbs, &t(80));
    let released: Vec<_> = c
        .release_agent_finalizer
        .iter()
        .map(|nb| nb.spec.node.clone())
        .collect();
    assert_eq!(released, ["b"]);
    assert!(c.deletes.is_empty(), "both are already terminating");
    assert_eq!(c.remaining, 2);
    assert_eq!(w.nb("a").spec.node, "a");
}

#[test]
fn node_bridge_names_are_readable_and_collision_free() {
    assert_eq!(
        node_bridge_name("blue", "ip-10-0-0-1.ec2.internal"),
        "blue.ip-10-0-0-1.ec2.internal"
    );
    // "a.b" + "c" and "a" + "b.c" would both read "a.b.c": dotted network names are hashed.
    let x = node_bridge_name("a.b", "c");
    let y = node_bridge_name("a", "b.c");
    assert_ne!(x, y);
    assert!(x.starts_with("bnh-") && !x.contains('.'));
    let long = "n".repeat(200);
    let z = node_bridge_name(&long, &long);
    assert!(z.len() <= 253 && z.starts_with("bnh-"));
}

#[test]
fn cached_node_bridges_without_peers_compare_by_digest() {
    let mut w = World::new(
        vec![net(
            "blue",
            serde_json::json!({"subnet": "172.20.0.0/16"}),
            1,
        )],
        nodes(&["a", "b", "c"]),
    );
    let p = w.plan("blue");
    w.apply("blue", &p);
    // NodeBridges as an operator from before wrote them, read by agents from before (no
    // `networkPeers`): each lists the others.
    let everyone: Vec<Peer> = w
        .nbs
        .iter()
        .map(|nb| Peer {
            node: nb.spec.node.clone(),
            address: w
                .nodes
                .iter()
                .find(|n| n.metadata.name.as_deref() == Some(nb.spec.node.as_str()))
                .and_then(|n| plan::node_address(n))
                .unwrap(),
            blocks: nb.spec.blocks.clone(),
        })
        .collect();
    for nb in &mut w.nbs {
        let me = nb.spec.node.clone();
        Arc::make_mut(nb).spec.peers = everyone.iter().filter(|p| p.node != me).cloned().collect();
    }
    let p = w.plan("blue");
    let c = p.children.as_ref().unwrap();
    assert!(
        (0..3).all(|i| !c.needs_write(i)),
        "legacy lists kept as they are"
    );
    let mut spec = c.spec_for(0);
    spec.peers.reverse();
    assert!(c.matches(0, &spec), "peer order is not content");
    spec.peers[0].address = "192.168.9.9".into();
    assert!(!c.matches(0, &spec));
    for i in 0..3 {
        assert_eq!(
            c.planned_peers_digest(i),
            plan::peers_digest(&c.spec_for(i).peers)
        );
        let mut reversed = c.spec_for(i).peers;
        reversed.reverse();
        assert_eq!(c.planned_peers_digest(i), plan::peers_digest(&reversed));
    }
    w.apply("blue", &p);
    // What the operator's cache holds: the same objects with peers replaced by their digest.
    let full = w.nbs.clone();
    for nb in &mut w.nbs {
        plan::strip_peers(Arc::make_mut(nb));
        assert!(nb.spec.peers.is_empty());
    }
    let p2 = w.plan("blue");
    let c2 = p2.children.as_ref().unwrap();
    assert!((0..3).all(|i| !c2.needs_write(i)), "stripped cache matches");
    // A node's address changes: every other node's peers differ, the digest says so.
    w.nodes[2] = Arc::new(node("c", "192.168.7.7", &[("role", "worker")]));
    let p3 = w.plan("blue");
    let c3 = p3.children.as_ref().unwrap();
    let writes: Vec<bool> = (0..3).map(|i| c3.needs_write(i)).collect();
    assert_eq!(writes, [true, true, false]);
    drop(full);
}

#[test]
fn resolver_condition_follows_the_agents_reports_and_dns_off() {
    let mut w = World::new(
        vec![net(
            "blue",
            serde_json::json!({"subnet": "172.20.0.0/16"}),
            1,
        )],
        nodes(&["a", "b"]),
    );
    let p = w.plan("blue");
    w.apply("blue", &p);
    let p = w.plan("blue");
    let c = cond(&p.status, "ResolverReady");
    assert_eq!(
        (c.status.as_str(), c.reason.as_str()),
        ("False", "NodesNotReady")
    );
    assert!(
        c.message.contains("0/2") && c.message.contains("a, b"),
        "{}",
        c.message
    );
    for node in ["a", "b"] {
        let serving = Condition {
            type_: "ResolverReady".into(),
            status: "True".into(),
            reason: "Serving".into(),
            message: String::new(),
            observed_generation: None,
            last_transition_time: t(1),
        };
        w.nb_mut(node)
            .status
            .get_or_insert_with(Default::default)
            .conditions
            .push(serving);
    }
    let p = w.plan("blue");
    let c = cond(&p.status, "ResolverReady");
    assert_eq!((c.status.as_str(), c.reason.as_str()), ("True", "Serving"));
    assert_eq!(c.message, "answering DNS at 172.20.0.1 on 2/2 nodes");

    let mut off = (*w.nets[0]).clone();
    off.spec.dns = false;
    w.nets[0] = Arc::new(off);
    let p = w.plan("blue");
    let c = cond(&p.status, "ResolverReady");
    assert_eq!(
        (c.status.as_str(), c.reason.as_str()),
        ("False", "DnsDisabled")
    );
}
