//! `bridgenet-operator`: see the library crate for what it does.
#![forbid(unsafe_code)]

use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    bridgenet_operator::run(bridgenet_operator::Cli::parse()).await?;
    Ok(())
}
