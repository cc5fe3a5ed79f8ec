//! The pod annotation `bridgenet.io/networks`: `custom-network`, `a,b`, or a JSON list of
//! `{name, interface, ip, ip6, mac, aliases, defaultRoute, sticky}` — parsed strictly, so that a typo fails the pod's sandbox with a
//! message instead of silently attaching nothing.

use std::collections::BTreeSet;
use std::net::IpAddr;

use bridgenet_crds::Mac;
use bridgenet_crds::names::{is_valid_dns_name, is_valid_ifname};
use serde::{Deserialize, Serialize};

/// One network a pod asks for, with the interface name resolved.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct NetworkRequest {
    /// BridgeNetwork name.
    pub name: String,
    /// Interface name inside the pod.
    pub interface: String,
    /// A specific address asked for (docker `--ip`; IPv6 too, for an IPv6 half).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<IpAddr>,
    /// A specific IPv6 address asked for (docker `--ip6`), for a dual-stack network.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip6: Option<IpAddr>,
    /// Keep the addresses for a pod of the same name after this one is gone (JSON `sticky`);
    /// `None` follows the network's `stickyAddresses`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sticky: Option<bool>,
    /// A specific MAC asked for (docker `--mac-address`), as `aa:bb:cc:dd:ee:ff`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<[u8; 6]>,
    /// Route the pod's default traffic through this network's gateway (JSON `defaultRoute`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub default_route: bool,
    /// Further names the pod answers to on this network's DNS (docker `--network-alias`),
    /// lowercase.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub aliases: Vec<String>,
}

/// Why an annotation was refused; the message is shown in the pod's events.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AnnotationError {
    /// Neither a name list nor a JSON list.
    #[error("annotation is not valid JSON: {0}")]
    Json(String),
    /// A network name that cannot be a BridgeNetwork name.
    #[error("{0:?} is not a valid network name (lowercase letters, digits, '-' and '.')")]
    BadName(String),
    /// An interface name Linux would refuse.
    #[error(
        "{0:?} is not a valid interface name (1-15 characters of letters, digits, '_', '.', '-')"
    )]
    BadInterface(String),
    /// Two entries want the same interface.
    #[error("interface {0:?} is requested twice")]
    DuplicateInterface(String),
    /// The same network listed twice.
    #[error("network {0:?} is requested twice; a pod attaches to a network once")]
    DuplicateNetwork(String),
    /// `ip` is not an address.
    #[error("{0:?} is not an IP address")]
    BadIp(String),
    /// `mac` is not a unicast MAC.
    #[error("{0:?} is not a unicast MAC address like 02:42:ac:14:00:05")]
    BadMac(String),
    /// An alias that cannot be a DNS name.
    #[error(
        "alias {0:?} is not a DNS name (labels of letters, digits and '-', separated by '.', \
         at most 63 characters each and 253 in all)"
    )]
    BadAlias(String),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    name: String,
    #[serde(default)]
    interface: Option<String>,
    #[serde(default)]
    ip: Option<String>,
    #[serde(default)]
    mac: Option<String>,
    #[serde(default, rename = "defaultRoute")]
    default_route: bool,
    #[serde(default)]
    aliases: Vec<String>,
    #[serde(default)]
    ip6: Option<String>,
    #[serde(default)]
    sticky: Option<bool>,
}

/// Parses the annotation value into the list of networks, naming unnamed interfaces `net1`,
/// `net2`, … by position (like Multus).
pub fn parse(value: &str) -> Result<Vec<NetworkRequest>, AnnotationError> {
    let value = value.trim();
    let entries: Vec<Entry> = if value.starts_with('[') {
        serde_json::from_str(value).map_err(|e| AnnotationError::Json(e.to_string()))?
    } else {
        value
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|name| Entry {
                name: name.to_owned(),
                interface: None,
                ip: None,
                mac: None,
                default_route: false,
                aliases: Vec::new(),
                ip6: None,
                sticky: None,
            })
            .collect()
    };
    let mut out = Vec::with_capacity(entries.len());
    let mut interfaces = BTreeSet::new();
    let mut networks = BTreeSet::new();
    for (i, entry) in entries.into_iter().enumerate() {
        if !is_valid_network_name(&entry.name) {
            return Err(AnnotationError::BadName(entry.name));
        }
        if !networks.insert(entry.name.clone()) {
            return Err(AnnotationError::DuplicateNetwork(entry.name));
        }
        let interface = entry.interface.unwrap_or_else(|| format!("net{}", i + 1));
        if !is_valid_ifname(&interface) {
            return Err(AnnotationError::BadInterface(interface));
        }
        if !interfaces.insert(interface.clone()) {
            return Err(AnnotationError::DuplicateInterface(interface));
        }
        let ip = entry
            .ip
            .map(|s| {
                // `172.20.0.9/16` is a common way to write it; the prefix comes from the network.
                s.split('/')
                    .next()
                    .unwrap_or_default()
                    .parse::<IpAddr>()
                    .map_err(|_| AnnotationError::BadIp(s.clone()))
            })
            .transpose()?;
        let ip6 = entry
            .ip6
            .map(|s| {
                s.split('/')
                    .next()
                    .unwrap_or_default()
                    .parse::<IpAddr>()
                    .ok()
                    .filter(IpAddr::is_ipv6)
                    .ok_or_else(|| AnnotationError::BadIp(s.clone()))
            })
            .transpose()?;
        if ip.is_some_and(|ip| ip.is_ipv6()) && ip6.is_some() {
            return Err(AnnotationError::BadIp(format!(
                "{} and ip6 both name an IPv6 address",
                ip.map(|ip| ip.to_string()).unwrap_or_default()
            )));
        }
        let mac = entry
            .mac
            .map(|s| parse_mac(&s).ok_or(AnnotationError::BadMac(s)))
            .transpose()?;
        let mut aliases = Vec::with_capacity(entry.aliases.len());
        for alias in entry.aliases {
            if !is_valid_dns_name(&alias) {
                return Err(AnnotationError::BadAlias(alias));
            }
            let alias = alias.to_ascii_lowercase();
            if !aliases.contains(&alias) {
                aliases.push(alias);
            }
        }
        out.push(NetworkRequest {
            name: entry.name,
            interface,
            ip,
            mac,
            default_route: entry.default_route,
            aliases,
            ip6,
            sticky: entry.sticky,
        });
    }
    Ok(out)
}

