//! A real container runtime calling the real plugin: a private containerd (Debian's, with runc
//! and the reference CNI plugins) in a node namespace, pods created through CRI the way the
//! kubelet does it (RunPodSandbox → CNI ADD with the reference `bridge` as primary and bridgenet
//! chained; StopPodSandbox → DEL; RemovePodSandbox → DEL without netns), then hot attach and
//! detach of a running pod through the runtime's view of its sandbox.
//!
//! Root only (ignored by a plain `cargo test`, run by `make root-test`); where containerd, runc or
//! the reference plugins are missing each test says so and passes, unless
//! `BRIDGENET_REQUIRE_TOOLS=1` (set by `make root-test`) makes that a failure. Namespaces are
//! prefixed `bnt-cni-`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod cni_support;
mod root_support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use bridgenet_agent::cni::cri::{Cri, netns_from_info};
use bridgenet_agent::cni::hotplug;
use cni_support::{InProcessAgent, Netns, StaticDirectory, TestNetwork, World};
use hyper_util::rt::TokioIo;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use k8s_cri::v1::{
    LinuxPodSandboxConfig, PodSandboxConfig, PodSandboxMetadata, PodSandboxStatusRequest,
    RemovePodSandboxRequest, RunPodSandboxRequest, StopPodSandboxRequest,
};
use k8s_openapi::api::core::v1::Pod;
use root_support::require_root;
use serde_json::json;
use tonic::transport::{Channel, Endpoint, Uri};

const REFERENCE: &str = "/usr/lib/cni";
const PAUSE_IMAGE: &str = "docker.io/bnsandbox/pause:1";

fn missing_tools() -> Option<String> {
    for tool in ["containerd", "ctr", "runc", "nsenter", "python3"] {
        if Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .stdout(Stdio::null())
            .status()
            .map(|s| !s.success())
            .unwrap_or(true)
        {
            return Some(format!("{tool} not installed (make setup)"));
        }
    }
    for plugin in ["bridge", "host-local", "loopback"] {
        if !Path::new(REFERENCE).join(plugin).exists() {
            return Some(format!(
                "{REFERENCE}/{plugin} missing (containernetworking-plugins)"
            ));
        }
    }
    None
}

/// Whether this machine has what these tests drive. Without it a test says what is missing and
/// passes — it is about a missing tool, not a failure of bridgenet — unless
/// `BRIDGENET_REQUIRE_TOOLS=1`: `make root-test` installs the tools first (`make setup`) and sets
/// it, so there a missing tool fails the test instead of letting CI pass without running it.
fn have_tools() -> bool {
    let Some(why) = missing_tools() else {
        return true;
    };
    assert!(
        std::env::var("BRIDGENET_REQUIRE_TOOLS").as_deref() != Ok("1"),
        "{why}, and BRIDGENET_REQUIRE_TOOLS=1 says these tests must run"
    );
    eprintln!("SKIP: {why}");
    false
}

/// A private containerd running inside `node`, everything under its own directories; stopped
/// and cleaned (shims, runc state, mounts) on drop.
struct Containerd {
    dir: PathBuf,
    sock_dir: PathBuf,
    child: Option<Child>,
}

