//! The agent's Prometheus metrics, served as `/metrics` beside `/healthz` and `/readyz`.
//!
//! Above all they count every write the agent makes to the kernel — netlink requests that
//! change something (links, addresses, FDB and route entries, sysctls) and nftables
//! transactions — so that "an unchanged node changes nothing" is checked on a real node (the
//! sandbox suite reads these counters over several resyncs and a restart), not only against
//! the recording fake.
//!
//! The counters are process-wide: the kernel is written from the data plane, from CNI calls
//! and from repair passes, each on threads of its own inside some network namespace, and
//! threading a handle through all of them would only restate that there is one process.

use std::sync::OnceLock;
use std::time::Instant;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::cni::types::{Command, code};

/// What kind of kernel write: the netlink message (or sysctl file) it is.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum Write {
    /// `RTM_NEWLINK` creating a link.
    LinkAdd,
    /// `RTM_SETLINK` / `RTM_NEWLINK` changing one (alias, MTU, MAC, master, up).
    LinkSet,
    /// `RTM_DELLINK`.
    LinkDel,
    /// `RTM_NEWADDR`.
    AddrAdd,
    /// `RTM_DELADDR`.
    AddrDel,
    /// `RTM_NEWNEIGH` (FDB flood entries).
    NeighAdd,
    /// `RTM_DELNEIGH`.
    NeighDel,
    /// `RTM_NEWROUTE` (a pod's default route).
    RouteAdd,
    /// A write under `/proc/sys`.
    Sysctl,
}

impl Write {
    /// Every kind, for exposing each counter from the start (at zero).
    pub const ALL: [Write; 9] = [
        Write::LinkAdd,
        Write::LinkSet,
        Write::LinkDel,
        Write::AddrAdd,
        Write::AddrDel,
        Write::NeighAdd,
        Write::NeighDel,
        Write::RouteAdd,
        Write::Sysctl,
    ];

    fn label(self) -> &'static str {
        match self {
            Write::LinkAdd => "link_add",
            Write::LinkSet => "link_set",
            Write::LinkDel => "link_del",
            Write::AddrAdd => "addr_add",
            Write::AddrDel => "addr_del",
            Write::NeighAdd => "neigh_add",
            Write::NeighDel => "neigh_del",
            Write::RouteAdd => "route_add",
            Write::Sysctl => "sysctl",
        }
    }
}

/// Label of the netlink write counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OpLabel {
    op: &'static str,
}

/// Label of the repair counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RepairLabel {
    action: &'static str,
}

/// What a repair pass did to one pod interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Repair {
    /// The host end was put back on its bridge (the bridge had been re-created), set up, or
    /// given its marker.
    Reattached,
    /// The veth pair was gone and was re-created in the running pod.
    Recreated,
}

impl Repair {
    fn label(self) -> &'static str {
        match self {
            Repair::Reattached => "reattached",
            Repair::Recreated => "recreated",
        }
    }
}

/// A step of attaching a pod to its networks (CNI ADD and hot attach alike).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Resolving each request against its network and this node's NodeBridge.
    Admit,
    /// Journaling the addresses.
    Reserve,
    /// Creating the veth pairs, addresses and routes in the pod.
    Interfaces,
}

impl Phase {
    const ALL: [Phase; 3] = [Phase::Admit, Phase::Reserve, Phase::Interfaces];

    fn label(self) -> &'static str {
        match self {
            Phase::Admit => "admit",
            Phase::Reserve => "reserve",
            Phase::Interfaces => "interfaces",
        }
    }
}

/// How an attachment is made or undone: by the runtime's CNI call or by the agent's hot-plug
/// pass (an edited `bridgenet.io/networks` annotation on a running pod).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Path {
    /// CNI ADD.
    CniAdd,
    /// CNI DEL.
    CniDel,
    /// A network added to a running pod.
    HotAttach,
    /// A network removed from a running pod.
    HotDetach,
}

impl Path {
    fn label(self) -> &'static str {
        match self {
            Path::CniAdd => "cni_add",
            Path::CniDel => "cni_del",
            Path::HotAttach => "hot_attach",
            Path::HotDetach => "hot_detach",
        }
    }
}

/// Label of the phase histogram.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PhaseLabel {
    phase: &'static str,
}

/// Label of the attach/detach duration histograms.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PathLabel {
    path: &'static str,
}

/// Labels of the failure counter: both come from closed sets (the operation and the CNI
/// error code's name), never from the message.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FailureLabel {
    operation: &'static str,
    reason: &'static str,
}

