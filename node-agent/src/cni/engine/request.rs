//! Request resolution: from a CNI call (or hot-plug's target), the pod's annotation and the
//! directory to what to attach — which networks, with which interface, address and MAC — each
//! admitted by this node's NodeBridge for it and its namespace selector.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use bridgenet_crds::ResolvedNodeBridge;
use kube::core::{Selector, SelectorExt};
use serde_json::Value;

use super::GRACE_POLL;
use super::error::reject;
use super::{Directory, Notice, PodInfo, PodRef};
use crate::cni::annotation::{self, NetworkRequest, parse_mac};
use crate::cni::types::{CniError, NetConf, Request, code, parse_cni_args};

/// The pod an ADD is for, from `CNI_ARGS`. Only a delegate configuration (`"network"` set)
/// may come without one.
pub(super) fn pod_of(conf: &NetConf, req: &Request) -> Result<Option<PodRef>, CniError> {
    let args = parse_cni_args(&req.args);
    match (args.get("K8S_POD_NAMESPACE"), args.get("K8S_POD_NAME")) {
        (Some(ns), Some(name)) => Ok(Some(PodRef {
            namespace: ns.clone(),
            name: name.clone(),
        })),
        _ if conf.network.is_some() => Ok(None),
        _ => Err(CniError::new(
            code::INVALID_ENV,
            "CNI_ARGS lacks K8S_POD_NAMESPACE/K8S_POD_NAME",
            "bridgenet reads the pod's bridgenet.io/networks annotation; without a pod, configure \"network\" in the CNI config",
        )),
    }
}

/// Which networks this CNI call is about: the delegate's one, or the pod's annotation.
pub(super) async fn requested<D: Directory>(
    dir: &D,
    conf: &NetConf,
    req: &Request,
    pod: Option<&PodRef>,
) -> Result<Vec<NetworkRequest>, CniError> {
    let info = match pod {
        Some(p) => match dir.pod(p).await {
            Ok(Some(info)) => info,
            Ok(None) if conf.network.is_some() => PodInfo::default(),
            Ok(None) => {
                return Err(CniError::new(
                    code::TRY_AGAIN_LATER,
                    format!("pod {p} is not known to the API server yet"),
                    "the kubelet retries the sandbox; if it persists, check the agent's connection to the API server",
                ));
            }
            Err(e) => {
                return Err(CniError::new(
                    code::TRY_AGAIN_LATER,
                    format!("reading pod {p} from the API server: {e}"),
                    "the kubelet retries the sandbox; check the agent's connection to the API server",
                ));
            }
        },
        None => PodInfo::default(),
    };
    if let Some(network) = &conf.network {
        let runtime = conf.extra.get("runtimeConfig");
        let mac = runtime
            .and_then(|r| r.get("mac"))
            .and_then(Value::as_str)
            .map(|m| {
                parse_mac(m).ok_or_else(|| {
                    reject(
                        pod,
                        format!("runtimeConfig mac {m:?} is not a unicast MAC"),
                        "",
                    )
                })
            })
            .transpose()?;
        let ip = runtime
            .and_then(|r| r.get("ips"))
            .and_then(Value::as_array)
            .and_then(|ips| ips.first())
            .and_then(Value::as_str)
            .map(|s| {
                s.split('/')
                    .next()
                    .unwrap_or_default()
                    .parse::<IpAddr>()
                    .map_err(|_| {
                        reject(pod, format!("runtimeConfig ip {s:?} is not an address"), "")
                    })
            })
            .transpose()?;
        return Ok(vec![NetworkRequest {
            name: network.clone(),
            interface: req.ifname.clone(),
            ip,
            mac,
            default_route: false,
            aliases: Vec::new(),
            ip6: None,
            sticky: None,
        }]);
    }
    let Some(value) = info.annotations.get(bridgenet_crds::ANNOTATION_NETWORKS) else {
        return Ok(Vec::new());
    };
    match annotation::parse(value) {
        Ok(list) => Ok(list),
        Err(e) => {
            let msg = format!("annotation {}: {e}", bridgenet_crds::ANNOTATION_NETWORKS);
            if let Some(p) = pod {
                dir.notify(Notice::Rejected {
                    pod: p.clone(),
                    reason: "InvalidNetworkAnnotation",
                    message: msg.clone(),
                });
            }
            Err(reject(
                pod,
                msg,
                "fix the annotation: a network name, a comma list, or a JSON list of {name, interface, ip, mac}",
            ))
        }
    }
}

