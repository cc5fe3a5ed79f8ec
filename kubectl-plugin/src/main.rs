//! `kubectl-bridgenet`: Docker's `network ls` and `network inspect` for BridgeNetworks, found
//! by kubectl as the plugin `kubectl bridgenet` when it is on PATH.

mod cli;
mod render;

use std::io::Write;
use std::process::ExitCode;

use bridgenet_crds::{BridgeNetwork, NodeBridge};
use clap::{CommandFactory, Parser};
use kube::api::ListParams;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config};

use cli::{Cli, Command, InspectFormat, LsOutput};

/// What can stop a command; each says which step and which object failed.
#[derive(Debug, thiserror::Error)]
enum Error {
    #[error("cannot read kubeconfig {path}: {source}")]
    ReadKubeconfig {
        path: String,
        source: kube::config::KubeconfigError,
    },
    #[error("cannot load the client configuration: {0}")]
    Config(String),
    #[error("cannot build the Kubernetes client: {0}")]
    Client(#[source] kube::Error),
    #[error("cannot list {what}: {source}")]
    List {
        what: &'static str,
        source: kube::Error,
    },
    #[error("cannot get bridgenetwork {name}: {source}")]
    Get { name: String, source: kube::Error },
    #[error("cannot encode the output: {0}")]
    Encode(String),
    #[error("cannot write the output: {0}")]
    Write(#[from] std::io::Error),
    /// Docker's words for a network that does not exist.
    #[error("No such network: {0}")]
    NoSuchNetwork(String),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("Error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(errors) if errors.is_empty() => ExitCode::SUCCESS,
        Ok(errors) => {
            for e in errors {
                eprintln!("Error: {e}");
            }
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("Error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Runs one command; the returned errors are those that did not stop the others (a missing
/// network among several inspected), printed after the output like Docker does.
async fn run(cli: Cli) -> Result<Vec<Error>, Error> {
    let mut stdout = std::io::stdout().lock();
    match cli.command {
        Command::Completion { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "kubectl-bridgenet", &mut stdout);
            Ok(Vec::new())
        }
        Command::Ls { output } => {
            let client = client(cli.kubeconfig.as_deref(), cli.context.as_deref()).await?;
            let mut nets = Api::<BridgeNetwork>::all(client)
                .list(&ListParams::default())
                .await
                .map_err(|source| Error::List {
                    what: "bridgenetworks",
                    source,
                })?
                .items;
            nets.sort_by_key(kube::ResourceExt::name_any);
            let text = match output {
                None => render::ls_table(&nets, false, now_seconds()),
                Some(LsOutput::Wide) => render::ls_table(&nets, true, now_seconds()),
                Some(LsOutput::Json) => json_text(&render::ls_list(&nets))?,
                Some(LsOutput::Yaml) => serde_yaml::to_string(&render::ls_list(&nets))
                    .map_err(|e| Error::Encode(e.to_string()))?,
            };
            stdout.write_all(text.as_bytes())?;
            Ok(Vec::new())
        }
        Command::Inspect { networks, format } => {
            let client = client(cli.kubeconfig.as_deref(), cli.context.as_deref()).await?;
            let nets_api = Api::<BridgeNetwork>::all(client.clone());
            let mut found = Vec::new();
            let mut missing = Vec::new();
            for name in networks {
                match nets_api.get_opt(&name).await.map_err(|source| Error::Get {
                    name: name.clone(),
                    source,
                })? {
                    Some(net) => found.push(net),
                    None => missing.push(Error::NoSuchNetwork(name)),
                }
            }
            let node_bridges = if found.is_empty() {
                Vec::new()
            } else {
                Api::<NodeBridge>::all(client)
                    .list(&ListParams::default())
                    .await
                    .map_err(|source| Error::List {
                        what: "nodebridges",
                        source,
                    })?
                    .items
            };
            let text = match format {
                InspectFormat::Json => {
                    let docs: Vec<_> = found
                        .iter()
                        .map(|n| render::inspect(n, &node_bridges))
                        .collect();
                    json_text(&serde_json::Value::Array(docs))?
                }
                InspectFormat::Table => found
                    .iter()
                    .map(|n| render::inspect_table(n, &node_bridges))
                    .collect::<Vec<_>>()
                    .join("\n"),
            };
            stdout.write_all(text.as_bytes())?;
            Ok(missing)
        }
    }
}

fn json_text(v: &serde_json::Value) -> Result<String, Error> {
    serde_json::to_string_pretty(v)
        .map(|s| s + "\n")
        .map_err(|e| Error::Encode(e.to_string()))
}

fn now_seconds() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// A client like kubectl's: `--kubeconfig` wins over `KUBECONFIG`, `--context` picks a context;
/// with neither, kube's inference (KUBECONFIG, ~/.kube/config, then in-cluster).
async fn client(kubeconfig: Option<&str>, context: Option<&str>) -> Result<Client, Error> {
    let options = KubeConfigOptions {
        context: context.map(str::to_owned),
        ..KubeConfigOptions::default()
    };
    let config = match (kubeconfig, context) {
        (Some(path), _) => {
            let kc = Kubeconfig::read_from(path).map_err(|source| Error::ReadKubeconfig {
                path: path.to_owned(),
                source,
            })?;
            Config::from_custom_kubeconfig(kc, &options)
                .await
                .map_err(|e| Error::Config(e.to_string()))?
        }
        (None, Some(_)) => Config::from_kubeconfig(&options)
            .await
            .map_err(|e| Error::Config(e.to_string()))?,
        (None, None) => Config::infer()
            .await
            .map_err(|e| Error::Config(e.to_string()))?,
    };
    Client::try_from(config).map_err(Error::Client)
}
