//! The Network Plumbing Working Group's status convention: the pod annotation
//! `k8s.v1.cni.cncf.io/network-status` ("Kubernetes Network Custom Resource Definition
//! De-facto Standard" v1.3, section 5), a JSON list with one map per network attachment, read
//! by Multus-aware tools. Pure functions: what bridgenet's entries are, how they are merged
//! into a list that others write too, and how an entry Multus wrote for a bridgenet delegate is
//! checked against the journal. [`crate::cni::report`] does the writing.
//!
//! Naming: the convention names an entry after the NetworkAttachmentDefinition that asked for
//! it, `namespace/name`. A network from `bridgenet.io/networks` has no such object: BridgeNetworks
//! are cluster-scoped. Its entry is `bridgenet.io/<network>` — the same `prefix/name` shape, with
//! a prefix that can never be a namespace (namespace names have no dots), so it can neither
//! collide with a Multus entry nor be read as pointing at a NAD. Attachments made through a NAD
//! (bridgenet as a Multus delegate) are Multus's to report, under the NAD's name.
//!
//! Ownership: an entry is bridgenet's when its `name` is `bridgenet.io/<n>` *and* it carries the
//! convention's room for implementation keys, `io.bridgenet.network: <n>`, naming the same
//! network, and is not the default network's. A name prefix alone is not ownership; both
//! together are something only bridgenet writes. Every other entry is kept as its writer wrote
//! it, byte for byte, in its place.

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde::Serialize;
use serde_json::Value;

/// The status annotation.
pub const ANNOTATION_NETWORK_STATUS: &str = "k8s.v1.cni.cncf.io/network-status";
/// The selection annotation Multus (or another implementation of the convention) acts on.
pub const ANNOTATION_NETWORKS: &str = "k8s.v1.cni.cncf.io/networks";
/// Prefix of the `name` of bridgenet's entries.
pub const NAME_PREFIX: &str = "bridgenet.io/";
/// Implementation key (reverse domain notation, as the convention asks for keys of one's own)
/// marking bridgenet's entries; its value is the BridgeNetwork.
pub const MARKER: &str = "io.bridgenet.network";

/// One interface bridgenet attached to a pod, as its entry describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attachment {
    /// The BridgeNetwork.
    pub network: String,
    /// The interface in the pod.
    pub interface: String,
    /// Its addresses, IPv4 first.
    pub ips: Vec<IpAddr>,
    /// Its MAC.
    pub mac: String,
    /// DNS servers on the network (its gateways when the node's resolver answers there).
    pub nameservers: Vec<String>,
}

/// The `dns` map of an entry.
#[derive(Serialize)]
struct Dns<'a> {
    nameservers: &'a [String],
}

/// An entry as bridgenet writes it, in the convention's key order.
#[derive(Serialize)]
struct Entry<'a> {
    name: String,
    interface: &'a str,
    ips: Vec<String>,
    mac: &'a str,
    default: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    dns: Option<Dns<'a>>,
    #[serde(rename = "io.bridgenet.network")]
    network: &'a str,
}

impl Attachment {
    fn entry(&self) -> Entry<'_> {
        Entry {
            name: format!("{NAME_PREFIX}{}", self.network),
            interface: &self.interface,
            // Bare addresses, as Multus writes them from a CNI result (the convention's own
            // examples also show prefixes; readers accept both).
            ips: self.ips.iter().map(ToString::to_string).collect(),
            mac: &self.mac,
            default: false,
            dns: (!self.nameservers.is_empty()).then_some(Dns {
                nameservers: &self.nameservers,
            }),
            network: &self.network,
        }
    }
}

/// Whether `entry` is one bridgenet wrote (see the module's notes on ownership).
pub fn is_ours(entry: &Value) -> bool {
    let Some(network) = entry.get(MARKER).and_then(Value::as_str) else {
        return false;
    };
    entry.get("default").and_then(Value::as_bool) != Some(true)
        && entry.get("name").and_then(Value::as_str)
            == Some(format!("{NAME_PREFIX}{network}").as_str())
}

/// Why an annotation could not be merged into.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{ANNOTATION_NETWORK_STATUS} is not a JSON list of objects: {0}")]
pub struct NotAList(pub String);

