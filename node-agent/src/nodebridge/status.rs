//! The agent's writer of `NodeBridge.status`.
//!
//! The agent owns the whole status through one server-side-apply field manager
//! (`bridgenet-agent`), so every apply must carry the *full* status: with SSA, fields the
//! manager owned and left out of an apply are removed. Two parts of the agent fill it — the
//! data plane (`Ready` condition, `observedGeneration`) and the CNI/attachment side (endpoints
//! and address counts) — so this book keeps the last full status of each NodeBridge and every
//! writer changes only its part through [`StatusWriter::update`]. On first sight of an object
//! (e.g. after an agent restart) the book is seeded from the object's current status, so
//! nothing written before the restart is lost.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};

use bridgenet_crds::{NodeBridge, NodeBridgeStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use kube::Api;
use kube::api::{Patch, PatchParams};

/// Field manager of every status write by the agent.
pub const FIELD_MANAGER: &str = "bridgenet-agent";

/// Type of the condition the data plane reports.
pub const CONDITION_READY: &str = "Ready";

/// Keeps the full status of each NodeBridge of this node and applies it.
#[derive(Clone)]
pub struct StatusWriter {
    api: Api<NodeBridge>,
    book: Arc<Mutex<BTreeMap<String, NodeBridgeStatus>>>,
}

impl StatusWriter {
    /// A writer for cluster-scoped NodeBridges.
    pub fn new(api: Api<NodeBridge>) -> Self {
        StatusWriter {
            api,
            book: Arc::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, NodeBridgeStatus>> {
        // Each critical section is a single map operation: a poisoned lock holds no torn state.
        self.book.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Seeds the book with the status an object already has, unless it is known.
    pub fn seed(&self, name: &str, current: Option<&NodeBridgeStatus>) {
        self.lock()
            .entry(name.to_owned())
            .or_insert_with(|| current.cloned().unwrap_or_default());
    }

    /// The status the book holds for `name`.
    pub fn get(&self, name: &str) -> Option<NodeBridgeStatus> {
        self.lock().get(name).cloned()
    }

    /// Forgets a NodeBridge (deleted).
    pub fn forget(&self, name: &str) {
        self.lock().remove(name);
    }

    /// Changes `name`'s status with `change` and applies the full result, unless it is
    /// unchanged. Returns whether a write was sent.
    pub async fn update(
        &self,
        name: &str,
        change: impl FnOnce(&mut NodeBridgeStatus),
    ) -> Result<bool, kube::Error> {
        let (before, after) = {
            let mut book = self.lock();
            let entry = book.entry(name.to_owned()).or_default();
            let before = entry.clone();
            change(entry);
            (before, entry.clone())
        };
        if before == after {
            return Ok(false);
        }
        self.apply(name, &after).await?;
        Ok(true)
    }

    /// Applies `status` as the complete status of `name`.
    pub async fn apply(&self, name: &str, status: &NodeBridgeStatus) -> Result<(), kube::Error> {
        let body = serde_json::json!({
            "apiVersion": "bridgenet.io/v1alpha1",
            "kind": "NodeBridge",
            "status": status,
        });
        let pp = PatchParams::apply(FIELD_MANAGER).force();
        self.api
            .patch_status(name, &pp, &Patch::Apply(&body))
            .await
            .map(|_| ())
    }
}

/// Sets condition `type_` in `conditions`; `lastTransitionTime` moves only when the status
/// (True/False) changes, as the Kubernetes API conventions ask.
pub fn set_condition(
    conditions: &mut Vec<Condition>,
    type_: &str,
    ok: bool,
    reason: &str,
    message: &str,
    generation: Option<i64>,
) {
    let status = if ok { "True" } else { "False" };
    let previous = conditions.iter().position(|c| c.type_ == type_);
    let last_transition_time = match previous.map(|i| &conditions[i]) {
        Some(c) if c.status == status => c.last_transition_time.clone(),
        _ => Time(Timestamp::now()),
    };
    let condition = Condition {
        type_: type_.to_owned(),
        status: status.to_owned(),
        reason: reason.to_owned(),
        message: message.to_owned(),
        observed_generation: generation,
        last_transition_time,
    };
    match previous {
        Some(i) => conditions[i] = condition,
        None => conditions.push(condition),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn transition_time_moves_only_on_status_change() {
        let mut c = Vec::new();
        set_condition(&mut c, "Ready", false, "BridgeNameTaken", "x", Some(1));
        let t0 = c[0].last_transition_time.clone();
        std::thread::sleep(std::time::Duration::from_millis(5));
        set_condition(&mut c, "Ready", false, "NetlinkFailed", "y", Some(2));
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].last_transition_time, t0, "same status: time kept");
        assert_eq!(c[0].reason, "NetlinkFailed");
        set_condition(&mut c, "Ready", true, "Programmed", "", Some(2));
        assert_ne!(c[0].last_transition_time, t0);
        assert_eq!(c[0].status, "True");
    }
}
