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
//! sets of (table, chain, comment) match, so a check costs two `nft -j list table` reads and no
//! write, also right after an agent restart. Once a check has found the tables right, later
//! checks first ask the kernel for the ruleset generation (one netlink round trip, see
//! [`ruleset_generation`]): while no one has committed any nftables change since, nothing needs
//! listing.
//!
//! Changes are applied as ONE `nft -j -f -` transaction that adds, deletes and re-adds each
//! table with all its chains and rules: the kernel commits it atomically, so packets see either
//! the old or the new rule set, never an empty table — replacing is safe for running pods.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::{Arc, Mutex, PoisonError};

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
    /// Asking the kernel for the nftables ruleset generation failed.
    #[error("nftables: reading the ruleset generation over netlink: {0}")]
    Generation(#[source] std::io::Error),
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
///
/// Clones share what the last check verified, so a clone moved into a blocking task still
/// benefits from its siblings' checks.
#[derive(Clone, Debug, Default)]
pub struct Firewall {
    /// `nft` binary to run; `None` for the one on `PATH`.
    pub nft: Option<std::path::PathBuf>,
    verified: Arc<Mutex<Option<Verified>>>,
}

/// A state of the kernel known to hold exactly some desired rules.
#[derive(Debug, PartialEq)]
struct Verified {
    /// The network namespace checked (device and inode of its nsfs file).
    netns: (u64, u64),
    /// The ruleset generation read *before* the listing that found the rules right: any
    /// commit after that read, including one racing the listing, has bumped it.
    generation: u32,
    /// The rules found.
    keys: BTreeSet<RuleKey>,
}

const NETLINK_HEADER_LEN: usize = 16;
/// `struct nfgenmsg`: family, version, resource id.
const NFGENMSG_LEN: usize = 4;
const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFT_MSG_NEWGEN: u16 = 15;
const NFT_MSG_GETGEN: u16 = 16;
const NFTA_GEN_ID: u16 = 1;
const NLM_F_REQUEST: u16 = 1;
const NLMSG_ERROR: u16 = 2;
/// Attribute type bits (without the nested / byte-order flags).
const NLA_TYPE_MASK: u16 = 0x3fff;

/// The nftables ruleset generation of the calling thread's network namespace.
///
/// The kernel bumps it on every committed nftables transaction, whoever commits (kube-proxy,
/// Docker, a user's `nft`), and it never goes back; an unchanged generation means no table,
/// ours included, has changed. One `NFT_MSG_GETGEN` request on a fresh netlink socket: the
/// netlink crates at hand speak rtnetlink, not nf_tables, and this one message is all we need.
pub fn ruleset_generation() -> Result<u32, FirewallError> {
    use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_NETFILTER};
    let io = FirewallError::Generation;
    let mut socket = Socket::new(NETLINK_NETFILTER).map_err(io)?;
    socket.bind_auto().map_err(io)?;
    socket.connect(&SocketAddr::new(0, 0)).map_err(io)?;
    let mut request = Vec::with_capacity(NETLINK_HEADER_LEN + NFGENMSG_LEN);
    request.extend(((NETLINK_HEADER_LEN + NFGENMSG_LEN) as u32).to_ne_bytes());
    request.extend(((NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_GETGEN).to_ne_bytes());
    request.extend(NLM_F_REQUEST.to_ne_bytes());
    request.extend(1u32.to_ne_bytes()); // sequence number
    request.extend(0u32.to_ne_bytes()); // port id: the kernel's
    request.extend([0, 0, 0, 0]); // AF_UNSPEC, NFNETLINK_V0, resource id 0
    socket.send(&request, 0).map_err(io)?;
    let mut reply = Vec::with_capacity(4096);
    socket.recv(&mut reply, 0).map_err(io)?;
    parse_generation(&reply).map_err(io)
}

fn bad_reply(what: &str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_owned())
}

