//! Pure rendering of BridgeNetworks and their NodeBridges: the `ls` table, the Docker-shaped
//! `inspect` document and its human table. Nothing here talks to a cluster, so every output is
//! unit-tested from plain values.

use bridgenet_crds::{BridgeNetwork, NodeBridge, v1alpha1::Endpoint};
use kube::ResourceExt;
use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::{Value, json};

/// Columns of `ls`, and with `wide` the extra ones of `ls -o wide`.
pub fn ls_table(networks: &[BridgeNetwork], wide: bool, now_seconds: i64) -> String {
    let mut header = vec![
        "NAME",
        "SUBNET",
        "GATEWAY",
        "READY NODES",
        "ENDPOINTS",
        "INTERNAL",
    ];
    if wide {
        header.extend(["IPV6 SUBNET", "IP RANGE", "BRIDGE", "VNI", "MTU", "AGE"]);
    }
    let mut rows = vec![header.iter().map(|h| (*h).to_owned()).collect::<Vec<_>>()];
    for net in networks {
        let status = net.status.as_ref();
        let mut row = vec![
            net.name_any(),
            net.spec.subnet.clone(),
            gateway(net).unwrap_or_else(|| "<none>".to_owned()),
            status
                .map(|s| {
                    s.ready_summary
                        .clone()
                        .unwrap_or_else(|| format!("{}/{}", s.ready_nodes, s.total_nodes))
                })
                .unwrap_or_else(|| "0/0".to_owned()),
            status.map_or(0, |s| s.endpoints).to_string(),
            net.spec.internal.to_string(),
        ];
        if wide {
            row.extend([
                none_if_empty(net.spec.ipv6.as_ref().map(|v6| v6.subnet.clone())),
                none_if_empty(net.spec.ip_range.clone()),
                none_if_empty(bridge(net)),
                none_if_empty(status.and_then(|s| s.vni).map(|v| v.to_string())),
                none_if_empty(net.spec.mtu.map(|m| m.to_string())),
                net.creation_timestamp()
                    .map(|t| age(now_seconds - t.0.as_second()))
                    .unwrap_or_else(|| "<unknown>".to_owned()),
            ]);
        }
        rows.push(row);
    }
    align(&rows)
}

/// `kubectl get -o json`'s shape for a list: a `v1` `List` of full objects.
pub fn ls_list(networks: &[BridgeNetwork]) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "List",
        "items": networks,
        "metadata": {"resourceVersion": ""},
    })
}

/// One network as `docker network inspect` shows it: Docker's keys, in Docker's order.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct NetworkDoc {
    name: String,
    id: String,
    created: String,
    scope: &'static str,
    driver: &'static str,
    #[serde(rename = "EnableIPv6")]
    enable_ipv6: bool,
    #[serde(rename = "IPAM")]
    ipam: Ipam,
    internal: bool,
    /// Keyed `namespace/pod/interface`, the way Docker keys containers by id.
    containers: BTreeMap<String, ContainerDoc>,
    options: BTreeMap<&'static str, String>,
    labels: BTreeMap<String, String>,
}

/// `IPAM`: one config entry per address family.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
struct Ipam {
    driver: &'static str,
    config: Vec<IpamConfig>,
}

/// One entry of `IPAM.Config`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
struct IpamConfig {
    subnet: String,
    #[serde(rename = "IPRange", skip_serializing_if = "Option::is_none")]
    ip_range: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    gateway: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    excluded_addresses: Vec<String>,
}

/// One attached pod interface in `Containers`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
struct ContainerDoc {
    name: String,
    namespace: String,
    node: String,
    interface: String,
    #[serde(rename = "EndpointID")]
    endpoint_id: String,
    mac_address: String,
    #[serde(rename = "IPv4Address")]
    ipv4_address: String,
    #[serde(rename = "IPv6Address")]
    ipv6_address: String,
}

