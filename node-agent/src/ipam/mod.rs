//! Node IPAM: pod addresses from the node's blocks of each network (`NodeBridge.spec.blocks`),
//! journaled under `--state-dir` before they are used.
//!
//! Invariants: an address is in at most one live allocation (the in-memory map is keyed by
//! address and rebuilt from the journal on start); an allocation is durable before any
//! interface carries it; it is freed only after its interface is gone (callers delete first,
//! then [`Ipam::release`]). An allocation is keyed to its sandbox (container ID) and interface,
//! so a retried ADD gets the same address and DEL/GC find everything a sandbox holds.

pub mod journal;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};

use bridgenet_crds::ResolvedNodeBridge;
use bridgenet_crds::net::{AddressPlan, Family};
use bridgenet_crds::resolved::NodeFamily;
use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use journal::{Journal, Record};

/// Errors of the node IPAM.
#[derive(Debug, thiserror::Error)]
pub enum IpamError {
    /// A file operation on the journal failed.
    #[error("IPAM journal: {op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// Which file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// Another process holds the journal.
    #[error(
        "IPAM journal lock {path} is held by another process (a second agent on this node?): {source}"
    )]
    Locked {
        /// The lock file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The journal is damaged before its last record.
    #[error(
        "IPAM journal {path} is damaged at byte {offset}; refusing to guess which addresses are in use"
    )]
    Corrupt {
        /// Which file.
        path: PathBuf,
        /// Where the damage starts.
        offset: usize,
    },
    /// A record could not be encoded.
    #[error("IPAM journal: encoding a record: {0}")]
    Encode(serde_json::Error),
    /// Every address of the node's blocks is in use.
    #[error("network {network}: no free {family} address left in this node's blocks {blocks}")]
    Exhausted {
        /// The BridgeNetwork asked for.
        network: String,
        /// `IPv4`/`IPv6`.
        family: &'static str,
        /// The blocks searched.
        blocks: String,
    },
    /// A requested address is held by another pod.
    #[error("network {network}: address {ip} is already in use by {holder}")]
    Taken {
        /// The BridgeNetwork asked for.
        network: String,
        /// The address.
        ip: IpAddr,
        /// Who holds it (`namespace/pod` or container ID).
        holder: String,
    },
    /// A requested address is not one a pod may have: outside the subnet (or range), the
    /// gateway, the network's first or last address, or excluded.
    #[error(
        "network {network}: address {ip} cannot be given to a pod (outside {subnet}, or its gateway, network, broadcast or an excluded address)"
    )]
    NotAssignable {
        /// The BridgeNetwork asked for.
        network: String,
        /// The address.
        ip: IpAddr,
        /// The subnet of the address's family.
        subnet: String,
    },
    /// A requested address is outside what this node may hand out.
    #[error(
        "network {network}: address {ip} is not available on this node (blocks {blocks}, excluding gateway and reserved addresses)"
    )]
    OutOfRange {
        /// The BridgeNetwork asked for.
        network: String,
        /// The address.
        ip: IpAddr,
        /// The node's blocks.
        blocks: String,
    },
}

impl IpamError {
    fn io(op: &'static str, path: &Path, source: std::io::Error) -> Self {
        Self::Io {
            op,
            path: path.to_owned(),
            source,
        }
    }

    /// Whether the pod's request is at fault (rather than the node).
    pub fn is_request_error(&self) -> bool {
        matches!(
            self,
            Self::Taken { .. } | Self::OutOfRange { .. } | Self::NotAssignable { .. }
        )
    }
}

