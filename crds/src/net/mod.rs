//! Address arithmetic every side of bridgenet shares: parsing and checking a network's addresses,
//! carving its range into per-node blocks, and picking free addresses inside a block.
//!
//! [`resolve`] checks in Rust everything the CRD's CEL rules check (and the OpenAPI bounds on
//! the address fields), because not every API server runs CEL (older ones, and the test
//! emulator): the operator calls it before acting on a spec and reports the error as a
//! condition. The error messages say what to change, like the CEL messages do.
//!
//! Addresses are handled as `u128` offsets internally so that IPv4 and IPv6 share one code
//! path; IPv4 addresses occupy the low 32 bits.

use std::{
    collections::BTreeSet,
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use ipnet::IpNet;

use crate::names;

mod error;
mod network;

pub use error::NetError;
pub use network::{BlockDefaults, ResolvedNetwork, resolve, resolve_with};

/// Default prefix length of IPv4 per-node blocks: 64 addresses.
pub const DEFAULT_BLOCK_PREFIX_V4: u8 = 26;
/// Default prefix length of IPv6 per-node blocks: 64 addresses.
pub const DEFAULT_BLOCK_PREFIX_V6: u8 = 122;
/// Longest IPv4 subnet prefix accepted: a /30 still has two host addresses.
pub const MAX_SUBNET_PREFIX_V4: u8 = 30;
/// Longest IPv6 subnet prefix accepted (same bound as the CRD's CEL rule).
pub const MAX_SUBNET_PREFIX_V6: u8 = 126;
/// Smallest MTU the CRD accepts (IPv4's minimum datagram size every host must take).
pub const MIN_MTU: u32 = 576;
/// Largest MTU the CRD accepts (the kernel's limit for a bridge).
pub const MAX_MTU: u32 = 65535;
/// IPv6's minimum link MTU (RFC 8200); a dual-stack network must not go below it.
pub const MIN_MTU_IPV6: u32 = 1280;
/// Largest VXLAN network identifier (24 bits); 0 is not used.
pub const MAX_VNI: u32 = 0x00ff_ffff;
/// Shortest IPv4 block prefix the CRD accepts (`blockSize` minimum).
pub const MIN_BLOCK_PREFIX_V4: u8 = 8;
/// Shortest IPv6 block prefix the CRD accepts (`ipv6.blockSize` minimum).
pub const MIN_BLOCK_PREFIX_V6: u8 = 64;

/// IP address family.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Family {
    /// IPv4.
    V4,
    /// IPv6.
    V6,
}

impl Family {
    /// Family of an address.
    pub fn of(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(_) => Family::V4,
            IpAddr::V6(_) => Family::V6,
        }
    }

    /// Family of a network.
    pub fn of_net(net: &IpNet) -> Self {
        Self::of(net.network())
    }

    fn bits(self) -> u8 {
        match self {
            Family::V4 => 32,
            Family::V6 => 128,
        }
    }
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Family::V4 => "IPv4",
            Family::V6 => "IPv6",
        })
    }
}

/// Parses a CIDR that must be written with its network address (`172.20.0.0/16`, not
/// `172.20.3.4/16`). `field` names the spec field in the error.
pub fn parse_cidr_field(field: &'static str, value: &str) -> Result<IpNet, NetError> {
    let net: IpNet = value.parse().map_err(|_| NetError::InvalidCidr {
        field,
        value: value.to_owned(),
    })?;
    if net.trunc() != net {
        return Err(NetError::NotCanonical {
            field,
            value: value.to_owned(),
            canonical: net.trunc(),
        });
    }
    Ok(net)
}

/// Parses a canonical CIDR (see [`parse_cidr_field`]); errors name the field `subnet`.
pub fn parse_cidr(value: &str) -> Result<IpNet, NetError> {
    parse_cidr_field("subnet", value)
}

pub(crate) fn parse_ip_field(field: &'static str, value: &str) -> Result<IpAddr, NetError> {
    value.parse().map_err(|_| NetError::InvalidAddress {
        field,
        value: value.to_owned(),
    })
}

/// The default gateway of a subnet: its first host address (Docker's convention, e.g.
/// `172.20.0.1` for `172.20.0.0/16`). Meaningful for subnets of two addresses or more, which is
/// all [`resolve`] accepts.
pub fn default_gateway(subnet: &IpNet) -> IpAddr {
    let family = Family::of_net(subnet);
    let network = to_u128(subnet.network());
    from_u128(family, network.saturating_add(1).min(max_value(family)))
}

