//! The node's data plane for bridge networks: what one NodeBridge becomes on this node, and the
//! code that makes the kernel match it.
//!
//! Layout (decide, then act):
//! - [`Desired`]: a NodeBridge spec resolved into concrete kernel objects (names, addresses,
//!   peers); pure, validated once.
//! - [`plan`]: observed kernel state + desired → the minimal list of [`plan::Op`]s; pure, unit
//!   tested without root. Running it on its own result yields no operation.
//! - [`apply`]: executes a plan through the [`netlink::Netlink`] trait (real: [`rtnl`], recording
//!   fake: [`fake`]), then the nftables ruleset in one atomic batch ([`firewall`]).
//! - [`netns`]: runs the whole thing inside another network namespace (tests, benches).
//!
//! Overlay design: one L2 segment per network. Every node's bridge has a VXLAN port (VNI =
//! `spec.vni`) with an all-zeros-MAC flood entry per peer node, so broadcast and unknown
//! unicast reach every node of the network (head-end replication); the port learns which node
//! each remote MAC lives on, so unicast then goes to that node only. The gateway is
//! anycast: the same IP and MAC on every node's bridge; bridge-family nftables rules keep its
//! ARP/ND and every frame from or to its MAC off the VXLAN port, so each pod always talks to
//! its own node's gateway. See [`firewall`] for the rules and why.

pub mod apply;
#[cfg(any(test, feature = "testing"))]
pub mod fake;
pub mod firewall;
pub mod marker;
pub mod netlink;
pub mod netns;
pub mod nftmonitor;
pub mod node;
pub mod plan;
pub mod rtnl;

pub use node::{Dataplane, DataplaneError, link_deletions, marked_link_losses};

use std::collections::BTreeSet;
use std::net::IpAddr;

use bridgenet_crds::NodeBridgeSpec;
use bridgenet_crds::names::{MAX_IFNAME, is_valid_ifname};
use bridgenet_crds::net::{NetError, parse_cidr_field};
use ipnet::IpNet;

use self::marker::alias_of;

/// Default VXLAN UDP port (IANA).
pub const DEFAULT_VXLAN_PORT: u16 = 4789;

/// Node-wide facts the NodeBridge spec does not carry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeContext {
    /// This node's name; peers with this name are skipped.
    pub node_name: String,
    /// This node's underlay address: the VXLAN source address.
    pub underlay: IpAddr,
    /// VXLAN UDP destination port, the same on every node.
    pub vxlan_port: u16,
}

/// Everything one NodeBridge becomes on this node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Desired {
    /// The BridgeNetwork's name (owner tag on links and rules).
    pub network: String,
    /// Bridge name.
    pub bridge: String,
    /// VXLAN port name, derived from the VNI.
    pub vxlan: String,
    /// The marker alias both links carry.
    pub alias: String,
    /// Bridge (gateway) MAC, the same on every node.
    pub mac: [u8; 6],
    /// MTU of the bridge and the VXLAN port.
    pub mtu: u32,
    /// IPv4 subnet.
    pub subnet4: IpNet,
    /// IPv4 gateway with the subnet's prefix, as put on the bridge.
    pub gateway4: IpNet,
    /// IPv6 subnet and gateway (with prefix), when dual stack.
    pub v6: Option<(IpNet, IpNet)>,
    /// VXLAN network identifier.
    pub vni: u32,
    /// Local VXLAN endpoint address.
    pub underlay: IpAddr,
    /// VXLAN UDP port.
    pub vxlan_port: u16,
    /// Underlay addresses of the other nodes of the network.
    pub peers: BTreeSet<IpAddr>,
    /// No traffic leaves the network.
    pub internal: bool,
    /// Masquerade egress.
    pub masquerade: bool,
    /// Pods may talk to each other.
    pub inter_pod_traffic: bool,
}

/// Why a NodeBridge spec cannot be realized as written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    /// A CIDR field does not parse.
    #[error("NodeBridge {network}: {source}")]
    Address {
        /// Network name.
        network: String,
        /// The address problem.
        source: NetError,
    },
    /// The gateway is not inside the subnet.
    #[error("NodeBridge {network}: gateway {gateway} is not inside subnet {subnet}")]
    GatewayOutsideSubnet {
        /// Network name.
        network: String,
        /// Gateway as written.
        gateway: String,
        /// Subnet as written.
        subnet: String,
    },
    /// A field that must be an address is not one.
    #[error("NodeBridge {network}: {field} {value:?} is not an IP address")]
    BadAddress {
        /// Network name.
        network: String,
        /// Field name.
        field: &'static str,
        /// Value as written.
        value: String,
    },
    /// Bridge name unusable as a Linux interface name.
    #[error(
        "NodeBridge {network}: bridge name {bridge:?} is not a valid interface name (1-15 bytes of [A-Za-z0-9_.-])"
    )]
    BadBridgeName {
        /// Network name.
        network: String,
        /// Bridge name.
        bridge: String,
    },
    /// gatewayMac not a unicast MAC.
    #[error("NodeBridge {network}: gatewayMac {mac:?} is not a unicast MAC like 02:42:ac:14:00:01")]
    BadMac {
        /// Network name.
        network: String,
        /// Value as written.
        mac: String,
    },
    /// VNI outside 24 bits.
    #[error("NodeBridge {network}: vni {vni} is outside 1..=16777215")]
    BadVni {
        /// Network name.
        network: String,
        /// VNI.
        vni: u32,
    },
    /// MTU out of range.
    #[error("NodeBridge {network}: mtu {mtu} is outside 576..=65535")]
    BadMtu {
        /// Network name.
        network: String,
        /// MTU.
        mtu: u32,
    },
}

