//! `bench-services` (`cargo xtask bench services`): Service load balancing
//! in eBPF against kube-proxy's iptables and nftables modes and against no
//! translation at all, side by side in one run, for 1 to 10,000 Services
//! of 10 endpoints each:
//!
//! - new TCP connections per second (connect, one request, reply, close),
//!   from 64 source addresses per mode to random Services, in rounds with
//!   the modes interleaved; the median round is reported;
//! - request latency (p50, p99) on kept-alive connections;
//! - the time to program every Service from scratch;
//! - the time for one endpoint change to reach the packet path (p50, p99).
//!
//! Prints a table with ratios, writes `services.json` and `services.png` to
//! `target/bench/` (or `--out-dir`). Needs root (namespaces, eBPF) and the
//! eBPF object (`$COXSWAIN_EBPF_OBJECT`, as `cargo xtask bench services`
//! sets it). All traffic stays inside namespaces this run creates (see
//! `topology`); every load loop is bounded in time and count.

mod client;
mod modes;
mod objects;
mod report;
mod server;
mod topology;
mod wire;

use std::{
    collections::BTreeMap,
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use coxswain_dataplane::locate_object;
use coxswain_tests::{baseline, netns::PinDir};

use crate::{
    client::{Client, RateBounds, Targets, connection_rate, probe_until, request_latency},
    modes::ModeNode,
    report::{AtSize, ChangeResult, LatencyResult, ModeResult, RateResult, Report},
    server::Server,
    topology::{CHANGE_TARGETS, MODES, Mode, SERVICE_PORT, TARGET_PORT, Topology, change_target},
    wire::Rng,
};

/// How long and how hard to measure.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Settings {
    /// `--quick`.
    pub quick: bool,
    /// Service counts.
    pub sizes: Vec<usize>,
    /// Connection-rate rounds per size (each runs every mode once).
    pub rounds: usize,
    /// Length of one mode's turn in a round.
    pub round_duration: Duration,
    /// Connections in flight.
    pub concurrency: usize,
    /// Bound of one turn's connections.
    pub max_connections: u64,
    /// Latency rounds per size.
    pub latency_rounds: usize,
    /// Length of one mode's latency turn.
    pub latency_duration: Duration,
    /// Kept-alive connections in a latency turn.
    pub latency_connections: usize,
    /// Time budget of one mode's endpoint changes at one size (at least
    /// [`Settings::min_changes`] run anyway).
    pub change_budget: Duration,
    /// At least this many endpoint changes.
    pub min_changes: usize,
    /// At most this many endpoint changes (eBPF, and the baselines).
    pub max_changes: (usize, usize),
    /// A mode whose programming command (`iptables-restore`, `nft -f`)
    /// runs longer than this at a size is killed and reported skipped
    /// there.
    pub program_budget: Duration,
    /// Client and server runtime threads.
    pub workers: usize,
    /// CPUs the client's and the server's threads are pinned to.
    pub pin: Option<(usize, usize)>,
    /// The modes measured.
    pub modes: Vec<Mode>,
}

impl Settings {
    fn new(quick: bool) -> Self {
        let program_budget = Duration::from_secs(60);
        if quick {
            Settings {
                quick,
                sizes: vec![1, 100, 1_000],
                rounds: 5,
                round_duration: Duration::from_millis(600),
                concurrency: 32,
                max_connections: 100_000,
                latency_rounds: 2,
                latency_duration: Duration::from_millis(500),
                latency_connections: 4,
                change_budget: Duration::from_secs(3),
                min_changes: 3,
                max_changes: (100, 20),
                program_budget,
                workers: 2,
                pin: None,
                modes: MODES.to_vec(),
            }
        } else {
            Settings {
                quick,
                sizes: vec![1, 100, 1_000, 10_000],
                rounds: 10,
                round_duration: Duration::from_millis(1_000),
                concurrency: 32,
                max_connections: 200_000,
                latency_rounds: 3,
                latency_duration: Duration::from_millis(1_000),
                latency_connections: 4,
                change_budget: Duration::from_secs(20),
                min_changes: 3,
                max_changes: (300, 40),
                program_budget,
                workers: 2,
                pin: None,
                modes: MODES.to_vec(),
            }
        }
    }

