//! Repair: putting running pods' interfaces back on their networks, from the journal, after
//! links were deleted by hand or by a host network restart.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::path::{Path, PathBuf};

use bridgenet_crds::ResolvedNodeBridge;

use super::error::attach_error;
use super::{Directory, Engine, PodRef};
use crate::attach::{self, AttachError};
use crate::cni::annotation;
use crate::cni::types::CniError;
use crate::ipam::Allocation;
use crate::metrics;

/// The container runtime as repair needs it: where a running pod's network namespace is. The
/// agent asks CRI; tests answer from their own namespaces.
pub trait Runtime: Send + Sync {
    /// Why the runtime could not answer.
    type Error: std::fmt::Display;
    /// The network namespace of sandbox `container_id` if the runtime runs it (ready);
    /// `Ok(None)` when it does not know it or it is not ready (being created or torn down).
    fn running_netns(
        &self,
        container_id: &str,
    ) -> impl Future<Output = Result<Option<PathBuf>, Self::Error>> + Send;
}

/// What one repair pass did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Repaired {
    /// Host veths put back on their bridge (re-created under them), set up, or marked.
    pub reattached: usize,
    /// Veth pairs re-created in running pods (host end deleted, or the whole node's links).
    pub recreated: usize,
    /// Interfaces that could not be repaired this pass (retried at the next).
    pub failed: usize,
}

impl Repaired {
    /// Whether the pass changed or tried to change anything.
    pub fn is_empty(&self) -> bool {
        *self == Repaired::default()
    }
}

impl<D: Directory> Engine<D> {
    /// Puts every running pod's interfaces back on their networks, as the journal records them
    /// (same interface name, MAC and addresses), after links were deleted by hand or by a host
    /// network restart. Reads only when everything is in place.
    ///
    /// - A host veth not on its bridge (the bridge was deleted and re-created: the kernel
    ///   released its ports), down, or without its marker is put back, up and marked.
    /// - A host veth that is gone took the pod end with it (veth pairs die together): the
    ///   pair is re-created in the pod's namespace, as hot-plug would, if the runtime runs the
    ///   sandbox; a sandbox it does not run is left to DEL and the reconcile.
    /// - A network whose bridge is missing is skipped: the data plane re-creates the bridge
    ///   and triggers another pass.
    ///
    /// Sandboxes with a CNI call or hot-plug change in flight are skipped (their lock is held).
    pub async fn repair<R: Runtime>(&self, runtime: &R) -> Result<Repaired, CniError> {
        let mut interfaces: BTreeMap<(String, String), Vec<Allocation>> = BTreeMap::new();
        // An answered DEL's interfaces are being deleted, not repaired; a pending attachment's
        // were never finished (hot-plug makes them again, the runtime DELs a CNI ADD's).
        for a in self
            .allocations()
            .await
            .into_iter()
            .filter(|a| !a.releasing && !a.pending)
        {
            interfaces
                .entry((a.container_id.clone(), a.ifname.clone()))
                .or_default()
                .push(a);
        }
        if interfaces.is_empty() {
            return Ok(Repaired::default());
        }
        let host = self.host_netns.as_deref();
        let links = attach::host_links(host).await.map_err(attach_error)?;
        let by_name: HashMap<&str, &attach::HostLink> =
            links.iter().map(|l| (l.name.as_str(), l)).collect();
        let mut done = Repaired::default();
        for ((container, ifname), allocs) in interfaces {
            let Some(first) = allocs.first() else {
                continue;
            };
            let Some(spec) = self.dir.node_bridge(&first.network) else {
                continue;
            };
            let Some(bridge) = by_name
                .get(spec.bridge.as_str())
                .filter(|l| l.kind == "bridge")
            else {
                continue;
            };
            let alias = attach::pod_alias(&container, &ifname);
            let veth = by_name.get(first.host_veth.as_str());
            if let Some(v) = veth {
                if v.kind != "veth" {
                    tracing::warn!(veth = %v.name, kind = %v.kind, pod = %first.pod, "a link that is not a veth has a pod veth's name; not touching it");
                    continue;
                }
                if v.master == Some(bridge.index) && v.up && v.alias.as_deref() == Some(&alias) {
                    continue;
                }
            }
            let Some(_sandbox) = self.sandboxes.try_lock(&container) else {
                continue;
            };
            // Still journaled now that the lock is ours: a DEL may have just finished.
            if !self
                .ipam
                .lock()
                .await
                .of_container(&container)
                .iter()
                .any(|a| a.ifname == ifname && !a.releasing)
            {
                continue;
            }
            let outcome = match veth {
                Some(v) => attach::reattach(host, v.index, bridge.index, alias)
                    .await
                    .map(|()| metrics::Repair::Reattached),
                None => match runtime.running_netns(&container).await {
                    Ok(Some(netns)) => self
                        .recreate(&spec, &allocs, &netns)
                        .await
                        .map(|()| metrics::Repair::Recreated),
                    Ok(None) => continue,
                    Err(e) => {
                        tracing::warn!(container = %container, error = %e, "asking the runtime for a sandbox to repair");
                        done.failed += 1;
                        continue;
                    }
                },
            };
            match outcome {
                Ok(what) => {
                    metrics::repaired(what);
                    match what {
                        metrics::Repair::Reattached => done.reattached += 1,
                        metrics::Repair::Recreated => done.recreated += 1,
                    }
                    tracing::info!(pod = %first.pod, container = %container, interface = %ifname, network = %first.network, bridge = %spec.bridge, action = ?what, "pod interface repaired");
                }
                Err(e) => {
                    done.failed += 1;
                    tracing::warn!(pod = %first.pod, container = %container, interface = %ifname, network = %first.network, error = %e, "repairing a pod interface failed; retrying at the next pass");
                }
            }
        }
        Ok(done)
    }

    /// Re-creates one pod interface in a running pod, with a default route if its annotation
    /// still asks for one there.
    async fn recreate(
        &self,
        spec: &ResolvedNodeBridge,
        allocs: &[Allocation],
        netns: &Path,
    ) -> Result<(), AttachError> {
        let Some(first) = allocs.first() else {
            return Ok(());
        };
        let default_route = match first.pod.split_once('/') {
            Some((namespace, name)) => {
                let pod = PodRef {
                    namespace: namespace.to_owned(),
                    name: name.to_owned(),
                };
                match self.dir.pod(&pod).await {
                    Ok(Some(info)) => info
                        .annotations
                        .get(bridgenet_crds::ANNOTATION_NETWORKS)
                        .and_then(|v| annotation::parse(v).ok())
                        .is_some_and(|requests| {
                            // A sandbox has one interface per network (hot-plug keys on
                            // it), whatever position the network has in the list now.
                            requests
                                .iter()
                                .any(|r| r.name == first.network && r.default_route)
                        }),
                    _ => false,
                }
            }
            None => false,
        };
        let routes = if default_route {
            spec.gateways()
        } else {
            Vec::new()
        };
        let attach_spec = self.attach_spec(spec, allocs, netns, routes);
        let host_veth = attach_spec.host_veth.clone();
        let result = attach::attach(attach_spec).await;
        if result.is_err() {
            // Whatever half of it was made: the next pass starts clean.
            if let Err(e) = attach::detach(self.host_netns.as_deref(), &host_veth).await {
                tracing::warn!(veth = %host_veth, error = %e, "removing a half-repaired pod veth");
            }
        }
        result
    }
}
