//! The scheduling framework: the extension points a pod goes through (queue sort,
//! pre-filter, filter, post-filter, pre-score, score, normalize, reserve, bind), the
//! traits a plugin implements for each, and the [`Profile`] that lists the plugins.
//!
//! Every built-in is one of these plugins; a user adds one, or replaces a built-in by
//! giving a plugin of the same name, with [`Profile::with`].

use std::any::Any;
use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::Instant;

use futures::future::BoxFuture;

use crate::cache::{Cache, NodeInfo, PodInfo};

/// Highest score a plugin gives a node after normalization.
pub const MAX_NODE_SCORE: i64 = 100;

/// How a plugin judged a pod (on a node, for filters).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    Success,
    /// The pod does not fit, but could if other pods went away (preemption may help).
    Unschedulable,
    /// The pod does not fit, and removing pods would not change that.
    UnschedulableAndUnresolvable,
    /// The plugin failed; the pod is retried with backoff.
    Error,
}

/// A plugin's verdict, with the reasons shown to the user ("Insufficient cpu").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    pub code: Code,
    pub reasons: Vec<String>,
    /// The plugin that failed the pod (filled in by the framework).
    pub plugin: &'static str,
}

impl Status {
    pub fn success() -> Status {
        Status {
            code: Code::Success,
            reasons: Vec::new(),
            plugin: "",
        }
    }
    pub fn unschedulable(reason: impl Into<String>) -> Status {
        Status {
            code: Code::Unschedulable,
            reasons: vec![reason.into()],
            plugin: "",
        }
    }
    pub fn unresolvable(reason: impl Into<String>) -> Status {
        Status {
            code: Code::UnschedulableAndUnresolvable,
            reasons: vec![reason.into()],
            plugin: "",
        }
    }
    pub fn error(reason: impl Into<String>) -> Status {
        Status {
            code: Code::Error,
            reasons: vec![reason.into()],
            plugin: "",
        }
    }
    pub fn is_success(&self) -> bool {
        self.code == Code::Success
    }
    pub(crate) fn with_plugin(mut self, plugin: &'static str) -> Status {
        self.plugin = plugin;
        self
    }
}

/// Cluster changes that may make a rejected pod schedulable; a plugin names those that can
/// undo its rejections, so the queue retries only pods that may now fit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ClusterEvents(pub u32);

impl ClusterEvents {
    pub const NONE: ClusterEvents = ClusterEvents(0);
    /// A node appeared.
    pub const NODE_ADD: ClusterEvents = ClusterEvents(1);
    /// A node's labels, taints, allocatable or `unschedulable` changed.
    pub const NODE_UPDATE: ClusterEvents = ClusterEvents(1 << 1);
    /// A pod was bound to a node (or appeared bound).
    pub const ASSIGNED_POD_ADD: ClusterEvents = ClusterEvents(1 << 2);
    /// A bound pod's labels changed.
    pub const ASSIGNED_POD_UPDATE: ClusterEvents = ClusterEvents(1 << 3);
    /// A bound pod went away (deleted or finished).
    pub const ASSIGNED_POD_DELETE: ClusterEvents = ClusterEvents(1 << 4);
    pub const ALL: ClusterEvents = ClusterEvents(u32::MAX);

    pub const fn union(self, other: ClusterEvents) -> ClusterEvents {
        ClusterEvents(self.0 | other.0)
    }
    pub const fn intersects(self, other: ClusterEvents) -> bool {
        self.0 & other.0 != 0
    }
}

/// Per-pod data plugins compute in one extension point and read in later ones.
#[derive(Default)]
pub struct CycleState {
    data: HashMap<&'static str, Box<dyn Any + Send + Sync>>,
}

impl fmt::Debug for CycleState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CycleState")
            .field("keys", &self.data.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl CycleState {
    pub fn write<T: Any + Send + Sync>(&mut self, key: &'static str, value: T) {
        self.data.insert(key, Box::new(value));
    }
    pub fn read<T: Any + Send + Sync>(&self, key: &'static str) -> Option<&T> {
        self.data.get(key).and_then(|v| v.downcast_ref())
    }
}

/// A pod waiting in the scheduling queue.
#[derive(Debug, Clone)]
pub struct QueuedPodInfo {
    pub pod: Arc<PodInfo>,
    /// When the pod was (last) added to the queue.
    pub timestamp: Instant,
    /// When the scheduler first saw the pod (for end-to-end latency).
    pub initial_attempt: Instant,
    /// Scheduling attempts so far.
    pub attempts: u32,
    /// Plugins that rejected the pod in its last attempt.
    pub unschedulable_plugins: Vec<&'static str>,
}

/// What every plugin has: a name, unique within an extension point.
pub trait Plugin: Send + Sync + 'static {
    fn name(&self) -> &'static str;
    /// The events that may undo this plugin's rejections (default: any).
    fn events(&self) -> ClusterEvents {
        ClusterEvents::ALL
    }
}

