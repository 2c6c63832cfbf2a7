//! One worker per pod: a level-triggered sync loop that drives the runtime
//! towards the pod spec (sandbox, volumes, init containers in order,
//! containers with restart policy and crash-loop back-off, probes) and
//! reports the pod's status; on deletion, graceful termination (preStop,
//! stop signal, SIGKILL after the grace period) and removal of everything
//! the pod had in the runtime and on disk.

use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, Instant},
};

use k8s_cri::v1::{self as cri, ContainerStatus, PodSandboxState};
use k8s_openapi::api::core::v1::{Container, Pod};
use kube::api::{Api, DeleteParams, Patch, PatchParams, Preconditions};
use serde_json::{Value, json};
use tokio::{sync::{Notify, watch}, task::JoinHandle};
use tracing::{debug, info, warn};

use crate::{
    cri::{LABEL_CONTAINER_NAME, LABEL_POD_UID, container_order, labels},
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

/// The next back-off after `previous` (None: no restart yet, so none).
pub fn next_backoff(previous: Option<Duration>) -> Duration {
    match previous {
        None => Duration::ZERO,
        Some(d) if d.is_zero() => BACKOFF_INITIAL,
        Some(d) => (d * 2).min(BACKOFF_MAX),
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
    /// Wakes the worker (runtime events, probe results).
    pub wake: Arc<Notify>,
    /// The worker task.
    pub task: JoinHandle<()>,
}

/// Starts the worker of `pod`.
pub fn spawn(shared: Arc<Shared>, pod: Pod) -> WorkerHandle {
    let (tx, rx) = watch::channel(Some(pod.clone()));
    let wake = Arc::new(Notify::new());
    let mut worker = PodWorker::new(shared, pod, rx, wake.clone());
    let task = tokio::spawn(async move { worker.run().await });
    WorkerHandle { pod: tx, wake, task }
}

struct PodWorker {
    shared: Arc<Shared>,
    uid: String,
    name: String,
    namespace: String,
    pod_rx: watch::Receiver<Option<Pod>>,
    last_pod: Pod,
    wake: Arc<Notify>,
    probes: ProbeResults,
    probe_tasks: HashMap<String, AbortOnDrop>,
    /// Back-off last used per container name (crash loops).
    crash_backoff: HashMap<String, Duration>,
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
    fn new(shared: Arc<Shared>, pod: Pod, pod_rx: watch::Receiver<Option<Pod>>, wake: Arc<Notify>) -> Self {
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
            probes: ProbeResults::default(),
            probe_tasks: HashMap::new(),
            crash_backoff: HashMap::new(),
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
        loop {
            let pod = self.pod_rx.borrow_and_update().clone();
            let done = match pod {
                None => {
                    self.terminate().await;
                    true
                }
                Some(pod) => {
                    self.last_pod = pod.clone();
                    if pod.metadata.deletion_timestamp.is_some() {
                        if !self.terminated {
                            self.terminate().await;
                            self.finish_deletion().await;
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
            let wakeup = self.next_wakeup();
            tokio::select! {
                changed = self.pod_rx.changed() => {
                    if changed.is_err() {
                        // The manager is gone (agent shutting down): leave pods running.
                        return;
                    }
                }
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(wakeup) => {}
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

    fn ctx_ips(&self, sandbox: Option<&str>) -> Vec<String> {
        if host_network(&self.last_pod) {
            return vec![self.shared.node_ip.clone()];
        }
        sandbox
            .and_then(|id| self.sandbox_ip.get(id))
            .cloned()
            .unwrap_or_default()
    }

    async fn observe(&self) -> crate::cri::Result<Observed> {
        let cri = &self.shared.cri;
        let sandboxes = cri.list_sandboxes(labels([(LABEL_POD_UID, &self.uid)])).await?;
        let mut list = cri.list_containers(labels([(LABEL_POD_UID, &self.uid)])).await?;
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
            match cri.container_status(&c.id).await {
                Ok(s) => entry.push(s),
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
        info!(pod = %format!("{}/{}", self.namespace, self.name), sandbox = %id, ips = ?ips, "sandbox ready");
        self.sandbox_ip.insert(id.clone(), ips);
        Ok(id)
    }

    /// Pulls if needed, builds the config, creates and starts; the reason
    /// it is waiting otherwise.
    async fn start_container(&mut self, pod: &Pod, c: &Container, attempt: u32, sandbox: &str) {
        let policy = c.image_pull_policy.clone().unwrap_or_else(|| "IfNotPresent".into());
        let image = c.image.clone().unwrap_or_default();
        if let Some((until, _)) = self.pull_backoff.get(&c.name)
            && Instant::now() < *until
        {
            let message = format!("Back-off pulling image \"{image}\"");
            self.waiting.insert(c.name.clone(), Waiting { reason: "ImagePullBackOff".into(), message });
            return;
        }
        if let Err(failure) = crate::images::ensure_image(&self.shared.cri, &image, &policy).await {
            let last = self.pull_backoff.get(&c.name).map(|(_, d)| *d);
            let delay = match last {
                None => BACKOFF_INITIAL,
                Some(d) => (d * 2).min(BACKOFF_MAX),
            };
            self.pull_backoff.insert(c.name.clone(), (Instant::now() + delay, delay));
            warn!(pod = %self.name, container = %c.name, reason = failure.reason, message = %failure.message, "image not available");
            self.waiting.insert(c.name.clone(), Waiting { reason: failure.reason.into(), message: failure.message });
            return;
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
        let config = match crate::spec::container_config(pod, c, attempt, &ctx, self.shared.objects.as_ref()) {
            Ok(config) => config,
            Err(e) => {
                self.waiting.insert(c.name.clone(), Waiting { reason: "CreateContainerConfigError".into(), message: e.to_string() });
                return;
            }
        };
        let sandbox_config = crate::spec::sandbox_config(pod, 0, &self.shared.pod_log_dir(&self.namespace, &self.name, &self.uid));
        match self.shared.cri.create_and_start(sandbox, config, sandbox_config).await {
            Ok(id) => {
                info!(pod = %format!("{}/{}", self.namespace, self.name), container = %c.name, attempt, id = %id, "container started");
                self.waiting.remove(&c.name);
            }
            Err(e) => {
                let reason = if e.to_string().starts_with("failed to start") { "RunContainerError" } else { "CreateContainerError" };
                self.waiting.insert(c.name.clone(), Waiting { reason: reason.into(), message: e.message() });
            }
        }
    }

    /// The tokens of the pod's projected volumes (cached ones unless due for renewal).
    async fn fetch_tokens(&self, pod: &Pod) -> Result<crate::volumes::Tokens, crate::spec::ConfigError> {
        let mut tokens = crate::volumes::Tokens::new();
        for (slot, key) in crate::volumes::token_requests(pod) {
            let token = self
                .shared
                .tokens
                .get(&self.shared.client, &key)
                .await
                .map_err(|e| crate::spec::ConfigError::Mount { volume: slot.0.clone(), message: e.to_string() })?;
            tokens.insert(slot, token);
        }
        Ok(tokens)
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
        ));
        self.probe_tasks.insert(s.id.clone(), AbortOnDrop(task));
    }

    /// Handles one container whose runtime state is `current`: restart,
    /// back-off, liveness kill. Returns whether it is done (exited, no restart).
    async fn drive(&mut self, pod: &Pod, c: &Container, current: Option<ContainerStatus>, sandbox: &str, policy: &str) -> bool {
        match current {
            None => {
                self.start_container(pod, c, 0, sandbox).await;
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
                    self.probe_tasks.remove(&s.id);
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
                let ran = Duration::from_nanos((s.finished_at - s.started_at).max(0) as u64);
                let previous = if ran >= BACKOFF_RESET { None } else { self.crash_backoff.get(&c.name).copied() };
                let delay = next_backoff(previous);
                let finished = jiff::Timestamp::from_nanosecond(s.finished_at as i128).unwrap_or(jiff::Timestamp::UNIX_EPOCH);
                let since = jiff::Timestamp::now().duration_since(finished);
                let waited = Duration::try_from(since).unwrap_or(Duration::ZERO);
                if waited >= delay {
                    let attempt = s.metadata.as_ref().map_or(0, |m| m.attempt) + 1;
                    self.crash_backoff.insert(c.name.clone(), delay);
                    self.start_container(pod, c, attempt, sandbox).await;
                } else {
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
                let _ = self.shared.cri.remove_container(&s.id).await;
                self.wake.notify_one();
                false
            }
        }
    }

    async fn sync(&mut self, pod: &Pod) -> Result<(), String> {
        let observed = self.observe().await.map_err(|e| e.to_string())?;
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
        let sandbox = match self.ensure_sandbox(pod, &observed).await {
            Ok(id) => id,
            Err(e) => {
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
        let volumes = match self.fetch_tokens(pod).await {
            Ok(tokens) => crate::volumes::prepare_volumes(pod, &ctx, self.shared.objects.as_ref(), &tokens),
            Err(e) => Err(e),
        };
        if let Err(e) = volumes {
            // Not a crash: the pod waits in ContainerCreating and the volumes are tried again.
            warn!(pod = %format!("{}/{}", self.namespace, self.name), error = %e, "volumes not ready");
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
        // Report what the runtime shows now (containers just started included).
        let observed = self.observe().await.map_err(|e| e.to_string())?;
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
        match api
            .patch_status(&self.name, &PatchParams::default(), &Patch::Merge(&json!({"status": status})))
            .await
        {
            Ok(_) => {
                if !self.reported_start && status["conditions"][3]["status"] == "True" {
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
    async fn terminate(&mut self) {
        let grace = grace_seconds(&self.last_pod);
        self.probe_tasks.clear();
        let cri = self.shared.cri.clone();
        let observed = match self.observe().await {
            Ok(o) => o,
            Err(e) => {
                warn!(pod = %self.name, error = %e, "cannot list the pod's containers to stop them");
                return;
            }
        };
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
        for s in &observed.sandboxes {
            if let Err(e) = cri.stop_sandbox(&s.id).await {
                warn!(sandbox = %s.id, error = %e, "failed to stop sandbox");
            }
            if let Err(e) = cri.remove_sandbox(&s.id).await {
                warn!(sandbox = %s.id, error = %e, "failed to remove sandbox");
            }
        }
        let _ = std::fs::remove_dir_all(self.shared.pod_dir(&self.uid));
        let _ = std::fs::remove_dir_all(self.shared.pod_log_dir(&self.namespace, &self.name, &self.uid));
        self.shared.tokens.forget_pod(&self.uid);
        self.terminated = true;
        info!(pod = %format!("{}/{}", self.namespace, self.name), grace, "pod terminated");
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
}
