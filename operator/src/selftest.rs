//! `bridgenet-operator self-test`: the chart's `helm test` hook, also runnable by hand.
//!
//! Creates a throwaway BridgeNetwork and a second one, a pod on the first, then checks what a
//! user would: the pod is attached (its `bridgenet.io/network-status`), a pod on another node
//! reaches it, and a pod of the second network that routes to the first through its own
//! gateway does not. Then it deletes exactly what it created, also after a failure, and waits
//! until the networks are gone. Every check prints one line; a bad outcome prints what was
//! seen (conditions, pod status, events, logs).
//!
//! This module holds every Kubernetes call the self-test makes: `charts/bridgenet/api-calls.yaml`
//! lists it as its own binary, bound to the hook's ServiceAccount, and the chart tests check
//! that its RBAC is exactly what this code uses.

use std::future::Future;
use std::net::Ipv4Addr;
use std::sync::Mutex;
use std::time::Duration;

use bridgenet_crds::{ANNOTATION_NETWORK_STATUS, ANNOTATION_NETWORKS, BridgeNetwork};
use ipnet::Ipv4Net;
use k8s_openapi::api::core::v1::{Event as CoreEvent, Node, Pod};
use kube::api::{Api, DeleteParams, ListParams, LogParams, PostParams};
use kube::{Client, Resource};
use serde::Deserialize;
use serde_json::json;
use tokio::time::{Instant, sleep};

use crate::cli::SelfTestArgs;

/// Label on everything one run creates, valued with the run's id.
pub const RUN_LABEL: &str = "bridgenet.io/self-test";
/// Interface the isolation pod gets on the second network (named, so its script can route).
const PROBE_IFACE: &str = "bnst0";
const POLL: Duration = Duration::from_secs(1);
/// Cleanup's own bound, after the checks: deletion waits for the agents to detach the pods.
const CLEANUP_TIMEOUT: Duration = Duration::from_secs(120);

/// Why the self-test could not run or a check failed.
#[derive(Debug, thiserror::Error)]
pub enum SelfTestError {
    /// No kubeconfig and not in a cluster.
    #[error("no Kubernetes client configuration (in-cluster or KUBECONFIG): {0}")]
    Client(#[source] kube::Error),
    /// An API call failed.
    #[error("{what}: {source}")]
    Api {
        /// The call, with its object.
        what: String,
        /// The API's answer.
        #[source]
        source: kube::Error,
    },
    /// A manifest could not be built (a bug: they are fixed shapes).
    #[error("building {what}: {source}")]
    Manifest {
        /// Which object.
        what: String,
        /// Why.
        #[source]
        source: serde_json::Error,
    },
    /// A check saw a bad outcome; the message says what was seen.
    #[error("{0}")]
    Check(String),
    /// A wait ran out of time.
    #[error("timed out waiting for {what}; last seen: {seen}")]
    Timeout {
        /// What was awaited.
        what: String,
        /// The last state observed.
        seen: String,
    },
    /// SIGTERM or SIGINT (e.g. `helm test --timeout` ran out): cleanup still runs.
    #[error("interrupted by a termination signal")]
    Interrupted,
}

fn api_err(what: impl Into<String>) -> impl FnOnce(kube::Error) -> SelfTestError {
    let what = what.into();
    move |source| SelfTestError::Api { what, source }
}

/// The names of one run's objects, all derived from its random id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Names {
    /// The run's id (the value of [`RUN_LABEL`]).
    pub run: String,
    /// The network the pods attach to.
    pub network: String,
    /// The second network, which must not reach the first.
    pub isolation: String,
    /// The pod on the first network that the others ping.
    pub target: String,
    /// The pod that pings the target (on another node when there is one).
    pub pinger: String,
    /// The pod of the second network whose ping must fail.
    pub prober: String,
}

impl Names {
    /// Names for run `run`.
    pub fn new(run: &str) -> Self {
        let base = format!("bridgenet-selftest-{run}");
        Names {
            run: run.to_owned(),
            network: base.clone(),
            isolation: format!("{base}-iso"),
            target: format!("{base}-target"),
            pinger: format!("{base}-ping"),
            prober: format!("{base}-probe"),
        }
    }
}