/// A Kubernetes object name (DNS-1123 subdomain), which BridgeNetwork names are.
fn is_valid_network_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && name
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphanumeric())
        && name
            .bytes()
            .last()
            .is_some_and(|b| b.is_ascii_alphanumeric())
}

/// Parses a pod interface's MAC as users write it in the annotation or `runtimeConfig`:
/// [`Mac`]'s colon form, or with hyphens (`02-42-ac-14-00-09`); only unicast addresses (a pod
/// interface cannot be multicast).
pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    s.replace('-', ":")
        .parse::<Mac>()
        .ok()
        .filter(|mac| mac.is_unicast())
        .map(Mac::octets)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn names_and_lists() {
        let one = parse("custom-network").unwrap();
        assert_eq!(one.len(), 1);
        assert_eq!(one[0].interface, "net1");
        let two = parse(" a , b ").unwrap();
        assert_eq!(
            two.iter().map(|r| r.interface.as_str()).collect::<Vec<_>>(),
            ["net1", "net2"]
        );
        assert!(parse("").unwrap().is_empty());
    }

    #[test]
    fn json_entries() {
        let reqs = parse(
            r#"[{"name":"a","interface":"data0","ip":"172.20.0.9/16","mac":"02:42:ac:14:00:09"},{"name":"b"}]"#,
        )
        .unwrap();
        assert_eq!(reqs[0].interface, "data0");
        assert_eq!(reqs[0].ip, Some("172.20.0.9".parse().unwrap()));
        assert_eq!(reqs[0].mac, Some([2, 0x42, 0xac, 0x14, 0, 9]));
        assert_eq!(reqs[1].interface, "net2");
    }

    #[test]
    fn aliases_are_dns_names_kept_lowercase_once() {
        let reqs =
            parse(r#"[{"name":"a","aliases":["DB","postgres.internal","db"]},{"name":"b"}]"#)
                .unwrap();
        assert_eq!(reqs[0].aliases, ["db", "postgres.internal"]);
        assert!(reqs[1].aliases.is_empty());
        for bad in [
            "",
            "-db",
            "db-",
            "a..b",
            "under_score",
            "x.",
            &"a".repeat(64),
        ] {
            let value = serde_json::json!([{"name": "a", "aliases": [bad]}]).to_string();
            assert_eq!(
                parse(&value),
                Err(AnnotationError::BadAlias(bad.to_owned())),
                "{bad:?}"
            );
        }
    }

    /// Every pod of `examples/` asks for what its comments say, in a form the agent takes.
    #[test]
    fn example_pods_annotations_parse() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
        let mut pods = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_none_or(|e| e != "yaml") {
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap();
            for doc in serde_yaml::Deserializer::from_str(&text) {
                let doc = serde_yaml::Value::deserialize(doc).unwrap();
                if doc["kind"] != "Pod" {
                    continue;
                }
                pods += 1;
                let value = doc["metadata"]["annotations"][bridgenet_crds::ANNOTATION_NETWORKS]
                    .as_str()
                    .unwrap_or_else(|| panic!("{}: a pod without networks", path.display()));
                let reqs = parse(value).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                if doc["metadata"]["name"] == "store" && path.ends_with("pod-dns.yaml") {
                    assert_eq!(reqs[0].aliases, ["postgres", "sql"]);
                }
            }
        }
        assert!(pods >= 4, "expected the example pods, found {pods}");
    }

    #[test]
    fn refuses_bad_input() {
        assert!(matches!(
            parse("[{\"nme\":\"a\"}]"),
            Err(AnnotationError::Json(_))
        ));
        assert!(matches!(
            parse("Bad_Name"),
            Err(AnnotationError::BadName(_))
        ));
        assert!(matches!(
            parse("a,a"),
            Err(AnnotationError::DuplicateNetwork(_))
        ));
        assert!(matches!(
            parse(r#"[{"name":"a","interface":"x"},{"name":"b","interface":"x"}]"#),
            Err(AnnotationError::DuplicateInterface(_))
        ));
        assert!(matches!(
            parse(r#"[{"name":"a","interface":"much-too-long-name"}]"#),
            Err(AnnotationError::BadInterface(_))
        ));
        assert!(matches!(
            parse(r#"[{"name":"a","ip":"300.1.1.1"}]"#),
            Err(AnnotationError::BadIp(_))
        ));
        assert!(matches!(
            parse(r#"[{"name":"a","mac":"01:00:5e:00:00:01"}]"#),
            Err(AnnotationError::BadMac(_))
        ));
    }

    #[test]
    fn mac_round_trip() {
        let mac = parse_mac("02:aa:bb:cc:dd:0e").unwrap();
        assert_eq!(Mac::new(mac).to_string(), "02:aa:bb:cc:dd:0e");
        assert!(parse_mac("02:aa:bb:cc:dd").is_none());
        assert!(parse_mac("02:aa:bb:cc:dd:ee:ff").is_none());
    }
}
