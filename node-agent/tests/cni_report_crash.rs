//! Results are level-triggered: the real agent binary, in a node namespace with the sandbox's
//! Kubernetes API emulator (see `dataplane_support`), is aborted at every step from a pod's
//! CNI ADD to the report of its results (`BRIDGENET_FAILPOINT`, like a `kill -9` at that
//! instant) and started again. Whatever the step, the pod ends up with its
//! `bridgenet.io/network-status` annotation and its entry in the NPWG
//! `k8s.v1.cni.cncf.io/network-status` naming the address and MAC its interface really has,
//! and its NodeBridge lists it among the endpoints: nothing depends on a notice that lived only
//! in the killed process. Needs root.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod cni_support;
mod dataplane_support;
mod root_support;

use std::net::IpAddr;

use bridgenet_agent::cni::engine::failpoint;
use bridgenet_crds::{NodeBridge, NodeBridgeStatus};
use cni_support::{Call, Netns, chained_config, run_plugin};
use dataplane_support::{Node, nodebridge};
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::api::{Api, PostParams};
use root_support::require_root;
use serde_json::{Value, json};

const NETWORK: &str = "net-r";

/// The address and MAC of the pod's `net1`, as the kernel in the pod has them.
fn interface(pod: &Netns) -> Option<(IpAddr, String)> {
    let link = pod.link_json("net1")?;
    let ip = link["addr_info"]
        .as_array()?
        .iter()
        .find(|a| a["family"] == "inet")
        .and_then(|a| a["local"].as_str()?.parse().ok())?;
    Some((ip, link["address"].as_str()?.to_owned()))
}

/// The pod's entry for [`NETWORK`] in its `bridgenet.io/network-status` annotation and in the
/// NPWG one: (address, MAC) of each.
type Reported = Option<(IpAddr, String)>;

fn reported(node: &Node, name: &str) -> (Reported, Reported) {
    let name = name.to_owned();
    let pod = node.kube(move |c| async move {
        Api::<Pod>::namespaced(c, "default")
            .get_opt(&name)
            .await
            .unwrap()
    });
    let entry = |annotation: &str, entry_name: &str| -> Reported {
        let raw = pod.as_ref()?.annotations().get(annotation)?.clone();
        let status: Value = serde_json::from_str(&raw).ok()?;
        let entry = status
            .as_array()?
            .iter()
            .find(|e| e["name"] == entry_name)?;
        Some((
            entry["ips"][0].as_str()?.parse().ok()?,
            entry["mac"].as_str()?.to_owned(),
        ))
    };
    (
        entry(bridgenet_crds::ANNOTATION_NETWORK_STATUS, NETWORK),
        entry(
            bridgenet_agent::cni::npwg::ANNOTATION_NETWORK_STATUS,
            &format!("bridgenet.io/{NETWORK}"),
        ),
    )
}

/// The status of the node's NodeBridge of [`NETWORK`].
fn status(node: &Node) -> Option<NodeBridgeStatus> {
    let nb = node.kube(|c| async move {
        Api::<NodeBridge>::all(c)
            .get_opt(&format!("{NETWORK}.n1"))
            .await
            .unwrap()
    });
    nb.and_then(|nb| nb.status)
}

/// Whether the NodeBridge lists `pod` at `ip` among its endpoints.
fn endpoint_listed(node: &Node, pod: &str, ip: IpAddr) -> bool {
    status(node).is_some_and(|s| {
        s.endpoints
            .iter()
            .any(|e| e.pod == pod && e.ipv4.as_deref() == Some(&format!("{ip}/24")))
    })
}

#[test]
#[ignore = "needs root"]
fn results_are_reported_whichever_step_between_add_and_report_the_agent_dies_at() {
    require_root();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut node = Node::new("report", env!("CARGO_BIN_EXE_bridgenet-agent"));
    let mut nb = nodebridge(NETWORK, "bnt-rp", "172.20.5.0/24", "172.20.5.1", 310);
    nb.spec.blocks = vec!["172.20.5.0/26".into()];
    node.create_node_bridge(nb);
    let socket = node.dir().join("cni.sock");
    let mut pods = Vec::new();
    for (round, fp) in failpoint::REPORTING.iter().enumerate() {
        let name = format!("p{round}");
        let n = name.clone();
        node.kube(move |c| async move {
            let pod: Pod = serde_json::from_value(json!({
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": n, "namespace": "default",
                             "annotations": {"bridgenet.io/networks": NETWORK}},
                "spec": {"nodeName": "n1",
                         "containers": [{"name": "main", "image": "busybox"}]},
            }))
            .unwrap();
            Api::<Pod>::namespaced(c, "default")
                .create(&PostParams::default(), &pod)
                .await
                .unwrap();
        });
        let pod_ns = Netns::new(&format!("report-p{round}"));
        node.restart_agent(Some(fp));
        let add = Call::new(
            "ADD",
            &format!("sb-{round}"),
            pod_ns.path().to_str().unwrap(),
            &format!("default/{name}"),
            chained_config(&socket, "1.1.0", None),
        );
        let answer = rt.block_on(run_plugin(&add));
        node.expect_abort(fp);
        node.restart_agent(None);
        if !answer.ok {
            // Killed inside the ADD: the runtime cleans the sandbox up and retries with a new one.
            assert_eq!(answer.code(), 11, "{fp}: try again later: {}", answer.raw);
            if *fp == failpoint::ADD_AFTER_RESERVE {
                // Its address journaled, its interface never made: the report that counts the
                // address as taken (the earlier rounds' pods hold one each) lists no endpoint
                // for it. Listed, it would be a name in DNS and bring the node into the
                // network's overlay, for a pod that has no interface.
                let round = i64::try_from(round).unwrap();
                node.eventually(&format!("{fp}: the reservation counted"), || {
                    status(&node).is_some_and(|s| s.allocated_addresses == round + 1)
                });
                let listed = status(&node).map(|s| s.endpoints).unwrap_or_default();
                assert!(
                    listed.iter().all(|e| e.pod != name),
                    "{fp}: a reservation cut short is no endpoint: {listed:?}"
                );
            }
            assert!(rt.block_on(run_plugin(&add.with_command("DEL"))).ok);
            let mut retry = add.clone();
            retry.container_id = format!("sb-{round}-retry");
            let answer = rt.block_on(run_plugin(&retry));
            assert!(answer.ok, "{fp}: the retried ADD: {}", answer.raw);
        }
        let (ip, mac) = interface(&pod_ns).expect("the pod has its interface");
        node.eventually(
            &format!("{fp}: {name}'s network-status after the restart"),
            || {
                let want = Some((ip, mac.clone()));
                reported(&node, &name) == (want.clone(), want)
            },
        );
        node.eventually(
            &format!("{fp}: {name} among the NodeBridge's endpoints"),
            || endpoint_listed(&node, &name, ip),
        );
        println!("report crash: failpoint {fp}: ok");
        pods.push(pod_ns);
    }
    node.kill_agent();
}