/// Number of blocks of prefix length `prefix` in `range`, saturating at `u64::MAX`; 0 when
/// `prefix` is shorter than the range's or longer than the family allows.
pub fn block_count(range: &IpNet, prefix: u8) -> u64 {
    if prefix < range.prefix_len() || prefix > range.max_prefix_len() {
        return 0;
    }
    let shift = u32::from(prefix - range.prefix_len());
    if shift >= 64 { u64::MAX } else { 1u64 << shift }
}

/// The per-node blocks of prefix length `prefix` that make up `range`, in address order: they
/// are disjoint and cover `range` exactly, so block `i` is the same for everyone who computes it.
pub fn carve_blocks(
    range: &IpNet,
    prefix: u8,
) -> Result<impl Iterator<Item = IpNet> + use<>, NetError> {
    if prefix < range.prefix_len() {
        return Err(NetError::BlockSizeShorterThanRange {
            field: "blockSize",
            block_size: prefix,
            range: *range,
        });
    }
    range
        .subnets(prefix)
        .map_err(|_| NetError::BlockSizeOutOfBounds {
            field: "blockSize",
            block_size: prefix,
            min: range.prefix_len(),
            max: range.max_prefix_len(),
        })
}

/// The addresses of one family of a network, with its defaults filled in: what the operator
/// carves into blocks and what the agent allocates from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AddressPlan {
    /// The subnet (docker `--subnet`).
    pub subnet: IpNet,
    /// The gateway in effect (the spec's, or the first host).
    pub gateway: IpAddr,
    /// Where pod addresses come from (the spec's `ipRange`, or the whole subnet).
    pub range: IpNet,
    /// Addresses of this family never handed out (the spec's `excludeAddresses`).
    pub exclude: BTreeSet<IpAddr>,
    /// Prefix length of the per-node blocks carved from `range`.
    pub block_prefix: u8,
}

impl AddressPlan {
    /// Address family of the plan.
    pub fn family(&self) -> Family {
        Family::of_net(&self.subnet)
    }

    /// Whether `ip` may be handed to a pod: inside the range, not the subnet's network address,
    /// not its IPv4 broadcast address, not the gateway, not excluded.
    pub fn is_assignable(&self, ip: IpAddr) -> bool {
        self.range.contains(&ip) && !self.is_reserved(ip)
    }

    /// Addresses inside the subnet that are never handed out, whatever the range.
    fn is_reserved(&self, ip: IpAddr) -> bool {
        ip == self.subnet.network()
            || (self.family() == Family::V4
                && self.subnet.prefix_len() < 31
                && ip == self.subnet.broadcast())
            || ip == self.gateway
            || self.exclude.contains(&ip)
    }

    /// The reserved addresses (network, broadcast, gateway, excluded) inside `net`, each once.
    fn reserved_in(&self, net: &IpNet) -> BTreeSet<IpAddr> {
        let mut reserved: BTreeSet<IpAddr> = self
            .exclude
            .iter()
            .copied()
            .filter(|ip| net.contains(ip))
            .collect();
        let mut specials = vec![self.subnet.network(), self.gateway];
        if self.family() == Family::V4 && self.subnet.prefix_len() < 31 {
            specials.push(self.subnet.broadcast());
        }
        reserved.extend(specials.into_iter().filter(|ip| net.contains(ip)));
        reserved
    }

    /// Number of blocks the range is carved into (saturating at `u64::MAX`).
    pub fn block_count(&self) -> u64 {
        block_count(&self.range, self.block_prefix)
    }

    /// The per-node blocks, in address order (see [`carve_blocks`]).
    pub fn blocks(&self) -> impl Iterator<Item = IpNet> + use<> {
        // The prefix was checked against the range when the plan was resolved; an empty
        // iterator is the safe answer for a hand-built plan that is inconsistent.
        carve_blocks(&self.range, self.block_prefix)
            .into_iter()
            .flatten()
    }

    /// The block of this plan's size that holds `ip` (whether or not it is in the range).
    pub fn block_of(&self, ip: IpAddr) -> Option<IpNet> {
        IpNet::new(ip, self.block_prefix).ok().map(|n| n.trunc())
    }

