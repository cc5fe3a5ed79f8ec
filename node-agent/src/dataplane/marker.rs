//! Ownership markers: the interface alias (`IFLA_IFALIAS`) bridgenet puts on every link it
//! creates. A name prefix is not ownership (`bnv` pod veths and `bnvx-` VXLAN ports share
//! one, and anyone may name a link so): whatever deletes or repairs links matches the kind and
//! one of these markers, read from this one definition by the realizer, the teardown, the
//! orphan collection, the pod sweep and the link monitors alike.
//!
//! The two families can never be confused: a network's marker is `bridgenet:<network>` and a
//! pod veth's is `bridgenet-pod:<containerId>/<ifname>`; network names have no `:`, so neither
//! is a prefix of the other.

/// Marks a network's bridge and VXLAN port: `bridgenet:<network>` (see [`alias_of`]). Links
/// without it are never modified or deleted by the data plane.
pub const ALIAS_PREFIX: &str = "bridgenet:";

/// Marks a pod's host veth: `bridgenet-pod:<containerId>/<ifname>` (see [`pod_alias`]).
pub const POD_ALIAS_PREFIX: &str = "bridgenet-pod:";

/// The marker alias of a network's links.
pub fn alias_of(network: &str) -> String {
    format!("{ALIAS_PREFIX}{network}")
}

/// The network a link's alias marks it as belonging to, if it carries a network's marker.
pub fn network_of(alias: &str) -> Option<&str> {
    alias.strip_prefix(ALIAS_PREFIX)
}

/// The marker alias of the host veth of (sandbox, interface).
pub fn pod_alias(container_id: &str, ifname: &str) -> String {
    format!("{POD_ALIAS_PREFIX}{container_id}/{ifname}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markers_never_take_each_other() {
        assert_eq!(network_of(&alias_of("blue")), Some("blue"));
        assert_eq!(network_of(&pod_alias("sb-1", "net1")), None);
        assert!(!alias_of("blue").starts_with(POD_ALIAS_PREFIX));
    }
}