/// One address in use.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Allocation {
    /// BridgeNetwork name.
    pub network: String,
    /// The address.
    pub ip: IpAddr,
    /// Prefix length of the network's subnet (what the interface gets).
    pub prefix: u8,
    /// Sandbox (pod infra container) ID.
    pub container_id: String,
    /// Interface name in the pod.
    pub ifname: String,
    /// `namespace/name` of the pod, when known.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub pod: String,
    /// Name of the CNI network configuration that asked (empty for hot-plug), for GC.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub cni_name: String,
    /// Made by a delegate call (a Multus NetworkAttachmentDefinition naming the network), not
    /// from the pod's `bridgenet.io/networks`: hot-plug leaves it alone, and the delegating
    /// plugin, not the agent, reports it in `k8s.v1.cni.cncf.io/network-status`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub delegate: bool,
    /// Host end of the pod's veth, deleted before the address is freed.
    pub host_veth: String,
    /// MAC of the pod's interface.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub mac: String,
    /// Unix seconds of allocation.
    pub since: u64,
    /// The `AddressClaim` that holds the address cluster-wide (a static or sticky address):
    /// released (deleted, or marked released if sticky) before the journal frees the address.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub claim: String,
    /// The claim is sticky: it outlives the pod, for a successor of the same name.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub sticky: bool,
    /// A DEL has answered for it: its interface is being deleted, after which the address is
    /// freed. Journaled before the answer, so that an agent killed in between finishes the
    /// job when it starts again; until then the address stays taken.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub releasing: bool,
    /// Reserved by an attach call that has not succeeded (yet): its interface may be half made
    /// or never come, so it is no endpoint, no name in DNS and no entry of the pod's
    /// network-status. Journaled with the reservation; cleared by [`Ipam::settle`] when the call
    /// succeeds. An agent killed in between finds it still set: a CNI ADD that never answered
    /// is the runtime's to DEL, a hot attach is made again by hot-plug.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub pending: bool,
}

impl Allocation {
    /// `namespace/pod`, or the sandbox ID when the pod is not known.
    pub fn holder(&self) -> String {
        if self.pod.is_empty() {
            self.container_id.clone()
        } else {
            self.pod.clone()
        }
    }
}

/// What holds an address on this node's view.
#[derive(Debug)]
pub enum Holder<'a> {
    /// An allocation of this node's journal.
    Allocation(&'a Allocation),
    /// An `AddressClaim` of some node.
    Claim(&'a ClaimMark),
}

impl std::fmt::Display for Holder<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Allocation(a) => f.write_str(&a.holder()),
            Self::Claim(m) => write!(f, "{} (address claim)", m.holder),
        }
    }
}

/// What one network lets this node hand out, derived from its resolved NodeBridge: the shared
/// address plans (`bridgenet_crds::net`) restricted to the node's blocks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pool {
    /// The BridgeNetwork, named in allocations and errors.
    pub network: String,
    /// IPv4 addresses of the network.
    pub v4: AddressPlan,
    /// IPv6 addresses, for dual stack.
    pub v6: Option<AddressPlan>,
    /// The node's blocks, IPv4 first; allocation never leaves them.
    pub blocks: Vec<IpNet>,
}

impl Pool {
    /// What this node may hand out for a resolved NodeBridge.
    pub fn from_resolved(spec: &ResolvedNodeBridge) -> Self {
        let plan = |half: &NodeFamily| AddressPlan {
            subnet: half.subnet,
            gateway: half.gateway_ip(),
            // The node only ever allocates inside its blocks, which the operator carved from
            // the range; the subnet is the right bound for the reserved-address rules.
            range: half.subnet,
            exclude: half.exclude.clone(),
            block_prefix: half.subnet.prefix_len(),
        };
        Self {
            network: spec.network.clone(),
            v4: plan(&spec.v4),
            v6: spec.v6.as_ref().map(plan),
            blocks: spec
                .families()
                .flat_map(|half| half.blocks.iter().copied())
                .collect(),
        }
    }

    /// The plans, IPv4 first.
    pub fn plans(&self) -> impl Iterator<Item = &AddressPlan> {
        std::iter::once(&self.v4).chain(self.v6.as_ref())
    }

    /// The plan an address belongs to.
    pub fn plan_of(&self, ip: IpAddr) -> Option<&AddressPlan> {
        self.plans().find(|p| p.subnet.contains(&ip))
    }

    /// Whether the node may hand `ip` to a pod.
    pub fn admits(&self, ip: IpAddr) -> bool {
        self.plan_of(ip).is_some_and(|p| p.is_assignable(ip))
            && self.blocks.iter().any(|b| b.contains(&ip))
    }

