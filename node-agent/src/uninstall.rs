//! Telling an uninstall from a restart at SIGTERM, and unchaining the CNI configuration only
//! for the former.
//!
//! While the `{"type":"bridgenet"}` entry is chained into the node's primary conflist, every pod
//! ADD goes through the agent; without a running agent it fails (CNI error 11) and no pod starts
//! on the node. That is right during a rolling update or a restart (pods wait for their
//! networks, or get a clear error) but wrong after `helm uninstall`, when no agent will come
//! back. The agent's controller DaemonSet says which: gone (404) or carrying a
//! `deletionTimestamp` means uninstall. Anything uncertain keeps the chaining.
//!
//! `helm uninstall` deletes the DaemonSet and, milliseconds later, the agent's RBAC and
//! ServiceAccount, before the garbage collector gets to the pods: at SIGTERM the agent may no
//! longer be allowed to read anything. So the agent finds its DaemonSet at start and keeps a
//! watch on it (an open watch is authorized once, when it starts, and goes on delivering); at
//! SIGTERM it uses what the watch saw, confirmed by a fresh GET when the watch still says
//! "present".

use std::path::Path;
use std::time::Duration;

use futures::StreamExt as _;
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::runtime::{WatchStreamExt as _, watcher};
use tokio::sync::watch;

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

/// What is known of the agent's DaemonSet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DsState {
    /// Not read yet.
    Unknown,
    /// Exists and is not being deleted.
    Present,
    /// Has a `deletionTimestamp` (foreground deletion).
    Deleting,
    /// Does not exist (404, or deleted while watched).
    Gone,
}

/// The state of DaemonSet `owner` from a lookup of it (`None`: it does not exist).
pub fn observe(owner: &str, daemonset: Option<&DaemonSet>) -> DsState {
    match daemonset {
        None => DsState::Gone,
        Some(ds) if ds.metadata.name.as_deref() != Some(owner) => DsState::Unknown,
        Some(ds) if ds.metadata.deletion_timestamp.is_some() => DsState::Deleting,
        Some(_) => DsState::Present,
    }
}

/// The decision from the state of the agent's controller DaemonSet `owner`.
pub fn decide_state(owner: &str, state: DsState) -> Decision {
    match state {
        DsState::Gone => Decision::Unchain {
            reason: format!("DaemonSet {owner} no longer exists"),
        },
        DsState::Deleting => Decision::Unchain {
            reason: format!("DaemonSet {owner} is being deleted"),
        },
        DsState::Present => Decision::Keep {
            reason: format!("DaemonSet {owner} still exists: an agent comes back"),
        },
        DsState::Unknown => Decision::Keep {
            reason: format!("state of DaemonSet {owner} unknown"),
        },
    }
}

/// The decision from the agent's own Pod and the lookup of its controller DaemonSet
/// (`None`: the DaemonSet does not exist). Pure: the API calls are in [`decide_from_api`].
pub fn decide(pod: &Pod, daemonset: Option<&DaemonSet>) -> Decision {
    match controller_daemonset(pod) {
        None => Decision::Keep {
            reason: "the agent's pod is not controlled by a DaemonSet".into(),
        },
        Some(owner) => decide_state(&owner, observe(&owner, daemonset)),
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

/// What the background watch knows of the agent's DaemonSet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Observed {
    /// `--pod-name`/`--pod-namespace` not set: nothing to watch.
    NoIdentity,
    /// The agent's own Pod has not been read yet.
    Looking,
    /// The agent's Pod has no controller DaemonSet.
    NotDaemonSet,
    /// The controller DaemonSet `name` and its last known state.
    Ds {
        /// Its name (in the agent's namespace).
        name: String,
        /// What the watch last saw.
        state: DsState,
    },
}

/// Handle on the background watch of the agent's DaemonSet, consulted at SIGTERM.
pub struct Observer {
    client: kube::Client,
    namespace: Option<String>,
    pod_name: Option<String>,
    rx: watch::Receiver<Observed>,
}

impl Observer {
    /// Starts reading the agent's own Pod (retrying until it succeeds) and then watching its
    /// controller DaemonSet, in a task of its own: it must outlive the agent's other tasks,
    /// which stop before the shutdown decision.
    pub fn spawn(
        client: kube::Client,
        namespace: Option<String>,
        pod_name: Option<String>,
    ) -> Self {
        let (tx, rx) = watch::channel(Observed::Looking);
        match (namespace.clone(), pod_name.clone()) {
            (Some(ns), Some(name)) => {
                tokio::spawn(observe_daemonset(client.clone(), ns, name, tx));
            }
            _ => {
                tx.send_replace(Observed::NoIdentity);
            }
        }
        Self {
            client,
            namespace,
            pod_name,
            rx,
        }
    }

    /// What the watch knows now.
    pub fn current(&self) -> Observed {
        self.rx.borrow().clone()
    }
}

async fn observe_daemonset(
    client: kube::Client,
    namespace: String,
    pod_name: String,
    tx: watch::Sender<Observed>,
) {
    let pods = Api::<Pod>::namespaced(client.clone(), &namespace);
    let mut backoff = Duration::from_secs(1);
    let pod = loop {
        match pods.get_opt(&pod_name).await {
            Ok(Some(pod)) => break pod,
            Ok(None) => tracing::warn!(pod = %pod_name, %namespace, "own pod not found; retrying"),
            Err(e) => {
                tracing::warn!(error = %e, pod = %pod_name, %namespace, "reading own pod; retrying")
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(30));
    };
    let Some(owner) = controller_daemonset(&pod) else {
        tracing::info!(pod = %pod_name, "own pod has no controller DaemonSet: the CNI chaining is kept on shutdown");
        tx.send_replace(Observed::NotDaemonSet);
        return;
    };
    tx.send_replace(Observed::Ds {
        name: owner.clone(),
        state: DsState::Unknown,
    });
    let api = Api::<DaemonSet>::namespaced(client, &namespace);
    let config = watcher::Config::default().fields(&format!("metadata.name={owner}"));
    let mut events = std::pin::pin!(watcher(api, config).default_backoff());
    // A (re)list that ends without the object means it is gone.
    let mut seen_in_list = false;
    while let Some(event) = events.next().await {
        let state = match event {
            Ok(watcher::Event::Init) => {
                seen_in_list = false;
                continue;
            }
            Ok(watcher::Event::InitApply(ds)) => {
                seen_in_list = true;
                observe(&owner, Some(&ds))
            }
            Ok(watcher::Event::InitDone) if seen_in_list => continue,
            Ok(watcher::Event::InitDone) => DsState::Gone,
            Ok(watcher::Event::Apply(ds)) => observe(&owner, Some(&ds)),
            Ok(watcher::Event::Delete(_)) => DsState::Gone,
            Err(e) => {
                tracing::debug!(error = %e, daemonset = %owner, "watching own DaemonSet");
                continue;
            }
        };
        tracing::debug!(daemonset = %owner, ?state, "own DaemonSet");
        tx.send_replace(Observed::Ds {
            name: owner.clone(),
            state,
        });
    }
}

/// On graceful shutdown: unchains the CNI configuration in `conf_dir` when the agent is being
/// uninstalled, keeps it otherwise. Never fails: every outcome is logged. `timeout` bounds the
/// API calls and the wait for the watch.
pub async fn on_shutdown(observer: &mut Observer, conf_dir: &Path, timeout: Duration) {
    let decision = match tokio::time::timeout(timeout, shutdown_decision(observer)).await {
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
                "uninstall: could not remove bridgenet from the CNI configuration; pods on this node will fail to start until it is removed (bridgenet-agent uninstall-cni --cni-conf-dir DIR; or by hand: delete the {{\"type\":\"bridgenet\"}} entry, and where a NN-name.conf.bridgenet-orig exists, rename it back to NN-name.conf and delete NN-name.conflist)"
            ),
        },
    }
}

