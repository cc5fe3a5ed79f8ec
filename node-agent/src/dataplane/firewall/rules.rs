//! The pure rule set: which isolation, internal, inter-pod, masquerade and anycast-gateway
//! rules a set of realized networks needs, each with its owner-tagged, content-hashed comment.
//! No I/O; the executor compares these identities with the kernel's and the transaction
//! module turns the rules into one nftables batch.
//!
//! Expressions are built from the `nftables` crate's typed schema, so a misspelt key, operator
//! or verdict does not compile instead of being refused by `nft` at run time.

use std::borrow::Cow;
use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv6Addr};

use bridgenet_crds::Mac;
use nftables::expr::{
    Expression, Meta, MetaKey, NamedExpression, Payload, PayloadField, Prefix, SetItem,
};
use nftables::stmt::{Match, Operator, Statement};
use nftables::types::{NfFamily, NfHook};
use sha2::{Digest, Sha256};

use super::FirewallError;
use crate::dataplane::Desired;

/// The address families bridgenet owns a table in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    /// `inet`: routed traffic, IPv4 and IPv6.
    Inet,
    /// `bridge`: frames switched by the bridges.
    Bridge,
}

impl Family {
    /// Both families, in the order the transaction writes their tables.
    pub const ALL: [Family; 2] = [Family::Inet, Family::Bridge];

    /// The family as `nft` spells it (in listings and in rule identities).
    pub const fn name(self) -> &'static str {
        match self {
            Family::Inet => "inet",
            Family::Bridge => "bridge",
        }
    }

    /// The family in the `nftables` crate's schema.
    pub const fn schema(self) -> NfFamily {
        match self {
            Family::Inet => NfFamily::INet,
            Family::Bridge => NfFamily::Bridge,
        }
    }
}

/// A bridgenet chain. Every one is a base chain named after the hook it sits on, so the hook
/// is its name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hook {
    /// Routed (inet) or bridged (bridge) traffic passing through the node.
    Forward,
    /// Traffic addressed to the node itself.
    Input,
    /// Frames the node itself sends through a bridge (used in the bridge family only).
    Output,
    /// Routed traffic leaving the node, after routing: where masquerade happens.
    Postrouting,
}

impl Hook {
    /// The chain's (and hook's) name as `nft` spells it.
    pub const fn name(self) -> &'static str {
        match self {
            Hook::Forward => "forward",
            Hook::Input => "input",
            Hook::Output => "output",
            Hook::Postrouting => "postrouting",
        }
    }

    /// The hook in the `nftables` crate's schema.
    pub const fn schema(self) -> NfHook {
        match self {
            Hook::Forward => NfHook::Forward,
            Hook::Input => NfHook::Input,
            Hook::Output => NfHook::Output,
            Hook::Postrouting => NfHook::Postrouting,
        }
    }
}

/// One rule of a desired rule set.
#[derive(Clone, Debug, PartialEq)]
pub struct Rule {
    /// Table the rule goes in.
    pub family: Family,
    /// Chain the rule goes in.
    pub chain: Hook,
    /// `bridgenet:<network> <purpose> <hash>`: owner, what the rule is for, and a hash of
    /// family, chain and expression, so a changed rule gets a new identity.
    pub comment: String,
    /// The rule's statements: matches, then a verdict.
    pub expr: Vec<Statement<'static>>,
}

/// (family, chain, comment) of a rule: the identity compared against the kernel.
pub type RuleKey = (String, String, String);

fn meta(key: MetaKey) -> Expression<'static> {
    Expression::Named(NamedExpression::Meta(Meta { key }))
}

fn payload(protocol: &'static str, field: &'static str) -> Expression<'static> {
    Expression::Named(NamedExpression::Payload(Payload::PayloadField(
        PayloadField {
            protocol: Cow::Borrowed(protocol),
            field: Cow::Borrowed(field),
        },
    )))
}

/// A string immediate: an interface name, an address, a symbolic constant.
fn text(value: impl Into<String>) -> Expression<'static> {
    Expression::String(Cow::Owned(value.into()))
}

