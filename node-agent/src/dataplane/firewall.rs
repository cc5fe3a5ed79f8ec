//! nftables: isolation between networks, masquerade, internal mode, inter-pod traffic, and
//! the anycast gateway's fence on the overlay. Two tables owned by bridgenet, nothing else is
//! touched:
//!
//! - `inet bridgenet` (routed traffic, both families):
//!   - `forward`: drop between two bridgenet bridges in either direction (Docker's isolation:
//!     each network has a rule `iifname <its bridge> oifname {<every other bridge>} drop`);
//!     `internal` networks drop everything entering or leaving their bridge through the
//!     gateway; `interPodTraffic: false` drops `iifname B oifname B` (which is what bridged
//!     traffic looks like here *if* `br_netfilter` is loaded on the node).
//!   - `input`: `internal` networks reach nothing on the node but the gateway address
//!     (plus IPv6 link-local/multicast, which ND needs).
//!   - `postrouting` (nat): masquerade what leaves the subnet, when `masquerade` and not
//!     `internal`.
//! - `bridge bridgenet` (frames switched by the bridges):
//!   - `forward`: `interPodTraffic: false` drops IP packets with source and destination both in
//!     the subnet. Bridged frames never reach the IP hooks unless `br_netfilter` is loaded,
//!     and loading it would change every bridge on the node (Docker's included), so the
//!     bridge family is the reliable place. The kernel here lacks `meta ibrname`, so the match
//!     is on the subnet, which is unique to the network (subnets never overlap).
//!   - anycast gateway: the gateway has the same IP and MAC on every node, so its ARP/ND
//!     must stay on the node: ARP for the gateway IP and IPv6 neighbour solicitations for the
//!     gateway's solicited-node group are dropped on the way into and out of the VXLAN port,
//!     and so is every frame with the gateway MAC as source (`output`, `input`). Otherwise a
//!     pod could learn the gateway's MAC from a remote node (harmless, same MAC) and remote
//!     bridges would see frames from their own MAC arriving on a port ("own address as
//!     source" drops and log noise).
//!
//! Every rule carries a comment `bridgenet:<network> <purpose> <hash>`, the hash covering the
//! rule's chain and expression. The kernel's rule set matches the desired one exactly when the
//! sets of (table, chain, comment) match, so a no-change resync costs two `nft -j list table`
//! reads and no write, also right after an agent restart.
//!
//! Changes are applied as ONE `nft -j -f -` transaction that adds, deletes and re-adds each
//! table with all its chains and rules: the kernel commits it atomically, so packets see either
//! the old or the new rule set, never an empty table — replacing is safe for running pods.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv6Addr};

use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::{Desired, format_mac};

/// Name of both bridgenet tables.
pub const TABLE: &str = "bridgenet";

/// A failed nftables call.
#[derive(Debug, thiserror::Error)]
pub enum FirewallError {
    /// `nft` failed or could not run.
    #[error("nftables: {op}: {source}")]
    Nft {
        /// What was being done.
        op: &'static str,
        /// The error from the nftables crate.
        source: nftables::helper::NftablesError,
    },
    /// Our JSON does not fit the nftables crate's schema (a bug).
    #[error("nftables: building the rule set: {0}")]
    Schema(#[from] serde_json::Error),
}

impl FirewallError {
    /// Condition reason.
    pub fn reason(&self) -> &'static str {
        "FirewallFailed"
    }
}

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

/// The chains of each table: (family, name, type, hook, priority).
const CHAINS: &[(&str, &str, &str, &str, i32)] = &[
    ("inet", "forward", "filter", "forward", 0),
    ("inet", "input", "filter", "input", 0),
    ("inet", "postrouting", "nat", "postrouting", 100),
    ("bridge", "forward", "filter", "forward", 0),
    ("bridge", "input", "filter", "input", 0),
    ("bridge", "output", "filter", "output", 0),
];

/// (family, chain, comment) of a rule: the identity compared against the kernel.
pub type RuleKey = (String, String, String);

/// Rule identities of the `inet` and `bridge` tables; `None` for a table that is absent.
pub type ObservedTables = (Option<BTreeSet<RuleKey>>, Option<BTreeSet<RuleKey>>);

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

/// The one transaction that replaces both tables with `rules` (or removes them when there is
/// no network left).
pub fn transaction(rules: &[Rule], any_network: bool) -> Value {
    let mut cmds = Vec::new();
    for family in ["inet", "bridge"] {
        let table = json!({"family": family, "name": TABLE});
        // `add` first so that `delete` cannot fail on a missing table; all in one commit.
        cmds.push(json!({"add": {"table": table.clone()}}));
        cmds.push(json!({"delete": {"table": table.clone()}}));
        if !any_network {
            continue;
        }
        cmds.push(json!({"add": {"table": table}}));
        for (fam, name, ty, hook, prio) in CHAINS.iter().filter(|c| c.0 == family) {
            cmds.push(json!({"add": {"chain": {
                "family": fam, "table": TABLE, "name": name,
                "type": ty, "hook": hook, "prio": prio, "policy": "accept"
            }}}));
        }
        for r in rules.iter().filter(|r| r.family == family) {
            cmds.push(json!({"add": {"rule": {
                "family": r.family, "table": TABLE, "chain": r.chain,
                "comment": r.comment, "expr": r.expr
            }}}));
        }
    }
    json!({"nftables": cmds})
}

