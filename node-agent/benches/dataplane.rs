//! Data plane timings on a real kernel, inside a throwaway network namespace (root only):
//! realizing one NodeBridge from nothing (links, addresses, overlay, sysctls and the nftables
//! transaction), a resync with nothing to change (netlink reads only, and with the nftables
//! verification), and the same for 50 networks with a thousand pod ports on the node, where
//! reading a VXLAN port's flood entries is measured beside the full FDB dump it replaced. Run
//! with `cargo bench -p bridgenet-agent --bench dataplane`.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

#[path = "../tests/dataplane_support/mod.rs"]
mod dataplane_support;

use std::fs::File;
use std::process::Command;

use bridgenet_agent::dataplane::apply::Applier;
use bridgenet_agent::dataplane::firewall::Firewall;
use bridgenet_agent::dataplane::netlink::Netlink;
use bridgenet_agent::dataplane::rtnl::Rtnl;
use bridgenet_agent::dataplane::{Desired, NodeContext, Teardown};
use bridgenet_crds::{NodeBridgeSpec, resolve_node_bridge};
use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use futures::TryStreamExt;

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
    // A no-change resync of the 50 networks: their links read and nothing written, then one
    // nftables check.
    let resync_all = || {
        for d in &fifty {
            assert!(
                rt.block_on(applier.borrow_mut().apply(d))
                    .unwrap()
                    .is_empty()
            );
        }
        firewall.reconcile(&fifty).unwrap();
    };
    c.bench_function(
        "resync 50 NodeBridges, no change (netlink + one nftables check)",
        |b| b.iter(resync_all),
    );

    // A node with a thousand pods: their host ends on the first network's bridge, the pod ends
    // in a namespace of their own. Every resync of every network reads its VXLAN port's flood
    // entries; read from a full dump of the node's FDB (the reference: rtnetlink, as the agent
    // did), that read grows with the pods on the node.
    let pods = Netns(format!("bnt-dp-pods-{}", std::process::id()));
    assert!(
        Command::new("ip")
            .args(["netns", "add", &pods.0])
            .status()
            .unwrap()
            .success()
    );
    let bridge = &fifty[0].bridge;
    let batch: String = (0..1000)
        .map(|i| {
            format!("link add bnvb{i} type veth peer name p{i} netns {}\nlink set bnvb{i} master {bridge} up\n", pods.0)
        })
        .collect();
    let file = std::env::temp_dir().join(format!("bnt-dp-bench-{}.batch", std::process::id()));
    std::fs::write(&file, batch).unwrap();
    assert!(
        Command::new("ip")
            .args(["-b", &file.display().to_string()])
            .status()
            .unwrap()
            .success()
    );
    let _ = std::fs::remove_file(&file);
    let port = rt
        .block_on(async { Rtnl::connect().unwrap().link(&fifty[0].vxlan).await })
        .unwrap()
        .unwrap()
        .index;
    let _runtime = rt.enter();
    let (conn, handle, _) = rtnetlink::new_connection().unwrap();
    rt.spawn(conn);
    c.bench_function(
        "flood entries of one VXLAN port, 1,000 pod ports: full FDB dump (reference)",
        |b| {
            b.iter(|| {
                let all: Vec<_> = rt
                    .block_on(
                        handle
                            .neighbours()
                            .get()
                            .set_address_family(rtnetlink::packet_route::AddressFamily::Bridge)
                            .execute()
                            .try_collect::<Vec<_>>(),
                    )
                    .unwrap();
                all.into_iter().filter(|m| m.header.ifindex == port).count()
            })
        },
    );
    c.bench_function(
        "flood entries of one VXLAN port, 1,000 pod ports: the port's dump",
        |b| {
            b.iter(|| {
                assert_eq!(
                    rt.block_on(bridgenet_agent::dataplane::fdb::flood_entries(port))
                        .unwrap()
                        .len(),
                    3
                )
            })
        },
    );
    c.bench_function(
        "resync 50 NodeBridges, no change, 1,000 pod ports (netlink + one nftables check)",
        |b| b.iter(resync_all),
    );
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20).measurement_time(std::time::Duration::from_secs(3));
    targets = bench
}
criterion_main!(benches);