fn matches(
    op: Operator,
    left: Expression<'static>,
    right: Expression<'static>,
) -> Statement<'static> {
    Statement::Match(Match { left, right, op })
}

fn eq(left: Expression<'static>, right: Expression<'static>) -> Statement<'static> {
    matches(Operator::EQ, left, right)
}

fn ne(left: Expression<'static>, right: Expression<'static>) -> Statement<'static> {
    matches(Operator::NEQ, left, right)
}

fn prefix(addr: IpAddr, len: u8) -> Expression<'static> {
    Expression::Named(NamedExpression::Prefix(Prefix {
        addr: Box::new(text(addr.to_string())),
        len: u32::from(len),
    }))
}

fn subnet(net: &ipnet::IpNet) -> Expression<'static> {
    prefix(net.network(), net.prefix_len())
}

fn drop() -> Statement<'static> {
    Statement::Drop(None)
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

/// A rule before its comment: where it goes, what it is for, what it matches.
struct Draft {
    family: Family,
    chain: Hook,
    purpose: String,
    expr: Vec<Statement<'static>>,
}

fn draft(
    family: Family,
    chain: Hook,
    purpose: impl Into<String>,
    expr: Vec<Statement<'static>>,
) -> Draft {
    Draft {
        family,
        chain,
        purpose: purpose.into(),
        expr,
    }
}

/// Gives a draft of `network` its comment.
fn finish(network: &str, draft: Draft) -> Result<Rule, FirewallError> {
    let Draft {
        family,
        chain,
        purpose,
        expr,
    } = draft;
    // The hash covers the expression's JSON with its keys sorted (what `serde_json::Value`
    // prints), as the untyped builder hashed it: the same rule keeps the same comment across
    // agent versions, so an upgrade does not rewrite unchanged tables.
    let json = serde_json::to_value(&expr).map_err(FirewallError::Schema)?;
    let mut h = Sha256::new();
    h.update(family.name().as_bytes());
    h.update(chain.name().as_bytes());
    h.update(json.to_string().as_bytes());
    let digest = h.finalize();
    let hash: String = digest[..4].iter().map(|b| format!("{b:02x}")).collect();
    Ok(Rule {
        family,
        chain,
        comment: format!("bridgenet:{} {purpose} {hash}", owner_tag(network)),
        expr,
    })
}

/// The rules for all networks realized on this node, in network-name order so the transaction
/// is the same whatever order the networks come in. Fails only on a serialization bug
/// ([`FirewallError::Schema`]).
pub fn rules(networks: &[Desired]) -> Result<Vec<Rule>, FirewallError> {
    let mut sorted: Vec<&Desired> = networks.iter().collect();
    sorted.sort_by(|a, b| a.network.cmp(&b.network));
    let mut out = Vec::new();
    for n in &sorted {
        let others: Vec<&str> = sorted
            .iter()
            .filter(|o| o.bridge != n.bridge)
            .map(|o| o.bridge.as_str())
            .collect();
        let drafts = isolation(n, &others)
            .into_iter()
            .chain(internal(n))
            .chain(no_inter_pod(n))
            .chain(masquerade(n))
            .chain(gateway_fence(n));
        for d in drafts {
            out.push(finish(&n.network, d)?);
        }
    }
    Ok(out)
}

/// Docker's isolation: nothing routed from this network's bridge to another bridgenet bridge.
/// The other direction is the other network's rule. A lone network has none.
fn isolation(n: &Desired, others: &[&str]) -> Option<Draft> {
    let set = match others {
        [] => return None,
        [one] => text(*one),
        _ => Expression::Named(NamedExpression::Set(
            others.iter().map(|o| SetItem::Element(text(*o))).collect(),
        )),
    };
    Some(draft(
        Family::Inet,
        Hook::Forward,
        "isolation",
        vec![
            eq(meta(MetaKey::Iifname), text(&n.bridge)),
            eq(meta(MetaKey::Oifname), set),
            drop(),
        ],
    ))
}

