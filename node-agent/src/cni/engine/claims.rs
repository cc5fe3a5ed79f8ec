//! Addresses held cluster-wide by `AddressClaim`s: a static address anywhere in the subnet
//! (docker `--ip`), and sticky addresses that a pod of the same name gets back.
//!
//! The claim object's name is the network and the address, so the API server decides between
//! two claimers: one creates it, the other finds it. The owner of the address's block grants it
//! (this node's journal is the only record of what this node gave out), so a claim never takes
//! an address a node already handed out, and no node hands out a claimed one: every agent keeps
//! the claimed addresses out of its dynamic allocation, and re-reads the claims (a consistent
//! list) before it first allocates from blocks it has not fenced yet.
//!
//! On this node the order is the journal's: the allocation (naming its claim) is journaled
//! before the claim is created, and the claim is released (deleted, or marked released if
//! sticky) before the allocation is freed. A crash at any step leaves a journaled allocation
//! that DEL, CNI GC or the reconcile releases, claim first.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use bridgenet_crds::net::Family;
use bridgenet_crds::v1alpha1::{ClaimHolder, ClaimPhase, address_claim_labels};
use bridgenet_crds::{AddressClaim, AddressClaimSpec, AddressClaimStatus, ResolvedNodeBridge};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::ResourceExt;
use kube::api::ObjectMeta;

use super::error::reject;
use super::{ClaimWriteError, Created, Directory, Engine, Notice, PodRef, Target};
use crate::cni::annotation::NetworkRequest;
use crate::cni::types::{CniError, code};
use crate::ipam::{Allocation, ClaimMark, ClaimPlan, Holder, Pool};

