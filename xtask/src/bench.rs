//! `cargo xtask bench <what>`: benchmarks that print figures and ratios
//! measured side by side in one run.

use std::process::Command;

use anyhow::{Result, bail};

use crate::{
    build_ebpf,
    cmd::{exec, is_root, repo_root, step},
};

/// What to measure.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum Target {
    /// The store: embedded (redb) and etcd side by side.
    Store,
    /// The API server through HTTPS with a client certificate: create, get,
    /// update, list and watch throughput with p50/p99 latencies, on the
    /// embedded store and on etcd side by side, and 1,000 watchers each
    /// receiving every event.
    Api,
    /// The service proxy's sync engine: programming N Services, one
    /// endpoint change at 10,000 Services (in memory).
    ProxySync,
    /// Service load balancing with real packets: eBPF, kube-proxy's
    /// iptables and nftables modes and no translation, side by side for 1
    /// to 10,000 Services (root; writes target/bench/services.{json,png}).
    Services,
    /// The scheduler: 10,000 pods into 100, 1,000 and 5,000 simulated
    /// nodes in an in-process API server (pods/s, creation-to-bound p50/p99).
    Scheduler,
    /// Pods on a real node (containerd, runc, CNI): creation to
    /// Running-and-Ready through a watch, sequential and 30 at once, and
    /// deletion time, with the kubelet's per-step and per-CRI-call breakdown,
    /// CPU per component, and the runtime alone over CRI as the floor (root;
    /// writes target/bench/pods.json).
    Pods,
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
        Target::Api => ("coxswain-apiserver", "api"),
        Target::ProxySync => ("coxswain-proxy", "sync"),
        Target::Services => return services(opts.quick),
        Target::Scheduler => return scheduler(opts.quick),
        Target::Pods => return pods(opts.quick),
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

/// `bench services`: builds the eBPF object, then runs `bench-services`
/// (tests/bench) as root with the object's path.
fn services(quick: bool) -> Result<()> {
    if !is_root() {
        bail!(
            "`cargo xtask bench services` creates network namespaces and loads eBPF programs: run it as root"
        );
    }
    let object = build_ebpf::run(&build_ebpf::Options { release: true })?;
    step(
        "bench",
        format!(
            "coxswain-bench --bin bench-services{}",
            if quick { " (quick)" } else { "" }
        ),
    );
    let mut cmd = Command::new(env!("CARGO"));
    cmd.current_dir(repo_root())
        .args([
            "run",
            "--release",
            "--locked",
            "-p",
            "coxswain-bench",
            "--bin",
            "bench-services",
            "--",
        ])
        .env("COXSWAIN_EBPF_OBJECT", &object);
    if quick {
        cmd.arg("--quick");
    }
    exec(&mut cmd)
}

/// `bench scheduler`: runs `bench-scheduler` (tests/bench) in release mode.
fn scheduler(quick: bool) -> Result<()> {
    step(
        "bench",
        format!(
            "coxswain-bench --bin bench-scheduler{}",
            if quick { " (quick)" } else { "" }
        ),
    );
    let mut cmd = Command::new(env!("CARGO"));
    cmd.current_dir(repo_root()).args([
        "run",
        "--release",
        "--locked",
        "-p",
        "coxswain-bench",
        "--bin",
        "bench-scheduler",
        "--",
    ]);
    if quick {
        cmd.arg("--quick");
    }
    exec(&mut cmd)
}

/// `bench pods`: builds the control plane, the node agent and `bench-pods`
/// in release mode, then runs it as root.
fn pods(quick: bool) -> Result<()> {
    if !is_root() {
        bail!("`cargo xtask bench pods` runs containerd and creates network namespaces: run it as root");
    }
    step("bench", "build coxswain-control-plane and coxswain-node-agent (release)");
    exec(Command::new(env!("CARGO")).current_dir(repo_root()).args([
        "build",
        "--release",
        "--locked",
        "-p",
        "coxswain-control-plane",
        "-p",
        "coxswain-node-agent",
    ]))?;
    step(
        "bench",
        format!("coxswain-bench --bin bench-pods{}", if quick { " (quick)" } else { "" }),
    );
    let mut cmd = Command::new(env!("CARGO"));
    cmd.current_dir(repo_root()).args([
        "run",
        "--release",
        "--locked",
        "-p",
        "coxswain-bench",
        "--bin",
        "bench-pods",
        "--",
    ]);
    if quick {
        cmd.arg("--quick");
    }
    exec(&mut cmd)
}
