//! The pod annotations `connect` and `disconnect` work with, decided without the cluster:
//! the new value of `bridgenet.io/networks` (in the grammar the node agent accepts: `a`, `a,b`,
//! or a JSON list of `{name, interface, ip, mac, defaultRoute, aliases}`), and what the agent
//! reported in `bridgenet.io/network-status`.
//!
//! An edit keeps every other entry as it was. The comma form stays a comma form unless the new
//! entry carries something only JSON can (an address, aliases, an interface name).

use std::net::IpAddr;

use bridgenet_crds::BridgeNetwork;
use bridgenet_crds::names::{is_valid_dns_name, is_valid_ifname};
use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The networks a pod's annotation asks for, in its own form.
#[derive(Clone, Debug, PartialEq)]
pub enum Networks {
    /// `a,b` (or no annotation: no names).
    Names(Vec<String>),
    /// A JSON list; each entry is kept as it was written.
    Json(Vec<serde_json::Map<String, Value>>),
}

/// An annotation the plugin cannot edit without losing what it says.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// Starts like a JSON list but is not one.
    #[error("it is not a valid JSON list: {0}")]
    Json(String),
    /// A JSON entry that is not an object with a string `name`.
    #[error("entry {0} of the JSON list has no \"name\"")]
    NoName(usize),
}

/// Why a `connect` or `disconnect` cannot edit the annotation.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EditError {
    /// The network is already asked for.
    #[error("already connected")]
    AlreadyConnected,
    /// The network is not asked for.
    #[error("not connected")]
    NotConnected,
    /// `--interface` names one another network has.
    #[error("interface {interface} is already used by network {network} in the pod")]
    InterfaceTaken {
        /// The interface asked for.
        interface: String,
        /// The network that has it.
        network: String,
    },
}

/// A `connect` flag the agent would refuse; refused here, before anything is written.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// `--ip` that is not an IPv4 address (Docker's words).
    #[error("invalid IPv4 address: {0}")]
    BadIpv4(String),
    /// `--ip6` that is not an IPv6 address (Docker's words).
    #[error("invalid IPv6 address: {0}")]
    BadIpv6(String),
    /// An address outside the network's subnets (Docker's words).
    #[error("Invalid address {0}: It does not belong to any of this network's subnets")]
    OutsideSubnets(String),
    /// An alias DNS cannot carry.
    #[error(
        "invalid alias {0:?}: a DNS name (labels of letters, digits and '-', separated by '.', at most 63 characters each and 253 in all)"
    )]
    BadAlias(String),
    /// An interface name Linux would refuse.
    #[error(
        "invalid interface name {0:?}: 1-15 characters of letters, digits, '_', '.', '-', starting with a letter or digit"
    )]
    BadInterface(String),
}

/// What `connect` adds: one entry of the annotation.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Attachment {
    /// The network.
    pub name: String,
    /// Interface name inside the pod, when it has to be written.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub interface: Option<String>,
    /// The IPv4 address asked for (`--ip`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ip: Option<IpAddr>,
    /// The IPv6 address asked for (`--ip6`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ip6: Option<IpAddr>,
    /// DNS aliases (`--alias`), lowercase, each once.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub aliases: Vec<String>,
}

