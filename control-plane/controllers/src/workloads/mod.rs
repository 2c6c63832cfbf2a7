//! Workload controllers: ReplicaSet, Deployment, Job, CronJob, DaemonSet, StatefulSet.
//!
//! Each is a kube-runtime [`Controller`](kube::runtime::Controller) over its kind, fed by
//! reflectors of the kinds it owns (pods, ReplicaSets, Jobs) whose events also settle
//! [`common::Expectations`], so a controller never acts twice on a cache that lags behind
//! its own writes. Each runs through `crate::reconciler` (instrumented reconcile, per-object
//! exponential backoff on failure). Every controller records Events under upstream's
//! component name and writes status through the `status` subresource.

mod common;
mod cronjob;
mod daemonset;
mod deployment;
mod job;
mod replicaset;
mod statefulset;

pub use common::register_metrics;
pub use cronjob::run_cronjob;
pub use daemonset::run_daemonset;
pub use deployment::run_deployment;
pub use job::{JobOptions, run_job, run_job_with};
pub use replicaset::run_replicaset;
pub use statefulset::run_statefulset;

/// The controllers [`run`] knows, by the names the manager uses.
pub const CONTROLLERS: &[&str] = &[
    "replicaset",
    "deployment",
    "job",
    "cronjob",
    "daemonset",
    "statefulset",
];

/// Errors of the workload controllers.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// [`run`] was given a name not in [`CONTROLLERS`].
    #[error("unknown workload controller {0:?} (known: {known})", known = CONTROLLERS.join(", "))]
    UnknownController(String),
    /// A call to the API server failed.
    #[error("failed to {verb} {object}: {source}")]
    Api {
        verb: &'static str,
        object: String,
        #[source]
        source: kube::Error,
    },
    /// An object's spec cannot be acted upon.
    #[error("cannot sync {object}: {message}")]
    Invalid { object: String, message: String },
    /// A cache never received its first list.
    #[error("failed to sync the {0} cache within 30 s")]
    NotSynced(String),
}

/// Runs the controller called `name` (one of [`CONTROLLERS`]) until aborted.
pub async fn run(name: &str, ctx: crate::Context) -> Result<(), Error> {
    match name {
        "replicaset" => run_replicaset(ctx).await,
        "deployment" => run_deployment(ctx).await,
        "job" => run_job(ctx).await,
        "cronjob" => run_cronjob(ctx).await,
        "daemonset" => run_daemonset(ctx).await,
        "statefulset" => run_statefulset(ctx).await,
        other => Err(Error::UnknownController(other.to_owned())),
    }
}
