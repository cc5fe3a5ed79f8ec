//! The node's data plane for bridge networks: what one NodeBridge becomes on this node, and the
//! code that makes the kernel match it.
//!
//! Layout (decide, then act):
//! - [`Desired`]: a resolved NodeBridge ([`bridgenet_crds::resolve_node_bridge`], done once per
//!   spec by the NodeBridge controller) turned into this node's kernel objects: link names,
//!   gateway addresses, flood peers; pure and infallible.
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
pub mod fdb;
pub mod firewall;
pub mod links;
pub mod marker;
pub mod netlink;
pub mod netns;
pub mod nftmonitor;
pub mod nlattr;
pub mod node;
pub mod plan;
pub mod rtnl;

pub use node::{Dataplane, DataplaneError, link_deletions, marked_link_losses};

use std::collections::BTreeSet;
use std::net::IpAddr;

use bridgenet_crds::names::MAX_IFNAME;
use bridgenet_crds::net::MAX_VNI;
use bridgenet_crds::resolved::ResolvedPeer;
use bridgenet_crds::{NodeBridgeSpec, ResolvedNodeBridge};
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
    /// Linux bridge the network's pods attach to; carries the gateway addresses.
    pub bridge: String,
    /// VXLAN port name, derived from the VNI.
    pub vxlan: String,
    /// The marker alias both links carry.
    pub alias: String,
    /// Bridge (gateway) MAC, the same on every node.
    pub mac: [u8; 6],
    /// MTU of the bridge and the VXLAN port.
    pub mtu: u32,
    /// IPv4 subnet: the scope of the masquerade and isolation rules.
    pub subnet4: IpNet,
    /// IPv4 gateway with the subnet's prefix, as put on the bridge.
    pub gateway4: IpNet,
    /// IPv6 subnet and gateway (with prefix), when dual stack.
    pub v6: Option<(IpNet, IpNet)>,
    /// VXLAN network identifier, the same on every node of the network.
    pub vni: u32,
    /// Local VXLAN endpoint address.
    pub underlay: IpAddr,
    /// VXLAN UDP destination port, from the node's flags.
    pub vxlan_port: u16,
    /// Underlay addresses of the other nodes of the network.
    pub peers: BTreeSet<IpAddr>,
    /// No traffic leaves the network.
    pub internal: bool,
    /// Masquerade pod traffic leaving the subnet through the node.
    pub masquerade: bool,
    /// Pods may talk to each other; off, the bridge drops pod-to-pod frames.
    pub inter_pod_traffic: bool,
}

/// The addresses of `peers` this node floods to: not itself (by name or address), and only in
/// its underlay family — a VXLAN device has one local address family, a peer reachable only in
/// the other cannot be a flood destination (the kernel refuses the entry), and refusing the
/// whole network for it would cut off the peers that do fit.
fn flood_targets<'a>(
    peers: &'a [ResolvedPeer],
    node: &'a NodeContext,
) -> impl Iterator<Item = IpAddr> + 'a {
    peers
        .iter()
        .filter(|peer| peer.node != node.node_name)
        .map(|peer| peer.address)
        .filter(|ip| *ip != node.underlay && ip.is_ipv4() == node.underlay.is_ipv4())
}

/// VXLAN port name of a network: `bnvx-<vni>` (≤ 13 bytes for a 24-bit VNI). Derived from the
/// VNI rather than the bridge name so that it is unique per network cluster-wide and the same
/// on every node, which makes `ip -d link` output easy to correlate across nodes.
pub fn vxlan_name(vni: u32) -> String {
    let name = format!("bnvx-{vni}");
    debug_assert!(name.len() <= MAX_IFNAME);
    name
}

impl Desired {
    /// What `spec` becomes on this node: link names derived from it, and the peers the
    /// overlay floods to (every node the deprecated `spec.peers` lists but this one, in this
    /// node's underlay family; see [`Desired::with_peers`] for the network's own list).
    pub fn from_resolved(spec: &ResolvedNodeBridge, node: &NodeContext) -> Self {
        let peers = flood_targets(&spec.peers, node).collect();
        Desired {
            network: spec.network.clone(),
            alias: alias_of(&spec.network),
            bridge: spec.bridge.clone(),
            vxlan: vxlan_name(spec.vni),
            mac: spec.gateway_mac.octets(),
            mtu: spec.mtu,
            subnet4: spec.v4.subnet,
            gateway4: spec.v4.gateway,
            v6: spec.v6.as_ref().map(|v6| (v6.subnet, v6.gateway)),
            vni: spec.vni,
            underlay: node.underlay,
            vxlan_port: node.vxlan_port,
            peers,
            internal: spec.internal,
            masquerade: spec.masquerade,
            inter_pod_traffic: spec.inter_pod_traffic,
        }
    }