/// Where a network stands.
#[derive(Debug, PartialEq, Eq)]
pub enum NetworkState {
    /// Ready=True, with its gateway.
    Ready(Ipv4Addr),
    /// Accepted=False: the operator refused it (reason: message).
    Refused(String),
    /// Not yet; what was seen.
    Pending(String),
}

/// The state of a network from its status conditions.
pub fn network_state(bn: &BridgeNetwork) -> NetworkState {
    let conditions = bn
        .status
        .as_ref()
        .map(|s| s.conditions.as_slice())
        .unwrap_or_default();
    let find = |t: &str| conditions.iter().find(|c| c.type_ == t);
    if let Some(c) = find("Accepted").filter(|c| c.status == "False") {
        return NetworkState::Refused(format!("{}: {}", c.reason, c.message));
    }
    let gateway = bn
        .status
        .as_ref()
        .and_then(|s| s.gateway.as_deref())
        .and_then(|g| g.split('/').next())
        .and_then(|g| g.parse().ok());
    match (find("Ready"), gateway) {
        (Some(c), Some(gw)) if c.status == "True" => NetworkState::Ready(gw),
        (Some(c), _) => {
            NetworkState::Pending(format!("Ready={} ({}: {})", c.status, c.reason, c.message))
        }
        (None, _) => NetworkState::Pending("no Ready condition yet".to_owned()),
    }
}

#[derive(Deserialize)]
struct StatusEntry {
    name: String,
    #[serde(default)]
    ips: Vec<String>,
}

/// The pod's IPv4 address on `network`, from the agent's `bridgenet.io/network-status`.
pub fn attached_ipv4(pod: &Pod, network: &str) -> Option<Ipv4Addr> {
    let raw = pod
        .metadata
        .annotations
        .as_ref()?
        .get(ANNOTATION_NETWORK_STATUS)?;
    let entries: Vec<StatusEntry> = serde_json::from_str(raw).ok()?;
    entries
        .into_iter()
        .filter(|e| e.name == network)
        .flat_map(|e| e.ips)
        .find_map(|ip| ip.split('/').next().and_then(|a| a.parse().ok()))
}

/// Ready, schedulable, untainted nodes by name (at most two): where the test pods go.
pub fn pick_nodes(nodes: &[Node]) -> Vec<String> {
    let mut names: Vec<String> = nodes
        .iter()
        .filter(|n| {
            let spec = n.spec.as_ref();
            let ready = n
                .status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
            let cordoned = spec.and_then(|s| s.unschedulable).unwrap_or(false);
            // The pods are bound with nodeName, past the scheduler: keep off nodes that would
            // refuse them (control planes) rather than tolerate every taint.
            let tainted = spec
                .and_then(|s| s.taints.as_ref())
                .is_some_and(|ts| ts.iter().any(|t| t.effect != "PreferNoSchedule"));
            ready && !cordoned && !tainted
        })
        .filter_map(|n| n.metadata.name.clone())
        .collect();
    names.sort();
    names.truncate(2);
    names
}

/// Where a run-to-completion pod stands.
#[derive(Debug, PartialEq, Eq)]
pub enum PodOutcome {
    /// Phase Succeeded.
    Succeeded,
    /// Phase Failed, with the exit code of its container when known.
    Failed(Option<i32>),
    /// Still going.
    Running,
}

/// The outcome of a test pod from its phase.
pub fn pod_outcome(pod: &Pod) -> PodOutcome {
    let status = pod.status.as_ref();
    match status.and_then(|s| s.phase.as_deref()) {
        Some("Succeeded") => PodOutcome::Succeeded,
        Some("Failed") => PodOutcome::Failed(
            status
                .and_then(|s| s.container_statuses.as_ref())
                .and_then(|cs| cs.first())
                .and_then(|c| c.state.as_ref())
                .and_then(|s| s.terminated.as_ref())
                .map(|t| t.exit_code),
        ),
        _ => PodOutcome::Running,
    }
}

