//! The scheduler: watches feed the [`Cache`] and the [`SchedulingQueue`]; one loop pops a
//! pod, runs the profile's plugins over the nodes under the cache lock (no API reads),
//! assumes the pod on the chosen node and hands the binding to a task, so several bindings
//! are in flight while the next pods are scheduled.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{Node, ObjectReference, Pod};
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::runtime::watcher::{self, Event as WatchEvent};
use kube::runtime::WatchStreamExt;
use kube::Client;
use prometheus_client::registry::Registry;
use tokio::sync::{Notify, Semaphore, mpsc};
use tokio::task::JoinSet;
use tracing::{debug, info, warn};

use coxswain_runtime::events::{EventType, Recorder};

use crate::cache::{Cache, NodeInfo, PodInfo, PodKey, pod_key};
use crate::config::SchedulerConfig;
use crate::error::{Error, Result};
use crate::framework::{
    ClusterEvents, Code, CycleState, Diagnosis, Extension, PostFilterResult, Profile,
};
use crate::metrics::{Metrics, QueueLabel};
use crate::plugins::default_profile;
use crate::queue::SchedulingQueue;

/// The component name on Events.
pub const COMPONENT: &str = "default-scheduler";

/// Places pending pods on nodes. Build with [`Scheduler::new`], adjust plugins with
/// [`Scheduler::with_plugin`] or [`Scheduler::with_profile`], then [`Scheduler::run`].
pub struct Scheduler {
    client: Client,
    config: SchedulerConfig,
    profile: Profile,
    metrics: Metrics,
}

impl std::fmt::Debug for Scheduler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scheduler")
            .field("config", &self.config)
            .field("profile", &self.profile)
            .finish_non_exhaustive()
    }
}

/// What one scheduling cycle decided.
enum Outcome {
    Scheduled { node: Arc<str>, evaluated: usize, feasible: usize },
    Unschedulable { diagnosis: Diagnosis, post_filter: PostFilterResult },
    Error(String),
    /// Bound or assumed already (a duplicate queue entry): nothing to do.
    Skip,
}

/// An Event to write, through the recorder's bounded buffer.
struct EventToRecord {
    object: ObjectReference,
    event_type: EventType,
    reason: &'static str,
    message: String,
}

/// State shared by the watch handlers, the scheduling loop and the binding tasks. Lock
/// order: cache, then queue.
struct Shared {
    client: Client,
    config: SchedulerConfig,
    profile: Profile,
    metrics: Metrics,
    cache: Mutex<Cache>,
    queue: Mutex<SchedulingQueue>,
    /// Wakes the scheduling loop when pods become active.
    wake: Notify,
    /// Where the next cycle starts looking for nodes (round robin, as upstream).
    next_start: AtomicUsize,
    events: mpsc::Sender<EventToRecord>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock leaves consistent-enough state for a scheduler that
    // recomputes everything from watches; keep going rather than poison every caller.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Scheduler {
    /// A scheduler with upstream's default plugins, binding through `client`.
    pub fn new(client: Client, config: SchedulerConfig) -> Scheduler {
        Scheduler {
            profile: default_profile(client.clone()),
            client,
            config,
            metrics: Metrics::default(),
        }
    }

    /// Adds a plugin, replacing the built-in of the same name at that extension point.
    pub fn with_plugin(mut self, extension: Extension) -> Scheduler {
        self.profile = self.profile.with(extension);
        self
    }

    /// Replaces the whole profile.
    pub fn with_profile(mut self, profile: Profile) -> Scheduler {
        self.profile = profile;
        self
    }

    /// The plugins in use.
    pub fn profile(&self) -> &Profile {
        &self.profile
    }

    /// Registers the `scheduler_*` metrics.
    pub fn register_metrics(&self, registry: &mut Registry) {
        self.metrics.register(registry);
    }

