//! `coxctl`: Coxswain's command line. Today it shows what only Coxswain can
//! show: the eBPF dataplane's Services, backends, flows and counters, read
//! from a node agent's `/dataplane/*` endpoints.

mod dataplane;
mod image;

use anyhow::Result;
use clap::{Parser, Subcommand};

/// Coxswain's command line.
#[derive(Debug, Parser)]
#[command(name = "coxctl", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// What a node's eBPF dataplane holds (Services, backends, flows,
    /// counters).
    Dataplane(dataplane::Args),
    /// Image archives: build one from busybox, import one into a node.
    Image(image::Args),
    /// Prints a shell completion script.
    Completion {
        /// The shell.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Dataplane(args) => dataplane::run(&args),
        Command::Image(args) => image::run(&args),
        Command::Completion { shell } => {
            use clap::CommandFactory;
            clap_complete::generate(shell, &mut Cli::command(), "coxctl", &mut std::io::stdout());
            Ok(())
        }
    }
}
