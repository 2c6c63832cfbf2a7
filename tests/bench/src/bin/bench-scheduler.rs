//! `bench-scheduler` (`cargo xtask bench scheduler`): how fast the scheduler places pods.
//!
//! For each cluster size (100, 1,000, 5,000 Node objects in an in-process API server, no
//! kubelets) it starts the scheduler, creates 10,000 pods (`--quick`: 2,000, on 100 and
//! 1,000 nodes) from 64 concurrent clients, and watches them get bound. It prints progress
//! every second, then pods/s end to end (first create sent to last binding seen), the
//! creation rate alone, p50/p99 of creation-to-bound latency, and where the time went:
//! the scheduler's own metrics (algorithm time per pod), the CPU this process spent per
//! pod (and the store's writer thread's share), how busy the machine was, and from these
//! what bounds the figure.
//!
//! Everything (API server with its store, scheduler, load) shares this process and the
//! machine's cores, as a single-node control plane would; other work on the machine
//! competes for them, hence the load average and machine-wide CPU figures beside each run.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use coxswain_scheduler::{Scheduler, SchedulerConfig};
use coxswain_sim::{SimCluster, SimNode, create_node_object};
use futures::{StreamExt, TryStreamExt, stream};
use k8s_openapi::api::core::v1::{Container, Pod, PodSpec, ResourceRequirements};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use prometheus_client::registry::Registry;

const CONCURRENCY: usize = 64;

struct Args {
    nodes: Vec<usize>,
    pods: usize,
}

fn parse_args() -> Result<Args> {
    let mut quick = false;
    let mut nodes = None;
    let mut pods = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--quick" => quick = true,
            "--nodes" => {
                let v = args.next().context("--nodes needs a value, e.g. 100,1000")?;
                nodes = Some(
                    v.split(',')
                        .map(|n| n.trim().parse::<usize>())
                        .collect::<Result<Vec<_>, _>>()
                        .context("--nodes: comma-separated counts")?,
                );
            }
            "--pods" => {
                let v = args.next().context("--pods needs a value")?;
                pods = Some(v.parse().context("--pods: a count")?);
            }
            other => bail!("unknown argument {other:?} (expected --quick, --nodes N,M, --pods N)"),
        }
    }
    Ok(Args {
        nodes: nodes.unwrap_or(if quick { vec![100, 1000] } else { vec![100, 1000, 5000] }),
        pods: pods.unwrap_or(if quick { 2000 } else { 10_000 }),
    })
}

