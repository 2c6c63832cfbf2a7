//! `cargo xtask up` / `down`: for now, the node agent with its eBPF programs
//! on a demo veth pair (a network namespace standing in for a pod). This
//! grows into the whole local cluster.
//!
//! Only interfaces created here are touched: never the machine's uplink.

use std::{
    io::{Read, Write},
    net::TcpStream,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

use crate::{
    build_ebpf,
    cmd::{exec, is_root, probe, repo_root, run_quiet, step},
    setup,
};

const NETNS: &str = "coxswain-demo";
const HOST_IFACE: &str = "cox-demo0";
const PEER_IFACE: &str = "demo0";
const HOST_ADDR: &str = "10.250.0.1/30";
const PEER_ADDR: &str = "10.250.0.2/30";
const METRICS_ADDR: &str = "127.0.0.1:10249";
/// The node agent's default bpffs pin directory.
const PIN_DIR: &str = "/sys/fs/bpf/coxswain";

/// Options of `up`.
#[derive(Debug, clap::Args)]
pub struct UpOptions {
    /// Where state, logs and pid files live.
    #[arg(long, default_value = "/var/lib/coxswain")]
    pub data_dir: PathBuf,
}

/// Options of `down`.
#[derive(Debug, clap::Args)]
pub struct DownOptions {
    /// Where state, logs and pid files live.
    #[arg(long, default_value = "/var/lib/coxswain")]
    pub data_dir: PathBuf,
    /// Also delete the data directory.
    #[arg(long)]
    pub purge: bool,
}

fn pid_file(data_dir: &Path) -> PathBuf {
    data_dir.join("node-agent.pid")
}

/// The pid in the pid file, if that process is a running node agent.
fn running_agent(data_dir: &Path) -> Option<u32> {
    let pid: u32 = std::fs::read_to_string(pid_file(data_dir))
        .ok()?
        .trim()
        .parse()
        .ok()?;
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    String::from_utf8_lossy(&cmdline)
        .contains("coxswain-node-agent")
        .then_some(pid)
}

/// Builds everything and starts the node agent on the demo interface.
pub fn up(opts: &UpOptions) -> Result<()> {
    if !is_root() {
        bail!(
            "`cargo xtask up` loads eBPF programs and creates network namespaces: run it as root"
        );
    }
    if let Some(pid) = running_agent(&opts.data_dir) {
        step(
            "up",
            format!("already running (node agent pid {pid}); nothing changed"),
        );
        print_next_steps(&opts.data_dir);
        return Ok(());
    }
    let start = Instant::now();
    if setup::anything_missing() {
        setup::run()?;
    }
    build_ebpf::run(&build_ebpf::Options { release: true })?;
    step("up", "building coxswain-node-agent (release)");
    exec(Command::new(env!("CARGO")).current_dir(repo_root()).args([
        "build",
        "--release",
        "--locked",
        "-p",
        "coxswain-node-agent",
    ]))?;

    step(
        "up",
        format!("creating network namespace {NETNS} and veth {HOST_IFACE} <-> {PEER_IFACE}"),
    );
    create_demo_topology()?;

    std::fs::create_dir_all(&opts.data_dir)
        .with_context(|| format!("failed to create {}", opts.data_dir.display()))?;
    let log_path = opts.data_dir.join("node-agent.log");
    let log = std::fs::File::create(&log_path)
        .with_context(|| format!("failed to create {}", log_path.display()))?;
    let agent = repo_root().join("target/release/coxswain-node-agent");
    step(
        "up",
        format!("starting {} (log: {})", agent.display(), log_path.display()),
    );
    let child = Command::new(&agent)
        .args([
            "--iface",
            HOST_IFACE,
            "--xdp-iface",
            HOST_IFACE,
            "--metrics-addr",
            METRICS_ADDR,
        ])
        .env(
            "COXSWAIN_EBPF_OBJECT",
            repo_root().join("target/bpfel-unknown-none/release/coxswain-ebpf"),
        )
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .with_context(|| format!("failed to start {}", agent.display()))?;
    std::fs::write(pid_file(&opts.data_dir), child.id().to_string())?;
    wait_healthy(&log_path)?;
    step(
        "up",
        format!("node agent ready in {:.0} s", start.elapsed().as_secs_f64()),
    );
    print_next_steps(&opts.data_dir);
    Ok(())
}

fn create_demo_topology() -> Result<()> {
    let exists = probe(Command::new("ip").args(["netns", "list"])).is_some_and(|list| {
        list.lines()
            .any(|l| l.split_whitespace().next() == Some(NETNS))
    });
    if exists {
        return Ok(());
    }
    run_quiet(Command::new("ip").args(["netns", "add", NETNS]))?;
    let steps: &[&[&str]] = &[
        &[
            "link", "add", HOST_IFACE, "type", "veth", "peer", "name", PEER_IFACE, "netns", NETNS,
        ],
        &["addr", "add", HOST_ADDR, "dev", HOST_IFACE],
        &["link", "set", HOST_IFACE, "up"],
        &["-n", NETNS, "addr", "add", PEER_ADDR, "dev", PEER_IFACE],
        &["-n", NETNS, "link", "set", PEER_IFACE, "up"],
        &["-n", NETNS, "link", "set", "lo", "up"],
    ];
    for args in steps {
        run_quiet(Command::new("ip").args(*args))?;
    }
    Ok(())
}

fn wait_healthy(log_path: &Path) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if http_get(METRICS_ADDR, "/healthz").is_ok_and(|body| body.ends_with("ok")) {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let log = std::fs::read_to_string(log_path).unwrap_or_default();
    bail!(
        "the node agent did not become healthy within 30 s; its log ({}):\n{log}",
        log_path.display()
    )
}

/// A minimal HTTP/1.0 GET, enough to probe the agent's health endpoint
/// without pulling an HTTP client into xtask.
fn http_get(addr: &str, path: &str) -> Result<String> {
    let mut stream = TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut body = String::new();
    stream.read_to_string(&mut body)?;
    Ok(body)
}

fn print_next_steps(data_dir: &Path) {
    println!();
    println!("The node agent counts packets on {HOST_IFACE} (tc ingress/egress and XDP).");
    println!("Try:");
    println!(
        "  ip netns exec {NETNS} ping -c 3 {}",
        HOST_ADDR.split('/').next().unwrap_or_default()
    );
    println!("  curl -s http://{METRICS_ADDR}/metrics | grep coxswain_iface");
    println!("  curl -s http://{METRICS_ADDR}/dataplane/counters");
    println!(
        "Logs: {}   Stop: cargo xtask down",
        data_dir.join("node-agent.log").display()
    );
}

/// Stops the agent and removes the demo topology.
pub fn down(opts: &DownOptions) -> Result<()> {
    if !is_root() {
        bail!("`cargo xtask down` removes network namespaces: run it as root");
    }
    if let Some(pid) = running_agent(&opts.data_dir) {
        step("down", format!("stopping the node agent (pid {pid})"));
        let pid = nix::unistd::Pid::from_raw(pid as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline && Path::new(&format!("/proc/{pid}")).exists() {
            std::thread::sleep(Duration::from_millis(50));
        }
        if Path::new(&format!("/proc/{pid}")).exists() {
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
        }
    }
    let _ = std::fs::remove_file(pid_file(&opts.data_dir));
    let exists = probe(Command::new("ip").args(["netns", "list"])).is_some_and(|list| {
        list.lines()
            .any(|l| l.split_whitespace().next() == Some(NETNS))
    });
    if exists {
        step(
            "down",
            format!("deleting network namespace {NETNS} (and veth {HOST_IFACE})"),
        );
        run_quiet(Command::new("ip").args(["netns", "del", NETNS]))?;
    }
    // The host end normally goes with its peer; remove it if it lingers.
    if probe(Command::new("ip").args(["link", "show", HOST_IFACE])).is_some() {
        run_quiet(Command::new("ip").args(["link", "del", HOST_IFACE]))?;
    }
    // Pinned maps and links outlive the agent by design; `down` removes them.
    let pins = Path::new(PIN_DIR);
    if pins.exists() {
        step(
            "down",
            format!("removing pinned maps and links in {PIN_DIR}"),
        );
        std::fs::remove_dir_all(pins).with_context(|| format!("failed to remove {PIN_DIR}"))?;
    }
    if opts.purge && opts.data_dir.exists() {
        step("down", format!("removing {}", opts.data_dir.display()));
        std::fs::remove_dir_all(&opts.data_dir)?;
    }
    step("down", "done");
    Ok(())
}
