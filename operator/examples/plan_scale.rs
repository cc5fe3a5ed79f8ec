//! Plans a synthetic cluster once, for measuring wall time and peak RSS from outside:
//! `cargo build --release -p bridgenet-operator --example plan_scale &&
//!  /usr/bin/time -v target/release/examples/plan_scale 100 1000 [keep] [materialize]`.
//!
//! `keep` holds all plans in memory at once (the operator holds one per running reconcile);
//! `materialize` also builds every NodeBridge spec of one network, peers included, as the
//! controller does when it writes them all (a new network on 1,000 nodes).
#![allow(clippy::print_stdout)]

use std::time::Instant;

use bridgenet_operator::plan::{self, PlanInput, Settings};
use bridgenet_operator::scale;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let networks = args.first().and_then(|a| a.parse().ok()).unwrap_or(100);
    let nodes = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(1000);
    let keep = args.iter().any(|a| a == "keep");
    let materialize = args.iter().any(|a| a == "materialize");
    let settings = Settings::default();
    let (nets, nodes_list) = scale::cluster(networks, nodes);
    let now = Time(Timestamp::UNIX_EPOCH);

    let started = Instant::now();
    let verdicts = plan::admit_all(&nets, &settings);
    let mut kept = Vec::new();
    let mut node_bridges = 0;
    let mut blocks = 0;
    for net in &nets {
        let Some(verdict) = verdicts.get(net.metadata.name.as_deref().unwrap_or_default()) else {
            continue;
        };
        let p = plan::plan_network(&PlanInput {
            network: net,
            verdict,
            nodes: &nodes_list,
            existing: &[],
            settings: &settings,
            now: &now,
        });
        node_bridges += p.children.as_ref().map_or(0, |c| c.members.len());
        blocks += p.blocks_used;
        if keep {
            kept.push(p);
        }
    }
    let took = started.elapsed();
    println!(
        "planned {networks} networks x {nodes} nodes: {node_bridges} NodeBridges, {blocks} blocks in {:.1} ms{}",
        took.as_secs_f64() * 1000.0,
        if keep { " (all plans kept)" } else { "" }
    );

    if materialize {
        let started = Instant::now();
        let p = kept.first().cloned().or_else(|| {
            let verdict = verdicts.get("net-000")?;
            Some(plan::plan_network(&PlanInput {
                network: &nets[0],
                verdict,
                nodes: &nodes_list,
                existing: &[],
                settings: &settings,
                now: &now,
            }))
        });
        let mut bytes = 0;
        if let Some(children) = p.and_then(|p| p.children) {
            for i in 0..children.members.len() {
                let spec = children.spec_for(i);
                bytes += serde_json::to_vec(&spec).map_or(0, |v| v.len());
            }
        }
        println!(
            "materialized and serialized one network's {nodes} NodeBridge specs ({:.1} MiB of JSON, one at a time) in {:.1} ms",
            bytes as f64 / 1048576.0,
            started.elapsed().as_secs_f64() * 1000.0
        );
    }
    drop(kept);
}
