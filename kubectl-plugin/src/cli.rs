//! Flags and verbs, named like kubectl's global flags and Docker's `network` verbs.

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
}
