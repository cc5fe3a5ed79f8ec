//! The pure planner: from a BridgeNetwork, the other networks, the nodes and the existing
//! NodeBridges, decide what every node's NodeBridge should say, which NodeBridges go, and the
//! network's status. No I/O; the controller executes the plan.
//!
//! Memory: peer lists make NodeBridge specs quadratic in the node count (1,000 nodes = a
//! million peer entries per network), so a plan keeps one shared template and the member
//! list, and materializes a node's spec ([`Children::spec_for`]) only when it is written;
//! [`Children::matches`] compares an existing spec without building the planned one.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::net::IpAddr;
use std::sync::Arc;

use bridgenet_crds::net::{AddressPlan, BlockDefaults, Family, ResolvedNetwork, resolve_with};
use bridgenet_crds::v1alpha1::{
    BlockAssignment, BridgeNetwork, BridgeNetworkStatus, NodeBridge, NodeBridgeIpv6,
    NodeBridgeSpec, Peer,
};
use bridgenet_crds::{ANNOTATION_FORCE_DELETE, FINALIZER_AGENT, LABEL_NETWORK, LABEL_NODE, names};
use ipnet::IpNet;
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, Time};
use kube::ResourceExt;
use kube::core::{Selector, SelectorExt};
use sha2::{Digest, Sha256};

use crate::blocks::{self, Assignment};
use crate::status::{self, ACCEPTED, Cond, PlannedEvent, READY, reason};

/// Operator-wide settings the planner needs (from the command line).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    /// MTU for networks whose spec has none.
    pub default_mtu: u32,
    /// Block sizes for networks whose spec has none.
    pub block_defaults: BlockDefaults,
    /// The cluster's pod and service CIDRs; no network may overlap them.
    pub cluster_cidrs: Vec<IpNet>,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            default_mtu: 1450,
            block_defaults: BlockDefaults::default(),
            cluster_cidrs: Vec::new(),
        }
    }
}

/// Why a network is refused (the `Accepted=False` reason).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RejectReason {
    /// The spec breaks a rule the CRD's schema states (for servers that do not run CEL).
    InvalidSpec,
    /// The subnet overlaps an older network's or the cluster's ranges.
    SubnetOverlap,
    /// An older network already uses the bridge name.
    DuplicateBridge,
}

impl RejectReason {
    /// The condition reason.
    pub fn as_str(self) -> &'static str {
        match self {
            RejectReason::InvalidSpec => "InvalidSpec",
            RejectReason::SubnetOverlap => "SubnetOverlap",
            RejectReason::DuplicateBridge => "DuplicateBridge",
        }
    }
}

/// The cluster-wide decision about one network.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Valid and colliding with nothing older.
    Accepted {
        /// The spec with defaults filled in.
        resolved: Box<ResolvedNetwork>,
        /// The overlay's VXLAN network identifier.
        vni: u32,
    },
    /// Refused.
    Rejected {
        /// Condition reason.
        reason: RejectReason,
        /// What to change, naming the other network where there is one.
        message: String,
    },
}

/// Smallest VNI handed out; lower ones are left to hand-made VXLANs.
pub const VNI_MIN: u32 = 4096;
/// Largest VNI (24 bits).
pub const VNI_MAX: u32 = (1 << 24) - 1;

/// Age order: the older network (creationTimestamp, then name) keeps a contested subnet,
/// bridge name or VNI.
fn age_key(net: &BridgeNetwork) -> (Option<i128>, String) {
    (
        net.metadata
            .creation_timestamp
            .as_ref()
            .map(|t| t.0.as_nanosecond()),
        net.name_any(),
    )
}

fn overlaps(a: &IpNet, b: &IpNet) -> bool {
    Family::of_net(a) == Family::of_net(b) && (a.contains(&b.network()) || b.contains(&a.network()))
}

fn subnets(r: &ResolvedNetwork) -> impl Iterator<Item = IpNet> + '_ {
    r.plans().map(|p| p.subnet)
}

fn parse_selector(field: &str, sel: Option<&LabelSelector>) -> Result<Selector, String> {
    match sel {
        None => Ok(Selector::default()),
        Some(sel) => Selector::try_from(sel.clone()).map_err(|e| format!("{field}: {e}")),
    }
}

