//! Flags and verbs, named like kubectl's global flags and Docker's `network` verbs.

use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Docker's `network` verbs (ls, inspect, create, connect, disconnect, rm) for bridgenet's
/// BridgeNetworks.
#[derive(Debug, Parser)]
#[command(name = "kubectl bridgenet", bin_name = "kubectl-bridgenet", version)]
pub struct Cli {
    /// Path to the kubeconfig file (else KUBECONFIG, else ~/.kube/config).
    #[arg(long, global = true)]
    pub kubeconfig: Option<String>,
    /// The kubeconfig context to use.
    #[arg(long, global = true)]
    pub context: Option<String>,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The verbs.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// List networks: NAME, SUBNET, GATEWAY, READY NODES, ENDPOINTS, INTERNAL.
    Ls {
        /// Output format: wide adds IPV6 SUBNET, IP RANGE, BRIDGE, VNI, MTU, AGE.
        #[arg(short = 'o', long = "output", value_enum)]
        output: Option<LsOutput>,
    },
    /// Show networks in detail, with every attached pod (JSON array like `docker network inspect`).
    Inspect {
        /// Network names.
        #[arg(required = true, value_name = "NET")]
        networks: Vec<String>,
        /// json (default) or a human table.
        #[arg(short = 'f', long, value_enum, default_value_t = InspectFormat::Json)]
        format: InspectFormat,
    },
    /// Create a network from Docker's `network create` flags; prints its id (the uid).
    Create(Box<CreateArgs>),
    /// Attach a running pod to a network (edits its `bridgenet.io/networks` annotation) and wait
    /// until the node agent reports the interface.
    Connect(ConnectArgs),
    /// Detach a pod from a network and wait until the node agent reports it gone.
    Disconnect(DisconnectArgs),
    /// Remove networks; one that pods still use is refused like Docker refuses it.
    #[command(visible_alias = "remove")]
    Rm(RmArgs),
    /// Print a shell completion script.
    Completion {
        /// bash, zsh or fish.
        #[arg(value_enum)]
        shell: Shell,
    },
}

/// `create`: Docker's flags; each maps onto one BridgeNetwork field (see `create.rs`).
#[derive(Debug, Args)]
pub struct CreateArgs {
    /// Network name (a Kubernetes object name: lowercase letters, digits, '-' and '.').
    #[arg(value_name = "NET")]
    pub name: String,
    /// Subnet in CIDR form. Give it twice, once IPv4 and once IPv6, for a dual-stack network.
    #[arg(long, value_name = "CIDR")]
    pub subnet: Vec<String>,
    /// Gateway address; goes to the subnet of its family (IPv6 for an IPv6 address).
    #[arg(long, value_name = "IP")]
    pub gateway: Vec<String>,
    /// Allocate pod addresses from this range inside the subnet of its family.
    #[arg(long = "ip-range", value_name = "CIDR")]
    pub ip_range: Vec<String>,
    /// Addresses never handed to a pod, as Docker writes them (`router=172.20.0.2`); the name is
    /// not kept, the address goes to `excludeAddresses`.
    #[arg(long = "aux-address", value_name = "NAME=IP")]
    pub aux_address: Vec<String>,
    /// Enable IPv6 (needs an IPv6 --subnet: bridgenet has no default IPv6 pool).
    #[arg(long)]
    pub ipv6: bool,
    /// No traffic leaves the network.
    #[arg(long)]
    pub internal: bool,
    /// MTU of the bridge and the pods' interfaces (like `-o com.docker.network.driver.mtu=N`).
    #[arg(long, value_name = "BYTES")]
    pub mtu: Option<u32>,
    /// Driver options, Docker's keys: com.docker.network.bridge.enable_ip_masquerade,
    /// com.docker.network.bridge.enable_icc, com.docker.network.bridge.name,
    /// com.docker.network.driver.mtu.
    #[arg(long = "opt", value_name = "KEY=VALUE")]
    pub opt: Vec<String>,
    /// `yaml` or `json` prints the object (created, or with --dry-run the one that would be);
    /// a KEY=VALUE is Docker's `-o`, the same as --opt.
    #[arg(short = 'o', long = "output", value_name = "yaml|json|KEY=VALUE", value_parser = parse_output_or_opt)]
    pub output: Vec<OutputOrOpt>,
    /// Turn off the network's DNS (spec.dns: false): pods get no names on it.
    #[arg(long = "no-dns")]
    pub no_dns: bool,
    /// Labels of the BridgeNetwork.
    #[arg(long, value_name = "KEY=VALUE")]
    pub label: Vec<String>,
    /// Only `bridge` (Docker's default) exists.
    #[arg(short = 'd', long, value_name = "DRIVER", default_value = "bridge")]
    pub driver: String,
    /// Print the object instead of creating it: `client` (the default) builds it here, `server`
    /// also has the API server validate and default it without storing it.
    #[arg(long = "dry-run", value_enum, value_name = "client|server", num_args = 0..=1,
          require_equals = true, default_missing_value = "client")]
    pub dry_run: Option<DryRun>,
}