/// Builds the `inspect` document, with the attached pods gathered from the status of every
/// NodeBridge that belongs to the network (`spec.network`), wherever they run.
pub fn inspect(net: &BridgeNetwork, node_bridges: &[NodeBridge]) -> NetworkDoc {
    let name = net.name_any();
    let (v6_excluded, v4_excluded): (Vec<String>, Vec<String>) = net
        .spec
        .exclude_addresses
        .iter()
        .cloned()
        .partition(|a| a.contains(':'));
    let mut config = vec![IpamConfig {
        subnet: net.spec.subnet.clone(),
        ip_range: net.spec.ip_range.clone(),
        gateway: gateway(net),
        excluded_addresses: v4_excluded,
    }];
    if let Some(v6) = &net.spec.ipv6 {
        config.push(IpamConfig {
            subnet: v6.subnet.clone(),
            ip_range: v6.ip_range.clone(),
            gateway: v6
                .gateway
                .clone()
                .or_else(|| net.status.as_ref().and_then(|s| s.gateway_v6.clone())),
            excluded_addresses: v6_excluded,
        });
    }
    let mut options = BTreeMap::from([
        ("masquerade", net.spec.masquerade.to_string()),
        ("interPodTraffic", net.spec.inter_pod_traffic.to_string()),
    ]);
    if let Some(mtu) = net.spec.mtu {
        options.insert("mtu", mtu.to_string());
    }
    if let Some(b) = bridge(net) {
        options.insert("bridge", b);
    }
    if let Some(vni) = net.status.as_ref().and_then(|s| s.vni) {
        options.insert("vni", vni.to_string());
    }
    let containers = endpoints(&name, node_bridges)
        .into_iter()
        .map(|(node, ep)| {
            (
                format!("{}/{}/{}", ep.namespace, ep.pod, ep.interface),
                ContainerDoc {
                    name: ep.pod.clone(),
                    namespace: ep.namespace.clone(),
                    node: node.to_owned(),
                    interface: ep.interface.clone(),
                    endpoint_id: ep.container_id.clone().unwrap_or_default(),
                    mac_address: ep.mac.clone(),
                    ipv4_address: ep.ipv4.clone().unwrap_or_default(),
                    ipv6_address: ep.ipv6.clone().unwrap_or_default(),
                },
            )
        })
        .collect();
    NetworkDoc {
        id: net.metadata.uid.clone().unwrap_or_default(),
        created: net
            .creation_timestamp()
            .map(|t| t.0.to_string())
            .unwrap_or_default(),
        scope: "cluster",
        driver: "bridge",
        enable_ipv6: net.spec.ipv6.is_some(),
        ipam: Ipam {
            driver: "default",
            config,
        },
        internal: net.spec.internal,
        containers,
        options,
        labels: net.labels().clone(),
        name,
    }
}

/// `inspect --format table`: the network's settings, then one row per attached pod interface.
pub fn inspect_table(net: &BridgeNetwork, node_bridges: &[NodeBridge]) -> String {
    let name = net.name_any();
    let mut out = String::new();
    let fields = [
        ("Name", name.clone()),
        ("Id", net.metadata.uid.clone().unwrap_or_default()),
        ("Subnet", net.spec.subnet.clone()),
        ("Gateway", gateway(net).unwrap_or_else(|| "<none>".into())),
        ("IP range", none_if_empty(net.spec.ip_range.clone())),
        (
            "IPv6 subnet",
            none_if_empty(net.spec.ipv6.as_ref().map(|v| v.subnet.clone())),
        ),
        ("Bridge", none_if_empty(bridge(net))),
        ("Internal", net.spec.internal.to_string()),
        ("Masquerade", net.spec.masquerade.to_string()),
        ("Inter-pod traffic", net.spec.inter_pod_traffic.to_string()),
    ];
    for (k, v) in fields {
        out.push_str(&format!("{:<18} {v}\n", format!("{k}:")));
    }
    out.push('\n');
    let mut rows = vec![
        [
            "NAMESPACE",
            "POD",
            "NODE",
            "INTERFACE",
            "IPV4",
            "IPV6",
            "MAC",
        ]
        .map(str::to_owned)
        .to_vec(),
    ];
    for (node, ep) in endpoints(&name, node_bridges) {
        rows.push(vec![
            ep.namespace.clone(),
            ep.pod.clone(),
            node.to_owned(),
            ep.interface.clone(),
            none_if_empty(ep.ipv4.clone()),
            none_if_empty(ep.ipv6.clone()),
            ep.mac.clone(),
        ]);
    }
    out.push_str(&align(&rows));
    out
}

/// Every endpoint of the network's NodeBridges with its node, in a stable order.
fn endpoints<'a>(network: &str, node_bridges: &'a [NodeBridge]) -> Vec<(&'a str, &'a Endpoint)> {
    let mut all: Vec<(&str, &Endpoint)> = node_bridges
        .iter()
        .filter(|nb| nb.spec.network == network)
        .flat_map(|nb| {
            nb.status
                .iter()
                .flat_map(|s| s.endpoints.iter())
                .map(move |ep| (nb.spec.node.as_str(), ep))
        })
        .collect();
    all.sort_by(|a, b| {
        (&a.1.namespace, &a.1.pod, &a.1.interface).cmp(&(&b.1.namespace, &b.1.pod, &b.1.interface))
    });
    all
}

/// The spec's gateway, else the one the operator chose and reported.
fn gateway(net: &BridgeNetwork) -> Option<String> {
    net.spec
        .gateway
        .clone()
        .or_else(|| net.status.as_ref().and_then(|s| s.gateway.clone()))
}

