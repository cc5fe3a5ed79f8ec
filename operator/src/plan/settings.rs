//! The operator-wide settings the planner reads.

use bridgenet_crds::net::BlockDefaults;
use ipnet::IpNet;

/// Operator-wide settings the planner needs (from the command line).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    /// MTU for networks whose spec has none.
    pub default_mtu: u32,
    /// Block sizes for networks whose spec has none.
    pub block_defaults: BlockDefaults,
    /// The cluster's pod and service CIDRs; no network may overlap them.
    pub cluster_cidrs: Vec<IpNet>,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            default_mtu: 1450,
            block_defaults: BlockDefaults::default(),
            cluster_cidrs: Vec::new(),
        }
    }
}
