//! One worker per pod: a level-triggered sync loop that drives the runtime
//! towards the pod spec (sandbox, volumes, init containers in order,
//! containers with restart policy and crash-loop back-off, probes) and
//! reports the pod's status; on deletion, graceful termination (preStop,
//! stop signal, SIGKILL after the grace period) and removal of everything
//! the pod had in the runtime and on disk.

use std::{
    collections::HashMap,
    hash::{Hash, Hasher},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use k8s_cri::v1::{self as cri, ContainerStatus, PodSandboxState};
use k8s_openapi::api::core::v1::{Container, Pod};
use kube::api::{Api, DeleteParams, Patch, PatchParams, Preconditions};
use serde_json::{Value, json};
use tokio::{sync::{Notify, watch}, task::JoinHandle};
use coxswain_runtime::events::EventType;
use tracing::{debug, info, warn};

use crate::{
    cri::{LABEL_CONTAINER_NAME, LABEL_POD_UID, container_order, labels},
    events::reason,
    images::{ImageFailure, ImageOutcome},
    kubelet::Shared,
    probes::{ProbeResults, ProbeState, ProbeTarget},
    spec::{PodContext, host_network, pod_key},
    status::{ContainerView, PodFacts, Waiting, is_exited, is_running, restart_policy, should_restart},
};

/// First back-off after a crash (after the immediate first restart).
pub const BACKOFF_INITIAL: Duration = Duration::from_secs(10);
/// Longest back-off.
pub const BACKOFF_MAX: Duration = Duration::from_secs(300);
/// A container that ran this long resets its back-off.
pub const BACKOFF_RESET: Duration = Duration::from_secs(600);
/// How often a worker re-syncs without any event (tokens due for renewal are renewed then).
const RESYNC: Duration = Duration::from_secs(5);
/// How soon volumes that could not be set up are tried again.
const VOLUME_RETRY: Duration = Duration::from_secs(1);

/// Container annotation: the crash-loop back-off (whole seconds) waited before this
/// container was started. The runtime keeps it, so the next back-off survives an agent
/// restart.
pub const ANNOTATION_BACKOFF: &str = "io.coxswain.container.backoff-seconds";

/// The next back-off after `previous` (None: no restart yet, so none).
pub fn next_backoff(previous: Option<Duration>) -> Duration {
    match previous {
        None => Duration::ZERO,
        Some(d) if d.is_zero() => BACKOFF_INITIAL,
        Some(d) => (d * 2).min(BACKOFF_MAX),
    }
}

/// The back-off before restarting a container that exited, from what the runtime keeps of
/// it: its attempt number, how long it ran and the back-off it was started after (its
/// [`ANNOTATION_BACKOFF`], absent on containers of older agents). The restart is due that
/// long after the container's finish time.
pub fn restart_delay(attempt: u32, ran: Duration, started_after: Option<Duration>) -> Duration {
    // The first exit restarts at once, and so does one after a long run.
    if attempt == 0 || ran >= BACKOFF_RESET {
        return Duration::ZERO;
    }
    match started_after {
        Some(d) => next_backoff(Some(d)),
        // Every restart so far after a crash: 10 s, doubling.
        None => BACKOFF_INITIAL.saturating_mul(1 << (attempt - 1).min(16)).min(BACKOFF_MAX),
    }
}

/// What [`restart_delay`] needs of an exited container: (attempt, how long it ran, the
/// back-off it was started after).
fn backoff_facts(s: &ContainerStatus) -> (u32, Duration, Option<Duration>) {
    let attempt = s.metadata.as_ref().map_or(0, |m| m.attempt);
    let ran = Duration::from_nanos((s.finished_at - s.started_at).max(0) as u64);
    let started_after = s.annotations.get(ANNOTATION_BACKOFF).and_then(|v| v.parse().ok()).map(Duration::from_secs);
    (attempt, ran, started_after)
}

/// A sandbox state as the relist and the workers key it (apart from container states).
pub fn sandbox_state_key(state: i32) -> i32 {
    state + 100
}

/// A digest of what the runtime holds for one pod: its sandboxes and containers with their
/// states (any order). The relist and the worker compute it the same way.
pub fn fingerprint<'a>(entries: impl IntoIterator<Item = (&'a str, i32)>) -> u64 {
    let mut entries: Vec<(&str, i32)> = entries.into_iter().collect();
    entries.sort_unstable();
    let mut h = std::collections::hash_map::DefaultHasher::new();
    entries.hash(&mut h);
    h.finish()
}

/// What the relist tells a worker: its pod's runtime state changed, to this fingerprint.
#[derive(Debug, Default)]
pub struct RuntimeSignal {
    notify: Notify,
    fingerprint: AtomicU64,
}

impl RuntimeSignal {
    /// The pod's runtime state is now `fingerprint`: wake the worker.
    pub fn changed(&self, fingerprint: u64) {
        self.fingerprint.store(fingerprint, Ordering::Release);
        self.notify.notify_one();
    }
}

/// Aborts a task when dropped.
#[derive(Debug)]
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// What the worker knows of the runtime for its pod, refreshed every sync.
#[derive(Debug, Default)]
struct Observed {
    sandboxes: Vec<cri::PodSandbox>,
    /// Per container name, latest first.
    containers: HashMap<String, Vec<ContainerStatus>>,
}

/// The handle the pod manager keeps.
#[derive(Debug)]
pub struct WorkerHandle {
    /// The latest pod (None once it left the API).
    pub pod: watch::Sender<Option<Pod>>,
    /// The relist's news of the pod's runtime state.
    pub runtime: Arc<RuntimeSignal>,
    /// The worker task.
    pub task: JoinHandle<()>,
}

