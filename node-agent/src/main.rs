//! `bridgenet-agent`: the node agent DaemonSet binary. Everything lives in the library; this
//! only parses flags and hands over to [`bridgenet_agent::app::run`], or runs the one-shot
//! `uninstall-cni` command.
use clap::Parser;

fn main() -> anyhow::Result<()> {
    let mut args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if args.get(1).is_some_and(|a| a == "uninstall-cni") {
        args.remove(1);
        let cmd = bridgenet_agent::cli::UninstallCni::parse_from(args);
        return bridgenet_agent::app::uninstall_cni(&cmd);
    }
    let cli = bridgenet_agent::cli::Cli::parse_from(args);
    bridgenet_agent::app::main(cli)
}