    /// Assignable addresses in the node's blocks (IPv4), for status counts.
    pub fn capacity_v4(&self) -> u64 {
        self.blocks
            .iter()
            .filter(|b| Family::of_net(b) == Family::V4)
            .map(|b| self.v4.assignable_in_block(b))
            .sum()
    }

    fn blocks_text(&self) -> String {
        self.blocks
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(",")
    }
}

fn min_ip(family: Family) -> IpAddr {
    match family {
        Family::V4 => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        Family::V6 => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
    }
}

fn max_ip(family: Family) -> IpAddr {
    match family {
        Family::V4 => IpAddr::V4(Ipv4Addr::BROADCAST),
        Family::V6 => IpAddr::V6(Ipv6Addr::from(u128::MAX)),
    }
}

/// What one attachment asks of IPAM.
#[derive(Clone, Debug)]
pub struct AllocRequest {
    /// Sandbox ID.
    pub container_id: String,
    /// Interface in the pod.
    pub ifname: String,
    /// `namespace/name`.
    pub pod: String,
    /// CNI configuration name (empty for hot-plug).
    pub cni_name: String,
    /// A delegate call's attachment (see [`Allocation::delegate`]).
    pub delegate: bool,
    /// Host veth name.
    pub host_veth: String,
    /// Pod MAC.
    pub mac: String,
    /// A specific address asked for, inside the node's blocks (without [`ClaimPlan`]).
    pub ip: Option<IpAddr>,
    /// The addresses are held cluster-wide by `AddressClaim`s (see [`ClaimPlan`]).
    pub claims: Option<ClaimPlan>,
}

/// How an attachment's addresses are claimed cluster-wide. A wanted address may lie anywhere in
/// the network's subnet, not only in this node's blocks: the claim, not the node, decides who
/// has it (the journal still refuses one this node already gave out).
#[derive(Clone, Debug, Default)]
pub struct ClaimPlan {
    /// Addresses asked for (a static `ip`, or a sticky claim's address), at most one per family.
    pub wanted: Vec<IpAddr>,
    /// Claim every address, also those found free in the node's blocks.
    pub sticky: bool,
}

/// An address some `AddressClaim` holds, as this node last saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClaimMark {
    /// The claim's UID (a claim deleted and created again is another one).
    pub uid: String,
    /// `namespace/pod` holding it, for messages.
    pub holder: String,
}

/// The node's allocations.
#[derive(Debug)]
pub struct Ipam {
    journal: Journal,
    /// (network, address) → allocation.
    allocs: BTreeMap<(String, IpAddr), Allocation>,
    /// The address handed out last per (network, family): the next search starts after it, so
    /// a freed address is not reused at once (like host-local) and a stale ARP entry or a late
    /// packet meets no one.
    last: HashMap<(String, Family), IpAddr>,
    /// Notified after every change of the allocations, for the reports that follow them.
    changed: std::sync::Arc<tokio::sync::Notify>,
    /// Addresses held by `AddressClaim`s anywhere in the cluster, never handed out from the
    /// node's blocks. Not journaled: the claims are the record, re-read after a restart and
    /// before a new block is first used.
    claimed: BTreeMap<(String, IpAddr), ClaimMark>,
}

impl Ipam {
    /// Notified (a stored permit, never lost) after allocations were added or freed.
    pub fn changes(&self) -> std::sync::Arc<tokio::sync::Notify> {
        self.changed.clone()
    }

    /// Opens the journal under `state_dir/ipam` and rebuilds the allocations.
    pub fn open(state_dir: &Path) -> Result<Self, IpamError> {
        let (journal, records) = Journal::open(&state_dir.join("ipam"))?;
        let mut allocs = BTreeMap::new();
        for record in records {
            match record {
                Record::Alloc(a) => {
                    allocs.insert((a.network.clone(), a.ip), a);
                }
                Record::Free { network, ip } => {
                    allocs.remove(&(network, ip));
                }
            }
        }
        let mut ipam = Self {
            journal,
            allocs,
            last: HashMap::new(),
            changed: std::sync::Arc::default(),
            claimed: BTreeMap::new(),
        };
        if ipam.journal.wants_compaction(ipam.allocs.len()) {
            ipam.journal.compact(ipam.allocs.values())?;
        }
        Ok(ipam)
    }