/// Starts the worker of `pod`.
pub fn spawn(shared: Arc<Shared>, pod: Pod) -> WorkerHandle {
    let (tx, rx) = watch::channel(Some(pod.clone()));
    let wake = Arc::new(Notify::new());
    let runtime = Arc::new(RuntimeSignal::default());
    let mut worker = PodWorker::new(shared, pod, rx, wake, runtime.clone());
    let task = tokio::spawn(async move { worker.run().await });
    WorkerHandle { pod: tx, runtime, task }
}

struct PodWorker {
    shared: Arc<Shared>,
    uid: String,
    name: String,
    namespace: String,
    pod_rx: watch::Receiver<Option<Pod>>,
    last_pod: Pod,
    wake: Arc<Notify>,
    runtime: Arc<RuntimeSignal>,
    /// The fingerprint of the runtime state the last observation saw.
    seen_fingerprint: u64,
    /// Container statuses by id, reused while the runtime lists the same state.
    status_cache: HashMap<String, ContainerStatus>,
    /// The current sync changed something in the runtime (so it observes again).
    acted: bool,
    /// Images checked (or pulled) beside the sandbox's creation, by container name.
    prefetched: HashMap<String, Result<ImageOutcome, ImageFailure>>,
    probes: ProbeResults,
    probe_tasks: HashMap<String, AbortOnDrop>,
    /// Image pull back-off per container name: (until, last delay).
    pull_backoff: HashMap<String, (Instant, Duration)>,
    waiting: HashMap<String, Waiting>,
    sandbox_ip: HashMap<String, Vec<String>>,
    since: HashMap<String, (bool, String)>,
    start_time: Option<String>,
    last_status: Option<Value>,
    terminated: bool,
    created: Instant,
    reported_start: bool,
}

