//! Leader election through a `coordination.k8s.io/v1` Lease, so that of several replicas only
//! one writes. The rules follow client-go's: a Lease is free when it has no holder, when we
//! hold it, or when its record (holder, renewTime) has not changed for `leaseDurationSeconds`
//! as measured by our own clock (so clock skew between replicas does not matter). Every write
//! carries the resourceVersion it was decided on, so two replicas racing for a free Lease
//! cannot both win. The leader stops when it cannot renew within the renew deadline, which is
//! shorter than the Lease duration: it has stopped before anyone else may take over.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::Client;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;
use tokio::time::Instant;

use crate::error::{Error, Result, is_conflict, is_not_found};

/// What to do with the Lease as it was read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// No Lease: create it, holding it.
    Create,
    /// Free or ours: write ourselves as holder.
    Take {
        /// The holder changes (count a transition, set acquireTime).
        transition: bool,
    },
    /// Someone else holds it and renews in time.
    Wait,
}

/// Decides from the Lease and whether its record has been unchanged longer than its duration.
pub fn decide(lease: Option<&Lease>, identity: &str, record_expired: bool) -> Decision {
    let Some(lease) = lease else {
        return Decision::Create;
    };
    let holder = lease
        .spec
        .as_ref()
        .and_then(|s| s.holder_identity.as_deref())
        .unwrap_or("");
    if holder == identity {
        Decision::Take { transition: false }
    } else if holder.is_empty() || record_expired {
        Decision::Take { transition: true }
    } else {
        Decision::Wait
    }
}

/// Record of a Lease as last seen, and when (our clock) it last changed.
struct Observed {
    record: (Option<String>, Option<String>),
    since: Instant,
}

/// Campaigns for, holds and releases one Lease.
pub struct LeaderElector {
    api: Api<Lease>,
    name: String,
    namespace: String,
    identity: String,
    duration: Duration,
    observed: Option<Observed>,
    resource_version: Option<String>,
}

impl LeaderElector {
    /// An elector for Lease `namespace/name` as `identity`.
    pub fn new(
        client: Client,
        namespace: &str,
        name: &str,
        identity: &str,
        duration: Duration,
    ) -> Self {
        Self {
            api: Api::namespaced(client, namespace),
            name: name.to_owned(),
            namespace: namespace.to_owned(),
            identity: identity.to_owned(),
            duration,
            observed: None,
            resource_version: None,
        }
    }

    /// How often the leader renews and candidates retry.
    pub fn retry_period(&self) -> Duration {
        self.duration / 7
    }

    /// How long the leader keeps going without a successful renewal: two thirds of the Lease
    /// duration, so that it has stopped before a candidate may take over.
    pub fn renew_deadline(&self) -> Duration {
        self.duration * 2 / 3
    }

    fn lease_err(&self, e: kube::Error) -> Error {
        Error::Lease {
            namespace: self.namespace.clone(),
            name: self.name.clone(),
            source: Box::new(e),
        }
    }