/// Decides acceptance and VNI for every network at once, oldest first, so that each verdict
/// depends only on older networks and everyone computing it gets the same answer.
pub fn admit_all(
    networks: &[Arc<BridgeNetwork>],
    settings: &Settings,
) -> BTreeMap<String, Verdict> {
    let mut ordered: Vec<&Arc<BridgeNetwork>> = networks.iter().collect();
    ordered.sort_by_key(|n| age_key(n));

    let mut persisted: HashMap<u32, Vec<String>> = HashMap::new();
    for net in &ordered {
        if let Some(vni) = net.status.as_ref().and_then(|s| s.vni) {
            persisted.entry(vni).or_default().push(net.name_any());
        }
    }

    let mut verdicts = BTreeMap::new();
    let mut accepted: Vec<(String, Box<ResolvedNetwork>)> = Vec::new();
    let mut claimed_vni: BTreeSet<u32> = BTreeSet::new();
    for net in ordered {
        let name = net.name_any();
        let verdict = match judge(net, &name, &accepted, settings) {
            Err((reason, message)) => Verdict::Rejected { reason, message },
            Ok(resolved) => {
                let taken = |v: u32| {
                    claimed_vni.contains(&v)
                        || persisted
                            .get(&v)
                            .is_some_and(|owners| owners.iter().any(|o| *o != name))
                };
                let vni = match net.status.as_ref().and_then(|s| s.vni) {
                    Some(v) if (VNI_MIN..=VNI_MAX).contains(&v) && !claimed_vni.contains(&v) => v,
                    _ => pick_vni(&name, taken),
                };
                claimed_vni.insert(vni);
                accepted.push((name.clone(), resolved.clone()));
                Verdict::Accepted { resolved, vni }
            }
        };
        verdicts.insert(name, verdict);
    }
    verdicts
}

fn judge(
    net: &BridgeNetwork,
    name: &str,
    accepted: &[(String, Box<ResolvedNetwork>)],
    settings: &Settings,
) -> Result<Box<ResolvedNetwork>, (RejectReason, String)> {
    let invalid = |m: String| (RejectReason::InvalidSpec, m);
    let resolved = resolve_with(name, &net.spec, settings.block_defaults)
        .map_err(|e| invalid(e.to_string()))?;
    parse_selector("nodeSelector", net.spec.node_selector.as_ref()).map_err(invalid)?;
    parse_selector("namespaceSelector", net.spec.namespace_selector.as_ref()).map_err(invalid)?;

    for subnet in subnets(&resolved) {
        if let Some(cidr) = settings.cluster_cidrs.iter().find(|c| overlaps(c, &subnet)) {
            return Err((
                RejectReason::SubnetOverlap,
                format!(
                    "subnet {subnet} overlaps the cluster's pod/service range {cidr} (--cluster-cidrs): pick a subnet outside the cluster's ranges"
                ),
            ));
        }
        for (other, r) in accepted {
            if let Some(theirs) = subnets(r).find(|s| overlaps(s, &subnet)) {
                return Err((
                    RejectReason::SubnetOverlap,
                    format!(
                        "subnet {subnet} overlaps {theirs} of BridgeNetwork {other}, which is older and keeps it: pick a subnet that overlaps no other network"
                    ),
                ));
            }
        }
    }
    if let Some((other, _)) = accepted.iter().find(|(_, r)| r.bridge == resolved.bridge) {
        return Err((
            RejectReason::DuplicateBridge,
            format!(
                "bridge {} is already the bridge of BridgeNetwork {other}, which is older: set another spec.bridge",
                resolved.bridge
            ),
        ));
    }
    Ok(Box::new(resolved))
}

/// A VNI derived from the name (so that re-creating a network tends to get the same one),
/// probing upwards past taken ones.
fn pick_vni(name: &str, taken: impl Fn(u32) -> bool) -> u32 {
    let digest = Sha256::digest(format!("bridgenet-vni/{name}").as_bytes());
    let span = VNI_MAX - VNI_MIN + 1;
    let seed = u32::from_be_bytes([digest[0], digest[1], digest[2], digest[3]]) % span;
    (0..span)
        .map(|i| VNI_MIN + (seed + i) % span)
        .find(|v| !taken(*v))
        .unwrap_or(VNI_MIN)
}

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

/// The underlay address of a node: its first IPv4 `InternalIP`, else its first `InternalIP`.
pub fn node_address(node: &Node) -> Option<String> {
    let addrs = node.status.as_ref()?.addresses.as_ref()?;
    let internal = addrs.iter().filter(|a| a.type_ == "InternalIP");
    internal
        .clone()
        .find(|a| a.address.parse::<std::net::Ipv4Addr>().is_ok())
        .or_else(|| internal.clone().next())
        .map(|a| a.address.clone())
}