/// One line about a pod: phase, conditions that are not True, container states.
pub fn describe_pod(pod: &Pod) -> String {
    let Some(status) = pod.status.as_ref() else {
        return "no status yet".to_owned();
    };
    let mut parts = vec![format!(
        "phase {}",
        status.phase.as_deref().unwrap_or("unknown")
    )];
    for c in status.conditions.iter().flatten() {
        if c.status != "True" {
            parts.push(format!(
                "{}={} {}",
                c.type_,
                c.status,
                c.message.as_deref().or(c.reason.as_deref()).unwrap_or("")
            ));
        }
    }
    for c in status.container_statuses.iter().flatten() {
        let state = c.state.as_ref();
        if let Some(w) = state.and_then(|s| s.waiting.as_ref()) {
            parts.push(format!(
                "{} waiting ({})",
                c.name,
                w.message.as_deref().or(w.reason.as_deref()).unwrap_or("")
            ));
        } else if let Some(t) = state.and_then(|s| s.terminated.as_ref()) {
            parts.push(format!("{} exited {}", c.name, t.exit_code));
        }
    }
    parts.join(", ")
}

/// The isolation probe's script. Exit codes: 0 isolated, 1 reached the other network, 2 the
/// route could not be added, 3 its own gateway did not answer (so a failed ping would prove
/// nothing).
pub fn isolation_script(other_subnet: Ipv4Net, own_gateway: Ipv4Addr, target: Ipv4Addr) -> String {
    // The route sends the packets out through the pod's bridgenet interface, so that it is the
    // node's bridgenet firewall that must drop them, not the primary network's routing.
    format!(
        "/bin/busybox ip route add {other_subnet} via {own_gateway} dev {PROBE_IFACE} || exit 2; \
         /bin/busybox ping -c 3 -W 2 {own_gateway} >/dev/null || exit 3; \
         if /bin/busybox ping -c 3 -W 2 {target}; then echo 'reached {target}'; exit 1; fi; \
         echo 'isolated: no reply from {target}'"
    )
}

fn isolation_failure(code: Option<i32>) -> &'static str {
    match code {
        Some(1) => "it reached the other network: the networks are NOT isolated",
        Some(2) => "it could not add its route (NET_ADMIN refused by the runtime or a policy?)",
        Some(3) => "it could not reach its own gateway, so its failed ping proves nothing",
        _ => "its probe failed",
    }
}

/// What the test pods are built from.
struct PodSpec<'a> {
    name: &'a str,
    node: &'a str,
    networks: String,
    script: String,
    net_admin: bool,
}

/// A test pod manifest: busybox running `script`, bound to `node`, never restarted.
fn pod_manifest(args: &SelfTestArgs, run: &str, spec: &PodSpec<'_>) -> Result<Pod, SelfTestError> {
    let caps = if spec.net_admin {
        json!({"add": ["NET_ADMIN"]})
    } else {
        json!({})
    };
    serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": spec.name,
            "namespace": args.namespace,
            "labels": {RUN_LABEL: run, "app.kubernetes.io/name": "bridgenet-selftest"},
            "annotations": {ANNOTATION_NETWORKS: spec.networks},
        },
        "spec": {
            "nodeName": spec.node,
            "restartPolicy": "Never",
            "terminationGracePeriodSeconds": 1,
            "automountServiceAccountToken": false,
            "containers": [{
                "name": "main",
                "image": args.image,
                "imagePullPolicy": args.image_pull_policy,
                "command": ["/bin/busybox", "sh", "-c", spec.script],
                "securityContext": {"capabilities": caps},
            }],
        },
    }))
    .map_err(|source| SelfTestError::Manifest {
        what: format!("pod {}", spec.name),
        source,
    })
}

fn network_manifest(
    name: &str,
    subnet: Ipv4Net,
    run: &str,
) -> Result<BridgeNetwork, SelfTestError> {
    serde_json::from_value(json!({
        "apiVersion": "bridgenet.io/v1alpha1",
        "kind": "BridgeNetwork",
        "metadata": {"name": name, "labels": {RUN_LABEL: run}},
        "spec": {"subnet": subnet.to_string()},
    }))
    .map_err(|source| SelfTestError::Manifest {
        what: format!("network {name}"),
        source,
    })
}

/// One step of a wait: done, failed for good, or not yet (with what was seen).
enum Step<T> {
    Done(T),
    Fail(String),
    Wait(String),
}

struct SelfTest {
    args: SelfTestArgs,
    names: Names,
    networks: Api<BridgeNetwork>,
    pods: Api<Pod>,
    nodes: Api<Node>,
    events: Api<CoreEvent>,
    deadline: Instant,
    /// What this run created, so that cleanup deletes exactly that (never a name it collided with).
    created_networks: Mutex<Vec<String>>,
    created_pods: Mutex<Vec<String>>,
}