/// Label of the per-network gauges: networks are bounded by the cluster's BridgeNetworks.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NetworkLabel {
    network: String,
}

/// What this node holds of one network, derived from the IPAM journal on every report pass.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetworkUsage {
    /// The BridgeNetwork.
    pub network: String,
    /// Pod interfaces attached to it on this node.
    pub attachments: u64,
    /// IPv4 addresses journaled on this node.
    pub used: u64,
    /// IPv4 addresses still free in this node's blocks.
    pub free: u64,
}

/// The agent's metrics, prefixed `bridgenet_agent_`.
pub struct Metrics {
    registry: Registry,
    netlink_writes: Family<OpLabel, Counter>,
    nftables_writes: Counter,
    repairs: Family<RepairLabel, Counter>,
    attach_phases: Family<PhaseLabel, Histogram, fn() -> Histogram>,
    durations: Family<PathLabel, Histogram, fn() -> Histogram>,
    failures: Family<FailureLabel, Counter>,
    attachments: Family<NetworkLabel, Gauge>,
    addresses_used: Family<NetworkLabel, Gauge>,
    addresses_free: Family<NetworkLabel, Gauge>,
    dns_queries: Family<DnsLabel, Counter>,
    dns_names: Family<NetworkLabel, Gauge>,
}

/// Labels of the DNS query counter: the network (bounded by the BridgeNetworks) and how the
/// query ended (a closed set).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DnsLabel {
    network: String,
    outcome: &'static str,
}

/// Buckets from 1 ms to about 16 s: a phase takes milliseconds, but a call can wait up to the
/// network grace for a NodeBridge that is not there yet.
fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 15))
}

impl Metrics {
    fn new() -> Self {
        let mut registry = Registry::with_prefix("bridgenet_agent");
        let netlink_writes = Family::<OpLabel, Counter>::default();
        // Every series exists from the start: a quiet node shows zeros, not nothing.
        for write in Write::ALL {
            drop(netlink_writes.get_or_create(&OpLabel { op: write.label() }));
        }
        let nftables_writes = Counter::default();
        let repairs = Family::<RepairLabel, Counter>::default();
        for action in [Repair::Reattached, Repair::Recreated] {
            drop(repairs.get_or_create(&RepairLabel {
                action: action.label(),
            }));
        }
        registry.register(
            "netlink_writes",
            "Netlink requests (and sysctl writes) that change kernel state, by message",
            netlink_writes.clone(),
        );
        registry.register(
            "nftables_writes",
            "nftables transactions committed by the agent",
            nftables_writes.clone(),
        );
        registry.register(
            "pod_interface_repairs",
            "Pod interfaces put back on their network by a repair pass, by action",
            repairs.clone(),
        );
        let attach_phases: Family<PhaseLabel, Histogram, fn() -> Histogram> =
            Family::new_with_constructor(latency_histogram);
        for phase in Phase::ALL {
            drop(attach_phases.get_or_create(&PhaseLabel {
                phase: phase.label(),
            }));
        }
        let durations: Family<PathLabel, Histogram, fn() -> Histogram> =
            Family::new_with_constructor(latency_histogram);
        for path in [Path::CniAdd, Path::CniDel, Path::HotAttach, Path::HotDetach] {
            drop(durations.get_or_create(&PathLabel { path: path.label() }));
        }
        let failures = Family::<FailureLabel, Counter>::default();
        let attachments = Family::<NetworkLabel, Gauge>::default();
        let addresses_used = Family::<NetworkLabel, Gauge>::default();
        let addresses_free = Family::<NetworkLabel, Gauge>::default();
        registry.register(
            "attach_phase_duration_seconds",
            "Time each phase of attaching a pod took (CNI ADD and hot attach), by phase",
            attach_phases.clone(),
        );
        registry.register(
            "operation_duration_seconds",
            "Time a whole attach or detach took, failed ones included, by path",
            durations.clone(),
        );
        registry.register(
            "operation_failures",
            "CNI calls and hot-plug attempts that failed, by operation and CNI error reason",
            failures.clone(),
        );
        registry.register(
            "attachments",
            "Pod interfaces attached on this node, by network",
            attachments.clone(),
        );
        registry.register(
            "addresses_used",
            "IPv4 addresses allocated on this node, by network",
            addresses_used.clone(),
        );
        registry.register(
            "addresses_free",
            "IPv4 addresses still free in this node's blocks, by network",
            addresses_free.clone(),
        );
        let dns_queries = Family::<DnsLabel, Counter>::default();
        let dns_names = Family::<NetworkLabel, Gauge>::default();
        registry.register(
            "dns_queries",
            "DNS queries to the network resolvers, by network and outcome (answered, nxdomain, \
             forwarded, upstream_failed, refused, malformed, limited, ignored)",
            dns_queries.clone(),
        );
        registry.register(
            "dns_names",
            "Names (pods and aliases) the resolver answers for, by network",
            dns_names.clone(),
        );
        Metrics {
            registry,
            netlink_writes,
            nftables_writes,
            repairs,
            attach_phases,
            durations,
            failures,
            attachments,
            addresses_used,
            addresses_free,
            dns_queries,
            dns_names,
        }
    }

