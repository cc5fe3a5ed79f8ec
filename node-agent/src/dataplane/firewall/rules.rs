//! The pure rule set: which isolation, internal, inter-pod, masquerade and anycast-gateway
//! rules a set of realized networks needs, each with its owner-tagged, content-hashed comment.
//! No I/O; the executor compares these identities with the kernel's and the transaction
//! module turns the rules into one nftables batch.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv6Addr};

use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::dataplane::{Desired, format_mac};

/// One rule of a desired rule set.
#[derive(Clone, Debug, PartialEq)]
pub struct Rule {
    /// `inet` or `bridge`.
    pub family: &'static str,
    /// Chain name.
    pub chain: &'static str,
    /// Owner-tagged, content-hashed comment.
    pub comment: String,
    /// Expression list (nftables JSON).
    pub expr: Vec<Value>,
}

/// (family, chain, comment) of a rule: the identity compared against the kernel.
pub type RuleKey = (String, String, String);

fn meta(key: &str) -> Value {
    json!({"meta": {"key": key}})
}

fn payload(protocol: &str, field: &str) -> Value {
    json!({"payload": {"protocol": protocol, "field": field}})
}

fn eq(left: Value, right: Value) -> Value {
    json!({"match": {"op": "==", "left": left, "right": right}})
}

fn ne(left: Value, right: Value) -> Value {
    json!({"match": {"op": "!=", "left": left, "right": right}})
}

fn prefix(net: &ipnet::IpNet) -> Value {
    json!({"prefix": {"addr": net.network().to_string(), "len": net.prefix_len()}})
}

fn drop() -> Value {
    json!({"drop": null})
}

/// The solicited-node multicast group of an IPv6 address (RFC 4291 §2.7.1).
fn solicited_node(ip: Ipv6Addr) -> Ipv6Addr {
    let o = ip.octets();
    Ipv6Addr::new(
        0xff02,
        0,
        0,
        0,
        0,
        1,
        0xff00 | u16::from(o[13]),
        (u16::from(o[14]) << 8) | u16::from(o[15]),
    )
}

fn owner_tag(network: &str) -> String {
    // Comments are limited to 128 bytes; network names to 253. The hash after the purpose
    // keeps truncated tags distinct.
    if network.len() <= 80 {
        network.to_owned()
    } else {
        let cut = (0..=80)
            .rev()
            .find(|i| network.is_char_boundary(*i))
            .unwrap_or(0);
        format!("{}~", &network[..cut])
    }
}

fn rule(
    family: &'static str,
    chain: &'static str,
    network: &str,
    purpose: &str,
    expr: Vec<Value>,
) -> Rule {
    let mut h = Sha256::new();
    h.update(family.as_bytes());
    h.update(chain.as_bytes());
    h.update(Value::Array(expr.clone()).to_string().as_bytes());
    let digest = h.finalize();
    let hash: String = digest[..4].iter().map(|b| format!("{b:02x}")).collect();
    Rule {
        family,
        chain,
        comment: format!("bridgenet:{} {purpose} {hash}", owner_tag(network)),
        expr,
    }
}

