//! Repair restores the whole attachment: a node namespace whose network the real data plane
//! realizes (bridge, gateway, VXLAN port), two pods attached by the real plugin and agent
//! engine, and then links deleted by hand — the bridge, the VXLAN port, one pod's host veth,
//! everything at once as a host network restart would. After one pass (the data plane's apply,
//! then [`Engine::repair`]) each pod is back on the bridge with the same interface name,
//! address, MAC and default route, and pings its neighbour and the gateway, without being
//! restarted; one more pass writes nothing. Needs root; namespaces are `bnt-cni-repair-*`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod cni_support;
mod root_support;

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::path::PathBuf;

use bridgenet_agent::cni::engine::{Repaired, Runtime};
use bridgenet_agent::dataplane::apply::Applier;
use bridgenet_agent::dataplane::netns::run_in;
use bridgenet_agent::dataplane::rtnl::Rtnl;
use bridgenet_agent::dataplane::{Desired, NodeContext};
use bridgenet_agent::metrics;
use bridgenet_crds::resolve_node_bridge;
use cni_support::{
    Call, InProcessAgent, Netns, StaticDirectory, TestNetwork, World, chained_config, run_plugin,
};
use root_support::require_root;
use serde_json::Value;

/// The runtime's answer: which sandboxes run, in which namespace.
struct Running(BTreeMap<String, PathBuf>);

impl Runtime for Running {
    type Error = Infallible;

    async fn running_netns(&self, container_id: &str) -> Result<Option<PathBuf>, Infallible> {
        Ok(self.0.get(container_id).cloned())
    }
}

/// One pass of the data plane for `desired` in `node`: the number of link operations.
fn program(node: &Netns, desired: &Desired) -> usize {
    let desired = desired.clone();
    run_in(&node.path(), move || async move {
        let mut applier = Applier::new(Rtnl::connect().unwrap());
        applier.apply(&desired).await.unwrap().len()
    })
    .unwrap()
}

/// What a pod's `net1` is, as the kernels have it: MAC, IPv4 with prefix, whether a default
/// route goes through it, and the bridge its host end is on.
#[derive(Clone, Debug, PartialEq)]
struct Attachment {
    mac: String,
    address: String,
    default_route: bool,
    master: Option<String>,
}

fn attachment(node: &Netns, pod: &Netns) -> Option<Attachment> {
    let link = pod.link_json("net1")?;
    let address = link["addr_info"]
        .as_array()?
        .iter()
        .find(|a| a["family"] == "inet")
        .map(|a| format!("{}/{}", a["local"].as_str().unwrap_or(""), a["prefixlen"]))?;
    let peer = link["link_index"].as_u64()?;
    let links: Value = serde_json::from_str(&node.ip(&["-j", "link", "show"])).ok()?;
    let master = links
        .as_array()?
        .iter()
        .find(|l| l["ifindex"].as_u64() == Some(peer))
        .and_then(|l| l["master"].as_str().map(str::to_owned));
    Some(Attachment {
        mac: link["address"].as_str()?.to_owned(),
        address,
        default_route: pod.ip(&["route", "show", "default"]).contains("dev net1"),
        master,
    })
}

