//! The names of one network: every endpoint of every node, by pod name, `pod.namespace` and
//! alias, and every address back to its pod, built from the NodeBridges' `status.endpoints`.

use std::collections::HashMap;
use std::net::IpAddr;

use bridgenet_crds::v1alpha1::Endpoint;

/// A pod on the network, as DNS knows it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Holder {
    namespace: String,
    pod: String,
    addrs: Vec<IpAddr>,
}

/// What a name on the network resolves to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Lookup {
    /// The name is the network's: these addresses (both families; the caller picks).
    Found(Vec<IpAddr>),
    /// A single-label name the network does not have: answered NXDOMAIN here, never asked
    /// upstream, so that a pod's name on another network does not leak through the host's
    /// resolvers.
    NoSuchName,
    /// Not a name of the network: for the upstream resolvers.
    Elsewhere,
}

/// One network's names. Built whole from the endpoints and swapped in, so that lookups never
/// see a half-made table.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Zone {
    /// `(namespace, pod)` → index in `holders`.
    pods: HashMap<(String, String), usize>,
    /// Lowercase pod name → indexes of the pods of that name (any namespace).
    by_pod_name: HashMap<String, Vec<usize>>,
    /// Lowercase alias → indexes of its holders (several pods may share one, as in Docker).
    aliases: HashMap<String, Vec<usize>>,
    /// Address → index of its pod.
    reverse: HashMap<IpAddr, usize>,
    holders: Vec<Holder>,
}

impl Zone {
    /// The zone of the endpoints of every node of the network. A pod with interfaces on the
    /// network on several sandboxes (a re-created sandbox not yet cleaned) answers with every
    /// address it has there.
    pub fn build<'a>(endpoints: impl IntoIterator<Item = &'a Endpoint>) -> Self {
        let mut zone = Zone::default();
        for e in endpoints {
            let addrs: Vec<IpAddr> = [e.ipv4.as_deref(), e.ipv6.as_deref()]
                .into_iter()
                .flatten()
                .filter_map(parse_address)
                .collect();
            if addrs.is_empty() {
                continue;
            }
            let key = (e.namespace.to_ascii_lowercase(), e.pod.to_ascii_lowercase());
            let i = match zone.pods.get(&key) {
                Some(&i) => i,
                None => {
                    let i = zone.holders.len();
                    zone.holders.push(Holder {
                        namespace: key.0.clone(),
                        pod: key.1.clone(),
                        addrs: Vec::new(),
                    });
                    zone.by_pod_name.entry(key.1.clone()).or_default().push(i);
                    zone.pods.insert(key, i);
                    i
                }
            };
            for ip in addrs {
                if !zone.holders[i].addrs.contains(&ip) {
                    zone.holders[i].addrs.push(ip);
                }
                zone.reverse.insert(ip, i);
            }
            for alias in &e.aliases {
                let holders = zone.aliases.entry(alias.to_ascii_lowercase()).or_default();
                if !holders.contains(&i) {
                    holders.push(i);
                }
            }
        }
        for h in &mut zone.holders {
            h.addrs.sort();
        }
        zone
    }

    /// Number of names the zone answers (pods and aliases).
    pub fn names(&self) -> usize {
        self.holders.len() + self.aliases.len()
    }

    /// The namespace of the pod holding `ip`, if it is on the network.
    pub fn namespace_of(&self, ip: IpAddr) -> Option<&str> {
        self.reverse
            .get(&ip)
            .map(|&i| self.holders[i].namespace.as_str())
    }

    /// `pod.namespace` of the pod holding `ip`.
    pub fn name_of(&self, ip: IpAddr) -> Option<String> {
        self.reverse.get(&ip).map(|&i| {
            let h = &self.holders[i];
            format!("{}.{}", h.pod, h.namespace)
        })
    }

    /// Resolves `name` (lowercase, no trailing dot) for a pod of namespace `asker` (`None`
    /// when the asking address is not known yet, e.g. a pod whose endpoint has not reached the
    /// NodeBridge status: then a bare pod name matches the pods of that name in every
    /// namespace of the network).
    ///
    /// Order: a pod of the asker's namespace, then an alias, then `pod.namespace`.
    pub fn lookup(&self, name: &str, asker: Option<&str>) -> Lookup {
        let mut found: Vec<usize> = Vec::new();
        if !name.contains('.') {
            let same_name = self.by_pod_name.get(name).map_or(&[][..], Vec::as_slice);
            found.extend(
                same_name
                    .iter()
                    .filter(|&&i| asker.is_none_or(|ns| self.holders[i].namespace == ns)),
            );
        }
        if found.is_empty()
            && let Some(holders) = self.aliases.get(name)
        {
            found.extend(holders);
        }
        if found.is_empty()
            && let Some((pod, namespace)) = name.rsplit_once('.')
            && let Some(&i) = self.pods.get(&(namespace.to_owned(), pod.to_owned()))
        {
            found.push(i);
        }
        if found.is_empty() {
            return if name.contains('.') {
                Lookup::Elsewhere
            } else {
                Lookup::NoSuchName
            };
        }
        let mut addrs: Vec<IpAddr> = found
            .into_iter()
            .flat_map(|i| self.holders[i].addrs.iter().copied())
            .collect();
        addrs.sort();
        addrs.dedup();
        Lookup::Found(addrs)
    }
}

