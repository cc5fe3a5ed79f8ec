//! Per-node address blocks, Calico style: a network's range is carved into equal blocks and
//! each node hands out pod addresses from its own blocks only, so nodes never coordinate per pod.
//!
//! The assignment is not kept in memory: every reconcile rebuilds it from what the API holds
//! (`BridgeNetwork.status.blocks`, then the blocks in existing NodeBridge specs), so a restart or
//! a re-list gives every node the blocks it had. New blocks go out in address order to nodes in
//! name order, which makes the result a pure function of its inputs.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use bridgenet_crds::net::{AddressPlan, Family, ResolvedNetwork};
use bridgenet_crds::v1alpha1::{BridgeNetworkStatus, NodeBridge};
use ipnet::IpNet;

use crate::observed::{Membership, endpoint_count, node_of};

/// Blocks of one address family, by node.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Assignment {
    /// Each node's blocks in address order. Holds members and retained nodes only.
    pub by_node: BTreeMap<String, Vec<IpNet>>,
    /// Members that wanted a block (or one more) and got none: the range is exhausted.
    pub unmet: Vec<String>,
    /// Blocks two records gave to different nodes; the first record (status) won.
    pub conflicts: Vec<(IpNet, String, String)>,
}

impl Assignment {
    /// Number of blocks assigned.
    pub fn len(&self) -> usize {
        self.by_node.values().map(Vec::len).sum()
    }

    /// Whether no block is assigned.
    pub fn is_empty(&self) -> bool {
        self.by_node.values().all(Vec::is_empty)
    }

    /// Blocks of `node` (empty when it has none).
    pub fn of(&self, node: &str) -> &[IpNet] {
        self.by_node.get(node).map(Vec::as_slice).unwrap_or(&[])
    }
}

/// Assigns blocks of `plan` (one family).
///
/// - `claims`: existing (block, node) records, most authoritative first (status, then
///   NodeBridge specs); a block already claimed keeps its first owner, and records that are
///   not a block of this plan (other family, size or range) are ignored.
/// - `members`: the nodes the network is on, sorted; each keeps its claimed blocks.
/// - `retained`: nodes the network left whose blocks may still hold pod addresses; they keep
///   their blocks but get no new ones. Every other claim is released.
/// - `target(node, held)`: how many blocks a member should hold; more are allocated when it
///   is higher than `held`, none are taken away when lower.
pub fn assign(
    plan: &AddressPlan,
    claims: impl IntoIterator<Item = (IpNet, String)>,
    members: &[String],
    retained: &BTreeSet<String>,
    target: impl Fn(&str, usize) -> usize,
) -> Assignment {
    let family = plan.family();
    let is_block = |b: &IpNet| {
        Family::of_net(b) == family && b.prefix_len() == plan.block_prefix && plan.range.contains(b)
    };
    let member_set: BTreeSet<&str> = members.iter().map(String::as_str).collect();

    let mut owner: HashMap<IpNet, String> = HashMap::new();
    let mut out = Assignment::default();
    for (block, node) in claims {
        if !is_block(&block) {
            continue;
        }
        match owner.get(&block) {
            Some(first) if *first != node => out.conflicts.push((block, first.clone(), node)),
            Some(_) => {}
            None => {
                owner.insert(block, node);
            }
        }
    }
    // Claims of nodes that are neither members nor retained are released here; only the kept
    // ones block allocation below.
    owner.retain(|_, node| member_set.contains(node.as_str()) || retained.contains(node));
    for (block, node) in &owner {
        out.by_node.entry(node.clone()).or_default().push(*block);
    }

    let mut free = plan
        .blocks()
        .filter(|b| !owner.contains_key(b) && plan.assignable_in_block(b) > 0);
    for node in members {
        let held = out.by_node.get(node).map_or(0, Vec::len);
        let want = target(node, held);
        let mut got = 0;
        while held + got < want {
            match free.next() {
                Some(block) => {
                    out.by_node.entry(node.clone()).or_default().push(block);
                    got += 1;
                }
                None => {
                    out.unmet.push(node.clone());
                    break;
                }
            }
        }
    }
    for blocks in out.by_node.values_mut() {
        blocks.sort_by_key(|b| (b.network(), b.prefix_len()));
    }
    out
}

/// Whether a node should get one more block: its agent reports few free addresses, and the
/// report describes the node's current blocks (not a spec older than the last block added).
pub fn nearly_full(plan: &AddressPlan, free_addresses: i64) -> bool {
    let block_size = 1u64 << u32::from(plan.range.max_prefix_len() - plan.block_prefix).min(63);
    let low_water = (block_size / 8).max(1);
    free_addresses >= 0 && u64::try_from(free_addresses).unwrap_or(0) <= low_water
}

/// The blocks of one accepted network, by family.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BlockPlan {
    /// IPv4 blocks.
    pub v4: Assignment,
    /// IPv6 blocks, for dual-stack networks.
    pub v6: Option<Assignment>,
}