    /// Applies one command-line override.
    fn set(&mut self, flag: &str, value: &str) -> Result<()> {
        match flag {
            "--program-budget-s" => self.program_budget = Duration::from_secs(value.parse()?),
            "--sizes" => {
                self.sizes = value
                    .split(',')
                    .map(|n| n.trim().replace('_', "").parse())
                    .collect::<Result<_, _>>()?
            }
            "--rounds" => self.rounds = value.parse()?,
            "--round-ms" => self.round_duration = Duration::from_millis(value.parse()?),
            "--concurrency" => self.concurrency = value.parse()?,
            "--workers" => self.workers = value.parse()?,
            "--modes" => {
                self.modes = value
                    .split(',')
                    .map(|m| {
                        MODES
                            .into_iter()
                            .find(|mode| mode.as_str() == m.trim())
                            .with_context(|| format!("unknown mode {m:?}"))
                    })
                    .collect::<Result<_>>()?
            }
            "--pin" => {
                let (client, server) = value.split_once(',').context("CLIENT_CPU,SERVER_CPU")?;
                self.pin = Some((client.parse()?, server.parse()?));
            }
            _ => bail!("unknown setting"),
        }
        Ok(())
    }
}

const USAGE: &str = "bench-services [--quick] [--out-dir DIR] [--program-budget-s SECONDS]
               [--sizes N,N,..] [--rounds N] [--round-ms MS] [--concurrency N]
               [--workers N] [--pin CLIENT_CPU,SERVER_CPU] [--modes direct,ebpf,..]
Needs root and the eBPF object ($COXSWAIN_EBPF_OBJECT); `cargo xtask bench services` sets both up.";

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let mut out_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/bench");
    let mut overrides: Vec<(String, String)> = Vec::new();
    let mut quick = false;
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--quick" => quick = true,
            // `cargo bench` passes this to harness = false targets.
            "--bench" => {}
            "-h" | "--help" => {
                println!("{USAGE}");
                return Ok(());
            }
            "--out-dir" => out_dir = args.next().context("--out-dir needs a path")?.into(),
            "--program-budget-s" | "--sizes" | "--rounds" | "--round-ms" | "--concurrency"
            | "--workers" | "--pin" | "--modes" => {
                let value = args
                    .next()
                    .with_context(|| format!("{arg} needs a value"))?;
                overrides.push((arg, value));
            }
            other => bail!("unknown argument {other:?}\n{USAGE}"),
        }
    }
    let mut settings = Settings::new(quick);
    for (flag, value) in overrides {
        settings
            .set(&flag, &value)
            .with_context(|| format!("bad value {value:?} for {flag}"))?;
    }
    if !nix::unistd::geteuid().is_root() {
        bail!(
            "bench-services needs root (network namespaces, eBPF): run it with `cargo xtask bench services` as root"
        );
    }
    let mut report = run(&settings)?;
    report.judge();
    report.print();
    std::fs::create_dir_all(&out_dir)
        .with_context(|| format!("failed to create {}", out_dir.display()))?;
    let out_dir = out_dir.canonicalize().unwrap_or(out_dir);
    let json = out_dir.join("services.json");
    std::fs::write(&json, serde_json::to_string_pretty(&report)?)
        .with_context(|| format!("failed to write {}", json.display()))?;
    println!("wrote {}", json.display());
    let png = out_dir.join("services.png");
    match report.plot(&png) {
        Ok(()) => println!("wrote {}", png.display()),
        Err(e) => println!("no plot: {e:#}"),
    }
    Ok(())
}

/// Prints a progress line with the run's elapsed time.
fn progress(start: Instant, msg: impl std::fmt::Display) {
    println!("[{:>6.1}s] {msg}", start.elapsed().as_secs_f64());
}

/// Everything the run holds; fields drop in order: the load generator and
/// servers first, the nodes (detaching the eBPF program) next, the pins,
/// then the namespaces.
struct Bench {
    client: Client,
    _server: Server,
    nodes: BTreeMap<Mode, ModeNode>,
    _pins: PinDir,
    topo: Topology,
}