fn now_rfc3339() -> String {
    jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

fn grace_seconds(pod: &Pod) -> i64 {
    pod.metadata
        .deletion_grace_period_seconds
        .or_else(|| pod.spec.as_ref().and_then(|s| s.termination_grace_period_seconds))
        .unwrap_or(30)
        .max(0)
}

impl PodWorker {
    fn new(shared: Arc<Shared>, pod: Pod, pod_rx: watch::Receiver<Option<Pod>>, wake: Arc<Notify>, runtime: Arc<RuntimeSignal>) -> Self {
        let (name, namespace, uid) = pod_key(&pod);
        let (name, namespace, uid) = (name.to_owned(), namespace.to_owned(), uid.to_owned());
        let status = pod.status.clone().unwrap_or_default();
        let since = status
            .conditions
            .iter()
            .flatten()
            .filter_map(|c| {
                let t = c.last_transition_time.as_ref()?.0.strftime("%Y-%m-%dT%H:%M:%SZ").to_string();
                Some((c.type_.clone(), (c.status == "True", t)))
            })
            .collect();
        let start_time = status
            .start_time
            .map(|t| t.0.strftime("%Y-%m-%dT%H:%M:%SZ").to_string());
        PodWorker {
            shared,
            uid,
            name,
            namespace,
            pod_rx,
            last_pod: pod,
            wake,
            runtime,
            seen_fingerprint: 0,
            status_cache: HashMap::new(),
            acted: false,
            prefetched: HashMap::new(),
            probes: ProbeResults::default(),
            probe_tasks: HashMap::new(),
            pull_backoff: HashMap::new(),
            waiting: HashMap::new(),
            sandbox_ip: HashMap::new(),
            since,
            start_time,
            last_status: None,
            terminated: false,
            created: Instant::now(),
            reported_start: false,
        }
    }

    async fn run(&mut self) {
        self.phase("worker_start", self.created);
        loop {
            let pod = self.pod_rx.borrow_and_update().clone();
            let done = match pod {
                None => {
                    if self.terminated || self.terminate().await {
                        self.remove_everything().await;
                    }
                    true
                }
                Some(pod) => {
                    self.last_pod = pod.clone();
                    if pod.metadata.deletion_timestamp.is_some() {
                        let t = Instant::now();
                        // A failed termination is retried on the next wake-up: never delete
                        // from the API what still runs.
                        if !self.terminated && self.terminate().await {
                            let deleting = Instant::now();
                            self.finish_deletion().await;
                            self.shared.metrics.stop_phase("api_delete", deleting.elapsed().as_secs_f64());
                            self.shared.metrics.stop_phase("total", t.elapsed().as_secs_f64());
                            // Upstream's order too: the pod leaves the API once its containers
                            // and sandbox are stopped; removing them is clean-up after.
                            self.remove_everything().await;
                        }
                        false
                    } else {
                        if let Err(e) = self.sync(&pod).await {
                            warn!(pod = %format!("{}/{}", self.namespace, self.name), error = %e, "sync failed");
                        }
                        false
                    }
                }
            };
            if done {
                debug!(pod = %self.name, "worker done");
                return;
            }
            let deadline = tokio::time::Instant::now() + self.next_wakeup();
            loop {
                tokio::select! {
                    changed = self.pod_rx.changed() => {
                        if changed.is_err() {
                            // The manager is gone (agent shutting down): leave pods running.
                            return;
                        }
                    }
                    _ = self.wake.notified() => {}
                    _ = self.runtime.notify.notified() => {
                        // What this worker made happen (a sandbox, a started container) the
                        // relist reports a moment later: already seen, nothing to do.
                        if self.runtime.fingerprint.load(Ordering::Acquire) == self.seen_fingerprint {
                            continue;
                        }
                    }
                    _ = tokio::time::sleep_until(deadline) => {}
                }
                break;
            }
        }
    }

    /// Sooner than the resync when a back-off ends before it.
    fn next_wakeup(&self) -> Duration {
        let now = Instant::now();
        self.pull_backoff
            .values()
            .map(|(until, _)| until.saturating_duration_since(now))
            .filter(|d| !d.is_zero())
            .chain(std::iter::once(RESYNC))
            .min()
            .unwrap_or(RESYNC)
            .max(Duration::from_millis(100))
    }

    /// Records how long a step of the pod's first start took (nothing once it was Ready).
    fn phase(&self, phase: &'static str, since: Instant) {
        self.phase_took(phase, since.elapsed());
    }

    /// Like [`PodWorker::phase`], with the duration.
    fn phase_took(&self, phase: &'static str, took: Duration) {
        if !self.reported_start {
            self.shared.metrics.start_phase(phase, took.as_secs_f64());
        }
    }

    fn ctx_ips(&self, sandbox: Option<&str>) -> Vec<String> {
        if host_network(&self.last_pod) {
            return vec![self.shared.node_ip.clone()];
        }
        sandbox
            .and_then(|id| self.sandbox_ip.get(id))
            .cloned()
            .unwrap_or_default()
    }

    async fn observe(&mut self) -> crate::cri::Result<Observed> {
        let cri = &self.shared.cri;
        let (sandboxes, list) = tokio::join!(
            cri.list_sandboxes(labels([(LABEL_POD_UID, &self.uid)])),
            cri.list_containers(labels([(LABEL_POD_UID, &self.uid)])),
        );
        let (sandboxes, mut list) = (sandboxes?, list?);
        self.seen_fingerprint = fingerprint(
            list.iter()
                .map(|c| (c.id.as_str(), c.state))
                .chain(sandboxes.iter().map(|s| (s.id.as_str(), sandbox_state_key(s.state)))),
        );
        self.status_cache.retain(|id, _| list.iter().any(|c| &c.id == id));
        list.sort_by_key(|c| std::cmp::Reverse(container_order(c)));
        let mut containers: HashMap<String, Vec<ContainerStatus>> = HashMap::new();
        for c in list {
            let name = c.labels.get(LABEL_CONTAINER_NAME).cloned().unwrap_or_default();
            let entry = containers.entry(name).or_default();
            if entry.len() >= 2 {
                // Only the latest two matter (current and lastState).
                if c.state != cri::ContainerState::ContainerRunning as i32 {
                    let _ = cri.remove_container(&c.id).await;
                }
                continue;
            }
            // A container's status changes only with its state: reuse the last one.
            if let Some(cached) = self.status_cache.get(&c.id).filter(|s| s.state == c.state) {
                entry.push(cached.clone());
                continue;
            }
            match cri.container_status(&c.id).await {
                Ok(s) => {
                    self.status_cache.insert(c.id.clone(), s.clone());
                    entry.push(s);
                }
                Err(e) => debug!(id = %c.id, error = %e, "container vanished"),
            }
        }
        Ok(Observed { sandboxes, containers })
    }

    fn view(&self, observed: &Observed, c: &Container) -> ContainerView {
        let list = observed.containers.get(&c.name);
        let current = list.and_then(|l| l.first()).cloned();
        let probes = current.as_ref().and_then(|s| {
            self.probes
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(&s.id)
                .copied()
        });
        ContainerView {
            previous: list.and_then(|l| l.get(1)).cloned(),
            probes,
            waiting: self.waiting.get(&c.name).cloned(),
            current,
        }
    }

    async fn ensure_sandbox(&mut self, pod: &Pod, observed: &Observed) -> Result<String, String> {
        let cri = &self.shared.cri;
        let ready = observed
            .sandboxes
            .iter()
            .filter(|s| s.state == PodSandboxState::SandboxReady as i32)
            .max_by_key(|s| s.created_at);
        if let Some(s) = ready {
            if !self.sandbox_ip.contains_key(&s.id) {
                let status = cri.sandbox_status(&s.id).await.map_err(|e| e.to_string())?;
                let ips = status
                    .network
                    .map(|n| {
                        std::iter::once(n.ip)
                            .chain(n.additional_ips.into_iter().map(|i| i.ip))
                            .filter(|ip| !ip.is_empty())
                            .collect()
                    })
                    .unwrap_or_default();
                self.sandbox_ip.insert(s.id.clone(), ips);
            }
            return Ok(s.id.clone());
        }
        self.acted = true;
        if !observed.sandboxes.is_empty() {
            self.shared.events.pod(pod, None, EventType::Normal, reason::SANDBOX_CHANGED, "Pod sandbox changed, it will be killed and re-created.".into());
        }
        for old in &observed.sandboxes {
            info!(pod = %self.name, sandbox = %old.id, "removing a sandbox that is not ready");
            let _ = cri.stop_sandbox(&old.id).await;
            let _ = cri.remove_sandbox(&old.id).await;
        }
        let attempt = observed
            .sandboxes
            .iter()
            .filter_map(|s| s.metadata.as_ref().map(|m| m.attempt + 1))
            .max()
            .unwrap_or(0);
        let config = crate::spec::sandbox_config(pod, attempt, &self.shared.pod_log_dir(&self.namespace, &self.name, &self.uid));
        let t = Instant::now();
        let id = cri.run_sandbox(config).await.map_err(|e| e.to_string())?;
        let status = cri.sandbox_status(&id).await.map_err(|e| e.to_string())?;
        let ips: Vec<String> = status
            .network
            .map(|n| {
                std::iter::once(n.ip)
                    .chain(n.additional_ips.into_iter().map(|i| i.ip))
                    .filter(|ip| !ip.is_empty())
                    .collect()
            })
            .unwrap_or_default();
        if let Some(hook) = self.shared.config.sandbox_network_hook.clone() {
            let _ = tokio::task::spawn_blocking(move || (hook.0)()).await;
        }
        self.phase("sandbox", t);
        info!(pod = %format!("{}/{}", self.namespace, self.name), sandbox = %id, ips = ?ips, "sandbox ready");
        self.sandbox_ip.insert(id.clone(), ips);
        Ok(id)
    }

    /// Pulls if needed, builds the config, creates and starts (recording `backoff`, the
    /// crash-loop back-off waited before this start, on the container); the reason it is
    /// waiting otherwise.
    async fn start_container(&mut self, pod: &Pod, c: &Container, attempt: u32, sandbox: &str, backoff: Duration) {
        let events = self.shared.events.clone();
        let event = |ty: EventType, why: &'static str, message: String| events.pod(pod, Some(&c.name), ty, why, message);
        let image = c.image.clone().unwrap_or_default();
        if let Some((until, _)) = self.pull_backoff.get(&c.name)
            && Instant::now() < *until
        {
            let message = format!("Back-off pulling image \"{image}\"");
            event(EventType::Normal, reason::BACK_OFF, message.clone());
            event(EventType::Warning, reason::FAILED, "Error: ImagePullBackOff".into());
            self.waiting.insert(c.name.clone(), Waiting { reason: "ImagePullBackOff".into(), message });
            return;
        }
        let ensured = match self.prefetched.remove(&c.name) {
            Some(ensured) => ensured,
            None => {
                let t = Instant::now();
                let ensured = ensure_image(&self.shared, pod, c).await;
                self.phase("image", t);
                ensured
            }
        };
        match ensured {
            Ok(ImageOutcome::Present) => {
                event(EventType::Normal, reason::PULLED, format!("Container image \"{image}\" already present on machine"));
            }
            Ok(ImageOutcome::Pulled(took)) => {
                let took = format!("{:.3}s", took.as_secs_f64());
                event(EventType::Normal, reason::PULLED, format!("Successfully pulled image \"{image}\" in {took} ({took} including waiting)"));
            }
            Err(failure) => {
                let last = self.pull_backoff.get(&c.name).map(|(_, d)| *d);
                let delay = match last {
                    None => BACKOFF_INITIAL,
                    Some(d) => (d * 2).min(BACKOFF_MAX),
                };
                self.pull_backoff.insert(c.name.clone(), (Instant::now() + delay, delay));
                warn!(pod = %self.name, container = %c.name, reason = failure.reason, message = %failure.message, "image not available");
                match failure.reason {
                    "ErrImageNeverPull" => event(EventType::Warning, reason::ERR_IMAGE_NEVER_PULL, failure.message.clone()),
                    "InvalidImageName" => {
                        event(EventType::Warning, reason::INSPECT_FAILED, format!("Failed to apply default image tag \"{image}\": {}", failure.message))
                    }
                    _ => event(EventType::Warning, reason::FAILED, failure.message.clone()),
                }
                event(EventType::Warning, reason::FAILED, format!("Error: {}", failure.reason));
                self.waiting.insert(c.name.clone(), Waiting { reason: failure.reason.into(), message: failure.message });
                return;
            }
        }
        self.pull_backoff.remove(&c.name);
        let ips = self.ctx_ips(Some(sandbox));
        let volumes_dir = self.shared.pod_dir(&self.uid).join("volumes");
        let ctx = PodContext {
            node_name: &self.shared.config.node_name,
            host_ip: &self.shared.node_ip,
            pod_ip: ips.first().map_or("", String::as_str),
            volumes_dir: &volumes_dir,
        };
        let mut config = match crate::spec::container_config(pod, c, attempt, &ctx, self.shared.objects.as_ref()) {
            Ok(config) => config,
            Err(e) => {
                event(EventType::Warning, reason::FAILED, format!("Error: {e}"));
                self.waiting.insert(c.name.clone(), Waiting { reason: "CreateContainerConfigError".into(), message: e.to_string() });
                return;
            }
        };
        config.annotations.insert(ANNOTATION_BACKOFF.into(), backoff.as_secs().to_string());
        let sandbox_config = crate::spec::sandbox_config(pod, 0, &self.shared.pod_log_dir(&self.namespace, &self.name, &self.uid));
        self.acted = true;
        let t = Instant::now();
        let created = self.shared.cri.create_container(sandbox, config, sandbox_config).await;
        self.phase("create_container", t);
        let id = match created {
            Ok(id) => id,
            Err(e) => {
                event(EventType::Warning, reason::FAILED, format!("Error: {}", e.message()));
                self.waiting.insert(c.name.clone(), Waiting { reason: "CreateContainerError".into(), message: e.message() });
                return;
            }
        };
        event(EventType::Normal, reason::CREATED, format!("Created container: {}", c.name));
        let t = Instant::now();
        let started = self.shared.cri.start_container(&id, &c.name).await;
        self.phase("start_container", t);
        match started {
            Ok(()) => {
                event(EventType::Normal, reason::STARTED, format!("Started container {}", c.name));
                info!(pod = %format!("{}/{}", self.namespace, self.name), container = %c.name, attempt, id = %id, "container started");
                self.waiting.remove(&c.name);
            }
            Err(e) => {
                event(EventType::Warning, reason::FAILED, format!("Error: {}", e.message()));
                self.waiting.insert(c.name.clone(), Waiting { reason: "RunContainerError".into(), message: e.message() });
            }
        }
    }

    /// Starts probes for running containers that have none yet; stops the
    /// probes of containers no longer running.
    fn manage_probes(&mut self, c: &Container, current: Option<&ContainerStatus>, address: &str) {
        let Some(s) = current.filter(|s| is_running(s)) else { return };
        if self.probe_tasks.contains_key(&s.id) {
            return;
        }
        if c.startup_probe.is_none() && c.readiness_probe.is_none() && c.liveness_probe.is_none() {
            self.probes.lock().unwrap_or_else(|e| e.into_inner()).insert(
                s.id.clone(),
                ProbeState { started: true, ready: true, unhealthy: false },
            );
            return;
        }
        let target = ProbeTarget {
            cri: self.shared.cri.clone(),
            container_id: s.id.clone(),
            address: address.to_owned(),
        };
        let task = tokio::spawn(crate::probes::run_container_probes(
            c.clone(),
            target,
            self.probes.clone(),
            self.wake.clone(),
            crate::probes::ProbeEvents { queue: self.shared.events.clone(), pod: self.last_pod.clone() },
        ));
        self.probe_tasks.insert(s.id.clone(), AbortOnDrop(task));
    }

    /// Handles one container whose runtime state is `current`: restart,
    /// back-off, liveness kill. Returns whether it is done (exited, no restart).
    async fn drive(&mut self, pod: &Pod, c: &Container, current: Option<ContainerStatus>, sandbox: &str, policy: &str) -> bool {
        match current {
            None => {
                self.start_container(pod, c, 0, sandbox, Duration::ZERO).await;
                false
            }
            Some(s) if is_running(&s) => {
                let unhealthy = self
                    .probes
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .get(&s.id)
                    .is_some_and(|p| p.unhealthy);
                if unhealthy {
                    info!(pod = %self.name, container = %c.name, "liveness probe failed: restarting the container");
                    self.shared.events.pod(pod, Some(&c.name), EventType::Normal, reason::KILLING, format!("Container {} failed liveness probe, will be restarted", c.name));
                    self.probe_tasks.remove(&s.id);
                    self.acted = true;
                    let grace = pod.spec.as_ref().and_then(|s| s.termination_grace_period_seconds).unwrap_or(30);
                    if let Err(e) = self.shared.cri.stop_container(&s.id, grace).await {
                        warn!(error = %e, "failed to stop an unhealthy container");
                    }
                    self.wake.notify_one();
                }
                false
            }
            Some(s) if is_exited(&s) => {
                self.probe_tasks.remove(&s.id);
                if !should_restart(policy, s.exit_code) {
                    self.waiting.remove(&c.name);
                    return true;
                }
                let (attempt, ran, started_after) = backoff_facts(&s);
                let delay = restart_delay(attempt, ran, started_after);
                let finished = jiff::Timestamp::from_nanosecond(s.finished_at as i128).unwrap_or(jiff::Timestamp::UNIX_EPOCH);
                let since = jiff::Timestamp::now().duration_since(finished);
                let waited = Duration::try_from(since).unwrap_or(Duration::ZERO);
                if waited >= delay {
                    self.start_container(pod, c, attempt + 1, sandbox, delay).await;
                } else {
                    self.shared.events.pod(
                        pod,
                        Some(&c.name),
                        EventType::Warning,
                        reason::BACK_OFF,
                        format!("Back-off restarting failed container {} in pod {}_{}({})", c.name, self.name, self.namespace, self.uid),
                    );
                    let remaining = delay - waited;
                    self.waiting.insert(c.name.clone(), Waiting {
                        reason: "CrashLoopBackOff".into(),
                        message: format!("back-off {}s restarting failed container={} pod={}_{}({})", delay.as_secs(), c.name, self.name, self.namespace, self.uid),
                    });
                    let wake = self.wake.clone();
                    tokio::spawn(async move {
                        tokio::time::sleep(remaining + Duration::from_millis(50)).await;
                        wake.notify_one();
                    });
                }
                false
            }
            Some(s) => {
                // Created but never started (a failed start): remove and retry.
                self.acted = true;
                let _ = self.shared.cri.remove_container(&s.id).await;
                self.wake.notify_one();
                false
            }
        }
    }

    async fn sync(&mut self, pod: &Pod) -> Result<(), String> {
        self.acted = false;
        self.prefetched.clear();
        let t = Instant::now();
        let observed = self.observe().await.map_err(|e| e.to_string())?;
        self.phase("observe", t);
        let spec = pod.spec.clone().unwrap_or_default();
        let init_specs: Vec<Container> = spec.init_containers.clone().unwrap_or_default();
        let main_specs: Vec<Container> = spec.containers.clone();
        let policy = restart_policy(pod).to_owned();

        let current_views = |w: &Self, o: &Observed| -> (Vec<ContainerView>, Vec<ContainerView>) {
            (
                init_specs.iter().map(|c| w.view(o, c)).collect(),
                main_specs.iter().map(|c| w.view(o, c)).collect(),
            )
        };
        let (init, main) = current_views(self, &observed);
        let phase = crate::status::phase(&policy, &init, &main);
        if phase.is_terminal() {
            // Finished: stop the sandbox (network, pause), keep the containers for logs.
            for s in observed.sandboxes.iter().filter(|s| s.state == PodSandboxState::SandboxReady as i32) {
                let _ = self.shared.cri.stop_sandbox(&s.id).await;
            }
            self.probe_tasks.clear();
            let sandbox = observed.sandboxes.iter().max_by_key(|s| s.created_at).map(|s| s.id.clone());
            return self.report(pod, &observed, sandbox.as_deref()).await;
        }
        if self.start_time.is_none() {
            self.start_time = Some(now_rfc3339());
        }
        // Independent of the sandbox, so done while it is made: the tokens of projected
        // volumes and the images of the containers this sync will start.
        let shared = self.shared.clone();
        let now = Instant::now();
        let images: Vec<&Container> = containers_to_start(&init_specs, &main_specs, &observed)
            .into_iter()
            .filter(|c| self.pull_backoff.get(&c.name).is_none_or(|(until, _)| now >= *until))
            .collect();
        let (sandbox, (tokens, tokens_took), (images, images_took)) = tokio::join!(
            self.ensure_sandbox(pod, &observed),
            async {
                let t = Instant::now();
                (fetch_tokens(&shared, pod).await, t.elapsed())
            },
            async {
                let t = Instant::now();
                let checks = images.iter().map(|c| async { (c.name.clone(), ensure_image(&shared, pod, c).await) });
                (futures::future::join_all(checks).await, t.elapsed())
            },
        );
        self.phase_took("tokens", tokens_took);
        if !images.is_empty() {
            self.phase_took("image", images_took);
        }
        self.prefetched.extend(images);
        let sandbox = match sandbox {
            Ok(id) => id,
            Err(e) => {
                self.shared.events.pod(pod, None, EventType::Warning, reason::FAILED_CREATE_POD_SANDBOX, format!("Failed to create pod sandbox: {e}"));
                warn!(pod = %format!("{}/{}", self.namespace, self.name), error = %e, "failed to create the pod sandbox");
                for c in init_specs.iter().chain(&main_specs) {
                    self.waiting.insert(c.name.clone(), Waiting { reason: "ContainerCreating".into(), message: format!("failed to create the pod sandbox: {e}") });
                }
                self.report(pod, &observed, None).await?;
                return Err(e);
            }
        };
        let ips = self.ctx_ips(Some(&sandbox));
        let volumes_dir = self.shared.pod_dir(&self.uid).join("volumes");
        let ctx = PodContext {
            node_name: &self.shared.config.node_name,
            host_ip: &self.shared.node_ip,
            pod_ip: ips.first().map_or("", String::as_str),
            volumes_dir: &volumes_dir,
        };
        let t = Instant::now();
        let volumes = match tokens {
            Ok(tokens) => crate::volumes::prepare_volumes(pod, &ctx, self.shared.objects.as_ref(), &tokens),
            Err(e) => Err(e),
        };
        self.phase("volumes", t);
        if let Err(e) = volumes {
            // Not a crash: the pod waits in ContainerCreating and the volumes are tried again.
            warn!(pod = %format!("{}/{}", self.namespace, self.name), error = %e, "volumes not ready");
            self.shared.events.pod(pod, None, EventType::Warning, reason::FAILED_MOUNT, e.to_string());
            for c in init_specs.iter().chain(&main_specs) {
                if observed.containers.get(&c.name).is_none_or(Vec::is_empty) {
                    self.waiting.insert(c.name.clone(), Waiting { reason: "ContainerCreating".into(), message: e.to_string() });
                }
            }
            let wake = self.wake.clone();
            tokio::spawn(async move {
                tokio::time::sleep(VOLUME_RETRY).await;
                wake.notify_one();
            });
            return self.report(pod, &observed, Some(&sandbox)).await;
        }
        let address = ips.first().cloned().unwrap_or_else(|| self.shared.node_ip.clone());

        // Init containers, in order: each must succeed before the next starts.
        let mut init_complete = true;
        for c in &init_specs {
            let current = observed.containers.get(&c.name).and_then(|l| l.first()).cloned();
            if let Some(s) = &current
                && is_exited(s)
                && s.exit_code == 0
            {
                self.waiting.remove(&c.name);
                continue;
            }
            init_complete = false;
            match &current {
                Some(s) if is_exited(s) && policy == "Never" => {}
                _ => {
                    let init_policy = if policy == "Never" { "Never" } else { "OnFailure" };
                    self.drive(pod, c, current, &sandbox, init_policy).await;
                }
            }
            break;
        }
        if init_complete {
            for c in &main_specs {
                let current = observed.containers.get(&c.name).and_then(|l| l.first()).cloned();
                self.manage_probes(c, current.as_ref(), &address);
                self.drive(pod, c, current, &sandbox, &policy).await;
            }
        }
        // Report what the runtime shows now (containers just started included); when this
        // sync changed nothing, that is what it observed.
        let observed = if self.acted {
            let t = Instant::now();
            let observed = self.observe().await.map_err(|e| e.to_string())?;
            self.phase("observe", t);
            observed
        } else {
            observed
        };
        for c in &main_specs {
            let current = observed.containers.get(&c.name).and_then(|l| l.first()).cloned();
            self.manage_probes(c, current.as_ref(), &address);
        }
        let live: Vec<String> = observed.containers.values().flatten().filter(|s| is_running(s)).map(|s| s.id.clone()).collect();
        self.probe_tasks.retain(|id, _| live.contains(id));
        self.probes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|id, _| live.contains(id));
        self.report(pod, &observed, Some(&sandbox)).await
    }

    async fn report(&mut self, pod: &Pod, observed: &Observed, sandbox: Option<&str>) -> Result<(), String> {
        let spec = pod.spec.clone().unwrap_or_default();
        let init: Vec<ContainerView> = spec.init_containers.iter().flatten().map(|c| self.view(observed, c)).collect();
        let main: Vec<ContainerView> = spec.containers.iter().map(|c| self.view(observed, c)).collect();
        let ips = self.ctx_ips(sandbox);
        let now = now_rfc3339();
        let facts = PodFacts {
            host_ip: &self.shared.node_ip,
            pod_ips: &ips,
            start_time: self.start_time.as_deref(),
            since: &self.since,
            now: &now,
        };
        let (status, conds) = crate::status::pod_status(pod, &init, &main, &facts);
        for (ty, ok) in conds {
            let keep = self.since.get(&ty).is_some_and(|(was, _)| *was == ok);
            if !keep {
                self.since.insert(ty, (ok, now.clone()));
            }
        }
        if self.last_status.as_ref() == Some(&status) {
            return Ok(());
        }
        let api: Api<Pod> = Api::namespaced(self.shared.client.clone(), &self.namespace);
        let t = Instant::now();
        let patched = api
            .patch_status(&self.name, &PatchParams::default(), &Patch::Merge(&json!({"status": status})))
            .await;
        self.phase("status", t);
        match patched {
            Ok(_) => {
                if !self.reported_start && status["conditions"][3]["status"] == "True" {
                    self.phase("total", self.created);
                    self.reported_start = true;
                    self.shared.metrics.pod_start_seconds.observe(self.created.elapsed().as_secs_f64());
                }
                self.last_status = Some(status);
                Ok(())
            }
            Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
            Err(e) => Err(format!("failed to update the status of pod {}/{}: {e}", self.namespace, self.name)),
        }
    }

    /// Stops every container (preStop, stop signal, SIGKILL after the grace
    /// period), removes the sandboxes and the pod's directories.
    async fn terminate(&mut self) -> bool {
        let began = Instant::now();
        let grace = grace_seconds(&self.last_pod);
        self.probe_tasks.clear();
        let cri = self.shared.cri.clone();
        let observed = match self.observe().await {
            Ok(o) => o,
            Err(e) => {
                warn!(pod = %self.name, error = %e, "cannot list the pod's containers to stop them");
                return false;
            }
        };
        for s in observed.containers.values().flatten().filter(|s| is_running(s)) {
            let name = s.metadata.as_ref().map(|m| m.name.as_str()).unwrap_or_default();
            self.shared.events.pod(&self.last_pod, Some(name), EventType::Normal, reason::KILLING, format!("Stopping container {name}"));
        }
        let deadline = Instant::now() + Duration::from_secs(grace as u64);
        let specs: Vec<Container> = self.last_pod.spec.iter().flat_map(|s| s.init_containers.iter().flatten().chain(s.containers.iter())).cloned().collect();
        let stops = observed.containers.values().flatten().filter(|s| is_running(s)).map(|s| {
            let cri = cri.clone();
            let spec = specs.iter().find(|c| Some(&c.name) == s.metadata.as_ref().map(|m| &m.name)).cloned();
            let id = s.id.clone();
            let address = self.ctx_ips(observed.sandboxes.first().map(|s| s.id.as_str())).first().cloned().unwrap_or_default();
            async move {
                if let Some(pre) = spec.as_ref().and_then(|c| c.lifecycle.as_ref()).and_then(|l| l.pre_stop.as_ref()) {
                    let budget = deadline.saturating_duration_since(Instant::now());
                    if let Some(exec) = &pre.exec {
                        let cmd = exec.command.clone().unwrap_or_default();
                        let _ = tokio::time::timeout(budget, cri.exec_sync(&id, cmd, budget.max(Duration::from_secs(1)))).await;
                    } else if let Some(http) = &pre.http_get {
                        let probe = k8s_openapi::api::core::v1::Probe {
                            http_get: Some(http.clone()),
                            timeout_seconds: Some(budget.as_secs().max(1) as i32),
                            ..Default::default()
                        };
                        let target = ProbeTarget { cri: cri.clone(), container_id: id.clone(), address };
                        let c = spec.clone().unwrap_or_default();
                        let _ = tokio::time::timeout(budget, crate::probes::run_once(&probe, &c, &target)).await;
                    } else if let Some(sleep) = &pre.sleep {
                        tokio::time::sleep(Duration::from_secs(sleep.seconds.max(0) as u64).min(budget)).await;
                    }
                }
                // Whole seconds, rounded up: never less than the grace period.
                let remaining = deadline.saturating_duration_since(Instant::now()).as_secs_f64().ceil() as i64;
                if let Err(e) = cri.stop_container(&id, remaining).await {
                    warn!(id = %id, error = %e, "failed to stop container");
                }
            }
        });
        futures::future::join_all(stops).await;
        self.shared.metrics.stop_phase("containers", began.elapsed().as_secs_f64());
        let t = Instant::now();
        let stops = observed.sandboxes.iter().filter(|s| s.state == PodSandboxState::SandboxReady as i32).map(|s| {
            let cri = cri.clone();
            async move {
                if let Err(e) = cri.stop_sandbox(&s.id).await {
                    warn!(sandbox = %s.id, error = %e, "failed to stop sandbox");
                }
            }
        });
        futures::future::join_all(stops).await;
        self.shared.metrics.stop_phase("sandboxes", t.elapsed().as_secs_f64());
        self.terminated = true;
        info!(pod = %format!("{}/{}", self.namespace, self.name), grace, "pod terminated");
        true
    }

    /// After termination: removes the pod's sandboxes (their containers with them) and its
    /// directories.
    async fn remove_everything(&mut self) {
        // Clean-up of pods already gone from the API waits its turn, so that a burst of
        // deletions leaves the runtime's CPU to the pods still stopping or starting.
        static REMOVALS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(1);
        let _turn = REMOVALS.acquire().await;
        let t = Instant::now();
        let cri = &self.shared.cri;
        match cri.list_sandboxes(labels([(LABEL_POD_UID, &self.uid)])).await {
            Ok(sandboxes) => {
                let removals = sandboxes.iter().map(|s| async move {
                    if let Err(e) = cri.remove_sandbox(&s.id).await {
                        warn!(sandbox = %s.id, error = %e, "failed to remove sandbox");
                    }
                });
                futures::future::join_all(removals).await;
            }
            Err(e) => warn!(pod = %self.name, error = %e, "cannot list the pod's sandboxes to remove them"),
        }
        let _ = std::fs::remove_dir_all(self.shared.pod_dir(&self.uid));
        let _ = std::fs::remove_dir_all(self.shared.pod_log_dir(&self.namespace, &self.name, &self.uid));
        self.shared.tokens.forget_pod(&self.uid);
        self.shared.metrics.stop_phase("remove", t.elapsed().as_secs_f64());
    }

    /// After termination, removes the pod from the API (grace 0).
    async fn finish_deletion(&self) {
        let api: Api<Pod> = Api::namespaced(self.shared.client.clone(), &self.namespace);
        let params = DeleteParams {
            grace_period_seconds: Some(0),
            preconditions: Some(Preconditions { uid: Some(self.uid.clone()), resource_version: None }),
            ..Default::default()
        };
        match api.delete(&self.name, &params).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => {}
            Err(e) => warn!(pod = %self.name, error = %e, "failed to remove the terminated pod from the API"),
        }
    }
}

