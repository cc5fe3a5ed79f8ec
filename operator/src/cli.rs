//! Command line and environment: every flag also reads an environment variable, so the Helm
//! chart can set either.

use std::net::SocketAddr;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use ipnet::{IpNet, Ipv4Net};

/// bridgenet operator: turns BridgeNetworks into per-node NodeBridges and reports their status.
///
/// Uses the in-cluster service account, or `KUBECONFIG` / `~/.kube/config` outside a cluster.
#[derive(Parser, Debug, Clone)]
#[command(name = "bridgenet-operator", version, about)]
pub struct Cli {
    /// Address of the HTTP server for /metrics, /healthz and /readyz.
    #[arg(long, env = "BRIDGENET_METRICS_ADDR", default_value = "0.0.0.0:8080")]
    pub metrics_addr: SocketAddr,

    /// Namespace of the leader-election Lease.
    #[arg(long, env = "POD_NAMESPACE", default_value = "bridgenet-system")]
    pub lease_namespace: String,

    /// Name of the leader-election Lease.
    #[arg(
        long,
        env = "BRIDGENET_LEASE_NAME",
        default_value = "bridgenet-operator"
    )]
    pub lease_name: String,

    /// This replica's identity in the Lease (default: the hostname).
    #[arg(long, env = "POD_NAME")]
    pub identity: Option<String>,

    /// Seconds a Lease stays valid without renewal; another replica takes over after that.
    #[arg(long, env = "BRIDGENET_LEASE_DURATION_SECONDS", default_value_t = 15,
          value_parser = clap::value_parser!(u64).range(2..=3600))]
    pub lease_duration_seconds: u64,

    /// Run without leader election (a single replica, or tests). Two replicas started this way
    /// would both write.
    #[arg(long, env = "BRIDGENET_DISABLE_LEADER_ELECTION")]
    pub disable_leader_election: bool,

    /// MTU of networks whose spec has none (1450 leaves room for VXLAN on a 1500-byte underlay).
    #[arg(long, env = "BRIDGENET_DEFAULT_MTU", default_value_t = 1450,
          value_parser = clap::value_parser!(u32).range(576..=65535))]
    pub default_mtu: u32,

    /// Prefix length of per-node IPv4 blocks for networks whose spec has no blockSize.
    #[arg(long, env = "BRIDGENET_BLOCK_SIZE", default_value_t = 26,
          value_parser = clap::value_parser!(u8).range(8..=32))]
    pub block_size: u8,

    /// Comma-separated pod and service CIDRs of the cluster; networks overlapping them are
    /// refused (SubnetOverlap). May be repeated; an empty value means none.
    #[arg(long, env = "BRIDGENET_CLUSTER_CIDRS", value_parser = parse_cidr_list,
          action = clap::ArgAction::Append)]
    pub cluster_cidrs: Vec<CidrList>,

    /// Log JSON lines instead of human-readable text.
    #[arg(long, env = "BRIDGENET_LOG_JSON")]
    pub log_json: bool,

    /// Something other than running the operator (default: run it).
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// What `bridgenet-operator` can do besides operating.
#[derive(Subcommand, Debug, Clone)]
pub enum Command {
    /// Check a live installation end to end (the chart's `helm test` hook): a throwaway
    /// network, a pod on it, a ping from another node, a ping from a second network that must
    /// fail; then delete everything it created. Exits 0 when every check passed.
    SelfTest(SelfTestArgs),
}

/// Flags of `bridgenet-operator self-test`.
#[derive(Args, Debug, Clone)]
pub struct SelfTestArgs {
    /// Namespace of the test pods.
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    pub namespace: String,

    /// Image of the test pods; it must hold a busybox with `sh`, `ping` and `ip` at
    /// /bin/busybox (the agent image does).
    #[arg(long)]
    pub image: String,