impl BlockPlan {
    /// Blocks assigned, both families.
    pub fn len(&self) -> usize {
        self.v4.len() + self.v6.as_ref().map_or(0, Assignment::len)
    }

    /// Whether no block is assigned.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Members that got fewer blocks than they need, sorted, once each.
    pub fn unmet(&self) -> Vec<String> {
        let mut unmet = self.v4.unmet.clone();
        if let Some(v6) = &self.v6 {
            unmet.extend(v6.unmet.iter().cloned());
        }
        unmet.sort();
        unmet.dedup();
        unmet
    }
}

/// The IPv4 blocks a NodeBridge's spec lists (what its agent's address counts describe).
pub(crate) fn v4_blocks_of(nb: &NodeBridge) -> Vec<IpNet> {
    nb.spec
        .blocks
        .iter()
        .filter_map(|b| b.parse::<IpNet>().ok())
        .filter(|b| Family::of_net(b) == Family::V4)
        .collect()
}

/// Decides every member's blocks: what the status and the NodeBridge specs record is kept,
/// nodes that left keep theirs while pods still hold addresses in them, members without one
/// get one, and members whose agent reports few free addresses get one more.
pub(crate) fn decide(
    resolved: &ResolvedNetwork,
    prev: &BridgeNetworkStatus,
    membership: &Membership<'_>,
) -> BlockPlan {
    // Nodes the network left keep their blocks while their NodeBridge still lists endpoints:
    // those pods hold addresses from the blocks until they are detached.
    let retained: BTreeSet<String> = membership
        .by_node
        .iter()
        .filter(|(node, nbs)| {
            !membership.member_set.contains(**node) && nbs.iter().any(|nb| endpoint_count(nb) > 0)
        })
        .map(|(node, _)| (*node).to_owned())
        .collect();

    // Claims: the status record first (the source of truth), then NodeBridge specs, which
    // cover a crash between writing a NodeBridge and writing the status.
    let mut claims: Vec<(IpNet, String)> = prev
        .blocks
        .iter()
        .filter_map(|b| b.cidr.parse().ok().map(|c| (c, b.node.clone())))
        .collect();
    for nb in &membership.mine {
        let node = node_of(nb);
        claims.extend(
            nb.spec
                .blocks
                .iter()
                .filter_map(|b| b.parse().ok().map(|c| (c, node.to_owned()))),
        );
    }

    // One more IPv4 block for nodes whose agent reports few free addresses, but only when that
    // report describes the node's current blocks: otherwise every reconcile until the agent
    // catches up would add another.
    let v4 = &resolved.v4;
    let mut grow: HashMap<String, usize> = HashMap::new();
    for node in &membership.names {
        let Some(nb) = membership.live(node) else {
            continue;
        };
        let Some(st) = &nb.status else { continue };
        let spec_v4 = v4_blocks_of(nb);
        // The report must add up to exactly the capacity of the node's current blocks. The
        // data plane and the endpoint writer fill one status separately, so observedGeneration
        // alone can be current while the counts are still the defaults (0 free) or describe
        // the blocks before the last growth; either would read as "full" and add a block on
        // every reconcile.
        let capacity: u64 = spec_v4.iter().map(|b| v4.assignable_in_block(b)).sum();
        let counts_current = st.allocated_addresses >= 0
            && st.free_addresses >= 0
            && st
                .allocated_addresses
                .checked_add(st.free_addresses)
                .and_then(|total| u64::try_from(total).ok())
                == Some(capacity);
        let generation_current = match nb.metadata.generation {
            Some(g) => st.observed_generation == Some(g),
            None => true,
        };
        let fresh = counts_current && generation_current;
        if fresh && !spec_v4.is_empty() && nearly_full(v4, st.free_addresses) {
            grow.insert(node.clone(), spec_v4.len());
        }
    }
    let a4 = assign(
        v4,
        claims.iter().cloned(),
        &membership.names,
        &retained,
        |node, held| {
            if grow.get(node) == Some(&held) {
                held + 1
            } else {
                held.max(1)
            }
        },
    );
    // IPv6 blocks follow the IPv4 count: pods take one address of each family, and both
    // default block sizes hold 64 addresses.
    let a6: Option<Assignment> = resolved.v6.as_ref().map(|v6| {
        assign(
            v6,
            claims.iter().cloned(),
            &membership.names,
            &retained,
            |node, held| held.max(a4.of(node).len().max(1)),
        )
    });
    BlockPlan { v4: a4, v6: a6 }
}

