//! Root tests of the data plane on a real kernel: network namespaces are nodes (joined by an
//! underlay bridge in a helper namespace), further namespaces are pods (veth into the node's
//! bridge, made here with `ip`, standing in for the CNI plugin), one more is "the internet".
//! The data plane library runs inside each node's namespace. Needs root: ignored by a plain
//! `cargo test`, run by `make root-test`, and failing, saying why, when run without root.
//! Namespaces are named `bnt-dp-<pid>-...` and removed by a drop guard even on failure.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod dataplane_support;
mod root_support;

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use bridgenet_agent::dataplane::apply::Applier;
use bridgenet_agent::dataplane::firewall::{Firewall, FirewallOutcome};
use bridgenet_agent::dataplane::netlink::{Link, LinkChange, Netlink, NetlinkError, NewLink};
use bridgenet_agent::dataplane::netns::run_in;
use bridgenet_agent::dataplane::rtnl::Rtnl;
use bridgenet_agent::dataplane::{Desired, NodeContext, Teardown};
use bridgenet_crds::{NodeBridgeSpec, resolve_node_bridge};
use dataplane_support::{run, spec};
use ipnet::IpNet;
use root_support::require_root;

fn try_run(args: &[&str]) -> bool {
    Command::new(args[0])
        .args(&args[1..])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// Network namespaces of one test, deleted on drop (also when the test panics).
struct Topology {
    prefix: String,
    namespaces: Vec<String>,
}

impl Topology {
    fn new(tag: &str) -> Self {
        Topology {
            prefix: format!("bnt-dp-{}-{tag}", std::process::id()),
            namespaces: Vec::new(),
        }
    }

    fn ns(&mut self, name: &str) -> String {
        let full = format!("{}-{name}", self.prefix);
        run(&["ip", "netns", "add", &full]);
        self.namespaces.push(full.clone());
        run(&["ip", "-n", &full, "link", "set", "lo", "up"]);
        full
    }

    fn path(ns: &str) -> PathBuf {
        PathBuf::from(format!("/run/netns/{ns}"))
    }

    /// An underlay namespace with a bridge `ul`.
    fn underlay(&mut self) -> String {
        let u = self.ns("ul");
        run(&["ip", "-n", &u, "link", "add", "ul", "type", "bridge"]);
        run(&["ip", "-n", &u, "link", "set", "ul", "up"]);
        u
    }

    /// A host on the underlay with address `addr` (CIDR) on its `eth0`.
    fn host(&mut self, underlay: &str, name: &str, addr: &str) -> String {
        let h = self.ns(name);
        let port = format!("u-{name}");
        run(&[
            "ip", "-n", underlay, "link", "add", &port, "type", "veth", "peer", "name", "eth0",
            "netns", &h,
        ]);
        run(&[
            "ip", "-n", underlay, "link", "set", &port, "master", "ul", "up",
        ]);
        run(&["ip", "-n", &h, "addr", "add", addr, "dev", "eth0"]);
        run(&["ip", "-n", &h, "link", "set", "eth0", "up"]);
        h
    }

    /// A pod attached to `bridge` on `node`, with `addr` (CIDR) and a default route via `gw`.
    fn pod(&mut self, node: &str, bridge: &str, name: &str, addr: &str, gw: &str) -> String {
        let p = self.ns(name);
        let port = format!("v-{name}");
        run(&[
            "ip", "-n", node, "link", "add", &port, "mtu", "1450", "type", "veth", "peer", "name",
            "eth0", "netns", &p,
        ]);
        run(&[
            "ip", "-n", node, "link", "set", &port, "master", bridge, "up",
        ]);
        run(&["ip", "-n", &p, "link", "set", "eth0", "mtu", "1450", "up"]);
        run(&["ip", "-n", &p, "addr", "add", addr, "dev", "eth0"]);
        run(&["ip", "-n", &p, "route", "add", "default", "via", gw]);
        p
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        for ns in self.namespaces.iter().rev() {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
    }
}

/// Whether one bounded ping gets through; for the negative checks, made after the positive
/// ones have warmed ARP and FDB.
fn ping_once(from: &str, to: &str) -> bool {
    try_run(&[
        "ip", "netns", "exec", from, "busybox", "ping", "-c", "1", "-W", "1", to,
    ])
}

/// One bounded ping from a namespace (busybox: iputils is not installed).
fn ping(from: &str, to: &str) -> bool {
    // Three tries absorb the first packets lost to ARP/FDB warm-up on a fresh overlay.
    (0..3).any(|_| {
        try_run(&[
            "ip", "netns", "exec", from, "busybox", "ping", "-c", "1", "-W", "1", to,
        ])
    })
}

fn ctx(node: &str, underlay: &str) -> NodeContext {
    NodeContext {
        node_name: node.into(),
        underlay: underlay.parse().unwrap(),
        vxlan_port: 4789,
    }
}

/// Applies `specs` (links) and the firewall for all of them inside `ns`; returns the number
/// of link operations and whether the firewall was rewritten.
fn realize(ns: &str, node: NodeContext, specs: Vec<NodeBridgeSpec>) -> (usize, FirewallOutcome) {
    run_in(&Topology::path(ns), move || async move {
        let mut applier = Applier::new(Rtnl::connect().unwrap());
        let mut desired = Vec::new();
        let mut ops = 0;
        for s in &specs {
            let d = Desired::from_resolved(&resolve_node_bridge(s).unwrap(), &node);
            ops += applier.apply(&d).await.unwrap().len();
            desired.push(d);
        }
        let fw = Firewall::default().reconcile(&desired).unwrap();
        (ops, fw)
    })
    .unwrap()
}

/// Receives one UDP datagram on `bind` inside `ns`, sent from `from_ns`; returns the source
/// address the receiver saw, or `None` when nothing arrived within a second.
fn udp_source_seen(ns: &str, bind: &str, from_ns: &str) -> Option<IpAddr> {
    let bind: SocketAddr = bind.parse().unwrap();
    let receiver = {
        let path = Topology::path(ns);
        std::thread::spawn(move || {
            run_in(&path, move || async move {
                let sock = UdpSocket::bind(bind).unwrap();
                sock.set_read_timeout(Some(Duration::from_millis(1500)))
                    .unwrap();
                let mut buf = [0u8; 64];
                sock.recv_from(&mut buf).ok().map(|(_, src)| src.ip())
            })
            .unwrap()
        })
    };
    std::thread::sleep(Duration::from_millis(200));
    let path = Topology::path(from_ns);
    run_in(&path, move || async move {
        let sock = UdpSocket::bind("0.0.0.0:0").unwrap();
        for _ in 0..3 {
            let _ = sock.send_to(b"bridgenet-probe", bind);
            std::thread::sleep(Duration::from_millis(100));
        }
    })
    .unwrap();
    receiver.join().unwrap()
}

fn links_in(ns: &str) -> String {
    run(&["ip", "-n", ns, "-o", "link", "show"])
}

fn nft_tables(ns: &str) -> String {
    run(&["ip", "netns", "exec", ns, "nft", "list", "tables"])
}

#[test]
#[ignore = "needs root"]
fn pods_reach_their_network_on_every_node_and_nothing_else() {
    require_root();
    let mut t = Topology::new("conn");
    let ul = t.underlay();
    let n1 = t.host(&ul, "n1", "192.0.2.1/24");
    let n2 = t.host(&ul, "n2", "192.0.2.2/24");
    let internet = t.host(&ul, "inet", "192.0.2.100/24");
    let peers = [("n1", "192.0.2.1"), ("n2", "192.0.2.2")];

    let specs = |node: &str| {
        let mut a = spec(
            "net-a",
            "bnt-a",
            "172.20.0.0/24",
            "172.20.0.1",
            100,
            node,
            &peers,
        );
        a.ipv6 = Some(bridgenet_crds::v1alpha1::NodeBridgeIpv6 {
            subnet: "fd00:20::/64".into(),
            gateway: "fd00:20::1".into(),
        });
        let b = spec(
            "net-b",
            "bnt-b",
            "172.21.0.0/24",
            "172.21.0.1",
            101,
            node,
            &peers,
        );
        let mut c = spec(
            "net-c",
            "bnt-c",
            "172.22.0.0/24",
            "172.22.0.1",
            102,
            node,
            &peers,
        );
        c.internal = true;
        let mut d = spec(
            "net-d",
            "bnt-d",
            "172.23.0.0/24",
            "172.23.0.1",
            103,
            node,
            &peers,
        );
        d.inter_pod_traffic = false;
        vec![a, b, c, d]
    };
    let (ops1, fw1) = realize(&n1, ctx("n1", "192.0.2.1"), specs("n1"));
    let (ops2, _) = realize(&n2, ctx("n2", "192.0.2.2"), specs("n2"));
    assert!(ops1 > 0 && ops2 > 0);
    assert_eq!(fw1, FirewallOutcome::Replaced);

    let a1 = t.pod(&n1, "bnt-a", "a1", "172.20.0.11/24", "172.20.0.1");
    let a1b = t.pod(&n1, "bnt-a", "a1b", "172.20.0.13/24", "172.20.0.1");
    let a2 = t.pod(&n2, "bnt-a", "a2", "172.20.0.12/24", "172.20.0.1");
    let b1 = t.pod(&n1, "bnt-b", "b1", "172.21.0.11/24", "172.21.0.1");
    let b2 = t.pod(&n2, "bnt-b", "b2", "172.21.0.12/24", "172.21.0.1");
    let c1 = t.pod(&n1, "bnt-c", "c1", "172.22.0.11/24", "172.22.0.1");
    let _c2 = t.pod(&n2, "bnt-c", "c2", "172.22.0.12/24", "172.22.0.1");
    let d1 = t.pod(&n1, "bnt-d", "d1", "172.23.0.11/24", "172.23.0.1");
    let d1b = t.pod(&n1, "bnt-d", "d1b", "172.23.0.13/24", "172.23.0.1");
    let d2 = t.pod(&n2, "bnt-d", "d2", "172.23.0.12/24", "172.23.0.1");

    // Inside a network: gateway, same node, across nodes.
    assert!(ping(&a1, "172.20.0.1"), "pod → its gateway");
    assert!(ping(&a1, "172.20.0.13"), "same node, same network");
    assert!(ping(&a1, "172.20.0.12"), "across nodes, same network");
    assert!(ping(&a2, "172.20.0.11"), "across nodes, reverse");
    // Unicast to a2 now goes to n2 alone: n1's VXLAN port learned a2's MAC behind n2.
    let a2_mac = run(&["ip", "-n", &a2, "-br", "link", "show", "eth0"])
        .split_whitespace()
        .nth(2)
        .unwrap()
        .to_owned();
    let fdb = run(&["bridge", "-n", &n1, "fdb", "show", "dev", "bnvx-100"]);
    assert!(
        fdb.lines()
            .any(|l| l.starts_with(&a2_mac) && l.contains("dst 192.0.2.2")),
        "{a2_mac} learned behind 192.0.2.2: {fdb}"
    );
    assert!(ping(&b2, "172.21.0.11"), "second network across nodes");
    assert!(ping(&c1, "172.22.0.12"), "internal network across nodes");

    // The anycast gateway: each pod's gateway MAC is the same, learned from its own node.
    let gw_mac = bridgenet_crds::names::gateway_mac("net-a");
    assert!(
        ping(&a2, "172.20.0.1"),
        "pod on the second node → its (anycast) gateway"
    );
    let neigh = run(&["ip", "-n", &a2, "neigh", "show", "172.20.0.1"]);
    assert!(neigh.contains(&gw_mac), "{neigh}");

    // Isolation: no packet between networks, either direction, same node or across nodes.
    assert!(!ping_once(&a1, "172.21.0.11"), "a → b same node");
    assert!(!ping_once(&b1, "172.20.0.11"), "b → a same node");
    assert!(!ping_once(&a1, "172.21.0.12"), "a → b across nodes");
    assert!(!ping_once(&b2, "172.20.0.11"), "b → a across nodes");
    assert!(!ping_once(&a1, "172.22.0.11"), "a → internal c");
    assert!(!ping_once(&c1, "172.20.0.11"), "internal c → a");
    // Control: it is the rules that stop those packets. Without bridgenet's inet table the
    // node routes between the networks; a resync puts the table back and isolation with it.
    run(&[
        "ip",
        "netns",
        "exec",
        &n1,
        "nft",
        "delete",
        "table",
        "inet",
        "bridgenet",
    ]);
    assert!(
        ping(&a1, "172.21.0.11"),
        "routed between networks once the rules are gone"
    );
    let (_, fw) = realize(&n1, ctx("n1", "192.0.2.1"), specs("n1"));
    assert_eq!(
        fw,
        FirewallOutcome::Replaced,
        "deleted table is drift, repaired"
    );
    assert!(!ping_once(&a1, "172.21.0.11"), "isolated again");

    // Egress is masqueraded to the node's underlay address.
    assert_eq!(
        udp_source_seen(&internet, "192.0.2.100:40001", &a1),
        Some("192.0.2.1".parse().unwrap())
    );
    assert_eq!(
        udp_source_seen(&internet, "192.0.2.100:40002", &a2),
        Some("192.0.2.2".parse().unwrap())
    );
    assert!(
        ping(&b1, "192.0.2.100"),
        "egress answers come back through the masquerade"
    );
    // The internal network cannot leave, nor reach the node beyond its gateway.
    assert_eq!(udp_source_seen(&internet, "192.0.2.100:40003", &c1), None);
    assert!(!ping_once(&c1, "192.0.2.100"));
    assert!(
        !ping_once(&c1, "192.0.2.1"),
        "internal pod → node's own underlay address"
    );
    assert!(ping(&c1, "172.22.0.1"), "internal pod → gateway");

    // interPodTraffic: false — gateway yes, other pods no (same node and across nodes).
    assert!(ping(&d1, "172.23.0.1"));
    assert!(!ping_once(&d1, "172.23.0.13"), "icc off, same node");
    assert!(!ping_once(&d2, "172.23.0.11"), "icc off, across nodes");
    let _ = d1b;
    let _ = a1b;

    // Dual stack: the IPv6 anycast gateway answers on both nodes, pods reach each other.
    for (pod, addr) in [(&a1, "fd00:20::11/64"), (&a2, "fd00:20::12/64")] {
        run(&["ip", "-n", pod, "addr", "add", addr, "dev", "eth0", "nodad"]);
        run(&[
            "ip",
            "-n",
            pod,
            "-6",
            "route",
            "add",
            "default",
            "via",
            "fd00:20::1",
        ]);
    }
    assert!(ping(&a1, "fd00:20::1"), "IPv6 gateway, first node");
    assert!(ping(&a2, "fd00:20::1"), "IPv6 gateway, second node");
    assert!(ping(&a1, "fd00:20::12"), "IPv6 across nodes");
    let neigh = run(&["ip", "-n", &a2, "-6", "neigh", "show", "fd00:20::1"]);
    assert!(neigh.contains(&gw_mac), "{neigh}");
    // The fence: a pod's ARP/ND for the gateway never reaches another node's bridge, so the
    // first node's gateway has never heard of the second node's pod (Linux would otherwise
    // create a neighbour entry for the sender of every request for its own address).
    let n1_neigh = run(&["ip", "-n", &n1, "neigh", "show", "dev", "bnt-a"]);
    assert!(
        !n1_neigh.contains("172.20.0.12") && !n1_neigh.contains("fd00:20::12"),
        "{n1_neigh}"
    );
    // Control: without the bridge table the request does cross, and node 1 learns the pod.
    for node in [&n1, &n2] {
        run(&[
            "ip",
            "netns",
            "exec",
            node,
            "nft",
            "delete",
            "table",
            "bridge",
            "bridgenet",
        ]);
    }
    run(&["ip", "-n", &a2, "neigh", "flush", "dev", "eth0"]);
    assert!(ping(&a2, "172.20.0.1"));
    let n1_neigh = run(&["ip", "-n", &n1, "neigh", "show", "dev", "bnt-a"]);
    assert!(n1_neigh.contains("172.20.0.12"), "control: {n1_neigh}");
    realize(&n1, ctx("n1", "192.0.2.1"), specs("n1"));
    realize(&n2, ctx("n2", "192.0.2.2"), specs("n2"));

    // Realizing again changes nothing on either node.
    let (ops, fw) = realize(&n1, ctx("n1", "192.0.2.1"), specs("n1"));
    assert_eq!((ops, fw), (0, FirewallOutcome::Unchanged));
}

/// Counts the writes a [`Netlink`] implementation receives.
struct Counting<N> {
    inner: N,
    writes: BTreeMap<&'static str, usize>,
}

impl<N> Counting<N> {
    fn new(inner: N) -> Self {
        Counting {
            inner,
            writes: BTreeMap::new(),
        }
    }
    fn count(&mut self, what: &'static str) {
        *self.writes.entry(what).or_default() += 1;
    }
}

impl<N: Netlink> Netlink for Counting<N> {
    async fn links(&mut self) -> Result<Vec<Link>, NetlinkError> {
        self.inner.links().await
    }
    async fn link(&mut self, name: &str) -> Result<Option<Link>, NetlinkError> {
        self.inner.link(name).await
    }
    async fn addresses(&mut self, index: u32) -> Result<Vec<IpNet>, NetlinkError> {
        self.inner.addresses(index).await
    }
    async fn flood_entries(&mut self, index: u32) -> Result<Vec<IpAddr>, NetlinkError> {
        self.inner.flood_entries(index).await
    }
    async fn create_link(&mut self, link: &NewLink) -> Result<(), NetlinkError> {
        self.count("create_link");
        self.inner.create_link(link).await
    }
    async fn change_link(&mut self, index: u32, change: &LinkChange) -> Result<(), NetlinkError> {
        self.count("change_link");
        self.inner.change_link(index, change).await
    }
    async fn delete_link(&mut self, index: u32) -> Result<(), NetlinkError> {
        self.count("delete_link");
        self.inner.delete_link(index).await
    }
    async fn add_address(&mut self, index: u32, addr: IpNet) -> Result<(), NetlinkError> {
        self.count("add_address");
        self.inner.add_address(index, addr).await
    }
    async fn delete_address(&mut self, index: u32, addr: IpNet) -> Result<(), NetlinkError> {
        self.count("delete_address");
        self.inner.delete_address(index, addr).await
    }
    async fn append_flood(&mut self, index: u32, dst: IpAddr) -> Result<(), NetlinkError> {
        self.count("append_flood");
        self.inner.append_flood(index, dst).await
    }
    async fn delete_flood(&mut self, index: u32, dst: IpAddr) -> Result<(), NetlinkError> {
        self.count("delete_flood");
        self.inner.delete_flood(index, dst).await
    }
    async fn read_sysctl(&mut self, key: &str) -> Result<String, NetlinkError> {
        self.inner.read_sysctl(key).await
    }
    async fn write_sysctl(&mut self, key: &str, value: &str) -> Result<(), NetlinkError> {
        self.count("write_sysctl");
        self.inner.write_sysctl(key, value).await
    }
}

#[test]
#[ignore = "needs root"]
fn idempotent_repairs_drift_refuses_foreign_and_tears_down_completely() {
    require_root();
    let mut t = Topology::new("life");
    let n1 = t.ns("n1");
    run(&[
        "ip", "-n", &n1, "link", "add", "eth0", "type", "veth", "peer", "name", "eth0p",
    ]);
    run(&[
        "ip",
        "-n",
        &n1,
        "addr",
        "add",
        "192.0.2.1/24",
        "dev",
        "eth0",
    ]);
    run(&["ip", "-n", &n1, "link", "set", "eth0", "up"]);
    // A foreign interface holding the name of a network's bridge.
    run(&[
        "ip",
        "-n",
        &n1,
        "link",
        "add",
        "bnt-taken",
        "type",
        "veth",
        "peer",
        "name",
        "bnt-taken-p",
    ]);
    let peers = [
        ("n1", "192.0.2.1"),
        ("n2", "192.0.2.2"),
        ("n3", "192.0.2.3"),
    ];
    let mut a = spec(
        "net-a",
        "bnt-a",
        "172.20.0.0/24",
        "172.20.0.1",
        200,
        "n1",
        &peers,
    );
    a.ipv6 = Some(bridgenet_crds::v1alpha1::NodeBridgeIpv6 {
        subnet: "fd00:20::/64".into(),
        gateway: "fd00:20::1".into(),
    });
    let taken = spec(
        "net-t",
        "bnt-taken",
        "172.24.0.0/24",
        "172.24.0.1",
        201,
        "n1",
        &peers,
    );
    let node = ctx("n1", "192.0.2.1");

    let path = Topology::path(&n1);
    let (first, second, foreign) = {
        let (a, taken, node) = (a.clone(), taken.clone(), node.clone());
        run_in(&path, move || async move {
            let d = Desired::from_resolved(&resolve_node_bridge(&a).unwrap(), &node);
            let mut applier = Applier::new(Counting::new(Rtnl::connect().unwrap()));
            applier.apply(&d).await.unwrap();
            let first = applier.netlink().writes.values().sum::<usize>();
            // A fresh connection, as after an agent restart: nothing to write.
            let mut applier = Applier::new(Counting::new(Rtnl::connect().unwrap()));
            let ops = applier.apply(&d).await.unwrap();
            assert!(ops.is_empty(), "{ops:?}");
            let second = applier.netlink().writes.clone();
            let foreign = applier
                .apply(&Desired::from_resolved(
                    &resolve_node_bridge(&taken).unwrap(),
                    &node,
                ))
                .await
                .unwrap_err();
            (first, second, foreign)
        })
        .unwrap()
    };
    assert!(
        first >= 8,
        "bridge, marker, addresses, vxlan, peers, sysctls: {first}"
    );
    assert!(second.is_empty(), "second apply wrote {second:?}");
    assert_eq!(foreign.reason(), "BridgeNameTaken", "{foreign}");
    let foreign_link = run(&["ip", "-n", &n1, "link", "show", "bnt-taken"]);
    assert!(
        foreign_link.contains("mtu 1500")
            && !foreign_link.contains("master")
            && !foreign_link.contains("alias"),
        "foreign interface untouched: {foreign_link}"
    );

    // What the kernel has.
    let detail = run(&["ip", "-n", &n1, "-d", "link", "show", "bnvx-200"]);
    assert!(
        detail.contains("vxlan id 200")
            && detail.contains("local 192.0.2.1")
            && detail.contains("dstport 4789")
            && !detail.contains("nolearning"),
        "{detail}"
    );
    assert!(detail.contains("master bnt-a"), "{detail}");
    let bridge = run(&["ip", "-n", &n1, "-d", "link", "show", "bnt-a"]);
    assert!(
        bridge.contains(&bridgenet_crds::names::gateway_mac("net-a"))
            && bridge.contains("mtu 1450")
            && bridge.contains("alias bridgenet:net-a"),
        "{bridge}"
    );
    let addrs = run(&["ip", "-n", &n1, "addr", "show", "dev", "bnt-a"]);
    assert!(
        addrs.contains("172.20.0.1/24") && addrs.contains("fd00:20::1/64"),
        "{addrs}"
    );
    let fdb = run(&[
        "ip", "netns", "exec", &n1, "bridge", "fdb", "show", "dev", "bnvx-200",
    ]);
    for peer in ["192.0.2.2", "192.0.2.3"] {
        assert!(
            fdb.contains(&format!("00:00:00:00:00:00 dst {peer}")),
            "{fdb}"
        );
    }
    assert!(
        !fdb.contains("dst 192.0.2.1"),
        "no flood entry to self: {fdb}"
    );
    assert_eq!(
        run(&[
            "ip",
            "netns",
            "exec",
            &n1,
            "cat",
            "/proc/sys/net/ipv4/ip_forward"
        ])
        .trim(),
        "1"
    );

    // Firewall: applied once, then unchanged; a table deleted by hand comes back.
    assert_eq!(
        realize_fw(&n1, vec![a.clone()], &node),
        FirewallOutcome::Replaced
    );
    assert_eq!(
        realize_fw(&n1, vec![a.clone()], &node),
        FirewallOutcome::Unchanged
    );
    // One rule deleted by hand (the masquerade) is drift too.
    let chain = run(&[
        "ip",
        "netns",
        "exec",
        &n1,
        "nft",
        "-a",
        "list",
        "chain",
        "inet",
        "bridgenet",
        "postrouting",
    ]);
    let handle = chain
        .lines()
        .find(|l| l.contains("masquerade-v4"))
        .and_then(|l| l.rsplit("# handle ").next())
        .map(|h| h.trim().to_owned())
        .expect("masquerade rule with a handle");
    run(&[
        "ip",
        "netns",
        "exec",
        &n1,
        "nft",
        "delete",
        "rule",
        "inet",
        "bridgenet",
        "postrouting",
        "handle",
        &handle,
    ]);
    assert_eq!(
        realize_fw(&n1, vec![a.clone()], &node),
        FirewallOutcome::Replaced
    );
    assert!(
        run(&[
            "ip",
            "netns",
            "exec",
            &n1,
            "nft",
            "list",
            "chain",
            "inet",
            "bridgenet",
            "postrouting"
        ])
        .contains("masquerade-v4")
    );
    // Coexistence: another product's table is never touched.
    run(&[
        "ip",
        "netns",
        "exec",
        &n1,
        "nft",
        "add table ip other; add chain ip other c; add rule ip other c counter",
    ]);
    run(&[
        "ip",
        "netns",
        "exec",
        &n1,
        "nft",
        "delete table bridge bridgenet",
    ]);
    assert_eq!(
        realize_fw(&n1, vec![a.clone()], &node),
        FirewallOutcome::Replaced
    );
    assert!(nft_tables(&n1).contains("table bridge bridgenet"));
    assert!(nft_tables(&n1).contains("table ip other"));

    // Link drift: the bridge deleted by hand comes back with everything on it.
    run(&["ip", "-n", &n1, "link", "del", "bnt-a"]);
    run(&["ip", "-n", &n1, "link", "set", "bnvx-200", "mtu", "1400"]);
    let (ops, _) = realize(&n1, node.clone(), vec![a.clone()]);
    assert!(ops > 0);
    assert!(run(&["ip", "-n", &n1, "addr", "show", "dev", "bnt-a"]).contains("172.20.0.1/24"));
    let detail = run(&["ip", "-n", &n1, "link", "show", "bnvx-200"]);
    assert!(
        detail.contains("mtu 1450") && detail.contains("master bnt-a"),
        "{detail}"
    );
    assert_eq!(
        realize(&n1, node.clone(), vec![a.clone()]),
        (0, FirewallOutcome::Unchanged)
    );

    // Teardown: nothing of bridgenet left; the foreign interface and table stay; repeatable.
    let teardown = Teardown::from_spec(&a);
    for round in 0..2 {
        let td = teardown.clone();
        run_in(&path, move || async move {
            let mut applier = Applier::new(Rtnl::connect().unwrap());
            applier.teardown(&td).await.unwrap();
            Firewall::default().reconcile(&[]).unwrap();
        })
        .unwrap();
        let links = links_in(&n1);
        assert!(
            !links.contains("bnt-a") && !links.contains("bnvx-200"),
            "round {round}: {links}"
        );
        assert!(!links.contains("bridgenet:"), "round {round}: {links}");
        assert!(links.contains("bnt-taken"));
        let tables = nft_tables(&n1);
        assert!(!tables.contains("bridgenet"), "round {round}: {tables}");
        assert!(tables.contains("table ip other"));
        assert!(!run(&["ip", "-n", &n1, "addr"]).contains("172.20.0.1"));
    }
}

fn realize_fw(ns: &str, specs: Vec<NodeBridgeSpec>, node: &NodeContext) -> FirewallOutcome {
    let node = node.clone();
    run_in(&Topology::path(ns), move || async move {
        let desired: Vec<Desired> = specs
            .iter()
            .map(|s| Desired::from_resolved(&resolve_node_bridge(s).unwrap(), &node))
            .collect();
        Firewall::default().reconcile(&desired).unwrap()
    })
    .unwrap()
}

/// A firewall check runs `nft` to list the tables only when some nftables commit happened since
/// the last check that found them right; a commit by anyone, a hand-made change or different
/// desired rules always get the full check.
#[test]
#[ignore = "needs root"]
fn firewall_lists_the_tables_again_only_after_an_nftables_commit() {
    require_root();
    let mut topo = Topology::new("fwgen");
    let n = topo.ns("n");
    let dir = tempfile::tempdir().unwrap();
    let calls = dir.path().join("calls");
    let nft = dir.path().join("nft");
    std::fs::write(
        &nft,
        format!(
            "#!/bin/sh\necho \"$*\" >> {}\nexec nft \"$@\"\n",
            calls.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&nft, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let count = move || {
        std::fs::read_to_string(&calls)
            .map(|s| s.lines().count())
            .unwrap_or(0)
    };
    let node = ctx("n1", "192.0.2.1");
    let desired = Desired::from_resolved(
        &resolve_node_bridge(&spec(
            "red",
            "br-red",
            "10.77.0.0/24",
            "10.77.0.1",
            77,
            "n1",
            &[],
        ))
        .unwrap(),
        &node,
    );
    run_in(&Topology::path(&n), move || async move {
        let fw = Firewall::new(Some(nft));
        let wanted = std::slice::from_ref(&desired);
        assert_eq!(fw.reconcile(wanted).unwrap(), FirewallOutcome::Replaced);
        // Right after our own commit the tables are listed once more...
        let before = count();
        assert_eq!(fw.reconcile(wanted).unwrap(), FirewallOutcome::Unchanged);
        assert_eq!(count(), before + 2, "both tables listed");
        // ...and then not, while nothing commits.
        for _ in 0..3 {
            assert_eq!(fw.reconcile(wanted).unwrap(), FirewallOutcome::Unchanged);
        }
        assert_eq!(count(), before + 2, "no nft run while the generation holds");
        // Someone else's commit: listed again, still right.
        run(&["nft", "add", "table", "inet", "someone-else"]);
        assert_eq!(fw.reconcile(wanted).unwrap(), FirewallOutcome::Unchanged);
        assert_eq!(count(), before + 4);
        // A table deleted by hand comes back.
        run(&["nft", "delete", "table", "bridge", "bridgenet"]);
        assert_eq!(fw.reconcile(wanted).unwrap(), FirewallOutcome::Replaced);
        assert!(try_run(&["nft", "list", "table", "bridge", "bridgenet"]));
        // A different rule set is never answered from what was verified.
        assert_eq!(fw.reconcile(wanted).unwrap(), FirewallOutcome::Unchanged);
        assert_eq!(fw.reconcile(&[]).unwrap(), FirewallOutcome::Replaced);
        assert!(!try_run(&["nft", "list", "table", "inet", "bridgenet"]));
        // The foreign table was never touched.
        assert!(try_run(&["nft", "list", "table", "inet", "someone-else"]));
    })
    .unwrap();
}

/// The agent's link dump (a socket of its own, only the attributes it reads) describes every
/// link as a full rtnetlink read of that one link does: bridges, a VXLAN with its settings,
/// pod ports with their bridge, alias, MTU and MAC, up or down. And enough links that the
/// kernel answers in several datagrams.
#[test]
#[ignore = "needs root"]
fn the_link_dump_reads_every_link_as_a_full_read_does() {
    require_root();
    let mut topo = Topology::new("dump");
    let n = topo.ns("n");
    let p = topo.ns("p");
    run(&["ip", "-n", &n, "link", "add", "br-a", "type", "bridge"]);
    run(&[
        "ip",
        "-n",
        &n,
        "link",
        "set",
        "br-a",
        "alias",
        "bridgenet/a",
        "up",
    ]);
    run(&[
        "ip", "-n", &n, "link", "add", "bnvx-42", "type", "vxlan", "id", "42",
    ]);
    run(&["ip", "-n", &n, "link", "set", "bnvx-42", "master", "br-a"]);
    run(&[
        "ip",
        "-n",
        &n,
        "link",
        "add",
        "bnvx-43",
        "type",
        "vxlan",
        "id",
        "43",
        "local",
        "192.0.2.1",
        "dstport",
        "4790",
        "nolearning",
    ]);
    let mut batch = String::new();
    for i in 0..300 {
        batch.push_str(&format!(
            "link add v{i} mtu 1400 address 02:00:00:00:{:02x}:{:02x} type veth peer name e{i} netns {p}\n",
            i / 256,
            i % 256
        ));
        if i % 2 == 0 {
            batch.push_str(&format!(
                "link set v{i} master br-a alias bridgenet/pod{i} up\n"
            ));
        }
    }
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), batch).unwrap();
    run(&["ip", "-n", &n, "-b", &file.path().display().to_string()]);

    let (dumped, read) = run_in(&Topology::path(&n), || async {
        let mut nl = Rtnl::connect().unwrap();
        let dumped = nl.links().await.unwrap();
        let mut read = Vec::new();
        for link in &dumped {
            read.push(nl.link(&link.name).await.unwrap());
        }
        (dumped, read)
    })
    .unwrap();
    assert_eq!(dumped.len(), 304, "lo, br-a, two VXLANs, 300 veths");
    for (link, full) in dumped.iter().zip(&read) {
        assert_eq!(Some(link), full.as_ref());
    }
    let by_name = |name: &str| dumped.iter().find(|l| l.name == name).unwrap();
    let port = by_name("v2");
    assert_eq!(port.master, Some(by_name("br-a").index));
    assert_eq!(port.alias.as_deref(), Some("bridgenet/pod2"));
    assert_eq!((port.mtu, port.up), (1400, true));
    assert_eq!(port.mac, Some([2, 0, 0, 0, 0, 2]));
    assert!(
        matches!(&by_name("bnvx-43").kind, bridgenet_agent::dataplane::netlink::LinkKind::Vxlan(vx)
        if vx.vni == 43 && vx.port == 4790 && !vx.learning && vx.local == Some("192.0.2.1".parse().unwrap()))
    );
}

/// The flood entries of one VXLAN port, read with the dump the kernel filters to that port,
/// are what a full dump of the node's forwarding database shows for it: on a node whose FDB
/// holds hundreds of pod ports' entries (several datagrams of them) and another network's
/// VXLAN port with flood entries of its own.
#[test]
#[ignore = "needs root"]
fn the_port_fdb_dump_finds_the_flood_entries_a_full_dump_shows() {
    use futures::TryStreamExt;
    use rtnetlink::packet_route::AddressFamily;
    use rtnetlink::packet_route::neighbour::{NeighbourAddress, NeighbourAttribute};

    require_root();
    let mut topo = Topology::new("fdb");
    let n = topo.ns("n");
    let p = topo.ns("p");
    let mut batch = String::new();
    for (bridge, vni) in [("br-a", 42), ("br-b", 43)] {
        batch.push_str(&format!(
            "link add {bridge} type bridge\nlink set {bridge} up\n"
        ));
        batch.push_str(&format!(
            "link add bnvx-{vni} type vxlan id {vni} local 192.0.2.1 dstport 4789 nolearning\n\
             link set bnvx-{vni} master {bridge} up\n"
        ));
    }
    for i in 0..300 {
        batch.push_str(&format!(
            "link add v{i} type veth peer name e{i} netns {p}\nlink set v{i} master br-a up\n"
        ));
    }
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), batch).unwrap();
    run(&["ip", "-n", &n, "-b", &file.path().display().to_string()]);
    let fdb = |args: &[&str]| {
        let mut argv = vec!["ip", "netns", "exec", &n, "bridge", "fdb"];
        argv.extend_from_slice(args);
        run(&argv);
    };
    for dst in ["192.0.2.2", "192.0.2.3"] {
        fdb(&["append", "00:00:00:00:00:00", "dev", "bnvx-42", "dst", dst]);
    }
    // A remote MAC's entry is no flood entry.
    fdb(&[
        "add",
        "02:00:00:00:00:09",
        "dev",
        "bnvx-42",
        "dst",
        "192.0.2.4",
    ]);
    fdb(&[
        "append",
        "00:00:00:00:00:00",
        "dev",
        "bnvx-43",
        "dst",
        "192.0.2.5",
    ]);

    let (filtered, full, total) = run_in(&Topology::path(&n), || async {
        let mut nl = Rtnl::connect().unwrap();
        let ports: Vec<Link> = nl
            .links()
            .await
            .unwrap()
            .into_iter()
            .filter(|l| l.name.starts_with("bnvx-"))
            .collect();
        let (conn, handle, _) = rtnetlink::new_connection().unwrap();
        tokio::spawn(conn);
        let all: Vec<_> = handle
            .neighbours()
            .get()
            .set_address_family(AddressFamily::Bridge)
            .execute()
            .try_collect()
            .await
            .unwrap();
        let mut filtered = BTreeMap::new();
        let mut full = BTreeMap::new();
        for port in &ports {
            let mut mine = nl.flood_entries(port.index).await.unwrap();
            mine.sort();
            filtered.insert(port.name.clone(), mine);
            // The reference: every entry of the namespace, the port's all-zeros ones kept.
            let mut theirs: Vec<IpAddr> = all
                .iter()
                .filter(|m| m.header.ifindex == port.index)
                .filter(|m| {
                    m.attributes.iter().any(|a| {
                        matches!(a, NeighbourAttribute::LinkLayerAddress(l) if l.iter().all(|b| *b == 0))
                    })
                })
                .filter_map(|m| {
                    m.attributes.iter().find_map(|a| match a {
                        NeighbourAttribute::Destination(NeighbourAddress::Other(raw))
                            if raw.len() == 4 =>
                        {
                            <[u8; 4]>::try_from(raw.as_slice()).ok().map(IpAddr::from)
                        }
                        NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)) => {
                            Some(IpAddr::V4(*ip))
                        }
                        _ => None,
                    })
                })
                .collect();
            theirs.sort();
            full.insert(port.name.clone(), theirs);
        }
        (filtered, full, all.len())
    })
    .unwrap();
    assert!(
        total > 600,
        "the node's FDB holds every port's entries: {total}"
    );
    assert_eq!(filtered, full);
    let ip = |s: &str| s.parse::<IpAddr>().unwrap();
    assert_eq!(filtered["bnvx-42"], [ip("192.0.2.2"), ip("192.0.2.3")]);
    assert_eq!(filtered["bnvx-43"], [ip("192.0.2.5")]);
}