    /// Pull policy of the test pods' image.
    #[arg(long, default_value = "IfNotPresent",
          value_parser = ["Always", "IfNotPresent", "Never"])]
    pub image_pull_policy: String,

    /// Subnet of the throwaway network; must not overlap any other network of the cluster.
    #[arg(long, default_value = "172.31.254.0/24")]
    pub subnet: Ipv4Net,

    /// Subnet of the second throwaway network, the one that must not reach the first.
    #[arg(long, default_value = "172.31.255.0/24")]
    pub isolation_subnet: Ipv4Net,

    /// Seconds the checks may take altogether (cleanup gets its own bound after that).
    #[arg(long, default_value_t = 180,
          value_parser = clap::value_parser!(u64).range(10..=3600))]
    pub timeout: u64,
}

/// One `--cluster-cidrs` value: a comma list of CIDRs, empty items ignored (a Helm value left
/// empty renders as an empty environment variable).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CidrList(pub Vec<IpNet>);

fn parse_cidr_list(value: &str) -> Result<CidrList, String> {
    value
        .split(',')
        .map(str::trim)
        .filter(|item| !item.is_empty())
        .map(|item| {
            item.parse::<IpNet>().map_err(|e| {
                format!("{item:?} is not a CIDR ({e}); write e.g. 10.244.0.0/16,10.96.0.0/12")
            })
        })
        .collect::<Result<Vec<_>, _>>()
        .map(CidrList)
}

impl Cli {
    /// Every `--cluster-cidrs` CIDR.
    pub fn cluster_cidrs(&self) -> Vec<IpNet> {
        self.cluster_cidrs
            .iter()
            .flat_map(|l| l.0.iter().copied())
            .collect()
    }

    /// The Lease holder identity: `--identity`, else the hostname, else a fixed fallback.
    pub fn identity(&self) -> String {
        self.identity.clone().unwrap_or_else(|| {
            hostname::get()
                .ok()
                .and_then(|h| h.into_string().ok())
                .unwrap_or_else(|| "bridgenet-operator".to_owned())
        })
    }

    /// Lease validity.
    pub fn lease_duration(&self) -> Duration {
        Duration::from_secs(self.lease_duration_seconds)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_the_conventions() {
        let cli = Cli::try_parse_from(["bridgenet-operator"]).unwrap();
        assert_eq!(cli.metrics_addr.to_string(), "0.0.0.0:8080");
        assert_eq!(cli.lease_name, "bridgenet-operator");
        assert_eq!(cli.default_mtu, 1450);
        assert_eq!(cli.block_size, 26);
        assert!(cli.cluster_cidrs().is_empty());
        assert!(cli.command.is_none());
    }

    #[test]
    fn self_test_is_a_subcommand_with_safe_defaults() {
        let cli = Cli::try_parse_from(["x", "self-test", "--image", "busybox", "--namespace", "t"])
            .unwrap();
        let Some(Command::SelfTest(args)) = cli.command else {
            panic!("no self-test subcommand");
        };
        assert_eq!(args.namespace, "t");
        assert_eq!(args.subnet.to_string(), "172.31.254.0/24");
        assert_eq!(args.timeout, 180);
        assert!(
            Cli::try_parse_from(["x", "self-test"]).is_err(),
            "--image is required"
        );
        assert!(
            Cli::try_parse_from(["x", "self-test", "--image", "b", "--subnet", "fd00::/64"])
                .is_err()
        );
    }

    #[test]
    fn cluster_cidrs_are_a_comma_list_and_bad_ones_fail() {
        let cli = Cli::try_parse_from([
            "bridgenet-operator",
            "--cluster-cidrs",
            "10.244.0.0/16,10.96.0.0/12",
        ])
        .unwrap();
        assert_eq!(cli.cluster_cidrs().len(), 2);
        assert!(Cli::try_parse_from(["x", "--cluster-cidrs", "nope"]).is_err());
        let empty = Cli::try_parse_from(["x", "--cluster-cidrs", ""]).unwrap();
        assert!(empty.cluster_cidrs().is_empty());
        let repeated = Cli::try_parse_from([
            "x",
            "--cluster-cidrs",
            "10.0.0.0/8,",
            "--cluster-cidrs",
            "fd00::/8",
        ])
        .unwrap();
        assert_eq!(repeated.cluster_cidrs().len(), 2);
        assert!(Cli::try_parse_from(["x", "--block-size", "40"]).is_err());
    }
}