/// Free IPv4 addresses of the whole range: unassigned blocks count in full; a node's blocks
/// count what its agent reports when the report is for those blocks, else in full.
pub(crate) fn free_v4(
    resolved: &ResolvedNetwork,
    assigned: &Assignment,
    membership: &Membership<'_>,
) -> i128 {
    let v4 = &resolved.v4;
    let mut free = i128::from(v4.assignable_total());
    for (node, blocks) in &assigned.by_node {
        let capacity: u64 = blocks.iter().map(|b| v4.assignable_in_block(b)).sum();
        let reported = membership
            .live(node)
            .filter(|nb| v4_blocks_of(nb).len() == blocks.len())
            .and_then(|nb| nb.status.as_ref())
            .map(|s| i128::from(s.free_addresses.max(0)));
        free = free - i128::from(capacity)
            + reported
                .unwrap_or(i128::from(capacity))
                .min(i128::from(capacity));
    }
    free
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use bridgenet_crds::net::{BlockDefaults, resolve_with};
    use bridgenet_crds::v1alpha1::BridgeNetworkSpec;

    fn plan(subnet: &str, block: u8) -> AddressPlan {
        let spec: BridgeNetworkSpec =
            serde_json::from_value(serde_json::json!({"subnet": subnet, "blockSize": block}))
                .unwrap();
        resolve_with("n", &spec, BlockDefaults::default())
            .unwrap()
            .v4
    }

    fn names(n: &[&str]) -> Vec<String> {
        n.iter().map(|s| s.to_string()).collect()
    }

    fn one(_: &str, held: usize) -> usize {
        held.max(1)
    }

    #[test]
    fn new_nodes_get_first_free_blocks_in_name_order() {
        let p = plan("10.1.0.0/24", 26);
        let a = assign(&p, [], &names(&["b", "a"]), &BTreeSet::new(), one);
        // members are passed sorted by callers; here "b" comes first and gets the first block
        assert_eq!(a.of("b"), &["10.1.0.0/26".parse::<IpNet>().unwrap()]);
        assert_eq!(a.of("a"), &["10.1.0.64/26".parse::<IpNet>().unwrap()]);
        assert!(a.unmet.is_empty());
    }

    #[test]
    fn claims_are_kept_and_released_claims_are_reused() {
        let p = plan("10.1.0.0/24", 26);
        let claims = vec![
            ("10.1.0.128/26".parse().unwrap(), "a".to_owned()),
            ("10.1.0.0/26".parse().unwrap(), "gone".to_owned()),
        ];
        let a = assign(&p, claims, &names(&["a", "b"]), &BTreeSet::new(), one);
        assert_eq!(a.of("a"), &["10.1.0.128/26".parse::<IpNet>().unwrap()]);
        assert_eq!(a.of("b"), &["10.1.0.0/26".parse::<IpNet>().unwrap()]);
        assert!(a.of("gone").is_empty());
    }

    #[test]
    fn retained_nodes_keep_blocks_and_first_claim_wins() {
        let p = plan("10.1.0.0/25", 26);
        let claims = vec![
            ("10.1.0.0/26".parse().unwrap(), "old".to_owned()),
            ("10.1.0.0/26".parse().unwrap(), "a".to_owned()),
        ];
        let retained = BTreeSet::from(["old".to_owned()]);
        let a = assign(&p, claims, &names(&["a", "b"]), &retained, one);
        assert_eq!(a.of("old").len(), 1);
        assert_eq!(a.of("a"), &["10.1.0.64/26".parse::<IpNet>().unwrap()]);
        assert_eq!(a.unmet, vec!["b".to_owned()]);
        assert_eq!(a.conflicts.len(), 1);
    }

    #[test]
    fn blocks_of_other_sizes_or_ranges_are_ignored() {
        let p = plan("10.1.0.0/24", 26);
        let claims = vec![
            ("10.1.0.0/25".parse().unwrap(), "a".to_owned()),
            ("10.2.0.0/26".parse().unwrap(), "a".to_owned()),
        ];
        let a = assign(&p, claims, &names(&["a"]), &BTreeSet::new(), one);
        assert_eq!(a.of("a"), &["10.1.0.0/26".parse::<IpNet>().unwrap()]);
    }

    #[test]
    fn growth_adds_one_block_and_never_shares() {
        let p = plan("10.1.0.0/24", 26);
        let claims = vec![("10.1.0.0/26".parse().unwrap(), "a".to_owned())];
        let a = assign(
            &p,
            claims,
            &names(&["a", "b"]),
            &BTreeSet::new(),
            |n, held| {
                if n == "a" { held + 1 } else { held.max(1) }
            },
        );
        assert_eq!(a.of("a").len(), 2);
        let all: BTreeSet<IpNet> = a.by_node.values().flatten().copied().collect();
        assert_eq!(all.len(), a.len(), "no block twice");
    }

    #[test]
    fn blocks_without_assignable_addresses_are_skipped() {
        // /32 blocks: the network address and the gateway (.1) hold nothing assignable.
        let p = plan("10.1.0.0/30", 32);
        let a = assign(&p, [], &names(&["a", "b"]), &BTreeSet::new(), one);
        assert_eq!(a.of("a"), &["10.1.0.2/32".parse::<IpNet>().unwrap()]);
        assert_eq!(
            a.unmet,
            vec!["b".to_owned()],
            "broadcast is not assignable either"
        );
    }

    #[test]
    fn low_water_mark_is_an_eighth_of_a_block() {
        let p = plan("10.1.0.0/24", 26);
        assert!(nearly_full(&p, 8));
        assert!(!nearly_full(&p, 9));
        assert!(nearly_full(&p, 0));
    }
}
