//! The operator's share of `AddressClaim`s: it grants claims on addresses of blocks no node
//! owns (no node can have given those out), deletes sticky claims whose hold time ran out and
//! the claims of nodes that are gone, and removes a deleted network's claims.
//!
//! A node's agent grants claims on its own blocks (only its journal knows what it handed out).
//! The operator grants only after re-reading the network (a consistent read), so a block it
//! just assigned is never treated as free; an agent that receives a block re-reads the claims
//! before it first allocates from it, so it sees every grant made before.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::time::Duration;

use bridgenet_crds::v1alpha1::{ClaimPhase, DEFAULT_STICKY_HOLD_SECONDS};
use bridgenet_crds::{AddressClaim, AddressClaimStatus, BridgeNetwork};
use ipnet::IpNet;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{DeleteParams, PostParams, Preconditions};
use kube::{Api, Client, ResourceExt};

/// Granter name the operator writes for blocks no node owns.
pub const GRANTER: &str = "operator";

/// What to do with one network's claims.
#[derive(Debug, Default, PartialEq)]
pub struct ClaimPlan {
    /// Waiting claims whose address lies in no assigned block: the operator's to grant.
    pub grant: Vec<String>,
    /// Claims to delete: sticky ones past their hold, and non-sticky ones of vanished nodes.
    pub delete: Vec<String>,
    /// Sticky claims of vanished nodes, to mark released (their hold starts now).
    pub release: Vec<String>,
    /// When the next sticky hold runs out, for the requeue.
    pub next_expiry: Option<Duration>,
}

fn phase(c: &AddressClaim) -> Option<ClaimPhase> {
    c.status.as_ref().and_then(|s| s.phase)
}

/// Decides what the operator does with `claims` of `network`: `assigned` are the blocks some
/// node owns, `nodes` the nodes that exist, `now` the clock.
pub fn plan(
    network: &BridgeNetwork,
    assigned: &[IpNet],
    claims: &[&AddressClaim],
    nodes: &BTreeSet<String>,
    now: Timestamp,
) -> ClaimPlan {
    let hold = i64::from(
        network
            .spec
            .sticky_hold_seconds
            .unwrap_or(DEFAULT_STICKY_HOLD_SECONDS),
    );
    let mut out = ClaimPlan::default();
    for c in claims {
        let name = c.name_any();
        match phase(c) {
            Some(ClaimPhase::Released) => {
                let released = c
                    .status
                    .as_ref()
                    .and_then(|s| s.released_at.as_ref())
                    .map_or(now, |t| t.0);
                let left = hold - (now.as_second() - released.as_second());
                if left <= 0 {
                    out.delete.push(name);
                } else {
                    let left = Duration::from_secs(left.unsigned_abs());
                    out.next_expiry = Some(out.next_expiry.map_or(left, |n| n.min(left)));
                }
            }
            _ if !nodes.contains(&c.spec.node) => {
                if c.spec.sticky && phase(c) == Some(ClaimPhase::Bound) {
                    out.release.push(name);
                } else {
                    out.delete.push(name);
                }
            }
            None => {
                let in_block = c
                    .spec
                    .address
                    .parse::<IpAddr>()
                    .is_ok_and(|ip| assigned.iter().any(|b| b.contains(&ip)));
                if !in_block {
                    out.grant.push(name);
                }
            }
            Some(_) => {}
        }
    }
    out
}

