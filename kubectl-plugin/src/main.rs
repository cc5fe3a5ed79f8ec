//! `kubectl-bridgenet`: Docker's `network` verbs for BridgeNetworks, found by kubectl as the
//! plugin `kubectl bridgenet` when it is on PATH.

mod annotation;
mod attach;
mod cli;
mod cluster;
mod create;
mod error;
mod remove;
mod render;

use std::io::Write;
use std::process::ExitCode;

use clap::{CommandFactory, Parser};

use cli::{Cli, Command, DryRun, Format, InspectFormat, LsOutput};
use error::Error;

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
    let errors = match runtime.block_on(run(cli)) {
        Ok(errors) => errors,
        Err(e) => vec![e],
    };
    for e in &errors {
        eprintln!("{}", e.user_message());
    }
    if errors.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// Runs one command; the returned errors are those that did not stop the others (a missing
/// network among several inspected), printed after the output like Docker does.
async fn run(cli: Cli) -> Result<Vec<Error>, Error> {
    let mut stdout = std::io::stdout().lock();
    let connect = || cluster::client(cli.kubeconfig.as_deref(), cli.context.as_deref());
    let (text, errors) = match cli.command {
        Command::Completion { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "kubectl-bridgenet", &mut stdout);
            return Ok(Vec::new());
        }
        Command::Ls { output } => {
            let nets = cluster::networks(connect().await?).await?;
            let text = match output {
                None => render::ls_table(&nets, false, now_seconds()),
                Some(LsOutput::Wide) => render::ls_table(&nets, true, now_seconds()),
                Some(LsOutput::Json) => {
                    serde_json::to_string_pretty(&render::ls_list(&nets))? + "\n"
                }
                Some(LsOutput::Yaml) => serde_yaml::to_string(&render::ls_list(&nets))?,
            };
            (text, Vec::new())
        }
        Command::Inspect { networks, format } => {
            let client = connect().await?;
            let (found, missing) = cluster::named_networks(client.clone(), networks).await?;
            let node_bridges = if found.is_empty() {
                Vec::new()
            } else {
                cluster::node_bridges(client).await?
            };
            let text = match format {
                InspectFormat::Json => {
                    let docs = found.iter().map(|n| render::inspect(n, &node_bridges));
                    serde_json::to_string_pretty(&docs.collect::<Vec<_>>())? + "\n"
                }
                InspectFormat::Table => found
                    .iter()
                    .map(|n| render::inspect_table(n, &node_bridges))
                    .collect::<Vec<_>>()
                    .join("\n"),
            };
            (text, missing)
        }
        Command::Create(args) => {
            let net = create::network(&args)?;
            let format = create::output(&args)?;
            let text = match args.dry_run {
                Some(DryRun::Client) => print_object(&net, format.unwrap_or(Format::Yaml))?,
                Some(DryRun::Server) => {
                    let checked = cluster::create(connect().await?, &net, true).await?;
                    print_object(&checked, format.unwrap_or(Format::Yaml))?
                }
                None => {
                    let created = cluster::create(connect().await?, &net, false).await?;
                    match format {
                        Some(f) => print_object(&created, f)?,
                        // Docker prints the new network's id; the uid is ours.
                        None => created.metadata.uid.unwrap_or_default() + "\n",
                    }
                }
            };
            (text, Vec::new())
        }
        Command::Connect(args) => (attach::connect(connect().await?, args).await?, Vec::new()),
        Command::Disconnect(args) => (
            attach::disconnect(connect().await?, args).await?,
            Vec::new(),
        ),
        Command::Rm(args) => {
            let removal = remove::rm(connect().await?, args).await;
            for note in &removal.notes {
                eprintln!("Warning: {note}");
            }
            (removal.stdout, removal.errors)
        }
    };
    stdout.write_all(text.as_bytes())?;
    Ok(errors)
}

/// One object as `kubectl get -o yaml|json` prints it.
fn print_object<T: serde::Serialize>(obj: &T, format: Format) -> Result<String, Error> {
    Ok(match format {
        Format::Yaml => serde_yaml::to_string(obj)?,
        Format::Json => serde_json::to_string_pretty(obj)? + "\n",
    })
}

fn now_seconds() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}