/// Waits (at most `grace`) until every requested network has a NodeBridge on this node.
pub(super) async fn await_networks<D: Directory>(
    dir: &D,
    requests: &[NetworkRequest],
    grace: Duration,
) {
    let deadline = tokio::time::Instant::now() + grace;
    while requests.iter().any(|r| dir.node_bridge(&r.name).is_none())
        && tokio::time::Instant::now() < deadline
    {
        tokio::time::sleep(GRACE_POLL).await;
    }
}

/// Admits each request against this node's NodeBridge for its network, reading the
/// namespace's labels only when some NodeBridge has a selector. The first refusal is noticed
/// (an Event on the pod) and fails the whole call.
pub(super) async fn admit_all<'r, D: Directory>(
    dir: &D,
    requests: &'r [NetworkRequest],
    pod: Option<&PodRef>,
) -> Result<Vec<(&'r NetworkRequest, Arc<ResolvedNodeBridge>)>, CniError> {
    let specs: Vec<Option<Arc<ResolvedNodeBridge>>> =
        requests.iter().map(|r| dir.node_bridge(&r.name)).collect();
    let labels = match pod {
        Some(p) if specs.iter().flatten().any(|s| s.namespace_selector.is_some()) => dir
            .namespace_labels(&p.namespace)
            .await
            .map_err(|e| {
                CniError::new(
                    code::TRY_AGAIN_LATER,
                    format!("reading the labels of namespace {}: {e}", p.namespace),
                    "the kubelet retries the sandbox; check the agent's connection to the API server",
                )
            })?,
        _ => BTreeMap::new(),
    };
    let mut planned = Vec::new();
    for (request, spec) in requests.iter().zip(specs) {
        match admit(request, spec, pod, &labels) {
            Ok(spec) => planned.push((request, spec)),
            Err((reason, msg, details)) => {
                if let Some(p) = pod {
                    dir.notify(Notice::Rejected {
                        pod: p.clone(),
                        reason,
                        message: msg.clone(),
                    });
                }
                return Err(reject(pod, msg, details));
            }
        }
    }
    Ok(planned)
}

/// Checks a request against this node's NodeBridge for it (`spec`) and the namespace
/// selector (`labels`: the pod's namespace labels, read when some spec has a selector).
fn admit(
    request: &NetworkRequest,
    spec: Option<Arc<ResolvedNodeBridge>>,
    pod: Option<&PodRef>,
    labels: &BTreeMap<String, String>,
) -> Result<Arc<ResolvedNodeBridge>, (&'static str, String, &'static str)> {
    let Some(spec) = spec else {
        return Err((
            "UnknownNetwork",
            format!("network {:?} does not exist on this node", request.name),
            "create the BridgeNetwork (kubectl get bridgenetworks), or check that its nodeSelector selects this node",
        ));
    };
    if let (Some(selector), Some(p)) = (&spec.namespace_selector, pod) {
        let admitted = Selector::try_from(selector.clone())
            .map(|s| s.matches(labels))
            .unwrap_or(false);
        if !admitted {
            return Err((
                "NamespaceNotAdmitted",
                format!(
                    "network {:?} does not admit pods of namespace {:?} (namespaceSelector)",
                    request.name, p.namespace
                ),
                "label the namespace to match the BridgeNetwork's namespaceSelector, or use another network",
            ));
        }
    }
    Ok(spec)
}
