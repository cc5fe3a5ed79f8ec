//! Synthetic clusters for the tests, the planning benchmark and the scale example: networks
//! with disjoint /16 subnets and nodes with an InternalIP each. Behind the `testing` feature.

use std::collections::BTreeMap;
use std::sync::Arc;

use bridgenet_crds::v1alpha1::{BridgeNetwork, BridgeNetworkSpec};
use k8s_openapi::api::core::v1::{Node, NodeAddress, NodeStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::jiff::Timestamp;

use crate::plan::{self, PlanInput, Settings};

/// A BridgeNetwork named `name` on `subnet`, created at `created` (seconds), with a uid.
pub fn network(name: &str, subnet: &str, created: i64) -> BridgeNetwork {
    let spec = BridgeNetworkSpec {
        subnet: subnet.to_owned(),
        gateway: None,
        ip_range: None,
        exclude_addresses: Vec::new(),
        ipv6: None,
        bridge: None,
        mtu: None,
        internal: false,
        masquerade: true,
        inter_pod_traffic: true,
        dns: true,
        sticky_addresses: false,
        sticky_hold_seconds: None,
        block_size: None,
        node_selector: None,
        namespace_selector: None,
    };
    let mut net = BridgeNetwork::new(name, spec);
    net.metadata.uid = Some(format!("uid-{name}"));
    net.metadata.generation = Some(1);
    net.metadata.resource_version = Some("1".to_owned());
    net.metadata.creation_timestamp = Timestamp::from_second(created).ok().map(Time);
    net
}

/// A Node named `name` with `labels` and InternalIP `address`.
pub fn node(name: &str, address: &str, labels: &[(&str, &str)]) -> Node {
    Node {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            labels: Some(
                labels
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                    .collect::<BTreeMap<_, _>>(),
            ),
            ..Default::default()
        },
        status: Some(NodeStatus {
            addresses: Some(vec![NodeAddress {
                type_: "InternalIP".to_owned(),
                address: address.to_owned(),
            }]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// `networks` networks (`net-000` on 10.0.0.0/16, `net-001` on 10.1.0.0/16, ...; at most
/// 256 are disjoint) and `nodes` nodes (`node-0000` at 192.168.x.y).
pub fn cluster(networks: usize, nodes: usize) -> (Vec<Arc<BridgeNetwork>>, Vec<Arc<Node>>) {
    let nets = (0..networks)
        .map(|i| {
            Arc::new(network(
                &format!("net-{i:03}"),
                &format!("10.{}.0.0/16", i % 256),
                i64::try_from(i).unwrap_or(i64::MAX),
            ))
        })
        .collect();
    let nodes = (0..nodes)
        .map(|i| {
            Arc::new(node(
                &format!("node-{i:04}"),
                &format!("192.168.{}.{}", i / 250, i % 250 + 1),
                &[("kubernetes.io/os", "linux")],
            ))
        })
        .collect();
    (nets, nodes)
}

/// Plans every network of a cluster from scratch (no NodeBridges yet), the way a freshly
/// started operator does; returns the number of NodeBridges and blocks planned.
pub fn plan_all(
    networks: &[Arc<BridgeNetwork>],
    nodes: &[Arc<Node>],
    settings: &Settings,
) -> (usize, usize) {
    let verdicts = plan::admit_all(networks, settings);
    let now = Time(Timestamp::UNIX_EPOCH);
    let mut node_bridges = 0;
    let mut blocks = 0;
    for net in networks {
        let Some(verdict) = verdicts.get(net.metadata.name.as_deref().unwrap_or_default()) else {
            continue;
        };
        let plan = plan::plan_network(&PlanInput {
            network: net,
            verdict,
            nodes,
            existing: &[],
            settings,
            now: &now,
        });
        node_bridges += plan.children.as_ref().map_or(0, |c| c.members.len());
        blocks += plan.blocks_used;
    }
    (node_bridges, blocks)
}
