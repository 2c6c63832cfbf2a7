//! Running external commands with progress and clear errors.

use std::{
    path::PathBuf,
    process::{Command, Stdio},
    time::Instant,
};

use anyhow::{Context, Result, bail};

/// The repository root (the parent of `xtask/`).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the repository")
        .to_owned()
}

/// Where setup keeps tools that live outside the repository (the LLVM
/// prefix for bpf-linker, the Python virtual environment).
pub fn tools_dir() -> PathBuf {
    std::env::var_os("COXSWAIN_TOOLS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/opt/coxswain"))
}

/// Prints a progress line for a step.
pub fn step(name: &str, msg: impl std::fmt::Display) {
    println!("==> [{name}] {msg}");
}

/// Runs a command, streaming its output, and fails with the command line if
/// it does not succeed.
pub fn exec(cmd: &mut Command) -> Result<()> {
    let line = describe(cmd);
    let start = Instant::now();
    let status = cmd
        .stdin(Stdio::null())
        .status()
        .with_context(|| format!("failed to start `{line}`"))?;
    if !status.success() {
        bail!("`{line}` failed ({status})");
    }
    tracing_line(&line, start);
    Ok(())
}

/// Runs a command and returns its stdout, or `None` when it fails to run or
/// exits non-zero. For probes ("is X installed?").
pub fn probe(cmd: &mut Command) -> Option<String> {
    let out = cmd
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs a command quietly; on failure, shows its output.
pub fn run_quiet(cmd: &mut Command) -> Result<String> {
    let line = describe(cmd);
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("failed to start `{line}`"))?;
    if !out.status.success() {
        bail!(
            "`{line}` failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn describe(cmd: &Command) -> String {
    std::iter::once(cmd.get_program().to_string_lossy().into_owned())
        .chain(cmd.get_args().map(|a| a.to_string_lossy().into_owned()))
        .collect::<Vec<_>>()
        .join(" ")
}

fn tracing_line(line: &str, start: Instant) {
    let secs = start.elapsed().as_secs_f64();
    if secs > 5.0 {
        println!("    `{line}` took {secs:.1} s");
    }
}

/// True when running as root.
pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}
