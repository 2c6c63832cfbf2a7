//! The load generator: a tokio runtime created inside a thread that entered
//! the client namespace (its workers inherit the namespace), running jobs
//! sent from the benchmark's main thread. Every job is bounded in time and
//! in count.

use std::{
    future::Future,
    net::{Ipv4Addr, SocketAddrV4},
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU64, AtomicUsize, Ordering},
        mpsc,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use tokio::time::timeout;

use crate::wire::{IO_TIMEOUT, Rng, connect, enter_netns, exchange, pin_to};

type Job = Pin<Box<dyn Future<Output = ()> + Send>>;

/// The client namespace's runtime.
#[derive(Debug)]
pub struct Client {
    jobs: Option<mpsc::Sender<Job>>,
    thread: Option<JoinHandle<()>>,
}

impl Client {
    /// A runtime with `workers` threads in netns `ns` (pinned to `cpu`, if
    /// given).
    pub fn start(ns: &str, workers: usize, cpu: Option<usize>) -> Result<Self> {
        let (jobs, receiver) = mpsc::channel::<Job>();
        let (ready_tx, ready_rx) = mpsc::channel::<Result<()>>();
        let ns = ns.to_owned();
        let thread = std::thread::Builder::new()
            .name("bench-client".into())
            .spawn(move || {
                let runtime = enter_netns(&ns)
                    .and_then(|()| cpu.map_or(Ok(()), pin_to))
                    .and_then(|()| {
                        tokio::runtime::Builder::new_multi_thread()
                            .worker_threads(workers)
                            .thread_name("bench-client-worker")
                            .enable_all()
                            .build()
                            .context("failed to build the client runtime")
                    });
                match runtime {
                    Ok(runtime) => {
                        let _ = ready_tx.send(Ok(()));
                        // `block_on` runs each job on this thread, also in
                        // the namespace.
                        while let Ok(job) = receiver.recv() {
                            runtime.block_on(job);
                        }
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                    }
                }
            })
            .context("failed to start the client thread")?;
        ready_rx
            .recv()
            .context("client thread ended before its runtime started")??;
        Ok(Client {
            jobs: Some(jobs),
            thread: Some(thread),
        })
    }