/// The containers a sync would start now: the first unfinished init container if it has
/// not run yet, else (init done) every container that has not run yet.
fn containers_to_start<'a>(init: &'a [Container], main: &'a [Container], observed: &Observed) -> Vec<&'a Container> {
    let never_ran = |c: &Container| observed.containers.get(&c.name).is_none_or(Vec::is_empty);
    let pending_init = init.iter().find(|c| {
        !observed
            .containers
            .get(&c.name)
            .and_then(|l| l.first())
            .is_some_and(|s| is_exited(s) && s.exit_code == 0)
    });
    match pending_init {
        Some(c) => never_ran(c).then_some(c).into_iter().collect(),
        None => main.iter().filter(|c| never_ran(c)).collect(),
    }
}

/// Ensures the image of `c` per its pull policy, telling `Pulling` before a pull.
async fn ensure_image(shared: &Shared, pod: &Pod, c: &Container) -> Result<ImageOutcome, ImageFailure> {
    let policy = c.image_pull_policy.clone().unwrap_or_else(|| "IfNotPresent".into());
    let image = c.image.clone().unwrap_or_default();
    crate::images::ensure_image(&shared.cri, &image, &policy, || {
        shared.events.pod(pod, Some(&c.name), EventType::Normal, reason::PULLING, format!("Pulling image \"{image}\""));
    })
    .await
}

