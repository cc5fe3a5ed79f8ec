//! The one error type of address checks: what is wrong with a network's or a NodeBridge's
//! addresses, naming the field the way the user wrote it and what to change.

use std::net::IpAddr;

use ipnet::IpNet;

use super::{Family, MAX_MTU, MAX_VNI, MIN_MTU, MIN_MTU_IPV6};

/// What is wrong with a network's addresses, and how to fix it. `field` names the spec field
/// the way the user wrote it (`subnet`, `ipv6.gateway`, ...).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NetError {
    /// Not parseable as a CIDR.
    #[error(
        "{field} {value:?} is not a CIDR: write it as address/prefix, e.g. 172.20.0.0/16 or fd00:20::/64"
    )]
    InvalidCidr {
        /// Spec field.
        field: &'static str,
        /// What the user wrote.
        value: String,
    },
    /// Not parseable as a single address.
    #[error(
        "{field} {value:?} is not an IP address: write a single address such as 172.20.0.1 or fd00:20::1"
    )]
    InvalidAddress {
        /// Spec field.
        field: &'static str,
        /// What the user wrote.
        value: String,
    },
    /// Address or CIDR of the other family.
    #[error("{field} {value} must be {expected}{hint}", hint = match expected { Family::V4 => " (IPv6 goes in ipv6.*)", Family::V6 => "" })]
    WrongFamily {
        /// Spec field.
        field: &'static str,
        /// What the user wrote.
        value: String,
        /// The family the field takes.
        expected: Family,
    },
    /// CIDR with host bits set.
    #[error("{field} must be written with its network address: {canonical} rather than {value}")]
    NotCanonical {
        /// Spec field.
        field: &'static str,
        /// What the user wrote.
        value: String,
        /// The same network written canonically.
        canonical: IpNet,
    },
    /// Subnet too small to hold a gateway and a pod.
    #[error(
        "{field} {subnet} holds too few host addresses: use a prefix length of /{max_prefix} or shorter"
    )]
    SubnetTooSmall {
        /// Spec field.
        field: &'static str,
        /// The subnet.
        subnet: IpNet,
        /// Longest prefix accepted for this family.
        max_prefix: u8,
    },
    /// Gateway not inside the subnet.
    #[error(
        "{field} {gateway} is not inside {subnet}: pick an address from the subnet (Docker's convention is the first host), or omit it to get that default"
    )]
    GatewayOutsideSubnet {
        /// Spec field.
        field: &'static str,
        /// The gateway.
        gateway: IpAddr,
        /// The subnet.
        subnet: IpNet,
    },
    /// Gateway is the subnet's network address.
    #[error(
        "{field} {gateway} is the network address of {subnet}: use a host address such as the first one, or omit it"
    )]
    GatewayIsNetworkAddress {
        /// Spec field.
        field: &'static str,
        /// The gateway.
        gateway: IpAddr,
        /// The subnet.
        subnet: IpNet,
    },
    /// Gateway is the IPv4 subnet's broadcast address.
    #[error(
        "gateway {gateway} is the broadcast address of {subnet}: use a host address such as the first one, or omit it"
    )]
    GatewayIsBroadcast {
        /// The gateway.
        gateway: IpAddr,
        /// The subnet.
        subnet: IpNet,
    },
    /// ipRange not inside the subnet.
    #[error(
        "{field} {range} does not lie inside {subnet}: use a CIDR within the subnet, or omit it to use the whole subnet"
    )]
    RangeOutsideSubnet {
        /// Spec field.
        field: &'static str,
        /// The range.
        range: IpNet,
        /// The subnet.
        subnet: IpNet,
    },
    /// Block prefix outside the bounds the CRD allows for the family.
    #[error("{field} /{block_size} is out of bounds: use a prefix length from /{min} to /{max}")]
    BlockSizeOutOfBounds {
        /// Spec field.
        field: &'static str,
        /// The prefix length asked for.
        block_size: u8,
        /// Shortest allowed.
        min: u8,
        /// Longest allowed.
        max: u8,
    },
    /// Block prefix shorter than the range it is carved from.
    #[error("{field} /{block_size} is shorter than the prefix of {range}: per-node blocks are carved out of it, so use /{} or longer", range.prefix_len())]
    BlockSizeShorterThanRange {
        /// Spec field.
        field: &'static str,
        /// The prefix length asked for.
        block_size: u8,
        /// The range blocks are carved from.
        range: IpNet,
    },
    /// An excluded address in neither subnet.
    #[error("excludeAddresses entry {address} is not inside subnet (or ipv6.subnet): remove it")]
    ExcludeOutsideSubnet {
        /// The address.
        address: IpAddr,
    },
    /// MTU outside the CRD's bounds.
    #[error("mtu {mtu} is out of bounds: use a value from {MIN_MTU} to {MAX_MTU}")]
    MtuOutOfBounds {
        /// The MTU.
        mtu: u32,
    },
    /// MTU too small for IPv6.
    #[error("mtu {mtu} is below {MIN_MTU_IPV6}, IPv6's minimum link MTU: raise mtu or remove ipv6")]
    MtuTooSmallForIpv6 {
        /// The MTU.
        mtu: u32,
    },
    /// Not a MAC address, or not one an interface may carry.
    #[error(
        "{field} {value:?} is not a unicast MAC address: write six hex pairs such as 02:42:ac:14:00:01"
    )]
    InvalidMac {
        /// Spec field.
        field: &'static str,
        /// What the user wrote.
        value: String,
    },
    /// VXLAN network identifier outside 24 bits, or 0.
    #[error("vni {vni} is out of bounds: use a value from 1 to {MAX_VNI}")]
    VniOutOfBounds {
        /// The VNI.
        vni: u32,
    },
    /// A NodeBridge block in neither subnet.
    #[error(
        "blocks entry {block} is not inside subnet (or ipv6.subnet): blocks are carved from the network's addresses"
    )]
    BlockOutsideSubnet {
        /// The block.
        block: IpNet,
    },
    /// Not a usable Linux interface name.
    #[error(
        "bridge {name:?} is not a Linux interface name: use 1-15 characters of letters, digits, '_', '.', '-', starting with a letter or digit"
    )]
    InvalidBridgeName {
        /// The name.
        name: String,
    },
}