/// The elements of a JSON list, each as the exact text it has in `text`. `text` must hold a
/// valid JSON value (checked by the caller): only strings and nesting need tracking.
fn split_list(text: &str) -> Option<Vec<&str>> {
    let body = text.trim().strip_prefix('[')?.strip_suffix(']')?;
    let mut out = Vec::new();
    let (mut depth, mut in_string, mut escaped, mut start) = (0usize, false, false, 0usize);
    for (i, c) in body.char_indices() {
        if in_string {
            match c {
                _ if escaped => escaped = false,
                '\\' => escaped = true,
                '"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match c {
            '"' => in_string = true,
            '[' | '{' => depth += 1,
            ']' | '}' => depth = depth.checked_sub(1)?,
            ',' if depth == 0 => {
                out.push(body[start..i].trim());
                start = i + 1;
            }
            _ => {}
        }
    }
    let last = body[start..].trim();
    if !last.is_empty() || !out.is_empty() {
        out.push(last);
    }
    Some(out)
}

/// A status annotation's entries: each one's text as written and its parsed value. An absent
/// or empty annotation has none.
pub fn entries(text: Option<&str>) -> Result<Vec<(&str, Value)>, NotAList> {
    let Some(text) = text.filter(|t| !t.trim().is_empty()) else {
        return Ok(Vec::new());
    };
    let values: Vec<Value> = serde_json::from_str(text).map_err(|e| NotAList(e.to_string()))?;
    if let Some(bad) = values.iter().find(|v| !v.is_object()) {
        return Err(NotAList(format!("element {bad} is not an object")));
    }
    let raw = split_list(text).ok_or_else(|| NotAList("unbalanced list".into()))?;
    if raw.len() != values.len() {
        return Err(NotAList("unbalanced list".into()));
    }
    Ok(raw.into_iter().zip(values).collect())
}

/// What the status annotation needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Merge {
    /// Nothing: bridgenet's entries are already what the journal says.
    Unchanged,
    /// This new value.
    Set(String),
    /// Removing it: bridgenet's entries were all it held, and none is left.
    Remove,
}

/// Merges bridgenet's entries for `attached` (this pod's interfaces now) into the status
/// annotation `current`: bridgenet's entries for interfaces it still has are replaced where
/// they differ and kept where not, its entries for anything else (a detached network, an older
/// sandbox's interface) are dropped, new ones go at the end, and every other entry stays as its
/// writer wrote it, in its place. Equal in content means [`Merge::Unchanged`], so a steady pod
/// is never written.
pub fn merge(current: Option<&str>, attached: &[Attachment]) -> Result<Merge, NotAList> {
    let existing = entries(current)?;
    let mut pending: BTreeMap<&str, (&Attachment, Value)> = BTreeMap::new();
    for a in attached {
        let value = serde_json::to_value(a.entry()).map_err(|e| NotAList(e.to_string()))?;
        pending.entry(a.interface.as_str()).or_insert((a, value));
    }
    let mut out: Vec<String> = Vec::new();
    let mut changed = false;
    for (raw, value) in &existing {
        if !is_ours(value) {
            out.push((*raw).to_owned());
            continue;
        }
        let interface = value.get("interface").and_then(Value::as_str).unwrap_or("");
        match pending.remove(interface) {
            Some((_, want)) if want == *value => out.push((*raw).to_owned()),
            Some((a, _)) => {
                changed = true;
                out.push(entry_text(a)?);
            }
            None => changed = true,
        }
    }
    // The new ones in the order of `attached`.
    for a in attached {
        if pending.remove(a.interface.as_str()).is_some() {
            changed = true;
            out.push(entry_text(a)?);
        }
    }
    Ok(if !changed {
        Merge::Unchanged
    } else if out.is_empty() {
        Merge::Remove
    } else {
        Merge::Set(format!("[{}]", out.join(",")))
    })
}

fn entry_text(a: &Attachment) -> Result<String, NotAList> {
    serde_json::to_string(&a.entry()).map_err(|e| NotAList(e.to_string()))
}

