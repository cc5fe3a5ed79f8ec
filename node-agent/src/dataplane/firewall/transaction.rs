//! The one nftables transaction that replaces both bridgenet tables with a rule set, built
//! with the `nftables` crate's [`Batch`].

use std::borrow::Cow;

use nftables::batch::Batch;
use nftables::schema::{self, NfListObject, Nftables, Table};
use nftables::types::{NfChainPolicy, NfChainType};

use super::TABLE;
use super::rules::{Family, Hook, Rule};

/// A base chain of a bridgenet table; every one accepts what its rules do not drop.
struct BaseChain {
    family: Family,
    hook: Hook,
    kind: NfChainType,
    priority: i32,
}

const CHAINS: &[BaseChain] = &[
    BaseChain {
        family: Family::Inet,
        hook: Hook::Forward,
        kind: NfChainType::Filter,
        priority: 0,
    },
    BaseChain {
        family: Family::Inet,
        hook: Hook::Input,
        kind: NfChainType::Filter,
        priority: 0,
    },
    // srcnat: masquerade after the filter chains have had their say.
    BaseChain {
        family: Family::Inet,
        hook: Hook::Postrouting,
        kind: NfChainType::NAT,
        priority: 100,
    },
    BaseChain {
        family: Family::Bridge,
        hook: Hook::Forward,
        kind: NfChainType::Filter,
        priority: 0,
    },
    BaseChain {
        family: Family::Bridge,
        hook: Hook::Input,
        kind: NfChainType::Filter,
        priority: 0,
    },
    BaseChain {
        family: Family::Bridge,
        hook: Hook::Output,
        kind: NfChainType::Filter,
        priority: 0,
    },
];

fn table<'a>(family: Family) -> NfListObject<'a> {
    NfListObject::Table(Table {
        family: family.schema(),
        name: Cow::Borrowed(TABLE),
        handle: None,
    })
}

/// The one transaction that replaces both tables with `rules` (or removes them when there is
/// no network left). It borrows the rules' statements and comments.
pub fn transaction(rules: &[Rule], any_network: bool) -> Nftables<'_> {
    let mut batch = Batch::new();
    for family in Family::ALL {
        // `add` first so that `delete` cannot fail on a missing table; all in one commit.
        batch.add(table(family));
        batch.delete(table(family));
        if !any_network {
            continue;
        }
        batch.add(table(family));
        for chain in CHAINS.iter().filter(|c| c.family == family) {
            batch.add(NfListObject::Chain(schema::Chain {
                family: family.schema(),
                table: Cow::Borrowed(TABLE),
                name: Cow::Borrowed(chain.hook.name()),
                _type: Some(chain.kind),
                hook: Some(chain.hook.schema()),
                prio: Some(chain.priority),
                policy: Some(NfChainPolicy::Accept),
                ..schema::Chain::default()
            }));
        }
        for rule in rules.iter().filter(|r| r.family == family) {
            batch.add(NfListObject::Rule(schema::Rule {
                family: family.schema(),
                table: Cow::Borrowed(TABLE),
                chain: Cow::Borrowed(rule.chain.name()),
                expr: Cow::Borrowed(&rule.expr),
                comment: Some(Cow::Borrowed(&rule.comment)),
                ..schema::Rule::default()
            }));
        }
    }
    batch.to_nftables()
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
    use serde_json::{Value, json};

    #[test]
    fn transaction_fits_the_crate_schema_and_observation_roundtrips() {
        let r = rules(&nets()).unwrap();
        let typed = transaction(&r, true);
        assert!(typed.objects.len() > r.len());
        // What `nft -j list table` prints has the same rule objects (plus handles).
        let listing = json!({"nftables": r.iter().map(|x| json!({"rule": {
            "family": x.family.name(), "table": TABLE, "chain": x.chain.name(), "handle": 3, "comment": x.comment, "expr": x.expr
        }})).collect::<Vec<_>>()});
        assert_eq!(observed_keys(&listing), keys(&r));
        let cleanup = transaction(&[], false);
        let cmds = &cleanup.objects;
        assert_eq!(cmds.len(), 4, "add+delete for each table only: {cleanup:?}");
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

    /// `testdata/transaction.json` was generated from the `serde_json::json!` builder this
    /// module had before the typed schema: what it sent to `nft -j -f -` for [`cases`]. The
    /// typed batch must send exactly the same commands, in the same order, with the same
    /// comment hashes (compared as JSON values, so key order does not matter).
    #[test]
    fn transaction_sends_what_the_untyped_builder_sent() {
        let expected: Value = serde_json::from_str(include_str!("testdata/transaction.json"))
            .expect("the fixture is JSON");
        for (name, networks, any_network) in cases() {
            let rules = rules(&networks).unwrap();
            let sent = serde_json::to_value(transaction(&rules, any_network)).unwrap();
            assert_eq!(sent, expected[name], "case {name}");
        }
    }
}
