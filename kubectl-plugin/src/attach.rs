//! `connect` and `disconnect`: edit a pod's `bridgenet.io/networks` annotation without losing a
//! concurrent edit, then wait for the node agent's answer.
//!
//! The edit is a JSON merge patch carrying the resourceVersion it was computed from, so the API
//! server refuses it (409) if anything changed the pod in between; the plugin then reads the
//! pod again and computes the edit anew. The agent answers in two places: the pod's
//! `bridgenet.io/network-status` annotation once the interface is there (or gone), or a Warning
//! Event on the pod when it refuses.

use std::collections::HashMap;
use std::time::Duration;

use bridgenet_crds::{ANNOTATION_NETWORK_STATUS, ANNOTATION_NETWORKS, BridgeNetwork};
use k8s_openapi::api::core::v1::{Event, Pod};
use kube::api::{ListParams, Patch, PatchParams};
use kube::{Api, Client, ResourceExt};
use serde_json::json;
use tokio::time::Instant;

use crate::annotation::{self, Attachment, EditError, Networks, StatusEntry};
use crate::cli::{ConnectArgs, DisconnectArgs};
use crate::cluster::FIELD_MANAGER;
use crate::error::{Error, Verb};

/// Attempts at the guarded edit before giving up on a pod that keeps changing.
const EDIT_ATTEMPTS: u32 = 8;
/// Between two looks at the pod and its Events while waiting.
const POLL: Duration = Duration::from_millis(250);
/// The controller name of the node agent's Events.
const AGENT: &str = "bridgenet-agent";

/// The BridgeNetwork `name`, if it exists.
async fn network(client: &Client, name: &str) -> Result<Option<BridgeNetwork>, Error> {
    Api::<BridgeNetwork>::all(client.clone())
        .get_opt(name)
        .await
        .map_err(|source| Error::Get {
            name: name.to_owned(),
            source,
        })
}

/// `connect NET POD`: asks for the network in the pod's annotation and returns the agent's
/// report of the new interface (a one-row table), or nothing with `--timeout 0`.
pub async fn connect(client: Client, args: ConnectArgs) -> Result<String, Error> {
    let net = network(&client, &args.network)
        .await?
        .ok_or_else(|| Error::NoSuchNetwork(args.network.clone()))?;
    let request = Attachment::new(
        &net,
        args.ip.as_deref(),
        args.ip6.as_deref(),
        &args.aliases,
        args.interface.as_deref(),
    )?;
    let target = Target::new(client, args.namespace, args.pod);
    let seen = target.agent_warnings(None).await;
    let pod = target
        .edit(|pod, current| {
            let in_use: Vec<(String, String)> = status_of(pod)
                .into_iter()
                .map(|e| (e.name, e.interface))
                .collect();
            annotation::connect(current, &request, &in_use)
                .map_err(|e| target.edit_error(e, &args.network))
        })
        .await?;
    if args.timeout.is_zero() {
        return Ok(String::new());
    }
    let entry = target
        .wait(Verb::Attach, &args.network, &pod, seen, args.timeout, |p| {
            status_of(p).into_iter().find(|e| e.name == args.network)
        })
        .await?;
    Ok(connected_table(&target.namespace, &target.pod, &entry))
}

/// `disconnect NET POD`: drops the network from the pod's annotation and waits until the agent
/// no longer reports it. Prints nothing, like Docker.
///
/// A network that no longer exists can still be dropped from a pod that asks for it; only when
/// the pod does not ask for it either is it Docker's "No such network".
pub async fn disconnect(client: Client, args: DisconnectArgs) -> Result<String, Error> {
    let exists = network(&client, &args.network).await?.is_some();
    let target = Target::new(client, args.namespace, args.pod);
    let seen = target.agent_warnings(None).await;
    let edited = target
        .edit(|_, current| {
            annotation::disconnect(current, &args.network).map_err(|e| match e {
                EditError::NotConnected if !exists => Error::NoSuchNetwork(args.network.clone()),
                e => target.edit_error(e, &args.network),
            })
        })
        .await;
    let pod = match edited {
        Err(Error::NoSuchPod(_)) if !exists => return Err(Error::NoSuchNetwork(args.network)),
        other => other?,
    };
    if args.timeout.is_zero() {
        return Ok(String::new());
    }
    target
        .wait(Verb::Detach, &args.network, &pod, seen, args.timeout, |p| {
            (!status_of(p).iter().any(|e| e.name == args.network)).then_some(())
        })
        .await?;
    Ok(String::new())
}

/// The pod a verb edits.
struct Target {
    pods: Api<Pod>,
    events: Api<Event>,
    namespace: String,
    pod: String,
}