    /// Schedules until the returned future is dropped.
    pub async fn run(self) -> Result<()> {
        if self.config.max_binds_in_flight == 0 {
            return Err(Error::InvalidConfig("max_binds_in_flight must be at least 1".into()));
        }
        let plugin_events: HashMap<&'static str, ClusterEvents> =
            self.profile.plugin_events();
        let queue = SchedulingQueue::new(
            self.profile.queue_sort.clone(),
            plugin_events,
            self.config.initial_backoff,
            self.config.max_backoff,
            self.config.max_unschedulable_duration,
        );
        let (events_tx, events_rx) = mpsc::channel(self.config.event_buffer.max(1));
        let shared = Arc::new(Shared {
            client: self.client.clone(),
            config: self.config,
            profile: self.profile,
            metrics: self.metrics,
            cache: Mutex::new(Cache::new()),
            queue: Mutex::new(queue),
            wake: Notify::new(),
            next_start: AtomicUsize::new(0),
            events: events_tx,
        });
        let recorder = Recorder::new(self.client, COMPONENT, None);
        let nodes_synced = Arc::new(Notify::new());
        let pods_synced = Arc::new(Notify::new());
        info!(scheduler = %shared.config.scheduler_name, profile = ?shared.profile, "scheduler starting");
        // Separate tasks, so watch decoding and scheduling use different cores; aborted
        // when this future is dropped.
        let mut tasks = [
            AbortOnDrop(tokio::spawn(watch_nodes(shared.clone(), nodes_synced.clone()))),
            AbortOnDrop(tokio::spawn(watch_pods(shared.clone(), pods_synced.clone()))),
            AbortOnDrop(tokio::spawn(async move {
                write_events(recorder, events_rx).await;
                Ok(())
            })),
            AbortOnDrop(tokio::spawn({
                let shared = shared.clone();
                async move {
                    housekeeping(shared).await;
                    Ok(())
                }
            })),
            AbortOnDrop(tokio::spawn(async move {
                nodes_synced.notified().await;
                pods_synced.notified().await;
                info!("caches synced; scheduling");
                schedule_loop(shared).await;
                Ok(())
            })),
        ];
        let (result, _, _) =
            futures::future::select_all(tasks.iter_mut().map(|t| &mut t.0)).await;
        match result {
            Ok(r) => r,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(_) => Err(Error::WatchEnded("scheduler task cancelled")),
        }
    }
}

/// Aborts a task when dropped.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Keeps the node cache in step with the API.
async fn watch_nodes(shared: Arc<Shared>, synced: Arc<Notify>) -> Result<()> {
    let api: Api<Node> = Api::all(shared.client.clone());
    let mut stream = watcher::watcher(api, watcher::Config::default().any_semantic())
        .default_backoff()
        .boxed();
    let mut relist: Option<HashSet<String>> = None;
    loop {
        let event = match stream.try_next().await {
            Ok(Some(e)) => e,
            Ok(None) => return Err(Error::WatchEnded("nodes")),
            Err(e) => {
                warn!(error = %e, "node watch failed; retrying");
                continue;
            }
        };
        let now = Instant::now();
        match event {
            WatchEvent::Init => relist = Some(HashSet::new()),
            WatchEvent::InitApply(node) | WatchEvent::Apply(node) => {
                if let Some(seen) = relist.as_mut() {
                    seen.insert(node.metadata.name.clone().unwrap_or_default());
                }
                let event = lock(&shared.cache).apply_node(node);
                shared.cluster_event(event, now);
            }
            WatchEvent::Delete(node) => {
                lock(&shared.cache).remove_node(node.metadata.name.as_deref().unwrap_or(""));
            }
            WatchEvent::InitDone => {
                if let Some(seen) = relist.take() {
                    let mut cache = lock(&shared.cache);
                    for name in cache.node_names() {
                        if !seen.contains(name.as_ref()) {
                            cache.remove_node(&name);
                        }
                    }
                }
                synced.notify_one();
            }
        }
    }
}

/// Whether a pod is finished (its resources are free again).
fn is_terminal(pod: &Pod) -> bool {
    matches!(
        pod.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded" | "Failed")
    )
}

