//! CNI call latency of bridgenet next to the reference chain, in one run on one machine.
//!
//! N pods (default 200, `BNT_BENCH_PODS`) are attached sequentially, detached, attached with 4
//! in parallel, detached — once through the real `bridgenet` plugin talking to an agent (a child
//! process serving the socket with this crate's engine), once through Debian's reference
//! `bridge` + `host-local` (ipMasq on). Every call is timed from exec to exit, as a runtime sees
//! it. Also: the agent's RSS with N endpoints and the plugin's peak RSS.
//!
//! Root only; everything happens in network namespaces prefixed `bnt-cni-bench`. Run with
//! `cargo bench -p bridgenet-agent --bench cni` or `scripts/bench-cni.sh`;
//! `BNT_BENCH_ONLY=bridgenet` leaves the reference out (for profiling: no ratios then).
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

#[path = "../tests/cni_support/mod.rs"]
mod cni_support;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cni_support::{Netns, StaticDirectory, TestNetwork, World};
use serde_json::{Value, json};

const REFERENCE_DIR: &str = "/usr/lib/cni";

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    if let Ok(state) = std::env::var("BNT_BENCH_AGENT") {
        run_agent(Path::new(&state));
        return;
    }
    if let Ok(spec) = std::env::var("BNT_BENCH_PLUGIN_RSS") {
        plugin_rss_child(&spec);
        return;
    }
    if !std::fs::read_to_string("/proc/self/status").is_ok_and(|s| {
        s.lines()
            .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(2) == Some("0"))
    }) {
        eprintln!("SKIP: the CNI bench needs root (network namespaces)");
        return;
    }
    if !Path::new(REFERENCE_DIR).join("bridge").exists() {
        eprintln!(
            "SKIP: {REFERENCE_DIR}/bridge missing (apt-get install containernetworking-plugins)"
        );
        return;
    }
    let pods: usize = std::env::var("BNT_BENCH_PODS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(200);
    run(pods);
}

fn network() -> TestNetwork {
    let mut net = TestNetwork::new("bench", 0);
    net.bridge = "bntbench".into();
    net.subnet = "172.28.0.0/16".into();
    net.gateway = "172.28.0.1".into();
    net.blocks = vec!["172.28.0.0/22".into()];
    net
}

/// The agent child: serves the socket in the node namespace this process was started in.
fn run_agent(state: &Path) {
    let pods: usize = std::env::var("BNT_BENCH_PODS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(200);
    let world = World::with_pods(network().spec(), "bench", pods);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let dir = StaticDirectory::new(world);
        let engine = Arc::new(bridgenet_agent::cni::engine::Engine::new(dir, state, None).unwrap());
        let listener = bridgenet_agent::cni::server::bind(&state.join("cni.sock")).unwrap();
        bridgenet_agent::cni::server::serve(listener, engine)
            .await
            .unwrap();
    });
}

struct Flavor {
    name: &'static str,
    binary: PathBuf,
    config: Value,
    /// CNI_ARGS needed (pod identity) and CNI_IFNAME.
    ifname: &'static str,
}

