//! All or nothing: what an ADD (or a hot-plug attach) reserved is given back when it fails,
//! from one place, like the reference bridge plugin's single success flag.

use crate::cni::types::CniError;
use crate::ipam::Allocation;

use super::error::ipam_error;
use super::{Directory, Engine};

/// The addresses one attach call has journaled, and whether it has started making their
/// interfaces. Settled once: kept when the call succeeds, rolled back when it fails.
///
/// The rollback awaits netlink and the journal, which a destructor cannot; a reservation
/// dropped unsettled (the call was cancelled or panicked) only says what it leaves behind. The
/// runtime's DEL, CNI GC and the periodic reconcile free it by sandbox ID, as after a crash.
#[must_use = "settle the reservation with the attach call's outcome"]
pub(super) struct Reservation<'e, D: Directory> {
    engine: &'e Engine<D>,
    held: Vec<Allocation>,
    /// Set once the first interface may exist: from then on a rollback deletes interfaces
    /// before it frees their addresses.
    interfaces: bool,
    settled: bool,
}

impl<'e, D: Directory> Reservation<'e, D> {
    pub(super) fn new(engine: &'e Engine<D>) -> Self {
        Self {
            engine,
            held: Vec::new(),
            interfaces: false,
            settled: false,
        }
    }

    /// Adds allocations just journaled.
    pub(super) fn hold(&mut self, allocs: &[Allocation]) {
        self.held.extend_from_slice(allocs);
    }

    /// Marks the start of interface creation.
    pub(super) fn making_interfaces(&mut self) {
        self.interfaces = true;
    }

    /// Keeps everything on success, marking the allocations settled (no longer
    /// [pending](crate::ipam::Allocation::pending): from now on they are the pod's endpoints);
    /// on failure, or if that mark cannot be journaled, rolls back exactly what was reserved —
    /// the addresses alone before any interface was made, the interfaces and then their
    /// addresses after — and returns the failure.
    pub(super) async fn settle<T>(mut self, outcome: Result<T, CniError>) -> Result<T, CniError> {
        self.settled = true;
        let outcome = match outcome {
            Ok(done) => {
                let marked = self.engine.ipam.lock().await.settle(&self.held);
                marked.map(|()| done).map_err(|e| ipam_error(e, None))
            }
            Err(e) => Err(e),
        };
        if outcome.is_err() {
            let held = std::mem::take(&mut self.held);
            if self.interfaces {
                if let Err(e) = self.engine.remove_locked(&held).await {
                    tracing::error!(error = %e.msg, "rolling back a failed ADD");
                }
            } else {
                // Claims first: an address whose claim could not be released stays journaled,
                // for the runtime's DEL, CNI GC or the reconcile to release.
                let kept = self.engine.release_claims(&held).await;
                let free: Vec<_> = held
                    .into_iter()
                    .filter(|a| !kept.contains(&(a.network.clone(), a.ip)))
                    .collect();
                if let Err(e) = self.engine.ipam.lock().await.release(&free) {
                    tracing::error!(error = %e, "releasing addresses of a failed ADD");
                }
            }
        }
        outcome
    }
}