    /// The OpenMetrics text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    /// Netlink writes so far (all messages).
    pub fn netlink_writes_total(&self) -> u64 {
        Write::ALL
            .into_iter()
            .map(|w| {
                self.netlink_writes
                    .get_or_create(&OpLabel { op: w.label() })
                    .get()
            })
            .sum()
    }

    /// nftables transactions so far.
    pub fn nftables_writes_total(&self) -> u64 {
        self.nftables_writes.get()
    }
}

/// The process's metrics.
pub fn global() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(Metrics::new)
}

/// Counts one kernel write (call it for every request sent, whether or not it succeeds: a
/// refused write is still a write attempt that a quiet node must not make).
pub fn netlink_write(write: Write) {
    global()
        .netlink_writes
        .get_or_create(&OpLabel { op: write.label() })
        .inc();
}

/// Counts one nftables transaction.
pub fn nftables_write() {
    global().nftables_writes.inc();
}

/// Counts one repaired pod interface.
pub fn repaired(repair: Repair) {
    global()
        .repairs
        .get_or_create(&RepairLabel {
            action: repair.label(),
        })
        .inc();
}

/// Times the phases of one attach: each [`Stopwatch::lap`] observes the time since the
/// previous one (or the start).
pub struct Stopwatch {
    last: Instant,
}

impl Stopwatch {
    /// Starts timing.
    pub fn start() -> Self {
        Stopwatch {
            last: Instant::now(),
        }
    }

    /// Records `phase` as just finished.
    pub fn lap(&mut self, phase: Phase) {
        let now = Instant::now();
        global()
            .attach_phases
            .get_or_create(&PhaseLabel {
                phase: phase.label(),
            })
            .observe(now.duration_since(self.last).as_secs_f64());
        self.last = now;
    }
}

/// Records a whole attach or detach by `path`, started at `started`.
pub fn finished(path: Path, started: Instant) {
    global()
        .durations
        .get_or_create(&PathLabel { path: path.label() })
        .observe(started.elapsed().as_secs_f64());
}

/// The name of a CNI error code, as the failure counter's `reason`.
fn reason(code: u32) -> &'static str {
    match code {
        code::INCOMPATIBLE_VERSION => "incompatible_version",
        code::UNSUPPORTED_FIELD => "unsupported_field",
        code::UNKNOWN_CONTAINER => "unknown_container",
        code::INVALID_ENV => "invalid_env",
        code::IO_FAILURE => "io_failure",
        code::DECODE_FAILURE => "decode_failure",
        code::INVALID_CONFIG => "invalid_config",
        code::TRY_AGAIN_LATER => "try_again_later",
        code::NOT_AVAILABLE => "not_available",
        code::POD_REQUEST_REJECTED => "pod_request_rejected",
        code::NETLINK_FAILURE => "netlink_failure",
        code::IPAM_FAILURE => "ipam_failure",
        code::CHECK_FAILED => "check_failed",
        _ => "other",
    }
}

/// Counts one failed CNI call.
pub fn cni_failed(command: Command, error_code: u32) {
    let operation = match command {
        Command::Add => "cni_add",
        Command::Del => "cni_del",
        Command::Check => "cni_check",
        Command::Status => "cni_status",
        Command::Gc => "cni_gc",
        Command::Version => "cni_version",
    };
    failed(operation, error_code);
}

/// Counts one failed hot-plug attempt.
pub fn hotplug_failed(path: Path, error_code: u32) {
    failed(path.label(), error_code);
}

fn failed(operation: &'static str, error_code: u32) {
    global()
        .failures
        .get_or_create(&FailureLabel {
            operation,
            reason: reason(error_code),
        })
        .inc();
}

