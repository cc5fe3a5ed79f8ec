//! What an ADD answers: the interfaces made, their addresses with each family's gateway, and
//! the default routes, as the CNI result the runtime reads.

use std::net::IpAddr;

use crate::cni::types::{CniResult, Dns, Interface, IpConfig, RouteConfig};

/// One pod interface an attach made, as the CNI result reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attached {
    /// The BridgeNetwork it is on.
    pub network: String,
    /// Interface in the pod.
    pub interface: String,
    /// MAC of the pod end, `aa:bb:cc:dd:ee:ff`.
    pub mac: String,
    /// MTU of both veth ends: the NodeBridge's.
    pub mtu: u32,
    /// The pod end's addresses, each with its subnet's prefix length.
    pub addresses: Vec<(IpAddr, u8)>,
    /// Gateways of the network (per family).
    pub gateways: Vec<IpAddr>,
    /// Gateways the pod's default routes go through (empty unless `defaultRoute`).
    pub default_routes: Vec<IpAddr>,
    /// Whether the node's resolver answers on the gateways (the network's `spec.dns`).
    pub resolver: bool,
}

/// The CNI result of `attached`, made in the pod namespace `sandbox`: one interface each, its
/// addresses with their family's gateway, and its default routes.
pub(super) fn cni_result(cni_version: &str, sandbox: &str, attached: &[Attached]) -> CniResult {
    let mut result = CniResult {
        cni_version: cni_version.to_owned(),
        ..CniResult::default()
    };
    for a in attached {
        let index = result.interfaces.len();
        result.interfaces.push(Interface {
            name: a.interface.clone(),
            mac: a.mac.clone(),
            mtu: Some(a.mtu),
            sandbox: sandbox.to_owned(),
        });
        for (ip, prefix) in &a.addresses {
            result.ips.push(IpConfig {
                version: None,
                address: format!("{ip}/{prefix}"),
                gateway: a
                    .gateways
                    .iter()
                    .find(|g| g.is_ipv6() == ip.is_ipv6())
                    .map(ToString::to_string),
                interface: Some(index),
            });
        }
        for gw in &a.default_routes {
            result.routes.push(RouteConfig {
                dst: if gw.is_ipv6() { "::/0" } else { "0.0.0.0/0" }.into(),
                gw: Some(gw.to_string()),
            });
        }
    }
    result
}

/// The DNS a delegate's result reports: the gateways of its network when the node's resolver
/// answers there. Multus copies it into the attachment's `network-status` entry, so the entry
/// matches the ones the agent writes for chained attachments.
pub(super) fn delegate_dns(attached: &[Attached]) -> Option<Dns> {
    let nameservers: Vec<String> = attached
        .iter()
        .filter(|a| a.resolver)
        .flat_map(|a| a.gateways.iter().map(ToString::to_string))
        .collect();
    (!nameservers.is_empty()).then_some(Dns { nameservers })
}
