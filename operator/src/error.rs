//! The operator's one error type: every variant names the call that failed and the object it
//! was about, and maps to a short label for metrics and to a retry decision in `error_policy`.

use std::time::Duration;

/// Why a reconcile (or the operator's startup) failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A Kubernetes API call failed.
    #[error("{action} {kind} {name}: {source}")]
    Kube {
        /// What was attempted (`apply`, `delete`, `patch status of`, ...).
        action: &'static str,
        /// Kind of the object.
        kind: &'static str,
        /// Name of the object.
        name: String,
        /// The client's error.
        #[source]
        source: Box<kube::Error>,
    },
    /// The spec is invalid or refused because of another object; waits for a change.
    #[error("network {network} not accepted ({reason}): {message}")]
    Rejected {
        /// The BridgeNetwork.
        network: String,
        /// Condition reason (`InvalidSpec`, `SubnetOverlap`, `DuplicateBridge`).
        reason: &'static str,
        /// What the user is told.
        message: String,
    },
    /// Deletion is held because pods are still attached.
    #[error("deletion of network {network} blocked: {message}")]
    DeletionBlocked {
        /// The BridgeNetwork.
        network: String,
        /// Which pods hold it.
        message: String,
    },
    /// Deletion waits for node agents to tear down NodeBridges.
    #[error("network {network} waits for {remaining} NodeBridges to be torn down")]
    WaitingForTeardown {
        /// The BridgeNetwork.
        network: String,
        /// NodeBridges still present.
        remaining: usize,
    },
    /// The watch caches did not finish their initial list in time; planning on a partial view
    /// could delete NodeBridges of nodes it has not seen yet.
    #[error("caches of {what} not synced")]
    CachesNotSynced {
        /// Which cache.
        what: &'static str,
    },
    /// An object lacks a field the operator needs (name, usually).
    #[error("{kind} without {field}")]
    MissingField {
        /// Kind of the object.
        kind: &'static str,
        /// Missing field.
        field: &'static str,
    },
    /// Adding or removing the finalizer failed.
    #[error("finalizer on network {network}: {source}")]
    Finalizer {
        /// The BridgeNetwork.
        network: String,
        /// The runtime's error, possibly wrapping ours.
        #[source]
        source: Box<kube::runtime::finalizer::Error<Error>>,
    },
    /// Serializing an object failed.
    #[error("serialize {what}: {source}")]
    Serialize {
        /// What was serialized.
        what: &'static str,
        /// serde's error.
        #[source]
        source: serde_json::Error,
    },
    /// Leader election could not read or write its Lease.
    #[error("lease {namespace}/{name}: {source}")]
    Lease {
        /// Lease namespace.
        namespace: String,
        /// Lease name.
        name: String,
        /// The client's error.
        #[source]
        source: Box<kube::Error>,
    },
    /// The leader lost its Lease; the process stops writing and exits.
    #[error("lost leadership of lease {0}")]
    LeadershipLost(String),
    /// Startup failed: no kubeconfig or in-cluster config, or the metrics port is taken.
    #[error("startup: {0}")]
    Startup(String),
}

