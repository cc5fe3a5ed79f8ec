//! Telling an uninstall from a restart at SIGTERM, and unchaining the CNI configuration only
//! for the former.
//!
//! While the `{"type":"bridgenet"}` entry is chained into the node's primary conflist, every pod
//! ADD goes through the agent; without a running agent it fails (CNI error 11) and no pod starts
//! on the node. That is right during a rolling update or a restart (pods wait for their
//! networks, or get a clear error) but wrong after `helm uninstall`, when no agent will come
//! back. The agent's controller DaemonSet says which: gone (404) or carrying a
//! `deletionTimestamp` means uninstall. Anything uncertain keeps the chaining.

use std::path::Path;
use std::time::Duration;

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::Pod;
use kube::Api;

use crate::cni::install;

/// What to do with the CNI chaining on shutdown.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// The agent's DaemonSet is gone or being deleted: no agent comes back, unchain.
    Unchain {
        /// Why, for the log.
        reason: String,
    },
    /// An agent comes back (rolling update, restart) or we cannot tell: keep the chaining.
    Keep {
        /// Why, for the log.
        reason: String,
    },
}

/// The controller owner reference of `pod` when it is a DaemonSet: its name.
pub fn controller_daemonset(pod: &Pod) -> Option<String> {
    pod.metadata
        .owner_references
        .as_deref()?
        .iter()
        .find(|r| r.controller == Some(true))
        .filter(|r| r.kind == "DaemonSet" && r.api_version == "apps/v1")
        .map(|r| r.name.clone())
}

/// The decision from the agent's own Pod and the lookup of its controller DaemonSet
/// (`None`: the DaemonSet does not exist). Pure: the API calls are in [`decide_from_api`].
pub fn decide(pod: &Pod, daemonset: Option<&DaemonSet>) -> Decision {
    let Some(owner) = controller_daemonset(pod) else {
        return Decision::Keep {
            reason: "the agent's pod is not controlled by a DaemonSet".into(),
        };
    };
    match daemonset {
        None => Decision::Unchain {
            reason: format!("DaemonSet {owner} no longer exists"),
        },
        Some(ds) if ds.metadata.name.as_deref() != Some(owner.as_str()) => Decision::Keep {
            reason: format!("looked up a DaemonSet other than the owner {owner}"),
        },
        Some(ds) if ds.metadata.deletion_timestamp.is_some() => Decision::Unchain {
            reason: format!("DaemonSet {owner} is being deleted"),
        },
        Some(_) => Decision::Keep {
            reason: format!("DaemonSet {owner} still exists: an agent comes back"),
        },
    }
}

/// Errors of reaching the API for the decision.
#[derive(Debug, thiserror::Error)]
pub enum LookupError {
    /// `--pod-name`/`--pod-namespace` were not given.
    #[error("--pod-name/--pod-namespace (POD_NAME/POD_NAMESPACE) not set")]
    NoIdentity,
    /// The agent's own Pod is not there.
    #[error("pod {namespace}/{name} not found")]
    NoPod {
        /// Namespace of the pod.
        namespace: String,
        /// Name of the pod.
        name: String,
    },
    /// An API call failed.
    #[error("getting {what}: {source}")]
    Api {
        /// What was being read.
        what: String,
        /// Client error.
        source: kube::Error,
    },
    /// The lookups took too long.
    #[error("no answer from the API server within {0:?}")]
    Timeout(Duration),
}

/// Reads the agent's Pod and its controller DaemonSet and decides. Errors mean "cannot tell".
pub async fn decide_from_api(
    client: &kube::Client,
    namespace: Option<&str>,
    pod_name: Option<&str>,
) -> Result<Decision, LookupError> {
    let (Some(namespace), Some(name)) = (namespace, pod_name) else {
        return Err(LookupError::NoIdentity);
    };
    let pods = Api::<Pod>::namespaced(client.clone(), namespace);
    let pod = pods
        .get_opt(name)
        .await
        .map_err(|source| LookupError::Api {
            what: format!("pod {namespace}/{name}"),
            source,
        })?
        .ok_or_else(|| LookupError::NoPod {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        })?;
    let Some(owner) = controller_daemonset(&pod) else {
        return Ok(decide(&pod, None));
    };
    let daemonsets = Api::<DaemonSet>::namespaced(client.clone(), namespace);
    let ds = daemonsets
        .get_opt(&owner)
        .await
        .map_err(|source| LookupError::Api {
            what: format!("daemonset {namespace}/{owner}"),
            source,
        })?;
    Ok(decide(&pod, ds.as_ref()))
}

