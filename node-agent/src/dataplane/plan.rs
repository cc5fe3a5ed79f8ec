//! Pure planning: observed kernel state + [`Desired`] → the minimal ordered list of [`Op`]s.
//!
//! Nothing here touches the kernel, so ordering, idempotency and the ownership rules are unit
//! tested without root. The invariant the tests hold us to: applying a plan and planning
//! again yields an empty plan.

use std::collections::BTreeSet;
use std::net::IpAddr;

use bridgenet_crds::Mac;
use ipnet::IpNet;

use super::marker::network_of;
use super::netlink::{Link, LinkKind, NewLink, VxlanConfig};
use super::{Desired, Teardown};

/// Sysctl enabling IPv4 forwarding (the gateway routes for its pods).
pub const SYSCTL_FORWARD_V4: &str = "net/ipv4/ip_forward";
/// Sysctl enabling IPv6 forwarding.
pub const SYSCTL_FORWARD_V6: &str = "net/ipv6/conf/all/forwarding";

/// What the kernel has for one network, as far as the plan cares.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Observed {
    /// The link named like the bridge, whoever owns it.
    pub bridge: Option<Link>,
    /// The link named like the VXLAN port, whoever owns it.
    pub vxlan: Option<Link>,
    /// Addresses on the bridge (empty when it is absent or not ours).
    pub bridge_addresses: Vec<IpNet>,
    /// Flood-entry destinations on the VXLAN port (empty when absent or not ours).
    pub flood: Vec<IpAddr>,
    /// Current values of the sysctls the plan needs, `(key, value)`.
    pub sysctls: Vec<(String, String)>,
}

/// Changes to a link, named rather than indexed: the applier resolves names, since a link
/// created earlier in the same plan has no index yet.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PlannedChange {
    /// The network's marker alias, set on links just created or found unmarked.
    pub alias: Option<String>,
    /// MTU to set.
    pub mtu: Option<u32>,
    /// MAC to set (the bridge's gateway MAC).
    pub mac: Option<[u8; 6]>,
    /// Enslave to the bridge of this name.
    pub master: Option<String>,
    /// Set administratively up; `false` leaves the state alone.
    pub up: bool,
}

/// One kernel operation, naming links rather than indexes (see [`PlannedChange`]); each is
/// one netlink request or sysctl write when applied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// Write `value` to `/proc/sys/<key>`.
    WriteSysctl {
        /// Path under `/proc/sys`, e.g. `net/ipv4/ip_forward`.
        key: String,
        /// What to write, e.g. `1`.
        value: String,
    },
    /// Create the bridge or the VXLAN port.
    CreateLink(NewLink),
    /// Fix the attributes of a link of ours (marker, MTU, MAC, master, up).
    ChangeLink {
        /// Name of the link to change.
        link: String,
        /// The attributes that differ from the desired state.
        change: PlannedChange,
    },
    /// Delete a link of ours: teardown, a link left under an old name, or a VXLAN port whose
    /// immutable settings differ.
    DeleteLink {
        /// Name of the link to delete.
        link: String,
    },
    /// Add a gateway address to the bridge.
    AddAddress {
        /// The bridge's name.
        link: String,
        /// The address with the subnet's prefix length.
        addr: IpNet,
    },
    /// Remove an address from the bridge: a stale one, or every one at teardown (link-local
    /// addresses are the kernel's and stay).
    DeleteAddress {
        /// The bridge's name.
        link: String,
        /// The address with its prefix length as observed.
        addr: IpNet,
    },
    /// Add a peer node to the VXLAN port's all-zeros-MAC (flood) FDB entry.
    AppendFlood {
        /// The VXLAN port's name.
        link: String,
        /// The peer's underlay address.
        dst: IpAddr,
    },
    /// Remove a peer node that left the network from the flood entry.
    DeleteFlood {
        /// The VXLAN port's name.
        link: String,
        /// The peer's underlay address.
        dst: IpAddr,
    },
}