fn pass(line: impl std::fmt::Display) {
    println!("PASS {line}");
}

/// Runs the self-test; `Ok(true)` when every check passed and everything was cleaned up.
pub async fn run(args: SelfTestArgs) -> Result<bool, SelfTestError> {
    let client = Client::try_default().await.map_err(SelfTestError::Client)?;
    let names = Names::new(&format!("{:06x}", fastrand::u32(..0x0100_0000)));
    let t = SelfTest {
        networks: Api::all(client.clone()),
        pods: Api::namespaced(client.clone(), &args.namespace),
        nodes: Api::all(client.clone()),
        events: Api::namespaced(client, &args.namespace),
        deadline: Instant::now() + Duration::from_secs(args.timeout),
        names,
        args,
        created_networks: Mutex::default(),
        created_pods: Mutex::default(),
    };
    println!(
        "bridgenet self-test {}: networks {} ({}) and {} ({}), pods in namespace {}, image {}",
        t.names.run,
        t.names.network,
        t.args.subnet,
        t.names.isolation,
        t.args.isolation_subnet,
        t.args.namespace,
        t.args.image
    );
    let outcome = tokio::select! {
        r = t.checks() => r,
        _ = crate::termination() => Err(SelfTestError::Interrupted),
    };
    if let Err(e) = &outcome {
        println!("FAIL {e}");
    }
    let cleaned = t.cleanup().await;
    match &cleaned {
        Ok(()) => pass("cleanup: every pod and network of the run is gone"),
        Err(e) => println!("FAIL cleanup: {e}"),
    }
    let ok = outcome.is_ok() && cleaned.is_ok();
    println!(
        "bridgenet self-test {}: {}",
        t.names.run,
        if ok { "passed" } else { "FAILED" }
    );
    Ok(ok)
}

impl SelfTest {
    async fn checks(&self) -> Result<(), SelfTestError> {
        let n = &self.names;
        self.create_network(&n.network, self.args.subnet).await?;
        self.create_network(&n.isolation, self.args.isolation_subnet)
            .await?;
        let gw = self.wait_network(&n.network).await?;
        let gw_iso = self.wait_network(&n.isolation).await?;
        pass(format!(
            "networks: {} (gateway {gw}) and {} (gateway {gw_iso}) are Ready",
            n.network, n.isolation
        ));

        let nodes = self
            .nodes
            .list(&ListParams::default())
            .await
            .map_err(api_err("listing nodes"))?;
        let picked = pick_nodes(&nodes.items);
        let (first, second) = match picked.as_slice() {
            [a, b, ..] => (a.as_str(), b.as_str()),
            [one] => {
                println!(
                    "SKIP cross-node ping: {one} is the only Ready, schedulable, untainted node; pinging on it"
                );
                (one.as_str(), one.as_str())
            }
            [] => {
                return Err(SelfTestError::Check(format!(
                    "no Ready, schedulable, untainted node among {} nodes",
                    nodes.items.len()
                )));
            }
        };

        self.create_pod(&PodSpec {
            name: &n.target,
            node: first,
            networks: n.network.clone(),
            script: "trap 'exit 0' TERM; while true; do /bin/busybox sleep 1; done".to_owned(),
            net_admin: false,
        })
        .await?;
        let ip = self.wait_attached(&n.target, &n.network).await?;
        pass(format!(
            "attach: pod {} on {first} has {ip} on {}",
            n.target, n.network
        ));

        self.create_pod(&PodSpec {
            name: &n.pinger,
            node: second,
            networks: n.network.clone(),
            script: format!("/bin/busybox ping -c 3 -W 2 {ip}"),
            net_admin: false,
        })
        .await?;
        self.wait_succeeded(&n.pinger, |_| "its ping got no reply")
            .await?;
        pass(format!(
            "ping: pod {} on {second} reached {ip}{}",
            n.pinger,
            if first == second {
                " (same node)"
            } else {
                " across nodes"
            }
        ));

        self.create_pod(&PodSpec {
            name: &n.prober,
            node: first,
            networks: json!([{"name": n.isolation, "interface": PROBE_IFACE}]).to_string(),
            script: isolation_script(self.args.subnet, gw_iso, ip),
            net_admin: true,
        })
        .await?;
        self.wait_succeeded(&n.prober, isolation_failure).await?;
        pass(format!(
            "isolation: pod {} of {} reached its gateway but not {ip} on {}",
            n.prober, n.isolation, n.network
        ));
        Ok(())
    }

