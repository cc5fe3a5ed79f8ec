//! The children of an accepted network: one NodeBridge per selected node, its name, its spec
//! and whether the existing object already says it.
//!
//! A NodeBridge says only what its own node needs (its blocks, the network's settings), so its
//! size and the writes a node event causes do not grow with the cluster: agents learn the
//! overlay's peers from the network's `NetworkOverlay` instead. The deprecated
//! `spec.peers` is still written on a NodeBridge that has it and whose agent has not yet
//! reported `status.networkPeers` (an agent from before, during an upgrade), and dropped as soon
//! as the agent does ([`Member::legacy`]).
//!
//! Memory: those legacy peer lists are quadratic in the node count (1,000 nodes = a million
//! peer entries per network), so a plan keeps one shared template and the member list, and
//! materializes a node's spec ([`Children::spec_for`]) only when it is written;
//! [`Children::matches`] compares an existing spec without building the planned one.

use std::collections::BTreeSet;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::net::IpAddr;
use std::sync::Arc;

use bridgenet_crds::net::{AddressPlan, Family, ResolvedNetwork};
use bridgenet_crds::v1alpha1::{BridgeNetwork, NodeBridge, NodeBridgeIpv6, NodeBridgeSpec, Peer};
use bridgenet_crds::{FINALIZER_AGENT, names};
use ipnet::IpNet;
use kube::ResourceExt;
use sha2::{Digest, Sha256};

use crate::blocks::BlockPlan;
pub use crate::observed::node_address;
use crate::observed::{Membership, endpoint_count, is_deleting, labels_of, node_bridge_ready};

/// Name of the NodeBridge of `network` on `node`.
///
/// `<network>.<node>` when the network name has no dot: both are DNS subdomain names, and the
/// first dot then separates them unambiguously (node names often contain dots, network names
/// rarely). Otherwise, or when the result is longer than 253 bytes, `bnh-` and 20 hex digits of
/// a hash of both: no dot, so it never equals a readable name. The controller still refuses to
/// write over an object of that name whose labels name another network or node.
pub fn node_bridge_name(network: &str, node: &str) -> String {
    if !network.contains('.') && network.len() + 1 + node.len() <= 253 {
        return format!("{network}.{node}");
    }
    let digest = Sha256::digest(format!("{network}\0{node}").as_bytes());
    let hex: String = digest[..10].iter().map(|b| format!("{b:02x}")).collect();
    format!("bnh-{hex}")
}

/// Annotation the operator's own NodeBridge cache puts on objects whose peer list it dropped
/// (never written to the API): the digest of that list, so that [`Children::matches`] can still
/// compare it. At 1,000 nodes a NodeBridge's peers are ~70 KiB, so caching every NodeBridge of
/// 100 networks in full would take gigabytes.
pub const PEERS_DIGEST_ANNOTATION: &str = "bridgenet.io/cached-peers-digest";

fn hash_peer(h: &mut DefaultHasher, node: &str, address: &str, blocks: &[String]) {
    node.hash(h);
    address.hash(h);
    blocks.hash(h);
}

/// Digest of a peer list as a list map keyed on node (order does not count).
pub fn peers_digest(peers: &[Peer]) -> String {
    let mut sorted: Vec<&Peer> = peers.iter().collect();
    sorted.sort_by(|a, b| a.node.cmp(&b.node));
    let mut h = DefaultHasher::new();
    sorted.len().hash(&mut h);
    for p in sorted {
        hash_peer(&mut h, &p.node, &p.address, &p.blocks);
    }
    format!("{:016x}", h.finish())
}

/// Whether a NodeBridge carries a peer list (in full, or as the digest the cache keeps).
fn carries_peers(nb: &NodeBridge) -> bool {
    !nb.spec.peers.is_empty()
        || nb
            .annotations()
            .get(PEERS_DIGEST_ANNOTATION)
            .is_some_and(|digest| *digest != peers_digest(&[]))
}

/// Whether the NodeBridge's agent learns its peers from the network's status.
fn agent_reads_network_peers(nb: &NodeBridge) -> bool {
    nb.status.as_ref().is_some_and(|s| s.network_peers)
}

