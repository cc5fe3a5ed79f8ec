//! Each NodeBridge's spec resolved once per change ([`bridgenet_crds::resolve_node_bridge`]),
//! so that the data plane, IPAM, CNI engine and status writer share one typed value instead of
//! re-parsing the strings on every pass and every ADD.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use bridgenet_crds::net::NetError;
use bridgenet_crds::{NodeBridgeSpec, ResolvedNodeBridge, resolve_node_bridge};

/// A NodeBridge spec that does not resolve: the address problem, with the network it is in.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("NodeBridge {network}: {source}")]
pub struct SpecError {
    /// The BridgeNetwork's name.
    pub network: String,
    /// What is wrong, naming the field.
    pub source: NetError,
}

impl SpecError {
    /// Condition and Event reason.
    pub fn reason(&self) -> &'static str {
        "InvalidSpec"
    }
}

/// The outcome of resolving one NodeBridge spec.
pub type Resolution = Result<Arc<ResolvedNodeBridge>, SpecError>;

/// NodeBridge name → its last spec and what it resolved to. Cheap to clone (shared).
#[derive(Clone, Default)]
pub struct SpecCache {
    entries: Arc<Mutex<HashMap<String, (NodeBridgeSpec, Resolution)>>>,
}

impl SpecCache {
    /// The resolution of NodeBridge `name` whose spec is `spec`: resolved the first time this
    /// spec is seen for the name, then served from the cache until the spec changes (comparing
    /// the spec, not the resourceVersion, so status writes do not count as changes).
    pub fn resolve(&self, name: &str, spec: &NodeBridgeSpec) -> Resolution {
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((cached, resolution)) = entries.get(name)
            && cached == spec
        {
            return resolution.clone();
        }
        let resolution = resolve_node_bridge(spec)
            .map(Arc::new)
            .map_err(|source| SpecError {
                network: spec.network.clone(),
                source,
            });
        entries.insert(name.to_owned(), (spec.clone(), resolution.clone()));
        resolution
    }

    /// Drops the entry of a NodeBridge that is gone.
    pub fn forget(&self, name: &str) {
        self.entries
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(name);
    }

    /// Keeps only the entries of NodeBridges `keep` accepts by name.
    pub fn retain(&self, mut keep: impl FnMut(&str) -> bool) {
        self.entries
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|name, _| keep(name));
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::dataplane::tests::spec;

    #[test]
    fn resolves_once_per_spec_and_reports_the_network() {
        let cache = SpecCache::default();
        let mut s = spec("net-a", "br-a", "172.20.0.0/16", "172.20.0.1", 1);
        let first = cache.resolve("nb-a", &s).unwrap();
        let again = cache.resolve("nb-a", &s).unwrap();
        assert!(
            Arc::ptr_eq(&first, &again),
            "an unchanged spec is not resolved again"
        );

        s.gateway = "172.21.0.1".into();
        let err = cache.resolve("nb-a", &s).unwrap_err();
        assert_eq!(err.reason(), "InvalidSpec");
        assert!(matches!(err.source, NetError::GatewayOutsideSubnet { .. }));
        assert!(
            err.to_string()
                .starts_with("NodeBridge net-a: gateway 172.21.0.1")
        );

        cache.retain(|name| name != "nb-a");
        s.gateway = "172.20.0.1".into();
        let fresh = cache.resolve("nb-a", &s).unwrap();
        assert!(
            !Arc::ptr_eq(&first, &fresh),
            "a forgotten entry is resolved anew"
        );
        cache.forget("nb-a");
        assert!(cache.entries.lock().unwrap().is_empty());
    }
}