impl Containerd {
    fn start(node: &Netns, tag: &str, conflist: &serde_json::Value) -> Self {
        let dir = PathBuf::from(format!("/tmp/bnt-cni-ctd-{tag}-{}", std::process::id()));
        // Unix socket paths are short: the socket lives in its own /run directory.
        let sock_dir = PathBuf::from(format!("/run/bnt-cni-{tag}-{}", std::process::id()));
        for d in [
            &dir,
            &sock_dir,
            &dir.join("bin"),
            &dir.join("net.d"),
            &dir.join("logs"),
        ] {
            std::fs::create_dir_all(d).unwrap();
        }
        for plugin in ["bridge", "host-local", "loopback"] {
            std::fs::copy(
                Path::new(REFERENCE).join(plugin),
                dir.join("bin").join(plugin),
            )
            .unwrap();
        }
        std::fs::copy(
            env!("CARGO_BIN_EXE_bridgenet"),
            dir.join("bin").join("bridgenet"),
        )
        .unwrap();
        std::fs::write(dir.join("net.d/10-test.conflist"), conflist.to_string()).unwrap();
        let d = dir.display();
        let sock = sock_dir.join("containerd.sock");
        let config = format!(
            r#"version = 2
root = "{d}/root"
state = "{d}/state"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
                    "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper",
                    "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]
[grpc]
  address = "{sock}"
[ttrpc]
  address = "{sock}.ttrpc"
[plugins."io.containerd.internal.v1.opt"]
  path = "{d}/opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{PAUSE_IMAGE}"
  restrict_oom_score_adj = true
  enable_selinux = false
  netns_mounts_under_state_dir = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        Root = "{d}/runc"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{d}/bin"
    conf_dir = "{d}/net.d"
    max_conf_num = 1
"#,
            sock = sock.display()
        );
        std::fs::write(dir.join("config.toml"), config).unwrap();
        let log = std::fs::File::create(dir.join("containerd.log")).unwrap();
        // nsenter, not `ip netns exec`: the latter also unshares the mount namespace, hiding
        // the pod netns bind mounts containerd makes from this process (and the agent).
        let child = Command::new("nsenter")
            .arg(format!("--net={}", node.path().display()))
            .args(["containerd", "--config"])
            .arg(dir.join("config.toml"))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let me = Self {
            dir,
            sock_dir,
            child: Some(child),
        };
        for _ in 0..300 {
            if me.ctr(&["version"]).is_some() {
                me.import_images();
                return me;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!(
            "containerd did not start; see {}/containerd.log",
            me.dir.display()
        );
    }

    fn socket(&self) -> PathBuf {
        self.sock_dir.join("containerd.sock")
    }

    fn ctr(&self, args: &[&str]) -> Option<String> {
        let out = Command::new("ctr")
            .arg("--address")
            .arg(self.socket())
            .args(args)
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// The pause image, built offline from the host's static busybox by the sandbox's builder.
    fn import_images(&self) {
        let archive = self.dir.join("images.tar");
        let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/sandbox");
        let status = Command::new("python3")
            .env("PYTHONPATH", &repo)
            .args([
                "-c",
                "import sys, pathlib; from bnsandbox import images; images.build_archive(pathlib.Path(sys.argv[1]))",
            ])
            .arg(&archive)
            .status()
            .unwrap();
        assert!(status.success(), "building the pause image archive");
        assert!(
            self.ctr(&[
                "-n",
                "k8s.io",
                "images",
                "import",
                archive.to_str().unwrap()
            ])
            .is_some(),
            "importing the pause image"
        );
    }

    async fn client(&self) -> RuntimeServiceClient<Channel> {
        let path = self.socket();
        let channel = Endpoint::try_from("http://[::]:50051")
            .unwrap()
            .connect_with_connector(tower::service_fn(move |_: Uri| {
                let path = path.clone();
                async move {
                    Ok::<_, std::io::Error>(TokioIo::new(
                        tokio::net::UnixStream::connect(path).await?,
                    ))
                }
            }))
            .await
            .unwrap();
        RuntimeServiceClient::new(channel)
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let runc_root = self.dir.join("runc");
        if let Ok(out) = Command::new("runc")
            .arg("--root")
            .arg(&runc_root)
            .args(["list", "-q"])
            .output()
        {
            for id in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                let _ = Command::new("runc")
                    .arg("--root")
                    .arg(&runc_root)
                    .args(["delete", "--force", id])
                    .status();
            }
        }
        // Our shims, found by the socket path only this instance uses, killed by PID.
        let marker = self.socket().display().to_string();
        if let Ok(procs) = std::fs::read_dir("/proc") {
            for p in procs.filter_map(Result::ok) {
                let Ok(pid) = p.file_name().to_string_lossy().parse::<i32>() else {
                    continue;
                };
                let cmdline = std::fs::read(p.path().join("cmdline")).unwrap_or_default();
                if String::from_utf8_lossy(&cmdline).contains(&marker) {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pid),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
            }
        }
        let prefix = format!("{}/", self.dir.display());
        let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
        let mut targets: Vec<&str> = mounts
            .lines()
            .filter_map(|l| l.split_whitespace().nth(1))
            .filter(|t| t.starts_with(&prefix))
            .collect();
        targets.sort_by_key(|t| std::cmp::Reverse(t.len()));
        for t in targets {
            let _ = Command::new("umount").args(["-l", t]).status();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
        let _ = std::fs::remove_dir_all(&self.sock_dir);
    }
}

fn in_netns(path: &Path, cmd: &[&str]) -> Option<String> {
    let out = Command::new("nsenter")
        .arg(format!("--net={}", path.display()))
        .args(cmd)
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

fn ipv4_of(netns: &Path, dev: &str) -> Option<String> {
    let out = in_netns(netns, &["ip", "-j", "addr", "show", "dev", dev])?;
    let v: serde_json::Value = serde_json::from_str(&out).ok()?;
    v[0]["addr_info"]
        .as_array()?
        .iter()
        .find(|a| a["family"] == "inet")
        .and_then(|a| a["local"].as_str().map(str::to_owned))
}

fn pod_object(annotation: &str) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": "web", "namespace": "default", "uid": "uid-web",
                     "annotations": {bridgenet_crds::ANNOTATION_NETWORKS: annotation}},
        "spec": {"containers": [{"name": "c", "image": "busybox"}]},
    }))
    .unwrap()
}