/// Keeps the pod cache and the queue in step with the API.
async fn watch_pods(shared: Arc<Shared>, synced: Arc<Notify>) -> Result<()> {
    let api: Api<Pod> = Api::all(shared.client.clone());
    let mut stream = watcher::watcher(api, watcher::Config::default().any_semantic())
        .default_backoff()
        .boxed();
    let mut relist: Option<HashSet<PodKey>> = None;
    loop {
        let event = match stream.try_next().await {
            Ok(Some(e)) => e,
            Ok(None) => return Err(Error::WatchEnded("pods")),
            Err(e) => {
                warn!(error = %e, "pod watch failed; retrying");
                continue;
            }
        };
        match event {
            WatchEvent::Init => relist = Some(HashSet::new()),
            WatchEvent::InitApply(pod) | WatchEvent::Apply(pod) => {
                if let Some(seen) = relist.as_mut() {
                    seen.insert(pod_key(&pod));
                }
                shared.on_pod(pod);
            }
            WatchEvent::Delete(pod) => shared.on_pod_deleted(&pod_key(&pod)),
            WatchEvent::InitDone => {
                if let Some(seen) = relist.take() {
                    let gone: Vec<PodKey> = lock(&shared.cache)
                        .pod_keys()
                        .into_iter()
                        .filter(|k| !seen.contains(k))
                        .collect();
                    for key in gone {
                        shared.on_pod_deleted(&key);
                    }
                    let mut queue = lock(&shared.queue);
                    for key in queue.keys() {
                        if !seen.contains(&key) {
                            queue.remove(&key);
                        }
                    }
                }
                synced.notify_one();
            }
        }
    }
}

/// Event writes in flight at most: one at a time cannot keep up with a scheduler placing
/// a thousand pods a second (each write is an API round trip), and the buffer would drop
/// most Scheduled Events.
const EVENT_WRITERS: usize = 64;

/// Writes Events, [`EVENT_WRITERS`] at a time (the recorder aggregates repeats).
async fn write_events(recorder: Recorder, mut rx: mpsc::Receiver<EventToRecord>) {
    let mut writing = JoinSet::new();
    while let Some(e) = rx.recv().await {
        while writing.len() >= EVENT_WRITERS {
            writing.join_next().await;
        }
        while writing.try_join_next().is_some() {}
        let recorder = recorder.clone();
        writing.spawn(async move {
            recorder
                .record(&e.object, e.event_type, e.reason, &e.message)
                .await;
        });
    }
    std::future::pending::<()>().await;
}

/// Retries pods left unschedulable too long and publishes queue sizes, every second.
async fn housekeeping(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        let sizes = {
            let mut q = lock(&shared.queue);
            q.flush_unschedulable_leftover(Instant::now());
            q.sizes()
        };
        shared.wake.notify_one();
        for (queue, n) in [
            ("active", sizes.active),
            ("backoff", sizes.backoff),
            ("unschedulable", sizes.unschedulable),
            ("in_flight", sizes.in_flight),
        ] {
            shared
                .metrics
                .pending
                .get_or_create(&QueueLabel { queue })
                .set(n as i64);
        }
    }
}

async fn schedule_loop(shared: Arc<Shared>) {
    let binds = Arc::new(Semaphore::new(shared.config.max_binds_in_flight));
    let mut tasks = JoinSet::new();
    loop {
        while tasks.try_join_next().is_some() {}
        let popped = lock(&shared.queue).pop(Instant::now());
        match popped {
            Ok((queued, cycle)) => {
                // Back-pressure: wait for a binding slot before taking the next decision.
                let Ok(permit) = binds.clone().acquire_owned().await else {
                    return;
                };
                shared.schedule_one(queued, cycle, permit, &mut tasks);
            }
            Err(next) => {
                let sleep = match next {
                    Some(at) => tokio::time::sleep_until(at.into()),
                    None => tokio::time::sleep(Duration::from_secs(3600)),
                };
                tokio::select! {
                    () = shared.wake.notified() => {}
                    () = sleep => {}
                    Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
                }
            }
        }
    }
}

