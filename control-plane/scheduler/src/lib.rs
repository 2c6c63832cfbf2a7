//! Coxswain's scheduler: a plugin framework (filter, score, bind) that places pods on nodes.
//!
//! Pods with no `spec.nodeName` and our `spec.schedulerName` go through a queue (priority,
//! then age; backoff; an unschedulable set flushed by cluster events) and a [`Profile`] of
//! plugins over a watch-fed [`Cache`] of nodes and the pods on them. The chosen node is
//! assumed at once and bound through `POST pods/NAME/binding` in the background.
//!
//! ```no_run
//! # async fn f(client: kube::Client) -> Result<(), coxswain_scheduler::Error> {
//! use coxswain_scheduler::{Scheduler, SchedulerConfig};
//! let scheduler = Scheduler::new(client, SchedulerConfig::default());
//! let mut registry = prometheus_client::registry::Registry::default();
//! scheduler.register_metrics(&mut registry);
//! scheduler.run().await
//! # }
//! ```

mod cache;
mod config;
mod error;
mod framework;
mod metrics;
pub mod plugins;
mod preemption;
mod queue;
pub mod resources;
mod scheduler;

pub use cache::{Cache, HostPort, NodeInfo, PodInfo, PodKey, pod_key};
pub use config::SchedulerConfig;
pub use error::{Error, Result};
pub use framework::{
    BindError, BindPlugin, ClusterEvents, Code, CycleState, Diagnosis, Extension, FilterPlugin,
    FilterRunner, MAX_NODE_SCORE, Plugin, PostFilterPlugin, PostFilterResult, PreFilterPlugin,
    Profile, QueueSortPlugin, QueuedPodInfo, ReservePlugin, ScorePlugin, Status,
};
pub use preemption::DefaultPreemption;
pub use queue::QueueSizes;
pub use scheduler::{COMPONENT, Scheduler, fit_error_message};