/// `create --dry-run`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DryRun {
    /// Build the object here and print it.
    Client,
    /// Send it to the API server with `dryRun=All`: validation and defaults, nothing stored.
    Server,
}

/// One `create -o` value: kubectl's output format or Docker's driver option.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutputOrOpt {
    /// `-o yaml|json`.
    Output(Format),
    /// `-o KEY=VALUE`.
    Opt(String),
}

/// `create -o` and the formats objects are printed in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// YAML, like `kubectl get -o yaml`.
    Yaml,
    /// JSON, like `kubectl get -o json`.
    Json,
}

fn parse_output_or_opt(s: &str) -> Result<OutputOrOpt, String> {
    match s {
        "yaml" => Ok(OutputOrOpt::Output(Format::Yaml)),
        "json" => Ok(OutputOrOpt::Output(Format::Json)),
        _ if s.contains('=') => Ok(OutputOrOpt::Opt(s.to_owned())),
        _ => Err("expected yaml, json, or a driver option KEY=VALUE".to_owned()),
    }
}

/// `connect`: Docker's flags, plus where the pod is.
#[derive(Debug, Args)]
pub struct ConnectArgs {
    /// The network.
    #[arg(value_name = "NET")]
    pub network: String,
    /// The pod.
    #[arg(value_name = "POD")]
    pub pod: String,
    /// The pod's namespace (default: the kubeconfig context's).
    #[arg(short = 'n', long)]
    pub namespace: Option<String>,
    /// Ask for this IPv4 address.
    #[arg(long, value_name = "IP")]
    pub ip: Option<String>,
    /// Ask for this IPv6 address (with --ip too, for a dual-stack network).
    #[arg(long, value_name = "IP")]
    pub ip6: Option<String>,
    /// Another name the pod answers to on the network's DNS (repeatable).
    #[arg(long = "alias", value_name = "NAME")]
    pub aliases: Vec<String>,
    /// Interface name inside the pod (bridgenet's; default: the next free netN).
    #[arg(long, value_name = "NAME")]
    pub interface: Option<String>,
    /// How long to wait for the node agent to report the attachment (0 returns once the
    /// annotation is written).
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = parse_duration)]
    pub timeout: Duration,
}

/// `disconnect`.
#[derive(Debug, Args)]
pub struct DisconnectArgs {
    /// The network.
    #[arg(value_name = "NET")]
    pub network: String,
    /// The pod.
    #[arg(value_name = "POD")]
    pub pod: String,
    /// The pod's namespace (default: the kubeconfig context's).
    #[arg(short = 'n', long)]
    pub namespace: Option<String>,
    /// How long to wait for the node agent to report the detachment (0 does not wait).
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = parse_duration)]
    pub timeout: Duration,
}

