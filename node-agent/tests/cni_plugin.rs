//! The real `bridgenet` plugin binary, executed the way a container runtime does (CNI
//! environment + config on stdin), against an agent served in the test, attaching pods in
//! network namespaces the test creates (prefix `bnt-cni-`). Needs root.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod cni_support;
mod root_support;

use cni_support::{
    Call, InProcessAgent, Netns, StaticDirectory, TestNetwork, World, chained_config, run_plugin,
};
use root_support::require_root;
use serde_json::{Value, json};

struct Setup {
    node: Netns,
    pod: Netns,
    dir: StaticDirectory,
    agent: InProcessAgent,
    _state: tempfile::TempDir,
}

fn setup(tag: &str, networks: &[TestNetwork]) -> Setup {
    let node = Netns::new(&format!("{tag}-n"));
    let pod = Netns::new(&format!("{tag}-p"));
    for n in networks {
        n.create_bridge(&node);
    }
    let dir = StaticDirectory::new(World {
        networks: networks.iter().map(TestNetwork::spec).collect(),
        ..World::default()
    });
    let state = tempfile::tempdir().unwrap();
    let agent = InProcessAgent::start(dir.clone(), state.path(), &node);
    Setup {
        node,
        pod,
        dir,
        agent,
        _state: state,
    }
}

