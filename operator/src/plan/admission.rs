//! Admission: which networks are accepted and which VNI each gets. Every verdict depends only
//! on older networks, so every replica (and every reconcile) computes the same answer.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use bridgenet_crds::conditions::Reason;
use bridgenet_crds::net::{Family, ResolvedNetwork, resolve_with};
use bridgenet_crds::v1alpha1::BridgeNetwork;
use ipnet::IpNet;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::ResourceExt;
use kube::core::Selector;
use sha2::{Digest, Sha256};

use super::settings::Settings;

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
    /// The condition reason it is written as.
    pub fn reason(self) -> Reason {
        match self {
            RejectReason::InvalidSpec => Reason::InvalidSpec,
            RejectReason::SubnetOverlap => Reason::SubnetOverlap,
            RejectReason::DuplicateBridge => Reason::DuplicateBridge,
        }
    }

    /// The condition reason as written to the API.
    pub fn as_str(self) -> &'static str {
        self.reason().as_str()
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
        /// Why; the `Accepted=False` reason.
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

/// Whether two subnets share addresses (subnets of different families never do).
fn overlaps(a: &IpNet, b: &IpNet) -> bool {
    Family::of_net(a) == Family::of_net(b) && (a.contains(&b.network()) || b.contains(&a.network()))
}

fn subnets(r: &ResolvedNetwork) -> impl Iterator<Item = IpNet> + '_ {
    r.plans().map(|p| p.subnet)
}

/// Whether two resolved networks contend for something admission hands out: address space
/// or the bridge name. A change to one may change the other's verdict.
pub fn contend(a: &ResolvedNetwork, b: &ResolvedNetwork) -> bool {
    a.bridge == b.bridge || subnets(a).any(|s| subnets(b).any(|t| overlaps(&s, &t)))
}

/// Parses a label selector; an absent one selects everything. The error names `field`.
pub(super) fn parse_selector(field: &str, sel: Option<&LabelSelector>) -> Result<Selector, String> {
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

/// One network against the cluster's ranges and the older accepted networks.
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
