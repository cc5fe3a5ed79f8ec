//! Planning at scale: 100 networks × 1,000 nodes from scratch (what a freshly started
//! operator computes), the steady-state check of one network's 1,000 NodeBridges (cached
//! with their peer lists reduced to a digest, as the operator caches them), and building every
//! spec of one network.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use bridgenet_operator::plan::{self, PlanInput, Settings};
use bridgenet_operator::scale;
use criterion::{Criterion, criterion_group, criterion_main};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;

fn bench(c: &mut Criterion) {
    let settings = Settings::default();
    let (nets, nodes) = scale::cluster(100, 1000);
    let mut g = c.benchmark_group("plan");
    g.sample_size(10);
    g.bench_function("100 networks x 1000 nodes, cold", |b| {
        b.iter(|| scale::plan_all(&nets, &nodes, &settings))
    });

    // Steady state of one network: every NodeBridge exists as planned; the planner must find
    // nothing to write without materializing the quadratic peer lists.
    let verdicts = plan::admit_all(&nets, &settings);
    let net = &nets[0];
    let verdict = &verdicts["net-000"];
    let now = Time(Timestamp::UNIX_EPOCH);
    let first = plan::plan_network(&PlanInput {
        network: net,
        verdict,
        nodes: &nodes,
        existing: &[],
        settings: &settings,
        now: &now,
    });
    let children = first.children.expect("accepted");
    let existing: Vec<_> = (0..children.members.len())
        .map(|i| {
            let m = &children.members[i];
            let mut nb = bridgenet_crds::NodeBridge::new(&m.name, children.spec_for(i));
            nb.metadata.labels = Some(bridgenet_crds::v1alpha1::node_bridge_labels(
                "net-000", &m.node,
            ));
            // As the operator's cache holds them.
            plan::strip_peers(&mut nb);
            Arc::new(nb)
        })
        .collect();
    let mut net0 = (**net).clone();
    net0.status = Some(first.status.clone());
    g.bench_function("1 network x 1000 nodes, steady state", |b| {
        b.iter(|| {
            let p = plan::plan_network(&PlanInput {
                network: &net0,
                verdict,
                nodes: &nodes,
                existing: &existing,
                settings: &settings,
                now: &now,
            });
            let c = p.children.expect("accepted");
            assert!((0..c.members.len()).all(|i| !c.needs_write(i)));
        })
    });
    g.bench_function("materialize 1000 specs of one network", |b| {
        b.iter(|| {
            (0..children.members.len())
                .map(|i| children.spec_for(i).peers.len())
                .sum::<usize>()
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
