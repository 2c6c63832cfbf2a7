//! `cargo xtask test`: the whole test suite, as CI runs it.

use std::{process::Command, time::Instant};

use anyhow::{Result, bail};

use crate::{
    build_ebpf, cluster,
    cmd::{exec, is_root, repo_root, step},
    setup,
};

/// Options of `test`.
#[derive(Debug, clap::Args)]
pub struct Options {
    /// Extra arguments for `cargo test` (after `--`), e.g. a test name filter.
    #[arg(last = true)]
    pub cargo_args: Vec<String>,
    /// Skip the end-to-end phase (clusters brought up with `up`).
    #[arg(long)]
    pub skip_e2e: bool,
}

/// Runs setup when something is missing, builds the eBPF object, then runs
/// every unit and integration test of the workspace.
pub fn run(opts: &Options) -> Result<()> {
    if !is_root() {
        bail!(
            "`cargo xtask test` runs tests in network namespaces and loads eBPF programs: run it as root"
        );
    }
    let start = Instant::now();
    if setup::anything_missing() {
        step("test", "something is missing: running setup first");
        setup::run()?;
    } else {
        step("test", "setup: everything present");
    }
    let object = build_ebpf::run(&build_ebpf::Options { release: true })?;
    // End-to-end tests run the real binaries (node agent, coxctl, control
    // plane), which `cargo test` alone does not build for other packages.
    step("test", "building the workspace binaries");
    exec(Command::new(env!("CARGO")).current_dir(repo_root()).args([
        "build",
        "--workspace",
        "--bins",
        "--locked",
    ]))?;
    step("test", "running the workspace tests");
    let mut cmd = Command::new(env!("CARGO"));
    cmd.current_dir(repo_root())
        .args(["test", "--workspace", "--locked"])
        .env("COXSWAIN_EBPF_OBJECT", &object)
        .env("COXSWAIN_VENV", setup::venv_dir());
    if !opts.cargo_args.is_empty() {
        cmd.arg("--").args(&opts.cargo_args);
    }
    exec(&mut cmd)?;
    if opts.cargo_args.is_empty() && !opts.skip_e2e {
        end_to_end()?;
    }
    step(
        "test",
        format!("all tests passed in {:.0} s", start.elapsed().as_secs_f64()),
    );
    Ok(())
}

/// The end-to-end phase: a 3-node and a 1-node cluster from `up` (instance
/// 1, beside any cluster of the user's), the `e2e` tests against each, and
/// `down`, which fails if anything is left behind.
fn end_to_end() -> Result<()> {
    let runs: [(u8, &[&str]); 2] = [(3, &[]), (1, &["docs_examples", "scaling"])];
    for (nodes, filters) in runs {
        let data_dir = std::env::temp_dir().join(format!("coxswain-e2e-{nodes}"));
        step("test", format!("end to end: a {nodes}-node cluster in {}", data_dir.display()));
        let up = cluster::UpOptions {
            nodes,
            data_dir: data_dir.clone(),
            proxy_mode: cluster::ProxyMode::Ebpf,
            etcd: false,
            debug: true,
            no_build: true,
            no_demo: false,
            node_monitor_grace_period: "20s".into(),
            instance: 1,
        };
        let down = cluster::DownOptions { data_dir: data_dir.clone(), purge: true };
        let tested = cluster::up(&up).and_then(|()| {
            let mut cmd = Command::new(env!("CARGO"));
            cmd.current_dir(repo_root())
                .args(["test", "--locked", "-p", "coxswain-tests", "--test", "e2e", "--", "--ignored", "--test-threads=1"])
                .args(filters)
                .env("COXSWAIN_E2E_DATA_DIR", &data_dir)
                .env("COXSWAIN_VENV", setup::venv_dir());
            exec(&mut cmd)
        });
        if tested.is_err() {
            let logs = data_dir.join("logs");
            step("test", format!("end-to-end failure; the cluster's logs follow ({})", logs.display()));
            for entry in std::fs::read_dir(&logs).into_iter().flatten().flatten() {
                let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
                let lines: Vec<&str> = text.lines().collect();
                println!("--- {} (last 40 lines)", entry.path().display());
                for line in &lines[lines.len().saturating_sub(40)..] {
                    println!("{line}");
                }
            }
        }
        let cleaned = cluster::down(&down);
        tested?;
        cleaned?;
    }
    Ok(())
}