    /// `ip` with the subnet's prefix length, as configured on a pod interface
    /// (e.g. `172.20.0.5/16`).
    pub fn interface_address(&self, ip: IpAddr) -> Option<IpNet> {
        IpNet::new(ip, self.subnet.prefix_len()).ok()
    }

    /// Number of assignable addresses in `block` (its part inside the range), saturating at
    /// `u64::MAX`.
    pub fn assignable_in_block(&self, block: &IpNet) -> u64 {
        let Some((lo, hi)) = self.bounds_in_range(block) else {
            return 0;
        };
        let Some(part) = IpNet::new(
            from_u128(self.family(), lo),
            prefix_of(lo, hi, self.family()),
        )
        .ok() else {
            return 0;
        };
        let size = hi - lo + 1;
        let reserved = self.reserved_in(&part).len() as u128;
        u64::try_from(size - reserved).unwrap_or(u64::MAX)
    }

    /// Number of assignable addresses in the whole range (saturating at `u64::MAX`).
    pub fn assignable_total(&self) -> u64 {
        self.assignable_in_block(&self.range)
    }

    /// The first assignable address of `block` that is not in `used`, searching round-robin:
    /// from the address after `last` (the one handed out most recently, so that a just-released
    /// address is not reused at once, like host-local) to the end of the block, then from the
    /// block's start. `None` when the block is full or does not overlap the range.
    ///
    /// Cost: one walk over the `used` entries at and after the starting point that form a
    /// contiguous run, i.e. O(k log n) for k consecutive taken addresses, never a rescan per
    /// candidate.
    pub fn next_free(
        &self,
        block: &IpNet,
        used: &BTreeSet<IpAddr>,
        last: Option<IpAddr>,
    ) -> Option<IpAddr> {
        let (lo, hi) = self.bounds_in_range(block)?;
        let start = match last {
            Some(ip) if Family::of(ip) == self.family() => {
                let at = to_u128(ip);
                if (lo..hi).contains(&at) { at + 1 } else { lo }
            }
            _ => lo,
        };
        self.scan(start, hi, used).or_else(|| {
            if start > lo {
                self.scan(lo, start - 1, used)
            } else {
                None
            }
        })
    }

    /// First address in `[from, to]` that is neither used nor reserved.
    fn scan(&self, from: u128, to: u128, used: &BTreeSet<IpAddr>) -> Option<IpAddr> {
        let family = self.family();
        // Walk the used set alongside the candidate so that a run of k taken addresses costs
        // one ordered iteration, not k separate lookups.
        let mut taken = used
            .range(from_u128(family, from)..=from_u128(family, to))
            .map(|ip| to_u128(*ip))
            .peekable();
        let mut candidate = from;
        loop {
            while taken.next_if(|&t| t < candidate).is_some() {}
            let in_use = taken.peek() == Some(&candidate);
            if !in_use && !self.is_reserved(from_u128(family, candidate)) {
                return Some(from_u128(family, candidate));
            }
            if candidate >= to {
                return None;
            }
            candidate += 1;
        }
    }

    /// Inclusive bounds of `block ∩ range`, or `None` when they do not overlap or differ in
    /// family. Two CIDRs either nest or are disjoint, so the intersection is one of them.
    fn bounds_in_range(&self, block: &IpNet) -> Option<(u128, u128)> {
        if Family::of_net(block) != self.family() {
            return None;
        }
        let inner = if self.range.contains(block) {
            block
        } else if block.contains(&self.range) {
            &self.range
        } else {
            return None;
        };
        Some((to_u128(inner.network()), to_u128(inner.broadcast())))
    }
}

/// Prefix length of the CIDR spanning exactly `[lo, hi]` (both ends of one CIDR).
fn prefix_of(lo: u128, hi: u128, family: Family) -> u8 {
    let host_bits = 128 - (hi - lo).leading_zeros();
    family.bits() - host_bits as u8
}

fn to_u128(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => u128::from(u32::from(v4)),
        IpAddr::V6(v6) => u128::from(v6),
    }
}

fn max_value(family: Family) -> u128 {
    match family {
        Family::V4 => u128::from(u32::MAX),
        Family::V6 => u128::MAX,
    }
}

