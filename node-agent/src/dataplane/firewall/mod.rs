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
//! rule's family, chain and expression. The kernel's rule set matches the desired one exactly when the
//! sets of (table, chain, comment) match, so a check costs two `nft -j list table` reads and no
//! write, also right after an agent restart. Once a check has found the tables right, later
//! checks first ask the kernel for the ruleset generation (one netlink round trip, see
//! [`ruleset_generation`]): while no one has committed any nftables change since, nothing needs
//! listing.
//!
//! Changes are applied as ONE `nft -j -f -` transaction that adds, deletes and re-adds each
//! table with all its chains and rules: the kernel commits it atomically, so packets see either
//! the old or the new rule set, never an empty table — replacing is safe for running pods.
//!
//! Layout, decide then act:
//! - `rules.rs`: the pure rule set of a list of [`Desired`](crate::dataplane::Desired)
//!   networks, as `nftables` crate statements with their identities ([`rules()`], [`keys`]);
//! - `transaction.rs`: the batch that replaces both tables with a rule set ([`transaction()`]);
//! - `generation.rs`: the ruleset generation over netlink and the namespace it belongs to;
//! - `exec.rs`: [`Firewall`], which lists, compares, remembers a verified state and writes,
//!   and [`FirewallError`].

mod exec;
mod generation;
mod rules;
mod transaction;

pub use exec::{Firewall, FirewallError, FirewallOutcome, ObservedTables, observed_keys};
pub use generation::ruleset_generation;
pub use rules::{Family, Hook, Rule, RuleKey, keys, rules};
pub use transaction::transaction;

/// Name of bridgenet's table in both families (`inet bridgenet`, `bridge bridgenet`); the
/// nftables-change monitor watches for changes to tables of this name.
pub const TABLE: &str = "bridgenet";