/// The cluster's CNI configuration as kindnet would leave it with bridgenet installed: the
/// reference `bridge` plugin (host-local IPAM on `subnet`) as the primary, bridgenet chained.
fn chained_conflist(subnet: &str, state: &Path, socket: &Path) -> serde_json::Value {
    json!({
        "cniVersion": "1.0.0", "name": "k8s-pod-network",
        "plugins": [
            {"type": "bridge", "bridge": "cni0", "isGateway": true, "ipMasq": false,
             "ipam": {"type": "host-local", "ranges": [[{"subnet": subnet}]],
                      "dataDir": state.join("host-local")}},
            {"type": "bridgenet", "socket": socket},
        ],
    })
}

/// What the kubelet sends in RunPodSandbox for pod `default/<name>`.
fn sandbox_config(name: &str, containerd_dir: &Path) -> PodSandboxConfig {
    PodSandboxConfig {
        metadata: Some(PodSandboxMetadata {
            name: name.into(),
            uid: format!("uid-{name}"),
            namespace: "default".into(),
            attempt: 0,
        }),
        hostname: name.into(),
        log_directory: containerd_dir.join("logs").display().to_string(),
        labels: BTreeMap::from([("app".into(), name.into())])
            .into_iter()
            .collect(),
        linux: Some(LinuxPodSandboxConfig::default()),
        ..PodSandboxConfig::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root"]
async fn kubelet_path_chained_after_the_reference_bridge_then_hot_plug() {
    require_root();
    if !have_tools() {
        return;
    }
    let node = Netns::new("ctd-node");
    let red = TestNetwork::new("red", 60);
    let blue = TestNetwork::new("blue", 61);
    red.create_bridge(&node);
    blue.create_bridge(&node);
    let dir = StaticDirectory::new(World {
        networks: vec![red.spec(), blue.spec()],
        ..World::default()
    });
    dir.set_pod("default/web", "red");
    let state = tempfile::tempdir().unwrap();
    let agent = InProcessAgent::start(dir.clone(), state.path(), &node);
    let conflist = chained_conflist("10.89.0.0/24", state.path(), &agent.socket);
    let ctd = Containerd::start(&node, "kubelet", &conflist);
    let mut client = ctd.client().await;

    let config = sandbox_config("web", &ctd.dir);
    let sandbox_id = client
        .run_pod_sandbox(RunPodSandboxRequest {
            config: Some(config),
            runtime_handler: String::new(),
        })
        .await
        .expect("RunPodSandbox (CNI ADD through the chain)")
        .into_inner()
        .pod_sandbox_id;
    let status = client
        .pod_sandbox_status(PodSandboxStatusRequest {
            pod_sandbox_id: sandbox_id.clone(),
            verbose: true,
        })
        .await
        .unwrap()
        .into_inner();
    let netns = netns_from_info(status.info.get("info").unwrap()).expect("sandbox netns");
    // The primary's interface and ours, side by side.
    let eth0 = ipv4_of(&netns, "eth0").expect("primary eth0");
    assert!(eth0.starts_with("10.89.0."), "{eth0}");
    let net1 = ipv4_of(&netns, "net1").expect("bridgenet net1");
    assert!(net1.starts_with("172.29.60."), "{net1}");
    assert!(
        in_netns(
            &netns,
            &["busybox", "ping", "-c", "1", "-W", "2", "172.29.60.1"]
        )
        .is_some()
    );
    let allocs = agent.engine.allocations().await;
    assert_eq!(allocs.len(), 1);
    assert_eq!(allocs[0].container_id, sandbox_id);
    assert_eq!(allocs[0].pod, "default/web");

    // Hot-plug sees the sandbox through CRI, as the agent does.
    let cri = Cri::connect(&format!("unix://{}", ctd.socket().display())).unwrap();
    let sandboxes = cri.ready_sandboxes().await.unwrap();
    let sandbox = sandboxes
        .iter()
        .find(|s| s.uid == "uid-web")
        .expect("ready sandbox");
    assert_eq!(sandbox.id, sandbox_id);
    assert_eq!(
        cri.netns_of(&sandbox.id).await.unwrap().as_deref(),
        Some(netns.as_path())
    );
    let mut reported = Default::default();
    // `docker network connect blue web`
    dir.set_pod("default/web", "red,blue");
    hotplug::sync_pod(
        &agent.engine,
        &cri,
        &pod_object("red,blue"),
        sandbox,
        &mut reported,
    )
    .await;
    let net2 = ipv4_of(&netns, "net2").expect("hot-attached net2");
    assert!(net2.starts_with("172.29.61."), "{net2}");
    assert!(
        in_netns(
            &netns,
            &["busybox", "ping", "-c", "1", "-W", "2", "172.29.61.1"]
        )
        .is_some()
    );
    assert_eq!(agent.engine.allocations().await.len(), 2);
    // Applying the same annotation again changes nothing.
    hotplug::sync_pod(
        &agent.engine,
        &cri,
        &pod_object("red,blue"),
        sandbox,
        &mut reported,
    )
    .await;
    assert_eq!(agent.engine.allocations().await.len(), 2);
    // `docker network disconnect red web`
    dir.set_pod("default/web", "blue");
    hotplug::sync_pod(
        &agent.engine,
        &cri,
        &pod_object("blue"),
        sandbox,
        &mut reported,
    )
    .await;
    assert!(ipv4_of(&netns, "net1").is_none(), "net1 hot-detached");
    assert_eq!(ipv4_of(&netns, "net2").as_deref(), Some(net2.as_str()));
    let left = agent.engine.allocations().await;
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].network, "blue");

    // The runtime still lists the sandbox: reconcile frees nothing.
    let live = cri.sandbox_ids().await.unwrap();
    assert!(live.contains(&sandbox_id));
    assert_eq!(
        agent.engine.reconcile(&live, Duration::ZERO).await.unwrap(),
        0
    );

    // StopPodSandbox → DEL (frees the hot-plugged interface too); RemovePodSandbox → a second
    // DEL without netns, which must succeed.
    client
        .stop_pod_sandbox(StopPodSandboxRequest {
            pod_sandbox_id: sandbox_id.clone(),
        })
        .await
        .expect("StopPodSandbox (CNI DEL)");
    agent.settled().await;
    assert!(
        agent.engine.allocations().await.is_empty(),
        "every address freed"
    );
    assert!(
        !node.links().iter().any(|l| l.starts_with("bnv")),
        "no veth left"
    );
    client
        .remove_pod_sandbox(RemovePodSandboxRequest {
            pod_sandbox_id: sandbox_id.clone(),
        })
        .await
        .expect("RemovePodSandbox (second DEL)");
    assert!(cri.sandbox_ids().await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root"]
async fn refused_pod_fails_its_sandbox_with_the_cni_message() {
    require_root();
    if !have_tools() {
        return;
    }
    let node = Netns::new("ctd-bad");
    let red = TestNetwork::new("red", 62);
    red.create_bridge(&node);
    let dir = StaticDirectory::new(World {
        networks: vec![red.spec()],
        ..World::default()
    });
    dir.set_pod("default/bad", "no-such-network");
    let state = tempfile::tempdir().unwrap();
    let agent = InProcessAgent::start(dir.clone(), state.path(), &node);
    let conflist = chained_conflist("10.90.0.0/24", state.path(), &agent.socket);
    let ctd = Containerd::start(&node, "bad", &conflist);
    let mut client = ctd.client().await;
    let config = sandbox_config("bad", &ctd.dir);
    let err = client
        .run_pod_sandbox(RunPodSandboxRequest {
            config: Some(config),
            runtime_handler: String::new(),
        })
        .await
        .expect_err("the sandbox must fail");
    // What `kubectl describe pod` shows (FailedCreatePodSandBox) carries our message.
    assert!(
        err.message()
            .contains("network \"no-such-network\" does not exist on this node"),
        "{}",
        err.message()
    );
    assert!(dir.rejected().iter().any(|(r, _)| r == "UnknownNetwork"));
    assert!(agent.engine.allocations().await.is_empty());
    assert!(
        cri_sandboxes_gone(&ctd).await,
        "containerd cleaned up the failed sandbox"
    );
}

async fn cri_sandboxes_gone(ctd: &Containerd) -> bool {
    let cri = Cri::connect(&format!("unix://{}", ctd.socket().display())).unwrap();
    cri.ready_sandboxes()
        .await
        .map(|s| s.is_empty())
        .unwrap_or(false)
}

/// A file put at a host-wide path for the duration of a test, the previous content restored.
struct HostFile {
    path: PathBuf,
    previous: Option<Vec<u8>>,
    /// Directories this created, deepest first.
    created_dirs: Vec<PathBuf>,
}

impl HostFile {
    fn put(path: &Path, content: &[u8], mode: u32) -> Self {
        use std::os::unix::fs::PermissionsExt;
        let previous = std::fs::read(path).ok();
        let created_dirs: Vec<PathBuf> = path
            .ancestors()
            .skip(1)
            .take_while(|d| !d.exists())
            .map(Path::to_owned)
            .collect();
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, content).unwrap();
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
        Self {
            path: path.to_owned(),
            previous,
            created_dirs,
        }
    }
}

impl Drop for HostFile {
    fn drop(&mut self) {
        match &self.previous {
            Some(old) => {
                let _ = std::fs::write(&self.path, old);
            }
            None => {
                let _ = std::fs::remove_file(&self.path);
            }
        }
        for dir in &self.created_dirs {
            let _ = std::fs::remove_dir(dir);
        }
    }
}

/// `ctr run --cni`: ctr (go-cni) reads the first config in /etc/cni/net.d and plugins from
/// /opt/cni/bin — host-wide paths with no flag to move them, so this test puts its files there
/// (named to sort first) only while it runs. bridgenet here is the only plugin, in Multus
/// delegate form (`"network"`), since ctr passes no pod identity.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root"]
async fn ctr_run_with_cni_attaches_and_detaches_a_container() {
    require_root();
    if !have_tools() {
        return;
    }
    let node = Netns::new("ctr-node");
    let red = TestNetwork::new("red", 63);
    red.create_bridge(&node);
    let dir = StaticDirectory::new(World {
        networks: vec![red.spec()],
        ..World::default()
    });
    let state = tempfile::tempdir().unwrap();
    let agent = InProcessAgent::start(dir, state.path(), &node);
    let _conf = HostFile::put(
        Path::new("/etc/cni/net.d/00-bnt-cni-ctr-test.conflist"),
        json!({"cniVersion": "1.0.0", "name": "bnt-cni-ctr", "plugins": [
            {"type": "bridgenet", "network": "red", "socket": agent.socket}]})
        .to_string()
        .as_bytes(),
        0o644,
    );
    let _bin = HostFile::put(
        Path::new("/opt/cni/bin/bridgenet"),
        &std::fs::read(env!("CARGO_BIN_EXE_bridgenet")).unwrap(),
        0o755,
    );
    let ctd = Containerd::start(
        &node,
        "ctr",
        &json!({"cniVersion": "1.0.0", "name": "unused", "plugins": []}),
    );
    let rootfs = ctd.dir.join("rootfs");
    for d in ["bin", "proc", "dev", "sys", "tmp", "etc"] {
        std::fs::create_dir_all(rootfs.join(d)).unwrap();
    }
    let busybox = std::fs::canonicalize("/bin/busybox").unwrap();
    std::fs::copy(busybox, rootfs.join("bin/busybox")).unwrap();
    let out = Command::new("ctr")
        .arg("--address")
        .arg(ctd.socket())
        .args(["run", "--rm", "--cni", "--rootfs"])
        .arg(&rootfs)
        .args([
            "bnt-cni-ctr",
            "/bin/busybox",
            "sh",
            "-c",
            "/bin/busybox ip -4 addr show eth0 && /bin/busybox ping -c 1 -W 2 172.29.63.1",
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "container run: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("inet 172.29.63."),
        "eth0 on the red network: {stdout}"
    );
    assert!(
        stdout.contains("1 packets received"),
        "gateway answered: {stdout}"
    );
    // --rm: ctr ran the CNI DEL.
    agent.settled().await;
    assert!(agent.engine.allocations().await.is_empty(), "address freed");
    assert!(
        !node.links().iter().any(|l| l.starts_with("bnv")),
        "no veth left"
    );
}