impl Target {
    fn new(client: Client, namespace: Option<String>, pod: String) -> Self {
        let namespace = namespace.unwrap_or_else(|| client.default_namespace().to_owned());
        Self {
            pods: Api::namespaced(client.clone(), &namespace),
            events: Api::namespaced(client, &namespace),
            namespace,
            pod,
        }
    }

    fn qualified(&self) -> String {
        format!("{}/{}", self.namespace, self.pod)
    }

    /// The pod as the API server has it now; `None` if it does not exist.
    async fn read_pod(&self) -> Result<Option<Pod>, Error> {
        self.pods
            .get_opt(&self.pod)
            .await
            .map_err(|source| Error::Api {
                what: format!("get pod {}", self.qualified()),
                source,
            })
    }

    fn edit_error(&self, e: EditError, network: &str) -> Error {
        let pod = self.pod.clone();
        let network = network.to_owned();
        match e {
            EditError::AlreadyConnected => Error::AlreadyConnected { pod, network },
            EditError::NotConnected => Error::NotConnected { pod, network },
            EditError::InterfaceTaken { .. } => Error::InterfaceTaken(e.to_string()),
        }
    }

    /// Reads the pod, has `decide` compute the new annotation from the current one, and
    /// writes it guarded by the resourceVersion it read; on a conflict, all over again.
    async fn edit(
        &self,
        decide: impl Fn(&Pod, &Networks) -> Result<Networks, Error>,
    ) -> Result<Pod, Error> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let pod = self
                .read_pod()
                .await?
                .ok_or_else(|| Error::NoSuchPod(self.qualified()))?;
            check_attachable(&pod, &self.pod)?;
            let current = Networks::parse(
                pod.annotations()
                    .get(ANNOTATION_NETWORKS)
                    .map(String::as_str),
            )
            .map_err(|source| Error::BadAnnotation {
                pod: self.qualified(),
                source,
            })?;
            let value = decide(&pod, &current)?.render();
            let patch = json!({"metadata": {
                "resourceVersion": pod.resource_version(),
                "annotations": {ANNOTATION_NETWORKS: value},
            }});
            let params = PatchParams {
                field_manager: Some(FIELD_MANAGER.to_owned()),
                ..PatchParams::default()
            };
            match self
                .pods
                .patch(&self.pod, &params, &Patch::Merge(&patch))
                .await
            {
                Ok(pod) => return Ok(pod),
                Err(kube::Error::Api(s)) if s.is_conflict() && attempt < EDIT_ATTEMPTS => {
                    // Someone else changed the pod since it was read: their change stays, and
                    // the edit is computed again from it.
                    tokio::time::sleep(Duration::from_millis(20 * u64::from(attempt))).await;
                }
                Err(kube::Error::Api(s)) if s.is_not_found() => {
                    return Err(Error::NoSuchPod(self.qualified()));
                }
                Err(source) => {
                    return Err(Error::Api {
                        what: format!("annotate pod {}", self.qualified()),
                        source,
                    });
                }
            }
        }
    }

    /// The agent's Warning Events on the pod, by uid, with the resourceVersion they had: a
    /// repeated Event is the same object with a new resourceVersion. `None` when the Events
    /// cannot be read (RBAC): the wait then goes by the annotation alone.
    async fn agent_warnings(
        &self,
        pod_uid: Option<&str>,
    ) -> Option<HashMap<String, (String, Event)>> {
        let params = ListParams::default().fields(&format!(
            "involvedObject.kind=Pod,involvedObject.name={}",
            self.pod
        ));
        let list = self.events.list(&params).await.ok()?;
        Some(
            list.items
                .into_iter()
                .filter(|e| is_agent_warning(e, pod_uid))
                .map(|e| {
                    (
                        e.metadata.uid.clone().unwrap_or_default(),
                        (e.metadata.resource_version.clone().unwrap_or_default(), e),
                    )
                })
                .collect(),
        )
    }

    /// Polls the pod until `done` finds the agent's answer, the agent posts a new Warning
    /// Event about the pod, or `timeout` passes.
    async fn wait<T>(
        &self,
        verb: Verb,
        network: &str,
        edited: &Pod,
        seen: Option<HashMap<String, (String, Event)>>,
        timeout: Duration,
        done: impl Fn(&Pod) -> Option<T>,
    ) -> Result<T, Error> {
        let deadline = crate::cli::deadline(timeout);
        let uid = edited.metadata.uid.clone();
        let mut pod = edited.clone();
        loop {
            if let Some(answer) = done(&pod) {
                return Ok(answer);
            }
            let now = match &seen {
                Some(_) => self.agent_warnings(uid.as_deref()).await,
                None => None,
            };
            if let (Some(before), Some(now)) = (&seen, now)
                && let Some(event) = now
                    .into_iter()
                    .find(|(uid, (rv, _))| before.get(uid).is_none_or(|(old, _)| old != rv))
                    .map(|(_, (_, e))| e)
            {
                return Err(Error::AgentRefused {
                    verb,
                    pod: self.qualified(),
                    network: network.to_owned(),
                    reason: event.reason.unwrap_or_default(),
                    message: event.message.unwrap_or_default(),
                });
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(Error::Timeout {
                    verb,
                    pod: self.qualified(),
                    network: network.to_owned(),
                    after: timeout,
                    node: pod.spec.as_ref().and_then(|s| s.node_name.clone()),
                });
            }
            tokio::time::sleep(POLL.min(deadline - now)).await;
            pod = self
                .read_pod()
                .await?
                .filter(|p| p.metadata.uid == uid)
                .ok_or_else(|| Error::PodGone(self.qualified()))?;
        }
    }
}