/// Whether the node's neighbour table on `bridge` gets `ip` at `mac` within about a second
/// (`family`: `-4` or `-6`).
async fn neighbour_learned(node: &Netns, family: &str, bridge: &str, ip: &str, mac: &str) -> bool {
    for _ in 0..50 {
        let neigh = node.ip(&[family, "neigh", "show", "dev", bridge]);
        if neigh
            .lines()
            .any(|l| l.starts_with(&format!("{ip} ")) && l.contains(mac))
        {
            return true;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    false
}

fn addresses(link: &Value) -> Vec<String> {
    link["addr_info"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["family"] == "inet")
        .map(|a| format!("{}/{}", a["local"].as_str().unwrap(), a["prefixlen"]))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root"]
async fn add_check_del_attaches_a_working_interface_and_removes_it() {
    require_root();
    let red = TestNetwork::new("red", 10);
    let s = setup("basic", std::slice::from_ref(&red));
    s.dir.set_pod("default/web", "red");
    // Let the node learn neighbours from gratuitous ARP, to see the pod announce itself.
    assert!(s.node.exec(&[
        "sysctl",
        "-qw",
        &format!("net.ipv4.conf.{}.arp_accept=1", red.bridge)
    ]));
    let conf = chained_config(&s.agent.socket, "1.1.0", None);
    let add = Call::new(
        "ADD",
        "sandbox-basic",
        s.pod.path().to_str().unwrap(),
        "default/web",
        conf,
    );

    let answer = run_plugin(&add).await;
    assert!(answer.ok, "ADD failed: {}", answer.raw);
    let result = answer.json;
    assert_eq!(result["cniVersion"], "1.1.0");
    assert_eq!(result["interfaces"][0]["name"], "net1");
    assert_eq!(
        result["interfaces"][0]["sandbox"],
        s.pod.path().to_str().unwrap()
    );
    assert_eq!(result["interfaces"][0]["mtu"], 1400);
    let address = result["ips"][0]["address"].as_str().unwrap().to_owned();
    assert!(
        address.starts_with("172.29.10.") && address.ends_with("/24"),
        "{address}"
    );
    assert_ne!(address, "172.29.10.1/24", "never the gateway");
    assert_eq!(result["ips"][0]["gateway"], "172.29.10.1");
    assert_eq!(result["ips"][0]["interface"], 0);

    // What the kernel says: address, MAC, MTU, up, subnet route, and no default route.
    let link = s.pod.link_json("net1").expect("net1 exists in the pod");
    assert_eq!(addresses(&link), vec![address.clone()]);
    let mac = result["interfaces"][0]["mac"].as_str().unwrap();
    assert_eq!(link["address"], mac);
    let first = u8::from_str_radix(&mac[..2], 16).unwrap();
    assert_eq!(first & 0b11, 0b10, "unicast, locally administered: {mac}");
    assert_eq!(link["mtu"], 1400);
    assert!(link["flags"].as_array().unwrap().iter().any(|f| f == "UP"));
    // An IPv4-only network: no IPv6 on the interface at all, not even link-local (as Docker).
    assert!(
        link["addr_info"]
            .as_array()
            .unwrap()
            .iter()
            .all(|a| a["family"] != "inet6"),
        "{link}"
    );
    let routes = s.pod.ip(&["route", "show"]);
    assert!(routes.contains("172.29.10.0/24 dev net1"), "{routes}");
    assert!(
        !routes.contains("default"),
        "no default route unless asked: {routes}"
    );
    // Host end: on the bridge, up.
    let host = s
        .node
        .links()
        .into_iter()
        .find(|l| l.starts_with("bnv"))
        .expect("host veth");
    let host_link = s.node.link_json(&host).unwrap();
    assert_eq!(host_link["master"], red.bridge);
    assert_eq!(host_link["mtu"], 1400);
    // A bridge port without IPv6 of its own (no link-local address, routes or MLD).
    assert!(
        host_link["addr_info"]
            .as_array()
            .is_none_or(|a| a.iter().all(|a| a["family"] != "inet6")),
        "{host_link}"
    );
    assert!(
        s.node.exec(&[
            "sh",
            "-c",
            &format!("test \"$(cat /proc/sys/net/ipv6/conf/{host}/disable_ipv6)\" = 1")
        ]),
        "IPv6 off on {host}"
    );
    // The pod announced itself (gratuitous ARP) before any traffic.
    let ip_only = address.split('/').next().unwrap().to_owned();
    assert!(
        neighbour_learned(&s.node, "-4", &red.bridge, &ip_only, mac).await,
        "gratuitous ARP from {ip_only} ({mac}) reached the node"
    );
    // The pod reaches its gateway.
    assert!(
        s.pod
            .exec(&["busybox", "ping", "-c", "1", "-W", "2", "172.29.10.1"]),
        "pod pings the gateway"
    );
    assert_eq!(s.agent.engine.allocations().await.len(), 1);

    let check = run_plugin(&add.with_command("CHECK")).await;
    assert!(check.ok, "CHECK: {}", check.raw);
    // CHECK notices a broken attachment.
    s.pod.ip(&["addr", "flush", "dev", "net1"]);
    let check = run_plugin(&add.with_command("CHECK")).await;
    assert!(!check.ok, "CHECK must fail once the address is gone");

    let del = run_plugin(&add.with_command("DEL")).await;
    assert!(del.ok, "DEL: {}", del.raw);
    s.agent.settled().await;
    assert!(s.pod.link_json("net1").is_none(), "net1 removed");
    assert!(
        !s.node.links().iter().any(|l| l.starts_with("bnv")),
        "host veth removed"
    );
    assert!(
        s.agent.engine.allocations().await.is_empty(),
        "address freed"
    );
    // DEL is idempotent, also for a sandbox never seen and with no netns.
    assert!(run_plugin(&add.with_command("DEL")).await.ok);
    let mut unknown = add.with_command("DEL");
    unknown.container_id = "never-seen".into();
    unknown.netns = String::new();
    assert!(run_plugin(&unknown).await.ok);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root"]
async fn chained_after_a_primary_appends_to_prev_result_with_requested_names_ip_and_mac() {
    require_root();
    let red = TestNetwork::new("red", 11);
    let blue = TestNetwork::new("blue", 12);
    let s = setup("chain", &[red, blue]);
    s.dir.set_pod(
        "apps/db",
        r#"[{"name":"red","interface":"data0","ip":"172.29.11.77","mac":"02:42:ac:1d:0b:4d"},
            {"name":"blue","defaultRoute":true}]"#,
    );
    let prev = json!({
        "cniVersion": "1.0.0",
        "interfaces": [{"name": "cni0", "mac": "aa:bb:cc:dd:ee:01"}, {"name": "eth0", "sandbox": s.pod.path()}],
        "ips": [{"address": "10.244.0.5/24", "gateway": "10.244.0.1", "interface": 1}],
        "dns": {"nameservers": ["10.96.0.10"]},
    });
    let conf = chained_config(&s.agent.socket, "1.0.0", Some(prev));
    let add = Call::new(
        "ADD",
        "sandbox-chain",
        s.pod.path().to_str().unwrap(),
        "apps/db",
        conf,
    );
    let answer = run_plugin(&add).await;
    assert!(answer.ok, "ADD: {}", answer.raw);
    let r = answer.json;
    let names: Vec<&str> = r["interfaces"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["cni0", "eth0", "data0", "net2"]);
    assert_eq!(
        r["ips"][0]["address"], "10.244.0.5/24",
        "primary's IP first, untouched"
    );
    assert_eq!(r["ips"][1]["address"], "172.29.11.77/24");
    assert_eq!(r["ips"][1]["interface"], 2);
    assert_eq!(r["ips"][2]["interface"], 3);
    assert_eq!(r["dns"]["nameservers"][0], "10.96.0.10");
    assert_eq!(r["interfaces"][2]["mac"], "02:42:ac:1d:0b:4d");
    assert_eq!(r["routes"][0]["dst"], "0.0.0.0/0");
    assert_eq!(r["routes"][0]["gw"], "172.29.12.1");
    assert_eq!(
        s.pod.link_json("data0").unwrap()["address"],
        "02:42:ac:1d:0b:4d"
    );
    let routes = s.pod.ip(&["route", "show", "default"]);
    assert!(routes.contains("via 172.29.12.1 dev net2"), "{routes}");
    assert!(
        s.pod
            .exec(&["busybox", "ping", "-c", "1", "-W", "2", "172.29.11.1"])
    );
    assert!(
        s.pod
            .exec(&["busybox", "ping", "-c", "1", "-W", "2", "172.29.12.1"])
    );

    // Another pod asking for the same address is refused with a message and an Event.
    s.dir
        .set_pod("apps/db2", r#"[{"name":"red","ip":"172.29.11.77"}]"#);
    let pod2 = Netns::new("chain-p2");
    let conf = chained_config(&s.agent.socket, "1.0.0", None);
    let add2 = Call::new(
        "ADD",
        "sandbox-chain2",
        pod2.path().to_str().unwrap(),
        "apps/db2",
        conf,
    );
    let answer = run_plugin(&add2).await;
    assert!(!answer.ok);
    assert_eq!(answer.code(), 100);
    assert!(
        answer.json["msg"]
            .as_str()
            .unwrap()
            .contains("already in use by apps/db"),
        "{}",
        answer.raw
    );
    assert!(
        s.dir
            .rejected()
            .iter()
            .any(|(r, _)| r == "AddressUnavailable")
    );
    assert!(pod2.link_json("net1").is_none(), "nothing half-attached");

    assert!(run_plugin(&add.with_command("DEL")).await.ok);

    s.agent.settled().await;
    assert!(s.agent.engine.allocations().await.is_empty());
    assert!(!s.node.links().iter().any(|l| l.starts_with("bnv")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root"]
async fn multus_delegate_and_legacy_version() {
    require_root();
    let red = TestNetwork::new("red", 13);
    let s = setup("deleg", &[red]);
    // Delegate mode: no annotation needed; the interface name comes from CNI_IFNAME.
    let conf = json!({"cniVersion": "0.4.0", "name": "red-attach", "type": "bridgenet",
        "socket": s.agent.socket, "network": "red"});
    let mut add = Call::new(
        "ADD",
        "sandbox-deleg",
        s.pod.path().to_str().unwrap(),
        "default/m",
        conf,
    );
    add.ifname = "net7".into();
    let answer = run_plugin(&add).await;
    assert!(answer.ok, "{}", answer.raw);
    assert_eq!(answer.json["cniVersion"], "0.4.0");
    assert_eq!(answer.json["ips"][0]["version"], "4");
    assert_eq!(answer.json["interfaces"][0]["name"], "net7");
    assert!(s.pod.link_json("net7").is_some());
    assert!(run_plugin(&add.with_command("CHECK")).await.ok);
    assert!(run_plugin(&add.with_command("DEL")).await.ok);
    s.agent.settled().await;
    assert!(s.pod.link_json("net7").is_none());
    assert!(s.agent.engine.allocations().await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root"]
async fn bad_requests_fail_the_sandbox_with_a_clear_error_and_an_event() {
    require_root();
    let mut red = TestNetwork::new("red", 14);
    red.namespace_selector = Some(json!({"matchLabels": {"tenant": "red"}}));
    let s = setup("bad", &[red]);
    s.dir.world.lock().unwrap().namespaces.insert(
        "tenant-red".into(),
        [("tenant".to_owned(), "red".to_owned())].into(),
    );
    let path = s.pod.path();
    let netns = path.to_str().unwrap();
    let conf = chained_config(&s.agent.socket, "1.1.0", None);

    let cases = [
        (
            "tenant-red/a",
            "[{\"name\": red}]",
            "InvalidNetworkAnnotation",
            "not valid JSON",
        ),
        (
            "tenant-red/b",
            "Red_Net",
            "InvalidNetworkAnnotation",
            "not a valid network name",
        ),
        (
            "tenant-red/c",
            "green",
            "UnknownNetwork",
            "does not exist on this node",
        ),
        (
            "other/d",
            "red",
            "NamespaceNotAdmitted",
            "namespaceSelector",
        ),
        (
            "tenant-red/e",
            r#"[{"name":"red","ip":"172.29.99.5"}]"#,
            "AddressUnavailable",
            "not available on this node",
        ),
    ];
    for (pod, annotation, reason, text) in cases {
        s.dir.set_pod(pod, annotation);
        let call = Call::new(
            "ADD",
            &format!("sb-{}", pod.replace('/', "-")),
            netns,
            pod,
            conf.clone(),
        );
        let answer = run_plugin(&call).await;
        assert!(!answer.ok, "{pod} must fail");
        assert_eq!(answer.code(), 100, "{pod}: {}", answer.raw);
        let msg = answer.json["msg"].as_str().unwrap();
        assert!(msg.contains(text) && msg.contains(pod), "{pod}: {msg}");
        assert!(
            !answer.json["details"]
                .as_str()
                .unwrap_or_default()
                .is_empty(),
            "advice given"
        );
        assert!(
            s.dir
                .rejected()
                .iter()
                .any(|(r, m)| r == reason && m.contains(text)),
            "{pod}: Event {reason} recorded"
        );
    }
    assert!(s.agent.engine.allocations().await.is_empty());
    assert!(!s.node.links().iter().any(|l| l.starts_with("bnv")));

    // Admitted namespace works.
    s.dir.set_pod("tenant-red/ok", "red");
    let ok = run_plugin(&Call::new(
        "ADD",
        "sb-ok",
        netns,
        "tenant-red/ok",
        conf.clone(),
    ))
    .await;
    assert!(ok.ok, "{}", ok.raw);
    // A pod without the annotation gets nothing and passes prevResult through.
    s.dir.set_pod("tenant-red/none", "");
    let prev = json!({"cniVersion": "1.1.0", "ips": [{"address": "10.1.1.1/24"}]});
    let none = run_plugin(&Call::new(
        "ADD",
        "sb-none",
        netns,
        "tenant-red/none",
        chained_config(&s.agent.socket, "1.1.0", Some(prev)),
    ))
    .await;
    assert!(none.ok);
    assert_eq!(none.json["ips"].as_array().unwrap().len(), 1);

    // Broken configurations.
    let mut call = Call::new(
        "ADD",
        "sb-x",
        netns,
        "tenant-red/ok",
        json!({"cniVersion": "0.2.0", "type": "bridgenet"}),
    );
    let answer = run_plugin(&call).await;
    assert_eq!(answer.code(), 1, "{}", answer.raw);
    call.config = json!("not an object");
    assert_eq!(run_plugin(&call).await.code(), 6);
    let mut no_cmd = call.clone();
    no_cmd.command = "EXPLODE";
    assert_eq!(run_plugin(&no_cmd).await.code(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root"]
async fn agent_down_status_version_and_gc() {
    require_root();
    let red = TestNetwork::new("red", 15);
    let s = setup("gc", &[red]);
    let conf = chained_config(&s.agent.socket, "1.1.0", None);

    let version = run_plugin(&Call::new(
        "VERSION",
        "",
        "",
        "x",
        json!({"cniVersion": "1.1.0"}),
    ))
    .await;
    assert!(version.ok);
    assert_eq!(
        version.json["supportedVersions"],
        json!(["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"])
    );
    let status = run_plugin(&Call::new("STATUS", "", "", "x", conf.clone())).await;
    assert!(status.ok, "{}", status.raw);

    // Agent unreachable: ADD says "try again later" (11) and what to check; STATUS says 50.
    let down = chained_config(
        std::path::Path::new("/run/bnt-cni-nothing-here.sock"),
        "1.1.0",
        None,
    );
    let answer = run_plugin(&Call::new(
        "ADD",
        "sb",
        s.pod.path().to_str().unwrap(),
        "default/x",
        down.clone(),
    ))
    .await;
    assert!(!answer.ok);
    assert_eq!(answer.code(), 11);
    assert!(
        answer.json["details"]
            .as_str()
            .unwrap()
            .contains("bridgenet-agent")
    );
    assert_eq!(
        run_plugin(&Call::new("STATUS", "", "", "x", down))
            .await
            .code(),
        50
    );

    // GC: three sandboxes, the runtime still knows one.
    let pods: Vec<Netns> = (0..3).map(|i| Netns::new(&format!("gc-p{i}"))).collect();
    for (i, p) in pods.iter().enumerate() {
        s.dir.set_pod(&format!("default/g{i}"), "red");
        let add = Call::new(
            "ADD",
            &format!("sb-g{i}"),
            p.path().to_str().unwrap(),
            &format!("default/g{i}"),
            conf.clone(),
        );
        assert!(run_plugin(&add).await.ok);
    }
    assert_eq!(s.agent.engine.allocations().await.len(), 3);
    let mut gc_conf = conf.clone();
    gc_conf["cni.dev/valid-attachments"] = json!([{"containerID": "sb-g1", "ifname": "eth0"}]);
    let gc = run_plugin(&Call::new("GC", "", "", "x", gc_conf)).await;
    assert!(gc.ok, "{}", gc.raw);
    let left = s.agent.engine.allocations().await;
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].container_id, "sb-g1");
    assert!(pods[0].link_json("net1").is_none());
    assert!(
        pods[1].link_json("net1").is_some(),
        "a live sandbox keeps its interface"
    );
    assert!(pods[2].link_json("net1").is_none());
    assert_eq!(
        s.node
            .links()
            .iter()
            .filter(|l| l.starts_with("bnv"))
            .count(),
        1
    );
    // A GC from another network configuration frees nothing of ours.
    let mut other = conf.clone();
    other["name"] = json!("another-net");
    other["cni.dev/valid-attachments"] = json!([]);
    assert!(run_plugin(&Call::new("GC", "", "", "x", other)).await.ok);
    assert_eq!(s.agent.engine.allocations().await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root"]
async fn dual_stack_network_gets_both_families() {
    require_root();
    let mut dual = TestNetwork::new("dual", 16);
    dual.ipv6 = Some(("fd00:29:16::/64".into(), "fd00:29:16::1".into()));
    dual.blocks.push("fd00:29:16::/120".into());
    let s = setup("dual", std::slice::from_ref(&dual));
    s.dir.set_pod("default/v6", "dual");
    // Let the node learn neighbours from unsolicited NAs, to see the pod announce its IPv6
    // address (2: only for sources inside the bridge's own subnets). The kernel does that only
    // on a router, which the agent makes of every node with an IPv6 network.
    assert!(s.node.exec(&[
        "sysctl",
        "-qw",
        "net.ipv6.conf.all.forwarding=1",
        &format!("net.ipv6.conf.{}.accept_untracked_na=2", dual.bridge)
    ]));
    let conf = chained_config(&s.agent.socket, "1.1.0", None);
    let add = Call::new(
        "ADD",
        "sandbox-dual",
        s.pod.path().to_str().unwrap(),
        "default/v6",
        conf,
    );
    let answer = run_plugin(&add).await;
    assert!(answer.ok, "{}", answer.raw);
    let ips = answer.json["ips"].as_array().unwrap();
    assert_eq!(ips.len(), 2, "{}", answer.raw);
    assert!(
        ips[0]["address"]
            .as_str()
            .unwrap()
            .starts_with("172.29.16.")
    );
    let v6 = ips[1]["address"].as_str().unwrap();
    assert!(
        v6.starts_with("fd00:29:16::") && v6.ends_with("/64"),
        "{v6}"
    );
    assert_ne!(v6, "fd00:29:16::1/64", "never the gateway");
    assert_eq!(ips[1]["gateway"], "fd00:29:16::1");
    let link = s.pod.link_json("net1").unwrap();
    let v6_on_link: Vec<&str> = link["addr_info"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["family"] == "inet6" && a["scope"] == "global")
        .map(|a| a["local"].as_str().unwrap())
        .collect();
    assert_eq!(v6_on_link, vec![v6.split('/').next().unwrap()]);
    // The pod announced its IPv6 address (unsolicited NA) before any IPv6 traffic: the ping6
    // below would otherwise be what teaches the node the neighbour.
    let v6_ip = v6.split('/').next().unwrap();
    let mac = answer.json["interfaces"][0]["mac"].as_str().unwrap();
    assert!(
        neighbour_learned(&s.node, "-6", &dual.bridge, v6_ip, mac).await,
        "unsolicited NA from {v6_ip} ({mac}) reached the node"
    );
    assert!(
        s.pod
            .exec(&["busybox", "ping", "-c", "1", "-W", "2", "172.29.16.1"])
    );
    // No DAD wait: usable at once.
    assert!(
        s.pod
            .exec(&["busybox", "ping6", "-c", "1", "-W", "2", "fd00:29:16::1"])
    );
    assert!(run_plugin(&add.with_command("CHECK")).await.ok);
    assert!(run_plugin(&add.with_command("DEL")).await.ok);
    s.agent.settled().await;
    assert!(s.agent.engine.allocations().await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root"]
async fn reconcile_frees_only_settled_allocations_of_sandboxes_the_runtime_lost() {
    require_root();
    let red = TestNetwork::new("red", 17);
    let s = setup("recon", &[red]);
    let conf = chained_config(&s.agent.socket, "1.1.0", None);
    let gone = Netns::new("recon-gone");
    for (pod, ns) in [("default/kept", &s.pod), ("default/gone", &gone)] {
        s.dir.set_pod(pod, "red");
        let id = format!("sb-{}", pod.split('/').nth(1).unwrap());
        let add = Call::new("ADD", &id, ns.path().to_str().unwrap(), pod, conf.clone());
        assert!(run_plugin(&add).await.ok);
    }
    // Node reboot / force delete: the sandbox and its netns vanish, no DEL ever comes.
    drop(gone);
    let live: std::collections::HashSet<String> = ["sb-kept".to_owned()].into();
    // Young allocations may belong to an ADD in flight that the runtime does not list yet.
    let freed = s
        .agent
        .engine
        .reconcile(&live, std::time::Duration::from_secs(120))
        .await
        .unwrap();
    assert_eq!(freed, 0);
    assert_eq!(s.agent.engine.allocations().await.len(), 2);
    let freed = s
        .agent
        .engine
        .reconcile(&live, std::time::Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(freed, 1);
    let left = s.agent.engine.allocations().await;
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].container_id, "sb-kept");
    assert!(
        s.pod.link_json("net1").is_some(),
        "the live pod is untouched"
    );
    assert_eq!(
        s.node
            .links()
            .iter()
            .filter(|l| l.starts_with("bnv"))
            .count(),
        1
    );
}

/// kindnet, flannel and many Calico installs write cniVersion 0.3.1 conflists: chained there,
/// bridgenet answers in 0.3.1's shape (each IP with its `version`) after the primary's result.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root"]
async fn chained_into_a_0_3_1_conflist_like_kindnets() {
    require_root();
    let red = TestNetwork::new("red", 18);
    let s = setup("v031", &[red]);
    s.dir.set_pod("default/kind", "red");
    let prev = json!({
        "cniVersion": "0.3.1",
        "interfaces": [{"name": "eth0", "sandbox": s.pod.path()}],
        "ips": [{"version": "4", "address": "10.244.1.5/24", "gateway": "10.244.1.1", "interface": 0}],
        "routes": [{"dst": "0.0.0.0/0"}],
        "dns": {},
    });
    let conf = chained_config(&s.agent.socket, "0.3.1", Some(prev));
    let add = Call::new(
        "ADD",
        "sandbox-v031",
        s.pod.path().to_str().unwrap(),
        "default/kind",
        conf,
    );
    let answer = run_plugin(&add).await;
    assert!(answer.ok, "{}", answer.raw);
    let r = answer.json;
    assert_eq!(r["cniVersion"], "0.3.1");
    assert_eq!(
        r["ips"][0]["address"], "10.244.1.5/24",
        "primary's IP first"
    );
    let ours = &r["ips"][1];
    assert!(
        ours["address"].as_str().unwrap().starts_with("172.29.18."),
        "{r}"
    );
    assert_eq!(ours["version"], "4");
    assert_eq!(ours["interface"], 1);
    assert_eq!(r["interfaces"][1]["name"], "net1");
    assert!(
        s.pod
            .exec(&["busybox", "ping", "-c", "1", "-W", "2", "172.29.18.1"])
    );
    // 0.3.x runtimes send DEL without prevResult.
    let mut del = add.with_command("DEL");
    del.config.as_object_mut().unwrap().remove("prevResult");
    assert!(run_plugin(&del).await.ok);
    s.agent.settled().await;
    assert!(s.pod.link_json("net1").is_none());
    assert!(s.agent.engine.allocations().await.is_empty());
}

/// `kubectl apply` of a network and a pod together: the pod's ADD can come before this node
/// has the network's NodeBridge, and before its bridge exists. It waits for both instead of
/// failing the sandbox (which the kubelet would retry with back-off, showing errors).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root"]
async fn add_waits_for_a_network_that_arrives_moments_later() {
    require_root();
    let late = TestNetwork::new("late", 19);
    let s = setup("late", &[]);
    s.dir.set_pod("default/eager", "late");
    let conf = chained_config(&s.agent.socket, "1.1.0", None);
    let add = Call::new(
        "ADD",
        "sandbox-late",
        s.pod.path().to_str().unwrap(),
        "default/eager",
        conf,
    );
    let pending = {
        let add = add.clone();
        tokio::spawn(async move { run_plugin(&add).await })
    };
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert!(!pending.is_finished(), "ADD waits for the network");
    // The NodeBridge arrives, and its bridge a moment after.
    s.dir.world.lock().unwrap().networks.push(late.spec());
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    late.create_bridge(&s.node);
    let answer = pending.await.unwrap();
    assert!(answer.ok, "{}", answer.raw);
    let address = answer.json["ips"][0]["address"].as_str().unwrap();
    assert!(address.starts_with("172.29.19."), "{address}");
    assert!(
        s.pod
            .exec(&["busybox", "ping", "-c", "1", "-W", "2", "172.29.19.1"])
    );
    assert!(run_plugin(&add.with_command("DEL")).await.ok);
    s.agent.settled().await;
    assert!(s.agent.engine.allocations().await.is_empty());
}

/// A name prefix is not ownership: the sweep of stray pod veths (part of the periodic
/// reconcile against the runtime and of CNI GC) deletes only veths that carry bridgenet's pod
/// marker and have no allocation. A network's VXLAN port (`bnvx-<vni>`, which shares the pod
/// veths' `bnv` prefix), a bridge, a veth of someone else named `bnv…`, and a non-veth carrying
/// the pod marker all survive it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root"]
async fn sweep_takes_only_marked_pod_veths_without_an_allocation() {
    require_root();
    let red = TestNetwork::new("red", 20);
    let s = setup("sweep", std::slice::from_ref(&red));
    s.dir.set_pod("default/live", "red");
    let conf = chained_config(&s.agent.socket, "1.1.0", None);
    let add = Call::new(
        "ADD",
        "sb-live",
        s.pod.path().to_str().unwrap(),
        "default/live",
        conf.clone(),
    );
    assert!(run_plugin(&add).await.ok);
    let live_veth = s
        .node
        .links()
        .into_iter()
        .find(|l| l.starts_with("bnv"))
        .expect("the live pod's host veth");
    assert_eq!(
        s.node.link_json(&live_veth).unwrap()["ifalias"],
        "bridgenet-pod:sb-live/net1",
        "a pod veth carries its owner's marker"
    );
    // What the data plane makes for a network: a VXLAN port on the bridge and the bridge,
    // both marked `bridgenet:<network>`.
    for args in [
        &[
            "link",
            "add",
            "bnvx-4242",
            "type",
            "vxlan",
            "id",
            "4242",
            "dstport",
            "4789",
        ][..],
        &["link", "set", "bnvx-4242", "alias", "bridgenet:red"],
        &[
            "link",
            "set",
            "bnvx-4242",
            "master",
            red.bridge.as_str(),
            "up",
        ],
        &["link", "add", "bnvbr20", "type", "bridge"],
        &["link", "set", "bnvbr20", "alias", "bridgenet:blue"],
        // Someone else's veth pair whose names happen to start with `bnv`.
        &[
            "link",
            "add",
            "bnvforeign0",
            "type",
            "veth",
            "peer",
            "name",
            "bnvforeign1",
        ],
        // Not a veth, even though it carries the pod marker.
        &["link", "add", "bnvbr21", "type", "bridge"],
        &["link", "set", "bnvbr21", "alias", "bridgenet-pod:sb-x/net1"],
        // A pod veth of bridgenet whose allocation is gone (the journal was lost).
        &[
            "link",
            "add",
            "bnv0123456789ab",
            "type",
            "veth",
            "peer",
            "name",
            "orphanp",
        ],
        &[
            "link",
            "set",
            "bnv0123456789ab",
            "alias",
            "bridgenet-pod:sb-gone/net1",
        ],
    ] {
        s.node.ip(args);
    }
    let survivors = [
        "bnvx-4242",
        "bnvbr20",
        "bnvforeign0",
        "bnvforeign1",
        "bnvbr21",
        live_veth.as_str(),
    ];
    let live: std::collections::HashSet<String> = ["sb-live".to_owned()].into();
    s.agent
        .engine
        .reconcile(&live, std::time::Duration::from_secs(120))
        .await
        .unwrap();
    let links = s.node.links();
    for name in survivors {
        assert!(
            links.iter().any(|l| l == name),
            "the reconcile's sweep deleted {name}: {links:?}"
        );
    }
    assert!(
        !links.iter().any(|l| l == "bnv0123456789ab"),
        "the marked orphan is swept: {links:?}"
    );
    assert!(
        s.pod.link_json("net1").is_some(),
        "the live pod is untouched"
    );
    // CNI GC runs the same sweep.
    s.node.ip(&[
        "link",
        "add",
        "bnv0123456789ac",
        "type",
        "veth",
        "peer",
        "name",
        "orphanq",
    ]);
    s.node.ip(&[
        "link",
        "set",
        "bnv0123456789ac",
        "alias",
        "bridgenet-pod:sb-gone/net2",
    ]);
    let mut gc = conf;
    gc["cni.dev/valid-attachments"] = json!([{"containerID": "sb-live", "ifname": "eth0"}]);
    let answer = run_plugin(&Call::new("GC", "", "", "x", gc)).await;
    assert!(answer.ok, "{}", answer.raw);
    let links = s.node.links();
    for name in survivors {
        assert!(
            links.iter().any(|l| l == name),
            "CNI GC's sweep deleted {name}: {links:?}"
        );
    }
    assert!(!links.iter().any(|l| l == "bnv0123456789ac"), "{links:?}");
    assert!(run_plugin(&add.with_command("DEL")).await.ok);
    s.agent.settled().await;
    assert!(s.agent.engine.allocations().await.is_empty());
}
