//! Shared fixtures of the CNI test suites: network namespaces (prefix `bnt-cni-`) that clean up
//! on drop, a "node" namespace with a bridge, a fixed [`Directory`], an agent (in-process or in
//! a child process that a test can `kill -9`), and running the real plugin binary.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    dead_code,
    missing_docs,
    unreachable_pub
)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};

use bridgenet_agent::cni::engine::{Directory, Engine, Notice, PodInfo, PodRef};
use bridgenet_agent::cni::server;
use bridgenet_crds::{NodeBridgeSpec, ResolvedNodeBridge, resolve_node_bridge};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// Runs `ip` with arguments, panicking with its stderr on failure.
pub fn ip(args: &[&str]) -> String {
    let out = Command::new("ip").args(args).output().expect("running ip");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `ip` that may fail (observation, cleanup).
pub fn ip_ok(args: &[&str]) -> Option<String> {
    let out = Command::new("ip").args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A network namespace deleted on drop.
pub struct Netns {
    /// Its name (under /run/netns).
    pub name: String,
}

impl Netns {
    /// Creates `bnt-cni-<tag>-<pid>`.
    pub fn new(tag: &str) -> Self {
        let name = format!("bnt-cni-{tag}-{}", std::process::id());
        let _ = ip_ok(&["netns", "del", &name]);
        ip(&["netns", "add", &name]);
        ip(&["-n", &name, "link", "set", "lo", "up"]);
        Self { name }
    }

    /// Path of the namespace file.
    pub fn path(&self) -> PathBuf {
        PathBuf::from(format!("/run/netns/{}", self.name))
    }

    /// `ip -n <ns> args`.
    pub fn ip(&self, args: &[&str]) -> String {
        let mut all = vec!["-n", self.name.as_str()];
        all.extend_from_slice(args);
        ip(&all)
    }

    /// `ip -n <ns> args` that may fail.
    pub fn ip_ok(&self, args: &[&str]) -> Option<String> {
        let mut all = vec!["-n", self.name.as_str()];
        all.extend_from_slice(args);
        ip_ok(&all)
    }

    /// Runs a command inside the namespace; returns whether it succeeded.
    pub fn exec(&self, cmd: &[&str]) -> bool {
        Command::new("ip")
            .args(["netns", "exec", &self.name])
            .args(cmd)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    }

    /// Names of the links in the namespace.
    pub fn links(&self) -> Vec<String> {
        let out = self.ip(&["-j", "link", "show"]);
        let v: Value = serde_json::from_str(&out).unwrap();
        v.as_array()
            .unwrap()
            .iter()
            .filter_map(|l| l["ifname"].as_str().map(str::to_owned))
            .collect()
    }

    /// `ip -j addr show dev` parsed.
    pub fn link_json(&self, dev: &str) -> Option<Value> {
        let out = self.ip_ok(&["-j", "-d", "addr", "show", "dev", dev])?;
        let v: Value = serde_json::from_str(&out).ok()?;
        v.as_array()?.first().cloned()
    }

    /// The IPv4 address of `dev` in this namespace, as the kernel has it.
    pub fn ipv4(&self, dev: &str) -> Option<std::net::IpAddr> {
        self.link_json(dev)?["addr_info"]
            .as_array()?
            .iter()
            .find(|a| a["family"] == "inet")
            .and_then(|a| a["local"].as_str()?.parse().ok())
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = ip_ok(&["netns", "del", &self.name]);
    }
}

/// A test network: one bridge in the node namespace.
#[derive(Clone, Debug)]
pub struct TestNetwork {
    pub name: String,
    pub bridge: String,
    pub subnet: String,
    pub gateway: String,
    pub blocks: Vec<String>,
    pub mtu: u32,
    pub namespace_selector: Option<Value>,
    /// IPv6 (subnet, gateway) for dual stack; its block goes in `blocks`.
    pub ipv6: Option<(String, String)>,
}

impl TestNetwork {
    /// `name` on `172.29.<third>.0/24`, bridge `bntc<third>`, whole /24 as the node's block.
    pub fn new(name: &str, third: u8) -> Self {
        Self {
            name: name.into(),
            bridge: format!("bntc{third}"),
            subnet: format!("172.29.{third}.0/24"),
            gateway: format!("172.29.{third}.1"),
            blocks: vec![format!("172.29.{third}.0/24")],
            mtu: 1400,
            namespace_selector: None,
            ipv6: None,
        }
    }

    /// The NodeBridge spec the operator would write.
    pub fn spec(&self) -> NodeBridgeSpec {
        let mut v = json!({
            "network": self.name, "node": "test-node", "bridge": self.bridge,
            "subnet": self.subnet, "gateway": self.gateway, "gatewayMac": "02:aa:00:00:00:01",
            "blocks": self.blocks, "mtu": self.mtu, "vni": 100,
        });
        if let Some(sel) = &self.namespace_selector {
            v["namespaceSelector"] = sel.clone();
        }
        if let Some((subnet, gateway)) = &self.ipv6 {
            v["ipv6"] = json!({"subnet": subnet, "gateway": gateway});
        }
        serde_json::from_value(v).unwrap()
    }

    /// Creates the bridge with the gateway address in `node` (what the data plane does).
    pub fn create_bridge(&self, node: &Netns) {
        let prefix = self.subnet.split('/').nth(1).unwrap();
        node.ip(&["link", "add", &self.bridge, "type", "bridge"]);
        node.ip(&[
            "link",
            "set",
            &self.bridge,
            "mtu",
            &self.mtu.to_string(),
            "up",
        ]);
        node.ip(&[
            "addr",
            "add",
            &format!("{}/{prefix}", self.gateway),
            "dev",
            &self.bridge,
        ]);
        if let Some((subnet, gateway)) = &self.ipv6 {
            let prefix = subnet.split('/').nth(1).unwrap();
            node.ip(&[
                "addr",
                "add",
                &format!("{gateway}/{prefix}"),
                "dev",
                &self.bridge,
                "nodad",
            ]);
        }
    }
}

/// Fixed cluster data for the engine.
#[derive(Clone, Default, Serialize, Deserialize)]
pub struct World {
    pub networks: Vec<NodeBridgeSpec>,
    /// "ns/name" → annotations.
    pub pods: BTreeMap<String, BTreeMap<String, String>>,
    /// namespace → labels.
    pub namespaces: BTreeMap<String, BTreeMap<String, String>>,
}

impl World {
    /// One network, and `pods` pods `<namespace>/p<i>` whose annotation asks for it.
    pub fn with_pods(network: NodeBridgeSpec, namespace: &str, pods: usize) -> Self {
        let annotations = BTreeMap::from([(
            bridgenet_crds::ANNOTATION_NETWORKS.to_owned(),
            network.network.clone(),
        )]);
        World {
            pods: (0..pods)
                .map(|i| (format!("{namespace}/p{i}"), annotations.clone()))
                .collect(),
            networks: vec![network],
            ..World::default()
        }
    }
}

/// A [`Directory`] over a [`World`], recording notices.
#[derive(Clone, Default)]
pub struct StaticDirectory {
    pub world: Arc<Mutex<World>>,
    pub notices: Arc<Mutex<Vec<Notice>>>,
}

impl Directory for StaticDirectory {
    fn node_bridge(&self, network: &str) -> Option<Arc<ResolvedNodeBridge>> {
        self.world
            .lock()
            .unwrap()
            .networks
            .iter()
            .find(|n| n.network == network)
            .and_then(|n| resolve_node_bridge(n).ok())
            .map(Arc::new)
    }

    async fn pod(&self, pod: &PodRef) -> Result<Option<PodInfo>, String> {
        let world = self.world.lock().unwrap();
        Ok(world.pods.get(&pod.to_string()).map(|annotations| PodInfo {
            annotations: annotations.clone(),
            uid: String::new(),
        }))
    }

    async fn namespace_labels(&self, namespace: &str) -> Result<BTreeMap<String, String>, String> {
        let world = self.world.lock().unwrap();
        Ok(world.namespaces.get(namespace).cloned().unwrap_or_default())
    }

    fn ready(&self) -> bool {
        true
    }

    fn notify(&self, notice: Notice) {
        self.notices.lock().unwrap().push(notice);
    }
}

impl StaticDirectory {
    pub fn new(world: World) -> Self {
        Self {
            world: Arc::new(Mutex::new(world)),
            notices: Arc::default(),
        }
    }

    pub fn set_pod(&self, pod: &str, annotation: &str) {
        self.world.lock().unwrap().pods.insert(
            pod.into(),
            BTreeMap::from([(
                bridgenet_crds::ANNOTATION_NETWORKS.to_owned(),
                annotation.to_owned(),
            )]),
        );
    }

    pub fn rejected(&self) -> Vec<(String, String)> {
        self.notices
            .lock()
            .unwrap()
            .iter()
            .map(|n| match n {
                Notice::Rejected {
                    reason, message, ..
                } => ((*reason).to_owned(), message.clone()),
            })
            .collect()
    }
}

/// An agent serving on a socket inside this test process.
pub struct InProcessAgent {
    pub engine: Arc<Engine<StaticDirectory>>,
    pub socket: PathBuf,
    task: tokio::task::JoinHandle<()>,
}

impl InProcessAgent {
    pub fn start(dir: StaticDirectory, state: &Path, node: &Netns) -> Self {
        Self::start_at(dir, state, node.path())
    }

    pub fn start_at(dir: StaticDirectory, state: &Path, node_netns: PathBuf) -> Self {
        Self::start_with(dir, state, Some(node_netns))
    }

    /// An agent whose host is the namespace its threads are in, as a deployed agent's.
    pub fn start_in_own_namespace(dir: StaticDirectory, state: &Path) -> Self {
        Self::start_with(dir, state, None)
    }

    fn start_with(dir: StaticDirectory, state: &Path, node_netns: Option<PathBuf>) -> Self {
        let engine = Arc::new(Engine::new(dir, state, node_netns).unwrap());
        let socket = state.join("cni.sock");
        let listener = server::bind(&socket).unwrap();
        let e2 = engine.clone();
        let task = tokio::spawn(async move {
            let _ = server::serve(listener, e2).await;
        });
        Self {
            engine,
            socket,
            task,
        }
    }
}

impl InProcessAgent {
    /// Waits until every answered DEL has finished: a DEL answers once its allocations are
    /// journaled as releasing and deletes the interfaces after, which the runtime does not
    /// wait for; a test that looks at the pod or the journal right after a DEL must.
    pub async fn settled(&self) {
        for _ in 0..500 {
            if !self.engine.allocations().await.iter().any(|a| a.releasing) {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        panic!("an answered DEL did not finish within 5 s");
    }
}

impl Drop for InProcessAgent {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A CNI invocation of the real plugin binary.
#[derive(Clone, Debug)]
pub struct Call {
    pub command: &'static str,
    pub container_id: String,
    pub netns: String,
    pub ifname: String,
    pub args: String,
    pub config: Value,
}

impl Call {
    pub fn new(
        command: &'static str,
        container_id: &str,
        netns: &str,
        pod: &str,
        config: Value,
    ) -> Self {
        let (ns, name) = pod.split_once('/').unwrap_or(("default", pod));
        Self {
            command,
            container_id: container_id.into(),
            netns: netns.into(),
            ifname: "eth0".into(),
            args: format!(
                "IgnoreUnknown=1;K8S_POD_NAMESPACE={ns};K8S_POD_NAME={name};K8S_POD_INFRA_CONTAINER_ID={container_id};K8S_POD_UID=uid-{name}"
            ),
            config,
        }
    }

    pub fn with_command(&self, command: &'static str) -> Self {
        Self {
            command,
            ..self.clone()
        }
    }
}

/// The plugin's answer.
#[derive(Debug)]
pub struct Answer {
    pub ok: bool,
    pub json: Value,
    pub raw: String,
}

impl Answer {
    pub fn code(&self) -> u64 {
        self.json["code"].as_u64().unwrap_or(0)
    }
}

/// Runs the plugin binary like a container runtime does.
pub async fn run_plugin(call: &Call) -> Answer {
    use tokio::io::AsyncWriteExt;
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_bridgenet"))
        .env_clear()
        .env("CNI_COMMAND", call.command)
        .env("CNI_CONTAINERID", &call.container_id)
        .env("CNI_NETNS", &call.netns)
        .env("CNI_IFNAME", &call.ifname)
        .env("CNI_ARGS", &call.args)
        .env("CNI_PATH", "/opt/cni/bin")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    // A plugin that rejects the call before reading stdin closes the pipe: not our failure.
    let _ = stdin.write_all(call.config.to_string().as_bytes()).await;
    drop(stdin);
    let out = child.wait_with_output().await.unwrap();
    let raw = String::from_utf8_lossy(&out.stdout).into_owned();
    let json = if raw.trim().is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&raw)
            .unwrap_or_else(|e| panic!("plugin printed non-JSON {raw:?}: {e}"))
    };
    if !out.status.success() {
        assert!(
            json.get("code").is_some() && json.get("msg").is_some(),
            "a failing plugin must print a CNI error object: {raw}"
        );
    }
    Answer {
        ok: out.status.success(),
        json,
        raw,
    }
}

/// A chained-plugin config (bridgenet after a primary) pointing at `socket`.
pub fn chained_config(socket: &Path, version: &str, prev: Option<Value>) -> Value {
    let mut conf = json!({
        "cniVersion": version, "name": "k8s-pod-network", "type": "bridgenet",
        "socket": socket,
    });
    if let Some(p) = prev {
        conf["prevResult"] = p;
    }
    conf
}