    /// Every live allocation.
    pub fn all(&self) -> impl Iterator<Item = &Allocation> {
        self.allocs.values()
    }

    /// The allocations of one sandbox.
    pub fn of_container(&self, container_id: &str) -> Vec<Allocation> {
        self.allocs
            .values()
            .filter(|a| a.container_id == container_id)
            .cloned()
            .collect()
    }

    /// Marks the held allocations among `allocs` as releasing and makes that durable; returns
    /// them as now journaled. Their addresses stay taken until [`Ipam::release`].
    pub fn mark_releasing(&mut self, allocs: &[Allocation]) -> Result<Vec<Allocation>, IpamError> {
        let marked: Vec<Allocation> = allocs
            .iter()
            .filter_map(|a| self.allocs.get(&(a.network.clone(), a.ip)))
            .filter(|held| {
                allocs
                    .iter()
                    .any(|a| a.container_id == held.container_id && a.ifname == held.ifname)
            })
            .map(|held| Allocation {
                releasing: true,
                ..held.clone()
            })
            .collect();
        let records: Vec<Record> = marked
            .iter()
            .filter(|a| {
                self.allocs
                    .get(&(a.network.clone(), a.ip))
                    .is_some_and(|h| !h.releasing)
            })
            .cloned()
            .map(Record::Alloc)
            .collect();
        self.journal.append(&records)?;
        for a in &marked {
            self.allocs.insert((a.network.clone(), a.ip), a.clone());
        }
        Ok(marked)
    }

    /// The allocations a DEL answered for whose interfaces are not known to be gone yet.
    pub fn releasing(&self) -> Vec<Allocation> {
        self.allocs
            .values()
            .filter(|a| a.releasing)
            .cloned()
            .collect()
    }

    /// Live allocations in `network`.
    pub fn count(&self, network: &str) -> usize {
        self.allocs.keys().filter(|(n, _)| n == network).count()
    }

    /// Reserves the addresses of one attachment (IPv4, and IPv6 for dual stack) and makes them
    /// durable before returning. A retry for the same sandbox and interface returns what it
    /// already holds.
    pub fn allocate(
        &mut self,
        pool: &Pool,
        req: &AllocRequest,
    ) -> Result<Vec<Allocation>, IpamError> {
        let held: Vec<Allocation> = self
            .allocs
            .values()
            .filter(|a| {
                a.network == pool.network
                    && a.container_id == req.container_id
                    && a.ifname == req.ifname
            })
            .cloned()
            .collect();
        if !held.is_empty() {
            return Ok(held);
        }
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let wanted: Vec<IpAddr> = match &req.claims {
            Some(c) => c.wanted.clone(),
            None => req.ip.into_iter().collect(),
        };
        let mut out = Vec::new();
        for plan in pool.plans() {
            let subnet = plan.subnet;
            let family = plan.family();
            let wanted = wanted.iter().copied().find(|ip| Family::of(*ip) == family);
            let ip = match (wanted, &req.claims) {
                (Some(ip), Some(_)) => self.check_claimable(pool, plan, ip)?,
                (Some(ip), None) => self.check_requested(pool, ip)?,
                (None, _) => self.find_free(pool, plan)?,
            };
            let claim = match &req.claims {
                Some(c) if wanted.is_some() || c.sticky => {
                    bridgenet_crds::claims::claim_name(&pool.network, ip)
                }
                _ => String::new(),
            };
            out.push(Allocation {
                network: pool.network.clone(),
                ip,
                prefix: subnet.prefix_len(),
                container_id: req.container_id.clone(),
                ifname: req.ifname.clone(),
                pod: req.pod.clone(),
                cni_name: req.cni_name.clone(),
                delegate: req.delegate,
                host_veth: req.host_veth.clone(),
                mac: req.mac.clone(),
                since: now,
                sticky: !claim.is_empty() && req.claims.as_ref().is_some_and(|c| c.sticky),
                claim,
                releasing: false,
                pending: true,
            });
        }
        if let Some(ip) = wanted
            .into_iter()
            .find(|ip| !out.iter().any(|a| a.ip == *ip))
        {
            if req.claims.is_some() {
                return Err(IpamError::NotAssignable {
                    network: pool.network.clone(),
                    ip,
                    subnet: pool.v4.subnet.to_string(),
                });
            }
            return Err(IpamError::OutOfRange {
                network: pool.network.clone(),
                ip,
                blocks: pool.blocks_text(),
            });
        }
        let records: Vec<Record> = out.iter().cloned().map(Record::Alloc).collect();
        // Durable first, visible second: if the write fails nothing was handed out.
        self.journal.append(&records)?;
        for a in &out {
            self.last
                .insert((a.network.clone(), Family::of(a.ip)), a.ip);
            self.allocs.insert((a.network.clone(), a.ip), a.clone());
        }
        self.changed.notify_one();
        Ok(out)
    }

