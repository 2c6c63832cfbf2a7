//! `cargo xtask bench <what>`: benchmarks that print figures and ratios
//! measured side by side in one run.

use std::process::Command;

use anyhow::Result;

use crate::cmd::{exec, repo_root, step};

/// What to measure.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum Target {
    /// The store: embedded (redb) and etcd side by side.
    Store,
    /// The service proxy's sync engine: programming N Services, one
    /// endpoint change at 10,000 Services (in memory).
    ProxySync,
}

/// Options of `bench`.
#[derive(Debug, clap::Args)]
pub struct Options {
    /// The benchmark.
    #[arg(value_enum)]
    pub target: Target,
    /// A short run.
    #[arg(long)]
    pub quick: bool,
}

/// Runs one benchmark (release build).
pub fn run(opts: &Options) -> Result<()> {
    let (package, bench) = match opts.target {
        Target::Store => ("coxswain-store", "store"),
        Target::ProxySync => ("coxswain-proxy", "sync"),
    };
    step(
        "bench",
        format!(
            "{package} --bench {bench}{}",
            if opts.quick { " (quick)" } else { "" }
        ),
    );
    let mut cmd = Command::new(env!("CARGO"));
    cmd.current_dir(repo_root())
        .args(["bench", "--locked", "-p", package, "--bench", bench, "--"]);
    if opts.quick {
        cmd.arg("--quick");
    }
    exec(&mut cmd)
}