/// Inverse of [`to_u128`]; IPv4 values above 32 bits are clamped (callers stay in range).
fn from_u128(family: Family, value: u128) -> IpAddr {
    match family {
        Family::V4 => IpAddr::V4(Ipv4Addr::from(u32::try_from(value).unwrap_or(u32::MAX))),
        Family::V6 => IpAddr::V6(Ipv6Addr::from(value)),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use crate::v1alpha1::{BridgeNetworkSpec, Ipv6Config};

    fn spec(subnet: &str) -> BridgeNetworkSpec {
        serde_json::from_value(serde_json::json!({ "subnet": subnet })).unwrap()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    #[test]
    fn docker_story_defaults() {
        let mut s = spec("172.20.0.0/16");
        s.gateway = Some("172.20.0.1".into());
        let r = resolve("custom-network", &s).unwrap();
        assert_eq!(r.v4.subnet, net("172.20.0.0/16"));
        assert_eq!(r.v4.gateway, ip("172.20.0.1"));
        assert_eq!(r.v4.range, r.v4.subnet);
        assert_eq!(r.v4.block_prefix, 26);
        assert_eq!(r.v4.block_count(), 1024);
        assert_eq!(r.bridge, names::default_bridge_name("custom-network"));
        assert!(r.v6.is_none());
        // 65536 minus network, broadcast, gateway.
        assert_eq!(r.v4.assignable_total(), 65533);
        let first = r.v4.blocks().next().unwrap();
        assert_eq!(first, net("172.20.0.0/26"));
        assert_eq!(r.v4.assignable_in_block(&first), 62);
        assert_eq!(
            r.v4.next_free(&first, &BTreeSet::new(), None),
            Some(ip("172.20.0.2"))
        );
        assert_eq!(
            r.v4.interface_address(ip("172.20.0.2")),
            Some(net("172.20.0.2/16"))
        );
    }

    #[test]
    fn default_gateway_is_first_host() {
        assert_eq!(default_gateway(&net("172.20.0.0/16")), ip("172.20.0.1"));
        assert_eq!(default_gateway(&net("fd00:20::/64")), ip("fd00:20::1"));
        let r = resolve("n", &spec("10.1.2.0/24")).unwrap();
        assert_eq!(r.v4.gateway, ip("10.1.2.1"));
    }

    #[test]
    fn block_prefix_never_shorter_than_range() {
        let mut s = spec("10.0.0.0/16");
        s.ip_range = Some("10.0.5.0/28".into());
        let r = resolve("n", &s).unwrap();
        assert_eq!(r.v4.block_prefix, 28);
        assert_eq!(r.v4.block_count(), 1);
        let custom =
            resolve_with("n", &spec("10.0.0.0/16"), BlockDefaults { v4: 24, v6: 120 }).unwrap();
        assert_eq!(custom.v4.block_prefix, 24);
    }

    #[test]
    fn dual_stack() {
        let mut s = spec("172.22.0.0/16");
        s.ipv6 = Some(Ipv6Config {
            subnet: "fd00:22::/64".into(),
            ..Default::default()
        });
        s.exclude_addresses = vec!["172.22.0.9".into(), "fd00:22::9".into()];
        let r = resolve("dual", &s).unwrap();
        let v6 = r.v6.as_ref().unwrap();
        assert_eq!(v6.gateway, ip("fd00:22::1"));
        assert_eq!(v6.block_prefix, 122);
        assert_eq!(v6.block_count(), 1 << 58);
        assert_eq!(v6.exclude, BTreeSet::from([ip("fd00:22::9")]));
        assert_eq!(r.v4.exclude, BTreeSet::from([ip("172.22.0.9")]));
        let first = v6.blocks().next().unwrap();
        assert_eq!(first, net("fd00:22::/122"));
        // network (subnet-router anycast), gateway, one exclusion.
        assert_eq!(v6.assignable_in_block(&first), 61);
        assert_eq!(
            v6.next_free(&first, &BTreeSet::new(), None),
            Some(ip("fd00:22::2"))
        );
        assert_eq!(r.plans().count(), 2);
        assert_eq!(r.plan(Family::V6), Some(v6));
        // 2^64 addresses minus network, gateway and the exclusion: just fits.
        assert_eq!(v6.assignable_total(), u64::MAX - 2);
        // A /63 holds more than u64 can count: saturates rather than overflowing.
        s.ipv6 = Some(Ipv6Config {
            subnet: "fd00:22::/63".into(),
            ..Default::default()
        });
        let wide = resolve("dual", &s).unwrap();
        assert_eq!(wide.v6.unwrap().assignable_total(), u64::MAX);
    }

    fn err(s: &BridgeNetworkSpec) -> NetError {
        resolve("n", s).unwrap_err()
    }

    #[test]
    fn refuses_what_the_cel_rules_refuse() {
        assert!(matches!(
            err(&spec("172.20.0.0")),
            NetError::InvalidCidr {
                field: "subnet",
                ..
            }
        ));
        assert!(matches!(
            err(&spec("172.20.3.4/16")),
            NetError::NotCanonical { .. }
        ));
        assert!(matches!(
            err(&spec("fd00::/64")),
            NetError::WrongFamily {
                expected: Family::V4,
                ..
            }
        ));
        assert!(matches!(
            err(&spec("10.0.0.0/31")),
            NetError::SubnetTooSmall { .. }
        ));

        let with = |f: &dyn Fn(&mut BridgeNetworkSpec)| {
            let mut s = spec("172.20.0.0/16");
            f(&mut s);
            resolve("n", &s)
        };
        assert!(matches!(
            with(&|s| s.gateway = Some("172.21.0.1".into())),
            Err(NetError::GatewayOutsideSubnet { .. })
        ));
        assert!(matches!(
            with(&|s| s.gateway = Some("172.20.0.0".into())),
            Err(NetError::GatewayIsNetworkAddress { .. })
        ));
        assert!(matches!(
            with(&|s| s.gateway = Some("172.20.255.255".into())),
            Err(NetError::GatewayIsBroadcast { .. })
        ));
        assert!(matches!(
            with(&|s| s.gateway = Some("nope".into())),
            Err(NetError::InvalidAddress {
                field: "gateway",
                ..
            })
        ));
        assert!(matches!(
            with(&|s| s.gateway = Some("fd00::1".into())),
            Err(NetError::WrongFamily {
                field: "gateway",
                ..
            })
        ));
        assert!(matches!(
            with(&|s| s.ip_range = Some("172.21.0.0/24".into())),
            Err(NetError::RangeOutsideSubnet { .. })
        ));
        assert!(matches!(
            with(&|s| s.ip_range = Some("172.21.0.0/15".into())),
            Err(NetError::NotCanonical {
                field: "ipRange",
                ..
            })
        ));
        assert!(matches!(
            with(&|s| s.block_size = Some(15)),
            Err(NetError::BlockSizeShorterThanRange { .. })
        ));
        assert!(matches!(
            with(&|s| s.block_size = Some(33)),
            Err(NetError::BlockSizeOutOfBounds { .. })
        ));
        assert!(matches!(
            with(&|s| s.exclude_addresses = vec!["10.0.0.1".into()]),
            Err(NetError::ExcludeOutsideSubnet { .. })
        ));
        assert!(matches!(
            with(&|s| s.exclude_addresses = vec!["fd00::1".into()]),
            Err(NetError::ExcludeOutsideSubnet { .. })
        ));
        assert!(matches!(
            with(&|s| s.mtu = Some(100)),
            Err(NetError::MtuOutOfBounds { mtu: 100 })
        ));
        assert!(matches!(
            with(&|s| s.bridge = Some("sixteen-bytes-xx".into())),
            Err(NetError::InvalidBridgeName { .. })
        ));
        assert!(matches!(
            with(&|s| {
                s.mtu = Some(1000);
                s.ipv6 = Some(Ipv6Config {
                    subnet: "fd00::/64".into(),
                    ..Default::default()
                });
            }),
            Err(NetError::MtuTooSmallForIpv6 { mtu: 1000 })
        ));
        assert!(matches!(
            with(&|s| s.ipv6 = Some(Ipv6Config {
                subnet: "fd00::/64".into(),
                block_size: Some(63),
                ..Default::default()
            })),
            Err(NetError::BlockSizeOutOfBounds {
                field: "ipv6.blockSize",
                ..
            })
        ));
        assert!(matches!(
            with(&|s| s.ipv6 = Some(Ipv6Config {
                subnet: "fd00::/64".into(),
                gateway: Some("fd00::".into()),
                ..Default::default()
            })),
            Err(NetError::GatewayIsNetworkAddress {
                field: "ipv6.gateway",
                ..
            })
        ));
        // The /30 boundary and a /31 gateway check are both fine.
        assert!(with(&|s| s.bridge = Some("br-custom".into())).is_ok());
        assert!(resolve("n", &spec("10.0.0.0/30")).is_ok());
    }

    #[test]
    fn messages_say_how_to_fix() {
        let e = err(&spec("172.20.3.4/16"));
        assert_eq!(
            e.to_string(),
            "subnet must be written with its network address: 172.20.0.0/16 rather than 172.20.3.4/16"
        );
        let e = err(&spec("fd00::/64"));
        assert_eq!(
            e.to_string(),
            "subnet fd00::/64 must be IPv4 (IPv6 goes in ipv6.*)"
        );
    }

    #[test]
    fn carving_and_counting() {
        let blocks: Vec<_> = carve_blocks(&net("10.0.0.0/24"), 26).unwrap().collect();
        assert_eq!(
            blocks,
            vec![
                net("10.0.0.0/26"),
                net("10.0.0.64/26"),
                net("10.0.0.128/26"),
                net("10.0.0.192/26")
            ]
        );
        assert_eq!(block_count(&net("10.0.0.0/24"), 26), 4);
        assert_eq!(block_count(&net("10.0.0.0/24"), 23), 0);
        assert_eq!(block_count(&net("::/0"), 128), u64::MAX);
        assert!(carve_blocks(&net("10.0.0.0/24"), 23).is_err());
        assert!(carve_blocks(&net("10.0.0.0/24"), 33).is_err());
    }

    #[test]
    fn next_free_is_round_robin_and_skips_reserved() {
        let mut s = spec("10.0.0.0/29");
        s.exclude_addresses = vec!["10.0.0.3".into()];
        let r = resolve("n", &s).unwrap();
        let p = &r.v4;
        let block = p.blocks().next().unwrap();
        // .0 network, .1 gateway, .3 excluded, .7 broadcast → .2 .4 .5 .6.
        assert_eq!(p.assignable_in_block(&block), 4);
        let mut used = BTreeSet::new();
        let mut last = None;
        let mut got = vec![];
        while let Some(a) = p.next_free(&block, &used, last) {
            used.insert(a);
            got.push(a);
            last = Some(a);
        }
        assert_eq!(
            got,
            vec![
                ip("10.0.0.2"),
                ip("10.0.0.4"),
                ip("10.0.0.5"),
                ip("10.0.0.6")
            ]
        );
        // Releasing .4 with last = .6 wraps around to it.
        used.remove(&ip("10.0.0.4"));
        assert_eq!(p.next_free(&block, &used, last), Some(ip("10.0.0.4")));
        // After .2, with .4 free again, the next is .4, not the start.
        used.remove(&ip("10.0.0.2"));
        assert_eq!(
            p.next_free(&block, &used, Some(ip("10.0.0.2"))),
            Some(ip("10.0.0.4"))
        );
        // A block of the other family or outside the range yields nothing.
        assert_eq!(
            p.next_free(&net("10.0.1.0/29"), &BTreeSet::new(), None),
            None
        );
        assert_eq!(
            p.next_free(&net("fd00::/120"), &BTreeSet::new(), None),
            None
        );
    }

    #[test]
    fn next_free_on_a_nearly_full_16_is_linear() {
        // One /16 block filled except its last host: each call walks the taken run once.
        let mut s = spec("10.9.0.0/16");
        s.block_size = Some(16);
        let r = resolve("n", &s).unwrap();
        let block = r.v4.blocks().next().unwrap();
        let mut used: BTreeSet<IpAddr> = (2u32..65534)
            .map(|i| IpAddr::V4(Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 9, 0, 0)) + i)))
            .collect();
        assert_eq!(
            r.v4.next_free(&block, &used, None),
            Some(ip("10.9.255.254"))
        );
        used.insert(ip("10.9.255.254"));
        assert_eq!(r.v4.next_free(&block, &used, Some(ip("10.9.0.7"))), None);
    }

    #[test]
    fn ipv4_block_inside_a_smaller_range_counts_only_the_range() {
        let mut s = spec("10.0.0.0/24");
        s.ip_range = Some("10.0.0.0/28".into());
        let r = resolve("n", &s).unwrap();
        // The /24 as a "block" overlaps only the /28 range: .0 network, .1 gateway reserved.
        assert_eq!(r.v4.assignable_in_block(&net("10.0.0.0/24")), 14);
        assert_eq!(r.v4.block_of(ip("10.0.0.200")), Some(net("10.0.0.192/28")));
    }
}