    /// One attempt to become (or stay) the holder; `Ok(true)` when we hold the Lease now.
    pub async fn try_acquire_or_renew(&mut self) -> Result<bool> {
        let lease = match self.api.get(&self.name).await {
            Ok(l) => Some(l),
            Err(e) if is_not_found(&e) => None,
            Err(e) => return Err(self.lease_err(e)),
        };
        let now = Instant::now();
        if let Some(l) = &lease {
            let spec = l.spec.clone().unwrap_or_default();
            let record = (
                spec.holder_identity,
                spec.renew_time.map(|t| t.0.to_string()),
            );
            if self.observed.as_ref().is_none_or(|o| o.record != record) {
                self.observed = Some(Observed { record, since: now });
            }
        }
        let duration = lease
            .as_ref()
            .and_then(|l| l.spec.as_ref())
            .and_then(|s| s.lease_duration_seconds)
            .and_then(|s| u64::try_from(s).ok())
            .map_or(self.duration, Duration::from_secs);
        let expired = self
            .observed
            .as_ref()
            .is_some_and(|o| now.duration_since(o.since) >= duration);
        let stamp = MicroTime(Timestamp::now());
        let seconds = i32::try_from(self.duration.as_secs()).unwrap_or(i32::MAX);
        match decide(lease.as_ref(), &self.identity, expired) {
            Decision::Wait => Ok(false),
            Decision::Create => {
                let lease: Lease = serde_json::from_value(json!({
                    "metadata": {"name": self.name, "namespace": self.namespace},
                    "spec": {
                        "holderIdentity": self.identity,
                        "leaseDurationSeconds": seconds,
                        "acquireTime": stamp,
                        "renewTime": stamp,
                        "leaseTransitions": 0,
                    }
                }))
                .map_err(|source| Error::Serialize {
                    what: "lease",
                    source,
                })?;
                match self.api.create(&PostParams::default(), &lease).await {
                    Ok(l) => {
                        tracing::info!(lease = %self.name, identity = %self.identity, "created leader lease");
                        self.resource_version = l.metadata.resource_version;
                        Ok(true)
                    }
                    Err(e) if is_conflict(&e) => Ok(false),
                    Err(e) => Err(self.lease_err(e)),
                }
            }
            Decision::Take { transition } => {
                let l = lease.as_ref();
                let spec = l.and_then(|l| l.spec.clone()).unwrap_or_default();
                let transitions = spec.lease_transitions.unwrap_or(0) + i32::from(transition);
                let acquire = if transition {
                    Some(stamp.clone())
                } else {
                    spec.acquire_time
                };
                let patch = json!({
                    "metadata": {"resourceVersion": l.and_then(|l| l.metadata.resource_version.clone())},
                    "spec": {
                        "holderIdentity": self.identity,
                        "leaseDurationSeconds": seconds,
                        "acquireTime": acquire,
                        "renewTime": stamp,
                        "leaseTransitions": transitions,
                    }
                });
                match self
                    .api
                    .patch(&self.name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await
                {
                    Ok(l) => {
                        if transition {
                            tracing::info!(lease = %self.name, identity = %self.identity, "acquired leader lease");
                        }
                        self.resource_version = l.metadata.resource_version;
                        Ok(true)
                    }
                    Err(e) if is_conflict(&e) => Ok(false),
                    Err(e) => Err(self.lease_err(e)),
                }
            }
        }
    }

    /// Waits until this replica holds the Lease.
    pub async fn acquire(&mut self) {
        loop {
            match self.try_acquire_or_renew().await {
                Ok(true) => return,
                Ok(false) => tracing::debug!(lease = %self.name, "lease held by another replica"),
                Err(e) => tracing::warn!(error = %e, "leader election"),
            }
            tokio::time::sleep(self.retry_period()).await;
        }
    }

    /// Renews until the Lease is lost (taken over, or not renewed within the renew deadline);
    /// returns the reason.
    pub async fn hold(&mut self) -> Error {
        let mut last_renewal = Instant::now();
        loop {
            tokio::time::sleep(self.retry_period()).await;
            match self.try_acquire_or_renew().await {
                Ok(true) => last_renewal = Instant::now(),
                Ok(false) => return Error::LeadershipLost(self.name.clone()),
                Err(e) => {
                    tracing::warn!(error = %e, "renewing leader lease");
                    if last_renewal.elapsed() >= self.renew_deadline() {
                        return Error::LeadershipLost(self.name.clone());
                    }
                }
            }
        }
    }

    /// Gives the Lease up on shutdown, so that a standby takes over at once instead of after
    /// the Lease duration. Only writes if nobody wrote the Lease since our last renewal.
    pub async fn release(&mut self) {
        let patch = json!({
            "metadata": {"resourceVersion": self.resource_version},
            "spec": {"holderIdentity": null, "leaseDurationSeconds": 1}
        });
        match self
            .api
            .patch(&self.name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => tracing::info!(lease = %self.name, "released leader lease"),
            Err(e) => tracing::warn!(error = %e, "releasing leader lease"),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use k8s_openapi::api::coordination::v1::LeaseSpec;

    fn lease(holder: Option<&str>) -> Lease {
        Lease {
            spec: Some(LeaseSpec {
                holder_identity: holder.map(str::to_owned),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn decisions() {
        assert_eq!(decide(None, "a", false), Decision::Create);
        assert_eq!(
            decide(Some(&lease(Some("a"))), "a", false),
            Decision::Take { transition: false }
        );
        assert_eq!(decide(Some(&lease(Some("b"))), "a", false), Decision::Wait);
        assert_eq!(
            decide(Some(&lease(Some("b"))), "a", true),
            Decision::Take { transition: true }
        );
        assert_eq!(
            decide(Some(&lease(None)), "a", false),
            Decision::Take { transition: true }
        );
        assert_eq!(
            decide(Some(&lease(Some(""))), "a", false),
            Decision::Take { transition: true }
        );
    }
}