/// Upstream's FitError message: "0/5 nodes are available: 3 Insufficient cpu, 2 node(s)
/// had untolerated taint {k: v}." (reason counts sorted as strings).
pub fn fit_error_message(diagnosis: &Diagnosis) -> String {
    if diagnosis.nodes == 0 {
        return "no nodes available to schedule pods".to_owned();
    }
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    if let Some(pf) = &diagnosis.pre_filter {
        for r in &pf.reasons {
            *counts.entry(r).or_default() += diagnosis.nodes;
        }
    } else {
        for (_, st) in &diagnosis.node_statuses {
            for r in &st.reasons {
                *counts.entry(r).or_default() += 1;
            }
        }
    }
    let mut parts: Vec<String> = counts.iter().map(|(r, n)| format!("{n} {r}")).collect();
    parts.sort();
    format!(
        "0/{} nodes are available: {}.",
        diagnosis.nodes,
        parts.join(", ")
    )
}

fn pod_ref(pod: &PodInfo) -> ObjectReference {
    coxswain_runtime::events::object_ref(&pod.pod)
}

impl Shared {
    fn cluster_event(&self, event: ClusterEvents, now: Instant) {
        if event != ClusterEvents::NONE {
            lock(&self.queue).on_event(event, now);
            self.wake.notify_one();
        }
    }

    fn responsible_for(&self, pod: &Pod) -> bool {
        let name = pod
            .spec
            .as_ref()
            .and_then(|s| s.scheduler_name.as_deref())
            .unwrap_or("default-scheduler");
        name == self.config.scheduler_name
    }

    fn on_pod(&self, pod: Pod) {
        let now = Instant::now();
        let terminal = is_terminal(&pod);
        let deleting = pod.metadata.deletion_timestamp.is_some();
        let responsible = self.responsible_for(&pod);
        let info = Arc::new(PodInfo::new(pod));
        if info.node_name().is_some() {
            let event = {
                let mut cache = lock(&self.cache);
                if terminal {
                    if cache.remove_pod(&info.key) {
                        ClusterEvents::ASSIGNED_POD_DELETE
                    } else {
                        ClusterEvents::NONE
                    }
                } else {
                    cache.apply_bound_pod(info.clone())
                }
            };
            let mut queue = lock(&self.queue);
            queue.remove(&info.key);
            if event != ClusterEvents::NONE {
                queue.on_event(event, now);
                drop(queue);
                self.wake.notify_one();
            }
            return;
        }
        if lock(&self.cache).is_assumed(&info.key) {
            // Our binding is in flight; the watch has not caught up yet.
            lock(&self.queue).upsert(info, now);
            return;
        }
        let mut queue = lock(&self.queue);
        if responsible && !terminal && !deleting {
            queue.upsert(info, now);
            drop(queue);
            self.wake.notify_one();
        } else {
            queue.remove(&info.key);
        }
    }

    fn on_pod_deleted(&self, key: &str) {
        let was_counted = lock(&self.cache).remove_pod(key);
        let mut queue = lock(&self.queue);
        queue.remove(key);
        if was_counted {
            queue.on_event(ClusterEvents::ASSIGNED_POD_DELETE, Instant::now());
            drop(queue);
            self.wake.notify_one();
        }
    }

    fn record(&self, pod: &PodInfo, event_type: EventType, reason: &'static str, message: String) {
        let e = EventToRecord {
            object: pod_ref(pod),
            event_type,
            reason,
            message,
        };
        if self.events.try_send(e).is_err() {
            self.metrics.events_dropped.inc();
        }
    }