    /// Also floods to `published`, the tunnel endpoints the network's NetworkOverlay lists (the
    /// nodes where it has pods), but for this node and those of the other family. The union with
    /// the spec's list keeps an upgrade connected: an old operator still writes `spec.peers`.
    #[must_use]
    pub fn with_peers(mut self, published: &[ResolvedPeer], node: &NodeContext) -> Self {
        self.peers.extend(flood_targets(published, node));
        self
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
    /// Bridge to delete, if it carries this network's alias.
    pub bridge: String,
    /// VXLAN port name, when the spec's VNI is valid.
    pub vxlan: Option<String>,
}

impl Teardown {
    /// What to remove for a NodeBridge spec. Read from the spec as written, not from its
    /// resolved form: a NodeBridge edited into an invalid spec after it was realized must still
    /// be torn down, and removal needs only the names.
    pub fn from_spec(spec: &NodeBridgeSpec) -> Self {
        Teardown {
            network: spec.network.clone(),
            bridge: spec.bridge.clone(),
            vxlan: (spec.vni > 0 && spec.vni <= MAX_VNI).then(|| vxlan_name(spec.vni)),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
pub(crate) mod tests {
    use super::*;
    use bridgenet_crds::Mac;
    use bridgenet_crds::net::NetError;
    use bridgenet_crds::resolve_node_bridge;
    use bridgenet_crds::v1alpha1::{NodeBridgeIpv6, Peer};

    /// `spec` resolved, for tests that build a [`Desired`] from a valid spec.
    pub(crate) fn resolved(spec: &NodeBridgeSpec) -> ResolvedNodeBridge {
        resolve_node_bridge(spec).unwrap()
    }

    impl Desired {
        /// Resolves `spec` and builds its [`Desired`]: the unit tests of the planner and the
        /// firewall are written against specs.
        pub(crate) fn from_spec(
            spec: &NodeBridgeSpec,
            node: &NodeContext,
        ) -> Result<Self, NetError> {
            resolve_node_bridge(spec).map(|r| Self::from_resolved(&r, node))
        }
    }

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
        let d = Desired::from_resolved(&resolved(&s), &node());
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
        let d6 = Desired::from_resolved(&resolved(&s6), &node());
        assert_eq!(d6.peers.len(), 1, "a peer of the other family is skipped");
        assert_eq!(vxlan_name(0x00ff_ffff).len(), 13);
    }

    #[test]
    fn floods_to_the_published_endpoints_and_the_legacy_list() {
        let peer = |node: &str, address: &str| ResolvedPeer {
            node: node.into(),
            address: address.parse().unwrap(),
        };
        let mut s = spec("custom", "br-custom", "172.20.0.0/16", "172.20.0.1", 42);
        s.peers.clear();
        let published = [
            peer("node-a", "192.0.2.1"),
            peer("node-c", "192.0.2.3"),
            peer("node-v6", "2001:db8::3"),
        ];
        let d = Desired::from_resolved(&resolved(&s), &node()).with_peers(&published, &node());
        let peers: Vec<String> = d.peers.iter().map(|p| p.to_string()).collect();
        assert_eq!(
            peers,
            ["192.0.2.3"],
            "neither this node nor the other family"
        );

        // An old operator's spec.peers and the network's list add up.
        let s = spec("custom", "br-custom", "172.20.0.0/16", "172.20.0.1", 42);
        let d = Desired::from_resolved(&resolved(&s), &node()).with_peers(&published, &node());
        let peers: Vec<String> = d.peers.iter().map(|p| p.to_string()).collect();
        assert_eq!(peers, ["192.0.2.2", "192.0.2.3"]);
    }

    #[test]
    fn rejects_bad_specs() {
        let mut s = spec("x", "br-x", "172.20.0.0/16", "172.21.0.1", 1);
        assert!(matches!(
            resolve_node_bridge(&s),
            Err(NetError::GatewayOutsideSubnet { .. })
        ));
        s.gateway = "172.20.0.1".into();
        s.gateway_mac = "03:00:00:00:00:01".into();
        assert!(matches!(
            resolve_node_bridge(&s),
            Err(NetError::InvalidMac { .. })
        ));
        s.gateway_mac = "02:00:00:00:00:01".into();
        s.vni = 1 << 24;
        assert!(matches!(
            resolve_node_bridge(&s),
            Err(NetError::VniOutOfBounds { .. })
        ));
        s.vni = 7;
        s.bridge = "this-is-too-long-x".into();
        assert!(matches!(
            resolve_node_bridge(&s),
            Err(NetError::InvalidBridgeName { .. })
        ));
        s.bridge = "br-x".into();
        s.subnet = "172.20.0.1/16".into();
        assert!(matches!(
            resolve_node_bridge(&s),
            Err(NetError::NotCanonical { .. })
        ));
    }

    #[test]
    fn mac_roundtrip() {
        let m: Mac = "02:42:ac:14:00:01".parse().unwrap();
        assert_eq!(m.to_string(), "02:42:ac:14:00:01");
        assert!("02:42:ac:14:00".parse::<Mac>().is_err());
        assert!("02:42:ac:14:00:01:02".parse::<Mac>().is_err());
        assert!("zz:42:ac:14:00:01".parse::<Mac>().is_err());
    }
}