fn ne_u16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn ne_u32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// The generation id in a reply to `NFT_MSG_GETGEN` (or the errno the kernel answered with).
fn parse_generation(reply: &[u8]) -> Result<u32, std::io::Error> {
    let len = ne_u32(reply, 0).ok_or_else(|| bad_reply("short netlink reply"))? as usize;
    let kind = ne_u16(reply, 4).ok_or_else(|| bad_reply("short netlink reply"))?;
    let message = reply
        .get(..len)
        .filter(|m| m.len() >= NETLINK_HEADER_LEN)
        .ok_or_else(|| bad_reply("truncated netlink reply"))?;
    if kind == NLMSG_ERROR {
        let code = ne_u32(message, NETLINK_HEADER_LEN)
            .ok_or_else(|| bad_reply("truncated netlink error"))? as i32;
        return Err(std::io::Error::from_raw_os_error(code.saturating_neg()));
    }
    if kind != (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWGEN {
        return Err(bad_reply("unexpected netlink reply to GETGEN"));
    }
    let mut at = NETLINK_HEADER_LEN + NFGENMSG_LEN;
    while let (Some(attr_len), Some(attr_type)) = (ne_u16(message, at), ne_u16(message, at + 2)) {
        let attr_len = usize::from(attr_len);
        if attr_len < 4 {
            break;
        }
        if attr_type & NLA_TYPE_MASK == NFTA_GEN_ID {
            let value = message
                .get(at + 4..at + 8)
                .ok_or_else(|| bad_reply("truncated generation id"))?;
            return Ok(u32::from_be_bytes([value[0], value[1], value[2], value[3]]));
        }
        at += attr_len.next_multiple_of(4);
    }
    Err(bad_reply("no generation id in the reply"))
}

/// Identity of the calling thread's network namespace.
fn current_netns() -> Result<(u64, u64), FirewallError> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata("/proc/thread-self/ns/net").map_err(FirewallError::Generation)?;
    Ok((meta.dev(), meta.ino()))
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
    /// A firewall that runs `nft` (`None`: the one on `PATH`).
    pub fn new(nft: Option<std::path::PathBuf>) -> Self {
        Firewall {
            nft,
            verified: Arc::default(),
        }
    }

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

    fn verified(&self) -> std::sync::MutexGuard<'_, Option<Verified>> {
        // Single-assignment critical sections: a poisoned lock holds consistent data.
        self.verified.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Makes the bridgenet tables hold exactly the rules of `networks`, writing only when they
    /// differ. Skips listing them when the kernel's ruleset generation shows nothing changed
    /// since a check that found exactly these rules.
    pub fn reconcile(&self, networks: &[Desired]) -> Result<FirewallOutcome, FirewallError> {
        let wanted = rules(networks);
        let wanted_keys = keys(&wanted);
        let netns = current_netns()?;
        let generation = ruleset_generation()?;
        {
            let mut verified = self.verified();
            match &*verified {
                Some(v)
                    if v.netns == netns && v.generation == generation && v.keys == wanted_keys =>
                {
                    return Ok(FirewallOutcome::Unchanged);
                }
                _ => *verified = None,
            }
        }
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
            *self.verified() = Some(Verified {
                netns,
                generation,
                keys: wanted_keys,
            });
            return Ok(FirewallOutcome::Unchanged);
        }
        // Not remembered as verified: the generation after our own commit could already
        // include someone else's. The next check lists once more and remembers that.
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
        crate::metrics::nftables_write();
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

    fn generation_reply(attrs: &[(u16, &[u8])]) -> Vec<u8> {
        let mut body = vec![0u8, 0, 0x12, 0x34]; // nfgenmsg
        for (kind, value) in attrs {
            body.extend((4 + value.len() as u16).to_ne_bytes());
            body.extend(kind.to_ne_bytes());
            body.extend(*value);
            body.resize(body.len().next_multiple_of(4), 0);
        }
        let mut msg = Vec::new();
        msg.extend(((NETLINK_HEADER_LEN + body.len()) as u32).to_ne_bytes());
        msg.extend(((NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWGEN).to_ne_bytes());
        msg.extend([0u8; 10]);
        msg.extend(body);
        msg
    }

    #[test]
    fn generation_reply_parsing() {
        // The id may follow other attributes (process id, name), and is big-endian.
        let reply =
            generation_reply(&[(2, &7u32.to_be_bytes()), (3, b"nft\0"), (1, &[0, 0, 1, 2])]);
        assert_eq!(parse_generation(&reply).unwrap(), 258);
        // The kernel's refusal carries its errno.
        let mut error = Vec::new();
        error.extend(36u32.to_ne_bytes());
        error.extend(NLMSG_ERROR.to_ne_bytes());
        error.extend([0u8; 10]);
        error.extend((-1i32).to_ne_bytes());
        error.extend([0u8; 16]);
        assert_eq!(
            parse_generation(&error).unwrap_err().raw_os_error(),
            Some(1)
        );
        // Malformed replies are errors, never panics.
        let without_id = generation_reply(&[(2, &7u32.to_be_bytes())]);
        assert!(parse_generation(&without_id).is_err());
        for cut in 0..reply.len() {
            let mut short = reply[..cut].to_vec();
            if cut >= 4 {
                short[..4].copy_from_slice(&(cut as u32).to_ne_bytes());
            }
            assert!(parse_generation(&short).is_err(), "cut at {cut}");
        }
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