/// Why a network cannot be realized on this node as things stand.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    /// An interface with the bridge's name exists and is not ours.
    #[error(
        "interface {name} already exists and is not a bridgenet bridge for network {network} ({why}); \
         bridgenet never takes over foreign interfaces: rename or delete it, or set another `bridge` name on the BridgeNetwork"
    )]
    BridgeNameTaken {
        /// The bridge name the spec asks for.
        name: String,
        /// The network that wanted it.
        network: String,
        /// What makes the interface foreign (kind, marker).
        why: String,
    },
    /// An interface with the VXLAN port's name exists and is not ours.
    #[error(
        "interface {name} (the overlay port of network {network}) already exists and is not bridgenet's ({why}); rename or delete it"
    )]
    VxlanNameTaken {
        /// The VXLAN port name, `bnvx-<vni>`.
        name: String,
        /// The network that wanted it.
        network: String,
        /// What makes the interface foreign (kind, marker, VNI).
        why: String,
    },
}

impl PlanError {
    /// Short reason for the NodeBridge's `Ready` condition and Events.
    pub fn reason(&self) -> &'static str {
        match self {
            PlanError::BridgeNameTaken { .. } => "BridgeNameTaken",
            PlanError::VxlanNameTaken { .. } => "OverlayNameTaken",
        }
    }
}

/// Whether `link` is ours: `Ok(true)` when it carries the marker, `Ok(false)` when it lacks the
/// marker but is evidently the one we created right before being killed (the kernel ignores the
/// alias on creation, so there is a window between creating a link and marking it), `Err` with
/// what makes it foreign otherwise. The evidence: a bridge with exactly this network's gateway
/// MAC (a hash of the network name, locally administered), or a VXLAN device with this
/// network's VNI.
fn ownership(link: &Link, desired: &Desired, want_bridge: bool) -> Result<bool, String> {
    let alias = desired.alias.as_str();
    if want_bridge && link.kind != LinkKind::Bridge {
        let kind = match &link.kind {
            LinkKind::Bridge => "bridge".to_owned(),
            LinkKind::Vxlan(_) => "vxlan".to_owned(),
            LinkKind::Other(k) => k.clone(),
        };
        return Err(format!("it is a {kind}, not a bridge"));
    }
    match &link.alias {
        Some(a) if a == alias => Ok(true),
        Some(a) => Err(format!("its alias is {a:?}, not {alias:?}")),
        None => {
            let evident = match &link.kind {
                LinkKind::Bridge => link.mac == Some(desired.mac),
                LinkKind::Vxlan(c) => c.vni == desired.vni,
                LinkKind::Other(_) => false,
            };
            if evident {
                Ok(false)
            } else {
                Err(format!("it lacks the marker alias {alias:?}"))
            }
        }
    }
}

/// The sysctls `desired` needs, `(key, value)`.
pub fn wanted_sysctls(desired: &Desired) -> Vec<(String, String)> {
    let mut v = vec![(SYSCTL_FORWARD_V4.to_owned(), "1".to_owned())];
    if desired.v6.is_some() {
        v.push((SYSCTL_FORWARD_V6.to_owned(), "1".to_owned()));
    }
    v
}

/// The VXLAN configuration `desired` needs.
pub fn wanted_vxlan(desired: &Desired) -> VxlanConfig {
    VxlanConfig {
        vni: desired.vni,
        local: Some(desired.underlay),
        port: desired.vxlan_port,
        // Learning maps each remote pod's MAC to its node from the frames that node sends, so
        // unicast goes to that one node; only broadcast and not-yet-learned destinations use
        // the flood entries (every peer). The anycast gateway's MAC is never learned: the
        // bridge-family fence keeps frames from it off the overlay.
        learning: true,
    }
}

fn is_link_local(addr: &IpNet) -> bool {
    match addr.addr() {
        IpAddr::V6(v6) => (v6.segments()[0] & 0xffc0) == 0xfe80,
        IpAddr::V4(_) => false,
    }
}

