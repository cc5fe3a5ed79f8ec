//! A BridgeNetwork's spec resolved: every default filled in and every rule the CRD's CEL
//! checks checked again in Rust (see the [module docs](super)).

use std::collections::BTreeSet;
use std::net::IpAddr;

use super::*;
use crate::v1alpha1::BridgeNetworkSpec;

/// A BridgeNetwork's spec with every default filled in and every rule checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResolvedNetwork {
    /// The BridgeNetwork's name.
    pub name: String,
    /// The IPv4 addresses.
    pub v4: AddressPlan,
    /// The IPv6 addresses of a dual-stack network.
    pub v6: Option<AddressPlan>,
    /// Linux bridge name in effect (the spec's, or [`names::default_bridge_name`]).
    pub bridge: String,
    /// The spec's MTU, checked; `None` means the operator's default.
    pub mtu: Option<u32>,
}

impl ResolvedNetwork {
    /// The IPv4 plan, then the IPv6 one if any.
    pub fn plans(&self) -> impl Iterator<Item = &AddressPlan> {
        std::iter::once(&self.v4).chain(self.v6.as_ref())
    }

    /// The plan of `family`, if the network has one.
    pub fn plan(&self, family: Family) -> Option<&AddressPlan> {
        match family {
            Family::V4 => Some(&self.v4),
            Family::V6 => self.v6.as_ref(),
        }
    }
}

/// Default block sizes, overridable by the operator's `--block-size`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockDefaults {
    /// IPv4 block prefix when the spec has no `blockSize`.
    pub v4: u8,
    /// IPv6 block prefix when the spec has no `ipv6.blockSize`.
    pub v6: u8,
}

impl Default for BlockDefaults {
    fn default() -> Self {
        Self {
            v4: DEFAULT_BLOCK_PREFIX_V4,
            v6: DEFAULT_BLOCK_PREFIX_V6,
        }
    }
}

/// Checks `spec` and fills in its defaults, with the default block sizes (/26, /122).
pub fn resolve(name: &str, spec: &BridgeNetworkSpec) -> Result<ResolvedNetwork, NetError> {
    resolve_with(name, spec, BlockDefaults::default())
}

/// Checks `spec` as the CRD's OpenAPI bounds and CEL rules would (for the address, MTU and
/// bridge fields) and fills in the defaults: gateway = first host, range = subnet, block size
/// = `defaults` but never shorter than the range, bridge = derived from `name`.
pub fn resolve_with(
    name: &str,
    spec: &BridgeNetworkSpec,
    defaults: BlockDefaults,
) -> Result<ResolvedNetwork, NetError> {
    let mut exclude_v4 = BTreeSet::new();
    let mut exclude_v6 = BTreeSet::new();
    for value in &spec.exclude_addresses {
        let ip = parse_ip_field("excludeAddresses", value)?;
        match ip {
            IpAddr::V4(_) => exclude_v4.insert(ip),
            IpAddr::V6(_) => exclude_v6.insert(ip),
        };
    }

    let v4 = plan(
        Fields::V4,
        &spec.subnet,
        spec.gateway.as_deref(),
        spec.ip_range.as_deref(),
        spec.block_size,
        defaults.v4,
        exclude_v4,
    )?;
    let v6 = match &spec.ipv6 {
        Some(cfg) => Some(plan(
            Fields::V6,
            &cfg.subnet,
            cfg.gateway.as_deref(),
            cfg.ip_range.as_deref(),
            cfg.block_size,
            defaults.v6,
            exclude_v6,
        )?),
        None => {
            if let Some(address) = exclude_v6.first() {
                return Err(NetError::ExcludeOutsideSubnet { address: *address });
            }
            None
        }
    };

    if let Some(mtu) = spec.mtu {
        if !(MIN_MTU..=MAX_MTU).contains(&mtu) {
            return Err(NetError::MtuOutOfBounds { mtu });
        }
        if v6.is_some() && mtu < MIN_MTU_IPV6 {
            return Err(NetError::MtuTooSmallForIpv6 { mtu });
        }
    }

    let bridge = match &spec.bridge {
        Some(bridge) if names::is_valid_ifname(bridge) => bridge.clone(),
        Some(bridge) => {
            return Err(NetError::InvalidBridgeName {
                name: bridge.clone(),
            });
        }
        None => names::default_bridge_name(name),
    };

    Ok(ResolvedNetwork {
        name: name.to_owned(),
        v4,
        v6,
        bridge,
        mtu: spec.mtu,
    })
}

/// Field names and bounds of one family, so that errors name the field the user wrote.
#[derive(Clone, Copy)]
enum Fields {
    V4,
    V6,
}