/// Replaces a cached NodeBridge's peer list by its digest (see [`PEERS_DIGEST_ANNOTATION`]).
pub fn strip_peers(nb: &mut NodeBridge) {
    let digest = peers_digest(&nb.spec.peers);
    nb.spec.peers = Vec::new();
    nb.metadata
        .annotations
        .get_or_insert_default()
        .insert(PEERS_DIGEST_ANNOTATION.to_owned(), digest);
}

/// One node the network is on.
#[derive(Clone, Debug)]
pub struct Member {
    /// Node name.
    pub node: String,
    /// Name of its NodeBridge.
    pub name: String,
    /// Underlay address, when the node reports one; nodes without one are nobody's peer.
    pub address: Option<String>,
    /// Its blocks, IPv4 then IPv6, in address order.
    pub blocks: Vec<String>,
    /// Reserved addresses inside its blocks.
    pub exclude: Vec<String>,
    /// Its NodeBridge as it is now.
    pub existing: Option<Arc<NodeBridge>>,
    /// The existing NodeBridge is being deleted; a new one is written once it is gone.
    pub waiting: bool,
    /// Its NodeBridge keeps the deprecated `spec.peers`, kept up to date: the object has a peer
    /// list and its agent does not report reading the network's status (an agent from before
    /// `NetworkOverlay`, until it is upgraded). New NodeBridges never get one.
    pub legacy: bool,
}

/// The NodeBridges of an accepted network.
#[derive(Clone, Debug)]
pub struct Children {
    template: NodeBridgeSpec,
    /// Selected nodes, sorted by name.
    pub members: Vec<Member>,
    /// NodeBridges to delete (nodes gone or no longer selected, duplicates).
    pub deletes: Vec<String>,
    /// Terminating NodeBridges of nodes that no longer exist: no agent will remove its
    /// finalizer, so the operator does.
    pub release_agent_finalizer: Vec<Arc<NodeBridge>>,
    writes: Vec<bool>,
}

impl Children {
    fn peers_of(&self, i: usize) -> impl Iterator<Item = (&Member, &str)> {
        let legacy = self.members.get(i).is_some_and(|m| m.legacy);
        self.members
            .iter()
            .enumerate()
            .filter(move |(j, _)| legacy && *j != i)
            .filter_map(|(_, m)| m.address.as_deref().map(|a| (m, a)))
    }

    /// The full spec of member `i`'s NodeBridge.
    pub fn spec_for(&self, i: usize) -> NodeBridgeSpec {
        let m = &self.members[i];
        let mut spec = self.template.clone();
        spec.node = m.node.clone();
        spec.blocks = m.blocks.clone();
        spec.exclude_addresses = m.exclude.clone();
        spec.peers = self
            .peers_of(i)
            .map(|(p, address)| Peer {
                node: p.node.clone(),
                address: address.to_owned(),
                blocks: p.blocks.clone(),
            })
            .collect();
        spec
    }

    /// Digest of member `i`'s planned peers, equal to [`peers_digest`] of `spec_for(i).peers`.
    pub fn planned_peers_digest(&self, i: usize) -> String {
        let mut h = DefaultHasher::new();
        self.peers_of(i).count().hash(&mut h);
        for (p, address) in self.peers_of(i) {
            hash_peer(&mut h, &p.node, address, &p.blocks);
        }
        format!("{:016x}", h.finish())
    }

    /// Whether the existing NodeBridge of member `i` says what it should: compares its spec,
    /// or, for a cached object whose peers were stripped, their digest.
    pub fn matches_object(&self, i: usize, nb: &NodeBridge) -> bool {
        match nb.annotations().get(PEERS_DIGEST_ANNOTATION) {
            Some(digest) if nb.spec.peers.is_empty() => {
                self.matches_head(i, &nb.spec) && *digest == self.planned_peers_digest(i)
            }
            _ => self.matches(i, &nb.spec),
        }
    }

    /// Whether `spec` already says what member `i`'s spec should, without building it.
    pub fn matches(&self, i: usize, spec: &NodeBridgeSpec) -> bool {
        self.matches_head(i, spec) && self.matches_peers(i, &spec.peers)
    }

