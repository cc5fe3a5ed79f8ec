//! How the engine's failures reach the runtime: each lower error becomes a [`CniError`] with
//! the CNI code the runtime acts on (retry, reject) and a hint for the user.

use crate::attach::AttachError;
use crate::cni::types::{CniError, code};
use crate::ipam::IpamError;

use super::PodRef;

/// A refusal of what the pod asked for, prefixed with the pod when there is one.
pub(super) fn reject(pod: Option<&PodRef>, msg: String, details: &str) -> CniError {
    let who = pod.map(|p| format!("pod {p}: ")).unwrap_or_default();
    CniError::new(code::POD_REQUEST_REJECTED, format!("{who}{msg}"), details)
}

/// The pod's fault (a taken or foreign address), the node's full blocks (retry later), or
/// the journal failing.
pub(super) fn ipam_error(e: IpamError, pod: Option<&PodRef>) -> CniError {
    if e.is_request_error() {
        reject(
            pod,
            e.to_string(),
            "pick another address in the bridgenet.io/networks annotation, or omit \"ip\" to get a free one",
        )
    } else if matches!(e, IpamError::Exhausted { .. }) {
        CniError::new(
            code::TRY_AGAIN_LATER,
            e.to_string(),
            "this node's address blocks are full: delete pods on this network here, or give the network a larger blockSize/ipRange",
        )
    } else {
        CniError::new(
            code::IPAM_FAILURE,
            e.to_string(),
            "the agent cannot record addresses under --state-dir: check the node's disk and the agent's logs",
        )
    }
}

/// A bridge not there yet (retry later), an interface name clash (the pod's fault), or the
/// kernel refusing.
pub(super) fn attach_error(e: AttachError) -> CniError {
    match e {
        AttachError::NoBridge(_) => CniError::new(
            code::TRY_AGAIN_LATER,
            e.to_string(),
            "the agent has not programmed this network on the node yet; the kubelet will retry (check `kubectl get nodebridges` for Ready)",
        ),
        AttachError::Mismatch(m) => CniError::new(
            code::POD_REQUEST_REJECTED,
            m,
            "choose another interface name in the bridgenet.io/networks annotation",
        ),
        other => CniError::new(
            code::NETLINK_FAILURE,
            other.to_string(),
            "the kernel refused to set up the pod's interface; see the bridgenet agent's logs on this node",
        ),
    }
}