/// `internal`: nothing routed in or out, and of the node only the gateway (plus the IPv6
/// link-local and multicast ranges ND needs).
fn internal(n: &Desired) -> Vec<Draft> {
    if !n.internal {
        return Vec::new();
    }
    let mut v6 = vec![
        eq(meta(MetaKey::Iifname), text(&n.bridge)),
        eq(meta(MetaKey::Nfproto), text("ipv6")),
    ];
    if let Some((_, gw6)) = n.v6 {
        v6.push(ne(payload("ip6", "daddr"), text(gw6.addr().to_string())));
    }
    v6.push(ne(
        payload("ip6", "daddr"),
        prefix(Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0).into(), 10),
    ));
    v6.push(ne(
        payload("ip6", "daddr"),
        prefix(Ipv6Addr::new(0xff00, 0, 0, 0, 0, 0, 0, 0).into(), 8),
    ));
    v6.push(drop());
    vec![
        draft(
            Family::Inet,
            Hook::Forward,
            "internal-out",
            through(&n.bridge, Operator::EQ, Operator::NEQ),
        ),
        draft(
            Family::Inet,
            Hook::Forward,
            "internal-in",
            through(&n.bridge, Operator::NEQ, Operator::EQ),
        ),
        draft(
            Family::Inet,
            Hook::Input,
            "internal-host-v4",
            vec![
                eq(meta(MetaKey::Iifname), text(&n.bridge)),
                ne(payload("ip", "daddr"), text(n.gateway4.addr().to_string())),
                drop(),
            ],
        ),
        draft(Family::Inet, Hook::Input, "internal-host-v6", v6),
    ]
}

/// `interPodTraffic: false`: routed bridge-to-itself traffic (seen only with `br_netfilter`)
/// and, in the bridge family, IP packets with both ends in the subnet.
fn no_inter_pod(n: &Desired) -> Vec<Draft> {
    if n.inter_pod_traffic {
        return Vec::new();
    }
    let mut out = vec![draft(
        Family::Inet,
        Hook::Forward,
        "no-inter-pod",
        through(&n.bridge, Operator::EQ, Operator::EQ),
    )];
    for (version, protocol, net) in subnets(n) {
        out.push(draft(
            Family::Bridge,
            Hook::Forward,
            format!("no-inter-pod-{version}"),
            from_subnet(protocol, &net, Operator::EQ, drop()),
        ));
    }
    out
}

/// `masquerade` (never on an `internal` network): what leaves the subnet takes the node's
/// address.
fn masquerade(n: &Desired) -> Vec<Draft> {
    if !n.masquerade || n.internal {
        return Vec::new();
    }
    subnets(n)
        .map(|(version, protocol, net)| {
            draft(
                Family::Inet,
                Hook::Postrouting,
                format!("masquerade-{version}"),
                from_subnet(protocol, &net, Operator::NEQ, Statement::Masquerade(None)),
            )
        })
        .collect()
}

/// The network's subnets, IPv4 first: (`v4`/`v6`, payload protocol, subnet).
fn subnets(n: &Desired) -> impl Iterator<Item = (&'static str, &'static str, ipnet::IpNet)> {
    std::iter::once(("v4", "ip", n.subnet4)).chain(n.v6.map(|(s6, _)| ("v6", "ip6", s6)))
}

/// `iifname <iif> bridge oifname <oif> bridge drop`: with `==`/`!=`, traffic leaving,
/// entering or staying on the bridge.
fn through(bridge: &str, iif: Operator, oif: Operator) -> Vec<Statement<'static>> {
    vec![
        matches(iif, meta(MetaKey::Iifname), text(bridge)),
        matches(oif, meta(MetaKey::Oifname), text(bridge)),
        drop(),
    ]
}

/// `<protocol> saddr <net> <protocol> daddr <daddr> <net> <verdict>`: with `==`/`!=`, traffic
/// staying in or leaving the subnet.
fn from_subnet(
    protocol: &'static str,
    net: &ipnet::IpNet,
    daddr: Operator,
    verdict: Statement<'static>,
) -> Vec<Statement<'static>> {
    vec![
        eq(payload(protocol, "saddr"), subnet(net)),
        matches(daddr, payload(protocol, "daddr"), subnet(net)),
        verdict,
    ]
}

