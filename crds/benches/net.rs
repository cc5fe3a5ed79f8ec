//! Cost of the address arithmetic on the CNI ADD hot path: picking the next free address in a
//! block (empty /26, a /16 block taken up to its last address, round-robin after the last
//! allocation) and resolving a spec.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    collections::BTreeSet,
    hint::black_box,
    net::{IpAddr, Ipv4Addr},
};

use bridgenet_crds::{BridgeNetworkSpec, net};
use criterion::{Criterion, criterion_group, criterion_main};

fn spec(json: serde_json::Value) -> BridgeNetworkSpec {
    serde_json::from_value(json).unwrap()
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("net");

    let small = net::resolve("n", &spec(serde_json::json!({"subnet": "172.20.0.0/16"}))).unwrap();
    let first = small.v4.blocks().next().unwrap();
    let none = BTreeSet::new();
    g.bench_function("next_free, empty /26", |b| {
        b.iter(|| small.v4.next_free(black_box(&first), &none, None))
    });

    // One /16 block with every host but the last taken: the worst case of a single call.
    let big = net::resolve(
        "n",
        &spec(serde_json::json!({"subnet": "10.9.0.0/16", "blockSize": 16})),
    )
    .unwrap();
    let block = big.v4.blocks().next().unwrap();
    let base = u32::from(Ipv4Addr::new(10, 9, 0, 0));
    let used: BTreeSet<IpAddr> = (2..65534)
        .map(|i| IpAddr::V4(Ipv4Addr::from(base + i)))
        .collect();
    g.bench_function("next_free, /16 full but the last, from the start", |b| {
        b.iter(|| big.v4.next_free(black_box(&block), &used, None))
    });
    // The agent passes the last address it handed out: the same block costs one step.
    let last = Some(IpAddr::V4(Ipv4Addr::from(base + 65532)));
    g.bench_function(
        "next_free, /16 full but the last, after the last allocation",
        |b| b.iter(|| big.v4.next_free(black_box(&block), &used, last)),
    );

    let full = spec(serde_json::json!({
        "subnet": "172.24.0.0/16", "gateway": "172.24.0.1", "ipRange": "172.24.8.0/21",
        "excludeAddresses": ["172.24.8.10", "fd00:24::10"], "bridge": "br-team-a", "mtu": 1400,
        "blockSize": 27, "ipv6": {"subnet": "fd00:24::/64"},
    }));
    g.bench_function("resolve, every field", |b| {
        b.iter(|| net::resolve("team-a", black_box(&full)).unwrap())
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