/// `rm`.
#[derive(Debug, Args)]
pub struct RmArgs {
    /// Network names.
    #[arg(required = true, value_name = "NET")]
    pub networks: Vec<String>,
    /// Docker's: do not error if a network does not exist.
    #[arg(short = 'f', long)]
    pub force: bool,
    /// bridgenet's: remove the network even while pods use it (annotates it
    /// `bridgenet.io/force-delete=true`; the pods lose their interface on it).
    #[arg(long = "force-delete")]
    pub force_delete: bool,
    /// How long to wait for a deletion held by attached pods to show.
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = parse_duration)]
    pub timeout: Duration,
}

/// A Go/kubectl duration (`60s`, `1m30s`, `500ms`, `2h`) or a plain number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let bad = || format!("invalid duration {s:?}: use e.g. 60s, 1m30s, 500ms");
    if let Ok(secs) = s.parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    let mut total = Duration::ZERO;
    let mut rest = s;
    if rest.is_empty() {
        return Err(bad());
    }
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
        let n: u64 = rest[..digits].parse().map_err(|_| bad())?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let part = match &rest[..unit_len] {
            "ms" => Duration::from_millis(n),
            "s" => Duration::from_secs(n),
            "m" => Duration::from_secs(n.saturating_mul(60)),
            "h" => Duration::from_secs(n.saturating_mul(3600)),
            _ => return Err(bad()),
        };
        total = total.saturating_add(part);
        rest = &rest[unit_len..];
    }
    Ok(total)
}

/// When a `--timeout` from now ends; one too large for the clock ends in a century.
pub fn deadline(timeout: Duration) -> tokio::time::Instant {
    let now = tokio::time::Instant::now();
    now.checked_add(timeout)
        .unwrap_or_else(|| now + Duration::from_secs(100 * 365 * 86_400))
}

/// `ls -o`.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LsOutput {
    /// More columns.
    Wide,
    /// The BridgeNetwork list as `kubectl get -o json` prints it.
    Json,
    /// The same list as YAML.
    Yaml,
}

/// `inspect --format`.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum InspectFormat {
    /// A JSON array of Docker-shaped network documents.
    Json,
    /// Settings and one row per attached pod interface.
    Table,
}

/// Shells with completion scripts.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Shell {
    /// Bash.
    Bash,
    /// Zsh.
    Zsh,
    /// Fish.
    Fish,
}

impl clap_complete::Generator for Shell {
    fn file_name(&self, name: &str) -> String {
        clap_complete::Shell::from(*self).file_name(name)
    }

    fn generate(&self, cmd: &clap::Command, buf: &mut dyn std::io::Write) {
        clap_complete::Shell::from(*self).generate(cmd, buf);
    }
}