fn pings(from: &Netns, to: &str) -> bool {
    // Three tries: the first may wait for ARP on a freshly re-created bridge or interface.
    (0..3).any(|_| from.exec(&["busybox", "ping", "-c", "1", "-W", "1", to]))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root"]
async fn repair_puts_running_pods_back_after_links_are_deleted_by_hand() {
    require_root();
    let red = TestNetwork::new("red", 21);
    let node = Netns::new("repair-n");
    // The underlay address the VXLAN port binds to.
    node.ip(&[
        "link", "add", "eth0", "type", "veth", "peer", "name", "eth0p",
    ]);
    node.ip(&["addr", "add", "192.0.2.1/24", "dev", "eth0"]);
    node.ip(&["link", "set", "eth0", "up"]);
    let ctx = NodeContext {
        node_name: "test-node".into(),
        underlay: "192.0.2.1".parse().unwrap(),
        vxlan_port: 4789,
    };
    let desired = Desired::from_resolved(&resolve_node_bridge(&red.spec()).unwrap(), &ctx);
    assert!(program(&node, &desired) > 0);
    assert_eq!(program(&node, &desired), 0, "the data plane is settled");

    let dir = StaticDirectory::new(World {
        networks: vec![red.spec()],
        ..World::default()
    });
    dir.set_pod("default/a", r#"[{"name": "red", "defaultRoute": true}]"#);
    dir.set_pod("default/b", "red");
    let state = tempfile::tempdir().unwrap();
    let agent = InProcessAgent::start(dir, state.path(), &node);
    let conf = chained_config(&agent.socket, "1.1.0", None);
    let a = Netns::new("repair-a");
    let b = Netns::new("repair-b");
    let mut running = BTreeMap::new();
    for (pod, ns) in [("a", &a), ("b", &b)] {
        let id = format!("sb-{pod}");
        let add = Call::new(
            "ADD",
            &id,
            ns.path().to_str().unwrap(),
            &format!("default/{pod}"),
            conf.clone(),
        );
        let answer = run_plugin(&add).await;
        assert!(answer.ok, "{}", answer.raw);
        running.insert(id, ns.path());
    }
    let runtime = Running(running);
    let before = [
        attachment(&node, &a).unwrap(),
        attachment(&node, &b).unwrap(),
    ];
    assert_eq!(before[0].master.as_deref(), Some(red.bridge.as_str()));
    assert!(before[0].default_route && !before[1].default_route);
    let ip_b = before[1].address.split('/').next().unwrap().to_owned();
    assert!(pings(&a, &ip_b) && pings(&a, &red.gateway));
    assert_eq!(
        agent.engine.repair(&runtime).await.unwrap(),
        Repaired::default(),
        "nothing to repair on an intact node"
    );

    // One resync: the data plane's pass, then the repair it triggers.
    let resync = || async {
        program(&node, &desired);
        agent.engine.repair(&runtime).await.unwrap()
    };
    let check = |what: &str| {
        let now = [attachment(&node, &a), attachment(&node, &b)];
        assert_eq!(now, before.clone().map(Some), "{what}: same interfaces");
        assert!(pings(&a, &ip_b), "{what}: a reaches b");
        assert!(pings(&b, &red.gateway), "{what}: b reaches the gateway");
    };
    let host_veth = |pod: &Netns| {
        let peer = pod.link_json("net1").unwrap()["link_index"]
            .as_u64()
            .unwrap();
        let links: Value = serde_json::from_str(&node.ip(&["-j", "link", "show"])).unwrap();
        links
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["ifindex"].as_u64() == Some(peer))
            .and_then(|l| l["ifname"].as_str().map(str::to_owned))
            .unwrap()
    };

    // The bridge: the kernel releases its ports; both veths hang loose.
    node.ip(&["link", "del", &red.bridge]);
    let done = resync().await;
    assert_eq!((done.reattached, done.recreated, done.failed), (2, 0, 0));
    check("bridge deleted");

    // The VXLAN port: only the overlay; the pods stay where they are.
    node.ip(&["link", "del", "bnvx-100"]);
    assert_eq!(resync().await, Repaired::default());
    check("VXLAN port deleted");

    // One pod's host veth: the kernel deletes the pair, the pod loses net1.
    node.ip(&["link", "del", &host_veth(&a)]);
    assert!(a.link_json("net1").is_none());
    let done = resync().await;
    assert_eq!((done.reattached, done.recreated, done.failed), (0, 1, 0));
    check("pod veth deleted");

    // A host network restart: every bridgenet link of the node at once.
    for link in [
        red.bridge.clone(),
        "bnvx-100".into(),
        host_veth(&a),
        host_veth(&b),
    ] {
        node.ip(&["link", "del", &link]);
    }
    let done = resync().await;
    assert_eq!((done.reattached, done.recreated, done.failed), (0, 2, 0));
    check("every link deleted");

    // Settled: another pass reads and writes nothing.
    let writes = metrics::global().netlink_writes_total();
    assert_eq!(program(&node, &desired), 0);
    assert_eq!(
        agent.engine.repair(&runtime).await.unwrap(),
        Repaired::default()
    );
    assert_eq!(
        metrics::global().netlink_writes_total(),
        writes,
        "a settled node is written to"
    );

    // A sandbox the runtime no longer runs is not brought back (DEL or the reconcile frees it).
    node.ip(&["link", "del", &host_veth(&b)]);
    let gone = Running(
        runtime
            .0
            .into_iter()
            .filter(|(id, _)| id != "sb-b")
            .collect(),
    );
    program(&node, &desired);
    assert_eq!(
        agent.engine.repair(&gone).await.unwrap(),
        Repaired::default()
    );
    assert!(b.link_json("net1").is_none());

    for (pod, ns) in [("a", &a), ("b", &b)] {
        let del = Call::new(
            "DEL",
            &format!("sb-{pod}"),
            ns.path().to_str().unwrap(),
            &format!("default/{pod}"),
            conf.clone(),
        );
        assert!(run_plugin(&del).await.ok);
    }
    agent.settled().await;
    assert!(agent.engine.allocations().await.is_empty());
}
