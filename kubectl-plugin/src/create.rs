//! `create`: Docker's `network create` flags turned into a BridgeNetwork. Decided here without
//! the cluster, so every flag's mapping is unit-tested; checks that need the CRD's rules (a
//! gateway that is the broadcast address, a too-small MTU for IPv6) are the API server's, whose
//! messages the user sees as they come.

use std::collections::BTreeMap;
use std::net::IpAddr;

use bridgenet_crds::v1alpha1::Ipv6Config;
use bridgenet_crds::{BridgeNetwork, BridgeNetworkSpec};
use ipnet::IpNet;

use crate::cli::{CreateArgs, OutputOrOpt};

/// Docker's driver options bridgenet understands, and the spec field each sets.
pub const OPT_MASQUERADE: &str = "com.docker.network.bridge.enable_ip_masquerade";
/// `interPodTraffic`.
pub const OPT_ICC: &str = "com.docker.network.bridge.enable_icc";
/// `bridge`.
pub const OPT_BRIDGE_NAME: &str = "com.docker.network.bridge.name";
/// `mtu`.
pub const OPT_MTU: &str = "com.docker.network.driver.mtu";

/// A flag value `create` cannot turn into a network; worded like Docker's CLI where it has
/// the same check.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FlagError {
    /// bridgenet has no default address pool.
    #[error(
        "--subnet with an IPv4 CIDR is required: bridgenet has no default address pool (IPv6-only networks are not supported)"
    )]
    NoSubnet,
    /// Not a CIDR.
    #[error("invalid CIDR address: {0}")]
    BadCidr(String),
    /// Not an address.
    #[error("invalid IP address: {0}")]
    BadIp(String),
    /// A second subnet of one family.
    #[error("a bridgenet network has one IPv4 subnet and at most one IPv6 subnet, got {0} and {1}")]
    TwoSubnets(String, String),
    /// A gateway outside every subnet.
    #[error("no matching subnet for gateway {0}")]
    GatewayWithoutSubnet(String),
    /// An IP range outside every subnet.
    #[error("no matching subnet for range {0}")]
    RangeWithoutSubnet(String),
    /// An aux address outside every subnet.
    #[error("no matching subnet for aux-address {0}")]
    AuxWithoutSubnet(String),
    /// Two gateways for one subnet.
    #[error("cannot configure multiple gateways ({0}, {1}) for the same subnet ({2})")]
    TwoGateways(String, String, String),
    /// Two ranges in one subnet.
    #[error("cannot configure multiple ranges ({0}, {1}) on the same subnet ({2})")]
    TwoRanges(String, String, String),
    /// `--ipv6` with nothing to enable it on.
    #[error("--ipv6 needs an IPv6 --subnet: bridgenet has no default IPv6 address pool")]
    Ipv6WithoutSubnet,
    /// A `KEY=VALUE` flag without `=`.
    #[error("invalid {flag} {value:?}: expected KEY=VALUE")]
    NotKeyValue {
        /// `--opt`, `--aux-address`.
        flag: &'static str,
        /// What was given.
        value: String,
    },
    /// A driver option bridgenet does not have.
    #[error(
        "unsupported driver option {0}: bridgenet understands {OPT_MASQUERADE}, {OPT_ICC}, {OPT_BRIDGE_NAME} and {OPT_MTU}"
    )]
    UnknownOpt(String),
    /// A boolean option that is not one.
    #[error("invalid value {value:?} for option {key}: expected true or false")]
    BadBool {
        /// The option.
        key: String,
        /// What was given.
        value: String,
    },
    /// An MTU that is not a number.
    #[error("invalid MTU {0:?}: expected a number of bytes")]
    BadMtu(String),
    /// `--mtu` and the MTU option disagree.
    #[error("conflicting MTUs: --mtu {0} and {OPT_MTU}={1}")]
    ConflictingMtu(u32, u32),
    /// `-o yaml` and `-o json` at once.
    #[error("-o given twice: choose yaml or json")]
    TwoOutputs,
    /// A driver other than bridge.
    #[error("bridgenet has only the bridge driver, not {0:?}")]
    Driver(String),
}

