//! Overlay peers as each network publishes them: the NetworkOverlays (one per network, written by
//! the operator: the nodes where the network has pods, and their underlay addresses), watched
//! cluster-wide. They change only when a node gains its first pod of a network or loses its
//! last one, so the watch stays quiet while pods come and go.
//!
//! This replaces the per-node peer lists the operator used to write into every NodeBridge,
//! which made each NodeBridge grow with the cluster and every node event rewrite all of them.
//! The agent keeps only what it needs of a network — its tunnel endpoints — and reconciles the
//! network's NodeBridge on this node when they change.

use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::{Arc, PoisonError, RwLock};

use bridgenet_crds::NetworkOverlay;
use bridgenet_crds::resolved::ResolvedPeer;
use futures::{Stream, StreamExt};
use kube::Api;
use kube::runtime::watcher;

/// Network name → the peers its status lists. Cheap to clone (shared).
#[derive(Clone, Default)]
pub struct PeerDirectory {
    inner: Arc<RwLock<Directory>>,
}

#[derive(Default)]
struct Directory {
    networks: HashMap<String, Arc<[ResolvedPeer]>>,
    /// Networks seen since the watch's last (re)list began; replaces `networks` when it ends.
    relist: Option<HashMap<String, Arc<[ResolvedPeer]>>>,
    /// One full list has been applied.
    synced: bool,
}

impl PeerDirectory {
    /// The tunnel endpoints `network` publishes (empty when unknown or when it has none).
    pub fn of(&self, network: &str) -> Arc<[ResolvedPeer]> {
        self.read()
            .networks
            .get(network)
            .cloned()
            .unwrap_or_else(|| Arc::from(Vec::new()))
    }