impl SpecError {
    /// Short machine-readable reason for conditions and events.
    pub fn reason(&self) -> &'static str {
        "InvalidSpec"
    }
}

/// VXLAN port name of a network: `bnvx-<vni>` (≤ 13 bytes for a 24-bit VNI). Derived from the
/// VNI rather than the bridge name so that it is unique per network cluster-wide and the same
/// on every node, which makes `ip -d link` output easy to correlate across nodes.
pub fn vxlan_name(vni: u32) -> String {
    let name = format!("bnvx-{vni}");
    debug_assert!(name.len() <= MAX_IFNAME);
    name
}

/// Parses `aa:bb:cc:dd:ee:ff`.
pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut out = [0u8; 6];
    let mut parts = s.split(':');
    for byte in &mut out {
        let p = parts.next()?;
        if p.len() != 2 {
            return None;
        }
        *byte = u8::from_str_radix(p, 16).ok()?;
    }
    parts.next().is_none().then_some(out)
}

/// Formats a MAC as `aa:bb:cc:dd:ee:ff`.
pub fn format_mac(mac: &[u8]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

fn with_prefix(
    network: &str,
    field: &'static str,
    gateway: &str,
    subnet: &IpNet,
) -> Result<IpNet, SpecError> {
    let ip: IpAddr = gateway.parse().map_err(|_| SpecError::BadAddress {
        network: network.to_owned(),
        field,
        value: gateway.to_owned(),
    })?;
    if !subnet.contains(&ip) {
        return Err(SpecError::GatewayOutsideSubnet {
            network: network.to_owned(),
            gateway: gateway.to_owned(),
            subnet: subnet.to_string(),
        });
    }
    IpNet::new(ip, subnet.prefix_len()).map_err(|_| SpecError::BadAddress {
        network: network.to_owned(),
        field,
        value: gateway.to_owned(),
    })
}

impl Desired {
    /// Resolves a NodeBridge spec for this node.
    pub fn from_spec(spec: &NodeBridgeSpec, node: &NodeContext) -> Result<Self, SpecError> {
        let network = spec.network.clone();
        let addr_err = |source| SpecError::Address {
            network: network.clone(),
            source,
        };
        if !is_valid_ifname(&spec.bridge) {
            return Err(SpecError::BadBridgeName {
                network,
                bridge: spec.bridge.clone(),
            });
        }
        let mac = parse_mac(&spec.gateway_mac)
            .filter(|m| m[0] & 1 == 0 && *m != [0; 6])
            .ok_or_else(|| SpecError::BadMac {
                network: network.clone(),
                mac: spec.gateway_mac.clone(),
            })?;
        if spec.vni == 0 || spec.vni > 0x00ff_ffff {
            return Err(SpecError::BadVni {
                network,
                vni: spec.vni,
            });
        }
        if !(576..=65535).contains(&spec.mtu) {
            return Err(SpecError::BadMtu {
                network,
                mtu: spec.mtu,
            });
        }
        let subnet4 = parse_cidr_field("subnet", &spec.subnet).map_err(addr_err)?;
        let gateway4 = with_prefix(&network, "gateway", &spec.gateway, &subnet4)?;
        let v6 = match &spec.ipv6 {
            None => None,
            Some(v6) => {
                let subnet = parse_cidr_field("ipv6.subnet", &v6.subnet).map_err(addr_err)?;
                let gw = with_prefix(&network, "ipv6.gateway", &v6.gateway, &subnet)?;
                Some((subnet, gw))
            }
        };
        let mut peers = BTreeSet::new();
        for peer in &spec.peers {
            if peer.node == node.node_name {
                continue;
            }
            let ip: IpAddr = peer.address.parse().map_err(|_| SpecError::BadAddress {
                network: network.clone(),
                field: "peers[].address",
                value: peer.address.clone(),
            })?;
            // A VXLAN device has one local address family; a peer reachable only in the
            // other family cannot be a flood destination (the kernel refuses the entry), and
            // refusing the whole network for it would cut off the peers that do fit.
            if ip != node.underlay && ip.is_ipv4() == node.underlay.is_ipv4() {
                peers.insert(ip);
            }
        }
        Ok(Desired {
            alias: alias_of(&network),
            bridge: spec.bridge.clone(),
            vxlan: vxlan_name(spec.vni),
            mac,
            mtu: spec.mtu,
            subnet4,
            gateway4,
            v6,
            vni: spec.vni,
            underlay: node.underlay,
            vxlan_port: node.vxlan_port,
            peers,
            internal: spec.internal,
            masquerade: spec.masquerade,
            inter_pod_traffic: spec.inter_pod_traffic,
            network,
        })
    }

    /// The gateway addresses that belong on the bridge.
    pub fn gateway_addresses(&self) -> Vec<IpNet> {
        let mut v = vec![self.gateway4];
        if let Some((_, gw6)) = self.v6 {
            v.push(gw6);
        }
        v
    }
}

/// A network's objects to remove, known even when its NodeBridge spec is gone or invalid.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Teardown {
    /// Network name (alias / rule owner).
    pub network: String,
    /// Bridge name.
    pub bridge: String,
    /// VXLAN port name, when known.
    pub vxlan: Option<String>,
}

