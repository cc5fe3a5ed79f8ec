//! Resident memory of the agent binary with 50 NodeBridges realized: the agent runs in a node
//! namespace against the sandbox's API emulator (root only). Prints `VmRSS` once every
//! NodeBridge is `Ready`. Run with `cargo bench -p bridgenet-agent --bench dataplane_rss`.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

#[path = "../tests/dataplane_support/mod.rs"]
mod dataplane_support;
#[path = "../tests/root_support/mod.rs"]
mod root_support;

use std::time::Instant;

use bridgenet_crds::NodeBridge;
use dataplane_support::{Node, install_crds, nodebridge};
use kube::api::{Api, ListParams, PostParams};
use root_support::is_root;

const NETWORKS: u32 = 50;

fn main() {
    if !is_root() {
        eprintln!("SKIP: the RSS bench needs root (network namespaces, netlink, nftables)");
        return;
    }
    let mut node = Node::new("rss", env!("CARGO_BIN_EXE_bridgenet-agent"));
    node.kube(|c| async move {
        install_crds(&c).await;
        let api: Api<NodeBridge> = Api::all(c);
        for i in 0..NETWORKS {
            let nb = nodebridge(
                &format!("rss-{i}"),
                &format!("bnr-{i}"),
                &format!("10.{}.{}.0/24", 100 + i / 256, i % 256),
                &format!("10.{}.{}.1", 100 + i / 256, i % 256),
                2000 + i,
            );
            api.create(&PostParams::default(), &nb).await.unwrap();
        }
    });
    let started = Instant::now();
    node.start_agent();
    node.eventually("every NodeBridge Ready", || {
        node.kube(|c| async move {
            let list = Api::<NodeBridge>::all(c)
                .list(&ListParams::default())
                .await
                .unwrap();
            list.items.len() == NETWORKS as usize
                && list.items.iter().all(|nb| {
                    nb.status.as_ref().is_some_and(|s| {
                        s.conditions
                            .iter()
                            .any(|c| c.type_ == "Ready" && c.status == "True")
                    })
                })
        })
    });
    let converged = started.elapsed();
    // Let a couple of resyncs run so the figure includes steady state, not just start-up.
    std::thread::sleep(std::time::Duration::from_secs(5));
    let pid = node.agent_pid().unwrap();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let rss = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .unwrap_or("VmRSS: ?");
    let hwm = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .unwrap_or("VmHWM: ?");
    println!(
        "agent with {NETWORKS} NodeBridges realized: {rss}, peak {hwm}; all Ready {converged:?} after start"
    );
    node.kill_agent();
}