/// Docker refuses containers in the host's network namespace, and ones being removed; the
/// agent ignores such pods, so waiting for it would only time out.
fn check_attachable(pod: &Pod, name: &str) -> Result<(), Error> {
    if pod
        .spec
        .as_ref()
        .and_then(|s| s.host_network)
        .unwrap_or(false)
    {
        return Err(Error::HostNetwork);
    }
    if pod.metadata.deletion_timestamp.is_some() {
        return Err(Error::PodTerminating(name.to_owned()));
    }
    Ok(())
}

/// A Warning from the node agent about this pod (`pod_uid`, when known: not an earlier pod
/// of the same name).
fn is_agent_warning(e: &Event, pod_uid: Option<&str>) -> bool {
    let from_agent = e.reporting_component.as_deref() == Some(AGENT)
        || e.source.as_ref().and_then(|s| s.component.as_deref()) == Some(AGENT);
    let this_pod = match (pod_uid, e.involved_object.uid.as_deref()) {
        (Some(want), Some(got)) => want == got,
        _ => true,
    };
    e.type_.as_deref() == Some("Warning") && from_agent && this_pod
}

fn status_of(pod: &Pod) -> Vec<StatusEntry> {
    annotation::status_entries(
        pod.annotations()
            .get(ANNOTATION_NETWORK_STATUS)
            .map(String::as_str),
    )
}

/// The agent's report of one attachment, as a row under kubectl-style headers.
fn connected_table(namespace: &str, pod: &str, e: &StatusEntry) -> String {
    let dash = |v: String| if v.is_empty() { "<none>".to_owned() } else { v };
    let rows = [
        [
            "NAMESPACE",
            "POD",
            "NETWORK",
            "INTERFACE",
            "IPS",
            "MAC",
            "GATEWAY",
        ]
        .map(str::to_owned),
        [
            namespace.to_owned(),
            pod.to_owned(),
            e.name.clone(),
            dash(e.interface.clone()),
            dash(e.ips.join(",")),
            dash(e.mac.clone()),
            dash(e.gateway.join(",")),
        ],
    ];
    crate::render::align(&rows.map(Vec::from))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    fn event(v: serde_json::Value) -> Event {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn only_the_agents_warnings_about_this_pod_count() {
        let base = serde_json::json!({"metadata": {"name": "e"}, "type": "Warning",
            "involvedObject": {"kind": "Pod", "name": "web", "uid": "u1"},
            "reportingComponent": "bridgenet-agent", "reason": "AddressUnavailable"});
        assert!(is_agent_warning(&event(base.clone()), Some("u1")));
        assert!(is_agent_warning(&event(base.clone()), None));
        assert!(!is_agent_warning(&event(base.clone()), Some("u2")));
        let mut normal = base.clone();
        normal["type"] = "Normal".into();
        assert!(!is_agent_warning(&event(normal), Some("u1")));
        let mut scheduler = base.clone();
        scheduler["reportingComponent"] = "default-scheduler".into();
        assert!(!is_agent_warning(&event(scheduler), Some("u1")));
        let mut old_style = base;
        old_style["reportingComponent"] = "".into();
        old_style["source"] = serde_json::json!({"component": "bridgenet-agent"});
        assert!(is_agent_warning(&event(old_style), Some("u1")));
    }

    #[test]
    fn the_connect_report_is_one_row() {
        let e = StatusEntry {
            name: "web".into(),
            interface: "net2".into(),
            ips: vec!["172.20.0.5".into(), "fd00::5".into()],
            mac: "02:42:ac:14:00:05".into(),
            gateway: vec![],
        };
        let out = connected_table("default", "api", &e);
        let lines: Vec<Vec<&str>> = out
            .lines()
            .map(|l| l.split_whitespace().collect())
            .collect();
        assert_eq!(
            lines[1],
            [
                "default",
                "api",
                "web",
                "net2",
                "172.20.0.5,fd00::5",
                "02:42:ac:14:00:05",
                "<none>"
            ]
        );
    }
}