fn run(settings: &Settings) -> Result<Report> {
    let start = Instant::now();
    let object = locate_object(None).context("the eBPF object (run `cargo xtask build-ebpf --release`, or use `cargo xtask bench services`)")?;
    progress(start, format!("eBPF object {}", object.display()));
    let topo = Topology::create()?;
    let pins = PinDir::new();
    let mut nodes = BTreeMap::new();
    for mode in MODES {
        nodes.insert(mode, ModeNode::new(mode, topo.node(mode), &object, &pins)?);
    }
    let server = Server::start(
        topo.backend.name(),
        TARGET_PORT,
        settings.workers,
        settings.pin.map(|p| p.1),
    )?;
    let client = Client::start(
        topo.client.name(),
        settings.workers,
        settings.pin.map(|p| p.0),
    )?;
    let mut bench = Bench {
        client,
        _server: server,
        nodes,
        _pins: pins,
        topo,
    };
    progress(
        start,
        format!(
            "topology up: client, backend and one node per mode ({})",
            MODES.map(Mode::as_str).join(", ")
        ),
    );
    let mut report = Report::new(settings);
    for &n in &settings.sizes {
        let at = bench.measure(n, settings, start)?;
        report.sizes.push(at);
    }
    report.duration_s = start.elapsed().as_secs_f64();
    progress(start, "done");
    Ok(report)
}