    /// Filters and scores the nodes for one pod (under the cache lock).
    fn find_node(&self, cache: &Cache, pod: &PodInfo) -> Outcome {
        if cache.is_assumed(&pod.key) || cache.contains_pod(&pod.key) {
            return Outcome::Skip;
        }
        let n = cache.node_count();
        let mut diagnosis = Diagnosis {
            nodes: n,
            ..Diagnosis::default()
        };
        let mut state = CycleState::default();
        for pf in &self.profile.pre_filter {
            let st = pf.pre_filter(&mut state, pod, cache);
            match st.code {
                Code::Success => {}
                Code::Error => {
                    return Outcome::Error(format!("{}: {}", pf.name(), st.reasons.join(", ")));
                }
                _ => {
                    diagnosis.pre_filter = Some(st.with_plugin(pf.name()));
                    let post_filter = self.post_filter(pod, cache, &state, &diagnosis);
                    return Outcome::Unschedulable { diagnosis, post_filter };
                }
            }
        }
        if n == 0 {
            return Outcome::Unschedulable {
                diagnosis,
                post_filter: PostFilterResult::default(),
            };
        }
        let filters = self.profile.filters(&state);

        // A pod that preempted others goes to its nominated node if it fits there now.
        let nominated = pod
            .pod
            .status
            .as_ref()
            .and_then(|s| s.nominated_node_name.as_deref());
        if let Some(node) = nominated.and_then(|name| cache.node(name))
            && node.node.is_some()
            && filters.run(pod, node).is_success()
        {
            return Outcome::Scheduled {
                node: node.name.clone(),
                evaluated: 1,
                feasible: 1,
            };
        }

        let to_find = self.config.feasible_nodes_to_find(n);
        let start = self.next_start.load(Ordering::Relaxed) % n;
        let mut feasible: Vec<&NodeInfo> = Vec::with_capacity(to_find);
        let mut processed = 0;
        for i in 0..n {
            let node = cache.node_at((start + i) % n);
            processed += 1;
            let st = filters.run(pod, node);
            match st.code {
                Code::Success => {
                    feasible.push(node);
                    if feasible.len() >= to_find {
                        break;
                    }
                }
                Code::Error => {
                    return Outcome::Error(format!("{}: {}", st.plugin, st.reasons.join(", ")));
                }
                _ => diagnosis.node_statuses.push((node.name.clone(), st)),
            }
        }
        self.next_start
            .store((start + processed) % n, Ordering::Relaxed);
        if feasible.is_empty() {
            let post_filter = self.post_filter(pod, cache, &state, &diagnosis);
            return Outcome::Unschedulable { diagnosis, post_filter };
        }
        let count = feasible.len();
        if count == 1 {
            return Outcome::Scheduled {
                node: feasible[0].name.clone(),
                evaluated: processed,
                feasible: 1,
            };
        }
        for (plugin, _) in &self.profile.score {
            let st = plugin.pre_score(&mut state, pod, cache, &feasible);
            if st.code == Code::Error {
                return Outcome::Error(format!("{}: {}", plugin.name(), st.reasons.join(", ")));
            }
        }
        let mut totals = vec![0i64; count];
        let mut scores = vec![0i64; count];
        for (plugin, weight) in &self.profile.score {
            for (slot, node) in scores.iter_mut().zip(&feasible) {
                *slot = plugin.score(&state, pod, node);
            }
            plugin.normalize(&state, pod, &mut scores);
            for (t, s) in totals.iter_mut().zip(&scores) {
                *t += s * weight;
            }
        }
        // Highest total; a uniformly random one among ties (reservoir sampling).
        let mut best = 0;
        let mut ties = 0u32;
        for (i, t) in totals.iter().enumerate() {
            if *t > totals[best] {
                best = i;
                ties = 1;
            } else if *t == totals[best] {
                ties += 1;
                if fastrand::u32(0..ties) == 0 {
                    best = i;
                }
            }
        }
        Outcome::Scheduled {
            node: feasible[best].name.clone(),
            evaluated: processed,
            feasible: count,
        }
    }

    fn post_filter(
        &self,
        pod: &PodInfo,
        cache: &Cache,
        state: &CycleState,
        diagnosis: &Diagnosis,
    ) -> PostFilterResult {
        let filters = self.profile.filters(state);
        let mut messages = Vec::new();
        for pf in &self.profile.post_filter {
            let r = pf.post_filter(pod, cache, &filters, diagnosis);
            if r.nominated_node.is_some() {
                return r;
            }
            if !r.message.is_empty() {
                messages.push(r.message);
            }
        }
        PostFilterResult {
            message: messages.join(" "),
            ..PostFilterResult::default()
        }
    }