/// Rule identities found in `nft -j list table` output.
pub fn observed_keys(listing: &Value) -> BTreeSet<RuleKey> {
    let mut out = BTreeSet::new();
    let Some(items) = listing.get("nftables").and_then(Value::as_array) else {
        return out;
    };
    for item in items {
        let Some(r) = item.get("rule") else { continue };
        let field = |k: &str| {
            r.get(k)
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned()
        };
        out.insert((field("family"), field("chain"), field("comment")));
    }
    out
}

/// Runs nftables for the data plane, in the calling thread's network namespace.
#[derive(Clone, Debug, Default)]
pub struct Firewall {
    /// `nft` binary to run; `None` for the one on `PATH`.
    pub nft: Option<std::path::PathBuf>,
}

/// What [`Firewall::reconcile`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FirewallOutcome {
    /// The kernel already had exactly the desired rules.
    Unchanged,
    /// The tables were replaced in one transaction.
    Replaced,
}

impl Firewall {
    fn program(&self) -> Option<&std::ffi::OsStr> {
        self.nft.as_deref().map(std::path::Path::as_os_str)
    }

    /// Lists one bridgenet table; `None` when it does not exist.
    fn list(&self, family: &str) -> Result<Option<Value>, FirewallError> {
        let args = ["list", "table", family, TABLE];
        match nftables::helper::get_current_ruleset_raw(self.program(), args.iter().copied()) {
            Ok(out) => Ok(Some(serde_json::from_str(&out)?)),
            Err(nftables::helper::NftablesError::NftFailed { stderr, .. })
                if stderr.contains("No such file or directory") =>
            {
                Ok(None)
            }
            Err(source) => Err(FirewallError::Nft {
                op: "listing the bridgenet tables",
                source,
            }),
        }
    }

    /// Rule identities currently in the kernel; `None` per table that is absent.
    ///
    /// The two `nft` runs go in parallel: each costs a process start (~2.5 ms here), which is
    /// most of a no-change check. The helper thread inherits the caller's network namespace.
    pub fn observe(&self) -> Result<ObservedTables, FirewallError> {
        let (inet, bridge) = std::thread::scope(|scope| {
            let bridge = scope.spawn(|| self.list("bridge"));
            let inet = self.list("inet");
            (inet, bridge.join())
        });
        let bridge = bridge.unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        Ok((
            inet?.map(|v| observed_keys(&v)),
            bridge?.map(|v| observed_keys(&v)),
        ))
    }

    /// Makes the bridgenet tables hold exactly the rules of `networks`, writing only when they
    /// differ.
    pub fn reconcile(&self, networks: &[Desired]) -> Result<FirewallOutcome, FirewallError> {
        let wanted = rules(networks);
        let wanted_keys = keys(&wanted);
        let (inet, bridge) = self.observe()?;
        let matches = if networks.is_empty() {
            inet.is_none() && bridge.is_none()
        } else {
            match (inet, bridge) {
                (Some(i), Some(b)) => i.union(&b).cloned().collect::<BTreeSet<_>>() == wanted_keys,
                _ => false,
            }
        };
        if matches {
            return Ok(FirewallOutcome::Unchanged);
        }
        self.replace(&wanted, !networks.is_empty())?;
        tracing::info!(
            networks = networks.len(),
            rules = wanted.len(),
            "nftables rules replaced"
        );
        Ok(FirewallOutcome::Replaced)
    }

    /// Applies the replacing transaction unconditionally.
    pub fn replace(&self, rules: &[Rule], any_network: bool) -> Result<(), FirewallError> {
        let batch: nftables::schema::Nftables =
            serde_json::from_value(transaction(rules, any_network))?;
        nftables::helper::apply_ruleset_with_args(
            &batch,
            self.program(),
            nftables::helper::DEFAULT_ARGS,
        )
        .map_err(|source| FirewallError::Nft {
            op: "applying the bridgenet tables",
            source,
        })
    }

    /// Removes both bridgenet tables (nothing of bridgenet left in nftables).
    pub fn remove_all(&self) -> Result<(), FirewallError> {
        self.replace(&[], false)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::dataplane::tests::{node, spec};
    use bridgenet_crds::v1alpha1::NodeBridgeIpv6;

    fn nets() -> Vec<Desired> {
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
    fn transaction_fits_the_crate_schema_and_observation_roundtrips() {
        let r = rules(&nets());
        let tx = transaction(&r, true);
        let typed: nftables::schema::Nftables = serde_json::from_value(tx.clone()).unwrap();
        assert!(typed.objects.len() > r.len());
        // What `nft -j list table` prints has the same rule objects (plus handles).
        let listing = json!({"nftables": r.iter().map(|x| json!({"rule": {
            "family": x.family, "table": TABLE, "chain": x.chain, "handle": 3, "comment": x.comment, "expr": x.expr
        }})).collect::<Vec<_>>()});
        assert_eq!(observed_keys(&listing), keys(&r));
        let cleanup = transaction(&[], false);
        let cmds = cleanup["nftables"].as_array().unwrap();
        assert_eq!(cmds.len(), 4, "add+delete for each table only: {cleanup}");
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