impl Attachment {
    /// Checks `connect`'s flags against the network the way the agent will.
    pub fn new(
        net: &BridgeNetwork,
        ip: Option<&str>,
        ip6: Option<&str>,
        aliases: &[String],
        interface: Option<&str>,
    ) -> Result<Self, RequestError> {
        let v4 = ip
            .map(|s| match s.trim().parse::<IpAddr>() {
                Ok(a @ IpAddr::V4(_)) => Ok(a),
                _ => Err(RequestError::BadIpv4(s.to_owned())),
            })
            .transpose()?;
        let v6 = ip6
            .map(|s| match s.trim().parse::<IpAddr>() {
                Ok(a @ IpAddr::V6(_)) => Ok(a),
                _ => Err(RequestError::BadIpv6(s.to_owned())),
            })
            .transpose()?;
        for addr in v4.into_iter().chain(v6) {
            let subnet = match addr {
                IpAddr::V4(_) => Some(net.spec.subnet.as_str()),
                IpAddr::V6(_) => net.spec.ipv6.as_ref().map(|v6| v6.subnet.as_str()),
            };
            let inside = subnet
                .and_then(|s| s.parse::<IpNet>().ok())
                .is_some_and(|s| s.contains(&addr));
            if !inside {
                return Err(RequestError::OutsideSubnets(addr.to_string()));
            }
        }
        let mut lower: Vec<String> = Vec::with_capacity(aliases.len());
        for alias in aliases {
            if !is_valid_dns_name(alias) {
                return Err(RequestError::BadAlias(alias.clone()));
            }
            let alias = alias.to_ascii_lowercase();
            if !lower.contains(&alias) {
                lower.push(alias);
            }
        }
        if let Some(i) = interface
            && !is_valid_ifname(i)
        {
            return Err(RequestError::BadInterface(i.to_owned()));
        }
        Ok(Self {
            name: net.metadata.name.clone().unwrap_or_default(),
            interface: interface.map(str::to_owned),
            ip: v4,
            ip6: v6,
            aliases: lower,
        })
    }
}

impl Networks {
    /// Reads the annotation's value (`None`: the pod has none).
    pub fn parse(value: Option<&str>) -> Result<Self, ParseError> {
        let value = value.unwrap_or_default().trim();
        if !value.starts_with('[') {
            return Ok(Networks::Names(
                value
                    .split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned)
                    .collect(),
            ));
        }
        let list: Vec<Value> =
            serde_json::from_str(value).map_err(|e| ParseError::Json(e.to_string()))?;
        list.into_iter()
            .enumerate()
            .map(|(i, v)| match v {
                Value::Object(m) if m.get("name").is_some_and(Value::is_string) => Ok(m),
                _ => Err(ParseError::NoName(i)),
            })
            .collect::<Result<_, _>>()
            .map(Networks::Json)
    }

    /// The value to write back; `None` when nothing is left (the annotation is removed).
    pub fn render(&self) -> Option<String> {
        match self {
            Networks::Names(names) if names.is_empty() => None,
            Networks::Names(names) => Some(names.join(",")),
            Networks::Json(entries) if entries.is_empty() => None,
            Networks::Json(entries) => {
                // `name` first, as people write it; serde_json's maps would sort it last.
                let rendered: Vec<String> = entries
                    .iter()
                    .map(|e| {
                        let name = e.get("name").map(|n| format!("\"name\":{n}"));
                        let rest = e
                            .iter()
                            .filter(|(k, _)| *k != "name")
                            .map(|(k, v)| format!("{}:{v}", Value::from(k.as_str())));
                        format!(
                            "{{{}}}",
                            name.into_iter().chain(rest).collect::<Vec<_>>().join(",")
                        )
                    })
                    .collect();
                Some(format!("[{}]", rendered.join(",")))
            }
        }
    }

    /// The networks asked for, with the interface each gets: its own `interface`, else
    /// `net<position>` as the agent names them.
    pub fn interfaces(&self) -> Vec<(String, String)> {
        match self {
            Networks::Names(names) => names
                .iter()
                .enumerate()
                .map(|(i, n)| (n.clone(), format!("net{}", i + 1)))
                .collect(),
            Networks::Json(entries) => entries
                .iter()
                .enumerate()
                .map(|(i, e)| {
                    let name = e.get("name").and_then(Value::as_str).unwrap_or_default();
                    let interface = e
                        .get("interface")
                        .and_then(Value::as_str)
                        .map_or_else(|| format!("net{}", i + 1), str::to_owned);
                    (name.to_owned(), interface)
                })
                .collect(),
        }
    }

    /// Whether `network` is asked for.
    pub fn contains(&self, network: &str) -> bool {
        self.interfaces().iter().any(|(n, _)| n == network)
    }
}