    fn schedule_one(
        self: &Arc<Self>,
        queued: crate::framework::QueuedPodInfo,
        cycle: u64,
        permit: tokio::sync::OwnedSemaphorePermit,
        tasks: &mut JoinSet<()>,
    ) {
        let pod = queued.pod.clone();
        let started = Instant::now();
        let outcome = {
            let mut cache = lock(&self.cache);
            let outcome = self.find_node(&cache, &pod);
            if let Outcome::Scheduled { node, .. } = &outcome {
                cache.assume(pod.clone(), node.clone());
            }
            outcome
        };
        self.metrics
            .algorithm_latency
            .observe(started.elapsed().as_secs_f64());
        match outcome {
            Outcome::Skip => lock(&self.queue).remove(&pod.key),
            Outcome::Error(message) => {
                warn!(pod = %pod.key, %message, "scheduling failed");
                self.metrics.attempt("error");
                lock(&self.queue).backoff(&pod.key, Instant::now());
            }
            Outcome::Unschedulable { diagnosis, post_filter } => {
                self.metrics.attempt("unschedulable");
                let mut plugins: Vec<&'static str> = diagnosis
                    .node_statuses
                    .iter()
                    .map(|(_, s)| s.plugin)
                    .chain(diagnosis.pre_filter.iter().map(|s| s.plugin))
                    .collect();
                plugins.sort_unstable();
                plugins.dedup();
                let mut message = fit_error_message(&diagnosis);
                if !post_filter.message.is_empty() {
                    message = format!("{message} {}", post_filter.message);
                }
                debug!(pod = %pod.key, %message, "unschedulable");
                lock(&self.queue).unschedulable(&pod.key, cycle, plugins, Instant::now());
                self.record(&pod, EventType::Warning, "FailedScheduling", message.clone());
                let this = self.clone();
                tasks.spawn(async move {
                    this.mark_unschedulable(&pod, &message).await;
                    if let Some(node) = post_filter.nominated_node {
                        this.preempt(&pod, &node, post_filter.victims).await;
                    }
                });
            }
            Outcome::Scheduled { node, evaluated, feasible } => {
                for (i, r) in self.profile.reserve.iter().enumerate() {
                    let state = CycleState::default();
                    let st = r.reserve(&state, &pod, &node);
                    if !st.is_success() {
                        for undo in self.profile.reserve[..=i].iter().rev() {
                            undo.unreserve(&state, &pod, &node);
                        }
                        lock(&self.cache).forget(&pod.key);
                        self.metrics.attempt("error");
                        lock(&self.queue).backoff(&pod.key, Instant::now());
                        return;
                    }
                }
                debug!(pod = %pod.key, %node, evaluated, feasible, "assumed");
                let this = self.clone();
                let binder = self.profile.bind.clone();
                self.metrics.binds_in_flight.inc();
                tasks.spawn(async move {
                    let result = binder.bind(pod.clone(), node.clone()).await;
                    drop(permit);
                    this.metrics.binds_in_flight.dec();
                    this.bound(queued, node, result).await;
                });
            }
        }
    }

    async fn bound(
        &self,
        queued: crate::framework::QueuedPodInfo,
        node: Arc<str>,
        result: Result<(), crate::framework::BindError>,
    ) {
        let pod = queued.pod;
        match result {
            Ok(()) => {
                self.metrics.attempt("scheduled");
                self.metrics
                    .e2e_latency
                    .observe(queued.initial_attempt.elapsed().as_secs_f64());
                lock(&self.queue).remove(&pod.key);
                self.record(
                    &pod,
                    EventType::Normal,
                    "Scheduled",
                    format!("Successfully assigned {} to {node}", pod.key),
                );
                // PodScheduled=True comes with the binding: the API server sets it as it
                // sets spec.nodeName (as upstream's does), so there is nothing to patch.
            }
            Err(e) => {
                for r in self.profile.reserve.iter().rev() {
                    r.unreserve(&CycleState::default(), &pod, &node);
                }
                lock(&self.cache).forget(&pod.key);
                self.metrics.attempt("error");
                if e.permanent {
                    debug!(pod = %pod.key, error = %e, "binding refused; dropping the pod");
                    lock(&self.queue).remove(&pod.key);
                } else {
                    warn!(pod = %pod.key, error = %e, "binding failed; retrying");
                    lock(&self.queue).backoff(&pod.key, Instant::now());
                    self.wake.notify_one();
                    self.record(
                        &pod,
                        EventType::Warning,
                        "FailedScheduling",
                        format!("Binding rejected: {e}"),
                    );
                }
                // The freed room may fit others.
                self.cluster_event(ClusterEvents::ASSIGNED_POD_DELETE, Instant::now());
            }
        }
    }

