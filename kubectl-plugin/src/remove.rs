//! `rm`: delete networks, telling a deletion the operator holds from one that went through.
//!
//! Docker refuses to remove a network with containers on it. bridgenet's operator keeps its
//! finalizer on such a network instead, and reports `Ready=False` with reason
//! `DeletionBlocked` and the attached pods in the message; `rm` waits briefly for that (or
//! for the object to go) and turns it into Docker's error. The deletion itself stays pending
//! on the server and completes once the pods detach, which the error says.

use std::time::Duration;

use bridgenet_crds::conditions::{self, Reason};
use bridgenet_crds::{ANNOTATION_FORCE_DELETE, BridgeNetwork};
use kube::api::{DeleteParams, Patch, PatchParams};
use kube::{Api, Client, ResourceExt};
use serde_json::json;
use tokio::time::Instant;

use crate::cli::RmArgs;
use crate::cluster::FIELD_MANAGER;
use crate::error::Error;

/// Between two looks at a network being deleted.
const POLL: Duration = Duration::from_millis(250);

/// What `rm` did: the names removed (or accepted for removal), notes about deletions still
/// in progress, and the failures, which do not stop the other networks (like Docker).
#[derive(Debug, Default)]
pub struct Removal {
    /// One removed network name per line, as Docker prints them.
    pub stdout: String,
    /// Networks whose deletion was accepted but has not finished within `--timeout`.
    pub notes: Vec<String>,
    /// One per network that was not removed.
    pub errors: Vec<Error>,
}

enum Outcome {
    Gone,
    Pending(String),
}

/// Removes each network in turn.
pub async fn rm(client: Client, args: RmArgs) -> Removal {
    let api = Api::<BridgeNetwork>::all(client);
    let mut out = Removal::default();
    for name in &args.networks {
        match remove_one(&api, name, args.force_delete, args.timeout).await {
            Ok(outcome) => {
                out.stdout.push_str(name);
                out.stdout.push('\n');
                if let Outcome::Pending(note) = outcome {
                    out.notes.push(note);
                }
            }
            Err(Error::NoSuchNetwork(_)) if args.force => {}
            Err(e) => out.errors.push(e),
        }
    }
    out
}

async fn remove_one(
    api: &Api<BridgeNetwork>,
    name: &str,
    force_delete: bool,
    timeout: Duration,
) -> Result<Outcome, Error> {
    let api_error = |what: &str, source: kube::Error| match source {
        kube::Error::Api(ref s) if s.is_not_found() => Error::NoSuchNetwork(name.to_owned()),
        source => Error::Api {
            what: format!("{what} bridgenetwork {name}"),
            source,
        },
    };
    if force_delete {
        let patch = json!({"metadata": {"annotations": {ANNOTATION_FORCE_DELETE: "true"}}});
        let params = PatchParams {
            field_manager: Some(FIELD_MANAGER.to_owned()),
            ..PatchParams::default()
        };
        api.patch(name, &params, &Patch::Merge(&patch))
            .await
            .map_err(|e| api_error("annotate", e))?;
    }
    let deleting = match api.delete(name, &DeleteParams::default()).await {
        Ok(either) => match either.left() {
            Some(net) => net,
            None => return Ok(Outcome::Gone),
        },
        Err(e) => return Err(api_error("delete", e)),
    };
    let uid = deleting.metadata.uid.clone();
    let deadline = crate::cli::deadline(timeout);
    let mut net = deleting;
    loop {
        // With --force-delete a DeletionBlocked still shown is from before: the operator goes
        // ahead once it sees the annotation.
        if !force_delete && let Some(pods) = blocked_by(&net) {
            return Err(Error::ActiveEndpoints {
                network: name.to_owned(),
                pods,
            });
        }
        let now = Instant::now();
        if now >= deadline {
            return Ok(Outcome::Pending(pending_note(&net)));
        }
        tokio::time::sleep(POLL.min(deadline - now)).await;
        match api.get_opt(name).await.map_err(|e| api_error("get", e))? {
            Some(n) if n.metadata.uid == uid => net = n,
            // Gone, or gone and made again by someone else.
            _ => return Ok(Outcome::Gone),
        }
    }
}

