//! Address claims survive a crash at any step: the real agent binary, in a node namespace with
//! the sandbox's Kubernetes API emulator, is aborted (`BRIDGENET_FAILPOINT`, like a `kill -9`)
//! at every step of an ADD and a DEL of a pod with a static address, and started again; the
//! runtime then does what it does (DEL of the failed sandbox and a new ADD; DEL again).
//!
//! Whatever the step: the retried ADD gets the address with exactly one claim, Bound and naming
//! the sandbox that has it; after the DEL no claim is left and the address is free again (a new
//! pod gets it). Nothing leaks and nothing is held twice. Sticky claims are released, not
//! deleted, and a pod of the same name gets the address back. Needs root.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod cni_support;
mod dataplane_support;
mod root_support;

use std::net::IpAddr;

use bridgenet_agent::cni::engine::failpoint;
use bridgenet_crds::AddressClaim;
use cni_support::{Call, Netns, chained_config, run_plugin};
use dataplane_support::{Node, nodebridge};
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, PostParams};
use root_support::require_root;
use serde_json::json;

const NETWORK: &str = "net-c";

fn claims(node: &Node) -> Vec<AddressClaim> {
    node.kube(|c| async move {
        Api::<AddressClaim>::all(c)
            .list(&Default::default())
            .await
            .unwrap()
            .items
    })
}

fn create_pod(node: &Node, name: &str, annotation: serde_json::Value) {
    let (n, a) = (name.to_owned(), annotation.to_string());
    node.kube(move |c| async move {
        let api = Api::<Pod>::namespaced(c, "default");
        let _ = api.delete(&n, &DeleteParams::default()).await;
        let pod: Pod = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": n, "namespace": "default",
                         "annotations": {"bridgenet.io/networks": a}},
            "spec": {"nodeName": "n1", "containers": [{"name": "main", "image": "busybox"}]},
        }))
        .unwrap();
        api.create(&PostParams::default(), &pod).await.unwrap();
    });
}