    /// Sets `PodScheduled=False, reason Unschedulable` with the message, unless the pod
    /// already says exactly that.
    async fn mark_unschedulable(&self, pod: &PodInfo, message: &str) {
        let same = pod
            .pod
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|cs| {
                cs.iter().any(|c| {
                    c.type_ == "PodScheduled"
                        && c.status == "False"
                        && c.reason.as_deref() == Some("Unschedulable")
                        && c.message.as_deref() == Some(message)
                })
            });
        if !same {
            self.patch_condition(pod, "False", Some("Unschedulable"), Some(message))
                .await;
        }
    }

    async fn patch_condition(
        &self,
        pod: &PodInfo,
        status: &str,
        reason: Option<&str>,
        message: Option<&str>,
    ) {
        let api: Api<Pod> = Api::namespaced(self.client.clone(), &pod.namespace);
        let now = k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(jiff::Timestamp::now());
        let patch = serde_json::json!({
            "status": {
                "conditions": [{
                    "type": "PodScheduled",
                    "status": status,
                    "reason": reason,
                    "message": message,
                    "lastProbeTime": null,
                    "lastTransitionTime": now,
                }]
            }
        });
        if let Err(e) = api
            .patch_status(&pod.name, &PatchParams::default(), &Patch::Strategic(&patch))
            .await
        {
            debug!(pod = %pod.key, error = %e, "pod condition not updated");
        }
    }

    /// Deletes the victims and nominates the node for the pod.
    async fn preempt(&self, pod: &PodInfo, node: &str, victims: Vec<Arc<PodInfo>>) {
        info!(pod = %pod.key, node, victims = victims.len(), "preempting");
        for v in victims {
            let api: Api<Pod> = Api::namespaced(self.client.clone(), &v.namespace);
            match api.delete(&v.name, &DeleteParams::default()).await {
                Ok(_) => {
                    self.metrics.preemption_victims.inc();
                    self.record(
                        &v,
                        EventType::Normal,
                        "Preempted",
                        format!("Preempted by pod {} on node {node}", pod.uid),
                    );
                }
                Err(e) => debug!(victim = %v.key, error = %e, "victim not deleted"),
            }
        }
        let api: Api<Pod> = Api::namespaced(self.client.clone(), &pod.namespace);
        let patch = serde_json::json!({ "status": { "nominatedNodeName": node } });
        if let Err(e) = api
            .patch_status(&pod.name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            debug!(pod = %pod.key, error = %e, "nominated node not recorded");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::framework::Status;

    #[test]
    fn fit_errors_read_like_upstreams() {
        let st = |r: &str| Status::unschedulable(r);
        let d = Diagnosis {
            nodes: 5,
            node_statuses: vec![
                ("a".into(), st("Insufficient cpu")),
                ("b".into(), st("Insufficient cpu")),
                ("c".into(), st("Insufficient cpu")),
                ("d".into(), st("node(s) had untolerated taint {k: v}")),
                ("e".into(), st("node(s) had untolerated taint {k: v}")),
            ],
            pre_filter: None,
        };
        assert_eq!(
            fit_error_message(&d),
            "0/5 nodes are available: 2 node(s) had untolerated taint {k: v}, 3 Insufficient cpu."
        );
        assert_eq!(
            fit_error_message(&Diagnosis::default()),
            "no nodes available to schedule pods"
        );
    }
}