    fn matches_head(&self, i: usize, spec: &NodeBridgeSpec) -> bool {
        let m = &self.members[i];
        let t = &self.template;
        // Destructured so that a new field fails to compile here until it is compared.
        let NodeBridgeSpec {
            network,
            node,
            bridge,
            subnet,
            gateway,
            gateway_mac,
            ipv6,
            blocks,
            exclude_addresses,
            mtu,
            vni,
            internal,
            masquerade,
            inter_pod_traffic,
            dns,
            sticky_addresses,
            namespace_selector,
            peers: _,
        } = spec;
        *network == t.network
            && *node == m.node
            && *bridge == t.bridge
            && *subnet == t.subnet
            && *gateway == t.gateway
            && *gateway_mac == t.gateway_mac
            && *ipv6 == t.ipv6
            && *blocks == m.blocks
            && *exclude_addresses == m.exclude
            && *mtu == t.mtu
            && *vni == t.vni
            && *internal == t.internal
            && *masquerade == t.masquerade
            && *inter_pod_traffic == t.inter_pod_traffic
            && *dns == t.dns
            && *sticky_addresses == t.sticky_addresses
            && *namespace_selector == t.namespace_selector
    }

    fn matches_peers(&self, i: usize, peers: &[Peer]) -> bool {
        // Peers are a list map keyed on node: a server-side apply merge may keep another
        // order than ours (the emulator does), which is the same content.
        let mut have: Vec<&Peer> = peers.iter().collect();
        if !have.is_sorted_by(|a, b| a.node <= b.node) {
            have.sort_by(|a, b| a.node.cmp(&b.node));
        }
        let mut planned = self.peers_of(i);
        let mut have = have.into_iter();
        loop {
            match (planned.next(), have.next()) {
                (None, None) => break true,
                (Some((p, address)), Some(h)) => {
                    if h.node != p.node || h.address != address || h.blocks != p.blocks {
                        break false;
                    }
                }
                _ => break false,
            }
        }
    }

    /// Members whose agent does not report their NodeBridge programmed for what it should say:
    /// waiting for a terminating one to go, missing, not Ready, or about to be rewritten.
    pub fn not_ready(&self) -> Vec<String> {
        self.members
            .iter()
            .enumerate()
            .filter(|(i, m)| {
                m.waiting
                    || !m.existing.as_ref().is_some_and(|nb| node_bridge_ready(nb))
                    || self.needs_write(*i)
            })
            .map(|(_, m)| m.node.clone())
            .collect()
    }

    /// Whether member `i`'s NodeBridge must be written: missing, or saying something else.
    /// Computed once when the plan is made (the comparison is quadratic in the node count).
    pub fn needs_write(&self, i: usize) -> bool {
        self.writes.get(i).copied().unwrap_or(true)
    }

    fn compute_needs_write(&self, i: usize) -> bool {
        let m = &self.members[i];
        if m.waiting {
            return false;
        }
        match &m.existing {
            None => true,
            Some(nb) => {
                labels_of(nb) != (Some(self.template.network.as_str()), Some(m.node.as_str()))
                    || !self.matches_object(i, nb)
            }
        }
    }
}

/// Reserved addresses of `plan` inside `block`: the spec's exclusions, the gateway, the
/// subnet's network and (IPv4) broadcast address.
fn reserved_in(plan: &AddressPlan, block: &IpNet, out: &mut BTreeSet<IpAddr>) {
    out.extend(plan.exclude.iter().filter(|ip| block.contains(*ip)));
    let mut specials = vec![plan.subnet.network(), plan.gateway];
    if plan.family() == Family::V4 && plan.subnet.prefix_len() < 31 {
        specials.push(plan.subnet.broadcast());
    }
    out.extend(specials.into_iter().filter(|ip| block.contains(ip)));
}

