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

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

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

/// The agent's metrics, prefixed `bridgenet_agent_`.
pub struct Metrics {
    registry: Registry,
    netlink_writes: Family<OpLabel, Counter>,
    nftables_writes: Counter,
    repairs: Family<RepairLabel, Counter>,
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
        Metrics {
            registry,
            netlink_writes,
            nftables_writes,
            repairs,
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
}
