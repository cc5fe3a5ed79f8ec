//! A NodeBridge's spec parsed and checked once, the twin of [`crate::net::resolve`] for the
//! operator's BridgeNetwork: the agent's data plane, IPAM, CNI engine and status writer read
//! these typed values and never the strings of the spec.
//!
//! The operator writes NodeBridges from resolved networks, so a spec it wrote always resolves;
//! the checks are for hand-edited objects and for other writers, and each error names the
//! field to change.

use std::{collections::BTreeSet, net::IpAddr};

use ipnet::IpNet;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

use crate::{
    mac::Mac,
    names,
    net::{Family, MAX_MTU, MAX_VNI, MIN_MTU, NetError, parse_cidr_field, parse_ip_field},
    v1alpha1::NodeBridgeSpec,
};

/// One address family of a NodeBridge: the network's subnet and gateway, and what this node
/// hands out from it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeFamily {
    /// The network's subnet.
    pub subnet: IpNet,
    /// The gateway with the subnet's prefix length, as configured on the bridge
    /// (`172.20.0.1/16`); [`NodeFamily::gateway_ip`] is the bare address.
    pub gateway: IpNet,
    /// This node's blocks of this family, in spec order, each written with its network
    /// address (a block with host bits set is truncated, as the agent always did).
    pub blocks: Vec<IpNet>,
    /// `excludeAddresses` entries of this family.
    pub exclude: BTreeSet<IpAddr>,
}

impl NodeFamily {
    /// The gateway address pods route through.
    pub fn gateway_ip(&self) -> IpAddr {
        self.gateway.addr()
    }
}

/// Another node of the network, as the overlay needs it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct ResolvedPeer {
    /// Node name.
    pub node: String,
    /// The node's underlay address, the VXLAN tunnel endpoint.
    pub address: IpAddr,
}

/// A NodeBridge spec with every field parsed and checked.
#[derive(Clone, Debug, PartialEq)]
pub struct ResolvedNodeBridge {
    /// The BridgeNetwork's name.
    pub network: String,
    /// The node that realizes it.
    pub node: String,
    /// Linux bridge name, a valid interface name.
    pub bridge: String,
    /// The anycast gateway's MAC, unicast.
    pub gateway_mac: Mac,
    /// The IPv4 half.
    pub v4: NodeFamily,
    /// The IPv6 half of a dual-stack network.
    pub v6: Option<NodeFamily>,
    /// MTU of the bridge and pod interfaces, within the CRD's bounds.
    pub mtu: u32,
    /// VXLAN network identifier, 1 to [`MAX_VNI`].
    pub vni: u32,
    /// No traffic leaves the network.
    pub internal: bool,
    /// Masquerade egress through the node.
    pub masquerade: bool,
    /// Pods of the network may talk to each other.
    pub inter_pod_traffic: bool,
    /// The node answers DNS on the gateway addresses.
    pub dns: bool,
    /// Pods keep their addresses across re-creation (each held by an `AddressClaim`).
    pub sticky_addresses: bool,
    /// Namespaces whose pods may attach; `None` admits every namespace.
    pub namespace_selector: Option<LabelSelector>,
    /// Every node of the network listed in the spec, this one included.
    pub peers: Vec<ResolvedPeer>,
}

impl ResolvedNodeBridge {
    /// The IPv4 half, then the IPv6 one if any.
    pub fn families(&self) -> impl Iterator<Item = &NodeFamily> {
        std::iter::once(&self.v4).chain(self.v6.as_ref())
    }

    /// The half of `family`, if the network has one.
    pub fn family(&self, family: Family) -> Option<&NodeFamily> {
        match family {
            Family::V4 => Some(&self.v4),
            Family::V6 => self.v6.as_ref(),
        }
    }

    /// The gateway addresses, IPv4 first, as pods route through them.
    pub fn gateways(&self) -> Vec<IpAddr> {
        self.families().map(NodeFamily::gateway_ip).collect()
    }
}