/// The NodeBridges of accepted network `net`: one per member with the blocks of `blocks`,
/// duplicates and those of departed nodes deleted, and the agent finalizer released where no
/// agent is left to do it.
pub(crate) fn plan_children(
    net: &BridgeNetwork,
    resolved: &ResolvedNetwork,
    vni: u32,
    default_mtu: u32,
    membership: &Membership<'_>,
    blocks: &BlockPlan,
) -> Children {
    let name = net.name_any();
    let v4 = &resolved.v4;
    let template = NodeBridgeSpec {
        network: name.clone(),
        node: String::new(),
        bridge: resolved.bridge.clone(),
        subnet: v4.subnet.to_string(),
        gateway: v4.gateway.to_string(),
        gateway_mac: names::gateway_mac(&name),
        ipv6: resolved.v6.as_ref().map(|p| NodeBridgeIpv6 {
            subnet: p.subnet.to_string(),
            gateway: p.gateway.to_string(),
        }),
        blocks: Vec::new(),
        exclude_addresses: Vec::new(),
        mtu: resolved.mtu.unwrap_or(default_mtu),
        vni,
        internal: net.spec.internal,
        masquerade: net.spec.masquerade,
        inter_pod_traffic: net.spec.inter_pod_traffic,
        dns: net.spec.dns,
        sticky_addresses: net.spec.sticky_addresses,
        namespace_selector: net.spec.namespace_selector.clone(),
        peers: Vec::new(),
    };

    let mut deletes = Vec::new();
    let mut members = Vec::with_capacity(membership.selected.len());
    for node in &membership.selected {
        let node_name = node.name_any();
        let canonical = node_bridge_name(&name, &node_name);
        let nbs = membership
            .by_node
            .get(node_name.as_str())
            .cloned()
            .unwrap_or_default();
        // Prefer the live object with the canonical name; any other live one is a duplicate.
        let live: Vec<&Arc<NodeBridge>> =
            nbs.iter().copied().filter(|nb| !is_deleting(nb)).collect();
        let keep = live
            .iter()
            .find(|nb| nb.name_any() == canonical)
            .or_else(|| live.first())
            .copied();
        for nb in &live {
            if Some(nb.name_any()) != keep.map(|k| k.name_any()) {
                deletes.push(nb.name_any());
            }
        }
        let terminating = nbs.iter().copied().find(|nb| is_deleting(nb));
        let (existing, waiting) = match (keep, terminating) {
            (Some(k), _) => (Some(k.clone()), false),
            (None, Some(t)) => (Some(t.clone()), t.name_any() == canonical),
            (None, None) => (None, false),
        };
        let mut node_blocks: Vec<IpNet> = blocks.v4.of(&node_name).to_vec();
        if let Some(a6) = &blocks.v6 {
            node_blocks.extend_from_slice(a6.of(&node_name));
        }
        let mut reserved = BTreeSet::new();
        for b in &node_blocks {
            let plan = if Family::of_net(b) == Family::V4 {
                Some(v4)
            } else {
                resolved.v6.as_ref()
            };
            if let Some(plan) = plan {
                reserved_in(plan, b, &mut reserved);
            }
        }
        let legacy = existing
            .as_ref()
            .is_some_and(|nb| carries_peers(nb) && !agent_reads_network_peers(nb));
        members.push(Member {
            legacy,
            name: existing
                .as_ref()
                .filter(|_| !waiting)
                .map_or(canonical, |e| e.name_any()),
            node: node_name,
            address: node_address(node),
            blocks: node_blocks.iter().map(ToString::to_string).collect(),
            exclude: reserved.iter().map(ToString::to_string).collect(),
            existing,
            waiting,
        });
    }
    let mut release_agent_finalizer = Vec::new();
    for (node, nbs) in &membership.by_node {
        for nb in nbs {
            if membership.member_set.contains(*node) {
                continue;
            }
            if !is_deleting(nb) {
                deletes.push(nb.name_any());
            } else if !membership.all_nodes.contains(node)
                && endpoint_count(nb) == 0
                && nb.finalizers().iter().any(|f| f == FINALIZER_AGENT)
            {
                release_agent_finalizer.push((*nb).clone());
            }
        }
    }
    deletes.sort();
    deletes.dedup();
    release_agent_finalizer.sort_by_key(|nb| nb.name_any());

    let mut children = Children {
        template,
        members,
        deletes,
        release_agent_finalizer,
        writes: Vec::new(),
    };
    children.writes = (0..children.members.len())
        .map(|i| children.compute_needs_write(i))
        .collect();
    children
}