pub(crate) fn labels_of(nb: &NodeBridge) -> (Option<&str>, Option<&str>) {
    let l = nb.metadata.labels.as_ref();
    (
        l.and_then(|l| l.get(LABEL_NETWORK)).map(String::as_str),
        l.and_then(|l| l.get(LABEL_NODE)).map(String::as_str),
    )
}

/// The node a NodeBridge is for (its label, else its spec).
pub(crate) fn node_of(nb: &NodeBridge) -> &str {
    labels_of(nb).1.unwrap_or(&nb.spec.node)
}

fn is_deleting(nb: &NodeBridge) -> bool {
    nb.metadata.deletion_timestamp.is_some()
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

/// Replaces a cached NodeBridge's peer list by its digest (see [`PEERS_DIGEST_ANNOTATION`]).
pub fn strip_peers(nb: &mut NodeBridge) {
    let digest = peers_digest(&nb.spec.peers);
    nb.spec.peers = Vec::new();
    nb.metadata
        .annotations
        .get_or_insert_default()
        .insert(PEERS_DIGEST_ANNOTATION.to_owned(), digest);
}

/// Everything the planner reads about one network.
pub struct PlanInput<'a> {
    /// The network.
    pub network: &'a BridgeNetwork,
    /// Its verdict from [`admit_all`].
    pub verdict: &'a Verdict,
    /// Every node in the cluster.
    pub nodes: &'a [Arc<Node>],
    /// NodeBridges; those not labelled for this network are ignored.
    pub existing: &'a [Arc<NodeBridge>],
    /// Operator settings.
    pub settings: &'a Settings,
    /// The time to stamp on conditions that change.
    pub now: &'a Time,
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
        self.members
            .iter()
            .enumerate()
            .filter(move |(j, _)| *j != i)
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

/// What to do for one network.
#[derive(Clone, Debug)]
pub struct NetworkPlan {
    /// The status to write (equal to the current one when nothing changed).
    pub status: BridgeNetworkStatus,
    /// Events for condition changes.
    pub events: Vec<PlannedEvent>,
    /// NodeBridges; `None` when the network is refused: nothing is created for it, and
    /// whatever exists from before is left alone rather than pulled from under running pods.
    pub children: Option<Children>,
    /// The refusal, if any.
    pub rejection: Option<(RejectReason, String)>,
    /// Blocks assigned to nodes (IPv4 and IPv6), for the metric.
    pub blocks_used: usize,
}

/// Plans one network.
pub fn plan_network(input: &PlanInput<'_>) -> NetworkPlan {
    let net = input.network;
    let prev = net.status.clone().unwrap_or_default();
    let generation = net.metadata.generation;
    match input.verdict {
        Verdict::Rejected {
            reason: why,
            message,
        } => {
            let mut status = prev.clone();
            status.observed_generation = generation;
            status::set_condition(
                &mut status.conditions,
                Cond {
                    type_: ACCEPTED,
                    status: false,
                    reason: why.as_str(),
                    message: message.clone(),
                },
                generation,
                input.now,
            );
            status::set_condition(
                &mut status.conditions,
                Cond {
                    type_: READY,
                    status: false,
                    reason: reason::NOT_ACCEPTED,
                    message: format!("not programmed on any node: {}", why.as_str()),
                },
                generation,
                input.now,
            );
            NetworkPlan {
                events: status::transition_events(&prev.conditions, &status.conditions),
                blocks_used: status.blocks.len(),
                status,
                children: None,
                rejection: Some((*why, message.clone())),
            }
        }
        Verdict::Accepted { resolved, vni } => plan_accepted(input, resolved, *vni, prev),
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

fn plan_accepted(
    input: &PlanInput<'_>,
    resolved: &ResolvedNetwork,
    vni: u32,
    prev: BridgeNetworkStatus,
) -> NetworkPlan {
    let net = input.network;
    let name = net.name_any();
    let generation = net.metadata.generation;
    // Admission checked the selector; an unparsable one cannot reach here.
    let node_selector =
        parse_selector("nodeSelector", net.spec.node_selector.as_ref()).unwrap_or_default();

    let all_nodes: BTreeSet<&str> = input
        .nodes
        .iter()
        .map(|n| n.metadata.name.as_deref().unwrap_or(""))
        .collect();
    let mut selected: Vec<&Node> = input
        .nodes
        .iter()
        .map(AsRef::as_ref)
        .filter(|n| n.metadata.deletion_timestamp.is_none())
        .filter(|n| node_selector.matches(n.metadata.labels.as_ref().unwrap_or(&BTreeMap::new())))
        .collect();
    selected.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    let member_names: Vec<String> = selected.iter().map(|n| n.name_any()).collect();
    let member_set: BTreeSet<&str> = member_names.iter().map(String::as_str).collect();

    let mine: Vec<&Arc<NodeBridge>> = input
        .existing
        .iter()
        .filter(|nb| labels_of(nb).0 == Some(name.as_str()))
        .collect();
    let mut by_node: BTreeMap<&str, Vec<&Arc<NodeBridge>>> = BTreeMap::new();
    for nb in &mine {
        by_node.entry(node_of(nb)).or_default().push(nb);
    }

    // Nodes the network left keep their blocks while their NodeBridge still lists endpoints:
    // those pods hold addresses from the blocks until they are detached.
    let retained: BTreeSet<String> = by_node
        .iter()
        .filter(|(node, nbs)| {
            !member_set.contains(*node) && nbs.iter().any(|nb| status::endpoint_count(nb) > 0)
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
    for nb in &mine {
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
    for node in &member_names {
        let Some(nb) = by_node
            .get(node.as_str())
            .and_then(|v| v.iter().find(|nb| !is_deleting(nb)))
        else {
            continue;
        };
        let Some(st) = &nb.status else { continue };
        let spec_v4: Vec<IpNet> = nb
            .spec
            .blocks
            .iter()
            .filter_map(|b| b.parse::<IpNet>().ok())
            .filter(|b| Family::of_net(b) == Family::V4)
            .collect();
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
        if fresh && !spec_v4.is_empty() && blocks::nearly_full(v4, st.free_addresses) {
            grow.insert(node.clone(), spec_v4.len());
        }
    }
    let a4 = blocks::assign(
        v4,
        claims.iter().cloned(),
        &member_names,
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
        blocks::assign(
            v6,
            claims.iter().cloned(),
            &member_names,
            &retained,
            |node, held| held.max(a4.of(node).len().max(1)),
        )
    });

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
        mtu: resolved.mtu.unwrap_or(input.settings.default_mtu),
        vni,
        internal: net.spec.internal,
        masquerade: net.spec.masquerade,
        inter_pod_traffic: net.spec.inter_pod_traffic,
        namespace_selector: net.spec.namespace_selector.clone(),
        peers: Vec::new(),
    };

    let mut deletes = Vec::new();
    let mut members = Vec::with_capacity(selected.len());
    for node in &selected {
        let node_name = node.name_any();
        let canonical = node_bridge_name(&name, &node_name);
        let nbs = by_node.get(node_name.as_str()).cloned().unwrap_or_default();
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
        let mut blocks: Vec<IpNet> = a4.of(&node_name).to_vec();
        if let Some(a6) = &a6 {
            blocks.extend_from_slice(a6.of(&node_name));
        }
        let mut reserved = BTreeSet::new();
        for b in &blocks {
            let plan = if Family::of_net(b) == Family::V4 {
                Some(v4)
            } else {
                resolved.v6.as_ref()
            };
            if let Some(plan) = plan {
                reserved_in(plan, b, &mut reserved);
            }
        }
        members.push(Member {
            name: existing
                .as_ref()
                .filter(|_| !waiting)
                .map_or(canonical, |e| e.name_any()),
            node: node_name,
            address: node_address(node),
            blocks: blocks.iter().map(ToString::to_string).collect(),
            exclude: reserved.iter().map(ToString::to_string).collect(),
            existing,
            waiting,
        });
    }
    let mut release_agent_finalizer = Vec::new();
    for (node, nbs) in &by_node {
        for nb in nbs {
            if member_set.contains(node) {
                continue;
            }
            if !is_deleting(nb) {
                deletes.push(nb.name_any());
            } else if !all_nodes.contains(node)
                && status::endpoint_count(nb) == 0
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

    // Status.
    let total = children.members.len();
    let mut not_ready = Vec::new();
    for (i, m) in children.members.iter().enumerate() {
        let ready = !m.waiting
            && m.existing
                .as_ref()
                .is_some_and(|nb| status::node_bridge_ready(nb))
            && !children.needs_write(i);
        if !ready {
            not_ready.push(m.node.clone());
        }
    }
    let ready = total - not_ready.len();
    let endpoints: i32 = mine.iter().map(|nb| status::endpoint_count(nb)).sum();

    // Free IPv4 addresses: unassigned blocks count in full; a node's blocks count what its
    // agent reports when the report is for those blocks, else in full.
    let mut free = i128::from(v4.assignable_total());
    for (node, blocks) in &a4.by_node {
        let capacity: u64 = blocks.iter().map(|b| v4.assignable_in_block(b)).sum();
        let reported = by_node
            .get(node.as_str())
            .and_then(|v| v.iter().find(|nb| !is_deleting(nb)))
            .filter(|nb| {
                let spec_v4: Vec<&String> = nb
                    .spec
                    .blocks
                    .iter()
                    .filter(|b| {
                        b.parse::<IpNet>()
                            .is_ok_and(|n| Family::of_net(&n) == Family::V4)
                    })
                    .collect();
                spec_v4.len() == blocks.len()
            })
            .and_then(|nb| nb.status.as_ref())
            .map(|s| i128::from(s.free_addresses.max(0)));
        free = free - i128::from(capacity)
            + reported
                .unwrap_or(i128::from(capacity))
                .min(i128::from(capacity));
    }

    let mut assigned: Vec<(IpNet, String)> = a4
        .by_node
        .iter()
        .chain(a6.iter().flat_map(|a| a.by_node.iter()))
        .flat_map(|(node, blocks)| blocks.iter().map(move |b| (*b, node.clone())))
        .collect();
    assigned.sort_by_key(|(b, _)| (Family::of_net(b), b.network()));

    let mut status = prev.clone();
    status.observed_generation = generation;
    status.gateway = Some(v4.gateway.to_string());
    status.gateway_v6 = resolved.v6.as_ref().map(|p| p.gateway.to_string());
    status.bridge = Some(resolved.bridge.clone());
    status.vni = Some(vni);
    status.total_nodes = i32::try_from(total).unwrap_or(i32::MAX);
    status.ready_nodes = i32::try_from(ready).unwrap_or(i32::MAX);
    status.ready_summary = Some(status::ready_summary(
        status.ready_nodes,
        status.total_nodes,
    ));
    status.endpoints = endpoints;
    status.free_addresses = Some(i64::try_from(free.max(0)).unwrap_or(i64::MAX));
    status.blocks = assigned
        .iter()
        .map(|(b, node)| BlockAssignment {
            cidr: b.to_string(),
            node: node.clone(),
        })
        .collect();

    let mut summary = format!(
        "subnet {}, gateway {}, bridge {}, VNI {vni}",
        v4.subnet, v4.gateway, resolved.bridge
    );
    if let Some(v6) = &resolved.v6 {
        summary.push_str(&format!(
            ", IPv6 subnet {} gateway {}",
            v6.subnet, v6.gateway
        ));
    }
    status::set_condition(
        &mut status.conditions,
        Cond {
            type_: ACCEPTED,
            status: true,
            reason: reason::ACCEPTED,
            message: summary,
        },
        generation,
        input.now,
    );
    let mut unmet: Vec<String> = a4.unmet.clone();
    if let Some(a6) = &a6 {
        unmet.extend(a6.unmet.iter().cloned());
    }
    unmet.sort();
    unmet.dedup();
    let ready_cond = if total == 0 {
        Cond {
            type_: READY,
            status: false,
            reason: reason::NO_MATCHING_NODES,
            message: "the nodeSelector matches no node".to_owned(),
        }
    } else if !unmet.is_empty() {
        Cond {
            type_: READY,
            status: false,
            reason: reason::ADDRESSES_EXHAUSTED,
            message: format!(
                "{} has no free /{} block left for: {} ({} blocks in use); pods on those nodes get no address until blocks are released or a larger network is used",
                v4.range,
                v4.block_prefix,
                status::name_list(&unmet, 5),
                status.blocks.len()
            ),
        }
    } else if not_ready.is_empty() {
        Cond {
            type_: READY,
            status: true,
            reason: reason::ALL_NODES_READY,
            message: format!("{ready}/{total} nodes ready"),
        }
    } else {
        Cond {
            type_: READY,
            status: false,
            reason: reason::NODES_NOT_READY,
            message: format!(
                "{ready}/{total} nodes ready; waiting for {}",
                status::name_list(&not_ready, 5)
            ),
        }
    };
    status::set_condition(&mut status.conditions, ready_cond, generation, input.now);

    NetworkPlan {
        events: status::transition_events(&prev.conditions, &status.conditions),
        blocks_used: a4.len() + a6.as_ref().map_or(0, Assignment::len),
        status,
        children: Some(children),
        rejection: None,
    }
}

/// What deleting a network takes.
#[derive(Clone, Debug, Default)]
pub struct CleanupPlan {
    /// Pods still attached (`namespace/pod on node`); non-empty means deletion is held.
    pub blocked_by: Vec<String>,
    /// NodeBridges to delete now.
    pub deletes: Vec<String>,
    /// Terminating NodeBridges of nodes that no longer exist: their agent finalizer is removed.
    pub release_agent_finalizer: Vec<Arc<NodeBridge>>,
    /// NodeBridges that still exist; the network's finalizer stays until none does.
    pub remaining: usize,
    /// The status to write, when it changes.
    pub status: Option<BridgeNetworkStatus>,
    /// Events for condition changes.
    pub events: Vec<PlannedEvent>,
}

/// Whether the network carries `bridgenet.io/force-delete: "true"`.
pub fn force_delete(net: &BridgeNetwork) -> bool {
    net.annotations()
        .get(ANNOTATION_FORCE_DELETE)
        .is_some_and(|v| v == "true")
}

/// Plans one step of deleting `net`: held while pods are attached (unless forced), then every
/// NodeBridge is deleted, and the network's finalizer goes once the agents have let them go.
pub fn plan_cleanup(
    net: &BridgeNetwork,
    nodes: &[Arc<Node>],
    existing: &[Arc<NodeBridge>],
    now: &Time,
) -> CleanupPlan {
    let name = net.name_any();
    let generation = net.metadata.generation;
    let mine: Vec<&Arc<NodeBridge>> = existing
        .iter()
        .filter(|nb| labels_of(nb).0 == Some(name.as_str()))
        .collect();
    let forced = force_delete(net);
    let mut plan = CleanupPlan::default();
    if !forced {
        for nb in &mine {
            let node = node_of(nb);
            let Some(st) = &nb.status else { continue };
            for ep in &st.endpoints {
                plan.blocked_by
                    .push(format!("{}/{} on {node}", ep.namespace, ep.pod));
            }
            let unnamed = i64::from(st.endpoint_count) - st.endpoints.len() as i64;
            if unnamed > 0 && st.endpoints.is_empty() {
                plan.blocked_by
                    .push(format!("{unnamed} endpoints on {node}"));
            }
        }
        plan.blocked_by.sort();
    }
    let all_nodes: BTreeSet<&str> = nodes
        .iter()
        .filter_map(|n| n.metadata.name.as_deref())
        .collect();
    if plan.blocked_by.is_empty() {
        for nb in &mine {
            if !is_deleting(nb) {
                plan.deletes.push(nb.name_any());
            } else if !all_nodes.contains(node_of(nb))
                && nb.finalizers().iter().any(|f| f == FINALIZER_AGENT)
            {
                plan.release_agent_finalizer.push((*nb).clone());
            }
        }
        plan.remaining = mine.len();
        // The cache's order is a hash map's: sort so that the same input gives the same plan.
        plan.deletes.sort();
        plan.release_agent_finalizer.sort_by_key(|nb| nb.name_any());
    }

    let prev = net.status.clone().unwrap_or_default();
    let mut status = prev.clone();
    let cond = if !plan.blocked_by.is_empty() {
        Cond {
            type_: READY,
            status: false,
            reason: reason::DELETION_BLOCKED,
            message: format!(
                "deletion waits for {} attached pod interfaces: {}; detach them (remove the network from the pods' {} annotation) or annotate the network {ANNOTATION_FORCE_DELETE}=true",
                plan.blocked_by.len(),
                status::name_list(&plan.blocked_by, 5),
                bridgenet_crds::ANNOTATION_NETWORKS,
            ),
        }
    } else {
        Cond {
            type_: READY,
            status: false,
            reason: reason::DELETING,
            message: format!(
                "waiting for {} nodes to tear the network down",
                plan.remaining
            ),
        }
    };
    status::set_condition(&mut status.conditions, cond, generation, now);
    // With nothing left the object is about to go: a status write would be wasted.
    let worth_saying = !plan.blocked_by.is_empty() || plan.remaining > 0;
    if worth_saying && status != prev {
        plan.events = status::transition_events(&prev.conditions, &status.conditions);
        plan.status = Some(status);
    }
    plan
}