/// The pods holding the network, when the operator reports its deletion blocked: from the
/// `Ready` condition's message, `deletion waits for N attached pod interfaces: <pods>; ...`.
fn blocked_by(net: &BridgeNetwork) -> Option<String> {
    let ready = conditions::condition(&net.status.as_ref()?.conditions, conditions::READY)?;
    if ready.reason != Reason::DeletionBlocked.as_str() {
        return None;
    }
    let message = ready.message.as_str();
    Some(
        message
            .split_once(": ")
            .and_then(|(_, rest)| rest.split_once("; ").map(|(pods, _)| pods))
            .unwrap_or(message)
            .to_owned(),
    )
}

/// What holds a deletion that did not finish in time: the operator's `Ready` condition, else
/// the finalizers.
fn pending_note(net: &BridgeNetwork) -> String {
    let why = net
        .status
        .as_ref()
        .and_then(|s| conditions::condition(&s.conditions, conditions::READY))
        .filter(|c| c.status == "False" && !c.reason.is_empty())
        .map_or_else(
            || format!("finalizers: {}", net.finalizers().join(", ")),
            |c| format!("{}: {}", c.reason, c.message),
        );
    format!(
        "network {} is still being deleted ({why}); `kubectl get bridgenetwork {}` shows when it is gone",
        net.name_any(),
        net.name_any()
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    fn net(finalizers: &[&str], ready: Option<(&str, &str)>) -> BridgeNetwork {
        let mut v = json!({"apiVersion": "bridgenet.io/v1alpha1", "kind": "BridgeNetwork",
            "metadata": {"name": "web", "finalizers": finalizers},
            "spec": {"subnet": "172.20.0.0/16"}});
        if let Some((reason, message)) = ready {
            v["status"] = json!({"conditions": [{"type": "Ready", "status": "False", "reason": reason,
                "message": message, "lastTransitionTime": "2026-01-01T00:00:00Z"}]});
        }
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn a_blocked_deletion_names_the_pods_from_the_operators_message() {
        let n = net(
            &["bridgenet.io/operator"],
            Some((
                "DeletionBlocked",
                "deletion waits for 2 attached pod interfaces: default/db on node1, default/web on node2; \
                 detach them (remove the network from the pods' bridgenet.io/networks annotation) or \
                 annotate the network bridgenet.io/force-delete=true",
            )),
        );
        assert_eq!(
            blocked_by(&n).as_deref(),
            Some("default/db on node1, default/web on node2")
        );
        let odd = net(&[], Some(("DeletionBlocked", "held by shop/cart")));
        assert_eq!(blocked_by(&odd).as_deref(), Some("held by shop/cart"));
        let deleting = net(
            &[],
            Some(("Deleting", "waiting for 2 nodes to tear the network down")),
        );
        assert_eq!(blocked_by(&deleting), None);
        assert_eq!(blocked_by(&net(&[], None)), None);
    }

    #[test]
    fn a_pending_deletion_says_what_holds_it() {
        let n = net(
            &["bridgenet.io/operator"],
            Some(("Deleting", "waiting for 2 nodes to tear the network down")),
        );
        assert_eq!(
            pending_note(&n),
            "network web is still being deleted (Deleting: waiting for 2 nodes to tear the network down); \
             `kubectl get bridgenetwork web` shows when it is gone"
        );
        let n = net(&["bridgenet.io/operator", "x.io/y"], None);
        assert!(
            pending_note(&n).contains("(finalizers: bridgenet.io/operator, x.io/y)"),
            "{}",
            pending_note(&n)
        );
    }
}