    async fn create_network(&self, name: &str, subnet: Ipv4Net) -> Result<(), SelfTestError> {
        let bn = network_manifest(name, subnet, &self.names.run)?;
        self.networks
            .create(&PostParams::default(), &bn)
            .await
            .map_err(api_err(format!("creating BridgeNetwork {name}")))?;
        if let Ok(mut created) = self.created_networks.lock() {
            created.push(name.to_owned());
        }
        Ok(())
    }

    async fn create_pod(&self, spec: &PodSpec<'_>) -> Result<(), SelfTestError> {
        let pod = pod_manifest(&self.args, &self.names.run, spec)?;
        self.pods
            .create(&PostParams::default(), &pod)
            .await
            .map_err(api_err(format!("creating pod {}", spec.name)))?;
        if let Ok(mut created) = self.created_pods.lock() {
            created.push(spec.name.to_owned());
        }
        Ok(())
    }

    /// Polls `probe` every second until it is done or fails, or the run's deadline passes.
    async fn wait<T, F, Fut>(&self, what: &str, mut probe: F) -> Result<T, SelfTestError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<Step<T>, SelfTestError>>,
    {
        loop {
            let seen = match probe().await? {
                Step::Done(v) => return Ok(v),
                Step::Fail(msg) => return Err(SelfTestError::Check(format!("{what}: {msg}"))),
                Step::Wait(seen) => seen,
            };
            if Instant::now() + POLL > self.deadline {
                return Err(SelfTestError::Timeout {
                    what: what.to_owned(),
                    seen,
                });
            }
            sleep(POLL).await;
        }
    }

    async fn wait_network(&self, name: &str) -> Result<Ipv4Addr, SelfTestError> {
        self.wait(&format!("network {name} to become Ready"), || async {
            let bn = self
                .networks
                .get_opt(name)
                .await
                .map_err(api_err(format!("reading BridgeNetwork {name}")))?;
            Ok(match bn.as_ref().map(network_state) {
                None => Step::Wait("not found".to_owned()),
                Some(NetworkState::Ready(gw)) => Step::Done(gw),
                Some(NetworkState::Refused(why)) => Step::Fail(format!("refused: {why}")),
                Some(NetworkState::Pending(seen)) => Step::Wait(seen),
            })
        })
        .await
    }

    async fn get_pod(&self, name: &str) -> Result<Option<Pod>, SelfTestError> {
        self.pods
            .get_opt(name)
            .await
            .map_err(api_err(format!("reading pod {name}")))
    }

    async fn wait_attached(&self, pod: &str, network: &str) -> Result<Ipv4Addr, SelfTestError> {
        let what = format!("pod {pod} to be attached to {network}");
        let found = self
            .wait(&what, || async {
                Ok(match self.get_pod(pod).await? {
                    None => Step::Wait("pod not found".to_owned()),
                    Some(p) => match attached_ipv4(&p, network) {
                        Some(ip) => Step::Done(ip),
                        None => Step::Wait(format!("no address yet; {}", describe_pod(&p))),
                    },
                })
            })
            .await;
        self.explain(pod, found).await
    }

    async fn wait_succeeded(
        &self,
        pod: &str,
        why_failed: fn(Option<i32>) -> &'static str,
    ) -> Result<(), SelfTestError> {
        let what = format!("pod {pod} to succeed");
        let done = self
            .wait(&what, || async {
                Ok(match self.get_pod(pod).await? {
                    None => Step::Wait("pod not found".to_owned()),
                    Some(p) => match pod_outcome(&p) {
                        PodOutcome::Succeeded => Step::Done(()),
                        PodOutcome::Failed(code) => {
                            Step::Fail(format!("{} ({})", why_failed(code), describe_pod(&p)))
                        }
                        PodOutcome::Running => Step::Wait(describe_pod(&p)),
                    },
                })
            })
            .await;
        self.explain(pod, done).await
    }