impl Bench {
    fn measure(&mut self, n: usize, settings: &Settings, start: Instant) -> Result<AtSize> {
        let load_average = std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ");
        progress(
            start,
            format!("== {n} Services, 10 endpoints each (load average {load_average}) =="),
        );
        let mut results: BTreeMap<Mode, ModeResult> = BTreeMap::new();
        let mut active = Vec::new();
        for &mode in &settings.modes {
            let mut result = ModeResult::default();
            let node = self.nodes.get_mut(&mode).expect("every mode has a node");
            let programmed = match node.program(self.topo.node(mode), n, settings.program_budget) {
                Ok(programmed) => programmed,
                Err(e) if e.downcast_ref::<baseline::TimedOut>().is_some() => {
                    let why = format!(
                        "skipped (over time budget): programming {n} Services took over {} s",
                        settings.program_budget.as_secs()
                    );
                    progress(start, format!("  {}: {why}", mode.as_str()));
                    result.skipped = Some(why);
                    results.insert(mode, result);
                    continue;
                }
                Err(e) => {
                    return Err(e.context(format!(
                        "failed to program {n} Services in {} mode",
                        mode.as_str()
                    )));
                }
            };
            if mode != Mode::Direct {
                result.program_ms = Some(programmed.elapsed.as_secs_f64() * 1e3);
                result.program_size = Some(programmed.size);
                progress(
                    start,
                    format!(
                        "  {}: programmed in {:.1} ms ({} {})",
                        mode.as_str(),
                        programmed.elapsed.as_secs_f64() * 1e3,
                        programmed.size,
                        match mode {
                            Mode::Ebpf => "map operations",
                            Mode::Iptables => "rules",
                            _ => "script lines",
                        }
                    ),
                );
            }
            active.push(mode);
            results.insert(mode, result);
        }
        let targets: BTreeMap<Mode, Arc<Targets>> = active
            .iter()
            .map(|&m| (m, Arc::new(self.nodes[&m].targets())))
            .collect();

        // Every mode answers, from one of the Service's endpoints.
        for &mode in &active {
            let warm = RateBounds {
                concurrency: 8,
                duration: Duration::from_millis(300),
                max_connections: 20_000,
            };
            let sample = self
                .client
                .run(connection_rate(targets[&mode].clone(), warm, 1));
            if sample.errors > 0 {
                progress(
                    start,
                    format!(
                        "  {}: warm-up: {} of {} connections failed (first: {})",
                        mode.as_str(),
                        sample.errors,
                        sample.completed + sample.errors,
                        sample.first_error.as_deref().unwrap_or("-")
                    ),
                );
            }
            if sample.completed == 0 || sample.errors * 2 > sample.completed {
                bail!(
                    "{} mode at {n} Services does not answer: {} completed, {} errors (first: {})",
                    mode.as_str(),
                    sample.completed,
                    sample.errors,
                    sample.first_error.as_deref().unwrap_or("-")
                );
            }
        }

        // New connections per second, modes interleaved, rotating order.
        let bounds = RateBounds {
            concurrency: settings.concurrency,
            duration: settings.round_duration,
            max_connections: settings.max_connections,
        };
        for round in 0..settings.rounds {
            let mut line = format!("  rate round {}/{}:", round + 1, settings.rounds);
            for k in 0..active.len() {
                let mode = active[(round + k) % active.len()];
                let seed = (n * 1_000 + round * 10 + k) as u64;
                let sample = self
                    .client
                    .run(connection_rate(targets[&mode].clone(), bounds, seed));
                line.push_str(&format!(
                    " {} {:.0}/s{}",
                    mode.as_str(),
                    sample.rate(),
                    if sample.errors > 0 {
                        format!(" ({} errors)", sample.errors)
                    } else {
                        String::new()
                    }
                ));
                let result = results.get_mut(&mode).expect("active");
                let rate = result.rate.get_or_insert_with(RateResult::default);
                rate.rounds.push(sample.rate());
                rate.connections += sample.completed;
                rate.errors += sample.errors;
                if rate.first_error.is_none() {
                    rate.first_error = sample.first_error;
                }
            }
            progress(start, line);
        }

        // Conntrack entries the baselines' nodes hold (TIME_WAIT lasts
        // 120 s there; a full table would drop new flows).
        let mut line = String::from("  conntrack entries:");
        for &mode in active
            .iter()
            .filter(|m| matches!(m, Mode::Iptables | Mode::Nftables))
        {
            let count = self.topo.node(mode).run_in(|| {
                Ok(std::fs::read_to_string(
                    "/proc/sys/net/netfilter/nf_conntrack_count",
                )?)
            });
            line.push_str(&format!(
                " {} {}",
                mode.as_str(),
                count.map_or("?".to_owned(), |c| c.trim().to_owned())
            ));
        }
        progress(start, line);

        // Latency on kept-alive connections.
        for round in 0..settings.latency_rounds {
            for k in 0..active.len() {
                let mode = active[(round + k) % active.len()];
                let (samples, errors) = self.client.run(request_latency(
                    targets[&mode].clone(),
                    settings.latency_connections,
                    settings.latency_duration,
                    1_000_000,
                    (n * 7 + round * 3 + k) as u64,
                ));
                let result = results.get_mut(&mode).expect("active");
                let latency = result.latency.get_or_insert_with(LatencyResult::default);
                latency.add_round(samples, errors);
            }
        }
        let mut line = String::from("  latency p50/p99 (µs):");
        for &mode in &active {
            if let Some(l) = &results[&mode].latency {
                line.push_str(&format!(" {} {}/{}", mode.as_str(), l.p50_us, l.p99_us));
            }
        }
        progress(start, line);

        // One endpoint change until the packet path follows.
        let mut rng = Rng::new(n as u64 ^ 0xc0ff_ee00);
        let mut next_target = 0usize;
        for &mode in active.iter().filter(|m| **m != Mode::Direct) {
            let max = if mode == Mode::Ebpf {
                settings.max_changes.0
            } else {
                settings.max_changes.1
            };
            let began = Instant::now();
            let mut change = ChangeResult::default();
            while change.total_ms.len() < max
                && (change.total_ms.len() < settings.min_changes
                    || began.elapsed() < settings.change_budget)
            {
                let service = rng.below(n);
                let to = change_target((next_target % usize::from(CHANGE_TARGETS)) as u8 + 1);
                next_target += 1;
                let vip = std::net::SocketAddrV4::new(mode.vip(service), SERVICE_PORT);
                let node = self.nodes.get_mut(&mode).expect("every mode has a node");
                let t0 = Instant::now();
                let synced = node.change(self.topo.node(mode), service, to)?;
                let (seen, attempts) = self.client.run(probe_until(
                    targets[&mode].clone(),
                    vip,
                    to,
                    Duration::from_secs(60),
                ))?;
                change.add(seen - t0, synced, attempts);
            }
            change.finish();
            progress(
                start,
                format!(
                    "  {}: endpoint change p50 {:.3} ms, p99 {:.3} ms ({} changes; sync alone p50 {:.3} ms)",
                    mode.as_str(),
                    change.p50_ms,
                    change.p99_ms,
                    change.total_ms.len(),
                    change.sync_p50_ms
                ),
            );
            results.get_mut(&mode).expect("active").change = Some(change);
        }
        for result in results.values_mut() {
            if let Some(rate) = &mut result.rate {
                rate.finish();
            }
        }
        Ok(AtSize {
            services: n,
            load_average,
            modes: results
                .into_iter()
                .map(|(m, r)| (m.as_str().to_owned(), r))
                .collect(),
        })
    }
}
