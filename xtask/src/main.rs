//! Coxswain's developer tasks: `cargo xtask <task>`.

mod bench;
mod build_ebpf;
mod cluster;
mod cmd;
mod setup;
mod test;

use anyhow::Result;
use clap::{Parser, Subcommand};

/// Coxswain's developer tasks.
#[derive(Debug, Parser)]
#[command(name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Debug, Subcommand)]
enum Task {
    /// Install everything the project needs (as root, idempotent).
    Setup,
    /// Build the eBPF object with nightly and bpf-linker.
    BuildEbpf(build_ebpf::Options),
    /// Run setup if needed, build the eBPF object, run every test.
    Test(test::Options),
    /// Build everything and start a local cluster: control plane, nodes
    /// (containerd + node agent each), a demo Deployment and Service.
    Up(cluster::UpOptions),
    /// Stop what `up` started and remove what it created.
    Down(cluster::DownOptions),
    /// Run a benchmark (release build), e.g. `cargo xtask bench store`.
    Bench(bench::Options),
}

fn main() -> Result<()> {
    match Cli::parse().task {
        Task::Setup => setup::run(),
        Task::BuildEbpf(opts) => build_ebpf::run(&opts).map(|_| ()),
        Task::Test(opts) => test::run(&opts),
        Task::Up(opts) => cluster::up(&opts),
        Task::Down(opts) => cluster::down(&opts),
        Task::Bench(opts) => bench::run(&opts),
    }
}
