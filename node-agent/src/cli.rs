//! Command-line flags of `bridgenet-agent` (each also an environment variable).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

/// Flags of the node agent. The names are a contract with the Helm chart's DaemonSet.
#[derive(Parser, Debug, Clone)]
#[command(
    name = "bridgenet-agent",
    version,
    about = "bridgenet node agent",
    after_help = "Also: `bridgenet-agent uninstall-cni [--cni-conf-dir DIR]` removes bridgenet from the node's CNI configuration."
)]
pub struct Cli {
    /// This node's name (from the downward API `spec.nodeName`); only NodeBridges labelled
    /// `bridgenet.io/node=<this>` are realized.
    #[arg(long, env = "NODE_NAME")]
    pub node_name: String,

    /// Where node-local state (IPAM journal) is kept.
    #[arg(
        long,
        env = "BRIDGENET_STATE_DIR",
        default_value = "/var/lib/bridgenet"
    )]
    pub state_dir: PathBuf,

    /// Unix socket the CNI plugin talks to.
    #[arg(
        long,
        env = "BRIDGENET_SOCKET",
        default_value = "/run/bridgenet/cni.sock"
    )]
    pub socket: PathBuf,

    /// Host directory the CNI plugin binary is installed into.
    #[arg(long, env = "BRIDGENET_CNI_BIN_DIR", default_value = "/opt/cni/bin")]
    pub cni_bin_dir: PathBuf,

    /// Host directory the CNI configuration is written into.
    #[arg(long, env = "BRIDGENET_CNI_CONF_DIR", default_value = "/etc/cni/net.d")]
    pub cni_conf_dir: PathBuf,

    /// CRI endpoint of the container runtime, for hot-plug into running pods.
    #[arg(
        long,
        env = "BRIDGENET_CRI_ENDPOINT",
        default_value = "unix:///run/containerd/containerd.sock"
    )]
    pub cri_endpoint: String,

    /// Address of `/healthz`, `/readyz` (ready only when every NodeBridge of the node is
    /// programmed) and `/metrics` (Prometheus: above all the count of writes to the kernel).
    #[arg(long, env = "BRIDGENET_HEALTH_ADDR", default_value = "0.0.0.0:9091")]
    pub health_addr: SocketAddr,

    /// Period of the full resync that repairs drift even without a netlink event.
    #[arg(long, env = "BRIDGENET_RESYNC_INTERVAL", default_value = "10s", value_parser = parse_duration)]
    pub resync_interval: Duration,

    /// UDP port of the VXLAN overlay (the same on every node).
    #[arg(long, env = "BRIDGENET_VXLAN_PORT", default_value_t = 4789)]
    pub vxlan_port: u16,

    /// This node's underlay address (the VXLAN source). Default: the node's `InternalIP` read
    /// from the Node object.
    #[arg(long, env = "BRIDGENET_NODE_IP")]
    pub node_ip: Option<std::net::IpAddr>,

    /// The `nft` binary the firewall drives (nftables JSON through `nft -j -f -`); the agent
    /// image must ship it.
    #[arg(long, env = "BRIDGENET_NFT", default_value = "nft")]
    pub nft: std::path::PathBuf,

    /// Name of the agent's own Pod (downward API `metadata.name`). On SIGTERM the agent reads
    /// it to find its DaemonSet: gone or being deleted means uninstall, and only then is the
    /// CNI chaining removed. Unset: the chaining is always kept.
    #[arg(long, env = "POD_NAME")]
    pub pod_name: Option<String>,

    /// Namespace of the agent's own Pod and of its DaemonSet (downward API
    /// `metadata.namespace`).
    #[arg(long, env = "POD_NAMESPACE")]
    pub pod_namespace: Option<String>,

    /// Resolvers the networks' DNS forwards other names to, `IP[:PORT]` separated by commas.
    /// Default: the nameservers of `/etc/resolv.conf` (the node's, as the agent runs in the
    /// host network).
    #[arg(long, env = "BRIDGENET_DNS_UPSTREAM", value_delimiter = ',', value_parser = crate::dns::upstream::parse_server)]
    pub dns_upstream: Vec<std::net::SocketAddr>,

    /// The cluster DNS service (e.g. `10.96.0.10`), `IP[:PORT]` separated by commas: names of
    /// `--cluster-domain` go there, so `kubernetes.default.svc.cluster.local` resolves through
    /// a network's resolver; internal networks forward nothing else. Unset: cluster names go
    /// to the upstream resolvers too (internal networks refuse them).
    #[arg(long, env = "BRIDGENET_CLUSTER_DNS", value_delimiter = ',', value_parser = crate::dns::upstream::parse_server)]
    pub cluster_dns: Vec<std::net::SocketAddr>,

    /// The cluster's DNS domain.
    #[arg(
        long,
        env = "BRIDGENET_CLUSTER_DOMAIN",
        default_value = "cluster.local"
    )]
    pub cluster_domain: String,

    /// DNS queries a second each client may send to a network's resolver (bursts of twice
    /// that); beyond it queries are dropped.
    #[arg(long, env = "BRIDGENET_DNS_CLIENT_QPS", default_value_t = 500)]
    pub dns_client_qps: u32,

    /// Log as JSON lines instead of human-readable text.
    #[arg(long, env = "BRIDGENET_LOG_JSON")]
    pub log_json: bool,
}

/// `bridgenet-agent uninstall-cni`: removes bridgenet from every CNI configuration of a
/// directory (restoring a single-plugin config it converted), for
/// a pre-delete hook or an operator by hand (the agent does it itself when its DaemonSet is
/// deleted).
#[derive(Parser, Debug, Clone)]
#[command(
    name = "bridgenet-agent uninstall-cni",
    bin_name = "bridgenet-agent uninstall-cni",
    version,
    about = "remove the bridgenet entry from the node's CNI configuration"
)]
pub struct UninstallCni {
    /// Directory of the CNI configuration.
    #[arg(long, env = "BRIDGENET_CNI_CONF_DIR", default_value = "/etc/cni/net.d")]
    pub cni_conf_dir: PathBuf,
}

/// Parses `10s`, `500ms`, `2m` or a plain number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (digits, unit) = match s.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("invalid duration {s:?}: expected e.g. 10s, 500ms, 2m"))?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n * 60)),
        _ => Err(format!("invalid duration unit in {s:?}: use ms, s or m")),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("7"), Ok(Duration::from_secs(7)));
        assert!(parse_duration("1h").is_err());
        assert!(parse_duration("s").is_err());
    }

    #[test]
    fn flags_parse_with_defaults() {
        let cli = Cli::try_parse_from(["bridgenet-agent", "--node-name", "n1"]).unwrap();
        assert_eq!(cli.node_name, "n1");
        assert_eq!(cli.resync_interval, Duration::from_secs(10));
        assert_eq!(cli.health_addr.port(), 9091);
        assert_eq!(cli.socket, PathBuf::from("/run/bridgenet/cni.sock"));
    }

    #[test]
    fn uninstall_cni_flags() {
        let u =
            UninstallCni::try_parse_from(["uninstall-cni", "--cni-conf-dir", "/tmp/x"]).unwrap();
        assert_eq!(u.cni_conf_dir, PathBuf::from("/tmp/x"));
    }
}