/// Carries out `plan` for `network` with the claims as read (`claims`). Errors are logged and
/// left for the next reconcile: every step is re-decided from the claims as they are then.
pub async fn carry_out(client: &Client, plan: &ClaimPlan, claims: &[&AddressClaim]) {
    let api: Api<AddressClaim> = Api::all(client.clone());
    let find = |name: &str| claims.iter().find(|c| c.name_any() == name);
    for name in &plan.grant {
        let Some(c) = find(name) else { continue };
        let mut c = (*c).clone();
        c.status = Some(AddressClaimStatus {
            phase: Some(ClaimPhase::Bound),
            granted_by: Some(GRANTER.to_owned()),
            message: None,
            released_at: None,
        });
        match api.replace_status(name, &PostParams::default(), &c).await {
            Ok(_) => {
                tracing::info!(claim = %name, "granted an address claim outside every node's blocks")
            }
            Err(e) => tracing::warn!(claim = %name, error = %e, "granting an address claim"),
        }
    }
    for name in &plan.release {
        let Some(c) = find(name) else { continue };
        let mut c = (*c).clone();
        let status = c.status.get_or_insert_default();
        status.phase = Some(ClaimPhase::Released);
        status.released_at = Some(Time(Timestamp::now()));
        if let Err(e) = api.replace_status(name, &PostParams::default(), &c).await {
            tracing::warn!(claim = %name, error = %e, "releasing the sticky claim of a vanished node");
        }
    }
    for name in &plan.delete {
        let Some(c) = find(name) else { continue };
        // Only the version read: a sticky claim taken over meanwhile is not deleted.
        let params = DeleteParams {
            preconditions: Some(Preconditions {
                uid: c.metadata.uid.clone(),
                resource_version: c.metadata.resource_version.clone(),
            }),
            ..DeleteParams::default()
        };
        match api.delete(name, &params).await {
            Ok(_) => {
                tracing::info!(claim = %name, "deleted an address claim (hold over, or its node is gone)")
            }
            Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => {}
            Err(e) => tracing::warn!(claim = %name, error = %e, "deleting an address claim"),
        }
    }
}

/// Deletes every claim of a network being deleted. Returns how many remain (failed).
pub async fn delete_all(client: &Client, claims: &[&AddressClaim]) -> usize {
    let api: Api<AddressClaim> = Api::all(client.clone());
    let mut failed = 0;
    for c in claims {
        let name = c.name_any();
        match api.delete(&name, &DeleteParams::default()).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => {
                failed += 1;
                tracing::warn!(claim = %c.name_any(), error = %e, "deleting a deleted network's address claim");
            }
        }
    }
    failed
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use serde_json::json;

    fn claim(name: &str, address: &str, node: &str, status: serde_json::Value) -> AddressClaim {
        serde_json::from_value(json!({
            "apiVersion": "bridgenet.io/v1alpha1", "kind": "AddressClaim",
            "metadata": {"name": name, "uid": format!("u-{name}"), "resourceVersion": "1"},
            "spec": {"network": "n", "address": address, "node": node, "sticky": true,
                     "pod": {"namespace": "default", "name": "web", "uid": "p"}},
            "status": status,
        }))
        .unwrap()
    }

    fn network(hold: Option<u32>) -> BridgeNetwork {
        let mut spec = json!({"subnet": "172.41.0.0/24", "stickyAddresses": true});
        if let Some(h) = hold {
            spec["stickyHoldSeconds"] = json!(h);
        }
        serde_json::from_value(json!({
            "apiVersion": "bridgenet.io/v1alpha1", "kind": "BridgeNetwork",
            "metadata": {"name": "n"}, "spec": spec,
        }))
        .unwrap()
    }

    #[test]
    fn grants_only_outside_assigned_blocks_and_expires_holds() {
        let now: Timestamp = "2026-12-06T00:10:00Z".parse().unwrap();
        let nodes = BTreeSet::from(["a".to_owned()]);
        let assigned: Vec<IpNet> = vec!["172.41.0.0/26".parse().unwrap()];
        let waiting_in_block = claim("in", "172.41.0.5", "a", json!({}));
        let waiting_outside = claim("out", "172.41.0.77", "a", json!({}));
        let bound = claim("bound", "172.41.0.78", "a", json!({"phase": "Bound"}));
        let old = claim(
            "old",
            "172.41.0.79",
            "a",
            json!({"phase": "Released", "releasedAt": "2026-12-06T00:00:00Z"}),
        );
        let young = claim(
            "young",
            "172.41.0.80",
            "a",
            json!({"phase": "Released", "releasedAt": "2026-12-06T00:09:00Z"}),
        );
        let orphan = claim("orphan", "172.41.0.81", "gone", json!({"phase": "Bound"}));
        let all = [
            &waiting_in_block,
            &waiting_outside,
            &bound,
            &old,
            &young,
            &orphan,
        ];
        let p = plan(&network(None), &assigned, &all, &nodes, now);
        assert_eq!(p.grant, ["out"], "a block's owner grants its own");
        assert_eq!(p.delete, ["old"], "600 s hold by default");
        assert_eq!(
            p.release,
            ["orphan"],
            "a vanished node's sticky claim is held"
        );
        assert_eq!(p.next_expiry, Some(Duration::from_secs(540)));
        let p = plan(&network(Some(30)), &assigned, &all, &nodes, now);
        assert_eq!(p.delete, ["old", "young"]);
    }
}
