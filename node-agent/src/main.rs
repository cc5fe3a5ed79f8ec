//! `bridgenet-agent`: the node agent DaemonSet binary. Everything lives in the library; this
//! only parses flags and hands over to [`bridgenet_agent::app::run`].
use clap::Parser;

fn main() -> anyhow::Result<()> {
    let cli = bridgenet_agent::cli::Cli::parse();
    bridgenet_agent::app::main(cli)
}
