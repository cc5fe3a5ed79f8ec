//! bridgenet node agent: realizes this node's NodeBridges (bridge, gateway, overlay, firewall),
//! serves the CNI plugin, hot-plugs running pods and answers DNS on every network.
#![forbid(unsafe_code)]

pub mod app;
pub mod attach;
pub mod cli;
pub mod cni;
pub mod dataplane;
pub mod dns;
pub mod durable;
pub mod health;
pub mod ipam;
pub mod metrics;
pub mod nodebridge;
pub mod uninstall;
