//! Crash safety of pod attachment: the agent is a child process that is aborted at every
//! injected step of ADD and DEL (`BRIDGENET_FAILPOINT`) and `kill -9`ed at random instants,
//! then restarted on the same state directory. Afterwards, once the runtime has done what it
//! does (DEL after a failed call, GC), no address is held twice, none leaks, and no veth is
//! left over. Also: a pod whose netns vanished (node reboot, force delete) is collected by GC.
//!
//! `harness = false`: `main` is either the test driver or, when `BNT_CNI_AGENT` is set, the
//! agent child it starts. Needs root, so it behaves like an `#[ignore = "needs root"]` test: it
//! runs only when asked for ignored tests (`--ignored`/`--include-ignored`, as `make root-test`
//! does) and then fails without root. Namespaces are prefixed `bnt-cni-`.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod cni_support;
mod root_support;

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::PathBuf;
use std::process::{Child, Command};
use std::time::Duration;

use bridgenet_agent::cni::engine::failpoint;
use bridgenet_agent::ipam::Ipam;
use cni_support::{
    Call, InProcessAgent, Netns, StaticDirectory, TestNetwork, World, chained_config, run_plugin,
};
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize)]
struct ChildConfig {
    state: PathBuf,
    node_netns: PathBuf,
    world: World,
}

fn main() {
    if let Ok(config) = std::env::var("BNT_CNI_AGENT") {
        run_child(serde_json::from_str(&config).unwrap());
        return;
    }
    if std::env::args().any(|a| a == "--list") {
        // `cargo test -- --list` from tooling: this suite is one test.
        println!("cni_crash: test");
        return;
    }
    if !std::env::args().any(|a| a == "--ignored" || a == "--include-ignored") {
        println!("test cni_crash ... ignored, needs root");
        return;
    }
    root_support::require_root();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        failpoints().await;
        random_kills().await;
        vanished_netns_is_collected().await;
    });
    println!("cni_crash: ok");
}

fn run_child(config: ChildConfig) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let _agent = InProcessAgent::start_at(
            StaticDirectory::new(config.world),
            &config.state,
            config.node_netns,
        );
        std::future::pending::<()>().await;
    });
}

/// A test node: netns with the bridge, a state dir, and the agent child.
struct Node {
    node: Netns,
    state: tempfile::TempDir,
    world: World,
    child: Option<Child>,
}

impl Node {
    fn new(tag: &str, third: u8, pods: usize) -> Self {
        let node = Netns::new(tag);
        let net = TestNetwork::new("red", third);
        net.create_bridge(&node);
        let world = World::with_pods(net.spec(), "default", pods);
        Self {
            node,
            state: tempfile::tempdir().unwrap(),
            world,
            child: None,
        }
    }

    fn socket(&self) -> PathBuf {
        self.state.path().join("cni.sock")
    }