/// Parses and checks a NodeBridge spec: a valid bridge name, a unicast gateway MAC, a 24-bit
/// non-zero VNI, an MTU in the CRD's bounds, canonical subnets of the right family with their
/// gateway inside, and blocks, excluded addresses and peer addresses that parse. Blocks and
/// excluded addresses must lie in a subnet of their family.
pub fn resolve_node_bridge(spec: &NodeBridgeSpec) -> Result<ResolvedNodeBridge, NetError> {
    if !names::is_valid_ifname(&spec.bridge) {
        return Err(NetError::InvalidBridgeName {
            name: spec.bridge.clone(),
        });
    }
    let gateway_mac = spec
        .gateway_mac
        .parse::<Mac>()
        .ok()
        .filter(|m| m.is_unicast())
        .ok_or_else(|| NetError::InvalidMac {
            field: "gatewayMac",
            value: spec.gateway_mac.clone(),
        })?;
    if spec.vni == 0 || spec.vni > MAX_VNI {
        return Err(NetError::VniOutOfBounds { vni: spec.vni });
    }
    if !(MIN_MTU..=MAX_MTU).contains(&spec.mtu) {
        return Err(NetError::MtuOutOfBounds { mtu: spec.mtu });
    }

    let mut v4 = family(
        Family::V4,
        ("subnet", &spec.subnet),
        ("gateway", &spec.gateway),
    )?;
    let mut v6 = spec
        .ipv6
        .as_ref()
        .map(|cfg| {
            family(
                Family::V6,
                ("ipv6.subnet", &cfg.subnet),
                ("ipv6.gateway", &cfg.gateway),
            )
        })
        .transpose()?;
    for value in &spec.blocks {
        let block = value
            .parse::<IpNet>()
            .map_err(|_| NetError::InvalidCidr {
                field: "blocks",
                value: value.clone(),
            })?
            .trunc();
        half_of(&mut v4, &mut v6, block.network())
            .filter(|half| half.subnet.contains(&block))
            .ok_or(NetError::BlockOutsideSubnet { block })?
            .blocks
            .push(block);
    }
    for value in &spec.exclude_addresses {
        let address = parse_ip_field("excludeAddresses", value)?;
        half_of(&mut v4, &mut v6, address)
            .ok_or(NetError::ExcludeOutsideSubnet { address })?
            .exclude
            .insert(address);
    }

    let peers = spec
        .peers
        .iter()
        .map(|peer| {
            Ok(ResolvedPeer {
                node: peer.node.clone(),
                address: parse_ip_field("peers[].address", &peer.address)?,
            })
        })
        .collect::<Result<Vec<_>, NetError>>()?;

    Ok(ResolvedNodeBridge {
        network: spec.network.clone(),
        node: spec.node.clone(),
        bridge: spec.bridge.clone(),
        gateway_mac,
        v4,
        v6,
        mtu: spec.mtu,
        vni: spec.vni,
        internal: spec.internal,
        masquerade: spec.masquerade,
        inter_pod_traffic: spec.inter_pod_traffic,
        dns: spec.dns,
        sticky_addresses: spec.sticky_addresses,
        namespace_selector: spec.namespace_selector.clone(),
        peers,
    })
}

/// The half whose subnet holds `ip`.
fn half_of<'a>(
    v4: &'a mut NodeFamily,
    v6: &'a mut Option<NodeFamily>,
    ip: IpAddr,
) -> Option<&'a mut NodeFamily> {
    match Family::of(ip) {
        Family::V4 => Some(v4),
        Family::V6 => v6.as_mut(),
    }
    .filter(|half| half.subnet.contains(&ip))
}