fn exec(flavor: &Flavor, command: &str, pod: usize, netns: &Path) -> Duration {
    let started = Instant::now();
    let mut child = Command::new(&flavor.binary)
        .env_clear()
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", format!("bench-{pod}"))
        .env("CNI_NETNS", netns)
        .env("CNI_IFNAME", flavor.ifname)
        .env("CNI_PATH", REFERENCE_DIR)
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env(
            "CNI_ARGS",
            format!("IgnoreUnknown=1;K8S_POD_NAMESPACE=bench;K8S_POD_NAME=p{pod};K8S_POD_INFRA_CONTAINER_ID=bench-{pod}"),
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(flavor.config.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let took = started.elapsed();
    assert!(
        out.status.success(),
        "{} {command} pod {pod}: {}{}",
        flavor.name,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    took
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

#[derive(Default)]
struct Times {
    add: Vec<Duration>,
    del: Vec<Duration>,
    /// Until every pod was attached.
    add_wall: Duration,
}

fn phase(flavor: &Flavor, pods: &[Netns], parallel: usize) -> Times {
    let (add, add_wall) = one_command(flavor, "ADD", pods, parallel);
    let (del, _) = one_command(flavor, "DEL", pods, parallel);
    Times { add, del, add_wall }
}

fn ms(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64() * 1000.0)
}

fn vm_rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// Child: runs one ADD and one DEL of the plugin and prints its children's peak RSS.
fn plugin_rss_child(spec: &str) {
    let v: Value = serde_json::from_str(spec).unwrap();
    let flavor = Flavor {
        name: "bridgenet",
        binary: PathBuf::from(env!("CARGO_BIN_EXE_bridgenet")),
        config: v["config"].clone(),
        ifname: "eth0",
    };
    let netns = PathBuf::from(v["netns"].as_str().unwrap());
    exec(&flavor, "ADD", 0, &netns);
    exec(&flavor, "DEL", 0, &netns);
    let usage =
        nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_CHILDREN).unwrap();
    println!("{}", usage.max_rss());
}

fn run(n: usize) {
    let node = Netns::new("bench-node");
    // Everything below runs in the node namespace: the reference plugins create their bridge
    // and iptables rules where they run, and the agent child inherits it as its host.
    nix::sched::setns(
        std::fs::File::open(node.path()).unwrap(),
        nix::sched::CloneFlags::CLONE_NEWNET,
    )
    .unwrap();
    let net = network();
    net.create_bridge(&node);
    let pods: Vec<Netns> = (0..n).map(|i| Netns::new(&format!("bench-p{i}"))).collect();

    let state = tempfile::tempdir().unwrap();
    let socket = state.path().join("cni.sock");
    let mut agent = Command::new(std::env::current_exe().unwrap())
        .env("BNT_BENCH_AGENT", state.path())
        // As the chart's DaemonSet runs the agent (charts/bridgenet/templates/agent-daemonset.yaml).
        .env("MALLOC_ARENA_MAX", "2")
        .env("BNT_BENCH_PODS", n.to_string())
        .spawn()
        .unwrap();
    for _ in 0..500 {
        if socket.exists() {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let ours = Flavor {
        name: "bridgenet",
        binary: PathBuf::from(env!("CARGO_BIN_EXE_bridgenet")),
        config: json!({"cniVersion": "1.1.0", "name": "bench", "type": "bridgenet", "socket": socket}),
        ifname: "eth0",
    };
    let reference = Flavor {
        name: "bridge+host-local",
        binary: Path::new(REFERENCE_DIR).join("bridge"),
        config: json!({"cniVersion": "1.0.0", "name": "bench-ref", "type": "bridge", "bridge": "bntref0",
            "isGateway": true, "ipMasq": true,
            "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.88.0.0/16"}]],
                     "dataDir": state.path().join("host-local")}}),
        ifname: "eth1",
    };
    // Warm-up (page cache, first bridge creation) outside the figures.
    for f in [&ours, &reference] {
        exec(f, "ADD", 0, &pods[0].path());
        exec(f, "DEL", 0, &pods[0].path());
    }
    let mut rows = Vec::new();
    let mut agent_rss = 0;
    // BNT_BENCH_ONLY=bridgenet skips the reference (profiling runs); the report needs both.
    let only = std::env::var("BNT_BENCH_ONLY").ok();
    for parallel in [1usize, 4] {
        for f in [&ours, &reference] {
            if only.as_deref().is_some_and(|o| o != f.name) {
                continue;
            }
            if f.name == "bridgenet" && parallel == 1 {
                // RSS with N endpoints: attach, measure, then time the detach as usual.
                let (add, add_wall) = one_command(f, "ADD", &pods, parallel);
                agent_rss = vm_rss_kib(agent.id());
                let (del, _) = one_command(f, "DEL", &pods, parallel);
                rows.push((f.name, parallel, Times { add, del, add_wall }));
            } else {
                rows.push((f.name, parallel, phase(f, &pods, parallel)));
            }
        }
    }
    let spec = json!({"config": ours.config, "netns": pods[0].path()}).to_string();
    let out = Command::new(std::env::current_exe().unwrap())
        .env("BNT_BENCH_PLUGIN_RSS", spec)
        .output()
        .unwrap();
    let plugin_rss: u64 = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or(0);
    let _ = agent.kill();
    let _ = agent.wait();

    println!("CNI latency, {n} pods, ms (exec to exit, as the runtime sees it)");
    println!(
        "{:<20} {:>3} {:>9} {:>9} {:>9} {:>9} {:>13}",
        "plugin", "par", "ADD p50", "ADD p95", "DEL p50", "DEL p95", "all attached"
    );
    for (name, par, t) in &rows {
        println!(
            "{:<20} {:>3} {:>9} {:>9} {:>9} {:>9} {:>11} s",
            name,
            par,
            ms(percentile(&t.add, 0.5)),
            ms(percentile(&t.add, 0.95)),
            ms(percentile(&t.del, 0.5)),
            ms(percentile(&t.del, 0.95)),
            format!("{:.2}", t.add_wall.as_secs_f64())
        );
    }
    for par in [1usize, 4] {
        let get = |name: &str| rows.iter().find(|r| r.0 == name && r.1 == par);
        let (Some(o), Some(r)) = (get("bridgenet"), get("bridge+host-local")) else {
            continue;
        };
        let ratio = |a: &[Duration], b: &[Duration], p| {
            percentile(a, p).as_secs_f64() / percentile(b, p).as_secs_f64()
        };
        println!(
            "ratio bridgenet/reference, parallel {par}: ADD p50 {:.2} p95 {:.2}, DEL p50 {:.2} p95 {:.2}",
            ratio(&o.2.add, &r.2.add, 0.5),
            ratio(&o.2.add, &r.2.add, 0.95),
            ratio(&o.2.del, &r.2.del, 0.5),
            ratio(&o.2.del, &r.2.del, 0.95)
        );
    }
    println!(
        "agent RSS with {n} endpoints: {:.1} MiB",
        agent_rss as f64 / 1024.0
    );
    println!("plugin peak RSS: {:.1} MiB", plugin_rss as f64 / 1024.0);
}

/// Every pod's call of `command`, `parallel` at a time: each call's time, sorted, and the
/// time until the last one returned.
fn one_command(
    flavor: &Flavor,
    command: &str,
    pods: &[Netns],
    parallel: usize,
) -> (Vec<Duration>, Duration) {
    let started = Instant::now();
    let times = Mutex::new(Vec::new());
    let next = std::sync::atomic::AtomicUsize::new(0);
    std::thread::scope(|s| {
        for _ in 0..parallel {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    if i >= pods.len() {
                        break;
                    }
                    let took = exec(flavor, command, i, &pods[i].path());
                    times.lock().unwrap().push(took);
                }
            });
        }
    });
    let wall = started.elapsed();
    let mut t = times.into_inner().unwrap();
    t.sort();
    (t, wall)
}