/// Result with the operator's error.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Builds a [`Error::Kube`].
    pub fn kube(action: &'static str, kind: &'static str, name: &str, source: kube::Error) -> Self {
        Error::Kube {
            action,
            kind,
            name: name.to_owned(),
            source: Box::new(source),
        }
    }

    /// The innermost error of ours (unwrapping the finalizer helper's wrapper).
    pub fn inner(&self) -> &Error {
        use kube::runtime::finalizer::Error as F;
        match self {
            Error::Finalizer { source, .. } => match source.as_ref() {
                F::ApplyFailed(e) | F::CleanupFailed(e) => e.inner(),
                _ => self,
            },
            _ => self,
        }
    }

    /// Whether this is a state the network waits in rather than a failure: a refused spec,
    /// deletion held by attached pods, or agents still tearing down. Each is already told to
    /// the user by a condition (and an Event where it starts), and `error_policy` requeues it,
    /// so it is neither counted in the failure metric nor a step of the failure backoff.
    pub fn is_waiting(&self) -> bool {
        matches!(
            self.inner(),
            Error::Rejected { .. }
                | Error::DeletionBlocked { .. }
                | Error::WaitingForTeardown { .. }
        )
    }

    /// Short label for the `reason` of the failure metric.
    pub fn metric_label(&self) -> &'static str {
        match self.inner() {
            Error::Kube { source, .. } if is_conflict(source) => "conflict",
            Error::Kube { .. } => "api",
            Error::Rejected { reason, .. } => reason,
            Error::DeletionBlocked { .. } => "DeletionBlocked",
            Error::WaitingForTeardown { .. } => "WaitingForTeardown",
            Error::CachesNotSynced { .. } => "cache",
            Error::MissingField { .. } => "invalid-object",
            Error::Finalizer { .. } => "finalizer",
            Error::Serialize { .. } => "serialize",
            Error::Lease { .. } | Error::LeadershipLost(_) => "lease",
            Error::Startup(_) => "startup",
        }
    }

    /// How long to wait before retrying, given how many times in a row this object failed;
    /// `None` means wait for the object (or a related one) to change.
    pub fn retry_after(&self, consecutive_failures: u32) -> Option<Duration> {
        match self.inner() {
            // A refused spec only changes when someone edits it or the network it collides
            // with goes away; both are watch events, so polling would only repeat the Event.
            Error::Rejected { .. } | Error::MissingField { .. } => None,
            // NodeBridge status changes trigger us anyway; the timer is a safety net.
            Error::DeletionBlocked { .. } => Some(Duration::from_secs(30)),
            Error::WaitingForTeardown { .. } => Some(Duration::from_secs(5)),
            // Someone wrote the object since we read it: re-read soon.
            Error::Kube { source, .. } if is_conflict(source) => Some(Duration::from_secs(1)),
            _ => Some(backoff(consecutive_failures)),
        }
    }
}

/// Exponential backoff for transient errors: 1 s, 2 s, 4 s, ... capped at 5 minutes.
pub fn backoff(consecutive_failures: u32) -> Duration {
    let exp = consecutive_failures.min(9);
    Duration::from_secs((1u64 << exp).min(300))
}

/// Whether the API refused a write because the object changed since it was read (409).
pub fn is_conflict(err: &kube::Error) -> bool {
    matches!(err, kube::Error::Api(status) if status.code == 409)
}

/// Whether the API answered that the object does not exist (404).
pub fn is_not_found(err: &kube::Error) -> bool {
    matches!(err, kube::Error::Api(status) if status.code == 404)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_caps() {
        assert_eq!(backoff(0), Duration::from_secs(1));
        assert_eq!(backoff(3), Duration::from_secs(8));
        assert_eq!(backoff(50), Duration::from_secs(300));
    }

    #[test]
    fn rejected_waits_for_change_transient_backs_off() {
        let rejected = Error::Rejected {
            network: "a".into(),
            reason: "SubnetOverlap",
            message: "m".into(),
        };
        assert_eq!(rejected.retry_after(3), None);
        assert_eq!(rejected.metric_label(), "SubnetOverlap");
        let cache = Error::CachesNotSynced { what: "nodes" };
        assert_eq!(cache.retry_after(2), Some(Duration::from_secs(4)));
    }

    #[test]
    fn waiting_states_are_not_failures() {
        let waiting = [
            Error::Rejected {
                network: "a".into(),
                reason: "SubnetOverlap",
                message: "m".into(),
            },
            Error::DeletionBlocked {
                network: "a".into(),
                message: "shop/cart on n1".into(),
            },
            Error::WaitingForTeardown {
                network: "a".into(),
                remaining: 2,
            },
        ];
        for e in &waiting {
            assert!(e.is_waiting(), "{e}");
        }
        assert!(!Error::CachesNotSynced { what: "nodes" }.is_waiting());
        let conflict = Error::kube(
            "patch status of",
            "BridgeNetwork",
            "a",
            kube::Error::Api(
                kube::core::Status::failure("modified", "Conflict")
                    .with_code(409)
                    .boxed(),
            ),
        );
        assert!(!conflict.is_waiting());
    }
}