/// Plans the operations that make the kernel match `desired`.
///
/// Order matters and is fixed: sysctls; the bridge (create or fix MTU/MAC); its gateway
/// addresses (new ones added before stale ones are removed, so the gateway never disappears);
/// the bridge up; then the VXLAN port (recreated only if its immutable settings differ),
/// enslaved and up; then flood entries. A bridge that already matches is never touched, so
/// running pods keep their attachment across agent restarts.
pub fn plan(desired: &Desired, observed: &Observed) -> Result<Vec<Op>, PlanError> {
    let mut ops = Vec::new();

    for (key, value) in wanted_sysctls(desired) {
        let current = observed
            .sysctls
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v.trim());
        if current != Some(value.as_str()) {
            ops.push(Op::WriteSysctl { key, value });
        }
    }

    // Bridge.
    let (bridge, bridge_marked) = match &observed.bridge {
        Some(link) => match ownership(link, desired, true) {
            Ok(marked) => (Some(link), marked),
            Err(why) => {
                return Err(PlanError::BridgeNameTaken {
                    name: desired.bridge.clone(),
                    network: desired.network.clone(),
                    why,
                });
            }
        },
        None => (None, false),
    };
    let vxlan_marked = match &observed.vxlan {
        Some(link) => match ownership(link, desired, false) {
            Ok(marked) => marked,
            Err(why) => {
                return Err(PlanError::VxlanNameTaken {
                    name: link.name.clone(),
                    network: desired.network.clone(),
                    why,
                });
            }
        },
        None => false,
    };

    let mut bridge_change = PlannedChange::default();
    match bridge {
        None => {
            ops.push(Op::CreateLink(NewLink {
                name: desired.bridge.clone(),
                kind: LinkKind::Bridge,
                mtu: desired.mtu,
                mac: Some(desired.mac),
            }));
            bridge_change.alias = Some(desired.alias.clone());
            bridge_change.up = true;
        }
        Some(link) => {
            if !bridge_marked {
                bridge_change.alias = Some(desired.alias.clone());
            }
            if link.mtu != desired.mtu {
                bridge_change.mtu = Some(desired.mtu);
            }
            if link.mac != Some(desired.mac) {
                bridge_change.mac = Some(desired.mac);
            }
            bridge_change.up = !link.up;
        }
    }
    let bridge_up = bridge_change.up;
    bridge_change.up = false;
    if bridge_change != PlannedChange::default() {
        ops.push(Op::ChangeLink {
            link: desired.bridge.clone(),
            change: bridge_change,
        });
    }

    let wanted_addrs = desired.gateway_addresses();
    let have: &[IpNet] = if bridge.is_some() {
        &observed.bridge_addresses
    } else {
        &[]
    };
    for addr in &wanted_addrs {
        if !have.contains(addr) {
            ops.push(Op::AddAddress {
                link: desired.bridge.clone(),
                addr: *addr,
            });
        }
    }
    for addr in have {
        if !wanted_addrs.contains(addr) && !is_link_local(addr) {
            ops.push(Op::DeleteAddress {
                link: desired.bridge.clone(),
                addr: *addr,
            });
        }
    }
    if bridge_up {
        ops.push(Op::ChangeLink {
            link: desired.bridge.clone(),
            change: PlannedChange {
                up: true,
                ..PlannedChange::default()
            },
        });
    }

    // VXLAN port.
    let want_vx = wanted_vxlan(desired);
    let bridge_index = bridge.map(|b| b.index);
    let vxlan = match &observed.vxlan {
        Some(link) if link.kind == LinkKind::Vxlan(want_vx.clone()) => Some(link),
        Some(link) => {
            // VNI, local address and port cannot be changed on a live VXLAN device; the port
            // only carries overlay traffic, so recreating it interrupts cross-node traffic
            // briefly and leaves local pods alone.
            ops.push(Op::DeleteLink {
                link: link.name.clone(),
            });
            None
        }
        None => None,
    };
    let mut vx_change = PlannedChange::default();
    match vxlan {
        None => {
            ops.push(Op::CreateLink(NewLink {
                name: desired.vxlan.clone(),
                kind: LinkKind::Vxlan(want_vx),
                mtu: desired.mtu,
                mac: None,
            }));
            vx_change.alias = Some(desired.alias.clone());
            vx_change.master = Some(desired.bridge.clone());
            vx_change.up = true;
        }
        Some(link) => {
            if !vxlan_marked {
                vx_change.alias = Some(desired.alias.clone());
            }
            if link.mtu != desired.mtu {
                vx_change.mtu = Some(desired.mtu);
            }
            if bridge_index.is_none() || link.master != bridge_index {
                vx_change.master = Some(desired.bridge.clone());
            }
            vx_change.up = !link.up;
        }
    }
    if vx_change != PlannedChange::default() {
        ops.push(Op::ChangeLink {
            link: desired.vxlan.clone(),
            change: vx_change,
        });
    }

    let have_flood: BTreeSet<IpAddr> = if vxlan.is_some() {
        observed.flood.iter().copied().collect()
    } else {
        BTreeSet::new()
    };
    for dst in desired.peers.difference(&have_flood) {
        ops.push(Op::AppendFlood {
            link: desired.vxlan.clone(),
            dst: *dst,
        });
    }
    for dst in have_flood.difference(&desired.peers) {
        ops.push(Op::DeleteFlood {
            link: desired.vxlan.clone(),
            dst: *dst,
        });
    }
    Ok(ops)
}