/// The annotation with `add` appended. `in_use` are the pod's interfaces now, `(network,
/// interface)` from its network-status: after earlier edits they may differ from the positional
/// names, and the new interface avoids them too, so the agent never has to rename it.
pub fn connect(
    current: &Networks,
    add: &Attachment,
    in_use: &[(String, String)],
) -> Result<Networks, EditError> {
    if current.contains(&add.name) {
        return Err(EditError::AlreadyConnected);
    }
    let mut used = current.interfaces();
    used.extend(in_use.iter().cloned());
    let taken = |i: &str| used.iter().any(|(_, u)| u == i);
    let mut add = add.clone();
    match &add.interface {
        Some(i) => {
            if let Some((network, _)) = used.iter().find(|(_, u)| u == i) {
                return Err(EditError::InterfaceTaken {
                    interface: i.clone(),
                    network: network.clone(),
                });
            }
        }
        None => {
            let positional = format!("net{}", current.interfaces().len() + 1);
            if taken(&positional) {
                add.interface = (1..).map(|n| format!("net{n}")).find(|n| !taken(n));
            }
        }
    }
    let plain = add.interface.is_none() && add.ip.is_none() && add.aliases.is_empty();
    Ok(match current {
        Networks::Names(names) if plain => {
            let mut names = names.clone();
            names.push(add.name);
            Networks::Names(names)
        }
        _ => {
            // Converting `a,b` keeps every interface: entries without one are still named by
            // position, and the positions do not change.
            let mut entries = match current {
                Networks::Names(names) => names
                    .iter()
                    .map(|n| {
                        serde_json::Map::from_iter([("name".to_owned(), Value::from(n.as_str()))])
                    })
                    .collect(),
                Networks::Json(entries) => entries.clone(),
            };
            if let Ok(Value::Object(entry)) = serde_json::to_value(&add) {
                entries.push(entry);
            }
            Networks::Json(entries)
        }
    })
}

/// The annotation without `network`. The form is kept; with nothing left the annotation goes.
pub fn disconnect(current: &Networks, network: &str) -> Result<Networks, EditError> {
    if !current.contains(network) {
        return Err(EditError::NotConnected);
    }
    Ok(match current {
        Networks::Names(names) => {
            Networks::Names(names.iter().filter(|n| *n != network).cloned().collect())
        }
        Networks::Json(entries) => Networks::Json(
            entries
                .iter()
                .filter(|e| e.get("name").and_then(Value::as_str) != Some(network))
                .cloned()
                .collect(),
        ),
    })
}

/// One entry of `bridgenet.io/network-status`, as the agent writes it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
pub struct StatusEntry {
    /// The network.
    pub name: String,
    /// The interface in the pod.
    #[serde(default)]
    pub interface: String,
    /// Its addresses (without prefix).
    #[serde(default)]
    pub ips: Vec<String>,
    /// Its MAC.
    #[serde(default)]
    pub mac: String,
    /// The network's gateways (a list; a single string is taken too).
    #[serde(default, deserialize_with = "one_or_many")]
    pub gateway: Vec<String>,
}

fn one_or_many<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    Ok(match Value::deserialize(d)? {
        Value::String(s) => vec![s],
        Value::Array(list) => list
            .into_iter()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect(),
        _ => Vec::new(),
    })
}