/// On graceful shutdown: unchains the CNI configuration in `conf_dir` when the agent is being
/// uninstalled, keeps it otherwise. Never fails: every outcome is logged.
pub async fn on_shutdown(
    client: &kube::Client,
    namespace: Option<&str>,
    pod_name: Option<&str>,
    conf_dir: &Path,
    timeout: Duration,
) {
    let decision =
        match tokio::time::timeout(timeout, decide_from_api(client, namespace, pod_name)).await {
            Ok(Ok(d)) => d,
            Ok(Err(e)) => return warn_kept(&e, conf_dir),
            Err(_) => return warn_kept(&LookupError::Timeout(timeout), conf_dir),
        };
    match decision {
        Decision::Keep { reason } => {
            tracing::info!(%reason, "keeping the CNI chaining: an agent is expected back");
        }
        Decision::Unchain { reason } => match install::uninstall_config(conf_dir) {
            Ok(files) => tracing::info!(
                %reason,
                files,
                dir = %conf_dir.display(),
                "uninstall: removed bridgenet from the CNI configuration"
            ),
            Err(e) => tracing::error!(
                %reason,
                error = %e,
                dir = %conf_dir.display(),
                "uninstall: could not remove bridgenet from the CNI configuration; pods on this node will fail to start until it is removed (bridgenet-agent uninstall-cni --cni-conf-dir DIR, or delete the {{\"type\":\"bridgenet\"}} entry by hand)"
            ),
        },
    }
}

fn warn_kept(e: &LookupError, conf_dir: &Path) {
    tracing::warn!(
        error = %e,
        dir = %conf_dir.display(),
        "cannot tell an uninstall from a restart; keeping the CNI chaining. If bridgenet is being uninstalled, remove the {{\"type\":\"bridgenet\"}} entry from the conflist in that directory by hand (or run `bridgenet-agent uninstall-cni --cni-conf-dir DIR`), or pods on this node will fail to start"
    );
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(owners: serde_json::Value) -> Pod {
        serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "bridgenet-agent-x7k2p", "namespace": "bridgenet-system",
                         "ownerReferences": owners},
        }))
        .unwrap()
    }

    fn ds_owner() -> serde_json::Value {
        json!([{"apiVersion": "apps/v1", "kind": "DaemonSet", "name": "bridgenet-agent",
                "uid": "u1", "controller": true, "blockOwnerDeletion": true}])
    }

    fn ds(deleting: bool) -> DaemonSet {
        let mut meta =
            json!({"name": "bridgenet-agent", "namespace": "bridgenet-system", "uid": "u1"});
        if deleting {
            meta["deletionTimestamp"] = json!("2026-11-29T23:00:00Z");
            meta["finalizers"] = json!(["foregroundDeletion"]);
        }
        serde_json::from_value(
            json!({"apiVersion": "apps/v1", "kind": "DaemonSet", "metadata": meta}),
        )
        .unwrap()
    }

    #[test]
    fn daemonset_gone_or_deleting_unchains() {
        let p = pod(ds_owner());
        assert!(matches!(decide(&p, None), Decision::Unchain { .. }));
        assert!(matches!(
            decide(&p, Some(&ds(true))),
            Decision::Unchain { .. }
        ));
    }

    #[test]
    fn daemonset_present_keeps() {
        let p = pod(ds_owner());
        assert!(matches!(
            decide(&p, Some(&ds(false))),
            Decision::Keep { .. }
        ));
    }

    #[test]
    fn not_owned_by_a_daemonset_keeps() {
        // Run by hand (no owner), or by something other than a DaemonSet: never unchain on a
        // guess, even though no DaemonSet was found.
        assert!(matches!(
            decide(&pod(json!([])), None),
            Decision::Keep { .. }
        ));
        let rs = json!([{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "x",
                         "uid": "u2", "controller": true}]);
        assert!(matches!(decide(&pod(rs), None), Decision::Keep { .. }));
        // A DaemonSet owner that is not the controller does not count.
        let not_ctrl = json!([{"apiVersion": "apps/v1", "kind": "DaemonSet", "name": "bridgenet-agent",
                               "uid": "u1", "controller": false}]);
        assert!(matches!(
            decide(&pod(not_ctrl), None),
            Decision::Keep { .. }
        ));
        assert_eq!(
            controller_daemonset(&pod(ds_owner())).as_deref(),
            Some("bridgenet-agent")
        );
    }

    #[test]
    fn other_daemonset_keeps() {
        let p = pod(ds_owner());
        let mut other = ds(true);
        other.metadata.name = Some("something-else".into());
        assert!(matches!(decide(&p, Some(&other)), Decision::Keep { .. }));
    }
}