    /// On failure, prints the pod's recent events and log lines below the failure.
    async fn explain<T>(
        &self,
        pod: &str,
        result: Result<T, SelfTestError>,
    ) -> Result<T, SelfTestError> {
        if result.is_ok() {
            return result;
        }
        match self.events.list(&ListParams::default()).await {
            Ok(list) => {
                let mut lines: Vec<String> = list
                    .items
                    .iter()
                    .filter(|e| e.involved_object.name.as_deref() == Some(pod))
                    .map(|e| {
                        format!(
                            "  event {}: {}",
                            e.reason.as_deref().unwrap_or(""),
                            e.message.as_deref().unwrap_or("")
                        )
                    })
                    .collect();
                let skip = lines.len().saturating_sub(8);
                lines.drain(..skip);
                if lines.is_empty() {
                    println!("  (no events for pod {pod})");
                }
                for line in lines {
                    println!("{line}");
                }
            }
            Err(e) => println!("  (cannot list events: {e})"),
        }
        let params = LogParams {
            tail_lines: Some(20),
            ..LogParams::default()
        };
        match self.pods.logs(pod, &params).await {
            Ok(log) if !log.trim().is_empty() => {
                for line in log.lines() {
                    println!("  log: {line}");
                }
            }
            Ok(_) => {}
            Err(e) => println!("  (cannot read the logs of {pod}: {e})"),
        }
        result
    }

    /// Deletes what this run created: pods first (the networks' finalizer waits until the agents
    /// have detached them), then the networks; waits until all are gone.
    async fn cleanup(&self) -> Result<(), SelfTestError> {
        let deadline = Instant::now() + CLEANUP_TIMEOUT;
        let pods = self
            .created_pods
            .lock()
            .map(|v| v.clone())
            .unwrap_or_default();
        let networks = self
            .created_networks
            .lock()
            .map(|v| v.clone())
            .unwrap_or_default();
        let mut problems = Vec::new();
        for name in &pods {
            if let Err(e) = self.pods.delete(name, &DeleteParams::default()).await
                && !is_not_found(&e)
            {
                problems.push(format!("deleting pod {name}: {e}"));
            }
        }
        problems.extend(self.wait_gone(&self.pods, &pods, "pod", deadline).await);
        for name in &networks {
            if let Err(e) = self.networks.delete(name, &DeleteParams::default()).await
                && !is_not_found(&e)
            {
                problems.push(format!("deleting BridgeNetwork {name}: {e}"));
            }
        }
        problems.extend(
            self.wait_gone(&self.networks, &networks, "BridgeNetwork", deadline)
                .await,
        );
        if problems.is_empty() {
            Ok(())
        } else {
            Err(SelfTestError::Check(problems.join("; ")))
        }
    }

    /// Waits until none of `names` exists; returns what is still there at `deadline`.
    async fn wait_gone<K>(
        &self,
        api: &Api<K>,
        names: &[String],
        kind: &str,
        deadline: Instant,
    ) -> Vec<String>
    where
        K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
    {
        loop {
            let mut left = Vec::new();
            for name in names {
                match api.get_opt(name).await {
                    Ok(None) => {}
                    Ok(Some(obj)) => {
                        let terminating = obj.meta().deletion_timestamp.is_some();
                        left.push(format!(
                            "{kind} {name} still there ({})",
                            if terminating {
                                "terminating"
                            } else {
                                "not deleted"
                            }
                        ));
                    }
                    Err(e) => left.push(format!("reading {kind} {name}: {e}")),
                }
            }
            if left.is_empty() || Instant::now() + POLL > deadline {
                return left;
            }
            sleep(POLL).await;
        }
    }
}

