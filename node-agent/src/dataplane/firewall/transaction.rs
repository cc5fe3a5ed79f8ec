//! The one nftables transaction that replaces both bridgenet tables with a rule set.

use serde_json::{Value, json};

use super::TABLE;
use super::rules::Rule;

/// The chains of each table: (family, name, type, hook, priority).
const CHAINS: &[(&str, &str, &str, &str, i32)] = &[
    ("inet", "forward", "filter", "forward", 0),
    ("inet", "input", "filter", "input", 0),
    ("inet", "postrouting", "nat", "postrouting", 100),
    ("bridge", "forward", "filter", "forward", 0),
    ("bridge", "input", "filter", "input", 0),
    ("bridge", "output", "filter", "output", 0),
];

/// The one transaction that replaces both tables with `rules` (or removes them when there is
/// no network left).
pub fn transaction(rules: &[Rule], any_network: bool) -> Value {
    let mut cmds = Vec::new();
    for family in ["inet", "bridge"] {
        let table = json!({"family": family, "name": TABLE});
        // `add` first so that `delete` cannot fail on a missing table; all in one commit.
        cmds.push(json!({"add": {"table": table.clone()}}));
        cmds.push(json!({"delete": {"table": table.clone()}}));
        if !any_network {
            continue;
        }
        cmds.push(json!({"add": {"table": table}}));
        for (fam, name, ty, hook, prio) in CHAINS.iter().filter(|c| c.0 == family) {
            cmds.push(json!({"add": {"chain": {
                "family": fam, "table": TABLE, "name": name,
                "type": ty, "hook": hook, "prio": prio, "policy": "accept"
            }}}));
        }
        for r in rules.iter().filter(|r| r.family == family) {
            cmds.push(json!({"add": {"rule": {
                "family": r.family, "table": TABLE, "chain": r.chain,
                "comment": r.comment, "expr": r.expr
            }}}));
        }
    }
    json!({"nftables": cmds})
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::dataplane::Desired;
    use crate::dataplane::firewall::observed_keys;
    use crate::dataplane::firewall::rules::{keys, rules, tests::nets};
    use crate::dataplane::tests::{node, spec};
    use bridgenet_crds::v1alpha1::NodeBridgeIpv6;

    #[test]
    fn transaction_fits_the_crate_schema_and_observation_roundtrips() {
        let r = rules(&nets());
        let tx = transaction(&r, true);
        let typed: nftables::schema::Nftables = serde_json::from_value(tx.clone()).unwrap();
        assert!(typed.objects.len() > r.len());
        // What `nft -j list table` prints has the same rule objects (plus handles).
        let listing = json!({"nftables": r.iter().map(|x| json!({"rule": {
            "family": x.family, "table": TABLE, "chain": x.chain, "handle": 3, "comment": x.comment, "expr": x.expr
        }})).collect::<Vec<_>>()});
        assert_eq!(observed_keys(&listing), keys(&r));
        let cleanup = transaction(&[], false);
        let cmds = cleanup["nftables"].as_array().unwrap();
        assert_eq!(cmds.len(), 4, "add+delete for each table only: {cleanup}");
    }

    /// Networks covering every kind of rule: a lone v4 network, an internal dual-stack one
    /// without inter-pod traffic, a dual-stack masquerading one whose name is too long for a
    /// comment, and one that does not masquerade.
    fn cases() -> Vec<(&'static str, Vec<Desired>, bool)> {
        let two = nets();
        let mut c = spec(
            &format!("net-c-{}", "x".repeat(100)),
            "br-c",
            "10.77.0.0/24",
            "10.77.0.254",
            16_777_215,
        );
        c.inter_pod_traffic = false;
        c.ipv6 = Some(NodeBridgeIpv6 {
            subnet: "fd00:77:0:12::/64".into(),
            gateway: "fd00:77:0:12::3456".into(),
        });
        let mut d = spec("net-d", "br-d", "10.88.0.0/16", "10.88.0.1", 9);
        d.masquerade = false;
        let four = vec![
            Desired::from_spec(&d, &node()).unwrap(),
            Desired::from_spec(&c, &node()).unwrap(),
            two[1].clone(),
            two[0].clone(),
        ];
        vec![
            ("two", two.clone(), true),
            ("lone", two[..1].to_vec(), true),
            ("four", four, true),
            ("cleanup", vec![], false),
        ]
    }

    /// `testdata/transaction.json` is what the `serde_json::json!` builder this module had
    /// before the typed schema sent to `nft -j -f -` for [`cases`]: the typed batch must send
    /// exactly the same commands, in the same order, with the same comment hashes.
    #[test]
    fn transaction_sends_what_the_untyped_builder_sent() {
        let expected: Value = serde_json::from_str(include_str!("testdata/transaction.json"))
            .expect("the fixture is JSON");
        for (name, networks, any_network) in cases() {
            let typed: nftables::schema::Nftables =
                serde_json::from_value(transaction(&rules(&networks), any_network)).unwrap();
            let sent = serde_json::to_value(&typed).unwrap();
            assert_eq!(sent, expected[name], "case {name}");
        }
    }
}