impl<D: Directory> Drop for Reservation<'_, D> {
    fn drop(&mut self) {
        if !self.settled && !self.held.is_empty() {
            let containers: Vec<&str> = self.held.iter().map(|a| a.container_id.as_str()).collect();
            tracing::error!(
                ?containers,
                allocations = self.held.len(),
                "an attach stopped before it was settled; its addresses wait for DEL, CNI GC or the reconcile"
            );
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::Mutex;

    use std::sync::Arc;

    use bridgenet_crds::{NodeBridgeSpec, ResolvedNodeBridge, resolve_node_bridge};
    use serde_json::json;

    use crate::cni::annotation::NetworkRequest;
    use crate::cni::engine::{Directory, Engine, Notice, PodInfo, PodRef, Target};
    use crate::cni::types::code;

    /// Two networks on this node, `red` and `blue`, each with its whole /24 as the node's block.
    #[derive(Default)]
    struct TwoNetworks {
        notices: Mutex<Vec<Notice>>,
    }

    impl Directory for TwoNetworks {
        fn node_bridge(&self, network: &str) -> Option<Arc<ResolvedNodeBridge>> {
            let third = match network {
                "red" => 1,
                "blue" => 2,
                _ => return None,
            };
            serde_json::from_value(json!({
                "network": network, "node": "n1", "bridge": format!("bnt{third}"),
                "subnet": format!("172.30.{third}.0/24"), "gateway": format!("172.30.{third}.1"),
                "gatewayMac": "02:aa:00:00:00:01", "blocks": [format!("172.30.{third}.0/24")],
                "mtu": 1400, "vni": 100,
            }))
            .ok()
            .and_then(|spec: NodeBridgeSpec| resolve_node_bridge(&spec).ok())
            .map(Arc::new)
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

        fn notify(&self, notice: Notice) {
            self.notices.lock().unwrap().push(notice);
        }
    }

    fn request(network: &str, interface: &str, ip: Option<&str>) -> NetworkRequest {
        NetworkRequest {
            name: network.into(),
            interface: interface.into(),
            ip: ip.map(|ip| ip.parse().unwrap()),
            mac: None,
            default_route: false,
            aliases: Vec::new(),
            ip6: None,
            sticky: None,
        }
    }

    /// The second network's address is refused before any interface exists: the first
    /// network's address, already journaled, is given back, and no link is touched (the
    /// sandbox's netns does not even exist).
    #[tokio::test]
    async fn a_refused_address_gives_back_what_the_call_reserved_before_it() {
        let state = tempfile::tempdir().unwrap();
        let engine = Engine::new(TwoNetworks::default(), state.path(), None).unwrap();
        let target = Target {
            container_id: "sb1".into(),
            netns: "/nonexistent/netns".into(),
            pod: Some(PodRef {
                namespace: "default".into(),
                name: "web".into(),
            }),
            cni_name: "k8s-pod-network".into(),
            delegate: false,
        };
        let requests = [
            request("red", "net1", None),
            request("blue", "net2", Some("172.30.9.9")),
        ];
        let err = engine.attach(&target, &requests).await.unwrap_err();
        assert_eq!(err.code, code::POD_REQUEST_REJECTED, "{}", err.msg);
        assert!(
            engine.allocations().await.is_empty(),
            "red's address is free"
        );
        let notices = engine.directory().notices.lock().unwrap().clone();
        assert!(
            matches!(
                notices.as_slice(),
                [Notice::Rejected {
                    reason: "AddressUnavailable",
                    ..
                }]
            ),
            "{notices:?}"
        );
        // Released in the journal too, not only in memory.
        let state_dir = state.path().to_owned();
        drop(engine);
        let engine = Engine::new(TwoNetworks::default(), &state_dir, None).unwrap();
        assert!(
            engine.allocations().await.is_empty(),
            "and the journal says so"
        );
    }

    /// An attach that fails in the pod (its netns does not exist, nor does the bridge) has
    /// still gone through every phase, and each is timed.
    #[tokio::test]
    async fn every_phase_of_an_attach_is_timed() {
        let phase = |p: &str| {
            crate::metrics::sample(&format!(
                "bridgenet_agent_attach_phase_duration_seconds_count{{phase=\"{p}\"}}"
            ))
            .unwrap()
        };
        let before = ["admit", "reserve", "interfaces"].map(phase);
        let state = tempfile::tempdir().unwrap();
        let engine = Engine::new(TwoNetworks::default(), state.path(), None).unwrap();
        let target = Target {
            container_id: "sb-timed".into(),
            netns: "/nonexistent/netns".into(),
            pod: None,
            cni_name: "k8s-pod-network".into(),
            delegate: false,
        };
        let err = engine
            .attach(&target, &[request("red", "net1", None)])
            .await
            .unwrap_err();
        assert_ne!(err.code, code::POD_REQUEST_REJECTED, "{}", err.msg);
        let after = ["admit", "reserve", "interfaces"].map(phase);
        for (b, a) in before.iter().zip(after) {
            assert!(a >= b + 1.0, "before {before:?}, after {after:?}");
        }
        assert!(engine.allocations().await.is_empty());
    }

    /// A failed CNI ADD is timed as a whole and counted by its reason.
    #[tokio::test]
    async fn a_failed_add_is_timed_and_counted_by_reason() {
        use crate::cni::types::{Command, Request, Response};
        let failures = "bridgenet_agent_operation_failures_total{operation=\"cni_add\",reason=\"invalid_env\"}";
        let adds = "bridgenet_agent_operation_duration_seconds_count{path=\"cni_add\"}";
        let before = (
            crate::metrics::sample(failures).unwrap_or(0.0),
            crate::metrics::sample(adds).unwrap(),
        );
        let state = tempfile::tempdir().unwrap();
        let engine = Engine::new(TwoNetworks::default(), state.path(), None).unwrap();
        let response = engine
            .handle(Request {
                command: Command::Add,
                container_id: String::new(),
                netns: String::new(),
                ifname: "eth0".into(),
                args: String::new(),
                config: json!({"cniVersion": "1.1.0", "name": "k8s-pod-network", "type": "bridgenet"}),
            })
            .await;
        assert!(
            matches!(&response, Response::Error(e) if e.code == code::INVALID_ENV),
            "{response:?}"
        );
        assert!(crate::metrics::sample(failures).unwrap() >= before.0 + 1.0);
        assert!(crate::metrics::sample(adds).unwrap() >= before.1 + 1.0);
    }
}
