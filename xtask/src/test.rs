//! `cargo xtask test`: the whole test suite, as CI runs it.

use std::{process::Command, time::Instant};

use anyhow::{Result, bail};

use crate::{
    build_ebpf,
    cmd::{exec, is_root, repo_root, step},
    setup,
};

/// Options of `test`.
#[derive(Debug, clap::Args)]
pub struct Options {
    /// Extra arguments for `cargo test` (after `--`), e.g. a test name filter.
    #[arg(last = true)]
    pub cargo_args: Vec<String>,
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
    step(
        "test",
        format!("all tests passed in {:.0} s", start.elapsed().as_secs_f64()),
    );
    Ok(())
}