    fn start(&mut self, failpoint: Option<&str>) {
        let config = ChildConfig {
            state: self.state.path().to_owned(),
            node_netns: self.node.path(),
            world: self.world.clone(),
        };
        let _ = std::fs::remove_file(self.socket());
        let mut cmd = Command::new(std::env::current_exe().unwrap());
        cmd.env("BNT_CNI_AGENT", serde_json::to_string(&config).unwrap());
        if let Some(fp) = failpoint {
            cmd.env("BRIDGENET_FAILPOINT", fp);
        }
        self.child = Some(cmd.spawn().unwrap());
        // Serving once the socket exists (bound before serving starts).
        for _ in 0..500 {
            if self.socket().exists() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("agent child did not start");
    }

    /// `kill -9` (a no-op if it already aborted).
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn call(&self, command: &'static str, pod_index: usize, pod: &Netns) -> Call {
        Call::new(
            command,
            &format!("sandbox-{pod_index}"),
            pod.path().to_str().unwrap(),
            &format!("default/p{pod_index}"),
            chained_config(&self.socket(), "1.1.0", None),
        )
    }

    /// Waits for the agent to die by itself (at its failpoint).
    fn expect_abort(&mut self, fp: &str) {
        let child = self.child.as_mut().expect("an agent runs");
        for _ in 0..500 {
            if child.try_wait().unwrap().is_some() {
                self.child = None;
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("{fp}: the agent did not abort at its failpoint");
    }

    /// The journal's view once the agent has recovered: after a `kill -9` (which it must
    /// survive) it is started again and answers a call, so that it has finished the DELs it
    /// had answered, then it is stopped and the journal is read.
    async fn allocations(&mut self) -> BTreeMap<String, IpAddr> {
        self.kill();
        self.start(None);
        let status = Call::new(
            "STATUS",
            "",
            "",
            "",
            chained_config(&self.socket(), "1.1.0", None),
        );
        let answer = run_plugin(&status).await;
        assert!(answer.ok, "STATUS after restart: {}", answer.raw);
        self.kill();
        let ipam = Ipam::open(self.state.path()).unwrap();
        let mut out = BTreeMap::new();
        for a in ipam.all() {
            assert!(
                out.insert(a.container_id.clone(), a.ip).is_none(),
                "one address per sandbox on one network"
            );
        }
        out
    }

    fn host_veths(&self) -> BTreeSet<String> {
        self.node
            .links()
            .into_iter()
            .filter(|l| l.starts_with("bnv"))
            .collect()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Invariants once the runtime has cleaned up: every allocation belongs to a sandbox that is
/// attached, carries exactly its pod's address, each address once, and each attached pod has
/// exactly one host veth.
async fn assert_consistent(node: &mut Node, attached: &BTreeMap<usize, &Netns>) {
    let allocs = node.allocations().await;
    let expected: BTreeSet<String> = attached.keys().map(|i| format!("sandbox-{i}")).collect();
    assert_eq!(
        allocs.keys().cloned().collect::<BTreeSet<_>>(),
        expected,
        "allocations = attached sandboxes"
    );
    let ips: BTreeSet<IpAddr> = allocs.values().copied().collect();
    assert_eq!(ips.len(), allocs.len(), "no address held twice");
    for (i, pod) in attached {
        assert_eq!(
            pod.ipv4("net1"),
            allocs.get(&format!("sandbox-{i}")).copied(),
            "pod {i} carries its address"
        );
    }
    assert_eq!(
        node.host_veths().len(),
        attached.len(),
        "one host veth per attachment, none stray"
    );
}

async fn failpoints() {
    for (round, fp) in failpoint::ALL.iter().enumerate() {
        let mut node = Node::new(&format!("fp{round}"), 40 + round as u8, 2);
        let p0 = Netns::new(&format!("fp{round}-p0"));
        let p1 = Netns::new(&format!("fp{round}-p1"));
        node.start(Some(fp));
        let add0 = node.call("ADD", 0, &p0);
        let is_add_step = fp.starts_with("add");
        let first = run_plugin(&add0).await;
        if is_add_step {
            assert!(!first.ok, "{fp}: the agent died mid-ADD");
            assert_eq!(first.code(), 11, "{fp}: try again later: {}", first.raw);
        } else {
            assert!(
                first.ok,
                "{fp}: ADD before the DEL failpoint: {}",
                first.raw
            );
            let del = run_plugin(&add0.with_command("DEL")).await;
            assert!(!del.ok, "{fp}: the agent died mid-DEL");
        }
        node.kill();
        node.start(None);
        // Whatever p0 kept, a new pod never gets the same address.
        let add1 = node.call("ADD", 1, &p1);
        let second = run_plugin(&add1).await;
        assert!(second.ok, "{fp}: ADD after restart: {}", second.raw);
        if let (Some(a0), Some(a1)) = (p0.ipv4("net1"), p1.ipv4("net1")) {
            assert_ne!(a0, a1, "{fp}: address handed out twice");
        }
        // The runtime retries the failed call's cleanup: DEL.
        let del0 = run_plugin(&add0.with_command("DEL")).await;
        assert!(del0.ok, "{fp}: DEL after restart: {}", del0.raw);
        assert!(p0.ipv4("net1").is_none(), "{fp}: p0's interface gone");
        assert_consistent(&mut node, &BTreeMap::from([(1, &p1)])).await;
        node.start(None);
        assert!(run_plugin(&add1.with_command("DEL")).await.ok);
        assert_consistent(&mut node, &BTreeMap::new()).await;
        println!("cni_crash: failpoint {fp}: ok");
    }
    // After its answer a DEL has succeeded: the runtime never calls it again. Killed anywhere
    // in the rest, the agent finishes it when it starts: the interface goes, the address is
    // free, and nothing is held twice in between.
    for (round, fp) in failpoint::AFTER_DEL_ANSWER.iter().enumerate() {
        let mut node = Node::new(&format!("fa{round}"), 60 + round as u8, 2);
        let p0 = Netns::new(&format!("fa{round}-p0"));
        let p1 = Netns::new(&format!("fa{round}-p1"));
        node.start(Some(fp));
        let add0 = node.call("ADD", 0, &p0);
        let first = run_plugin(&add0).await;
        assert!(first.ok, "{fp}: ADD: {}", first.raw);
        let del = run_plugin(&add0.with_command("DEL")).await;
        assert!(
            del.ok,
            "{fp}: the DEL answered before the kill: {}",
            del.raw
        );
        node.expect_abort(fp);
        node.start(None);
        let add1 = node.call("ADD", 1, &p1);
        let second = run_plugin(&add1).await;
        assert!(second.ok, "{fp}: ADD after restart: {}", second.raw);
        // Finished before the ADD was served: p0's interface is gone and its address free
        // (p1 may well have it now).
        assert!(p0.ipv4("net1").is_none(), "{fp}: p0's interface gone");
        assert_consistent(&mut node, &BTreeMap::from([(1, &p1)])).await;
        node.start(None);
        assert!(run_plugin(&add1.with_command("DEL")).await.ok);
        assert_consistent(&mut node, &BTreeMap::new()).await;
        println!("cni_crash: failpoint {fp} (after the DEL's answer): ok");
    }
}

async fn random_kills() {
    const ROUNDS: usize = 24;
    let mut node = Node::new("rk", 50, ROUNDS);
    let pods: Vec<Netns> = (0..ROUNDS)
        .map(|i| Netns::new(&format!("rk-p{i}")))
        .collect();
    let mut attached: BTreeMap<usize, &Netns> = BTreeMap::new();
    let mut rng = fastrand::Rng::with_seed(0x5eed);
    // How often the kill hit a call in flight; if never, the rounds proved nothing.
    let mut interrupted = 0;
    for (i, pod) in pods.iter().enumerate() {
        node.start(None);
        // Every third round kills a DEL of an earlier pod instead of an ADD.
        let victim = attached.keys().next().copied().filter(|_| i % 3 == 2);
        let call = match victim {
            Some(v) => node.call("DEL", v, attached[&v]),
            None => node.call("ADD", i, pod),
        };
        let delay = Duration::from_micros(rng.u64(0..12_000));
        let task = tokio::spawn(async move { run_plugin(&call).await });
        tokio::time::sleep(delay).await;
        node.kill();
        let answer = task.await.unwrap();
        node.start(None);
        interrupted += usize::from(!answer.ok);
        match (victim, answer.ok) {
            (None, true) => {
                attached.insert(i, pod);
            }
            (None, false) => {
                // A failed ADD: the runtime calls DEL.
                assert!(run_plugin(&node.call("DEL", i, pod)).await.ok);
            }
            (Some(v), ok) => {
                if !ok {
                    assert!(run_plugin(&node.call("DEL", v, attached[&v])).await.ok);
                }
                attached.remove(&v);
            }
        }
        assert_consistent(&mut node, &attached).await;
    }
    node.start(None);
    for (i, pod) in std::mem::take(&mut attached) {
        assert!(run_plugin(&node.call("DEL", i, pod)).await.ok);
    }
    assert_consistent(&mut node, &BTreeMap::new()).await;
    assert!(
        interrupted > 0,
        "no kill interrupted a call: the delays are too long"
    );
    println!("cni_crash: {ROUNDS} random kills ({interrupted} interrupted a call): ok");
}

async fn vanished_netns_is_collected() {
    let mut node = Node::new("gone", 51, 2);
    node.start(None);
    let p0 = Netns::new("gone-p0");
    let p1 = Netns::new("gone-p1");
    assert!(run_plugin(&node.call("ADD", 0, &p0)).await.ok);
    assert!(run_plugin(&node.call("ADD", 1, &p1)).await.ok);
    // Node reboot / force delete: the pod's netns (and with it the veth pair) disappears and the
    // agent restarts; no DEL ever comes.
    drop(p0);
    node.kill();
    node.start(None);
    let mut gc = chained_config(&node.socket(), "1.1.0", None);
    gc["cni.dev/valid-attachments"] =
        serde_json::json!([{"containerID": "sandbox-1", "ifname": "eth0"}]);
    let answer = run_plugin(&Call::new("GC", "", "", "x", gc)).await;
    assert!(answer.ok, "{}", answer.raw);
    assert_consistent(&mut node, &BTreeMap::from([(1, &p1)])).await;
    // DEL with an empty netns (containerd's RemovePodSandbox) of a vanished sandbox succeeds.
    node.start(None);
    let mut del = node.call("DEL", 0, &p1);
    del.netns = String::new();
    assert!(run_plugin(&del).await.ok);
    println!("cni_crash: vanished netns: ok");
}