/// Replaces the per-network gauges with `usage`: a network no longer on this node loses its
/// series instead of showing its last value forever.
pub fn set_network_usage(usage: &[NetworkUsage]) {
    let m = global();
    for family in [&m.attachments, &m.addresses_used, &m.addresses_free] {
        family.clear();
    }
    for u in usage {
        let label = NetworkLabel {
            network: u.network.clone(),
        };
        let set = |family: &Family<NetworkLabel, Gauge>, v: u64| {
            family
                .get_or_create(&label)
                .set(i64::try_from(v).unwrap_or(i64::MAX));
        };
        set(&m.attachments, u.attachments);
        set(&m.addresses_used, u.used);
        set(&m.addresses_free, u.free);
    }
}

/// Counts one DNS query of `network`'s resolver.
pub fn dns_query(network: &str, outcome: crate::dns::answer::Outcome) {
    global()
        .dns_queries
        .get_or_create(&DnsLabel {
            network: network.to_owned(),
            outcome: outcome.label(),
        })
        .inc();
}

/// Sets how many names `network`'s resolver answers for; `None` when it no longer serves the
/// network, which removes its series.
pub fn set_dns_names(network: &str, names: Option<usize>) {
    let m = global();
    let label = NetworkLabel {
        network: network.to_owned(),
    };
    match names {
        Some(n) => {
            m.dns_names
                .get_or_create(&label)
                .set(i64::try_from(n).unwrap_or(i64::MAX));
            for outcome in crate::dns::answer::Outcome::ALL {
                drop(m.dns_queries.get_or_create(&DnsLabel {
                    network: network.to_owned(),
                    outcome: outcome.label(),
                }));
            }
        }
        None => {
            m.dns_names.remove(&label);
        }
    }
}

/// The value of one series (its name and labels exactly as rendered), for tests elsewhere in
/// the crate.
#[cfg(test)]
pub(crate) fn sample(series: &str) -> Option<f64> {
    global().render().lines().find_map(|l| {
        l.strip_prefix(series)?
            .strip_prefix(' ')?
            .split(' ')
            .next()?
            .parse()
            .ok()
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_renders() {
        let before = global().netlink_writes_total();
        netlink_write(Write::LinkSet);
        netlink_write(Write::Sysctl);
        assert!(global().netlink_writes_total() >= before + 2);
        nftables_write();
        repaired(Repair::Recreated);
        let text = global().render();
        assert!(
            text.contains("bridgenet_agent_netlink_writes_total{op=\"link_set\"}"),
            "{text}"
        );
        assert!(
            text.contains("bridgenet_agent_nftables_writes_total"),
            "{text}"
        );
        assert!(
            text.contains("bridgenet_agent_pod_interface_repairs_total{action=\"recreated\"}"),
            "{text}"
        );
    }

    #[test]
    fn times_fails_and_reports_usage() {
        let mut watch = Stopwatch::start();
        watch.lap(Phase::Admit);
        watch.lap(Phase::Interfaces);
        finished(Path::HotAttach, Instant::now());
        cni_failed(Command::Add, code::TRY_AGAIN_LATER);
        hotplug_failed(Path::HotAttach, 999);
        set_network_usage(&[NetworkUsage {
            network: "metrics-test-net".into(),
            attachments: 2,
            used: 3,
            free: 250,
        }]);
        let text = global().render();
        for needle in [
            "bridgenet_agent_attach_phase_duration_seconds_count{phase=\"admit\"}",
            "bridgenet_agent_attach_phase_duration_seconds_bucket{le=\"0.001\",phase=\"interfaces\"}",
            "bridgenet_agent_operation_duration_seconds_count{path=\"hot_attach\"}",
            "bridgenet_agent_operation_duration_seconds_count{path=\"cni_del\"}",
            "bridgenet_agent_operation_failures_total{operation=\"cni_add\",reason=\"try_again_later\"}",
            "bridgenet_agent_operation_failures_total{operation=\"hot_attach\",reason=\"other\"}",
            "bridgenet_agent_attachments{network=\"metrics-test-net\"} 2",
            "bridgenet_agent_addresses_used{network=\"metrics-test-net\"} 3",
            "bridgenet_agent_addresses_free{network=\"metrics-test-net\"} 250",
        ] {
            assert!(text.contains(needle), "missing {needle} in\n{text}");
        }
        // Observed, not only declared: the admit phase has a non-zero count.
        let count =
            sample("bridgenet_agent_attach_phase_duration_seconds_count{phase=\"admit\"}").unwrap();
        assert!(count >= 1.0, "{text}");
        // A network gone from the node loses its series.
        set_network_usage(&[]);
        assert!(!global().render().contains("metrics-test-net"));
    }
}