impl Teardown {
    /// What to remove for a NodeBridge spec, without validating the rest of it.
    pub fn from_spec(spec: &NodeBridgeSpec) -> Self {
        Teardown {
            network: spec.network.clone(),
            bridge: spec.bridge.clone(),
            vxlan: (spec.vni > 0 && spec.vni <= 0x00ff_ffff).then(|| vxlan_name(spec.vni)),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
pub(crate) mod tests {
    use super::*;
    use bridgenet_crds::v1alpha1::{NodeBridgeIpv6, Peer};

    pub(crate) fn node() -> NodeContext {
        NodeContext {
            node_name: "node-a".into(),
            underlay: "192.0.2.1".parse().unwrap(),
            vxlan_port: DEFAULT_VXLAN_PORT,
        }
    }

    pub(crate) fn spec(
        network: &str,
        bridge: &str,
        subnet: &str,
        gw: &str,
        vni: u32,
    ) -> NodeBridgeSpec {
        NodeBridgeSpec {
            network: network.into(),
            node: "node-a".into(),
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
            peers: vec![
                Peer {
                    node: "node-a".into(),
                    address: "192.0.2.1".into(),
                    blocks: vec![],
                },
                Peer {
                    node: "node-b".into(),
                    address: "192.0.2.2".into(),
                    blocks: vec![],
                },
            ],
        }
    }

    #[test]
    fn resolves_spec() {
        let mut s = spec("custom", "br-custom", "172.20.0.0/16", "172.20.0.1", 42);
        s.ipv6 = Some(NodeBridgeIpv6 {
            subnet: "fd00:20::/64".into(),
            gateway: "fd00:20::1".into(),
        });
        let d = Desired::from_spec(&s, &node()).unwrap();
        assert_eq!(d.gateway4.to_string(), "172.20.0.1/16");
        assert_eq!(d.v6.unwrap().1.to_string(), "fd00:20::1/64");
        assert_eq!(d.vxlan, "bnvx-42");
        assert_eq!(d.alias, "bridgenet:custom");
        let peers: Vec<String> = d.peers.iter().map(|p| p.to_string()).collect();
        assert_eq!(peers, ["192.0.2.2"], "self is not a peer");
        let mut s6 = s.clone();
        s6.peers.push(Peer {
            node: "node-v6".into(),
            address: "2001:db8::3".into(),
            blocks: vec![],
        });
        let d6 = Desired::from_spec(&s6, &node()).unwrap();
        assert_eq!(d6.peers.len(), 1, "a peer of the other family is skipped");
        assert_eq!(vxlan_name(0x00ff_ffff).len(), 13);
    }

    #[test]
    fn rejects_bad_specs() {
        let n = node();
        let mut s = spec("x", "br-x", "172.20.0.0/16", "172.21.0.1", 1);
        assert!(matches!(
            Desired::from_spec(&s, &n),
            Err(SpecError::GatewayOutsideSubnet { .. })
        ));
        s.gateway = "172.20.0.1".into();
        s.gateway_mac = "03:00:00:00:00:01".into();
        assert!(matches!(
            Desired::from_spec(&s, &n),
            Err(SpecError::BadMac { .. })
        ));
        s.gateway_mac = "02:00:00:00:00:01".into();
        s.vni = 1 << 24;
        assert!(matches!(
            Desired::from_spec(&s, &n),
            Err(SpecError::BadVni { .. })
        ));
        s.vni = 7;
        s.bridge = "this-is-too-long-x".into();
        assert!(matches!(
            Desired::from_spec(&s, &n),
            Err(SpecError::BadBridgeName { .. })
        ));
        s.bridge = "br-x".into();
        s.subnet = "172.20.0.1/16".into();
        assert!(matches!(
            Desired::from_spec(&s, &n),
            Err(SpecError::Address { .. })
        ));
    }

    #[test]
    fn mac_roundtrip() {
        let m = parse_mac("02:42:ac:14:00:01").unwrap();
        assert_eq!(format_mac(&m), "02:42:ac:14:00:01");
        assert!(parse_mac("02:42:ac:14:00").is_none());
        assert!(parse_mac("02:42:ac:14:00:01:02").is_none());
        assert!(parse_mac("zz:42:ac:14:00:01").is_none());
    }
}
