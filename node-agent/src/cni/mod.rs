//! Pod attachment through CNI: the protocol types shared with the `bridgenet` plugin binary,
//! the pod annotation, the agent's socket server, the engine behind each CNI command and
//! hot-plug, installing the plugin into the host's CNI configuration, and reporting results
//! back to the cluster (`bridgenet.io/network-status`, and the Network Plumbing Working Group's
//! `k8s.v1.cni.cncf.io/network-status` beside other writers', and the readiness gate's
//! `bridgenet.io/networks-ready` condition).

pub mod agent;
pub mod annotation;
pub mod cri;
pub mod engine;
pub mod hotplug;
pub mod install;
pub mod kube;
pub mod npwg;
pub mod readiness;
pub mod report;
pub mod server;
pub mod types;
