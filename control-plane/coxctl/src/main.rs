//! `coxctl`: Coxswain's command line. The everyday cluster workflow against any Kubernetes
//! API server (get, describe, apply, delete, scale, rollout, logs, exec, cluster status),
//! and what only Coxswain can show: the eBPF dataplane's Services, backends, flows and
//! counters, read from a node agent's `/dataplane/*` endpoints.

mod apply;
mod client;
mod cluster;
mod dataplane;
mod delete;
mod describe;
mod get;
mod image;
mod manifest;
mod output;
mod podio;
mod resources;
mod rollout;
mod scale;
mod token;

use std::io::Write;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

/// Coxswain's command line.
#[derive(Debug, Parser)]
#[command(name = "coxctl", version, about)]
struct Cli {
    #[command(flatten)]
    cluster: client::ClusterArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    #[command(flatten)]
    Workflow(WorkflowCommand),
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

/// The commands that talk to an API server.
#[derive(Debug, Subcommand)]
enum WorkflowCommand {
    /// Lists objects (the server's columns), or prints them as YAML, JSON or names.
    Get(get::Args),
    /// Shows objects in readable form, with their Events.
    Describe(describe::Args),
    /// Creates or updates objects from manifests (server-side apply).
    Apply(apply::Args),
    /// Deletes objects by type and name, selector, or manifest.
    Delete(delete::Args),
    /// Sets the number of replicas (scale subresource).
    Scale(scale::Args),
    /// Watches, lists or undoes Deployment rollouts.
    Rollout(rollout::Args),
    /// Prints a container's logs.
    Logs(podio::LogsArgs),
    /// Runs a command in a container; exits with the command's exit code.
    Exec(podio::ExecArgs),
    /// The control plane's health and leaders, and the nodes.
    Cluster(cluster::Args),
    /// Bootstrap tokens for joining nodes (create prints the join command).
    Token(token::Args),
}

/// Runs a command that talks to the API server; its result is the exit status.
async fn run_workflow(cluster: &client::ClusterArgs, command: &WorkflowCommand) -> Result<i32> {
    let conn = client::connect(cluster).await?;
    match command {
        WorkflowCommand::Get(args) => get::run(&conn, args).await,
        WorkflowCommand::Describe(args) => describe::run(&conn, args).await,
        WorkflowCommand::Apply(args) => apply::run(&conn, args).await,
        WorkflowCommand::Delete(args) => delete::run(&conn, args).await,
        WorkflowCommand::Scale(args) => scale::run(&conn, args).await,
        WorkflowCommand::Rollout(args) => rollout::run(&conn, args).await,
        WorkflowCommand::Logs(args) => podio::logs(&conn, args).await,
        WorkflowCommand::Exec(args) => podio::exec(&conn, args).await,
        WorkflowCommand::Cluster(args) => cluster::run(&conn, args).await,
        WorkflowCommand::Token(args) => token::run(&conn, args).await,
    }
}

fn run(cli: Cli) -> Result<i32> {
    match &cli.command {
        Command::Dataplane(args) => dataplane::run(args).map(|()| 0),
        Command::Image(args) => image::run(args).map(|()| 0),
        Command::Completion { shell } => {
            use clap::CommandFactory;
            clap_complete::generate(
                *shell,
                &mut Cli::command(),
                "coxctl",
                &mut std::io::stdout(),
            );
            Ok(0)
        }
        Command::Workflow(command) => {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("failed to start the async runtime")?;
            let code = runtime.block_on(run_workflow(&cli.cluster, command));
            // `exec -i` may leave a blocking stdin read behind; do not wait for it.
            runtime.shutdown_background();
            code
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let code = match run(cli) {
        Ok(code) => code,
        Err(e) => {
            let text = format!("{e:#}");
            if text.starts_with("Error from server") {
                eprintln!("{text}");
            } else {
                eprintln!("error: {text}");
            }
            1
        }
    };
    let _ = std::io::stdout().flush();
    ExitCode::from(u8::try_from(code.clamp(0, 255)).unwrap_or(1))
}