async fn shutdown_decision(observer: &mut Observer) -> Result<Decision, LookupError> {
    let (name, state) = match observer.current() {
        Observed::NoIdentity => return Err(LookupError::NoIdentity),
        Observed::NotDaemonSet => {
            return Ok(Decision::Keep {
                reason: "the agent's pod is not controlled by a DaemonSet".into(),
            });
        }
        // The start-up read never succeeded: one more try, now.
        Observed::Looking => {
            return decide_from_api(
                &observer.client,
                observer.namespace.as_deref(),
                observer.pod_name.as_deref(),
            )
            .await;
        }
        Observed::Ds { name, state } => (name, state),
    };
    if matches!(state, DsState::Gone | DsState::Deleting) {
        return Ok(decide_state(&name, state));
    }
    // The watch says present (or has not answered yet): the deletion may be in flight.
    let namespace = observer.namespace.clone().unwrap_or_default();
    let api = Api::<DaemonSet>::namespaced(observer.client.clone(), &namespace);
    let error = match api.get_opt(&name).await {
        Ok(ds) => return Ok(decide_state(&name, observe(&name, ds.as_ref()))),
        Err(source) => LookupError::Api {
            what: format!("daemonset {namespace}/{name}"),
            source,
        },
    };
    // Forbidden or unauthorized right after our RBAC was deleted with the release: the watch,
    // authorized earlier, may still deliver the deletion.
    tracing::info!(error = %error, daemonset = %name, "cannot read own DaemonSet; waiting for its watch");
    loop {
        if observer.rx.changed().await.is_err() {
            return Err(error);
        }
        if let Observed::Ds { name, state } = observer.current()
            && matches!(state, DsState::Gone | DsState::Deleting)
        {
            return Ok(decide_state(&name, state));
        }
    }
}

fn warn_kept(e: &LookupError, conf_dir: &Path) {
    tracing::warn!(
        error = %e,
        dir = %conf_dir.display(),
        "cannot tell an uninstall from a restart; keeping the CNI chaining. If bridgenet is being uninstalled, run `bridgenet-agent uninstall-cni --cni-conf-dir DIR` (or by hand: delete the {{\"type\":\"bridgenet\"}} entry from the conflist in that directory, and where a NN-name.conf.bridgenet-orig exists, rename it back to NN-name.conf and delete NN-name.conflist), or pods on this node will fail to start"
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
    fn watched_states() {
        assert_eq!(observe("bridgenet-agent", None), DsState::Gone);
        assert_eq!(
            observe("bridgenet-agent", Some(&ds(false))),
            DsState::Present
        );
        assert_eq!(
            observe("bridgenet-agent", Some(&ds(true))),
            DsState::Deleting
        );
        assert_eq!(observe("other", Some(&ds(true))), DsState::Unknown);
        assert!(matches!(
            decide_state("x", DsState::Unknown),
            Decision::Keep { .. }
        ));
        assert!(matches!(
            decide_state("x", DsState::Present),
            Decision::Keep { .. }
        ));
        assert!(matches!(
            decide_state("x", DsState::Gone),
            Decision::Unchain { .. }
        ));
        assert!(matches!(
            decide_state("x", DsState::Deleting),
            Decision::Unchain { .. }
        ));
    }

    #[test]
    fn other_daemonset_keeps() {
        let p = pod(ds_owner());
        let mut other = ds(true);
        other.metadata.name = Some("something-else".into());
        assert!(matches!(decide(&p, Some(&other)), Decision::Keep { .. }));
    }
}