/// How long an attach waits for the owner of an address's block to grant its claim.
const GRANT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a sticky attach waits for its predecessor (the pod of the same name being torn
/// down) to release the address.
const PREDECESSOR_WAIT: Duration = Duration::from_secs(20);
const POLL: Duration = Duration::from_millis(50);

/// What an attachment's claims need: the addresses to ask IPAM for, the sticky claims of a
/// predecessor it takes over, and the pod's UID.
pub(super) struct ClaimedRequest {
    pub(super) plan: ClaimPlan,
    takeovers: Vec<AddressClaim>,
    pod_uid: String,
}

fn address_of(claim: &AddressClaim) -> Option<IpAddr> {
    claim.spec.address.parse().ok()
}

fn mark_of(claim: &AddressClaim) -> ClaimMark {
    ClaimMark {
        uid: claim.metadata.uid.clone().unwrap_or_default(),
        holder: claim.spec.pod.to_string(),
    }
}

fn phase(claim: &AddressClaim) -> Option<ClaimPhase> {
    claim.status.as_ref().and_then(|s| s.phase)
}

fn unix_now() -> Time {
    Time(k8s_openapi::jiff::Timestamp::now())
}

fn api_error(what: &str, e: impl std::fmt::Display) -> CniError {
    CniError::new(
        code::TRY_AGAIN_LATER,
        format!("{what}: {e}"),
        "the kubelet retries the sandbox; check the agent's connection to the API server",
    )
}

impl<D: Directory> Engine<D> {
    /// What `request` asks of claims: `None` for an address from this node's blocks that no
    /// one else needs to know of (no `ip`/`ip6`, not sticky), or when claims are off.
    pub(super) async fn plan_claims(
        &self,
        target: &Target,
        request: &NetworkRequest,
        spec: &ResolvedNodeBridge,
    ) -> Result<Option<ClaimedRequest>, CniError> {
        let wanted: Vec<IpAddr> = request.ip.into_iter().chain(request.ip6).collect();
        let sticky = request.sticky.unwrap_or(spec.sticky_addresses);
        let Some(pod) = target.pod.as_ref() else {
            return Ok(None);
        };
        if !self.dir.claims_enabled() || target.delegate || (wanted.is_empty() && !sticky) {
            return Ok(None);
        }
        let pod_uid = match self.dir.pod(pod).await {
            Ok(info) => info.map(|i| i.uid).unwrap_or_default(),
            Err(e) => return Err(api_error(&format!("reading pod {pod}"), e)),
        };
        let mut plan = ClaimPlan {
            wanted: wanted.clone(),
            sticky,
        };
        let mut takeovers = Vec::new();
        if sticky {
            // A predecessor's claim may be seconds old: read them now, not from the watch.
            // (A static address needs no list: creating its claim is what decides.)
            let claims = self.fence(spec).await?;
            for family in spec.families().map(|f| Family::of_net(&f.subnet)) {
                if wanted.iter().any(|ip| Family::of(*ip) == family) {
                    continue;
                }
                let predecessor = claims.iter().find(|c| {
                    c.spec.sticky
                        && c.spec.pod.namespace == pod.namespace
                        && c.spec.pod.name == pod.name
                        && c.spec.container_id != target.container_id
                        && address_of(c).is_some_and(|ip| Family::of(ip) == family)
                });
                if let Some(c) = predecessor
                    && let Some(c) = self.await_release(c.clone(), pod).await?
                    && let Some(ip) = address_of(&c)
                {
                    plan.wanted.push(ip);
                    takeovers.push(c);
                }
            }
        }
        Ok(Some(ClaimedRequest {
            plan,
            takeovers,
            pod_uid,
        }))
    }

    /// Re-reads `spec`'s network's claims (a consistent list) into IPAM's claimed set, and
    /// remembers the blocks it did so for; returns the claims.
    pub(super) async fn fence(
        &self,
        spec: &ResolvedNodeBridge,
    ) -> Result<Vec<AddressClaim>, CniError> {
        let claims =
            self.dir.list_claims(&spec.network).await.map_err(|e| {
                api_error(&format!("listing address claims of {}", spec.network), e)
            })?;
        let marks: Vec<(IpAddr, ClaimMark)> = claims
            .iter()
            .filter(|c| phase(c) != Some(ClaimPhase::Refused))
            .filter_map(|c| address_of(c).map(|ip| (ip, mark_of(c))))
            .collect();
        self.ipam.lock().await.reset_claimed(&spec.network, marks);
        let blocks = Pool::from_resolved(spec).blocks;
        self.fenced
            .lock()
            .await
            .insert(spec.network.clone(), blocks);
        Ok(claims)
    }

    /// Fences `spec`'s network unless its current blocks already are: a block that came to
    /// this node may hold addresses claimed (and granted by the operator) before it came.
    pub(super) async fn ensure_fenced(&self, spec: &ResolvedNodeBridge) -> Result<(), CniError> {
        if !self.dir.claims_enabled() {
            return Ok(());
        }
        let blocks = Pool::from_resolved(spec).blocks;
        if self.fenced.lock().await.get(&spec.network) == Some(&blocks) {
            return Ok(());
        }
        self.fence(spec).await.map(|_| ())
    }

    /// Re-reads the claims of every network fenced so far (the periodic safety net for a
    /// watch that missed a deletion), and releases this node's claims that no allocation
    /// holds any more (older than `min_age`, so never one an ADD in flight is making).
    pub async fn refence_all(&self, min_age: Duration) {
        let networks: Vec<String> = self.fenced.lock().await.keys().cloned().collect();
        for network in networks {
            let Some(spec) = self.dir.node_bridge(&network) else {
                continue;
            };
            match self.fence(&spec).await {
                Ok(claims) => self.release_strays(&claims, min_age).await,
                Err(e) => tracing::warn!(network, error = %e.msg, "re-reading address claims"),
            }
        }
    }

    /// Releases claims made by this node whose sandbox holds no allocation of them (the
    /// journal was lost, or an API error let one outlive its allocation).
    async fn release_strays(&self, claims: &[AddressClaim], min_age: Duration) {
        let now = k8s_openapi::jiff::Timestamp::now();
        let journal = self.allocations().await;
        for c in claims {
            let old_enough = c.metadata.creation_timestamp.as_ref().is_some_and(|t| {
                now.as_second() - t.0.as_second()
                    >= i64::try_from(min_age.as_secs()).unwrap_or(i64::MAX)
            });
            let held = journal
                .iter()
                .any(|a| a.claim == c.name_any() && a.container_id == c.spec.container_id);
            if c.spec.node != self.dir.node_name()
                || !old_enough
                || held
                || phase(c) == Some(ClaimPhase::Released)
                || self.is_busy(&c.spec.container_id)
            {
                continue;
            }
            let Some(ip) = address_of(c) else { continue };
            // Released the way its allocation would have released it.
            let stray = Allocation {
                network: c.spec.network.clone(),
                ip,
                prefix: 0,
                container_id: c.spec.container_id.clone(),
                ifname: c.spec.interface.clone(),
                pod: c.spec.pod.to_string(),
                cni_name: String::new(),
                delegate: false,
                host_veth: String::new(),
                mac: String::new(),
                since: 0,
                claim: c.name_any(),
                sticky: c.spec.sticky,
                releasing: false,
                pending: false,
            };
            tracing::warn!(claim = %c.name_any(), "releasing an address claim of this node that no allocation holds");
            if let Err(e) = self.release_claim(&stray).await {
                tracing::warn!(claim = %c.name_any(), error = %e, "releasing a stray address claim");
            }
        }
    }

    /// Waits until the sticky claim of a predecessor (a pod of the same name) is released;
    /// `None` if it went away meanwhile.
    async fn await_release(
        &self,
        mut claim: AddressClaim,
        pod: &PodRef,
    ) -> Result<Option<AddressClaim>, CniError> {
        let deadline = tokio::time::Instant::now() + PREDECESSOR_WAIT;
        loop {
            if phase(&claim) == Some(ClaimPhase::Released) {
                return Ok(Some(claim));
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(CniError::new(
                    code::TRY_AGAIN_LATER,
                    format!(
                        "pod {pod}: sticky address {} is still held by the previous pod of this name (sandbox {} on node {})",
                        claim.spec.address, claim.spec.container_id, claim.spec.node
                    ),
                    "it is released once the previous pod's interface is gone; the kubelet retries",
                ));
            }
            tokio::time::sleep(POLL * 4).await;
            match self.dir.get_claim(&claim.name_any()).await {
                Ok(Some(c)) => claim = c,
                Ok(None) => return Ok(None),
                Err(e) => return Err(api_error("reading an address claim", e)),
            }
        }
    }

    /// Makes the claims of freshly journaled `allocs` hold: created (or taken over from a
    /// predecessor) and granted. Fails, naming the holder, when another pod has the address.
    pub(super) async fn settle_claims(
        &self,
        target: &Target,
        claimed: &ClaimedRequest,
        allocs: &[Allocation],
        pool: &Pool,
    ) -> Result<(), CniError> {
        let pod = target.pod.as_ref();
        for a in allocs.iter().filter(|a| !a.claim.is_empty()) {
            let taken = claimed
                .takeovers
                .iter()
                .find(|c| address_of(c) == Some(a.ip));
            let claim = match taken {
                Some(c) => self.take_over(c.clone(), a, &claimed.pod_uid).await?,
                None => self.create_or_adopt(a, &claimed.pod_uid, pod).await?,
            };
            super::failpoint(super::failpoint::ADD_AFTER_CLAIM);
            self.grant_or_wait(claim, a, pool, pod).await?;
        }
        Ok(())
    }

    fn new_claim(&self, a: &Allocation, pod_uid: &str) -> AddressClaim {
        let (namespace, name) = a.pod.split_once('/').unwrap_or(("", &a.pod));
        AddressClaim {
            metadata: ObjectMeta {
                name: Some(a.claim.clone()),
                labels: Some(address_claim_labels(&a.network, self.dir.node_name())),
                ..ObjectMeta::default()
            },
            spec: AddressClaimSpec {
                network: a.network.clone(),
                address: a.ip.to_string(),
                pod: ClaimHolder {
                    namespace: namespace.to_owned(),
                    name: name.to_owned(),
                    uid: pod_uid.to_owned(),
                },
                node: self.dir.node_name().to_owned(),
                container_id: a.container_id.clone(),
                interface: a.ifname.clone(),
                sticky: a.sticky,
            },
            status: None,
        }
    }

    /// Whether `claim` is the one this node made for allocation `a`.
    fn is_ours(&self, claim: &AddressClaim, a: &Allocation) -> bool {
        claim.spec.node == self.dir.node_name()
            && claim.spec.container_id == a.container_id
            && claim.spec.interface == a.ifname
    }

    async fn create_or_adopt(
        &self,
        a: &Allocation,
        pod_uid: &str,
        pod: Option<&PodRef>,
    ) -> Result<AddressClaim, CniError> {
        let fresh = self.new_claim(a, pod_uid);
        // Twice at most: a claim deleted between our create and our read is created again.
        for _ in 0..2 {
            match self.dir.create_claim(&fresh).await {
                Ok(Created::New(c)) => return Ok(*c),
                Ok(Created::Exists) => {}
                Err(e) => return Err(api_error("creating an address claim", e)),
            }
            let existing = match self.dir.get_claim(&a.claim).await {
                Ok(Some(c)) => c,
                Ok(None) => continue,
                Err(e) => return Err(api_error("reading an address claim", e)),
            };
            if self.is_ours(&existing, a) {
                return Ok(existing);
            }
            let same_pod = existing.spec.pod.namespace == fresh.spec.pod.namespace
                && existing.spec.pod.name == fresh.spec.pod.name;
            if a.sticky && existing.spec.sticky && same_pod {
                let existing = match pod {
                    Some(p) => self.await_release(existing, p).await?,
                    None => Some(existing),
                };
                match existing {
                    Some(c) => return self.take_over(c, a, pod_uid).await,
                    None => continue,
                }
            }
            return Err(self.taken(pod, a, &existing));
        }
        Err(CniError::new(
            code::TRY_AGAIN_LATER,
            format!(
                "address {} on network {}: its claim kept changing",
                a.ip, a.network
            ),
            "the kubelet retries the sandbox",
        ))
    }

    /// A refusal naming the address and its holder, also as a Warning Event on the pod.
    fn taken(&self, pod: Option<&PodRef>, a: &Allocation, holder: &AddressClaim) -> CniError {
        let msg = match holder.status.as_ref().and_then(|s| s.message.clone()) {
            Some(why) if phase(holder) == Some(ClaimPhase::Refused) => format!(
                "address {} on network {} is already in use: {why}",
                a.ip, a.network
            ),
            _ => format!(
                "address {} on network {} is already claimed by pod {} on node {}",
                a.ip, a.network, holder.spec.pod, holder.spec.node
            ),
        };
        if let Some(p) = pod {
            self.dir.notify(Notice::Rejected {
                pod: p.clone(),
                reason: "AddressInUse",
                message: msg.clone(),
            });
        }
        reject(
            pod,
            msg,
            "pick another address in the bridgenet.io/networks annotation, or omit \"ip\" to get a free one",
        )
    }

    /// Makes a predecessor's sticky claim this pod's: same object, so every node's exclusion
    /// and the owner's grant carry over.
    async fn take_over(
        &self,
        mut claim: AddressClaim,
        a: &Allocation,
        pod_uid: &str,
    ) -> Result<AddressClaim, CniError> {
        let fresh = self.new_claim(a, pod_uid);
        claim.spec = fresh.spec;
        claim.metadata.labels = fresh.metadata.labels;
        let mut claim = self
            .dir
            .replace_claim(&claim)
            .await
            .map_err(|e| api_error(&format!("taking over the sticky claim of {}", a.ip), e))?;
        let granted_by = claim
            .status
            .as_ref()
            .and_then(|s| s.granted_by.clone())
            .or_else(|| Some(self.dir.node_name().to_owned()));
        claim.status = Some(AddressClaimStatus {
            phase: Some(ClaimPhase::Bound),
            granted_by,
            message: None,
            released_at: None,
        });
        self.dir
            .replace_claim_status(&claim)
            .await
            .map_err(|e| api_error(&format!("binding the sticky claim of {}", a.ip), e))
    }

    /// Grants the claim here when the address is in this node's blocks, else waits for its
    /// block's owner (another node's agent, or the operator) to grant or refuse it.
    async fn grant_or_wait(
        &self,
        mut claim: AddressClaim,
        a: &Allocation,
        pool: &Pool,
        pod: Option<&PodRef>,
    ) -> Result<(), CniError> {
        let deadline = tokio::time::Instant::now() + GRANT_TIMEOUT;
        loop {
            match phase(&claim) {
                Some(ClaimPhase::Bound | ClaimPhase::Released) => return Ok(()),
                Some(ClaimPhase::Refused) => return Err(self.taken(pod, a, &claim)),
                None if pool.admits(a.ip) => {
                    // Ours to grant: the journal already holds the address for this claim.
                    self.ipam
                        .lock()
                        .await
                        .mark_claimed(&a.network, a.ip, mark_of(&claim));
                    claim.status = Some(AddressClaimStatus {
                        phase: Some(ClaimPhase::Bound),
                        granted_by: Some(self.dir.node_name().to_owned()),
                        message: None,
                        released_at: None,
                    });
                    match self.dir.replace_claim_status(&claim).await {
                        Ok(_) => return Ok(()),
                        Err(ClaimWriteError::Conflict) => {}
                        Err(e) => return Err(api_error("granting an address claim", e)),
                    }
                }
                None => {}
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(CniError::new(
                    code::TRY_AGAIN_LATER,
                    format!(
                        "address {} on network {}: the owner of its block did not grant the claim within {}s",
                        a.ip,
                        a.network,
                        GRANT_TIMEOUT.as_secs()
                    ),
                    "the node whose block holds the address (or the operator, for a block no node owns) must be running; see `kubectl get addressclaims` and `kubectl get bridgenetwork -o yaml` for the blocks",
                ));
            }
            tokio::time::sleep(POLL).await;
            claim = match self.dir.get_claim(&a.claim).await {
                Ok(Some(c)) if self.is_ours(&c, a) => c,
                Ok(Some(c)) => return Err(self.taken(pod, a, &c)),
                Ok(None) => {
                    return Err(CniError::new(
                        code::TRY_AGAIN_LATER,
                        format!("the claim of address {} was deleted while it waited", a.ip),
                        "the kubelet retries the sandbox",
                    ));
                }
                Err(e) => return Err(api_error("reading an address claim", e)),
            };
        }
    }

    /// Releases the claims of `allocs` whose interfaces are gone: deleted, or for a sticky
    /// claim marked released (kept for a pod of the same name). A claim that is no longer
    /// this sandbox's is left alone. Returns the allocations whose claim could not be released
    /// (the API server did not answer): they stay journaled for the next DEL, GC or reconcile.
    pub(super) async fn release_claims(&self, allocs: &[Allocation]) -> BTreeSet<(String, IpAddr)> {
        let mut kept = BTreeSet::new();
        for a in allocs.iter().filter(|a| !a.claim.is_empty()) {
            if let Err(e) = self.release_claim(a).await {
                tracing::warn!(claim = %a.claim, error = %e, "releasing an address claim; the address stays held until it is");
                kept.insert((a.network.clone(), a.ip));
            }
        }
        kept
    }

    async fn release_claim(&self, a: &Allocation) -> Result<(), String> {
        for _ in 0..3 {
            let Some(mut claim) = self.dir.get_claim(&a.claim).await? else {
                return Ok(());
            };
            if !self.is_ours(&claim, a) {
                return Ok(());
            }
            let result = if a.sticky && phase(&claim) == Some(ClaimPhase::Bound) {
                let status = claim.status.get_or_insert_default();
                status.phase = Some(ClaimPhase::Released);
                status.released_at = Some(unix_now());
                self.dir.replace_claim_status(&claim).await.map(|_| ())
            } else if phase(&claim) == Some(ClaimPhase::Released) {
                return Ok(());
            } else {
                let deleted = self.dir.delete_claim(&claim).await;
                if deleted.is_ok()
                    && let Some(uid) = claim.metadata.uid.as_deref()
                {
                    self.ipam.lock().await.unmark_claimed(&a.network, a.ip, uid);
                }
                deleted
            };
            match result {
                Ok(()) => return Ok(()),
                Err(ClaimWriteError::Conflict) => {}
                Err(ClaimWriteError::Api(e)) => return Err(e),
            }
        }
        Err(format!("claim {} kept changing", a.claim))
    }

    /// Takes note of a claim seen in the cluster, and grants or refuses it if it waits for
    /// this node (its address is in one of this node's blocks).
    pub async fn observe_claim(&self, claim: &AddressClaim) {
        let Some(ip) = address_of(claim) else {
            return;
        };
        let network = &claim.spec.network;
        if phase(claim) == Some(ClaimPhase::Refused) {
            let uid = claim.metadata.uid.clone().unwrap_or_default();
            self.ipam.lock().await.unmark_claimed(network, ip, &uid);
            return;
        }
        if phase(claim).is_some() || claim.spec.node == self.dir.node_name() {
            self.ipam
                .lock()
                .await
                .mark_claimed(network, ip, mark_of(claim));
            return;
        }
        let Some(spec) = self.dir.node_bridge(network) else {
            self.ipam
                .lock()
                .await
                .mark_claimed(network, ip, mark_of(claim));
            return;
        };
        if !Pool::from_resolved(&spec).admits(ip) {
            self.ipam
                .lock()
                .await
                .mark_claimed(network, ip, mark_of(claim));
            return;
        }
        // Ours to decide, under the journal's lock: given out here already, or not.
        let refused_for = {
            let mut ipam = self.ipam.lock().await;
            match ipam.holder_of(network, ip) {
                Some(Holder::Allocation(a)) if a.claim != claim.name_any() => Some(format!(
                    "{} holds it on node {}",
                    a.holder(),
                    self.dir.node_name()
                )),
                _ => {
                    ipam.mark_claimed(network, ip, mark_of(claim));
                    None
                }
            }
        };
        let mut decided = claim.clone();
        decided.status = Some(AddressClaimStatus {
            phase: Some(if refused_for.is_some() {
                ClaimPhase::Refused
            } else {
                ClaimPhase::Bound
            }),
            granted_by: Some(self.dir.node_name().to_owned()),
            message: refused_for,
            released_at: None,
        });
        match self.dir.replace_claim_status(&decided).await {
            Ok(_) => tracing::info!(
                claim = %claim.name_any(),
                phase = ?decided.status.as_ref().and_then(|s| s.phase),
                "decided an address claim for this node's block"
            ),
            // Changed meanwhile: the watch brings the new version, decided then.
            Err(ClaimWriteError::Conflict) => {}
            Err(e) => {
                tracing::warn!(claim = %claim.name_any(), error = %e, "answering an address claim")
            }
        }
    }

    /// Takes note that a claim is gone: its address may be handed out again.
    pub async fn forget_claim(&self, claim: &AddressClaim) {
        if let (Some(ip), Some(uid)) = (address_of(claim), claim.metadata.uid.as_deref()) {
            self.ipam
                .lock()
                .await
                .unmark_claimed(&claim.spec.network, ip, uid);
        }
    }

    /// Decides every waiting claim in `claims` that is this node's to decide (a retry for a
    /// decision whose write failed).
    pub async fn decide_waiting(&self, claims: &[Arc<AddressClaim>]) {
        for claim in claims.iter().filter(|c| phase(c).is_none()) {
            self.observe_claim(claim).await;
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::Mutex;

    use bridgenet_crds::{NodeBridgeSpec, resolve_node_bridge};
    use serde_json::json;

    use super::*;
    use crate::cni::engine::PodInfo;
    use crate::ipam::AllocRequest;

    /// Node `n1` owning 172.30.1.0/26 of network `red`'s 172.30.1.0/24, and an API server
    /// that keeps AddressClaims in memory with resourceVersion guards.
    #[derive(Default)]
    struct Cluster {
        claims: Mutex<BTreeMap<String, AddressClaim>>,
        version: Mutex<u64>,
    }

    impl Cluster {
        fn stamp(&self, claim: &mut AddressClaim) {
            let mut v = self.version.lock().unwrap();
            *v += 1;
            claim.metadata.resource_version = Some(v.to_string());
        }

        fn write(
            &self,
            claim: &AddressClaim,
            status_only: bool,
        ) -> Result<AddressClaim, ClaimWriteError> {
            let mut all = self.claims.lock().unwrap();
            let current = all
                .get_mut(&claim.name_any())
                .ok_or(ClaimWriteError::Conflict)?;
            if current.metadata.resource_version != claim.metadata.resource_version {
                return Err(ClaimWriteError::Conflict);
            }
            if status_only {
                current.status = claim.status.clone();
            } else {
                current.spec = claim.spec.clone();
            }
            let mut updated = current.clone();
            drop(all);
            self.stamp(&mut updated);
            self.claims
                .lock()
                .unwrap()
                .insert(updated.name_any(), updated.clone());
            Ok(updated)
        }
    }

    impl Directory for Cluster {
        fn node_bridge(&self, network: &str) -> Option<Arc<ResolvedNodeBridge>> {
            (network == "red").then(|| {
                let spec: NodeBridgeSpec = serde_json::from_value(json!({
                    "network": "red", "node": "n1", "bridge": "bnt1",
                    "subnet": "172.30.1.0/24", "gateway": "172.30.1.1",
                    "gatewayMac": "02:aa:00:00:00:01", "blocks": ["172.30.1.0/26"],
                    "mtu": 1400, "vni": 100,
                }))
                .unwrap();
                Arc::new(resolve_node_bridge(&spec).unwrap())
            })
        }

        async fn pod(&self, _: &PodRef) -> Result<Option<PodInfo>, String> {
            Ok(None)
        }

        async fn namespace_labels(&self, _: &str) -> Result<BTreeMap<String, String>, String> {
            Ok(BTreeMap::new())
        }

        fn ready(&self) -> bool {
            true
        }

        fn notify(&self, _: Notice) {}

        fn claims_enabled(&self) -> bool {
            true
        }

        fn node_name(&self) -> &str {
            "n1"
        }

        async fn create_claim(&self, claim: &AddressClaim) -> Result<Created, String> {
            if self.claims.lock().unwrap().contains_key(&claim.name_any()) {
                return Ok(Created::Exists);
            }
            let mut c = claim.clone();
            c.metadata.uid = Some(format!("uid-{}", c.name_any()));
            self.stamp(&mut c);
            self.claims.lock().unwrap().insert(c.name_any(), c.clone());
            Ok(Created::New(Box::new(c)))
        }

        async fn get_claim(&self, name: &str) -> Result<Option<AddressClaim>, String> {
            Ok(self.claims.lock().unwrap().get(name).cloned())
        }

        async fn list_claims(&self, network: &str) -> Result<Vec<AddressClaim>, String> {
            Ok(self
                .claims
                .lock()
                .unwrap()
                .values()
                .filter(|c| c.spec.network == network)
                .cloned()
                .collect())
        }

        async fn replace_claim(
            &self,
            claim: &AddressClaim,
        ) -> Result<AddressClaim, ClaimWriteError> {
            self.write(claim, false)
        }

        async fn replace_claim_status(
            &self,
            claim: &AddressClaim,
        ) -> Result<AddressClaim, ClaimWriteError> {
            self.write(claim, true)
        }

        async fn delete_claim(&self, claim: &AddressClaim) -> Result<(), ClaimWriteError> {
            self.claims.lock().unwrap().remove(&claim.name_any());
            Ok(())
        }
    }

    /// A claim another node made (pod `other/remote` on node `n2`) for `ip` of `red`.
    async fn remote_claim(cluster: &Cluster, ip: &str) -> AddressClaim {
        let claim: AddressClaim = serde_json::from_value(json!({
            "apiVersion": "bridgenet.io/v1alpha1", "kind": "AddressClaim",
            "metadata": {"name": bridgenet_crds::claims::claim_name("red", ip.parse().unwrap())},
            "spec": {"network": "red", "address": ip, "node": "n2", "containerId": "sb-remote",
                     "interface": "net1", "pod": {"namespace": "other", "name": "remote", "uid": "u"}},
        }))
        .unwrap();
        match cluster.create_claim(&claim).await.unwrap() {
            Created::New(c) => *c,
            Created::Exists => panic!("exists"),
        }
    }

    fn dynamic(cid: &str) -> AllocRequest {
        AllocRequest {
            container_id: cid.into(),
            ifname: "net1".into(),
            pod: format!("default/{cid}"),
            cni_name: String::new(),
            delegate: false,
            host_veth: format!("v{cid}"),
            mac: String::new(),
            ip: None,
            claims: None,
        }
    }

    fn phase_of(engine: &Engine<Cluster>, name: &str) -> (Option<ClaimPhase>, Option<String>) {
        let c = engine
            .dir
            .claims
            .lock()
            .unwrap()
            .get(name)
            .cloned()
            .unwrap();
        let s = c.status.unwrap_or_default();
        (s.phase, s.message)
    }

    /// The owner of a block grants a free address to another node's pod, and from then on never
    /// hands it out itself: all 61 other addresses of the block go first, then the block is
    /// full.
    #[tokio::test]
    async fn the_block_owner_grants_a_free_address_and_never_hands_it_out() {
        let state = tempfile::tempdir().unwrap();
        let engine = Engine::new(Cluster::default(), state.path(), None).unwrap();
        let claim = remote_claim(&engine.dir, "172.30.1.7").await;
        engine.observe_claim(&claim).await;
        assert_eq!(
            phase_of(&engine, &claim.name_any()),
            (Some(ClaimPhase::Bound), None)
        );
        let granted_by = engine.dir.claims.lock().unwrap()[&claim.name_any()]
            .status
            .clone()
            .unwrap()
            .granted_by;
        assert_eq!(granted_by.as_deref(), Some("n1"));
        let pool = Pool::from_resolved(&engine.dir.node_bridge("red").unwrap());
        let mut ipam = engine.ipam.lock().await;
        let mut handed = BTreeSet::new();
        // .0 is the network address and .1 the gateway: 62 addresses, one of them claimed.
        for i in 0..61 {
            let a = ipam.allocate(&pool, &dynamic(&format!("c{i}"))).unwrap();
            handed.insert(a[0].ip);
        }
        assert!(!handed.contains(&"172.30.1.7".parse().unwrap()));
        assert!(
            ipam.allocate(&pool, &dynamic("full")).is_err(),
            "the block is full"
        );
        // The claim goes: the address is free again.
        ipam.unmark_claimed("red", "172.30.1.7".parse().unwrap(), "uid-red.172-30-1-7");
        let last = ipam.allocate(&pool, &dynamic("last")).unwrap();
        assert_eq!(last[0].ip, "172.30.1.7".parse::<IpAddr>().unwrap());
    }

    /// An address this node already gave out is refused to another node's claim, naming the
    /// pod that has it; a claim outside this node's blocks is not this node's to decide.
    #[tokio::test]
    async fn the_block_owner_refuses_an_address_it_gave_out_and_ignores_others_blocks() {
        let state = tempfile::tempdir().unwrap();
        let engine = Engine::new(Cluster::default(), state.path(), None).unwrap();
        let pool = Pool::from_resolved(&engine.dir.node_bridge("red").unwrap());
        let mine = engine
            .ipam
            .lock()
            .await
            .allocate(&pool, &dynamic("local"))
            .unwrap();
        let claim = remote_claim(&engine.dir, &mine[0].ip.to_string()).await;
        engine.observe_claim(&claim).await;
        let (phase, message) = phase_of(&engine, &claim.name_any());
        assert_eq!(phase, Some(ClaimPhase::Refused));
        assert!(
            message.unwrap().contains("default/local"),
            "names the holder"
        );
        let elsewhere = remote_claim(&engine.dir, "172.30.1.100").await;
        engine.observe_claim(&elsewhere).await;
        assert_eq!(phase_of(&engine, &elsewhere.name_any()), (None, None));
    }
}