/// Orders the active queue.
pub trait QueueSortPlugin: Plugin {
    /// Whether `a` is scheduled before `b`.
    fn less(&self, a: &QueuedPodInfo, b: &QueuedPodInfo) -> bool;
}

/// Runs once per pod before filtering; may reject the pod outright or prepare state.
pub trait PreFilterPlugin: Plugin {
    fn pre_filter(&self, state: &mut CycleState, pod: &PodInfo, cluster: &Cache) -> Status;
}

/// Whether a pod may run on a node.
pub trait FilterPlugin: Plugin {
    fn filter(&self, state: &CycleState, pod: &PodInfo, node: &NodeInfo) -> Status;
}

/// Why nodes rejected a pod: the node statuses of a failed scheduling cycle.
#[derive(Debug, Default)]
pub struct Diagnosis {
    /// Nodes that were considered.
    pub nodes: usize,
    /// Each rejecting node with its status.
    pub node_statuses: Vec<(Arc<str>, Status)>,
    /// A pre-filter's rejection, which applies to every node.
    pub pre_filter: Option<Status>,
}

/// What a post-filter (preemption) decided.
#[derive(Debug, Default)]
pub struct PostFilterResult {
    /// The node the pod should go to once the victims are gone.
    pub nominated_node: Option<Arc<str>>,
    /// Pods to delete.
    pub victims: Vec<Arc<PodInfo>>,
    /// Added to the FailedScheduling message ("preemption: ...").
    pub message: String,
}

/// Runs when no node fits a pod (upstream: preemption).
pub trait PostFilterPlugin: Plugin {
    fn post_filter(
        &self,
        pod: &PodInfo,
        cluster: &Cache,
        filters: &FilterRunner<'_>,
        diagnosis: &Diagnosis,
    ) -> PostFilterResult;
}

/// Ranks the nodes that passed filtering.
pub trait ScorePlugin: Plugin {
    /// Runs once per pod before scoring the given nodes.
    fn pre_score(
        &self,
        _state: &mut CycleState,
        _pod: &PodInfo,
        _cluster: &Cache,
        _nodes: &[&NodeInfo],
    ) -> Status {
        Status::success()
    }
    /// A raw score of one node.
    fn score(&self, state: &CycleState, pod: &PodInfo, node: &NodeInfo) -> i64;
    /// Brings raw scores (one per node given to `pre_score`) to 0..=[`MAX_NODE_SCORE`].
    fn normalize(&self, _state: &CycleState, _pod: &PodInfo, _scores: &mut [i64]) {}
}

/// Runs when a node is chosen (reserve) and when the choice is undone (unreserve).
pub trait ReservePlugin: Plugin {
    fn reserve(&self, state: &CycleState, pod: &PodInfo, node: &str) -> Status;
    fn unreserve(&self, state: &CycleState, pod: &PodInfo, node: &str);
}

/// A bind that failed, with the API's word.
#[derive(Debug, thiserror::Error)]
#[error("failed to bind pod {pod} to node {node}: {message}")]
pub struct BindError {
    pub pod: String,
    pub node: String,
    pub message: String,
    /// The pod is gone or already bound: do not retry.
    pub permanent: bool,
}

/// Makes the binding happen (upstream: POST pods/NAME/binding).
pub trait BindPlugin: Plugin {
    fn bind(&self, pod: Arc<PodInfo>, node: Arc<str>) -> BoxFuture<'static, Result<(), BindError>>;
}

/// A plugin given to [`Profile::with`], by extension point. A plugin implementing several
/// extension points is given once per point.
#[derive(Clone)]
pub enum Extension {
    QueueSort(Arc<dyn QueueSortPlugin>),
    PreFilter(Arc<dyn PreFilterPlugin>),
    Filter(Arc<dyn FilterPlugin>),
    PostFilter(Arc<dyn PostFilterPlugin>),
    /// A score plugin and its weight.
    Score(Arc<dyn ScorePlugin>, i64),
    Reserve(Arc<dyn ReservePlugin>),
    Bind(Arc<dyn BindPlugin>),
}

impl fmt::Debug for Extension {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (point, name) = match self {
            Extension::QueueSort(p) => ("QueueSort", p.name()),
            Extension::PreFilter(p) => ("PreFilter", p.name()),
            Extension::Filter(p) => ("Filter", p.name()),
            Extension::PostFilter(p) => ("PostFilter", p.name()),
            Extension::Score(p, _) => ("Score", p.name()),
            Extension::Reserve(p) => ("Reserve", p.name()),
            Extension::Bind(p) => ("Bind", p.name()),
        };
        write!(f, "{point}({name})")
    }
}

