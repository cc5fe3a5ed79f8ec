//! Flags and verbs, named like kubectl's global flags and Docker's `network` verbs.

use clap::{Parser, Subcommand, ValueEnum};

/// Docker's `network ls` and `network inspect` for bridgenet's BridgeNetworks.
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
    /// Print a shell completion script.
    Completion {
        /// bash, zsh or fish.
        #[arg(value_enum)]
        shell: Shell,
    },
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
    }
}