impl From<Shell> for clap_complete::Shell {
    fn from(s: Shell) -> Self {
        match s {
            Shell::Bash => Self::Bash,
            Shell::Zsh => Self::Zsh,
            Shell::Fish => Self::Fish,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn flags_go_anywhere_after_the_plugin_name() {
        let cli = Cli::try_parse_from([
            "kubectl-bridgenet",
            "--context",
            "kind-a",
            "inspect",
            "web",
            "db",
            "--kubeconfig",
            "/tmp/kc",
            "--format",
            "table",
        ])
        .unwrap();
        assert_eq!(cli.context.as_deref(), Some("kind-a"));
        assert_eq!(cli.kubeconfig.as_deref(), Some("/tmp/kc"));
        match cli.command {
            Command::Inspect { networks, format } => {
                assert_eq!(networks, ["web", "db"]);
                assert!(matches!(format, InspectFormat::Table));
            }
            other => panic!("parsed as {other:?}"),
        }
    }

    #[test]
    fn bad_input_is_refused_with_the_choices() {
        let err = Cli::try_parse_from(["kubectl-bridgenet", "ls", "-o", "xml"]).unwrap_err();
        assert!(err.to_string().contains("wide, json, yaml"), "{err}");
        let err = Cli::try_parse_from(["kubectl-bridgenet", "inspect"]).unwrap_err();
        assert_eq!(err.kind(), clap::error::ErrorKind::MissingRequiredArgument);
        let err = Cli::try_parse_from(["kubectl-bridgenet", "completion", "tcsh"]).unwrap_err();
        assert!(err.to_string().contains("bash, zsh, fish"), "{err}");
        let err =
            Cli::try_parse_from(["kubectl-bridgenet", "create", "n", "-o", "xml"]).unwrap_err();
        assert!(
            err.to_string().contains("yaml, json, or a driver option"),
            "{err}"
        );
        let err = Cli::try_parse_from([
            "kubectl-bridgenet",
            "connect",
            "n",
            "p",
            "--timeout",
            "soon",
        ])
        .unwrap_err();
        assert!(err.to_string().contains("invalid duration"), "{err}");
        let err = Cli::try_parse_from(["kubectl-bridgenet", "rm"]).unwrap_err();
        assert_eq!(err.kind(), clap::error::ErrorKind::MissingRequiredArgument);
    }

    #[test]
    fn create_takes_dockers_o_and_kubectls_o_and_dry_run_forms() {
        let cli = Cli::try_parse_from([
            "kubectl-bridgenet",
            "create",
            "web",
            "--subnet=172.20.0.0/16",
            "-o",
            "com.docker.network.driver.mtu=1400",
            "--dry-run",
            "-o",
            "json",
        ])
        .unwrap();
        let Command::Create(args) = cli.command else {
            panic!("not create");
        };
        assert_eq!(
            args.output,
            [
                OutputOrOpt::Opt("com.docker.network.driver.mtu=1400".into()),
                OutputOrOpt::Output(Format::Json)
            ]
        );
        assert_eq!(args.dry_run, Some(DryRun::Client));
        let cli = Cli::try_parse_from(["kubectl-bridgenet", "create", "web", "--dry-run=server"])
            .unwrap();
        let Command::Create(args) = cli.command else {
            panic!("not create");
        };
        assert_eq!(args.dry_run, Some(DryRun::Server));
        assert_eq!(args.driver, "bridge");
    }

    #[test]
    fn connect_and_rm_flags() {
        let cli = Cli::try_parse_from([
            "kubectl-bridgenet",
            "connect",
            "--alias",
            "db",
            "web",
            "api-0",
            "-n",
            "shop",
            "--alias",
            "sql",
            "--ip",
            "172.20.0.9",
            "--timeout",
            "1m30s",
        ])
        .unwrap();
        let Command::Connect(args) = cli.command else {
            panic!("not connect");
        };
        assert_eq!((args.network.as_str(), args.pod.as_str()), ("web", "api-0"));
        assert_eq!(args.namespace.as_deref(), Some("shop"));
        assert_eq!(args.aliases, ["db", "sql"]);
        assert_eq!(args.timeout, Duration::from_secs(90));
        let cli = Cli::try_parse_from(["kubectl-bridgenet", "remove", "-f", "a", "b"]).unwrap();
        let Command::Rm(args) = cli.command else {
            panic!("not rm");
        };
        assert!(args.force && !args.force_delete);
        assert_eq!(args.networks, ["a", "b"]);
        assert_eq!(args.timeout, Duration::from_secs(5));
    }

    #[test]
    fn a_huge_timeout_does_not_overflow_the_clock() {
        let d = parse_duration("9999999999999999h").unwrap();
        assert!(deadline(d) > tokio::time::Instant::now());
    }

    #[test]
    fn durations_like_kubectls() {
        assert_eq!(parse_duration("60s"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_duration("45"), Ok(Duration::from_secs(45)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        for bad in ["", "s", "10x", "1.5s", "-1s", "m5"] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
    }
}