impl Fields {
    fn family(self) -> Family {
        match self {
            Fields::V4 => Family::V4,
            Fields::V6 => Family::V6,
        }
    }
    fn subnet(self) -> &'static str {
        match self {
            Fields::V4 => "subnet",
            Fields::V6 => "ipv6.subnet",
        }
    }
    fn gateway(self) -> &'static str {
        match self {
            Fields::V4 => "gateway",
            Fields::V6 => "ipv6.gateway",
        }
    }
    fn ip_range(self) -> &'static str {
        match self {
            Fields::V4 => "ipRange",
            Fields::V6 => "ipv6.ipRange",
        }
    }
    fn block_size(self) -> &'static str {
        match self {
            Fields::V4 => "blockSize",
            Fields::V6 => "ipv6.blockSize",
        }
    }
    fn max_subnet_prefix(self) -> u8 {
        match self {
            Fields::V4 => MAX_SUBNET_PREFIX_V4,
            Fields::V6 => MAX_SUBNET_PREFIX_V6,
        }
    }
    fn min_block_prefix(self) -> u8 {
        match self {
            Fields::V4 => MIN_BLOCK_PREFIX_V4,
            Fields::V6 => MIN_BLOCK_PREFIX_V6,
        }
    }
}

fn plan(
    fields: Fields,
    subnet: &str,
    gateway: Option<&str>,
    ip_range: Option<&str>,
    block_size: Option<u8>,
    default_block: u8,
    exclude: BTreeSet<IpAddr>,
) -> Result<AddressPlan, NetError> {
    let family = fields.family();
    let subnet_net = parse_cidr_field(fields.subnet(), subnet)?;
    if Family::of_net(&subnet_net) != family {
        return Err(NetError::WrongFamily {
            field: fields.subnet(),
            value: subnet.to_owned(),
            expected: family,
        });
    }
    if subnet_net.prefix_len() > fields.max_subnet_prefix() {
        return Err(NetError::SubnetTooSmall {
            field: fields.subnet(),
            subnet: subnet_net,
            max_prefix: fields.max_subnet_prefix(),
        });
    }

    let gateway = match gateway {
        Some(value) => {
            let ip = parse_ip_field(fields.gateway(), value)?;
            if Family::of(ip) != family {
                return Err(NetError::WrongFamily {
                    field: fields.gateway(),
                    value: value.to_owned(),
                    expected: family,
                });
            }
            if !subnet_net.contains(&ip) {
                return Err(NetError::GatewayOutsideSubnet {
                    field: fields.gateway(),
                    gateway: ip,
                    subnet: subnet_net,
                });
            }
            if ip == subnet_net.network() {
                return Err(NetError::GatewayIsNetworkAddress {
                    field: fields.gateway(),
                    gateway: ip,
                    subnet: subnet_net,
                });
            }
            if family == Family::V4 && ip == subnet_net.broadcast() {
                return Err(NetError::GatewayIsBroadcast {
                    gateway: ip,
                    subnet: subnet_net,
                });
            }
            ip
        }
        None => default_gateway(&subnet_net),
    };

    let range = match ip_range {
        Some(value) => {
            let net = parse_cidr_field(fields.ip_range(), value)?;
            if Family::of_net(&net) != family {
                return Err(NetError::WrongFamily {
                    field: fields.ip_range(),
                    value: value.to_owned(),
                    expected: family,
                });
            }
            if !subnet_net.contains(&net) {
                return Err(NetError::RangeOutsideSubnet {
                    field: fields.ip_range(),
                    range: net,
                    subnet: subnet_net,
                });
            }
            net
        }
        None => subnet_net,
    };

    let block_prefix = match block_size {
        Some(size) => {
            if size < fields.min_block_prefix() || size > family.bits() {
                return Err(NetError::BlockSizeOutOfBounds {
                    field: fields.block_size(),
                    block_size: size,
                    min: fields.min_block_prefix(),
                    max: family.bits(),
                });
            }
            if size < range.prefix_len() {
                return Err(NetError::BlockSizeShorterThanRange {
                    field: fields.block_size(),
                    block_size: size,
                    range,
                });
            }
            size
        }
        None => default_block.clamp(range.prefix_len(), family.bits()),
    };

    if let Some(address) = exclude.iter().find(|ip| !subnet_net.contains(*ip)) {
        return Err(NetError::ExcludeOutsideSubnet { address: *address });
    }

    Ok(AddressPlan {
        subnet: subnet_net,
        gateway,
        range,
        exclude,
        block_prefix,
    })
}