/// The entries of a `network-status` value; a value that is not the agent's list (hand-edited,
/// or from a newer agent) reads as no entries rather than failing the wait.
pub fn status_entries(value: Option<&str>) -> Vec<StatusEntry> {
    value
        .and_then(|v| serde_json::from_str::<Vec<Value>>(v).ok())
        .map(|list| {
            list.into_iter()
                .filter_map(|v| serde_json::from_value(v).ok())
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use serde_json::json;

    fn net(ipv6: bool) -> BridgeNetwork {
        let mut spec = json!({"subnet": "172.20.0.0/16"});
        if ipv6 {
            spec["ipv6"] = json!({"subnet": "fd00:20::/64"});
        }
        serde_json::from_value(
            json!({"apiVersion": "bridgenet.io/v1alpha1", "kind": "BridgeNetwork",
                                      "metadata": {"name": "web"}, "spec": spec}),
        )
        .unwrap()
    }

    fn plain(name: &str) -> Attachment {
        Attachment {
            name: name.into(),
            ..Attachment::default()
        }
    }

    fn add(current: &str, a: &Attachment) -> Result<Option<String>, EditError> {
        connect(&Networks::parse(Some(current)).unwrap(), a, &[]).map(|n| n.render())
    }

    fn remove(current: &str, network: &str) -> Result<Option<String>, EditError> {
        disconnect(&Networks::parse(Some(current)).unwrap(), network).map(|n| n.render())
    }

    #[test]
    fn a_plain_connect_keeps_the_comma_form() {
        assert_eq!(add("", &plain("web")), Ok(Some("web".into())));
        assert_eq!(add(" a , b ", &plain("web")), Ok(Some("a,b,web".into())));
        assert_eq!(
            connect(&Networks::parse(None).unwrap(), &plain("web"), &[])
                .unwrap()
                .render(),
            Some("web".into())
        );
    }

    #[test]
    fn an_address_or_alias_turns_the_list_into_json_keeping_positions() {
        let a = Attachment {
            ip: Some("172.20.0.9".parse().unwrap()),
            aliases: vec!["db".into()],
            ..plain("web")
        };
        let v: Value = serde_json::from_str(&add("a,b", &a).unwrap().unwrap()).unwrap();
        assert_eq!(
            v,
            json!([{"name": "a"}, {"name": "b"}, {"name": "web", "ip": "172.20.0.9", "aliases": ["db"]}])
        );
    }

    #[test]
    fn json_entries_are_kept_as_written() {
        let current =
            r#"[{"name":"a","interface":"data0","mac":"02:42:ac:14:00:09","defaultRoute":true}]"#;
        let v: Value =
            serde_json::from_str(&add(current, &plain("web")).unwrap().unwrap()).unwrap();
        assert_eq!(
            v,
            json!([{"name": "a", "interface": "data0", "mac": "02:42:ac:14:00:09", "defaultRoute": true},
                   {"name": "web"}])
        );
    }

    #[test]
    fn the_new_interface_avoids_names_in_the_annotation_and_in_the_pod() {
        // `a` took net2 explicitly, so the positional net2 of the new entry is taken.
        let v: Value = serde_json::from_str(
            &add(r#"[{"name":"a","interface":"net2"}]"#, &plain("web"))
                .unwrap()
                .unwrap(),
        )
        .unwrap();
        assert_eq!(v[1], json!({"name": "web", "interface": "net1"}));
        // After `a` was disconnected from `a,b`, b keeps net2 in the running pod.
        let in_use = [("b".to_owned(), "net2".to_owned())];
        let out = connect(&Networks::parse(Some("b")).unwrap(), &plain("web"), &in_use).unwrap();
        assert_eq!(
            out.interfaces(),
            [("b".into(), "net1".into()), ("web".into(), "net3".into())]
        );
        let taken = Attachment {
            interface: Some("net1".into()),
            ..plain("web")
        };
        assert_eq!(
            add("a", &taken),
            Err(EditError::InterfaceTaken {
                interface: "net1".into(),
                network: "a".into()
            })
        );
    }

    #[test]
    fn connecting_twice_and_disconnecting_what_is_not_there_are_refused() {
        assert_eq!(
            add("a,web", &plain("web")),
            Err(EditError::AlreadyConnected)
        );
        assert_eq!(
            add(r#"[{"name":"web","ip":"172.20.0.9"}]"#, &plain("web")),
            Err(EditError::AlreadyConnected)
        );
        assert_eq!(remove("a,b", "web"), Err(EditError::NotConnected));
        assert_eq!(remove("", "web"), Err(EditError::NotConnected));
    }

    #[test]
    fn disconnect_keeps_the_form_and_drops_an_empty_annotation() {
        assert_eq!(remove("a,web,b", "web"), Ok(Some("a,b".into())));
        assert_eq!(remove("web", "web"), Ok(None));
        assert_eq!(
            remove(r#"[{"name":"a","interface":"x"},{"name":"web"}]"#, "web"),
            Ok(Some(r#"[{"name":"a","interface":"x"}]"#.into()))
        );
        assert_eq!(remove(r#"[{"name":"web"}]"#, "web"), Ok(None));
    }

    #[test]
    fn json_is_written_compact_with_the_name_first() {
        let a = Attachment {
            ip: Some("172.20.0.9".parse().unwrap()),
            aliases: vec!["db".into()],
            ..plain("web")
        };
        assert_eq!(
            add(r#"[ {"name": "a", "mac": "02:42:ac:14:00:09"} ]"#, &a),
            Ok(Some(
                r#"[{"name":"a","mac":"02:42:ac:14:00:09"},{"name":"web","aliases":["db"],"ip":"172.20.0.9"}]"#
                    .into()
            ))
        );
    }

    #[test]
    fn unreadable_annotations_are_not_edited() {
        assert!(matches!(
            Networks::parse(Some("[{\"name\":")),
            Err(ParseError::Json(_))
        ));
        assert_eq!(
            Networks::parse(Some(r#"[{"name":"a"},{"ip":"1.2.3.4"}]"#)),
            Err(ParseError::NoName(1))
        );
    }

    #[test]
    fn requests_are_checked_like_the_agent_checks_them() {
        let n = net(true);
        let ok = Attachment::new(
            &n,
            Some("172.20.0.9"),
            None,
            &["DB".into(), "db".into(), "sql.internal".into()],
            Some("data0"),
        )
        .unwrap();
        assert_eq!(ok.ip, Some("172.20.0.9".parse().unwrap()));
        assert_eq!(ok.aliases, ["db", "sql.internal"]);
        assert_eq!(ok.interface.as_deref(), Some("data0"));
        assert_eq!(ok.name, "web");
        let v6 = Attachment::new(&n, None, Some("fd00:20::9"), &[], None).unwrap();
        assert_eq!(v6.ip6, Some("fd00:20::9".parse().unwrap()));
        let both = Attachment::new(&n, Some("172.20.0.9"), Some("fd00:20::9"), &[], None).unwrap();
        assert_eq!(
            (both.ip, both.ip6),
            (
                Some("172.20.0.9".parse().unwrap()),
                Some("fd00:20::9".parse().unwrap())
            )
        );
        let err =
            |ip: Option<&str>, ip6: Option<&str>, alias: &str, ifname: Option<&str>, ipv6: bool| {
                let aliases = if alias.is_empty() {
                    vec![]
                } else {
                    vec![alias.to_owned()]
                };
                Attachment::new(&net(ipv6), ip, ip6, &aliases, ifname).unwrap_err()
            };
        assert_eq!(
            err(Some("fd00:20::9"), None, "", None, true),
            RequestError::BadIpv4("fd00:20::9".into())
        );
        assert_eq!(
            err(None, Some("172.20.0.9"), "", None, true),
            RequestError::BadIpv6("172.20.0.9".into())
        );
        assert_eq!(
            err(Some("10.0.0.9"), None, "", None, true).to_string(),
            "Invalid address 10.0.0.9: It does not belong to any of this network's subnets"
        );
        assert_eq!(
            err(None, Some("fd00:20::9"), "", None, false),
            RequestError::OutsideSubnets("fd00:20::9".into())
        );
        assert_eq!(
            err(None, None, "under_score", None, false),
            RequestError::BadAlias("under_score".into())
        );
        assert_eq!(
            err(None, None, "", Some("much-too-long-name"), false),
            RequestError::BadInterface("much-too-long-name".into())
        );
    }

    #[test]
    fn network_status_is_read_leniently() {
        let v = r#"[{"name":"web","interface":"net1","ips":["172.20.0.5","fd00:20::5"],
                     "mac":"02:42:ac:14:00:05","gateway":["172.20.0.1","fd00:20::1"]},
                    {"name":"old","gateway":"10.0.0.1"}, {"bogus":1}]"#;
        let entries = status_entries(Some(v));
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[0].ips, ["172.20.0.5", "fd00:20::5"]);
        assert_eq!(entries[0].gateway, ["172.20.0.1", "fd00:20::1"]);
        assert_eq!(entries[1].gateway, ["10.0.0.1"]);
        assert!(status_entries(Some("not json")).is_empty());
        assert!(status_entries(None).is_empty());
    }
}