/// Builds the BridgeNetwork `create` asks for, and the output format `-o` chose.
pub fn network(args: &CreateArgs) -> Result<BridgeNetwork, FlagError> {
    if args.driver != "bridge" {
        return Err(FlagError::Driver(args.driver.clone()));
    }
    // The subnets as written (the API server, not this, insists on the network address) and
    // as parsed, IPv4 then IPv6.
    let mut v4: Option<(IpNet, &str)> = None;
    let mut v6: Option<(IpNet, &str)> = None;
    for text in &args.subnet {
        let text = text.trim();
        let net = parse_cidr(text)?;
        let slot = if net.addr().is_ipv4() {
            &mut v4
        } else {
            &mut v6
        };
        if let Some((_, old)) = slot {
            return Err(FlagError::TwoSubnets((*old).to_owned(), text.to_owned()));
        }
        *slot = Some((net, text));
    }
    let (subnet4, subnet4_text) = v4.ok_or(FlagError::NoSubnet)?;
    if args.ipv6 && v6.is_none() {
        return Err(FlagError::Ipv6WithoutSubnet);
    }
    let subnets: Vec<IpNet> = [Some(subnet4), v6.map(|(net, _)| net)]
        .into_iter()
        .flatten()
        .collect();
    // Like Docker's CLI, each gateway and range belongs to the subnet containing it.
    let matching = |ip: IpAddr| subnets.iter().position(|s| s.contains(&ip));
    let mut gateways: [Option<String>; 2] = [None, None];
    for text in &args.gateway {
        let text = text.trim();
        let ip = parse_ip(text)?;
        let i = matching(ip).ok_or_else(|| FlagError::GatewayWithoutSubnet(text.to_owned()))?;
        if let Some(old) = &gateways[i] {
            return Err(FlagError::TwoGateways(
                old.clone(),
                text.to_owned(),
                subnets[i].to_string(),
            ));
        }
        gateways[i] = Some(text.to_owned());
    }
    let mut ranges: [Option<String>; 2] = [None, None];
    for text in &args.ip_range {
        let text = text.trim();
        let range = parse_cidr(text)?;
        let i = subnets
            .iter()
            .position(|s| s.contains(&range))
            .ok_or_else(|| FlagError::RangeWithoutSubnet(text.to_owned()))?;
        if let Some(old) = &ranges[i] {
            return Err(FlagError::TwoRanges(
                old.clone(),
                text.to_owned(),
                subnets[i].to_string(),
            ));
        }
        ranges[i] = Some(text.to_owned());
    }
    let mut exclude = Vec::new();
    for aux in &args.aux_address {
        // Docker's form is NAME=IP; the name only labels the address there and has no
        // place in the spec. A bare IP is taken too.
        let text = aux.split_once('=').map_or(aux.as_str(), |(_, ip)| ip);
        let ip = parse_ip(text)?;
        matching(ip).ok_or_else(|| FlagError::AuxWithoutSubnet(text.to_owned()))?;
        let ip = ip.to_string();
        if !exclude.contains(&ip) {
            exclude.push(ip);
        }
    }
    let opts = args
        .opt
        .iter()
        .chain(args.output.iter().filter_map(|o| match o {
            OutputOrOpt::Opt(kv) => Some(kv),
            OutputOrOpt::Output(_) => None,
        }));
    let mut masquerade = true;
    let mut inter_pod_traffic = true;
    let mut bridge = None;
    let mut mtu = args.mtu;
    for kv in opts {
        let (key, value) = key_value("--opt", kv)?;
        match key {
            OPT_MASQUERADE => masquerade = parse_bool(key, value)?,
            OPT_ICC => inter_pod_traffic = parse_bool(key, value)?,
            OPT_BRIDGE_NAME => bridge = Some(value.to_owned()),
            OPT_MTU => {
                let m: u32 = value
                    .parse()
                    .map_err(|_| FlagError::BadMtu(value.to_owned()))?;
                match args.mtu {
                    Some(flag) if flag != m => return Err(FlagError::ConflictingMtu(flag, m)),
                    _ => mtu = Some(m),
                }
            }
            other => return Err(FlagError::UnknownOpt(other.to_owned())),
        }
    }
    let [gateway4, gateway6] = gateways;
    let [range4, range6] = ranges;
    let spec = BridgeNetworkSpec {
        subnet: subnet4_text.to_owned(),
        gateway: gateway4,
        ip_range: range4,
        exclude_addresses: exclude,
        ipv6: v6.map(|(_, text)| Ipv6Config {
            subnet: text.to_owned(),
            gateway: gateway6,
            ip_range: range6,
            block_size: None,
        }),
        bridge,
        mtu,
        internal: args.internal,
        masquerade,
        inter_pod_traffic,
        dns: !args.no_dns,
        sticky_addresses: false,
        sticky_hold_seconds: None,
        block_size: None,
        node_selector: None,
        namespace_selector: None,
    };
    let mut net = BridgeNetwork::new(&args.name, spec);
    let mut labels = BTreeMap::new();
    for kv in &args.label {
        // Docker takes a bare KEY as an empty label.
        let (k, v) = kv.split_once('=').unwrap_or((kv.as_str(), ""));
        labels.insert(k.to_owned(), v.to_owned());
    }
    if !labels.is_empty() {
        net.metadata.labels = Some(labels);
    }
    Ok(net)
}