fn bench_pod(i: usize) -> Pod {
    Pod {
        metadata: ObjectMeta {
            name: Some(format!("bench-{i}")),
            namespace: Some("default".into()),
            ..Default::default()
        },
        spec: Some(PodSpec {
            containers: vec![Container {
                name: "app".into(),
                image: Some("busybox".into()),
                resources: Some(ResourceRequirements {
                    requests: Some(
                        [
                            ("cpu".to_owned(), Quantity("100m".into())),
                            ("memory".to_owned(), Quantity("128Mi".into())),
                        ]
                        .into(),
                    ),
                    ..Default::default()
                }),
                ..Default::default()
            }],
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// `name value` lines of the scheduler's metrics (histogram sums and counts, counters).
fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// CPU time (seconds) of this process's threads and of the whole machine, from /proc.
#[derive(Debug, Clone, Copy, Default)]
struct CpuSample {
    /// Every thread of this process.
    process: f64,
    /// The embedded store's writer thread (group commits, fsync).
    store_writer: f64,
    /// The machine: busy and total CPU seconds over all cores (from /proc/stat).
    machine_busy: f64,
    machine_total: f64,
}

/// Clock ticks of /proc's CPU times (USER_HZ, 100 on Linux).
const TICKS: f64 = 100.0;

fn cpu_sample() -> CpuSample {
    let mut sample = CpuSample::default();
    if let Ok(tasks) = std::fs::read_dir("/proc/self/task") {
        for task in tasks.flatten() {
            let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else {
                continue;
            };
            let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
                continue;
            };
            let comm = &stat[open + 1..close];
            let fields: Vec<&str> = stat[close + 2..].split_whitespace().collect();
            let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok()).unwrap_or(0.0);
            let cpu = (ticks(11) + ticks(12)) / TICKS;
            sample.process += cpu;
            if comm == "store-writer" {
                sample.store_writer += cpu;
            }
        }
    }
    if let Some(line) = std::fs::read_to_string("/proc/stat")
        .ok()
        .and_then(|s| s.lines().next().map(str::to_owned))
    {
        let v: Vec<f64> = line
            .split_whitespace()
            .skip(1)
            .take(8)
            .filter_map(|f| f.parse().ok())
            .collect();
        if v.len() == 8 {
            let total: f64 = v.iter().sum();
            sample.machine_total = total / TICKS;
            sample.machine_busy = (total - v[3] - v[4]) / TICKS;
        }
    }
    sample
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

struct Outcome {
    nodes: usize,
    pods: usize,
    end_to_end: Duration,
    creating: Duration,
    p50: Duration,
    p99: Duration,
    algorithm_mean: Duration,
    attempts: f64,
    /// Scheduled/FailedScheduling Events the scheduler dropped (its buffer was full).
    events_dropped: f64,
    /// CPU seconds over the pod phase: this process, its store writer, and the machine.
    cpu: CpuSample,
    load: String,
}

impl Outcome {
    fn rate(&self) -> f64 {
        self.pods as f64 / self.end_to_end.as_secs_f64()
    }

    /// Cores of the machine (from the CPU seconds /proc/stat counted over the run).
    fn cores(&self) -> f64 {
        self.cpu.machine_total / self.end_to_end.as_secs_f64()
    }

    /// Share of one core the scheduling loop (serial: filter, score, assume) was busy.
    fn scheduler_busy(&self) -> f64 {
        self.algorithm_mean.as_secs_f64() * self.attempts / self.end_to_end.as_secs_f64()
    }

    /// What bounds the figure, from the measurements: the serial scheduling loop when it
    /// was busy most of the time; the CPU when the machine's cores were (nearly) all busy;
    /// otherwise the latency of the API server's write path (creates and bindings wait on
    /// the store's group commits).
    fn bound(&self) -> String {
        let wall = self.end_to_end.as_secs_f64();
        let machine = self.cpu.machine_busy / self.cpu.machine_total.max(1e-9);
        let ours = self.cpu.process / wall;
        let others = (self.cpu.machine_busy - self.cpu.process).max(0.0) / wall;
        let sched = self.scheduler_busy();
        if sched >= 0.8 {
            format!("the scheduling loop ({:.0}% of a core, serial)", sched * 100.0)
        } else if machine >= 0.9 {
            format!(
                "CPU: {:.0} cores {:.0}% busy, {ours:.2} of them this process, {others:.2} other work",
                self.cores(),
                machine * 100.0
            )
        } else {
            format!(
                "API write latency: {CONCURRENCY} creates in flight, store group commits (CPU {:.0}% busy)",
                machine * 100.0
            )
        }
    }
}

async fn run_one(nodes: usize, pods: usize) -> Result<Outcome> {
    let cluster = SimCluster::start().await?;
    let client = cluster.client();
    let started = Instant::now();
    stream::iter(0..nodes)
        .map(|i| {
            let client = client.clone();
            async move {
                let node = SimNode::new(format!("node-{i:05}"))
                    .cpu("32")
                    .memory("128Gi")
                    .pods(110)
                    .labels([("topology.kubernetes.io/zone", ["a", "b", "c"][i % 3])]);
                create_node_object(&client, &node, i as u32).await
            }
        })
        .buffer_unordered(CONCURRENCY)
        .try_collect::<Vec<_>>()
        .await?;
    println!(
        "  {nodes} nodes created in {:.1} s",
        started.elapsed().as_secs_f64()
    );

    let scheduler = Scheduler::new(client.clone(), SchedulerConfig::default());
    let mut registry = Registry::default();
    scheduler.register_metrics(&mut registry);
    let scheduler = tokio::spawn(scheduler.run());

    // Creation times by pod name, and binding latencies as the watch sees them.
    let created: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let latencies: Arc<Mutex<Vec<Duration>>> = Arc::default();
    let last_bound: Arc<Mutex<Option<Instant>>> = Arc::default();
    let watch = {
        let (created, latencies, last_bound) =
            (created.clone(), latencies.clone(), last_bound.clone());
        let api: Api<Pod> = Api::namespaced(client.clone(), "default");
        tokio::spawn(async move {
            let mut seen = std::collections::HashSet::new();
            let mut s = watcher::watcher(api, watcher::Config::default())
                .default_backoff()
                .applied_objects()
                .boxed();
            while let Ok(Some(pod)) = s.try_next().await {
                let bound = pod.spec.as_ref().and_then(|s| s.node_name.as_ref()).is_some();
                let name = pod.metadata.name.clone().unwrap_or_default();
                if bound && seen.insert(name.clone()) {
                    let now = Instant::now();
                    if let Some(t0) = created.lock().unwrap().get(&name) {
                        latencies.lock().unwrap().push(now - *t0);
                    }
                    *last_bound.lock().unwrap() = Some(now);
                }
            }
        })
    };
    // Let the scheduler and the watch list the (empty) pods first.
    tokio::time::sleep(Duration::from_millis(500)).await;

    let api: Api<Pod> = Api::namespaced(client.clone(), "default");
    let load = load_average();
    let cpu0 = cpu_sample();
    let t0 = Instant::now();
    let creating = {
        let (api, created) = (api.clone(), created.clone());
        tokio::spawn(async move {
            stream::iter(0..pods)
                .map(|i| {
                    let (api, created) = (api.clone(), created.clone());
                    async move {
                        let pod = bench_pod(i);
                        created
                            .lock()
                            .unwrap()
                            .insert(pod.metadata.name.clone().unwrap_or_default(), Instant::now());
                        api.create(&PostParams::default(), &pod).await
                    }
                })
                .buffer_unordered(CONCURRENCY)
                .try_for_each(|_| async { Ok(()) })
                .await?;
            Ok::<Duration, kube::Error>(t0.elapsed())
        })
    };
    let deadline = t0 + Duration::from_secs(600);
    let mut last = (Instant::now(), 0usize);
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let bound = latencies.lock().unwrap().len();
        let made = created.lock().unwrap().len();
        let now = Instant::now();
        let rate = (bound - last.1) as f64 / (now - last.0).as_secs_f64();
        last = (now, bound);
        println!(
            "  [{:>5.1} s] created {made:>6}/{pods}  bound {bound:>6}  ({rate:>6.0} pods/s)",
            t0.elapsed().as_secs_f64()
        );
        if bound >= pods {
            break;
        }
        if now > deadline {
            bail!("only {bound} of {pods} pods bound within 600 s");
        }
    }
    let creating = creating.await??;
    let end = last_bound.lock().unwrap().context("no pod bound")?;
    // The progress loop ticks each second: scale the CPU seconds down to the run itself.
    let cpu1 = cpu_sample();
    let sampled = t0.elapsed().as_secs_f64();
    let share = (end - t0).as_secs_f64() / sampled;
    let cpu = CpuSample {
        process: (cpu1.process - cpu0.process) * share,
        store_writer: (cpu1.store_writer - cpu0.store_writer) * share,
        machine_busy: (cpu1.machine_busy - cpu0.machine_busy) * share,
        machine_total: (cpu1.machine_total - cpu0.machine_total) * share,
    };
    scheduler.abort();
    watch.abort();

    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry)?;
    let sum = metric(&text, "scheduler_scheduling_algorithm_duration_seconds_sum");
    let count = metric(&text, "scheduler_scheduling_algorithm_duration_seconds_count");
    let attempts = metric(&text, "scheduler_schedule_attempts_total");
    let events_dropped = metric(&text, "scheduler_events_dropped");
    let mut lat = std::mem::take(&mut *latencies.lock().unwrap());
    lat.sort();
    Ok(Outcome {
        nodes,
        pods,
        end_to_end: end - t0,
        creating,
        p50: percentile(&lat, 0.50),
        p99: percentile(&lat, 0.99),
        algorithm_mean: Duration::from_secs_f64(if count > 0.0 { sum / count } else { 0.0 }),
        attempts,
        events_dropped,
        cpu,
        load,
    })
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = parse_args()?;
    let mut results = Vec::new();
    for &nodes in &args.nodes {
        println!("== {nodes} nodes, {} pods", args.pods);
        results.push(run_one(nodes, args.pods).await?);
    }
    println!();
    println!(
        "{:>6} {:>7} {:>8} {:>9} {:>8} {:>8} {:>9} {:>9} {:>9} {:>7} {:>7} {:>15}",
        "nodes", "pods", "pods/s", "create/s", "p50", "p99", "algo/pod", "cpu/pod", "writer", "sched", "ev.drop", "load (1 5 15)"
    );
    for r in &results {
        println!(
            "{:>6} {:>7} {:>8.0} {:>9.0} {:>6.0}ms {:>6.0}ms {:>7.0}µs {:>7.0}µs {:>7.0}µs {:>6.0}% {:>7.0} {:>15}",
            r.nodes,
            r.pods,
            r.rate(),
            r.pods as f64 / r.creating.as_secs_f64(),
            r.p50.as_secs_f64() * 1e3,
            r.p99.as_secs_f64() * 1e3,
            r.algorithm_mean.as_secs_f64() * 1e6,
            r.cpu.process / r.pods as f64 * 1e6,
            r.cpu.store_writer / r.pods as f64 * 1e6,
            r.scheduler_busy() * 100.0,
            r.events_dropped,
            r.load,
        );
    }
    println!();
    for r in &results {
        println!("{:>6} nodes: bound by {}", r.nodes, r.bound());
    }
    println!();
    println!(
        "pods/s: first create sent to last binding seen; create/s: the creating clients alone \
         ({CONCURRENCY} in flight); p50/p99: create sent to binding seen through a watch; \
         algo/pod: the scheduler's filter+score time per pod (its metrics); cpu/pod: CPU time \
         of this whole process (API server, store, scheduler, clients) per pod, writer: the \
         store writer thread's part; sched: how busy the serial scheduling loop was; ev.drop: \
         Events the scheduler dropped (its buffer was full); load: \
         the machine's load average as the run started."
    );
    Ok(())
}
