//! The agent binary's NodeBridge story on a real kernel and the sandbox's Kubernetes API
//! emulator: NodeBridges of this node become bridges with `Ready=True`, the finalizer holds
//! them until teardown, a bridge deleted by hand comes back, a foreign interface is refused
//! with `BridgeNameTaken`, a `kill -9` and restart leave the bridge in place, deletion leaves
//! nothing behind. Everything — emulator, agent, kube client — runs inside one network
//! namespace (the "node"), since the agent's netlink and nftables act on the namespace it runs
//! in. Skipped, saying why, when not root.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bridgenet_agent::dataplane::netns::run_in;
use bridgenet_crds::{NodeBridge, NodeBridgeSpec};
use k8s_openapi::api::core::v1::Event as CoreEvent;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{CustomResourceExt, ResourceExt};

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(2) == Some("0"))
        })
        .unwrap_or(false)
}

fn run(args: &[&str]) -> String {
    let out = Command::new(args[0]).args(&args[1..]).output().unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The node namespace, the emulator and the agent; all stopped and removed on drop.
struct Node {
    ns: String,
    dir: PathBuf,
    emulator: Option<Child>,
    agent: Option<Child>,
}

impl Drop for Node {
    fn drop(&mut self) {
        for child in [self.agent.take(), self.emulator.take()]
            .into_iter()
            .flatten()
        {
            let mut child = child;
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Node {
    fn new() -> Self {
        let ns = format!("bnt-dp-{}-agent", std::process::id());
        let dir = std::env::temp_dir().join(&ns);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        run(&["ip", "netns", "add", &ns]);
        let mut node = Node {
            ns,
            dir,
            emulator: None,
            agent: None,
        };
        let ns = node.ns.clone();
        run(&["ip", "-n", &ns, "link", "set", "lo", "up"]);
        run(&[
            "ip", "-n", &ns, "link", "add", "eth0", "type", "veth", "peer", "name", "eth0p",
        ]);
        run(&[
            "ip",
            "-n",
            &ns,
            "addr",
            "add",
            "192.0.2.1/24",
            "dev",
            "eth0",
        ]);
        run(&["ip", "-n", &ns, "link", "set", "eth0", "up"]);
        node.start_emulator();
        node
    }

    fn path(&self) -> PathBuf {
        PathBuf::from(format!("/run/netns/{}", self.ns))
    }

    fn kubeconfig(&self) -> PathBuf {
        self.dir.join("kubeconfig")
    }

    fn start_emulator(&mut self) {
        let sandbox = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/sandbox");
        let ready = self.dir.join("ready");
        let log = std::fs::File::create(self.dir.join("apiserver.log")).unwrap();
        let child = Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.ns,
                "python3",
                "-m",
                "bnsandbox.apiserver",
                "--port",
                "0",
                "--bookmark-interval",
                "1",
            ])
            .arg("--kubeconfig")
            .arg(self.kubeconfig())
            .arg("--ready-file")
            .arg(&ready)
            .current_dir(sandbox)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.emulator = Some(child);
        let start = Instant::now();
        while std::fs::read_to_string(&ready)
            .map(|s| s.trim().is_empty())
            .unwrap_or(true)
        {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "emulator not ready: {}",
                std::fs::read_to_string(self.dir.join("apiserver.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn start_agent(&mut self) {
        let log = std::fs::File::create(self.dir.join("agent.log")).unwrap();
        let child = Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.ns,
                env!("CARGO_BIN_EXE_bridgenet-agent"),
            ])
            .args([
                "--node-name",
                "n1",
                "--node-ip",
                "192.0.2.1",
                "--health-addr",
                "127.0.0.1:19091",
                "--resync-interval",
                "2s",
            ])
            .args(["--socket", self.dir.join("cni.sock").to_str().unwrap()])
            .args(["--state-dir", self.dir.join("state").to_str().unwrap()])
            .args(["--cni-bin-dir", self.dir.join("bin").to_str().unwrap()])
            .args(["--cni-conf-dir", self.dir.join("net.d").to_str().unwrap()])
            .env("KUBECONFIG", self.kubeconfig())
            .env("RUST_LOG", "info,bridgenet_agent=debug")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.agent = Some(child);
    }

    /// `kill -9` of the agent (the `ip netns exec` wrapper execs it, so the pid is the agent's).
    fn kill_agent(&mut self) {
        if let Some(mut child) = self.agent.take() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }

    fn agent_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("agent.log")).unwrap_or_default()
    }

    /// Runs kube client work inside the node's namespace, where the emulator listens.
    fn kube<F, Fut, T>(&self, work: F) -> T
    where
        F: FnOnce(kube::Client) -> Fut + Send + 'static,
        Fut: Future<Output = T>,
        T: Send + 'static,
    {
        let kubeconfig = self.kubeconfig();
        run_in(&self.path(), move || async move {
            let kc = Kubeconfig::read_from(&kubeconfig).unwrap();
            let config = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
                .await
                .unwrap();
            let client = kube::Client::try_from(config).unwrap();
            work(client).await
        })
        .unwrap()
    }

    fn links(&self) -> String {
        run(&["ip", "-n", &self.ns, "-o", "link", "show"])
    }

    fn ifindex(&self, name: &str) -> Option<String> {
        self.links()
            .lines()
            .find(|l| {
                l.split(": ")
                    .nth(1)
                    .map(|n| n.split('@').next() == Some(name))
                    .unwrap_or(false)
            })
            .and_then(|l| l.split(':').next().map(str::to_owned))
    }

    fn eventually(&self, what: &str, mut check: impl FnMut() -> bool) {
        let start = Instant::now();
        while !check() {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "timed out waiting for {what}; agent log:\n{}",
                self.agent_log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

fn nodebridge(network: &str, bridge: &str, subnet: &str, gw: &str, vni: u32) -> NodeBridge {
    let mut nb = NodeBridge::new(
        &format!("{network}.n1"),
        NodeBridgeSpec {
            network: network.into(),
            node: "n1".into(),
            bridge: bridge.into(),
            subnet: subnet.into(),
            gateway: gw.into(),
            gateway_mac: bridgenet_crds::names::gateway_mac(network),
            ipv6: None,
            blocks: vec![],
            exclude_addresses: vec![],
            mtu: 1450,
            vni,
            internal: false,
            masquerade: true,
            inter_pod_traffic: true,
            namespace_selector: None,
            peers: vec![bridgenet_crds::v1alpha1::Peer {
                node: "n2".into(),
                address: "192.0.2.2".into(),
                blocks: vec![],
            }],
        },
    );
    nb.metadata.labels = Some(bridgenet_crds::v1alpha1::node_bridge_labels(network, "n1"));
    nb
}

fn ready(nb: &NodeBridge) -> Option<(String, String)> {
    nb.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == "Ready")
        .map(|c| (c.status.clone(), c.reason.clone()))
}

fn get(node: &Node, name: &'static str) -> Option<NodeBridge> {
    node.kube(move |c| async move { Api::<NodeBridge>::all(c).get_opt(name).await.unwrap() })
}

#[test]
fn agent_realizes_repairs_refuses_survives_kill_and_tears_down() {
    if !is_root() {
        eprintln!("SKIP: the agent's root test needs root (network namespaces, netlink, nftables)");
        return;
    }
    let mut node = Node::new();
    node.kube(|c| async move {
        let crds: Api<CustomResourceDefinition> = Api::all(c.clone());
        let pp = PatchParams::apply("bridgenet-test").force();
        for crd in [bridgenet_crds::BridgeNetwork::crd(), NodeBridge::crd()] {
            crds.patch(&crd.name_any(), &pp, &Patch::Apply(&crd))
                .await
                .unwrap();
        }
        let api: Api<NodeBridge> = Api::all(c);
        api.create(
            &PostParams::default(),
            &nodebridge("net-a", "bnt-ag-a", "172.20.0.0/24", "172.20.0.1", 300),
        )
        .await
        .unwrap();
        // Another node's NodeBridge: not ours to realize.
        let mut other = nodebridge("net-a", "bnt-ag-x", "172.20.0.0/24", "172.20.0.1", 300);
        other.metadata.name = Some("net-a.n2".into());
        other.spec.node = "n2".into();
        other.metadata.labels = Some(bridgenet_crds::v1alpha1::node_bridge_labels("net-a", "n2"));
        api.create(&PostParams::default(), &other).await.unwrap();
    });
    // A foreign interface with a network's bridge name.
    run(&[
        "ip",
        "-n",
        &node.ns,
        "link",
        "add",
        "bnt-ag-t",
        "type",
        "veth",
        "peer",
        "name",
        "bnt-ag-tp",
    ]);
    node.start_agent();

    node.eventually("net-a Ready=True with the agent finalizer", || {
        get(&node, "net-a.n1").is_some_and(|nb| {
            ready(&nb) == Some(("True".into(), "Programmed".into()))
                && nb
                    .finalizers()
                    .contains(&bridgenet_crds::FINALIZER_AGENT.to_owned())
                && nb.status.as_ref().and_then(|s| s.observed_generation) == nb.metadata.generation
        })
    });
    let links = node.links();
    assert!(
        links.contains("bnt-ag-a") && links.contains("bnvx-300"),
        "{links}"
    );
    assert!(
        !links.contains("bnt-ag-x"),
        "another node's NodeBridge is not realized here: {links}"
    );
    assert!(get(&node, "net-a.n2").unwrap().finalizers().is_empty());
    assert!(
        run(&["ip", "netns", "exec", &node.ns, "nft", "list", "tables"]).contains("inet bridgenet")
    );
    let ns = node.ns.clone();
    let healthy = move || {
        Command::new("ip")
            .args([
                "netns",
                "exec",
                &ns,
                "busybox",
                "wget",
                "-q",
                "-O",
                "-",
                "http://127.0.0.1:19091/readyz",
            ])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false)
    };
    node.eventually("/readyz 200", healthy.clone());

    // A foreign interface holding the bridge name: refused, reported, untouched.
    node.kube(|c| async move {
        Api::<NodeBridge>::all(c)
            .create(
                &PostParams::default(),
                &nodebridge("net-t", "bnt-ag-t", "172.24.0.0/24", "172.24.0.1", 301),
            )
            .await
            .unwrap();
    });
    node.eventually("net-t Ready=False BridgeNameTaken", || {
        get(&node, "net-t.n1").and_then(|nb| ready(&nb))
            == Some(("False".into(), "BridgeNameTaken".into()))
    });
    let message = get(&node, "net-t.n1").unwrap().status.unwrap().conditions[0]
        .message
        .clone();
    assert!(
        message.contains("bnt-ag-t") && message.contains("not a bridge"),
        "{message}"
    );
    assert!(!run(&["ip", "-n", &node.ns, "link", "show", "bnt-ag-t"]).contains("master"));
    node.eventually("a Warning event for BridgeNameTaken", || {
        node.kube(|c| async move {
            Api::<CoreEvent>::all(c)
                .list(&ListParams::default())
                .await
                .unwrap()
                .items
                .iter()
                .any(|e| {
                    e.reason.as_deref() == Some("BridgeNameTaken")
                        && e.type_.as_deref() == Some("Warning")
                })
        })
    });
    let h = healthy.clone();
    node.eventually(
        "/readyz 503 while a NodeBridge is not programmed",
        move || !h(),
    );
    node.kube(|c| async move {
        Api::<NodeBridge>::all(c)
            .delete("net-t.n1", &DeleteParams::default())
            .await
            .unwrap();
    });
    node.eventually("net-t released", || get(&node, "net-t.n1").is_none());
    assert!(
        run(&["ip", "-n", &node.ns, "link", "show", "bnt-ag-t"]).contains("bnt-ag-t"),
        "foreign interface survives teardown"
    );

    // Drift: the bridge deleted by hand comes back (link monitor or resync).
    run(&["ip", "-n", &node.ns, "link", "del", "bnt-ag-a"]);
    node.eventually("the bridge to come back", || {
        node.ifindex("bnt-ag-a").is_some()
            && run(&["ip", "-n", &node.ns, "addr", "show", "dev", "bnt-ag-a"])
                .contains("172.20.0.1/24")
            && run(&["ip", "-n", &node.ns, "link", "show", "bnvx-300"]).contains("master bnt-ag-a")
    });
    // Rules deleted by hand come back too.
    run(&[
        "ip",
        "netns",
        "exec",
        &node.ns,
        "nft",
        "delete",
        "table",
        "bridge",
        "bridgenet",
    ]);
    node.eventually("the bridge table to come back", || {
        run(&["ip", "netns", "exec", &node.ns, "nft", "list", "tables"])
            .contains("bridge bridgenet")
    });

    // kill -9 and restart: the bridge is the same interface afterwards (never recreated).
    let before = node.ifindex("bnt-ag-a").unwrap();
    node.kill_agent();
    node.start_agent();
    node.eventually("/readyz after restart", healthy);
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        node.ifindex("bnt-ag-a"),
        Some(before),
        "restart must not recreate a matching bridge"
    );
    assert!(
        !node.agent_log().contains("network programmed"),
        "restart made link changes:\n{}",
        node.agent_log()
    );

    // Deletion: finalizer released only after teardown; nothing of bridgenet left.
    node.kube(|c| async move {
        Api::<NodeBridge>::all(c.clone())
            .delete("net-a.n1", &DeleteParams::default())
            .await
            .unwrap();
        Api::<NodeBridge>::all(c)
            .delete("net-a.n2", &DeleteParams::default())
            .await
            .unwrap();
    });
    node.eventually("net-a released", || get(&node, "net-a.n1").is_none());
    let links = node.links();
    assert!(
        !links.contains("bnt-ag-a") && !links.contains("bnvx-300") && !links.contains("bridgenet:"),
        "{links}"
    );
    assert!(
        !run(&["ip", "netns", "exec", &node.ns, "nft", "list", "tables"]).contains("bridgenet")
    );
    node.kill_agent();
}