#[test]
#[ignore = "needs root"]
fn claims_are_neither_lost_nor_leaked_whichever_step_the_agent_dies_at() {
    require_root();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut node = Node::new("claims", env!("CARGO_BIN_EXE_bridgenet-agent"));
    let mut nb = nodebridge(NETWORK, "bnt-cl", "172.20.6.0/24", "172.20.6.1", 311);
    nb.spec.blocks = vec!["172.20.6.0/26".into()];
    node.create_node_bridge(nb);
    let socket = node.dir().join("cni.sock");
    let add_steps = [
        failpoint::ADD_AFTER_RESERVE,
        failpoint::ADD_AFTER_CLAIM,
        failpoint::ADD_AFTER_ATTACH,
    ];
    let del_steps = [
        failpoint::DEL_AFTER_MARK,
        failpoint::DEL_BEFORE_DETACH,
        failpoint::DEL_AFTER_DETACH,
        failpoint::DEL_AFTER_CLAIMS,
    ];
    for (round, fp) in add_steps.iter().chain(&del_steps).enumerate() {
        let name = format!("s{round}");
        let wanted: IpAddr = format!("172.20.6.{}", 10 + round).parse().unwrap();
        create_pod(
            &node,
            &name,
            json!([{"name": NETWORK, "ip": wanted.to_string()}]),
        );
        let pod_ns = Netns::new(&format!("claims-s{round}"));
        let add = Call::new(
            "ADD",
            &format!("sb-{round}"),
            pod_ns.path().to_str().unwrap(),
            &format!("default/{name}"),
            chained_config(&socket, "1.1.0", None),
        );
        let mut holder = add.clone();
        if add_steps.contains(fp) {
            node.restart_agent(Some(fp));
            let answer = rt.block_on(run_plugin(&add));
            assert!(!answer.ok, "{fp}: the ADD died with the agent");
            node.expect_abort(fp);
            node.restart_agent(None);
            // The runtime cleans the sandbox up, then retries with a new one.
            assert!(rt.block_on(run_plugin(&add.with_command("DEL"))).ok);
            holder.container_id = format!("sb-{round}-retry");
            let answer = rt.block_on(run_plugin(&holder));
            assert!(answer.ok, "{fp}: the retried ADD: {}", answer.raw);
        } else {
            node.restart_agent(None);
            let answer = rt.block_on(run_plugin(&add));
            assert!(answer.ok, "{fp}: ADD: {}", answer.raw);
        }
        assert_eq!(pod_ns.ipv4("net1"), Some(wanted), "{fp}: the asked address");
        let held: Vec<AddressClaim> = claims(&node)
            .into_iter()
            .filter(|c| c.spec.address == wanted.to_string())
            .collect();
        assert_eq!(held.len(), 1, "{fp}: one claim");
        assert_eq!(held[0].spec.container_id, holder.container_id, "{fp}");
        assert_eq!(
            held[0].status.as_ref().and_then(|s| s.phase),
            Some(bridgenet_crds::v1alpha1::ClaimPhase::Bound),
            "{fp}"
        );
        let del = holder.with_command("DEL");
        if del_steps.contains(fp) {
            node.restart_agent(Some(fp));
            let answer = rt.block_on(run_plugin(&del));
            // Killed before its answer, the DEL fails (the runtime calls it again); killed
            // after, it succeeded, and the agent finishes it when it starts again.
            let answered = *fp != failpoint::DEL_AFTER_MARK;
            assert_eq!(answer.ok, answered, "{fp}: {}", answer.raw);
            node.expect_abort(fp);
            node.restart_agent(None);
        }
        let answer = rt.block_on(run_plugin(&del));
        assert!(answer.ok, "{fp}: DEL: {}", answer.raw);
        // Released once the interface is gone, which the DEL's answer does not wait for.
        let released = (0..500).any(|_| {
            let gone = claims(&node)
                .iter()
                .all(|c| c.spec.address != wanted.to_string());
            if !gone {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            gone
        });
        assert!(released, "{fp}: the claim is released with the interface");
        // Free again: another pod gets it.
        let again = format!("again{round}");
        create_pod(
            &node,
            &again,
            json!([{"name": NETWORK, "ip": wanted.to_string()}]),
        );
        let other_ns = Netns::new(&format!("claims-a{round}"));
        let other = Call::new(
            "ADD",
            &format!("sb-again-{round}"),
            other_ns.path().to_str().unwrap(),
            &format!("default/{again}"),
            chained_config(&socket, "1.1.0", None),
        );
        let answer = rt.block_on(run_plugin(&other));
        assert!(answer.ok, "{fp}: the address is free again: {}", answer.raw);
        assert!(rt.block_on(run_plugin(&other.with_command("DEL"))).ok);
        println!("claims crash: failpoint {fp}: ok");
    }
    // The last DEL's claim goes once its interface is gone, after the DEL's answer.
    node.eventually("no claim leaked", || claims(&node).is_empty());

    // Sticky: released, not deleted, and the pod's successor (same name) gets it back.
    create_pod(&node, "db", json!([{"name": NETWORK, "sticky": true}]));
    let first_ns = Netns::new("claims-db1");
    let first = Call::new(
        "ADD",
        "sb-db-1",
        first_ns.path().to_str().unwrap(),
        "default/db",
        chained_config(&socket, "1.1.0", None),
    );
    assert!(rt.block_on(run_plugin(&first)).ok);
    let ip = first_ns.ipv4("net1").unwrap();
    node.restart_agent(Some(failpoint::DEL_AFTER_CLAIMS));
    assert!(
        rt.block_on(run_plugin(&first.with_command("DEL"))).ok,
        "answered before the kill"
    );
    node.expect_abort(failpoint::DEL_AFTER_CLAIMS);
    node.restart_agent(None);
    assert!(rt.block_on(run_plugin(&first.with_command("DEL"))).ok);
    // Marked released once the interface is gone, which the DEL's answer does not wait for.
    node.eventually("the sticky claim released", || {
        claims(&node).first().and_then(|c| c.status.as_ref()?.phase)
            == Some(bridgenet_crds::v1alpha1::ClaimPhase::Released)
    });
    let kept = claims(&node);
    assert_eq!(kept.len(), 1, "the sticky claim stays");
    create_pod(&node, "db", json!([{"name": NETWORK, "sticky": true}]));
    let second_ns = Netns::new("claims-db2");
    let second = Call::new(
        "ADD",
        "sb-db-2",
        second_ns.path().to_str().unwrap(),
        "default/db",
        chained_config(&socket, "1.1.0", None),
    );
    let answer = rt.block_on(run_plugin(&second));
    assert!(answer.ok, "the successor: {}", answer.raw);
    assert_eq!(second_ns.ipv4("net1"), Some(ip), "same name, same address");
    assert_eq!(claims(&node)[0].name_any(), kept[0].name_any());
    node.kill_agent();
}
