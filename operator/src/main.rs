//! `bridgenet-operator`: see the library crate for what it does.
#![forbid(unsafe_code)]

use std::process::ExitCode;

use bridgenet_operator::{Cli, Command};
use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<ExitCode> {
    let mut cli = Cli::parse();
    match cli.command.take() {
        // A check, not a service: its verdict is the exit status (and a line per check).
        Some(Command::SelfTest(args)) => {
            let passed = bridgenet_operator::selftest::run(args).await?;
            Ok(if passed {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        None => {
            bridgenet_operator::run(cli).await?;
            Ok(ExitCode::SUCCESS)
        }
    }
}