/// `172.20.0.5/16` (what the status holds) or a bare address.
fn parse_address(text: &str) -> Option<IpAddr> {
    text.split('/').next()?.parse().ok()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
pub(crate) mod tests {
    use super::*;

    /// An endpoint as the agents report it (address with prefix), for the dns modules' tests.
    pub(crate) fn endpoint(
        ns: &str,
        pod: &str,
        v4: &str,
        v6: Option<&str>,
        aliases: &[&str],
    ) -> Endpoint {
        Endpoint {
            namespace: ns.into(),
            pod: pod.into(),
            interface: "net1".into(),
            ipv4: Some(format!("{v4}/24")),
            ipv6: v6.map(|s| format!("{s}/64")),
            mac: "02:00:00:00:00:01".into(),
            aliases: aliases.iter().map(|a| (*a).to_owned()).collect(),
            container_id: None,
            since: None,
        }
    }

    fn ips(list: &[&str]) -> Lookup {
        Lookup::Found(list.iter().map(|s| s.parse().unwrap()).collect())
    }

    #[test]
    fn names_namespaces_and_aliases() {
        let eps = [
            endpoint("shop", "web", "10.0.0.2", Some("fd00::2"), &["front"]),
            endpoint("shop", "db", "10.0.0.3", None, &["postgres", "store"]),
            endpoint("shop", "db2", "10.0.0.4", None, &["store"]),
            endpoint("blog", "web", "10.0.0.5", None, &[]),
        ];
        let zone = Zone::build(&eps);
        assert_eq!(zone.names(), 7);
        // A bare pod name is the asker's namespace's.
        assert_eq!(
            zone.lookup("web", Some("shop")),
            ips(&["10.0.0.2", "fd00::2"])
        );
        assert_eq!(zone.lookup("web", Some("blog")), ips(&["10.0.0.5"]));
        // An asker not known yet: every pod of that name on the network.
        assert_eq!(
            zone.lookup("web", None),
            ips(&["10.0.0.2", "10.0.0.5", "fd00::2"])
        );
        // `pod.namespace` from anywhere on the network.
        assert_eq!(zone.lookup("db.shop", Some("blog")), ips(&["10.0.0.3"]));
        // Aliases are the network's, and shared ones answer every holder.
        assert_eq!(zone.lookup("postgres", Some("blog")), ips(&["10.0.0.3"]));
        assert_eq!(
            zone.lookup("store", Some("shop")),
            ips(&["10.0.0.3", "10.0.0.4"])
        );
        // A pod of another namespace by its bare name is not there; nor is an unknown name.
        assert_eq!(zone.lookup("db", Some("blog")), Lookup::NoSuchName);
        assert_eq!(zone.lookup("nobody", None), Lookup::NoSuchName);
        assert_eq!(zone.lookup("db.blog", Some("blog")), Lookup::Elsewhere);
        assert_eq!(zone.lookup("example.com", None), Lookup::Elsewhere);
        // Reverse.
        assert_eq!(
            zone.name_of("fd00::2".parse().unwrap()).unwrap(),
            "web.shop"
        );
        assert_eq!(zone.namespace_of("10.0.0.5".parse().unwrap()), Some("blog"));
        assert_eq!(zone.name_of("10.0.0.99".parse().unwrap()), None);
    }

    #[test]
    fn mixed_case_and_addressless_endpoints() {
        let mut bare = endpoint("ns", "ghost", "10.0.0.9", None, &[]);
        bare.ipv4 = None;
        let eps = [endpoint("NS", "Web", "10.0.0.2", None, &["DB"]), bare];
        let zone = Zone::build(&eps);
        assert_eq!(zone.lookup("web", Some("ns")), ips(&["10.0.0.2"]));
        assert_eq!(zone.lookup("db", Some("ns")), ips(&["10.0.0.2"]));
        assert_eq!(zone.lookup("ghost", Some("ns")), Lookup::NoSuchName);
    }
}
