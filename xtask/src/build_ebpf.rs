//! `cargo xtask build-ebpf`: builds the kernel programs.

use std::{path::PathBuf, process::Command};

use anyhow::{Result, bail};

use crate::cmd::{exec, probe, repo_root, step};

/// Options of `build-ebpf`.
#[derive(Debug, clap::Args)]
pub struct Options {
    /// Build with the release profile.
    #[arg(long)]
    pub release: bool,
}

/// Builds the eBPF object and returns its path.
pub fn run(opts: &Options) -> Result<PathBuf> {
    check_prerequisites()?;
    let root = repo_root();
    let profile = if opts.release { "release" } else { "debug" };
    step(
        "build-ebpf",
        format!("building coxswain-ebpf ({profile}) with nightly and bpf-linker"),
    );
    let mut cmd = Command::new("rustup");
    cmd.args([
        "run",
        "nightly",
        "cargo",
        "build",
        "--target",
        "bpfel-unknown-none",
        "-Z",
        "build-std=core",
    ])
    .arg("--manifest-path")
    .arg(root.join("ebpf/programs/Cargo.toml"))
    .arg("--target-dir")
    .arg(root.join("target"))
    // BTF for CO-RE and readable verifier logs.
    .env(
        "CARGO_ENCODED_RUSTFLAGS",
        "-Cdebuginfo=2\x1f-Clink-arg=--btf",
    );
    if opts.release {
        cmd.arg("--release");
    }
    // Variables set by the outer (stable) cargo must not leak into the
    // nightly build.
    for var in [
        "RUSTUP_TOOLCHAIN",
        "RUSTC",
        "RUSTDOC",
        "RUSTC_WRAPPER",
        "RUSTFLAGS",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET",
    ] {
        cmd.env_remove(var);
    }
    exec(&mut cmd)?;
    let object = root
        .join("target/bpfel-unknown-none")
        .join(profile)
        .join("coxswain-ebpf");
    if !object.exists() {
        bail!("the build succeeded but {} is missing", object.display());
    }
    step("build-ebpf", format!("built {}", object.display()));
    Ok(object)
}

fn check_prerequisites() -> Result<()> {
    let mut missing = Vec::new();
    if probe(Command::new("rustc").args(["+nightly", "--version"])).is_none() {
        missing.push("the nightly toolchain");
    } else if !probe(Command::new("rustup").args([
        "component",
        "list",
        "--toolchain",
        "nightly",
        "--installed",
    ]))
    .unwrap_or_default()
    .lines()
    .any(|l| l.starts_with("rust-src"))
    {
        missing.push("rust-src for nightly");
    }
    if probe(Command::new("bpf-linker").arg("--version")).is_none() {
        missing.push("bpf-linker");
    }
    if !missing.is_empty() {
        bail!(
            "cannot build the eBPF object: missing {}; run `cargo xtask setup` (as root)",
            missing.join(", ")
        );
    }
    Ok(())
}