    fn check_requested(&self, pool: &Pool, ip: IpAddr) -> Result<IpAddr, IpamError> {
        if !pool.admits(ip) {
            return Err(IpamError::OutOfRange {
                network: pool.network.clone(),
                ip,
                blocks: pool.blocks_text(),
            });
        }
        if let Some(holder) = self.holder_of(&pool.network, ip) {
            return Err(IpamError::Taken {
                network: pool.network.clone(),
                ip,
                holder: holder.to_string(),
            });
        }
        Ok(ip)
    }

    /// A wanted address of a claimed attachment: any assignable address of the subnet that
    /// this node has not given out. Whether another pod elsewhere holds it is the claim's to
    /// say.
    fn check_claimable(
        &self,
        pool: &Pool,
        plan: &AddressPlan,
        ip: IpAddr,
    ) -> Result<IpAddr, IpamError> {
        if !plan.is_assignable(ip) {
            return Err(IpamError::NotAssignable {
                network: pool.network.clone(),
                ip,
                subnet: plan.subnet.to_string(),
            });
        }
        if let Some(holder) = self.allocs.get(&(pool.network.clone(), ip)) {
            return Err(IpamError::Taken {
                network: pool.network.clone(),
                ip,
                holder: holder.holder(),
            });
        }
        Ok(ip)
    }