/// The `-o yaml|json` format, if one was given (at most one).
pub fn output(args: &CreateArgs) -> Result<Option<crate::cli::Format>, FlagError> {
    let mut formats = args.output.iter().filter_map(|o| match o {
        OutputOrOpt::Output(f) => Some(*f),
        OutputOrOpt::Opt(_) => None,
    });
    let first = formats.next();
    if formats.next().is_some() {
        return Err(FlagError::TwoOutputs);
    }
    Ok(first)
}

fn parse_cidr(text: &str) -> Result<IpNet, FlagError> {
    text.trim()
        .parse()
        .map_err(|_| FlagError::BadCidr(text.to_owned()))
}

fn parse_ip(text: &str) -> Result<IpAddr, FlagError> {
    text.trim()
        .parse()
        .map_err(|_| FlagError::BadIp(text.to_owned()))
}

fn key_value<'a>(flag: &'static str, kv: &'a str) -> Result<(&'a str, &'a str), FlagError> {
    kv.split_once('=').ok_or_else(|| FlagError::NotKeyValue {
        flag,
        value: kv.to_owned(),
    })
}

/// Go's `strconv.ParseBool`, which Docker uses for its boolean driver options.
fn parse_bool(key: &str, value: &str) -> Result<bool, FlagError> {
    match value {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Ok(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Ok(false),
        _ => Err(FlagError::BadBool {
            key: key.to_owned(),
            value: value.to_owned(),
        }),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use crate::cli::{Cli, Command, Format};
    use clap::Parser;
    use serde_json::{Value, json};

    fn args(flags: &[&str]) -> CreateArgs {
        let argv = ["kubectl-bridgenet", "create", "web"].iter().chain(flags);
        match Cli::try_parse_from(argv).unwrap().command {
            Command::Create(a) => *a,
            other => panic!("parsed as {other:?}"),
        }
    }

    fn spec(flags: &[&str]) -> Value {
        serde_json::to_value(network(&args(flags)).unwrap()).unwrap()["spec"].clone()
    }

    fn err(flags: &[&str]) -> FlagError {
        network(&args(flags)).unwrap_err()
    }

    #[test]
    fn the_design_docs_example_maps_onto_subnet_and_gateway() {
        let net = network(&args(&[
            "--driver=bridge",
            "--subnet=172.20.0.0/16",
            "--gateway=172.20.0.1",
        ]))
        .unwrap();
        let v = serde_json::to_value(&net).unwrap();
        assert_eq!(v["apiVersion"], "bridgenet.io/v1alpha1");
        assert_eq!(v["kind"], "BridgeNetwork");
        assert_eq!(v["metadata"], json!({"name": "web"}));
        assert_eq!(
            v["spec"],
            json!({"subnet": "172.20.0.0/16", "gateway": "172.20.0.1", "internal": false,
                   "masquerade": true, "interPodTraffic": true, "dns": true})
        );
        assert!(v.get("status").is_none_or(Value::is_null), "{v}");
    }

    #[test]
    fn every_flag_and_option_has_its_field() {
        let s = spec(&[
            "--subnet",
            "172.20.0.0/16",
            "--subnet",
            "fd00:20::/64",
            "--ipv6",
            "--gateway",
            "fd00:20::fe",
            "--gateway",
            "172.20.0.254",
            "--ip-range",
            "172.20.5.0/24",
            "--ip-range",
            "fd00:20::/80",
            "--aux-address",
            "router=172.20.0.2",
            "--aux-address",
            "dns6=fd00:20::53",
            "--aux-address",
            "172.20.0.3",
            "--internal",
            "--no-dns",
            "--opt",
            "com.docker.network.bridge.enable_ip_masquerade=false",
            "-o",
            "com.docker.network.bridge.enable_icc=0",
            "-o",
            "com.docker.network.bridge.name=br-web",
            "-o",
            "com.docker.network.driver.mtu=1400",
        ]);
        assert_eq!(
            s,
            json!({"subnet": "172.20.0.0/16", "gateway": "172.20.0.254", "ipRange": "172.20.5.0/24",
                   "excludeAddresses": ["172.20.0.2", "fd00:20::53", "172.20.0.3"],
                   "ipv6": {"subnet": "fd00:20::/64", "gateway": "fd00:20::fe", "ipRange": "fd00:20::/80"},
                   "bridge": "br-web", "mtu": 1400, "internal": true, "masquerade": false,
                   "interPodTraffic": false, "dns": false})
        );
    }

    #[test]
    fn an_ipv6_subnet_alone_makes_the_network_dual_stack() {
        let s = spec(&["--subnet=fd00:1::/64", "--subnet=10.1.0.0/24"]);
        assert_eq!(s["subnet"], "10.1.0.0/24");
        assert_eq!(s["ipv6"], json!({"subnet": "fd00:1::/64"}));
    }

    #[test]
    fn mtu_flag_and_labels() {
        let net = network(&args(&[
            "--subnet=10.1.0.0/24",
            "--mtu=9000",
            "-o",
            "com.docker.network.driver.mtu=9000",
            "--label",
            "team=db",
            "--label",
            "tier",
        ]))
        .unwrap();
        assert_eq!(net.spec.mtu, Some(9000));
        let labels = net.metadata.labels.unwrap();
        assert_eq!(labels["team"], "db");
        assert_eq!(labels["tier"], "");
    }

    #[test]
    fn output_is_o_yaml_or_json_once() {
        assert_eq!(output(&args(&["-o", "yaml"])), Ok(Some(Format::Yaml)));
        assert_eq!(
            output(&args(&["-o", "k=v", "--output", "json"])),
            Ok(Some(Format::Json))
        );
        assert_eq!(output(&args(&[])), Ok(None));
        assert_eq!(
            output(&args(&["-o", "yaml", "-o", "json"])),
            Err(FlagError::TwoOutputs)
        );
    }

    #[test]
    fn refusals_in_dockers_words() {
        assert_eq!(err(&[]), FlagError::NoSubnet);
        assert_eq!(err(&["--subnet=fd00::/64"]), FlagError::NoSubnet);
        assert_eq!(
            err(&["--subnet=10.1.0.0/33"]),
            FlagError::BadCidr("10.1.0.0/33".into())
        );
        assert_eq!(
            err(&["--subnet=10.1.0.0/24", "--subnet=10.2.0.0/24"]).to_string(),
            "a bridgenet network has one IPv4 subnet and at most one IPv6 subnet, got 10.1.0.0/24 and 10.2.0.0/24"
        );
        assert_eq!(
            err(&["--subnet=10.1.0.0/24", "--gateway=10.2.0.1"]).to_string(),
            "no matching subnet for gateway 10.2.0.1"
        );
        assert_eq!(
            err(&["--subnet=10.1.0.0/24", "--gateway=fd00::1"]).to_string(),
            "no matching subnet for gateway fd00::1"
        );
        assert_eq!(
            err(&[
                "--subnet=10.1.0.0/24",
                "--gateway=10.1.0.1",
                "--gateway=10.1.0.2"
            ])
            .to_string(),
            "cannot configure multiple gateways (10.1.0.1, 10.1.0.2) for the same subnet (10.1.0.0/24)"
        );
        assert_eq!(
            err(&["--subnet=10.1.0.0/24", "--ip-range=10.1.0.0/16"]).to_string(),
            "no matching subnet for range 10.1.0.0/16"
        );
        assert_eq!(
            err(&["--subnet=10.1.0.0/24", "--aux-address=r=10.9.0.1"]).to_string(),
            "no matching subnet for aux-address 10.9.0.1"
        );
        assert_eq!(
            err(&["--subnet=10.1.0.0/24", "--aux-address=r=bogus"]),
            FlagError::BadIp("bogus".into())
        );
        assert_eq!(
            err(&["--subnet=10.1.0.0/24", "--ipv6"]),
            FlagError::Ipv6WithoutSubnet
        );
        assert_eq!(
            err(&[
                "--subnet=10.1.0.0/24",
                "--opt=com.docker.network.bridge.host_binding_ipv4=0.0.0.0"
            ]),
            FlagError::UnknownOpt("com.docker.network.bridge.host_binding_ipv4".into())
        );
        assert_eq!(
            err(&["--subnet=10.1.0.0/24", "--opt", "mtu"]).to_string(),
            "invalid --opt \"mtu\": expected KEY=VALUE"
        );
        assert_eq!(
            err(&[
                "--subnet=10.1.0.0/24",
                "-o",
                "com.docker.network.bridge.enable_icc=maybe"
            ]),
            FlagError::BadBool {
                key: OPT_ICC.into(),
                value: "maybe".into()
            }
        );
        assert_eq!(
            err(&[
                "--subnet=10.1.0.0/24",
                "--mtu=1400",
                "-o",
                "com.docker.network.driver.mtu=1500"
            ]),
            FlagError::ConflictingMtu(1400, 1500)
        );
        assert_eq!(
            err(&[
                "--subnet=10.1.0.0/24",
                "-o",
                "com.docker.network.driver.mtu=big"
            ]),
            FlagError::BadMtu("big".into())
        );
        assert_eq!(
            err(&["--subnet=10.1.0.0/24", "-d", "macvlan"]),
            FlagError::Driver("macvlan".into())
        );
    }
}
