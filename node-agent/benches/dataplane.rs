//! Data plane timings on a real kernel, inside a throwaway network namespace (root only):
//! realizing one NodeBridge from nothing (links, addresses, overlay, sysctls and the nftables
//! transaction), and a resync with nothing to change (netlink reads only, and with the
//! nftables verification). Run with `cargo bench -p bridgenet-agent --bench dataplane`.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

#[path = "../tests/dataplane_support/mod.rs"]
mod dataplane_support;

use std::fs::File;
use std::process::Command;

use bridgenet_agent::dataplane::apply::Applier;
use bridgenet_agent::dataplane::firewall::Firewall;
use bridgenet_agent::dataplane::rtnl::Rtnl;
use bridgenet_agent::dataplane::{Desired, NodeContext, Teardown};
use bridgenet_crds::{NodeBridgeSpec, resolve_node_bridge};
use criterion::{BatchSize, Criterion, criterion_group, criterion_main};

fn spec(i: u32) -> NodeBridgeSpec {
    let subnet = format!("10.{}.{}.0/24", 100 + i / 256, i % 256);
    let gateway = format!("10.{}.{}.1", 100 + i / 256, i % 256);
    dataplane_support::spec(
        &format!("bench-{i}"),
        &format!("bnb-{i}"),
        &subnet,
        &gateway,
        1000 + i,
        "n1",
        &[
            ("n2", "192.0.2.2"),
            ("n3", "192.0.2.3"),
            ("n4", "192.0.2.4"),
        ],
    )
}

struct Netns(String);

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).output();
    }
}

fn bench(c: &mut Criterion) {
    let root = std::fs::read_to_string("/proc/self/status")
        .map(|s| {
            s.lines()
                .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(2) == Some("0"))
        })
        .unwrap_or(false);
    if !root {
        eprintln!("SKIP: the data plane bench needs root (network namespace, netlink, nftables)");
        return;
    }
    let ns = Netns(format!("bnt-dp-bench-{}", std::process::id()));
    assert!(
        Command::new("ip")
            .args(["netns", "add", &ns.0])
            .status()
            .unwrap()
            .success()
    );
    // The whole bench process moves into the namespace: netlink sockets, /proc/sys/net and the
    // `nft` children all follow the thread, and criterion runs on this thread.
    let file = File::open(format!("/run/netns/{}", ns.0)).unwrap();
    nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
    for args in [
        vec!["link", "set", "lo", "up"],
        vec![
            "link", "add", "eth0", "type", "veth", "peer", "name", "eth0p",
        ],
        vec!["addr", "add", "192.0.2.1/24", "dev", "eth0"],
        vec!["link", "set", "eth0", "up"],
    ] {
        assert!(Command::new("ip").args(&args).status().unwrap().success());
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let node = NodeContext {
        node_name: "n1".into(),
        underlay: "192.0.2.1".parse().unwrap(),
        vxlan_port: 4789,
    };
    let desired = Desired::from_resolved(&resolve_node_bridge(&spec(1)).unwrap(), &node);
    let teardown = Teardown::from_spec(&spec(1));
    let firewall = Firewall::default();
    let applier =
        std::cell::RefCell::new(rt.block_on(async { Applier::new(Rtnl::connect().unwrap()) }));

    c.bench_function(
        "realize one NodeBridge from nothing (links + nftables)",
        |b| {
            b.iter_batched(
                || {
                    rt.block_on(applier.borrow_mut().teardown(&teardown))
                        .unwrap();
                    firewall.remove_all().unwrap();
                },
                |()| {
                    let ops = rt.block_on(applier.borrow_mut().apply(&desired)).unwrap();
                    assert!(!ops.is_empty());
                    firewall.reconcile(std::slice::from_ref(&desired)).unwrap();
                },
                BatchSize::PerIteration,
            )
        },
    );

    rt.block_on(applier.borrow_mut().apply(&desired)).unwrap();
    firewall.reconcile(std::slice::from_ref(&desired)).unwrap();
    c.bench_function("resync one NodeBridge, no change (netlink)", |b| {
        b.iter(|| {
            assert!(
                rt.block_on(applier.borrow_mut().apply(&desired))
                    .unwrap()
                    .is_empty()
            )
        })
    });
    c.bench_function(
        "resync one NodeBridge, no change (netlink + nftables check)",
        |b| {
            b.iter(|| {
                assert!(
                    rt.block_on(applier.borrow_mut().apply(&desired))
                        .unwrap()
                        .is_empty()
                );
                firewall.reconcile(std::slice::from_ref(&desired)).unwrap();
            })
        },
    );

    let fifty: Vec<Desired> = (1..=50)
        .map(|i| Desired::from_resolved(&resolve_node_bridge(&spec(i)).unwrap(), &node))
        .collect();
    for d in &fifty {
        rt.block_on(applier.borrow_mut().apply(d)).unwrap();
    }
    firewall.reconcile(&fifty).unwrap();
    c.bench_function(
        "nftables check for 50 NodeBridges, nothing committed since the last",
        |b| b.iter(|| firewall.reconcile(&fifty).unwrap()),
    );
    c.bench_function(
        "nftables rules for 50 NodeBridges, built and identified",
        |b| {
            b.iter(|| {
                bridgenet_agent::dataplane::firewall::keys(
                    &bridgenet_agent::dataplane::firewall::rules(&fifty).unwrap(),
                )
            })
        },
    );
    c.bench_function(
        "resync 50 NodeBridges, no change (netlink + one nftables check)",
        |b| {
            b.iter(|| {
                for d in &fifty {
                    assert!(
                        rt.block_on(applier.borrow_mut().apply(d))
                            .unwrap()
                            .is_empty()
                    );
                }
                firewall.reconcile(&fifty).unwrap();
            })
        },
    );
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20).measurement_time(std::time::Duration::from_secs(3));
    targets = bench
}
criterion_main!(benches);
