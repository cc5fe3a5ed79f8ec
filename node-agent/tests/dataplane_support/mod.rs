//! Shared harness of the agent's root tests and benches: a node network namespace with the
//! sandbox's Kubernetes API emulator and the agent binary running inside it.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bridgenet_agent::dataplane::netns::run_in;
use bridgenet_crds::{NodeBridge, NodeBridgeSpec};
use kube::config::{KubeConfigOptions, Kubeconfig};

/// bridgenet's CRDs applied to the emulator, as `kubectl apply` would.
pub async fn install_crds(c: &kube::Client) {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    use kube::ResourceExt;
    use kube::api::{Api, Patch, PatchParams};
    let crds: Api<CustomResourceDefinition> = Api::all(c.clone());
    let pp = PatchParams::apply("bridgenet-test").force();
    for crd in bridgenet_crds::crdgen::all() {
        crds.patch(&crd.name_any(), &pp, &Patch::Apply(&crd))
            .await
            .unwrap();
    }
}

/// Runs a command to completion; panics with its output unless it succeeds.
pub fn run(args: &[&str]) -> String {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("{args:?}: {e}"));
    assert!(
        out.status.success(),
        "{args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A NodeBridge spec as the operator writes it with default flags (masquerade and inter-pod
/// traffic on, MTU 1450, the network's gateway MAC, no blocks), for `node` with `peers` as
/// (node, underlay address): the fixture the data plane tests and benches start from.
pub fn spec(
    network: &str,
    bridge: &str,
    subnet: &str,
    gw: &str,
    vni: u32,
    node: &str,
    peers: &[(&str, &str)],
) -> NodeBridgeSpec {
    NodeBridgeSpec {
        network: network.into(),
        node: node.into(),
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
        dns: true,
        sticky_addresses: false,
        namespace_selector: None,
        peers: peers
            .iter()
            .map(|(n, a)| bridgenet_crds::v1alpha1::Peer {
                node: (*n).into(),
                address: (*a).into(),
                blocks: vec![],
            })
            .collect(),
    }
}

/// The node namespace, the emulator and the agent; all stopped and removed on drop.
pub struct Node {
    /// Namespace name.
    pub ns: String,
    dir: PathBuf,
    agent_bin: String,
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
    pub fn new(tag: &str, agent_bin: &str) -> Self {
        let ns = format!("bnt-dp-{}-{tag}", std::process::id());
        let dir = std::env::temp_dir().join(&ns);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        run(&["ip", "netns", "add", &ns]);
        let mut node = Node {
            ns,
            dir,
            agent_bin: agent_bin.to_owned(),
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

    pub fn path(&self) -> PathBuf {
        PathBuf::from(format!("/run/netns/{}", self.ns))
    }

    pub fn kubeconfig(&self) -> PathBuf {
        self.dir.join("kubeconfig")
    }

    pub fn start_emulator(&mut self) {
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

    pub fn start_agent(&mut self) {
        self.start_agent_with_env(&[]);
    }

    /// Installs the CRDs and creates `nb`: a node with one network, as the crash tests start.
    pub fn create_node_bridge(&self, nb: NodeBridge) {
        self.kube(|c| async move {
            install_crds(&c).await;
            kube::Api::<NodeBridge>::all(c)
                .create(&kube::api::PostParams::default(), &nb)
                .await
                .unwrap();
        });
    }

    /// Waits for the agent armed with failpoint `fp` to abort (it must, within 20 s).
    pub fn expect_abort(&mut self, fp: &str) {
        let status = self
            .wait_agent_exit(Duration::from_secs(20))
            .unwrap_or_else(|| panic!("{fp}: the failpoint never fired:\n{}", self.agent_log()));
        assert!(!status.success(), "{fp}: the agent aborted");
    }

    /// (Re)starts the agent, the previous one killed first, armed with `failpoint` (see
    /// `bridgenet_agent::cni::engine::failpoint`) if given, and waits until it serves CNI on
    /// `cni.sock` in [`Node::dir`].
    pub fn restart_agent(&mut self, failpoint: Option<&str>) {
        self.kill_agent();
        let socket = self.dir().join("cni.sock");
        let _ = std::fs::remove_file(&socket);
        match failpoint {
            Some(fp) => self.start_agent_with_env(&[("BRIDGENET_FAILPOINT", fp)]),
            None => self.start_agent(),
        }
        self.eventually("the agent's CNI socket", || socket.exists());
    }

    /// Starts the agent with extra environment variables (e.g. the downward API's
    /// `POD_NAME`/`POD_NAMESPACE`). The log of this run replaces the previous one.
    pub fn start_agent_with_env(&mut self, env: &[(&str, &str)]) {
        let log = std::fs::File::create(self.dir.join("agent.log")).unwrap();
        let child = Command::new("ip")
            .args(["netns", "exec", &self.ns, &self.agent_bin])
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
            // Never the host's container runtime: the node under test has none.
            .args([
                "--cri-endpoint",
                &format!("unix://{}", self.dir.join("no-cri.sock").display()),
            ])
            .env("KUBECONFIG", self.kubeconfig())
            .env("RUST_LOG", "info,bridgenet_agent=debug")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.agent = Some(child);
    }

    /// `kill -9` of the agent (the `ip netns exec` wrapper execs it, so the pid is the agent's).
    pub fn kill_agent(&mut self) {
        if let Some(mut child) = self.agent.take() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }

    /// Waits up to `timeout` for the agent to exit by itself (an armed failpoint aborts it);
    /// returns how it ended, or `None` if it still runs.
    pub fn wait_agent_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let start = Instant::now();
        while start.elapsed() < timeout {
            let child = self.agent.as_mut()?;
            if let Some(status) = child.try_wait().unwrap() {
                self.agent = None;
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// SIGTERM to the agent (what the kubelet sends) and its exit, within 30 s.
    pub fn terminate_agent(&mut self) -> std::process::ExitStatus {
        let mut child = self.agent.take().expect("no agent running");
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap();
        let start = Instant::now();
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            if start.elapsed() > Duration::from_secs(30) {
                let _ = child.kill();
                let _ = child.wait();
                panic!("agent did not exit on SIGTERM; log:\n{}", self.agent_log());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The node's scratch directory (state, socket, CNI dirs, logs).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Pid of the running agent (`ip netns exec` execs it, so the child's pid is the agent's).
    pub fn agent_pid(&self) -> Option<u32> {
        self.agent.as_ref().map(Child::id)
    }

    pub fn agent_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("agent.log")).unwrap_or_default()
    }

    /// Runs kube client work inside the node's namespace, where the emulator listens.
    pub fn kube<F, Fut, T>(&self, work: F) -> T
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

    pub fn links(&self) -> String {
        run(&["ip", "-n", &self.ns, "-o", "link", "show"])
    }

    pub fn ifindex(&self, name: &str) -> Option<String> {
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

    pub fn eventually(&self, what: &str, mut check: impl FnMut() -> bool) {
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

pub fn nodebridge(network: &str, bridge: &str, subnet: &str, gw: &str, vni: u32) -> NodeBridge {
    let mut nb = NodeBridge::new(
        &format!("{network}.n1"),
        spec(
            network,
            bridge,
            subnet,
            gw,
            vni,
            "n1",
            &[("n2", "192.0.2.2")],
        ),
    );
    nb.metadata.labels = Some(bridgenet_crds::v1alpha1::node_bridge_labels(network, "n1"));
    nb
}
