//! Store benchmark: the embedded store and a single-member etcd side by side.
//!
//! `cargo bench -p coxswain-store --bench store -- [--quick]` prints a table (with the ratio
//! embedded/etcd) and writes the figures to `target/bench/store.json`. Both stores stay open
//! and the phases alternate between them over several rounds (medians are reported), so load
//! from other processes on the machine skews both sides alike. Every phase is bounded by a
//! time budget and an operation count: a run takes under a minute (`--quick`: about 15 s).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use coxswain_store::{
    EmbeddedConfig, EmbeddedStore, EtcdConfig, EtcdStore, Event, ListOptions, Store,
};
use coxswain_testkit::EtcdCluster;
use futures::StreamExt;

/// Value size of every write: a small Kubernetes object.
const VALUE_SIZE: usize = 256;
const WRITERS: usize = 16;
const RANGE_KEYS: usize = 10_000;

#[derive(Debug, Clone, Copy)]
struct Budget {
    /// Rounds of every phase, alternating the backends (medians are reported).
    rounds: usize,
    /// Time spent on each throughput phase of a round.
    phase: Duration,
    /// Ranges read per round.
    ranges: usize,
    /// Watch latency samples per round.
    watch_samples: usize,
}

impl Budget {
    fn new(quick: bool) -> Budget {
        if quick {
            Budget {
                rounds: 2,
                phase: Duration::from_millis(400),
                ranges: 3,
                watch_samples: 100,
            }
        } else {
            Budget {
                rounds: 3,
                phase: Duration::from_secs(2),
                ranges: 10,
                watch_samples: 500,
            }
        }
    }
}

/// The figures of one backend, by metric name.
type Figures = BTreeMap<&'static str, f64>;

const METRICS: &[(&str, &str, bool)] = &[
    // (key, label, higher is better)
    ("put_16_writers_per_s", "puts/s, 16 writers", true),
    ("put_1_writer_per_s", "puts/s, 1 writer", true),
    ("cas_16_writers_per_s", "CAS updates/s, 16 writers", true),
    ("range_10k_ms", "range of 10k keys (ms, median)", false),
    ("watch_p50_ms", "watch delivery p50 (ms)", false),
    ("watch_p99_ms", "watch delivery p99 (ms)", false),
];

fn value() -> Bytes {
    Bytes::from(vec![b'x'; VALUE_SIZE])
}

fn progress(backend: &str, message: impl std::fmt::Display) {
    eprintln!("[{backend}] {message}");
}

/// Creates fresh keys from `writers` tasks for `budget`; returns writes per second.
async fn puts(store: &Arc<dyn Store>, tag: &str, writers: usize, budget: Duration) -> f64 {
    let started = Instant::now();
    let tasks: Vec<_> = (0..writers)
        .map(|w| {
            let store = store.clone();
            let tag = tag.to_owned();
            tokio::spawn(async move {
                let mut n = 0u64;
                while started.elapsed() < budget {
                    store
                        .create(&format!("/bench/{tag}/{w}/{n:08}"), value())
                        .await
                        .expect("put");
                    n += 1;
                }
                n
            })
        })
        .collect();
    let mut total = 0;
    for task in tasks {
        total += task.await.expect("writer task");
    }
    total as f64 / started.elapsed().as_secs_f64()
}

/// Compare-and-swap updates of one key per task for `budget`; returns updates per second.
async fn cas_updates(store: &Arc<dyn Store>, tag: &str, budget: Duration) -> f64 {
    let mut revisions = Vec::new();
    for w in 0..WRITERS {
        let kv = store
            .create(&format!("/bench/cas/{tag}/{w}"), value())
            .await
            .expect("create");
        revisions.push(kv.mod_revision);
    }
    let started = Instant::now();
    let tasks: Vec<_> = revisions
        .into_iter()
        .enumerate()
        .map(|(w, mut revision)| {
            let store = store.clone();
            let key = format!("/bench/cas/{tag}/{w}");
            tokio::spawn(async move {
                let mut n = 0u64;
                while started.elapsed() < budget {
                    revision = store
                        .update(&key, value(), revision)
                        .await
                        .expect("cas update")
                        .mod_revision;
                    n += 1;
                }
                n
            })
        })
        .collect();
    let mut total = 0;
    for task in tasks {
        total += task.await.expect("cas task");
    }
    total as f64 / started.elapsed().as_secs_f64()
}