/// The status's bridge name (what the nodes use), else the spec's.
fn bridge(net: &BridgeNetwork) -> Option<String> {
    net.status
        .as_ref()
        .and_then(|s| s.bridge.clone())
        .or_else(|| net.spec.bridge.clone())
}

fn none_if_empty(v: Option<String>) -> String {
    v.filter(|s| !s.is_empty())
        .unwrap_or_else(|| "<none>".to_owned())
}

/// kubectl's age format: the two largest units, e.g. `5m3s`, `3h20m`, `12d`.
fn age(seconds: i64) -> String {
    let s = seconds.max(0);
    match s {
        0..120 => format!("{s}s"),
        120..600 => format!("{}m{}s", s / 60, s % 60),
        600..10_800 => format!("{}m", s / 60),
        10_800..172_800 => format!("{}h{}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d", s / 86_400),
    }
}

/// Left-aligned columns separated by three spaces, like kubectl's tables.
pub fn align(rows: &[Vec<String>]) -> String {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..cols)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(String::len)
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for row in rows {
        let line: Vec<String> = row
            .iter()
            .enumerate()
            .map(|(i, cell)| format!("{cell:<w$}", w = widths[i]))
            .collect();
        out.push_str(line.join("   ").trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    fn net(extra: Value) -> BridgeNetwork {
        let mut base = json!({
            "apiVersion": "bridgenet.io/v1alpha1", "kind": "BridgeNetwork",
            "metadata": {"name": "web", "uid": "u-1", "creationTimestamp": "2026-01-01T00:00:00Z"},
            "spec": {"subnet": "172.20.0.0/16", "gateway": "172.20.0.1"},
        });
        merge(&mut base, extra);
        serde_json::from_value(base).unwrap()
    }

    fn merge(a: &mut Value, b: Value) {
        match (a, b) {
            (Value::Object(a), Value::Object(b)) => {
                for (k, v) in b {
                    merge(a.entry(k).or_insert(Value::Null), v);
                }
            }
            (a, b) => *a = b,
        }
    }

    fn nb(network: &str, node: &str, endpoints: Value) -> NodeBridge {
        serde_json::from_value(json!({
            "apiVersion": "bridgenet.io/v1alpha1", "kind": "NodeBridge",
            "metadata": {"name": format!("{network}-{node}")},
            "spec": {"network": network, "node": node, "bridge": "bn-web", "subnet": "172.20.0.0/16",
                     "gateway": "172.20.0.1", "gatewayMac": "02:00:00:00:00:01", "mtu": 1500, "vni": 7,
                     "internal": false, "masquerade": true, "interPodTraffic": true},
            "status": {"endpoints": endpoints},
        }))
        .unwrap()
    }

    fn ep(ns: &str, pod: &str, v4: &str) -> Value {
        json!({"namespace": ns, "pod": pod, "interface": "net1", "ipv4": v4, "mac": "02:aa:00:00:00:01"})
    }

    #[test]
    fn ls_shows_status_counts_and_falls_back_to_ready_nodes() {
        let a = net(json!({"status": {"readySummary": "2/2", "endpoints": 3}}));
        let mut b = net(
            json!({"metadata": {"name": "db"}, "spec": {"internal": true},
                               "status": {"readyNodes": 1, "totalNodes": 2}}),
        );
        b.spec.gateway = None;
        let out = ls_table(&[a, b], false, 0);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(
            lines[0],
            "NAME   SUBNET          GATEWAY      READY NODES   ENDPOINTS   INTERNAL"
        );
        assert_eq!(
            lines[1].split_whitespace().collect::<Vec<_>>(),
            ["web", "172.20.0.0/16", "172.20.0.1", "2/2", "3", "false"]
        );
        assert_eq!(
            lines[2].split_whitespace().collect::<Vec<_>>(),
            ["db", "172.20.0.0/16", "<none>", "1/2", "0", "true"]
        );
    }

    #[test]
    fn ls_wide_adds_v6_range_bridge_vni_mtu_and_age() {
        let a = net(json!({"spec": {"ipRange": "172.20.5.0/24", "mtu": 1400,
                                    "ipv6": {"subnet": "fd00:1::/64"}},
                           "status": {"bridge": "bn-web", "vni": 42}}));
        let now = 1_767_225_600 + 3 * 3600 + 20 * 60; // creation + 3h20m
        let out = ls_table(&[a], true, now);
        let lines: Vec<&str> = out.lines().collect();
        assert!(
            lines[0].ends_with("IPV6 SUBNET   IP RANGE        BRIDGE   VNI   MTU    AGE"),
            "{}",
            lines[0]
        );
        let row: Vec<&str> = lines[1].split_whitespace().collect();
        assert_eq!(
            row[6..],
            [
                "fd00:1::/64",
                "172.20.5.0/24",
                "bn-web",
                "42",
                "1400",
                "3h20m"
            ]
        );
    }

    #[test]
    fn ls_json_is_a_kubectl_list_of_full_objects() {
        let v = ls_list(&[net(json!({}))]);
        assert_eq!(v["kind"], "List");
        assert_eq!(v["apiVersion"], "v1");
        assert_eq!(v["items"][0]["kind"], "BridgeNetwork");
        assert_eq!(v["items"][0]["spec"]["subnet"], "172.20.0.0/16");
    }

    #[test]
    fn inspect_gathers_pods_from_every_node_bridge_of_the_network_only() {
        let n = net(
            json!({"spec": {"excludeAddresses": ["172.20.0.9", "fd00:1::9"], "mtu": 1450,
                                    "ipv6": {"subnet": "fd00:1::/64"}},
                           "status": {"bridge": "bn-web", "vni": 7, "gatewayV6": "fd00:1::1"}}),
        );
        let nbs = [
            nb("web", "node2", json!([ep("default", "b", "172.20.1.2/16")])),
            nb("web", "node1", json!([ep("default", "a", "172.20.0.2/16")])),
            nb("other", "node1", json!([ep("default", "x", "10.0.0.2/24")])),
        ];
        let v = serde_json::to_value(inspect(&n, &nbs)).unwrap();
        assert_eq!(v["Name"], "web");
        assert_eq!(v["Id"], "u-1");
        assert_eq!(v["Created"], "2026-01-01T00:00:00Z");
        assert_eq!(v["Driver"], "bridge");
        assert_eq!(v["EnableIPv6"], true);
        assert_eq!(
            v["IPAM"]["Config"][0],
            json!({"Subnet": "172.20.0.0/16", "Gateway": "172.20.0.1", "ExcludedAddresses": ["172.20.0.9"]})
        );
        assert_eq!(
            v["IPAM"]["Config"][1],
            json!({"Subnet": "fd00:1::/64", "Gateway": "fd00:1::1", "ExcludedAddresses": ["fd00:1::9"]})
        );
        assert_eq!(
            v["Options"],
            json!({"masquerade": "true", "interPodTraffic": "true", "mtu": "1450", "bridge": "bn-web", "vni": "7"})
        );
        let c = v["Containers"].as_object().unwrap();
        assert_eq!(
            c.keys().collect::<Vec<_>>(),
            ["default/a/net1", "default/b/net1"]
        );
        assert_eq!(c["default/b/net1"]["Node"], "node2");
        assert_eq!(c["default/a/net1"]["IPv4Address"], "172.20.0.2/16");
        assert_eq!(c["default/a/net1"]["MacAddress"], "02:aa:00:00:00:01");
    }

    #[test]
    fn inspect_keys_come_in_dockers_order() {
        let text = serde_json::to_string(&inspect(&net(json!({})), &[])).unwrap();
        let at = |k: &str| text.find(&format!("\"{k}\":")).unwrap();
        let keys = [
            "Name",
            "Id",
            "Created",
            "Scope",
            "Driver",
            "EnableIPv6",
            "IPAM",
            "Internal",
            "Containers",
            "Options",
            "Labels",
        ];
        assert!(keys.windows(2).all(|w| at(w[0]) < at(w[1])), "{text}");
        assert!(
            text.contains("\"Config\":[{\"Subnet\":\"172.20.0.0/16\",\"Gateway\":\"172.20.0.1\"}]"),
            "{text}"
        );
    }

    #[test]
    fn inspect_table_lists_settings_and_one_row_per_pod() {
        let n = net(json!({}));
        let out = inspect_table(
            &n,
            &[nb(
                "web",
                "node1",
                json!([ep("prod", "api", "172.20.0.5/16")]),
            )],
        );
        assert!(out.starts_with("Name:              web\n"), "{out}");
        assert!(out.contains("Gateway:           172.20.0.1\n"), "{out}");
        let rows: Vec<Vec<&str>> = out
            .lines()
            .skip_while(|l| !l.starts_with("NAMESPACE"))
            .map(|l| l.split_whitespace().collect())
            .collect();
        assert_eq!(
            rows[1],
            [
                "prod",
                "api",
                "node1",
                "net1",
                "172.20.0.5/16",
                "<none>",
                "02:aa:00:00:00:01"
            ]
        );
        assert_eq!(rows.len(), 2);
    }

    #[test]
    fn age_uses_kubectls_units() {
        assert_eq!(age(59), "59s");
        assert_eq!(age(303), "5m3s");
        assert_eq!(age(1800), "30m");
        assert_eq!(age(12_000), "3h20m");
        assert_eq!(age(3 * 86_400), "3d");
        assert_eq!(age(-5), "0s");
    }
}