/// One family's subnet and gateway, each given as (field name, value as written).
fn family(
    family: Family,
    (subnet_field, subnet): (&'static str, &str),
    (gateway_field, gateway): (&'static str, &str),
) -> Result<NodeFamily, NetError> {
    let subnet_net = parse_cidr_field(subnet_field, subnet)?;
    if Family::of_net(&subnet_net) != family {
        return Err(NetError::WrongFamily {
            field: subnet_field,
            value: subnet.to_owned(),
            expected: family,
        });
    }
    let gateway_ip = parse_ip_field(gateway_field, gateway)?;
    if !subnet_net.contains(&gateway_ip) {
        return Err(NetError::GatewayOutsideSubnet {
            field: gateway_field,
            gateway: gateway_ip,
            subnet: subnet_net,
        });
    }
    // Same family and a prefix length the subnet already has: cannot fail, but an error
    // beats a panic if it ever did.
    let gateway =
        IpNet::new(gateway_ip, subnet_net.prefix_len()).map_err(|_| NetError::InvalidAddress {
            field: gateway_field,
            value: gateway.to_owned(),
        })?;
    Ok(NodeFamily {
        subnet: subnet_net,
        gateway,
        blocks: Vec::new(),
        exclude: BTreeSet::new(),
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use crate::v1alpha1::{NodeBridgeIpv6, Peer};

    fn spec() -> NodeBridgeSpec {
        NodeBridgeSpec {
            network: "custom".into(),
            node: "node-a".into(),
            bridge: "br-custom".into(),
            subnet: "172.20.0.0/16".into(),
            gateway: "172.20.0.1".into(),
            gateway_mac: names::gateway_mac("custom"),
            ipv6: Some(NodeBridgeIpv6 {
                subnet: "fd00:20::/64".into(),
                gateway: "fd00:20::1".into(),
            }),
            blocks: vec![
                "172.20.0.64/26".into(),
                "fd00:20::40/122".into(),
                "172.20.1.3/26".into(),
            ],
            exclude_addresses: vec!["172.20.0.70".into(), "fd00:20::41".into()],
            mtu: 1450,
            vni: 42,
            internal: false,
            masquerade: true,
            inter_pod_traffic: true,
            dns: true,
            sticky_addresses: false,
            namespace_selector: None,
            peers: vec![
                Peer {
                    node: "node-a".into(),
                    address: "192.0.2.1".into(),
                    blocks: vec![],
                },
                Peer {
                    node: "node-b".into(),
                    address: "2001:db8::2".into(),
                    blocks: vec!["172.20.0.0/26".into()],
                },
            ],
        }
    }

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn resolves_a_dual_stack_spec() {
        let r = resolve_node_bridge(&spec()).unwrap();
        assert_eq!(r.v4.subnet, net("172.20.0.0/16"));
        assert_eq!(r.v4.gateway, net("172.20.0.1/16"));
        assert_eq!(r.v4.gateway_ip(), ip("172.20.0.1"));
        assert_eq!(
            r.v4.blocks,
            [net("172.20.0.64/26"), net("172.20.1.0/26")],
            "per family, in spec order, truncated"
        );
        assert_eq!(r.v4.exclude, BTreeSet::from([ip("172.20.0.70")]));
        let v6 = r.v6.as_ref().unwrap();
        assert_eq!(v6.gateway, net("fd00:20::1/64"));
        assert_eq!(v6.blocks, [net("fd00:20::40/122")]);
        assert_eq!(v6.exclude, BTreeSet::from([ip("fd00:20::41")]));
        assert_eq!(r.gateways(), [ip("172.20.0.1"), ip("fd00:20::1")]);
        assert_eq!(r.gateway_mac.to_string(), names::gateway_mac("custom"));
        assert_eq!(r.peers[1].address, ip("2001:db8::2"));
        assert_eq!(r.family(Family::V6), Some(v6));
    }

    #[test]
    fn resolves_a_single_stack_spec() {
        let mut s = spec();
        s.ipv6 = None;
        s.blocks = vec!["172.20.0.0/26".into()];
        s.exclude_addresses.clear();
        let r = resolve_node_bridge(&s).unwrap();
        assert!(r.v6.is_none());
        assert_eq!(r.families().count(), 1);
        assert_eq!(r.gateways(), [ip("172.20.0.1")]);
    }

    fn refused(edit: impl FnOnce(&mut NodeBridgeSpec)) -> NetError {
        let mut s = spec();
        edit(&mut s);
        resolve_node_bridge(&s).unwrap_err()
    }

    #[test]
    fn refuses_a_bad_gateway_instead_of_dropping_it() {
        assert!(matches!(
            refused(|s| s.gateway = "172.20.0.x".into()),
            NetError::InvalidAddress {
                field: "gateway",
                ..
            }
        ));
        assert!(matches!(
            refused(|s| s.ipv6.as_mut().unwrap().gateway = "not-an-ip".into()),
            NetError::InvalidAddress {
                field: "ipv6.gateway",
                ..
            }
        ));
        assert!(matches!(
            refused(|s| s.gateway = "172.21.0.1".into()),
            NetError::GatewayOutsideSubnet {
                field: "gateway",
                ..
            }
        ));
    }

    #[test]
    fn refuses_bad_fields() {
        assert!(matches!(
            refused(|s| s.bridge = "this-is-too-long-x".into()),
            NetError::InvalidBridgeName { .. }
        ));
        assert!(matches!(
            refused(|s| s.gateway_mac = "03:00:00:00:00:01".into()),
            NetError::InvalidMac {
                field: "gatewayMac",
                ..
            }
        ));
        assert!(matches!(
            refused(|s| s.gateway_mac = "00:00:00:00:00:00".into()),
            NetError::InvalidMac { .. }
        ));
        assert!(matches!(
            refused(|s| s.vni = 0),
            NetError::VniOutOfBounds { vni: 0 }
        ));
        assert!(matches!(
            refused(|s| s.vni = 1 << 24),
            NetError::VniOutOfBounds { .. }
        ));
        assert!(matches!(
            refused(|s| s.mtu = 100),
            NetError::MtuOutOfBounds { mtu: 100 }
        ));
        assert!(matches!(
            refused(|s| s.subnet = "172.20.0.1/16".into()),
            NetError::NotCanonical {
                field: "subnet",
                ..
            }
        ));
        assert!(matches!(
            refused(|s| s.subnet = "fd00:30::/64".into()),
            NetError::WrongFamily {
                field: "subnet",
                ..
            }
        ));
        assert!(matches!(
            refused(|s| s.blocks.push("10.9.0.0/26".into())),
            NetError::BlockOutsideSubnet { .. }
        ));
        assert!(matches!(
            refused(|s| s.blocks.push("172.20.0.0/8".into())),
            NetError::BlockOutsideSubnet { .. }
        ));
        assert!(matches!(
            refused(|s| s.blocks.push("nonsense".into())),
            NetError::InvalidCidr {
                field: "blocks",
                ..
            }
        ));
        assert!(matches!(
            refused(|s| s.exclude_addresses.push("10.9.0.1".into())),
            NetError::ExcludeOutsideSubnet { .. }
        ));
        assert!(matches!(
            refused(|s| s.peers[1].address = "node-b".into()),
            NetError::InvalidAddress {
                field: "peers[].address",
                ..
            }
        ));
        let mut s = spec();
        s.ipv6 = None;
        s.blocks.retain(|b| !b.contains(':'));
        s.exclude_addresses.clear();
        s.blocks.push("fd00:20::/122".into());
        assert!(matches!(
            resolve_node_bridge(&s),
            Err(NetError::BlockOutsideSubnet { .. })
        ));
    }
}