/// Plans the removal of everything bridgenet made for `teardown.network`: the overlay port(s),
/// the bridge's addresses, then the bridge. `links` is every link of the namespace; only those
/// carrying the network's marker alias are touched, so a foreign interface that happens to
/// have the bridge's name survives. Sysctls are left as they are: forwarding is node-wide and
/// other software on the node may rely on it.
pub fn plan_teardown(teardown: &Teardown, links: &[Link], bridge_addresses: &[IpNet]) -> Vec<Op> {
    let alias = super::marker::alias_of(&teardown.network);
    let ours = |l: &&Link| l.alias.as_deref() == Some(alias.as_str());
    let mut ops: Vec<Op> = links
        .iter()
        .filter(ours)
        .filter(|l| l.kind != LinkKind::Bridge)
        .map(|l| Op::DeleteLink {
            link: l.name.clone(),
        })
        .collect();
    let bridges: Vec<&Link> = links
        .iter()
        .filter(ours)
        .filter(|l| l.kind == LinkKind::Bridge)
        .collect();
    for bridge in bridges {
        if bridge.name == teardown.bridge {
            for addr in bridge_addresses.iter().filter(|a| !is_link_local(a)) {
                ops.push(Op::DeleteAddress {
                    link: bridge.name.clone(),
                    addr: *addr,
                });
            }
        }
        ops.push(Op::DeleteLink {
            link: bridge.name.clone(),
        });
    }
    ops
}

/// Links carrying `desired`'s marker under another name than its bridge and overlay port
/// (left behind when the VNI or bridge name of a network changed): returns the deletions to
/// run before the plan (overlay ports, so the old VNI never carries traffic next to the new
/// one) and after it (bridges, once nothing is moved off them).
pub fn plan_stale(desired: &Desired, links: &[Link]) -> (Vec<Op>, Vec<Op>) {
    let (mut before, mut after) = (Vec::new(), Vec::new());
    for link in links {
        if link.alias.as_deref() != Some(desired.alias.as_str())
            || link.name == desired.bridge
            || link.name == desired.vxlan
        {
            continue;
        }
        let op = Op::DeleteLink {
            link: link.name.clone(),
        };
        if link.kind == LinkKind::Bridge {
            after.push(op);
        } else {
            before.push(op);
        }
    }
    (before, after)
}

/// Networks that have links on the node (by marker alias) but are not in `known`: leftovers of
/// NodeBridges deleted while the agent was down without their finalizer running.
pub fn orphaned_networks<'a>(links: &'a [Link], known: &BTreeSet<String>) -> BTreeSet<&'a str> {
    links
        .iter()
        .filter_map(|l| network_of(l.alias.as_deref()?))
        .filter(|n| !known.contains(*n))
        .collect()
}

