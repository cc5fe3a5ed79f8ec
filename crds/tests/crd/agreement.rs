//! The CRD's CEL rules and the operator's `net::resolve` are two copies of one rulebook; on
//! random specs within the OpenAPI bounds they must accept and refuse exactly the same ones.

use std::{
    cell::Cell,
    net::{Ipv4Addr, Ipv6Addr},
};

use bridgenet_crds::{BridgeNetwork, BridgeNetworkSpec, net};
use proptest::{prelude::*, test_runner::TestRunner};
use serde_json::{Value, json};

use crate::bn_object;

/// An IPv4 address near `base` (inside a /`prefix` around it most of the time, at its edges
/// often) or anywhere.
fn v4_near(base: u32, prefix: u8) -> impl Strategy<Value = String> {
    let size = if prefix == 0 {
        u64::from(u32::MAX) + 1
    } else {
        1u64 << (32 - u32::from(prefix))
    };
    let network = u64::from(base) & !(size - 1);
    prop_oneof![
        3 => (0..size).prop_map(move |o| Ipv4Addr::from((network + o) as u32).to_string()),
        1 => Just(Ipv4Addr::from(network as u32).to_string()),
        1 => Just(Ipv4Addr::from((network + size - 1) as u32).to_string()),
        1 => any::<u32>().prop_map(|a| Ipv4Addr::from(a).to_string()),
    ]
}

fn v4_cidr_near(base: u32, min_prefix: u8) -> impl Strategy<Value = String> {
    (
        min_prefix.saturating_sub(2)..=32u8,
        any::<bool>(),
        any::<u32>(),
    )
        .prop_map(move |(p, canonical, noise)| {
            let mask = if p == 0 {
                0
            } else {
                u32::MAX << (32 - u32::from(p))
            };
            let addr = if canonical {
                base & mask
            } else {
                (base & mask) | (noise & !mask)
            };
            format!("{}/{p}", Ipv4Addr::from(addr))
        })
}

fn arb_spec() -> impl Strategy<Value = Value> {
    (any::<u32>(), 0u8..=32, prop::bool::weighted(0.9))
        .prop_flat_map(|(base, prefix, canonical)| {
            let mask = if prefix == 0 {
                0
            } else {
                u32::MAX << (32 - u32::from(prefix))
            };
            let net_addr = if canonical { base & mask } else { base };
            let subnet = format!("{}/{prefix}", Ipv4Addr::from(net_addr));
            (
                Just(subnet),
                proptest::option::of(v4_near(base, prefix)),
                proptest::option::of(v4_cidr_near(base, prefix)),
                proptest::option::of(8u8..=32),
                proptest::collection::vec(v4_near(base, prefix), 0..2),
                proptest::option::weighted(0.3, arb_v6()),
                proptest::option::of(576u32..=9000),
            )
        })
        .prop_map(
            |(subnet, gateway, ip_range, block_size, exclude, ipv6, mtu)| {
                let mut spec = json!({"subnet": subnet});
                if let Some(g) = gateway {
                    spec["gateway"] = json!(g);
                }
                if let Some(r) = ip_range {
                    spec["ipRange"] = json!(r);
                }
                if let Some(b) = block_size {
                    spec["blockSize"] = json!(b);
                }
                if !exclude.is_empty() {
                    spec["excludeAddresses"] = json!(exclude);
                }
                if let Some((v6, extra)) = ipv6 {
                    spec["ipv6"] = v6;
                    if let Some(e) = extra {
                        spec["excludeAddresses"]
                            .as_array_mut()
                            .map(|a| a.push(json!(e)))
                            .unwrap_or_else(|| spec["excludeAddresses"] = json!([e]));
                    }
                }
                if let Some(m) = mtu {
                    spec["mtu"] = json!(m);
                }
                spec
            },
        )
}

/// An `ipv6` object (subnet /48../128, maybe gateway, range, block size) and maybe an IPv6
/// address to exclude.
fn arb_v6() -> impl Strategy<Value = (Value, Option<String>)> {
    (
        any::<u64>(),
        48u8..=128,
        any::<u16>(),
        any::<bool>(),
        proptest::option::of(64u8..=128),
        any::<u16>(),
        0u8..4,
    )
        .prop_map(|(hi, prefix, host, with_gw, block, range_shift, what)| {
            let base = (u128::from(0xfd00u16) << 112) | (u128::from(hi) << 48);
            let mask = if prefix == 128 {
                u128::MAX
            } else {
                !(u128::MAX >> prefix)
            };
            let network = base & mask;
            let mut v6 = json!({"subnet": format!("{}/{prefix}", Ipv6Addr::from(network))});
            let host_addr = network | (u128::from(host) & !mask);
            if with_gw {
                v6["gateway"] = json!(Ipv6Addr::from(host_addr).to_string());
            }
            if let Some(b) = block {
                v6["blockSize"] = json!(b);
            }
            if what == 1 {
                let rp = (prefix + (range_shift % 16) as u8).min(128);
                let rmask = if rp == 128 {
                    u128::MAX
                } else {
                    !(u128::MAX >> rp)
                };
                v6["ipRange"] = json!(format!("{}/{rp}", Ipv6Addr::from(host_addr & rmask)));
            }
            let exclude = (what >= 2).then(|| {
                if what == 2 {
                    Ipv6Addr::from(host_addr).to_string()
                } else {
                    "fd99::1".to_owned()
                }
            });
            (v6, exclude)
        })
}

#[test]
fn cel_and_resolve_agree() {
    let accepted = Cell::new(0u32);
    let refused = Cell::new(0u32);
    let mut runner = TestRunner::new(ProptestConfig::with_cases(256));
    let outcome = runner.run(&arb_spec(), |spec| {
        let bn: BridgeNetwork = serde_json::from_value(bn_object("n", spec.clone())).unwrap();
        let cel = bn.validate_cel();
        let parsed: BridgeNetworkSpec = serde_json::from_value(spec.clone()).unwrap();
        let rust = net::resolve("n", &parsed);
        let counter = if cel.is_ok() { &accepted } else { &refused };
        counter.set(counter.get() + 1);
        prop_assert_eq!(
            cel.is_ok(),
            rust.is_ok(),
            "{} — CEL: {:?}, resolve: {:?}",
            spec,
            cel.err()
                .map(|e| e.iter().map(|x| x.message.clone()).collect::<Vec<_>>()),
            rust.err().map(|e| e.to_string())
        );
        Ok(())
    });
    if let Err(e) = outcome {
        panic!("{e}");
    }
    // Both outcomes must be common, or agreement would be proved on one side only.
    let (a, r) = (accepted.get(), refused.get());
    assert!(
        a >= 25 && r >= 25,
        "generator too one-sided: {a} accepted, {r} refused"
    );
}