    /// Whether one full list of the NetworkOverlays has been seen.
    pub fn synced(&self) -> bool {
        self.read().synced
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Directory> {
        // Every critical section is one map operation: a poisoned lock holds no torn state.
        self.inner.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Directory> {
        self.inner.write().unwrap_or_else(PoisonError::into_inner)
    }

    /// Applies one watch event; returns the networks whose peers changed.
    pub fn apply(&self, event: watcher::Event<NetworkOverlay>) -> Vec<String> {
        let mut d = self.write();
        match event {
            watcher::Event::Init => {
                d.relist = Some(HashMap::new());
                Vec::new()
            }
            watcher::Event::InitApply(net) => {
                let (name, peers) = published(&net);
                match d.relist.as_mut() {
                    Some(relist) => {
                        relist.insert(name, peers);
                        Vec::new()
                    }
                    None => set(&mut d.networks, name, peers),
                }
            }
            watcher::Event::InitDone => {
                let fresh = d.relist.take().unwrap_or_default();
                let old = std::mem::replace(&mut d.networks, fresh);
                d.synced = true;
                let names: BTreeSet<&String> = old.keys().chain(d.networks.keys()).collect();
                names
                    .into_iter()
                    .filter(|n| {
                        let peers = |m: &HashMap<String, Arc<[ResolvedPeer]>>| {
                            m.get(*n).map_or(&[][..], |p| &p[..]).to_vec()
                        };
                        peers(&old) != peers(&d.networks)
                    })
                    .cloned()
                    .collect()
            }
            watcher::Event::Apply(net) => {
                let (name, peers) = published(&net);
                set(&mut d.networks, name, peers)
            }
            watcher::Event::Delete(overlay) => {
                let name = overlay.spec.network;
                match d.networks.remove(&name) {
                    Some(peers) if !peers.is_empty() => vec![name],
                    _ => Vec::new(),
                }
            }
        }
    }
}

fn set(
    networks: &mut HashMap<String, Arc<[ResolvedPeer]>>,
    name: String,
    peers: Arc<[ResolvedPeer]>,
) -> Vec<String> {
    let changed = match networks.get(&name) {
        Some(have) => *have != peers,
        None => !peers.is_empty(),
    };
    networks.insert(name.clone(), peers);
    if changed { vec![name] } else { Vec::new() }
}

/// A network's name and its published tunnel endpoints, sorted by node. An entry whose address
/// does not parse is skipped (and logged): the others still get their broadcasts.
fn published(overlay: &NetworkOverlay) -> (String, Arc<[ResolvedPeer]>) {
    let name = overlay.spec.network.clone();
    let mut peers: Vec<ResolvedPeer> = overlay
        .spec
        .endpoints
        .iter()
        .filter_map(|t| match t.address.parse::<IpAddr>() {
            Ok(address) => Some(ResolvedPeer {
                node: t.node.clone(),
                address,
            }),
            Err(_) => {
                tracing::warn!(network = %name, node = %t.node, address = %t.address,
                    "ignoring a tunnel endpoint whose address is not an IP address");
                None
            }
        })
        .collect();
    peers.sort_by(|a, b| a.node.cmp(&b.node));
    (name, peers.into())
}

/// What the watch of NetworkOverlays reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PeerChange {
    /// A full list has been applied (the first one: the directory is synced).
    Listed,
    /// The peers of this network changed.
    Network(String),
}

/// Watches every NetworkOverlay and keeps `directory` up to date; yields each full list and
/// the names of the networks whose peers changed.
pub fn watch(api: Api<NetworkOverlay>, directory: PeerDirectory) -> impl Stream<Item = PeerChange> {
    watcher(api, watcher::Config::default())
        .filter_map(move |event| {
            let listed = matches!(event, Ok(watcher::Event::InitDone));
            let changed = match event {
                Ok(event) => directory.apply(event),
                Err(e) => {
                    if is_not_found(&e) {
                        tracing::warn!(error = %e,
                            "the NetworkOverlay CRD is not installed: apply this release's CRDs (charts/bridgenet/crds) before its agents");
                    } else {
                        tracing::warn!(error = %e, "watching NetworkOverlays for overlay peers");
                    }
                    Vec::new()
                }
            };
            let changes = changed.into_iter().map(PeerChange::Network);
            let items: Vec<PeerChange> = listed
                .then_some(PeerChange::Listed)
                .into_iter()
                .chain(changes)
                .collect();
            futures::future::ready(Some(futures::stream::iter(items)))
        })
        .flatten()
}

/// Whether the watch failed because the server does not know the resource (CRDs not upgraded).
fn is_not_found(e: &watcher::Error) -> bool {
    match e {
        watcher::Error::InitialListFailed(kube::Error::Api(s))
        | watcher::Error::WatchStartFailed(kube::Error::Api(s))
        | watcher::Error::WatchFailed(kube::Error::Api(s)) => s.code == 404,
        _ => false,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use bridgenet_crds::NetworkOverlaySpec;
    use bridgenet_crds::v1alpha1::TunnelEndpoint;

    fn net(name: &str, endpoints: &[(&str, &str)]) -> NetworkOverlay {
        NetworkOverlay::new(
            name,
            NetworkOverlaySpec {
                network: name.into(),
                node_count: i32::try_from(endpoints.len()).unwrap(),
                endpoints: endpoints
                    .iter()
                    .map(|(node, address)| TunnelEndpoint {
                        node: (*node).into(),
                        address: (*address).into(),
                    })
                    .collect(),
            },
        )
    }

    fn addrs(d: &PeerDirectory, network: &str) -> Vec<String> {
        d.of(network)
            .iter()
            .map(|p| p.address.to_string())
            .collect()
    }

    #[test]
    fn follows_the_status_and_reports_only_changes() {
        let d = PeerDirectory::default();
        assert!(!d.synced());
        assert!(d.apply(watcher::Event::Init).is_empty());
        d.apply(watcher::Event::InitApply(net(
            "a",
            &[("n2", "192.0.2.2"), ("n1", "192.0.2.1")],
        )));
        d.apply(watcher::Event::InitApply(net("b", &[])));
        assert!(d.of("a").is_empty(), "a relist lands whole, at its end");
        assert_eq!(d.apply(watcher::Event::InitDone), ["a"]);
        assert!(d.synced());
        assert_eq!(addrs(&d, "a"), ["192.0.2.1", "192.0.2.2"]);

        // A status write that changes no endpoint (say, a count) triggers nothing.
        assert!(
            d.apply(watcher::Event::Apply(net(
                "a",
                &[("n1", "192.0.2.1"), ("n2", "192.0.2.2")]
            )))
            .is_empty()
        );
        assert_eq!(
            d.apply(watcher::Event::Apply(net(
                "b",
                &[("n3", "192.0.2.3"), ("n4", "not-an-ip")]
            ))),
            ["b"]
        );
        assert_eq!(addrs(&d, "b"), ["192.0.2.3"], "a bad entry is skipped");
        assert_eq!(d.apply(watcher::Event::Delete(net("b", &[]))), ["b"]);
        assert!(d.of("b").is_empty());

        // A relist after a watch gap drops what vanished in between and reports it.
        d.apply(watcher::Event::Init);
        d.apply(watcher::Event::InitApply(net("c", &[("n1", "192.0.2.1")])));
        let mut changed = d.apply(watcher::Event::InitDone);
        changed.sort();
        assert_eq!(changed, ["a", "c"]);
        assert!(d.of("a").is_empty());
        assert_eq!(addrs(&d, "c"), ["192.0.2.1"]);
    }
}