fn is_not_found(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 404)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn node(name: &str, ready: &str, extra: serde_json::Value) -> Node {
        let mut v = json!({
            "metadata": {"name": name},
            "status": {"conditions": [{"type": "Ready", "status": ready}]},
        });
        if let (Some(obj), Some(more)) = (v.as_object_mut(), extra.as_object()) {
            obj.extend(more.clone());
        }
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn picks_two_ready_untainted_nodes_in_name_order() {
        let nodes = [
            node("w3", "True", json!({})),
            node(
                "cp",
                "True",
                json!({"spec": {"taints": [{"key": "node-role.kubernetes.io/control-plane", "effect": "NoSchedule"}]}}),
            ),
            node("down", "False", json!({})),
            node("cordoned", "True", json!({"spec": {"unschedulable": true}})),
            node(
                "w1",
                "True",
                json!({"spec": {"taints": [{"key": "x", "effect": "PreferNoSchedule"}]}}),
            ),
            node("w2", "True", json!({})),
        ];
        assert_eq!(pick_nodes(&nodes), ["w1", "w2"]);
        assert_eq!(pick_nodes(&nodes[..2]), ["w3"]);
        assert!(pick_nodes(&nodes[1..3]).is_empty());
    }

    #[test]
    fn reads_the_address_on_the_network_from_network_status() {
        let pod: Pod = serde_json::from_value(json!({"metadata": {"name": "p", "annotations": {
            ANNOTATION_NETWORK_STATUS: r#"[{"name":"other","interface":"net1","ips":["10.1.0.2/24"]},
                {"name":"n","interface":"net2","ips":["fd00::2/64","172.31.254.5/24"],"mac":"02:00:00:00:00:01","gateway":["172.31.254.1"]}]"#,
        }}}))
        .unwrap();
        assert_eq!(
            attached_ipv4(&pod, "n"),
            Some(Ipv4Addr::new(172, 31, 254, 5))
        );
        assert_eq!(attached_ipv4(&pod, "missing"), None);
        let bare: Pod = serde_json::from_value(json!({"metadata": {"name": "p"}})).unwrap();
        assert_eq!(attached_ipv4(&bare, "n"), None);
    }

    #[test]
    fn a_refused_network_fails_at_once_with_its_reason() {
        let bn = |status: serde_json::Value| -> BridgeNetwork {
            serde_json::from_value(json!({"apiVersion": "bridgenet.io/v1alpha1", "kind": "BridgeNetwork",
                "metadata": {"name": "n"}, "spec": {"subnet": "172.31.254.0/24"}, "status": status}))
            .unwrap()
        };
        let cond = |t: &str, s: &str, r: &str| {
            json!({"type": t, "status": s, "reason": r, "message": "m",
            "lastTransitionTime": "2025-01-01T00:00:00Z"})
        };
        assert_eq!(
            network_state(&bn(
                json!({"conditions": [cond("Accepted", "False", "SubnetOverlap")]})
            )),
            NetworkState::Refused("SubnetOverlap: m".to_owned())
        );
        assert_eq!(
            network_state(&bn(json!({"gateway": "172.31.254.1", "conditions": [
                cond("Accepted", "True", "Valid"), cond("Ready", "True", "AllNodesReady")]}))),
            NetworkState::Ready(Ipv4Addr::new(172, 31, 254, 1))
        );
        assert!(matches!(
            network_state(&bn(json!({}))),
            NetworkState::Pending(_)
        ));
    }

    #[test]
    fn pod_outcome_follows_the_phase_and_exit_code() {
        let pod = |status: serde_json::Value| -> Pod {
            serde_json::from_value(json!({"metadata": {"name": "p"}, "status": status})).unwrap()
        };
        assert_eq!(
            pod_outcome(&pod(json!({"phase": "Succeeded"}))),
            PodOutcome::Succeeded
        );
        assert_eq!(
            pod_outcome(&pod(json!({"phase": "Running"}))),
            PodOutcome::Running
        );
        let failed = pod(
            json!({"phase": "Failed", "containerStatuses": [{"name": "main", "image": "i",
            "imageID": "", "ready": false, "restartCount": 0, "state": {"terminated": {"exitCode": 1}}}]}),
        );
        assert_eq!(pod_outcome(&failed), PodOutcome::Failed(Some(1)));
        assert!(describe_pod(&failed).contains("main exited 1"));
        assert_eq!(
            isolation_failure(Some(1)),
            "it reached the other network: the networks are NOT isolated"
        );
    }

    #[test]
    fn names_are_distinct_and_valid() {
        let n = Names::new("0a1b2c");
        let all = [&n.network, &n.isolation, &n.target, &n.pinger];
        assert!(
            all.iter()
                .all(|s| s.len() <= 63 && s.starts_with("bridgenet-selftest-0a1b2c"))
        );
        assert_ne!(n.network, n.isolation);
        let script = isolation_script(
            "172.31.254.0/24".parse().unwrap(),
            Ipv4Addr::new(172, 31, 255, 1),
            Ipv4Addr::new(172, 31, 254, 5),
        );
        assert!(
            script.starts_with(
                "/bin/busybox ip route add 172.31.254.0/24 via 172.31.255.1 dev bnst0"
            )
        );
    }
}