#[cfg(test)]
mod proptests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use std::collections::BTreeSet;

    use proptest::prelude::*;

    use super::*;

    /// A valid IPv4 plan: subnet /16../28, a range inside it, blocks of at most 2^10 addresses,
    /// a gateway and a few exclusions anywhere in the subnet.
    fn arb_plan() -> impl Strategy<Value = AddressPlan> {
        (16u8..=28, any::<u32>())
            .prop_flat_map(|(sp, base)| {
                let subnet = IpNet::new(IpAddr::V4(Ipv4Addr::from(base)), sp)
                    .unwrap()
                    .trunc();
                (Just(subnet), sp..=30u8, any::<u32>())
            })
            .prop_flat_map(|(subnet, rp, roff)| {
                let host_bits = 32 - u32::from(subnet.prefix_len());
                let size = 1u64 << host_bits;
                let start = to_u128(subnet.network()) as u64 + u64::from(roff) % size;
                let range = IpNet::new(from_u128(Family::V4, u128::from(start)), rp)
                    .unwrap()
                    .trunc();
                // Blocks of at most 2^10 addresses, at most 2^12 of them: quick to drain and list.
                let lo = rp.max(22);
                (
                    Just(subnet),
                    Just(range),
                    lo..=(rp + 12).min(32),
                    1..size,
                    proptest::collection::btree_set(0..size, 0..8),
                )
            })
            .prop_map(|(subnet, range, block_prefix, gw, ex)| {
                let base = to_u128(subnet.network());
                let at = |o: u64| from_u128(Family::V4, base + u128::from(o));
                AddressPlan {
                    subnet,
                    gateway: at(gw),
                    range,
                    exclude: ex.into_iter().map(at).collect(),
                    block_prefix,
                }
            })
    }

    fn is_bad(p: &AddressPlan, a: IpAddr) -> bool {
        !p.range.contains(&a)
            || a == p.subnet.network()
            || a == p.subnet.broadcast()
            || a == p.gateway
            || p.exclude.contains(&a)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn blocks_partition_the_range(p in arb_plan()) {
            let blocks: Vec<IpNet> = p.blocks().take(5000).collect();
            prop_assert_eq!(blocks.len() as u64, p.block_count());
            prop_assert_eq!(blocks[0].network(), p.range.network());
            prop_assert_eq!(blocks[blocks.len() - 1].broadcast(), p.range.broadcast());
            for pair in blocks.windows(2) {
                // Adjacent and ordered: no overlap, no gap.
                prop_assert_eq!(to_u128(pair[0].broadcast()) + 1, to_u128(pair[1].network()));
            }
            let total: u128 = blocks.iter().map(|b| to_u128(b.broadcast()) - to_u128(b.network()) + 1).sum();
            prop_assert_eq!(total, to_u128(p.range.broadcast()) - to_u128(p.range.network()) + 1);
            let per_block: u64 = blocks.iter().map(|b| p.assignable_in_block(b)).sum();
            prop_assert_eq!(per_block, p.assignable_total());
        }

        #[test]
        fn draining_a_block_yields_each_assignable_address_once(
            p in arb_plan(),
            pick in any::<prop::sample::Index>(),
            pre in proptest::collection::vec(any::<prop::sample::Index>(), 0..20),
        ) {
            let blocks: Vec<IpNet> = p.blocks().collect();
            let block = *pick.get(&blocks);
            let size = (to_u128(block.broadcast()) - to_u128(block.network()) + 1) as usize;
            // Some addresses already taken (possibly reserved ones, as a stale journal might hold).
            let mut used: BTreeSet<IpAddr> = pre
                .iter()
                .map(|i| from_u128(Family::V4, to_u128(block.network()) + i.index(size) as u128))
                .collect();
            let taken_ok = used.iter().filter(|a| p.is_assignable(**a)).count() as u64;
            let mut got = BTreeSet::new();
            let mut last = None;
            while let Some(a) = p.next_free(&block, &used, last) {
                prop_assert!(!is_bad(&p, a), "handed out {} from {:?}", a, p);
                prop_assert!(p.is_assignable(a));
                prop_assert!(block.contains(&a));
                prop_assert!(used.insert(a), "handed out {} twice", a);
                got.insert(a);
                last = Some(a);
            }
            prop_assert_eq!(got.len() as u64 + taken_ok, p.assignable_in_block(&block));
        }

        #[test]
        fn is_assignable_agrees_with_the_definition(p in arb_plan(), off in any::<u32>()) {
            let a = IpAddr::V4(Ipv4Addr::from(off));
            prop_assert_eq!(p.is_assignable(a), !is_bad(&p, a));
        }
    }
}