/// The rules for a set of networks (all networks realized on this node).
pub fn rules(networks: &[Desired]) -> Vec<Rule> {
    let mut out = Vec::new();
    let mut sorted: Vec<&Desired> = networks.iter().collect();
    sorted.sort_by(|a, b| a.network.cmp(&b.network));
    for n in &sorted {
        let b = json!(n.bridge);
        let others: Vec<&str> = sorted
            .iter()
            .filter(|o| o.bridge != n.bridge)
            .map(|o| o.bridge.as_str())
            .collect();
        let name = n.network.as_str();
        if !others.is_empty() {
            let set = if others.len() == 1 {
                json!(others[0])
            } else {
                json!({"set": others})
            };
            out.push(rule(
                "inet",
                "forward",
                name,
                "isolation",
                vec![
                    eq(meta("iifname"), b.clone()),
                    eq(meta("oifname"), set),
                    drop(),
                ],
            ));
        }
        if n.internal {
            out.push(rule(
                "inet",
                "forward",
                name,
                "internal-out",
                vec![
                    eq(meta("iifname"), b.clone()),
                    ne(meta("oifname"), b.clone()),
                    drop(),
                ],
            ));
            out.push(rule(
                "inet",
                "forward",
                name,
                "internal-in",
                vec![
                    ne(meta("iifname"), b.clone()),
                    eq(meta("oifname"), b.clone()),
                    drop(),
                ],
            ));
            out.push(rule(
                "inet",
                "input",
                name,
                "internal-host-v4",
                vec![
                    eq(meta("iifname"), b.clone()),
                    ne(payload("ip", "daddr"), json!(n.gateway4.addr().to_string())),
                    drop(),
                ],
            ));
            let mut v6 = vec![
                eq(meta("iifname"), b.clone()),
                eq(meta("nfproto"), json!("ipv6")),
            ];
            if let Some((_, gw6)) = n.v6 {
                v6.push(ne(payload("ip6", "daddr"), json!(gw6.addr().to_string())));
            }
            v6.push(ne(
                payload("ip6", "daddr"),
                json!({"prefix": {"addr": "fe80::", "len": 10}}),
            ));
            v6.push(ne(
                payload("ip6", "daddr"),
                json!({"prefix": {"addr": "ff00::", "len": 8}}),
            ));
            v6.push(drop());
            out.push(rule("inet", "input", name, "internal-host-v6", v6));
        }
        if !n.inter_pod_traffic {
            out.push(rule(
                "inet",
                "forward",
                name,
                "no-inter-pod",
                vec![
                    eq(meta("iifname"), b.clone()),
                    eq(meta("oifname"), b.clone()),
                    drop(),
                ],
            ));
            out.push(rule(
                "bridge",
                "forward",
                name,
                "no-inter-pod-v4",
                vec![
                    eq(payload("ip", "saddr"), prefix(&n.subnet4)),
                    eq(payload("ip", "daddr"), prefix(&n.subnet4)),
                    drop(),
                ],
            ));
            if let Some((s6, _)) = n.v6 {
                out.push(rule(
                    "bridge",
                    "forward",
                    name,
                    "no-inter-pod-v6",
                    vec![
                        eq(payload("ip6", "saddr"), prefix(&s6)),
                        eq(payload("ip6", "daddr"), prefix(&s6)),
                        drop(),
                    ],
                ));
            }
        }
        if n.masquerade && !n.internal {
            out.push(rule(
                "inet",
                "postrouting",
                name,
                "masquerade-v4",
                vec![
                    eq(payload("ip", "saddr"), prefix(&n.subnet4)),
                    ne(payload("ip", "daddr"), prefix(&n.subnet4)),
                    json!({"masquerade": null}),
                ],
            ));
            if let Some((s6, _)) = n.v6 {
                out.push(rule(
                    "inet",
                    "postrouting",
                    name,
                    "masquerade-v6",
                    vec![
                        eq(payload("ip6", "saddr"), prefix(&s6)),
                        ne(payload("ip6", "daddr"), prefix(&s6)),
                        json!({"masquerade": null}),
                    ],
                ));
            }
        }
        // The anycast gateway's fence on the overlay port.
        let vx = json!(n.vxlan);
        let mac = json!(format_mac(&n.mac));
        let gw4 = json!(n.gateway4.addr().to_string());
        for (chain, dir) in [
            ("forward", "oifname"),
            ("forward", "iifname"),
            ("input", "iifname"),
        ] {
            out.push(rule(
                "bridge",
                chain,
                name,
                &format!("gateway-arp-{dir}"),
                vec![
                    eq(meta(dir), vx.clone()),
                    eq(payload("arp", "daddr ip"), gw4.clone()),
                    drop(),
                ],
            ));
            if let Some((_, gw6)) = n.v6
                && let IpAddr::V6(ip) = gw6.addr()
            {
                out.push(rule(
                    "bridge",
                    chain,
                    name,
                    &format!("gateway-nd-{dir}"),
                    vec![
                        eq(meta(dir), vx.clone()),
                        eq(
                            payload("ip6", "daddr"),
                            json!(solicited_node(ip).to_string()),
                        ),
                        eq(payload("icmpv6", "type"), json!("nd-neighbor-solicit")),
                        drop(),
                    ],
                ));
            }
        }
        out.push(rule(
            "bridge",
            "output",
            name,
            "gateway-mac-out",
            vec![
                eq(meta("oifname"), vx.clone()),
                eq(payload("ether", "saddr"), mac.clone()),
                drop(),
            ],
        ));
        out.push(rule(
            "bridge",
            "input",
            name,
            "gateway-mac-in",
            vec![
                eq(meta("iifname"), vx.clone()),
                eq(payload("ether", "saddr"), mac),
                drop(),
            ],
        ));
    }
    out
}