/// Whether a Multus-style implementation of the convention manages the pod's status annotation,
/// so that the agent must leave it to it: the pod selects networks through
/// `k8s.v1.cni.cncf.io/networks` (whoever acts on that writes the whole list after every ADD),
/// or one of its interfaces came from a delegate call (`delegated`: something called bridgenet
/// for a NetworkAttachmentDefinition, and reports the result itself).
pub fn managed_by_multus(annotations: &BTreeMap<String, String>, delegated: bool) -> bool {
    delegated
        || annotations
            .get(ANNOTATION_NETWORKS)
            .is_some_and(|v| !v.trim().is_empty())
}

/// Differences between what the delegating plugin reported for bridgenet's delegate
/// attachments and what the journal holds: for each, the non-default entry of its interface
/// must exist and carry its addresses (prefix lengths ignored, any order) and MAC (any case).
/// The entry's name is the NetworkAttachmentDefinition's, which the agent does not know, and
/// its `dns` depends on the delegating plugin's version: neither is compared.
pub fn check_delegates(current: Option<&str>, delegates: &[Attachment]) -> Vec<String> {
    if delegates.is_empty() {
        return Vec::new();
    }
    let existing = match entries(current) {
        Ok(e) => e,
        Err(e) => return vec![e.to_string()],
    };
    let mut problems = Vec::new();
    for a in delegates {
        let found = existing.iter().map(|(_, v)| v).find(|v| {
            v.get("default").and_then(Value::as_bool) != Some(true)
                && v.get("interface").and_then(Value::as_str) == Some(a.interface.as_str())
        });
        let Some(entry) = found else {
            problems.push(format!(
                "interface {} (network {}) has no entry",
                a.interface, a.network
            ));
            continue;
        };
        let mut ips: Vec<Option<IpAddr>> = entry
            .get("ips")
            .and_then(Value::as_array)
            .map(|list| {
                list.iter()
                    .map(|ip| {
                        let text = ip.as_str().unwrap_or_default();
                        text.split('/').next().unwrap_or_default().parse().ok()
                    })
                    .collect()
            })
            .unwrap_or_default();
        ips.sort();
        let mut want: Vec<Option<IpAddr>> = a.ips.iter().copied().map(Some).collect();
        want.sort();
        let mac = entry.get("mac").and_then(Value::as_str).unwrap_or_default();
        if ips != want || !mac.trim().eq_ignore_ascii_case(&a.mac) {
            problems.push(format!(
                "interface {} (network {}) is reported with ips {} and mac {mac:?}, but has {} and {}",
                a.interface,
                a.network,
                entry.get("ips").unwrap_or(&Value::Null),
                a.ips
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", "),
                a.mac,
            ));
        }
    }
    problems
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn att(network: &str, interface: &str, ip: &str) -> Attachment {
        Attachment {
            network: network.into(),
            interface: interface.into(),
            ips: vec![ip.parse().unwrap()],
            mac: "02:00:00:00:00:01".into(),
            nameservers: vec!["172.20.0.1".into()],
        }
    }

    /// What a primary network and a Multus delegate wrote: odd spacing, key order and a
    /// prefix-length address, which must survive every merge exactly.
    const PRIMARY: &str =
        r#"{"name": "cbr0", "interface":"eth0","ips":["10.250.1.5"],"default":true ,"dns":{}}"#;
    const OTHER: &str = "{\n    \"name\": \"team/sriov\",\n    \"interface\": \"net9\",\n    \"ips\": [\"192.0.2.9/24\"],\n    \"mac\": \"02:11:22:33:44:55\",\n    \"default\": false,\n    \"dns\": {}\n}";

    fn set(m: Merge) -> String {
        match m {
            Merge::Set(v) => v,
            other => panic!("expected a new value, got {other:?}"),
        }
    }

    #[test]
    fn entries_are_named_and_marked_as_the_convention_allows() {
        let text = set(merge(None, &[att("red", "net1", "172.20.0.5")]).unwrap());
        assert_eq!(
            text,
            r#"[{"name":"bridgenet.io/red","interface":"net1","ips":["172.20.0.5"],"mac":"02:00:00:00:00:01","default":false,"dns":{"nameservers":["172.20.0.1"]},"io.bridgenet.network":"red"}]"#
        );
        let v: Vec<Value> = serde_json::from_str(&text).unwrap();
        assert!(is_ours(&v[0]));
        // Neither the name nor the marker alone, nor the two disagreeing, nor a default entry.
        for other in [
            r#"{"name":"bridgenet.io/red","interface":"net1"}"#,
            r#"{"name":"default/red","io.bridgenet.network":"red"}"#,
            r#"{"name":"bridgenet.io/red","io.bridgenet.network":"blue"}"#,
            r#"{"name":"bridgenet.io/red","io.bridgenet.network":"red","default":true}"#,
        ] {
            assert!(!is_ours(&serde_json::from_str(other).unwrap()), "{other}");
        }
        let quiet = Attachment {
            nameservers: Vec::new(),
            ..att("red", "net1", "172.20.0.5")
        };
        assert!(!set(merge(None, &[quiet]).unwrap()).contains("dns"));
    }

    /// Others' entries stay byte for byte and in place, before and after bridgenet's; bridgenet's
    /// own are replaced where they changed, removed when detached, added at the end; and a
    /// steady pod needs no write, whatever the spacing of the annotation.
    #[test]
    fn merging_keeps_others_entries_exactly_and_replaces_only_ours() {
        let red = att("red", "net1", "172.20.0.5");
        let blue = att("blue", "net2", "172.30.0.5");
        // Attach: appended after the primary's and the delegate's entries.
        let before = format!("[{PRIMARY}, {OTHER}]");
        let one = set(merge(Some(&before), std::slice::from_ref(&red)).unwrap());
        assert!(one.starts_with(&format!("[{PRIMARY},{OTHER},")), "{one}");
        assert_eq!(
            merge(Some(&one), std::slice::from_ref(&red)).unwrap(),
            Merge::Unchanged
        );
        let pretty =
            serde_json::to_string_pretty(&serde_json::from_str::<Value>(&one).unwrap()).unwrap();
        assert_eq!(
            merge(Some(&pretty), std::slice::from_ref(&red)).unwrap(),
            Merge::Unchanged
        );
        // Someone wrote an entry after ours: a second attachment goes after it, ours stay put.
        let later = r#"{"name":"x/late","interface":"net8","default":false}"#;
        let with_later = format!("{},{later}]", one.strip_suffix(']').unwrap());
        let two = set(merge(Some(&with_later), &[red.clone(), blue.clone()]).unwrap());
        let list = entries(Some(&two)).unwrap();
        let raw: Vec<&str> = list.iter().map(|(r, _)| *r).collect();
        assert_eq!(raw[..2], [PRIMARY, OTHER]);
        assert_eq!(list[2].1["name"], "bridgenet.io/red");
        assert_eq!(raw[3], later);
        assert_eq!(list[4].1["name"], "bridgenet.io/blue");
        // Red's address changed (a new sandbox): replaced in place.
        let moved = att("red", "net1", "172.20.0.9");
        let three = set(merge(Some(&two), &[moved, blue.clone()]).unwrap());
        let list = entries(Some(&three)).unwrap();
        assert_eq!(list[2].1["ips"][0], "172.20.0.9");
        assert_eq!(list[3].0, later);
        // Red detached: its entry goes, the others' stay.
        let four = set(merge(Some(&three), std::slice::from_ref(&blue)).unwrap());
        let names: Vec<String> = entries(Some(&four))
            .unwrap()
            .into_iter()
            .map(|(_, v)| v["name"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(names, ["cbr0", "team/sriov", "x/late", "bridgenet.io/blue"]);
        // Everything detached: only the others' entries remain.
        let five = set(merge(Some(&four), &[]).unwrap());
        assert_eq!(five, format!("[{PRIMARY},{OTHER},{later}]"));
        assert_eq!(merge(Some(&five), &[]).unwrap(), Merge::Unchanged);
    }

    #[test]
    fn an_annotation_of_ours_alone_is_removed_with_the_last_interface() {
        let red = att("red", "net1", "172.20.0.5");
        let only = set(merge(None, std::slice::from_ref(&red)).unwrap());
        assert_eq!(merge(Some(&only), &[]).unwrap(), Merge::Remove);
        assert_eq!(merge(None, &[]).unwrap(), Merge::Unchanged);
        assert_eq!(merge(Some(""), &[]).unwrap(), Merge::Unchanged);
        assert_eq!(merge(Some("[]"), &[]).unwrap(), Merge::Unchanged);
        assert_eq!(
            set(merge(Some("[ ]"), std::slice::from_ref(&red)).unwrap()),
            only
        );
        // A duplicate of ours (two writers' races long ago) is cleaned up.
        let twice = format!("[{0},{0}]", &only[1..only.len() - 1]);
        assert_eq!(
            merge(Some(&twice), std::slice::from_ref(&red)).unwrap(),
            Merge::Set(only)
        );
    }

    #[test]
    fn a_value_that_is_not_a_list_of_objects_is_not_merged_into() {
        for bad in ["{", r#"{"name":"a"}"#, "[1]", r#"["a"]"#] {
            assert!(merge(Some(bad), &[]).is_err(), "{bad}");
        }
        // Brackets and commas inside strings are not structure.
        let tricky = r#"[{"name":"a,b]","interface":"x\"],["}, {"name":"c"}]"#;
        let list = entries(Some(tricky)).unwrap();
        assert_eq!(list.len(), 2);
        assert_eq!(list[0].0, r#"{"name":"a,b]","interface":"x\"],["}"#);
    }

    #[test]
    fn multus_manages_pods_that_select_networks_or_have_delegates() {
        let mut ann = BTreeMap::new();
        assert!(!managed_by_multus(&ann, false));
        assert!(managed_by_multus(&ann, true));
        ann.insert(ANNOTATION_NETWORKS.to_owned(), "team/red-nad".to_owned());
        assert!(managed_by_multus(&ann, false));
        ann.insert(ANNOTATION_NETWORKS.to_owned(), String::new());
        assert!(!managed_by_multus(&ann, false));
    }

    /// The entry Multus makes from a delegate's CNI result is checked by interface, addresses
    /// and MAC; its name (the NAD's) and DNS are Multus's.
    #[test]
    fn delegate_entries_are_checked_against_the_journal() {
        let red = Attachment {
            ips: vec!["172.20.0.5".parse().unwrap(), "fd00::5".parse().unwrap()],
            mac: "02:ab:cd:ef:00:05".into(),
            ..att("red", "net5", "172.20.0.5")
        };
        let good = format!(
            r#"[{PRIMARY},{{"name":"default/red-nad","interface":"net5","ips":["fd00::5/64","172.20.0.5"],"mac":"02:ab:cd:ef:00:05","default":false,"dns":{{}}}}]"#
        );
        assert!(check_delegates(Some(&good), std::slice::from_ref(&red)).is_empty());
        let upper = good.replace("02:ab:cd:ef:00:05", "02:AB:CD:EF:00:05");
        assert!(check_delegates(Some(&upper), std::slice::from_ref(&red)).is_empty());
        let wrong = good.replace("172.20.0.5", "172.20.0.6");
        let problems = check_delegates(Some(&wrong), std::slice::from_ref(&red));
        assert_eq!(problems.len(), 1);
        assert!(
            problems[0].contains("net5") && problems[0].contains("172.20.0.6"),
            "{problems:?}"
        );
        let missing = check_delegates(Some(&format!("[{PRIMARY}]")), std::slice::from_ref(&red));
        assert!(missing[0].contains("no entry"), "{missing:?}");
        // The default network's entry for the same name is not the delegate's.
        let default_only = r#"[{"name":"cbr0","interface":"net5","ips":["172.20.0.5","fd00::5"],"mac":"02:ab:cd:ef:00:05","default":true}]"#;
        assert_eq!(
            check_delegates(Some(default_only), std::slice::from_ref(&red)).len(),
            1
        );
        assert!(check_delegates(Some("{"), &[red])[0].contains("not a JSON list"));
        assert!(check_delegates(Some("{"), &[]).is_empty());
    }

    /// The YAML documents of the `.yaml` files directly in `dir`, as JSON.
    fn yaml_docs(dir: &std::path::Path) -> Vec<(std::path::PathBuf, Value)> {
        use serde::Deserialize;
        let mut paths: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
            .collect();
        paths.sort();
        let mut out = Vec::new();
        for path in paths {
            let text = std::fs::read_to_string(&path).unwrap();
            for doc in serde_yaml::Deserializer::from_str(&text) {
                let v =
                    Value::deserialize(doc).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                if !v.is_null() {
                    out.push((path.clone(), v));
                }
            }
        }
        out
    }

    /// `examples/multus/` (outside the checks of `examples/*.yaml`: its kind needs Multus' CRD)
    /// is what it says: each NetworkAttachmentDefinition is a bridgenet delegate configuration
    /// for an example network, and each pod selects one of them, with an interface, address
    /// and MAC the agent takes.
    #[test]
    fn the_multus_example_is_a_bridgenet_delegate() {
        use crate::cni::types::NetConf;
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
        let networks: BTreeMap<String, bridgenet_crds::BridgeNetwork> = yaml_docs(&root)
            .into_iter()
            .filter(|(_, d)| d["kind"] == "BridgeNetwork")
            .map(|(_, d)| {
                let bn: bridgenet_crds::BridgeNetwork = serde_json::from_value(d).unwrap();
                (bn.metadata.name.clone().unwrap(), bn)
            })
            .collect();
        let docs = yaml_docs(&root.join("multus"));
        let mut nads = BTreeMap::new();
        for (path, doc) in docs
            .iter()
            .filter(|(_, d)| d["kind"] == "NetworkAttachmentDefinition")
        {
            let file = path.display();
            assert_eq!(doc["apiVersion"], "k8s.cni.cncf.io/v1", "{file}");
            let name = doc["metadata"]["name"].as_str().unwrap();
            let config = doc["spec"]["config"].as_str().unwrap();
            let conf = NetConf::parse(config.as_bytes()).unwrap_or_else(|e| panic!("{file}: {e}"));
            assert_eq!(conf.plugin_type, "bridgenet", "{file}");
            assert_eq!(conf.name, name, "{file}: config name");
            assert_eq!(
                conf.extra["capabilities"],
                serde_json::json!({"ips": true, "mac": true}),
                "{file}: without them Multus passes no runtimeConfig"
            );
            let network = conf
                .network
                .unwrap_or_else(|| panic!("{file}: no \"network\""));
            assert!(
                networks.contains_key(&network),
                "{file}: no example network {network}"
            );
            nads.insert(name.to_owned(), network);
        }
        let mut pods = 0;
        for (path, doc) in docs.iter().filter(|(_, d)| d["kind"] == "Pod") {
            let file = path.display();
            pods += 1;
            let annotations = &doc["metadata"]["annotations"];
            assert!(
                annotations
                    .get(bridgenet_crds::ANNOTATION_NETWORKS)
                    .is_none(),
                "{file}"
            );
            let value = annotations[ANNOTATION_NETWORKS].as_str().unwrap().trim();
            let selected: Vec<Value> = if value.starts_with('[') {
                serde_json::from_str(value).unwrap()
            } else {
                value
                    .split(',')
                    .map(|n| serde_json::json!({"name": n.trim()}))
                    .collect()
            };
            for element in selected {
                let nad = element["name"].as_str().unwrap();
                let network = nads
                    .get(nad)
                    .unwrap_or_else(|| panic!("{file}: no NAD {nad}"));
                let plan = bridgenet_crds::net::resolve(network, &networks[network].spec).unwrap();
                for ip in element["ips"].as_array().into_iter().flatten() {
                    let ip = ip
                        .as_str()
                        .unwrap()
                        .split('/')
                        .next()
                        .unwrap()
                        .parse()
                        .unwrap();
                    assert!(plan.v4.is_assignable(ip), "{file}: {ip} on {network}");
                }
                if let Some(mac) = element["mac"].as_str() {
                    assert!(
                        crate::cni::annotation::parse_mac(mac).is_some(),
                        "{file}: {mac}"
                    );
                }
                if let Some(interface) = element["interface"].as_str() {
                    assert!(bridgenet_crds::names::is_valid_ifname(interface), "{file}");
                }
            }
        }
        assert!(!nads.is_empty() && pods >= 2, "{nads:?}, {pods} pods");
    }
}