/// The plugins of each extension point, in order.
#[derive(Clone)]
pub struct Profile {
    pub(crate) queue_sort: Arc<dyn QueueSortPlugin>,
    pub(crate) pre_filter: Vec<Arc<dyn PreFilterPlugin>>,
    pub(crate) filter: Vec<Arc<dyn FilterPlugin>>,
    pub(crate) post_filter: Vec<Arc<dyn PostFilterPlugin>>,
    pub(crate) score: Vec<(Arc<dyn ScorePlugin>, i64)>,
    pub(crate) reserve: Vec<Arc<dyn ReservePlugin>>,
    pub(crate) bind: Arc<dyn BindPlugin>,
}

impl fmt::Debug for Profile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Profile")
            .field("queue_sort", &self.queue_sort.name())
            .field(
                "pre_filter",
                &self.pre_filter.iter().map(|p| p.name()).collect::<Vec<_>>(),
            )
            .field(
                "filter",
                &self.filter.iter().map(|p| p.name()).collect::<Vec<_>>(),
            )
            .field(
                "post_filter",
                &self.post_filter.iter().map(|p| p.name()).collect::<Vec<_>>(),
            )
            .field(
                "score",
                &self
                    .score
                    .iter()
                    .map(|(p, w)| (p.name(), *w))
                    .collect::<Vec<_>>(),
            )
            .field(
                "reserve",
                &self.reserve.iter().map(|p| p.name()).collect::<Vec<_>>(),
            )
            .field("bind", &self.bind.name())
            .finish()
    }
}

fn replace_or_push<T: ?Sized + Plugin>(list: &mut Vec<Arc<T>>, plugin: Arc<T>) {
    match list.iter_mut().find(|p| p.name() == plugin.name()) {
        Some(slot) => *slot = plugin,
        None => list.push(plugin),
    }
}

impl Profile {
    /// A profile with only a queue sort and a binder; add the rest with [`Profile::with`].
    pub fn empty(queue_sort: Arc<dyn QueueSortPlugin>, bind: Arc<dyn BindPlugin>) -> Profile {
        Profile {
            queue_sort,
            pre_filter: Vec::new(),
            filter: Vec::new(),
            post_filter: Vec::new(),
            score: Vec::new(),
            reserve: Vec::new(),
            bind,
        }
    }

    /// Adds a plugin at its extension point, replacing the one of the same name there.
    pub fn with(mut self, extension: Extension) -> Profile {
        match extension {
            Extension::QueueSort(p) => self.queue_sort = p,
            Extension::PreFilter(p) => replace_or_push(&mut self.pre_filter, p),
            Extension::Filter(p) => replace_or_push(&mut self.filter, p),
            Extension::PostFilter(p) => replace_or_push(&mut self.post_filter, p),
            Extension::Score(p, w) => {
                match self.score.iter_mut().find(|(q, _)| q.name() == p.name()) {
                    Some(slot) => *slot = (p, w),
                    None => self.score.push((p, w)),
                }
            }
            Extension::Reserve(p) => replace_or_push(&mut self.reserve, p),
            Extension::Bind(p) => self.bind = p,
        }
        self
    }

    /// Removes the plugin `name` from every extension point (queue sort and bind excepted:
    /// replace those).
    pub fn without(mut self, name: &str) -> Profile {
        self.pre_filter.retain(|p| p.name() != name);
        self.filter.retain(|p| p.name() != name);
        self.post_filter.retain(|p| p.name() != name);
        self.score.retain(|(p, _)| p.name() != name);
        self.reserve.retain(|p| p.name() != name);
        self
    }

    /// The names of the filter plugins, in order.
    pub fn filter_names(&self) -> Vec<&'static str> {
        self.filter.iter().map(|p| p.name()).collect()
    }

    /// The names and weights of the score plugins, in order.
    pub fn score_names(&self) -> Vec<(&'static str, i64)> {
        self.score.iter().map(|(p, w)| (p.name(), *w)).collect()
    }

    /// The events that may undo a rejection, per pre-filter and filter plugin.
    pub(crate) fn plugin_events(&self) -> HashMap<&'static str, ClusterEvents> {
        self.pre_filter
            .iter()
            .map(|p| (p.name(), p.events()))
            .chain(self.filter.iter().map(|p| (p.name(), p.events())))
            .collect()
    }

    pub(crate) fn filters<'a>(&'a self, state: &'a CycleState) -> FilterRunner<'a> {
        FilterRunner {
            filters: &self.filter,
            state,
        }
    }
}

/// Runs a profile's filter plugins on a node (what preemption uses to re-check nodes).
pub struct FilterRunner<'a> {
    filters: &'a [Arc<dyn FilterPlugin>],
    state: &'a CycleState,
}

impl fmt::Debug for FilterRunner<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FilterRunner")
            .field("filters", &self.filters.len())
            .finish()
    }
}

impl FilterRunner<'_> {
    /// The first failing filter's status, or success.
    pub fn run(&self, pod: &PodInfo, node: &NodeInfo) -> Status {
        for f in self.filters {
            let status = f.filter(self.state, pod, node);
            if !status.is_success() {
                return status.with_plugin(f.name());
            }
        }
        Status::success()
    }
}