/// Loads the 10k keys the range phase reads.
async fn load_range(store: &Arc<dyn Store>) {
    let tasks: Vec<_> = (0..64)
        .map(|w| {
            let store = store.clone();
            tokio::spawn(async move {
                for i in (w..RANGE_KEYS).step_by(64) {
                    store
                        .create(&format!("/bench/range/{i:05}"), value())
                        .await
                        .expect("load");
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("load task");
    }
}

/// Times full reads of the 10k keys; returns the samples in milliseconds.
async fn range(store: &Arc<dyn Store>, budget: Budget) -> Vec<f64> {
    let mut times = Vec::new();
    for _ in 0..budget.ranges {
        let started = Instant::now();
        let list = store
            .list("/bench/range/", ListOptions::default())
            .await
            .expect("range");
        times.push(started.elapsed().as_secs_f64() * 1000.0);
        assert_eq!(list.items.len(), RANGE_KEYS);
    }
    times
}

/// Writes one key at a time and times until a watcher has the event; returns the samples in
/// milliseconds (from issuing the write to the watcher receiving it).
async fn watch_latency(store: &Arc<dyn Store>, tag: &str, budget: Budget) -> Vec<f64> {
    let start = store.current_revision().await.expect("revision");
    let mut watch = store.watch("/bench/watch/", start).await.expect("watch");
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let consumer = tokio::spawn(async move {
        while let Some(Ok(event)) = watch.next().await {
            if let Event::Put { kv, .. } = event {
                let _ = tx.send((kv.key, Instant::now()));
            }
        }
    });
    let mut samples = Vec::new();
    let deadline = Instant::now() + budget.phase * 2;
    for i in 0..budget.watch_samples {
        if Instant::now() > deadline {
            break;
        }
        let key = format!("/bench/watch/{tag}/{i:06}");
        let issued = Instant::now();
        store.create(&key, value()).await.expect("write");
        let (seen, at) = tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .expect("watch event in time")
            .expect("watch open");
        assert_eq!(seen, key);
        samples.push(at.duration_since(issued).as_secs_f64() * 1000.0);
    }
    consumer.abort();
    samples
}

fn percentile(samples: &mut [f64], p: f64) -> f64 {
    if samples.is_empty() {
        return f64::NAN;
    }
    samples.sort_by(f64::total_cmp);
    // Linear interpolation between the closest ranks.
    let rank = (samples.len() - 1) as f64 * p;
    let (low, high) = (rank.floor() as usize, rank.ceil() as usize);
    samples[low] + (samples[high] - samples[low]) * (rank - low as f64)
}

/// The raw samples of one backend, by metric.
#[derive(Debug, Default)]
struct Samples {
    put_16: Vec<f64>,
    put_1: Vec<f64>,
    cas_16: Vec<f64>,
    range_ms: Vec<f64>,
    watch_ms: Vec<f64>,
}

impl Samples {
    fn figures(mut self) -> Figures {
        let mut figures = Figures::new();
        figures.insert("put_16_writers_per_s", percentile(&mut self.put_16, 0.5));
        figures.insert("put_1_writer_per_s", percentile(&mut self.put_1, 0.5));
        figures.insert("cas_16_writers_per_s", percentile(&mut self.cas_16, 0.5));
        figures.insert("range_10k_ms", percentile(&mut self.range_ms, 0.5));
        figures.insert("watch_p50_ms", percentile(&mut self.watch_ms, 0.5));
        figures.insert("watch_p99_ms", percentile(&mut self.watch_ms, 0.99));
        figures
    }
}

/// One round of every phase on one backend.
async fn round(
    name: &str,
    store: &Arc<dyn Store>,
    round: usize,
    budget: Budget,
    out: &mut Samples,
) {
    let name = &if round == 0 {
        format!("{name}, warm-up")
    } else {
        name.to_owned()
    };
    let v = puts(store, &format!("put16-{round}"), WRITERS, budget.phase).await;
    progress(
        name,
        format!("round {round}: puts, {WRITERS} writers: {v:.0}/s"),
    );
    out.put_16.push(v);
    let v = puts(store, &format!("put1-{round}"), 1, budget.phase).await;
    progress(name, format!("round {round}: puts, 1 writer: {v:.0}/s"));
    out.put_1.push(v);
    let v = cas_updates(store, &round.to_string(), budget.phase).await;
    progress(
        name,
        format!("round {round}: CAS updates, {WRITERS} writers: {v:.0}/s"),
    );
    out.cas_16.push(v);
    let mut times = range(store, budget).await;
    progress(
        name,
        format!(
            "round {round}: range of {RANGE_KEYS} keys: {:.1} ms (median)",
            percentile(&mut times, 0.5)
        ),
    );
    out.range_ms.extend(times);
    let mut latencies = watch_latency(store, &round.to_string(), budget).await;
    progress(
        name,
        format!(
            "round {round}: watch delivery p50 {:.2} ms, p99 {:.2} ms",
            percentile(&mut latencies, 0.5),
            percentile(&mut latencies, 0.99)
        ),
    );
    out.watch_ms.extend(latencies);
}

fn output_path() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target"));
    target.join("bench").join("store.json")
}

fn main() {
    // cargo passes `--bench`; other flags are ours.
    let quick = std::env::args().any(|a| a == "--quick");
    let budget = Budget::new(quick);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let started = Instant::now();
    let (embedded, etcd) = runtime.block_on(async {
        let dir = tempfile::tempdir().expect("temp dir");
        let embedded: Arc<dyn Store> = Arc::new(
            EmbeddedStore::open(EmbeddedConfig::new(dir.path().join("bench.redb")))
                .await
                .expect("open the embedded store"),
        );
        progress("embedded", format!("store in {}", dir.path().display()));
        let cluster = EtcdCluster::start(1).await.expect("start etcd");
        progress(
            "etcd",
            format!("single member at {}", cluster.client_urls()[0]),
        );
        let etcd: Arc<dyn Store> = Arc::new(
            EtcdStore::connect(EtcdConfig::new(cluster.client_urls()))
                .await
                .expect("connect to etcd"),
        );
        for (name, store) in [("embedded", &embedded), ("etcd", &etcd)] {
            let loading = Instant::now();
            load_range(store).await;
            progress(
                name,
                format!(
                    "loaded {RANGE_KEYS} keys in {:.1} s",
                    loading.elapsed().as_secs_f64()
                ),
            );
        }
        // A warm-up round, discarded: a young database file still grows, and caches are cold.
        let warm_up = Budget {
            phase: budget.phase / 2,
            ranges: 1,
            watch_samples: budget.watch_samples / 4,
            ..budget
        };
        round("embedded", &embedded, 0, warm_up, &mut Samples::default()).await;
        round("etcd", &etcd, 0, warm_up, &mut Samples::default()).await;
        let (mut e, mut d) = (Samples::default(), Samples::default());
        for r in 1..=budget.rounds {
            // Alternate which backend goes first, so neither always runs on a warmer machine.
            if r % 2 == 1 {
                round("embedded", &embedded, r, budget, &mut e).await;
                round("etcd", &etcd, r, budget, &mut d).await;
            } else {
                round("etcd", &etcd, r, budget, &mut d).await;
                round("embedded", &embedded, r, budget, &mut e).await;
            }
        }
        drop((embedded, etcd));
        drop(cluster);
        (e.figures(), d.figures())
    });

    println!();
    println!(
        "store benchmark ({}, medians of {} interleaved rounds; values of {VALUE_SIZE} B; etcd 3.4 single member on the same disk)",
        if quick { "quick" } else { "full" },
        budget.rounds
    );
    println!(
        "| {:<32} | {:>12} | {:>12} | {:>14} |",
        "metric", "embedded", "etcd", "embedded/etcd"
    );
    println!("|{:-<34}|{:->14}|{:->14}|{:->16}|", "", "", "", "");
    let mut rows = Vec::new();
    for &(key, label, _) in METRICS {
        let (e, d) = (embedded[key], etcd[key]);
        let ratio = e / d;
        println!("| {label:<32} | {e:>12.2} | {d:>12.2} | {ratio:>13.2}x |");
        rows.push(serde_json::json!({
            "metric": key, "label": label, "embedded": e, "etcd": d, "ratio_embedded_over_etcd": ratio,
        }));
    }
    println!("(ratio > 1 is better for rates, < 1 is better for times)");
    let report = serde_json::json!({
        "quick": quick,
        "rounds": budget.rounds,
        "value_size_bytes": VALUE_SIZE,
        "writers": WRITERS,
        "range_keys": RANGE_KEYS,
        "elapsed_s": started.elapsed().as_secs_f64(),
        "results": rows,
    });
    let path = output_path();
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).expect("create the bench output directory");
    }
    std::fs::write(&path, serde_json::to_vec_pretty(&report).expect("json"))
        .expect("write the bench report");
    println!(
        "wrote {} in {:.1} s",
        path.display(),
        started.elapsed().as_secs_f64()
    );
}