impl std::fmt::Display for Op {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Op::WriteSysctl { key, value } => write!(f, "sysctl {key}={value}"),
            Op::CreateLink(l) => match &l.kind {
                LinkKind::Vxlan(c) => {
                    write!(f, "create vxlan {} vni {} port {}", l.name, c.vni, c.port)
                }
                _ => write!(
                    f,
                    "create bridge {} mtu {} mac {}",
                    l.name,
                    l.mtu,
                    l.mac.map(|m| Mac::new(m).to_string()).unwrap_or_default()
                ),
            },
            Op::ChangeLink { link, change } => write!(f, "change {link} {change:?}"),
            Op::DeleteLink { link } => write!(f, "delete link {link}"),
            Op::AddAddress { link, addr } => write!(f, "add address {addr} on {link}"),
            Op::DeleteAddress { link, addr } => write!(f, "delete address {addr} on {link}"),
            Op::AppendFlood { link, dst } => write!(f, "append flood entry {dst} on {link}"),
            Op::DeleteFlood { link, dst } => write!(f, "delete flood entry {dst} on {link}"),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::dataplane::apply::{Applier, ApplyError};
    use crate::dataplane::fake::FakeNetlink;
    use crate::dataplane::tests::{node, spec};
    use bridgenet_crds::v1alpha1::NodeBridgeIpv6;

    fn desired() -> Desired {
        Desired::from_spec(
            &spec("custom", "br-custom", "172.20.0.0/16", "172.20.0.1", 42),
            &node(),
        )
        .unwrap()
    }

    #[test]
    fn plan_from_nothing_is_ordered() {
        let d = desired();
        let ops = plan(&d, &Observed::default()).unwrap();
        let text: Vec<String> = ops.iter().map(ToString::to_string).collect();
        let pos = |needle: &str| {
            text.iter()
                .position(|t| t.starts_with(needle))
                .unwrap_or_else(|| panic!("{needle} missing in {text:#?}"))
        };
        assert!(pos("sysctl net/ipv4/ip_forward=1") < pos("create bridge br-custom"));
        assert!(pos("create bridge br-custom") < pos("add address 172.20.0.1/16 on br-custom"));
        assert!(pos("add address 172.20.0.1/16") < pos("create vxlan bnvx-42"));
        assert!(pos("create vxlan bnvx-42") < pos("append flood entry 192.0.2.2 on bnvx-42"));
        // The marker is set right after each creation: a kill in between is recoverable.
        let created = pos("create bridge");
        assert!(
            matches!(&ops[created + 1], Op::ChangeLink { link, change } if link == "br-custom" && change.alias.as_deref() == Some("bridgenet:custom"))
        );
        assert!(
            !text.iter().any(|t| t.contains("ipv6")),
            "no IPv6 sysctl for a v4-only network"
        );
    }

    #[tokio::test]
    async fn apply_twice_writes_nothing_the_second_time() {
        let mut s = spec("custom", "br-custom", "172.20.0.0/16", "172.20.0.1", 42);
        s.ipv6 = Some(NodeBridgeIpv6 {
            subnet: "fd00:20::/64".into(),
            gateway: "fd00:20::1".into(),
        });
        let d = Desired::from_spec(&s, &node()).unwrap();
        let mut a = Applier::new(FakeNetlink::default());
        let first = a.apply(&d).await.unwrap();
        assert!(!first.is_empty());
        let fake = a.netlink();
        assert_eq!(fake.sysctl(SYSCTL_FORWARD_V6), Some("1"));
        assert_eq!(fake.addresses_of("br-custom").len(), 2);
        assert_eq!(
            fake.flood_of("bnvx-42"),
            vec!["192.0.2.2".parse::<IpAddr>().unwrap()]
        );
        fake.clear_calls();
        let second = a.apply(&d).await.unwrap();
        assert!(second.is_empty(), "{second:?}");
        assert!(
            a.netlink().writes().is_empty(),
            "{:?}",
            a.netlink().writes()
        );
    }