    /// Runs `job` in the client namespace and waits for its result.
    pub fn run<T: Send + 'static>(&self, job: impl Future<Output = T> + Send + 'static) -> T {
        let (tx, rx) = mpsc::channel();
        self.jobs
            .as_ref()
            .expect("running")
            .send(Box::pin(async move {
                let _ = tx.send(job.await);
            }))
            .expect("client thread alive");
        rx.recv().expect("client job finished")
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        self.jobs.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Where a mode's clients connect: for each Service, its candidate
/// addresses (the Service address, or for `direct` its endpoints).
#[derive(Clone, Debug)]
pub struct Targets {
    /// Candidates per Service.
    pub per_service: Vec<Vec<SocketAddrV4>>,
    /// The client's source addresses for this mode.
    pub sources: Vec<Ipv4Addr>,
}

impl Targets {
    fn pick(&self, rng: &mut Rng) -> SocketAddrV4 {
        let candidates = &self.per_service[rng.below(self.per_service.len())];
        candidates[rng.below(candidates.len())]
    }

    fn source(&self, counter: &AtomicUsize) -> Ipv4Addr {
        self.sources[counter.fetch_add(1, Ordering::Relaxed) % self.sources.len()]
    }
}

/// Bounds of a connection-rate round.
#[derive(Clone, Copy, Debug)]
pub struct RateBounds {
    /// Connections in flight.
    pub concurrency: usize,
    /// How long new connections are started.
    pub duration: Duration,
    /// At most this many connections.
    pub max_connections: u64,
}

/// One round's outcome.
#[derive(Clone, Debug, Default)]
pub struct RateSample {
    /// Connections that completed their exchange.
    pub completed: u64,
    /// Connections that failed (refused, timed out, wrong reply).
    pub errors: u64,
    /// From the first connection to the last one's end.
    pub elapsed: Duration,
    /// The first failure, for the report.
    pub first_error: Option<String>,
}

impl RateSample {
    /// Completed connections per second.
    pub fn rate(&self) -> f64 {
        self.completed as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// New connections as fast as they complete: connect, one request, read
/// the reply, close; `concurrency` at a time, to random Services.
pub async fn connection_rate(targets: Arc<Targets>, bounds: RateBounds, seed: u64) -> RateSample {
    let started = Arc::new(AtomicU64::new(0));
    let sources = Arc::new(AtomicUsize::new(seed as usize));
    let start = Instant::now();
    let deadline = start + bounds.duration;
    let mut tasks = Vec::new();
    for worker in 0..bounds.concurrency {
        let (targets, started, sources) = (targets.clone(), started.clone(), sources.clone());
        tasks.push(tokio::spawn(async move {
            let mut rng = Rng::new(seed ^ (worker as u64 + 1).wrapping_mul(0x1234_5678_9abc));
            let mut buf = Vec::with_capacity(256);
            let (mut completed, mut errors, mut first_error) = (0u64, 0u64, None);
            while Instant::now() < deadline
                && started.fetch_add(1, Ordering::Relaxed) < bounds.max_connections
            {
                let target = targets.pick(&mut rng);
                let source = targets.source(&sources);
                let outcome = timeout(IO_TIMEOUT, async {
                    let mut stream = connect(source, target).await?;
                    exchange(&mut stream, &mut buf).await
                })
                .await;
                match outcome {
                    Ok(Ok(_)) => completed += 1,
                    Ok(Err(e)) => {
                        errors += 1;
                        first_error.get_or_insert_with(|| format!("{source} -> {target}: {e}"));
                    }
                    Err(_) => {
                        errors += 1;
                        first_error
                            .get_or_insert_with(|| format!("{source} -> {target}: timed out"));
                    }
                }
            }
            (completed, errors, first_error)
        }));
    }
    let mut sample = RateSample::default();
    for task in tasks {
        let (completed, errors, first_error) = task.await.expect("rate task");
        sample.completed += completed;
        sample.errors += errors;
        if sample.first_error.is_none() {
            sample.first_error = first_error;
        }
    }
    sample.elapsed = start.elapsed();
    sample
}

/// Per-request latencies (µs) on `connections` kept-alive connections, one
/// request at a time on each, for `duration` or `max_requests`.
pub async fn request_latency(
    targets: Arc<Targets>,
    connections: usize,
    duration: Duration,
    max_requests: u64,
    seed: u64,
) -> (Vec<u32>, u64) {
    let sent = Arc::new(AtomicU64::new(0));
    let sources = Arc::new(AtomicUsize::new(seed as usize));
    let deadline = Instant::now() + duration;
    let mut tasks = Vec::new();
    for worker in 0..connections {
        let (targets, sent, sources) = (targets.clone(), sent.clone(), sources.clone());
        tasks.push(tokio::spawn(async move {
            let mut rng = Rng::new(seed ^ (worker as u64 + 7).wrapping_mul(0x5555_1234_abcd));
            let mut buf = Vec::with_capacity(256);
            let mut samples = Vec::new();
            let mut errors = 0u64;
            let mut stream = None;
            while Instant::now() < deadline && sent.fetch_add(1, Ordering::Relaxed) < max_requests {
                if stream.is_none() {
                    let target = targets.pick(&mut rng);
                    match timeout(IO_TIMEOUT, connect(targets.source(&sources), target)).await {
                        Ok(Ok(s)) => stream = Some(s),
                        _ => {
                            errors += 1;
                            continue;
                        }
                    }
                }
                let Some(s) = stream.as_mut() else { continue };
                let t0 = Instant::now();
                match timeout(IO_TIMEOUT, exchange(s, &mut buf)).await {
                    Ok(Ok(_)) => {
                        samples.push(t0.elapsed().as_micros().min(u32::MAX as u128) as u32)
                    }
                    _ => {
                        errors += 1;
                        stream = None;
                    }
                }
            }
            (samples, errors)
        }));
    }
    let mut all = Vec::new();
    let mut errors = 0;
    for task in tasks {
        let (samples, e) = task.await.expect("latency task");
        all.extend(samples);
        errors += e;
    }
    (all, errors)
}

/// Connects to `target` again and again until an endpoint answers with
/// `expected` (its address); returns when it did and how many connections
/// it took. Bounded by `limit` and 100,000 connections.
pub async fn probe_until(
    targets: Arc<Targets>,
    target: SocketAddrV4,
    expected: Ipv4Addr,
    limit: Duration,
) -> Result<(Instant, u32)> {
    let want = format!("{expected}\n").into_bytes();
    let sources = AtomicUsize::new(0);
    let deadline = Instant::now() + limit;
    let mut buf = Vec::with_capacity(256);
    for attempt in 1..=100_000u32 {
        if Instant::now() > deadline {
            break;
        }
        let outcome = timeout(IO_TIMEOUT, async {
            let mut stream = connect(targets.source(&sources), target).await?;
            exchange(&mut stream, &mut buf).await
        })
        .await;
        match outcome {
            Ok(Ok(_)) if buf == want => return Ok((Instant::now(), attempt)),
            Ok(Ok(_)) => {}
            // Refused or lost while the change lands: try again shortly.
            _ => tokio::time::sleep(Duration::from_micros(200)).await,
        }
    }
    bail!("{target} never answered from {expected} within {limit:?}")
}