/// The tokens of the pod's projected volumes (cached ones unless due for renewal).
async fn fetch_tokens(shared: &Shared, pod: &Pod) -> Result<crate::volumes::Tokens, crate::spec::ConfigError> {
    let mut tokens = crate::volumes::Tokens::new();
    for (slot, key) in crate::volumes::token_requests(pod) {
        let token = shared
            .tokens
            .get(&shared.client, &key)
            .await
            .map_err(|e| crate::spec::ConfigError::Mount { volume: slot.0.clone(), message: e.to_string() })?;
        tokens.insert(slot, token);
    }
    Ok(tokens)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_five_minutes() {
        let mut prev = None;
        let mut seen = Vec::new();
        for _ in 0..8 {
            let d = next_backoff(prev);
            seen.push(d.as_secs());
            prev = Some(d);
        }
        assert_eq!(seen, vec![0, 10, 20, 40, 80, 160, 300, 300]);
    }

    #[test]
    fn crash_loop_back_off_comes_from_what_the_runtime_keeps() {
        let s = |n| Duration::from_secs(n);
        let short = s(1);
        // (attempt of the exited container, how long it ran, back-off it started after) → delay
        let table = [
            (0, short, Some(0), 0),   // the first crash restarts at once
            (1, short, Some(0), 10),  // then 10 s
            (2, short, Some(10), 20), // doubling
            (5, short, Some(160), 300),
            (9, short, Some(300), 300), // at most 5 min
            // Containers of an agent that kept no annotation: from the attempt number.
            (0, short, None, 0),
            (1, short, None, 10),
            (3, short, None, 40),
            (40, short, None, 300),
            // A container that ran 10 minutes resets the back-off, whatever came before.
            (7, s(600), Some(300), 0),
            (7, s(600), None, 0),
        ];
        for (attempt, ran, after, want) in table {
            assert_eq!(restart_delay(attempt, ran, after.map(s)), s(want), "attempt {attempt}, ran {ran:?}, after {after:?}");
        }
        // The sequence a crash loop walks, each start recording its back-off.
        let mut after = Some(Duration::ZERO);
        let walked: Vec<u64> = (0..7u32)
            .map(|attempt| {
                let d = restart_delay(attempt, short, after);
                after = Some(d);
                d.as_secs()
            })
            .collect();
        assert_eq!(walked, vec![0, 10, 20, 40, 80, 160, 300]);
    }

    #[test]
    fn the_back_off_a_container_started_after_is_read_back_from_its_annotation() {
        let mut status = ContainerStatus {
            metadata: Some(cri::ContainerMetadata { name: "c".into(), attempt: 3 }),
            started_at: 1_000_000_000,
            finished_at: 3_500_000_000,
            ..Default::default()
        };
        status.annotations.insert(ANNOTATION_BACKOFF.into(), "20".into());
        assert_eq!(backoff_facts(&status), (3, Duration::from_millis(2500), Some(Duration::from_secs(20))));
        status.annotations.clear();
        assert_eq!(backoff_facts(&status).2, None);
    }

    #[test]
    fn fingerprints_ignore_order_and_see_every_state_change() {
        let a = fingerprint([("c1", 1), ("s1", sandbox_state_key(0))]);
        assert_eq!(a, fingerprint([("s1", sandbox_state_key(0)), ("c1", 1)]));
        assert_ne!(a, fingerprint([("c1", 2), ("s1", sandbox_state_key(0))]), "a container changed state");
        assert_ne!(a, fingerprint([("c1", 1)]), "the sandbox is gone");
        assert_ne!(a, fingerprint([("c1", 1), ("c2", 0), ("s1", sandbox_state_key(0))]), "a new container");
    }

    #[test]
    fn only_the_containers_about_to_start_have_their_images_checked_early() {
        let c = |name: &str| Container { name: name.into(), ..Default::default() };
        let exited = |code| ContainerStatus { state: cri::ContainerState::ContainerExited as i32, exit_code: code, ..Default::default() };
        let (init, main) = (vec![c("i1"), c("i2")], vec![c("a"), c("b")]);
        let names = |v: Vec<&Container>| v.iter().map(|c| c.name.clone()).collect::<Vec<_>>();
        let mut observed = Observed::default();
        assert_eq!(names(containers_to_start(&init, &main, &observed)), ["i1"]);
        observed.containers.insert("i1".into(), vec![exited(1)]);
        assert!(containers_to_start(&init, &main, &observed).is_empty(), "i1 failed: it restarts, nothing new starts");
        observed.containers.insert("i1".into(), vec![exited(0)]);
        assert_eq!(names(containers_to_start(&init, &main, &observed)), ["i2"]);
        observed.containers.insert("i2".into(), vec![exited(0)]);
        assert_eq!(names(containers_to_start(&init, &main, &observed)), ["a", "b"]);
        observed.containers.insert("a".into(), vec![exited(0)]);
        assert_eq!(names(containers_to_start(&[], &main, &observed)), ["b"]);
    }
}