/// The anycast gateway's fence on the overlay port: its ARP and neighbour solicitations, and
/// every frame from its MAC, stay off the VXLAN port.
fn gateway_fence(n: &Desired) -> Vec<Draft> {
    let vx = || text(&n.vxlan);
    let mut out = Vec::new();
    // `dir` names the purpose as the untyped builder did: it is part of the comment.
    for (chain, key, dir) in [
        (Hook::Forward, MetaKey::Oifname, "oifname"),
        (Hook::Forward, MetaKey::Iifname, "iifname"),
        (Hook::Input, MetaKey::Iifname, "iifname"),
    ] {
        out.push(draft(
            Family::Bridge,
            chain,
            format!("gateway-arp-{dir}"),
            vec![
                eq(meta(key), vx()),
                eq(
                    payload("arp", "daddr ip"),
                    text(n.gateway4.addr().to_string()),
                ),
                drop(),
            ],
        ));
        if let Some((_, gw6)) = n.v6
            && let IpAddr::V6(ip) = gw6.addr()
        {
            out.push(draft(
                Family::Bridge,
                chain,
                format!("gateway-nd-{dir}"),
                vec![
                    eq(meta(key), vx()),
                    eq(
                        payload("ip6", "daddr"),
                        text(solicited_node(ip).to_string()),
                    ),
                    eq(payload("icmpv6", "type"), text("nd-neighbor-solicit")),
                    drop(),
                ],
            ));
        }
    }
    for (chain, key, purpose) in [
        (Hook::Output, MetaKey::Oifname, "gateway-mac-out"),
        (Hook::Input, MetaKey::Iifname, "gateway-mac-in"),
    ] {
        out.push(draft(
            Family::Bridge,
            chain,
            purpose,
            vec![
                eq(meta(key), vx()),
                eq(payload("ether", "saddr"), text(Mac::new(n.mac).to_string())),
                drop(),
            ],
        ));
    }
    out
}

/// The identities of `rules`, to compare with [`observed_keys`](super::observed_keys).
pub fn keys(rules: &[Rule]) -> BTreeSet<RuleKey> {
    rules
        .iter()
        .map(|r| {
            (
                r.family.name().to_owned(),
                r.chain.name().to_owned(),
                r.comment.clone(),
            )
        })
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

    /// A statement as the JSON `nft` receives.
    fn json(statement: &Statement) -> String {
        serde_json::to_string(statement).unwrap()
    }

    fn find<'a>(rules: &'a [Rule], network: &str, purpose: &str) -> Option<&'a Rule> {
        rules.iter().find(|r| {
            r.comment
                .starts_with(&format!("bridgenet:{network} {purpose} "))
        })
    }

    #[test]
    fn isolation_both_ways_and_flags() {
        let r = rules(&nets()).unwrap();
        let a = find(&r, "net-a", "isolation").unwrap();
        let b = find(&r, "net-b", "isolation").unwrap();
        assert!(json(&a.expr[0]).contains("br-a") && json(&a.expr[1]).contains("br-b"));
        assert!(json(&b.expr[0]).contains("br-b") && json(&b.expr[1]).contains("br-a"));
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
            json(&find(&r, "net-b", "gateway-nd-oifname").unwrap().expr[1])
                .contains("ff02::1:ff00:1")
        );
        // A lone network has nothing to be isolated from.
        let lone = rules(&nets()[..1]).unwrap();
        assert!(find(&lone, "net-a", "isolation").is_none());
    }

    #[test]
    fn comments_are_unique_and_content_addressed() {
        let r = rules(&nets()).unwrap();
        assert_eq!(keys(&r).len(), r.len());
        let mut changed = nets();
        changed[0].subnet4 = "172.30.0.0/16".parse().unwrap();
        let r2 = rules(&changed).unwrap();
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