    #[tokio::test]
    async fn foreign_interfaces_are_refused_and_untouched() {
        let d = desired();
        let mut fake = FakeNetlink::default();
        fake.insert_link("br-custom", LinkKind::Other("dummy".into()), None);
        let mut a = Applier::new(fake);
        let err = a.apply(&d).await.unwrap_err();
        assert_eq!(err.reason(), "BridgeNameTaken");
        assert!(a.netlink().writes().is_empty());

        // A bridge that is not ours (no marker, another MAC) is refused as well.
        let mut fake = FakeNetlink::default();
        fake.insert_link("br-custom", LinkKind::Bridge, None);
        let mut a = Applier::new(fake);
        assert!(matches!(
            a.apply(&d).await,
            Err(ApplyError::Plan(PlanError::BridgeNameTaken { .. }))
        ));

        let mut fake = FakeNetlink::default();
        fake.insert_link("br-custom", LinkKind::Bridge, Some("bridgenet:other"));
        let mut a = Applier::new(fake);
        assert!(matches!(
            a.apply(&d).await,
            Err(ApplyError::Plan(PlanError::BridgeNameTaken { .. }))
        ));
        assert!(a.netlink().writes().is_empty());
    }

    #[tokio::test]
    async fn killed_between_create_and_marker_is_adopted() {
        let d = desired();
        let mut fake = FakeNetlink::default();
        let i = fake.insert_link("br-custom", LinkKind::Bridge, None);
        let _ = i;
        fake.link_mut("br-custom").unwrap().mac = Some(d.mac);
        let mut a = Applier::new(fake);
        a.apply(&d).await.unwrap();
        let names = a.netlink().link_names();
        assert_eq!(
            names.iter().filter(|n| *n == "br-custom").count(),
            1,
            "adopted, not recreated"
        );
        a.netlink().clear_calls();
        assert!(a.apply(&d).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn drift_is_repaired_minimally() {
        let d = desired();
        let mut a = Applier::new(FakeNetlink::default());
        a.apply(&d).await.unwrap();

        // The VXLAN port deleted by hand: only it (and its flood entries) come back.
        assert!(a.netlink().remove_link("bnvx-42"));
        a.netlink().clear_calls();
        let ops = a.apply(&d).await.unwrap();
        assert!(
            ops.iter()
                .all(|o| !matches!(o, Op::CreateLink(l) if l.name == "br-custom"))
        );
        assert!(
            ops.iter()
                .any(|o| matches!(o, Op::CreateLink(l) if l.name == "bnvx-42"))
        );
        assert!(a.netlink().link_mut("bnvx-42").unwrap().master.is_some());

        // MTU changed by hand and the bridge set down: fixed in place.
        {
            let l = a.netlink().link_mut("br-custom").unwrap();
            l.mtu = 1500;
            l.up = false;
        }
        let ops = a.apply(&d).await.unwrap();
        assert!(
            !ops.iter()
                .any(|o| matches!(o, Op::CreateLink(_) | Op::DeleteLink { .. })),
            "{ops:?}"
        );
        assert_eq!(a.netlink().link_mut("br-custom").unwrap().mtu, 1450);

        // The whole bridge deleted: everything comes back.
        assert!(a.netlink().remove_link("br-custom"));
        a.apply(&d).await.unwrap();
        assert_eq!(a.netlink().addresses_of("br-custom").len(), 1);
        assert!(a.apply(&d).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn peers_and_gateway_changes_are_diffs() {
        let mut s = spec("custom", "br-custom", "172.20.0.0/16", "172.20.0.1", 42);
        let mut a = Applier::new(FakeNetlink::default());
        a.apply(&Desired::from_spec(&s, &node()).unwrap())
            .await
            .unwrap();
        s.peers.push(bridgenet_crds::v1alpha1::Peer {
            node: "node-c".into(),
            address: "192.0.2.3".into(),
            blocks: vec![],
        });
        s.peers.retain(|p| p.node != "node-b");
        let ops = a
            .apply(&Desired::from_spec(&s, &node()).unwrap())
            .await
            .unwrap();
        assert_eq!(ops.len(), 2, "{ops:?}");
        assert!(matches!(ops[0], Op::AppendFlood { dst, .. } if dst.to_string() == "192.0.2.3"));
        assert!(matches!(ops[1], Op::DeleteFlood { dst, .. } if dst.to_string() == "192.0.2.2"));

        // A changed VNI recreates the overlay port only.
        s.vni = 43;
        let d = Desired::from_spec(&s, &node()).unwrap();
        let ops = a.apply(&d).await.unwrap();
        assert!(
            ops.iter()
                .any(|o| matches!(o, Op::CreateLink(l) if l.name == "bnvx-43"))
        );
        assert!(
            !ops.iter()
                .any(|o| matches!(o, Op::CreateLink(l) if l.name == "br-custom"))
        );
        // The old overlay port goes first, so the old VNI never carries traffic again.
        assert_eq!(
            ops[0],
            Op::DeleteLink {
                link: "bnvx-42".into()
            }
        );
        let names = a.netlink().link_names();
        assert!(!names.contains(&"bnvx-42".to_owned()), "{names:?}");
        assert!(a.apply(&d).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn teardown_removes_only_ours_and_repeats() {
        let d = desired();
        let mut fake = FakeNetlink::default();
        fake.insert_link("eth0", LinkKind::Other("veth".into()), None);
        let mut a = Applier::new(fake);
        a.apply(&d).await.unwrap();
        let other = Desired::from_spec(
            &spec("other", "br-other", "172.21.0.0/16", "172.21.0.1", 7),
            &node(),
        )
        .unwrap();
        a.apply(&other).await.unwrap();

        let t = Teardown::from_spec(&spec(
            "custom",
            "br-custom",
            "172.20.0.0/16",
            "172.20.0.1",
            42,
        ));
        let ops = a.teardown(&t).await.unwrap();
        let order: Vec<String> = ops.iter().map(ToString::to_string).collect();
        assert_eq!(
            order,
            [
                "delete link bnvx-42",
                "delete address 172.20.0.1/16 on br-custom",
                "delete link br-custom"
            ]
        );
        let names = a.netlink().link_names();
        assert!(names.contains(&"eth0".to_owned()));
        assert!(names.contains(&"br-other".to_owned()) && names.contains(&"bnvx-7".to_owned()));
        assert!(!names.contains(&"br-custom".to_owned()) && !names.contains(&"bnvx-42".to_owned()));
        a.netlink().clear_calls();
        assert!(
            a.teardown(&t).await.unwrap().is_empty(),
            "second teardown has nothing to do"
        );
        assert!(a.netlink().writes().is_empty());
    }

    #[test]
    fn orphans_are_found_by_marker() {
        let links = vec![
            Link {
                index: 5,
                name: "br-a".into(),
                kind: LinkKind::Bridge,
                alias: Some("bridgenet:a".into()),
                mtu: 1450,
                mac: None,
                up: true,
                master: None,
            },
            Link {
                index: 6,
                name: "br-b".into(),
                kind: LinkKind::Bridge,
                alias: Some("bridgenet:b".into()),
                mtu: 1450,
                mac: None,
                up: true,
                master: None,
            },
            Link {
                index: 7,
                name: "docker0".into(),
                kind: LinkKind::Bridge,
                alias: None,
                mtu: 1500,
                mac: None,
                up: true,
                master: None,
            },
            // A pod's host veth: its marker is not a network's, so no network is inferred
            // from it (and nothing tears it down as a network's link).
            Link {
                index: 8,
                name: "bnv0123456789ab".into(),
                kind: LinkKind::Other("veth".into()),
                alias: Some(crate::dataplane::marker::pod_alias("sb-1", "net1")),
                mtu: 1450,
                mac: None,
                up: true,
                master: Some(5),
            },
        ];
        let known = BTreeSet::from(["a".to_owned()]);
        assert_eq!(orphaned_networks(&links, &known), BTreeSet::from(["b"]));
        let teardown = Teardown {
            network: "a".into(),
            bridge: "br-a".into(),
            vxlan: None,
        };
        assert!(
            !plan_teardown(&teardown, &links, &[])
                .iter()
                .any(|op| matches!(op, Op::DeleteLink { link } if link.starts_with("bnv"))),
            "a network's teardown leaves pod veths to CNI DEL"
        );
    }
}