    /// Who holds `ip` on `network` on this node: an allocation of the journal, or a claim this
    /// node saw. `None` when it is free here.
    pub fn holder_of(&self, network: &str, ip: IpAddr) -> Option<Holder<'_>> {
        let key = (network.to_owned(), ip);
        if let Some(a) = self.allocs.get(&key) {
            return Some(Holder::Allocation(a));
        }
        self.claimed.get(&key).map(Holder::Claim)
    }

    /// Records that a claim holds `ip` on `network` (seen in the cluster, or granted here).
    pub fn mark_claimed(&mut self, network: &str, ip: IpAddr, mark: ClaimMark) {
        self.claimed.insert((network.to_owned(), ip), mark);
    }

    /// Forgets the claim of `ip` on `network` if it is the one with `uid` (its object is gone).
    pub fn unmark_claimed(&mut self, network: &str, ip: IpAddr, uid: &str) {
        let key = (network.to_owned(), ip);
        if self.claimed.get(&key).is_some_and(|m| m.uid == uid) {
            self.claimed.remove(&key);
        }
    }

    /// Replaces what is known of `network`'s claims with a fresh list of them.
    pub fn reset_claimed(
        &mut self,
        network: &str,
        marks: impl IntoIterator<Item = (IpAddr, ClaimMark)>,
    ) {
        self.claimed.retain(|(n, _), _| n != network);
        for (ip, mark) in marks {
            self.claimed.insert((network.to_owned(), ip), mark);
        }
    }

    fn find_free(&self, pool: &Pool, plan: &AddressPlan) -> Result<IpAddr, IpamError> {
        let family = plan.family();
        let range = (pool.network.clone(), min_ip(family))..=(pool.network.clone(), max_ip(family));
        let used: BTreeSet<IpAddr> = self
            .allocs
            .range(range.clone())
            .map(|((_, ip), _)| *ip)
            .chain(self.claimed.range(range).map(|((_, ip), _)| *ip))
            .collect();
        let last = self.last.get(&(pool.network.clone(), family)).copied();
        let mut blocks: Vec<&IpNet> = pool
            .blocks
            .iter()
            .filter(|b| Family::of_net(b) == family)
            .collect();
        // Round-robin across blocks too: start with the block of the last handed-out address.
        if let Some(pos) = last.and_then(|ip| blocks.iter().position(|b| b.contains(&ip))) {
            blocks.rotate_left(pos);
        }
        blocks
            .into_iter()
            .find_map(|b| plan.next_free(b, &used, last))
            .ok_or_else(|| IpamError::Exhausted {
                network: pool.network.clone(),
                family: if family == Family::V6 { "IPv6" } else { "IPv4" },
                blocks: pool.blocks_text(),
            })
    }

    /// Marks the allocations of an attach call that succeeded as settled (see
    /// [`Allocation::pending`]). Visible at once; journaled without waiting for the disk (see
    /// [`Journal::append_unsynced`]): an agent killed afterwards still finds it, and a machine
    /// that lost it lost the pods too. Allocations no longer held, or held by another
    /// sandbox, are left alone.
    pub fn settle(&mut self, allocs: &[Allocation]) -> Result<(), IpamError> {
        let mut records = Vec::new();
        for a in allocs {
            if let Some(held) = self.allocs.get_mut(&(a.network.clone(), a.ip))
                && held.pending
                && held.container_id == a.container_id
                && held.ifname == a.ifname
            {
                held.pending = false;
                records.push(Record::Alloc(held.clone()));
            }
        }
        if records.is_empty() {
            return Ok(());
        }
        self.changed.notify_one();
        self.journal.append_unsynced(&records)
    }

    /// Frees allocations (their interfaces must already be gone). Unknown ones are ignored,
    /// so a repeated DEL succeeds.
    pub fn release(&mut self, allocs: &[Allocation]) -> Result<(), IpamError> {
        let records: Vec<Record> = allocs
            .iter()
            .filter(|a| {
                self.allocs
                    .get(&(a.network.clone(), a.ip))
                    .is_some_and(|held| {
                        held.container_id == a.container_id && held.ifname == a.ifname
                    })
            })
            .map(|a| Record::Free {
                network: a.network.clone(),
                ip: a.ip,
            })
            .collect();
        self.journal.append(&records)?;
        for r in &records {
            if let Record::Free { network, ip } = r {
                self.allocs.remove(&(network.clone(), *ip));
            }
        }
        if !records.is_empty() {
            self.changed.notify_one();
        }
        if self.journal.wants_compaction(self.allocs.len()) {
            self.journal.compact(self.allocs.values())?;
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn pool() -> Pool {
        let spec: bridgenet_crds::NodeBridgeSpec = serde_json::from_value(serde_json::json!({
            "network": "n", "node": "node-a", "bridge": "br-n", "subnet": "172.20.0.0/24",
            "gateway": "172.20.0.1", "gatewayMac": "02:00:00:00:00:01",
            "blocks": ["172.20.0.0/29"], "mtu": 1450, "vni": 1,
        }))
        .unwrap();
        Pool::from_resolved(&bridgenet_crds::resolve_node_bridge(&spec).unwrap())
    }

    fn req(cid: &str) -> AllocRequest {
        AllocRequest {
            container_id: cid.into(),
            ifname: "net1".into(),
            pod: format!("default/{cid}"),
            cni_name: "k8s".into(),
            delegate: false,
            host_veth: format!("v{cid}"),
            mac: String::new(),
            ip: None,
            claims: None,
        }
    }

    #[test]
    fn hands_out_each_address_once_and_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let mut ipam = Ipam::open(dir.path()).unwrap();
        let mut seen = Vec::new();
        // /29 inside a /24: .0 is the subnet's network address, .1 the gateway → .2..=.7.
        for i in 0..6 {
            let a = ipam.allocate(&pool(), &req(&format!("c{i}"))).unwrap();
            seen.push(a[0].ip);
        }
        let mut sorted = seen.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), 6);
        assert!(!seen.contains(&"172.20.0.1".parse().unwrap()));
        assert!(matches!(
            ipam.allocate(&pool(), &req("c9")),
            Err(IpamError::Exhausted { .. })
        ));
        // Idempotent retry.
        assert_eq!(ipam.allocate(&pool(), &req("c3")).unwrap()[0].ip, seen[3]);
        let c2 = ipam.of_container("c2");
        ipam.release(&c2).unwrap();
        ipam.release(&c2).unwrap();
        drop(ipam);
        let mut ipam = Ipam::open(dir.path()).unwrap();
        assert_eq!(ipam.all().count(), 5);
        let again = ipam.allocate(&pool(), &req("c10")).unwrap();
        assert_eq!(again[0].ip, seen[2], "the only free address");
    }

    #[test]
    fn a_second_opener_is_refused_until_the_first_is_gone() {
        let dir = tempfile::tempdir().unwrap();
        let first = Ipam::open(dir.path()).unwrap();
        assert!(matches!(
            Ipam::open(dir.path()),
            Err(IpamError::Locked { .. })
        ));
        drop(first);
        Ipam::open(dir.path()).unwrap();
    }

    #[test]
    fn requested_addresses() {
        let dir = tempfile::tempdir().unwrap();
        let mut ipam = Ipam::open(dir.path()).unwrap();
        let mut r = req("a");
        r.ip = Some("172.20.0.5".parse().unwrap());
        assert_eq!(ipam.allocate(&pool(), &r).unwrap()[0].ip, r.ip.unwrap());
        let mut r2 = req("b");
        r2.ip = r.ip;
        assert!(matches!(
            ipam.allocate(&pool(), &r2),
            Err(IpamError::Taken { .. })
        ));
        r2.ip = Some("172.20.0.1".parse().unwrap());
        assert!(matches!(
            ipam.allocate(&pool(), &r2),
            Err(IpamError::OutOfRange { .. })
        ));
        r2.ip = Some("172.20.0.9".parse().unwrap());
        assert!(matches!(
            ipam.allocate(&pool(), &r2),
            Err(IpamError::OutOfRange { .. })
        ));
    }

    #[test]
    fn torn_tail_is_dropped_and_damage_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut ipam = Ipam::open(dir.path()).unwrap();
        ipam.allocate(&pool(), &req("a")).unwrap();
        drop(ipam);
        let path = dir.path().join("ipam").join(journal::FILE_NAME);
        let mut text = std::fs::read(&path).unwrap();
        text.extend_from_slice(br#"{"op":"alloc","netw"#);
        std::fs::write(&path, &text).unwrap();
        let ipam = Ipam::open(dir.path()).unwrap();
        assert_eq!(ipam.all().count(), 1);
        drop(ipam);
        let mut text = b"garbage\n".to_vec();
        text.extend(std::fs::read(&path).unwrap());
        std::fs::write(&path, &text).unwrap();
        assert!(matches!(
            Ipam::open(dir.path()),
            Err(IpamError::Corrupt { .. })
        ));
    }

    /// A DEL's answer marks its allocations releasing: durable, still taken, and freed only
    /// by the release that follows the interface's deletion; a compaction keeps the mark.
    #[test]
    fn releasing_is_durable_and_keeps_the_address_taken() {
        let dir = tempfile::tempdir().unwrap();
        let mut ipam = Ipam::open(dir.path()).unwrap();
        let a = ipam.allocate(&pool(), &req("gone")).unwrap();
        ipam.allocate(&pool(), &req("stays")).unwrap();
        let marked = ipam.mark_releasing(&a).unwrap();
        assert_eq!(marked.len(), 1);
        assert!(marked[0].releasing);
        // Marking again writes nothing new and changes nothing.
        assert_eq!(ipam.mark_releasing(&a).unwrap(), marked);
        drop(ipam);
        let mut ipam = Ipam::open(dir.path()).unwrap();
        assert_eq!(ipam.releasing(), marked, "survives a restart");
        for i in 0..4 {
            let b = ipam.allocate(&pool(), &req(&format!("new{i}"))).unwrap();
            assert_ne!(b[0].ip, a[0].ip, "a releasing address is still taken");
        }
        ipam.journal.compact(ipam.allocs.values()).unwrap();
        drop(ipam);
        let mut ipam = Ipam::open(dir.path()).unwrap();
        assert_eq!(ipam.releasing(), marked, "compaction keeps the mark");
        ipam.release(&marked).unwrap();
        assert!(ipam.releasing().is_empty());
        assert!(ipam.of_container("gone").is_empty());
        assert_eq!(ipam.of_container("stays").len(), 1);
    }

    /// A reservation is pending until its call settles it; the mark survives a restart (an
    /// agent killed mid-ADD finds its reservation pending, one killed after finds it settled)
    /// and compaction. Journals written before the mark existed read as settled.
    #[test]
    fn a_reservation_is_pending_until_settled_and_both_survive_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let mut ipam = Ipam::open(dir.path()).unwrap();
        let cut = ipam.allocate(&pool(), &req("cut")).unwrap();
        let done = ipam.allocate(&pool(), &req("done")).unwrap();
        assert!(cut[0].pending && done[0].pending);
        ipam.settle(&done).unwrap();
        // Settling again, or what another sandbox holds, changes nothing.
        ipam.settle(&done).unwrap();
        let other = Allocation {
            container_id: "other".into(),
            ..cut[0].clone()
        };
        ipam.settle(&[other]).unwrap();
        let pending = |ipam: &Ipam, id: &str| ipam.of_container(id)[0].pending;
        assert!(pending(&ipam, "cut") && !pending(&ipam, "done"));
        drop(ipam);
        let mut ipam = Ipam::open(dir.path()).unwrap();
        assert!(
            pending(&ipam, "cut") && !pending(&ipam, "done"),
            "after a restart"
        );
        ipam.journal.compact(ipam.allocs.values()).unwrap();
        drop(ipam);
        let ipam = Ipam::open(dir.path()).unwrap();
        assert!(
            pending(&ipam, "cut") && !pending(&ipam, "done"),
            "after compaction"
        );
        drop(ipam);

        let old = tempfile::tempdir().unwrap();
        let journal = old.path().join("ipam");
        std::fs::create_dir_all(&journal).unwrap();
        std::fs::write(
            journal.join(journal::FILE_NAME),
            r#"{"op":"alloc","network":"n","ip":"172.20.0.2","prefix":24,"containerId":"sb","ifname":"net1","hostVeth":"vsb","since":1}
"#,
        )
        .unwrap();
        let ipam = Ipam::open(old.path()).unwrap();
        assert!(
            !pending(&ipam, "sb"),
            "an older agent's allocation is settled"
        );
    }

    #[test]
    fn compaction_keeps_live_set() {
        let dir = tempfile::tempdir().unwrap();
        let mut ipam = Ipam::open(dir.path()).unwrap();
        ipam.allocate(&pool(), &req("keep")).unwrap();
        for i in 0..700 {
            let a = ipam.allocate(&pool(), &req(&format!("t{i}"))).unwrap();
            ipam.release(&a).unwrap();
        }
        drop(ipam);
        let path = dir.path().join("ipam").join(journal::FILE_NAME);
        let lines = std::fs::read_to_string(&path).unwrap().lines().count();
        assert!(lines < 1100, "compacted: {lines}");
        let ipam = Ipam::open(dir.path()).unwrap();
        assert_eq!(ipam.of_container("keep").len(), 1);
        assert_eq!(ipam.all().count(), 1);
    }
}
