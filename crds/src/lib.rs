//! The bridgenet API (`BridgeNetwork`, `NodeBridge`) and what every side of bridgenet needs to
//! agree on: label and annotation keys, default bridge names, and address arithmetic.
#![forbid(unsafe_code)]

pub mod claims;
pub mod conditions;
pub mod crdgen;
pub mod mac;
pub mod names;
pub mod net;
pub mod resolved;
pub mod v1alpha1;

pub use mac::Mac;
pub use resolved::{ResolvedNodeBridge, resolve_node_bridge};
pub use v1alpha1::{
    AddressClaim, AddressClaimSpec, AddressClaimStatus, BridgeNetwork, BridgeNetworkSpec,
    BridgeNetworkStatus, NetworkOverlay, NetworkOverlaySpec, NodeBridge, NodeBridgeSpec,
    NodeBridgeStatus,
};

/// Label on a NodeBridge naming its BridgeNetwork.
pub const LABEL_NETWORK: &str = "bridgenet.io/network";
/// Label on a NodeBridge naming its node; the agent watches only its own node's.
pub const LABEL_NODE: &str = "bridgenet.io/node";
/// Pod annotation asking for networks: `a`, `a,b`, or a JSON list of `{name, interface, ip, mac}`.
pub const ANNOTATION_NETWORKS: &str = "bridgenet.io/networks";
/// Pod annotation where the agent writes the result of attachment (like Multus' `network-status`).
pub const ANNOTATION_NETWORK_STATUS: &str = "bridgenet.io/network-status";
/// BridgeNetwork annotation that lets deletion go ahead while pods are still attached.
pub const ANNOTATION_FORCE_DELETE: &str = "bridgenet.io/force-delete";
/// Finalizer the operator puts on BridgeNetworks.
pub const FINALIZER_OPERATOR: &str = "bridgenet.io/operator";
/// Finalizer the agent puts on NodeBridges until the node is torn down.
pub const FINALIZER_AGENT: &str = "bridgenet.io/agent";