/// The identities of `rules`.
pub fn keys(rules: &[Rule]) -> BTreeSet<RuleKey> {
    rules
        .iter()
        .map(|r| (r.family.to_owned(), r.chain.to_owned(), r.comment.clone()))
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
pub(super) mod tests {
    use super::*;
    use crate::dataplane::tests::{node, spec};
    use bridgenet_crds::v1alpha1::NodeBridgeIpv6;

    pub(in crate::dataplane::firewall) fn nets() -> Vec<Desired> {
        let a = Desired::from_spec(
            &spec("net-a", "br-a", "172.20.0.0/16", "172.20.0.1", 1),
            &node(),
        )
        .unwrap();
        let mut sb = spec("net-b", "br-b", "172.21.0.0/16", "172.21.0.1", 2);
        sb.internal = true;
        sb.inter_pod_traffic = false;
        sb.ipv6 = Some(NodeBridgeIpv6 {
            subnet: "fd00:21::/64".into(),
            gateway: "fd00:21::1".into(),
        });
        let b = Desired::from_spec(&sb, &node()).unwrap();
        vec![a, b]
    }

    fn find<'a>(rules: &'a [Rule], network: &str, purpose: &str) -> Option<&'a Rule> {
        rules.iter().find(|r| {
            r.comment
                .starts_with(&format!("bridgenet:{network} {purpose} "))
        })
    }

    #[test]
    fn isolation_both_ways_and_flags() {
        let r = rules(&nets());
        let a = find(&r, "net-a", "isolation").unwrap();
        let b = find(&r, "net-b", "isolation").unwrap();
        assert!(a.expr[0].to_string().contains("br-a") && a.expr[1].to_string().contains("br-b"));
        assert!(b.expr[0].to_string().contains("br-b") && b.expr[1].to_string().contains("br-a"));
        assert!(find(&r, "net-a", "masquerade-v4").is_some());
        assert!(
            find(&r, "net-b", "masquerade-v4").is_none(),
            "internal networks never masquerade"
        );
        assert!(
            find(&r, "net-b", "internal-out").is_some()
                && find(&r, "net-b", "internal-in").is_some()
        );
        assert!(find(&r, "net-a", "internal-out").is_none());
        assert!(
            find(&r, "net-b", "no-inter-pod-v4").is_some()
                && find(&r, "net-b", "no-inter-pod-v6").is_some()
        );
        assert!(find(&r, "net-a", "no-inter-pod-v4").is_none());
        assert!(
            find(&r, "net-b", "gateway-nd-oifname").unwrap().expr[1]
                .to_string()
                .contains("ff02::1:ff00:1")
        );
        // A lone network has nothing to be isolated from.
        let lone = rules(&nets()[..1]);
        assert!(find(&lone, "net-a", "isolation").is_none());
    }

    #[test]
    fn comments_are_unique_and_content_addressed() {
        let r = rules(&nets());
        assert_eq!(keys(&r).len(), r.len());
        let mut changed = nets();
        changed[0].subnet4 = "172.30.0.0/16".parse().unwrap();
        let r2 = rules(&changed);
        let m1 = find(&r, "net-a", "masquerade-v4").unwrap();
        let m2 = find(&r2, "net-a", "masquerade-v4").unwrap();
        assert_ne!(m1.comment, m2.comment, "a changed rule has a new identity");
        assert!(r.iter().all(|x| x.comment.len() <= 128));
        let long = "n".repeat(253);
        assert!(owner_tag(&long).len() <= 81);
    }

    #[test]
    fn solicited_node_group() {
        assert_eq!(
            solicited_node("fd00:20::1".parse().unwrap()).to_string(),
            "ff02::1:ff00:1"
        );
        assert_eq!(
            solicited_node("fd00::12:3456".parse().unwrap()).to_string(),
            "ff02::1:ff12:3456"
        );
    }
}
