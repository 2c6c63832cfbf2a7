//! The controller-manager: which controllers exist, which are enabled (`--controllers`,
//! upstream-style `*,-job`), starting each as a task and aborting them all on shutdown,
//! and running any component only while it holds its Lease.

use std::future::Future;
use std::time::Duration;

use coxswain_runtime::leader::{self, LeaderConfig};
use tokio::task::JoinSet;
use tracing::{error, info, warn};

use crate::{
    Context, csr, endpoints, endpointslice, garbagecollector, nodeipam, nodelifecycle,
    resourcequota, rootcacertpublisher, serviceaccount, workloads,
};

/// The cluster-level controllers this crate runs itself (the workload controllers are
/// listed in [`workloads::CONTROLLERS`]).
pub const CLUSTER_CONTROLLERS: &[&str] = &[
    endpointslice::NAME,
    endpoints::NAME,
    nodelifecycle::NAME,
    nodeipam::NAME,
    garbagecollector::NAME,
    serviceaccount::NAME,
    csr::NAME,
    rootcacertpublisher::NAME,
    resourcequota::NAME,
];

/// Every controller name `--controllers` accepts (besides `*`), cluster-level then workloads.
pub fn all_controllers() -> Vec<&'static str> {
    CLUSTER_CONTROLLERS
        .iter()
        .chain(workloads::CONTROLLERS)
        .copied()
        .collect()
}

/// Errors of the manager.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// `--controllers` names a controller that does not exist.
    #[error("unknown controller {name:?} in --controllers (known: {known})")]
    UnknownController { name: String, known: String },
    /// Leader election was cancelled by shutdown.
    #[error("failed to acquire the {0} lease: shutting down")]
    Election(#[from] leader::Error),
}

/// The canonical short name of `name`: upstream's current names (`endpointslice-controller`,
/// `garbage-collector-controller`, `endpoints-controller`,
/// `root-ca-certificate-publisher-controller`) and the short ones both work.
fn canonical(name: &str) -> String {
    let short = name.strip_suffix("-controller").unwrap_or(name).replace('-', "");
    match short.as_str() {
        "endpoints" => endpoints::NAME.to_owned(),
        "rootcacertificatepublisher" => rootcacertpublisher::NAME.to_owned(),
        _ => short,
    }
}

/// The controllers enabled by an upstream-style list: `*` is every controller, `name` adds
/// one, `-name` removes one; an empty list means `*`, and `-*` starts from none.
pub fn enabled_controllers(spec: &[String]) -> Result<Vec<&'static str>, Error> {
    let all = all_controllers();
    let items: Vec<&str> = spec
        .iter()
        .flat_map(|s| s.split(','))
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect();
    let star = (items.is_empty() || items.contains(&"*")) && !items.contains(&"-*");
    let mut enabled = Vec::new();
    for name in &all {
        let mut on = star;
        for item in &items {
            let (negated, bare) = match item.strip_prefix('-') {
                Some(rest) => (true, rest),
                None => (false, *item),
            };
            if bare == "*" || *item == "-*" {
                continue;
            }
            let wanted = canonical(bare);
            if !all.iter().any(|n| *n == wanted) {
                return Err(Error::UnknownController {
                    name: bare.to_owned(),
                    known: all.join(", "),
                });
            }
            if wanted == *name {
                on = !negated;
            }
        }
        if on {
            enabled.push(*name);
        }
    }
    Ok(enabled)
}

/// Runs one controller by name until it ends.
async fn run_one(name: &'static str, ctx: Context) -> Result<(), String> {
    match name {
        endpointslice::NAME => endpointslice::run(ctx).await.map_err(|e| e.to_string()),
        endpoints::NAME => endpoints::run(ctx).await.map_err(|e| e.to_string()),
        nodelifecycle::NAME => nodelifecycle::run(ctx).await.map_err(|e| e.to_string()),
        nodeipam::NAME => nodeipam::run(ctx).await.map_err(|e| e.to_string()),
        garbagecollector::NAME => garbagecollector::run(ctx).await.map_err(|e| e.to_string()),
        serviceaccount::NAME => serviceaccount::run(ctx).await.map_err(|e| e.to_string()),
        csr::NAME => csr::run(ctx).await.map_err(|e| e.to_string()),
        rootcacertpublisher::NAME => rootcacertpublisher::run(ctx).await.map_err(|e| e.to_string()),
        resourcequota::NAME => resourcequota::run(ctx).await.map_err(|e| e.to_string()),
        other => workloads::run(other, ctx).await.map_err(|e| e.to_string()),
    }
}

/// The enabled controllers, each a task; dropping the manager aborts them all.
#[derive(Debug)]
pub struct ControllerManager {
    tasks: JoinSet<(&'static str, Result<(), String>)>,
}

impl ControllerManager {
    /// Starts every controller in `enabled`. A controller that stops is restarted after a
    /// pause (its watches ended or its configuration is broken: logged as an error).
    pub fn start(ctx: Context, enabled: &[&'static str]) -> ControllerManager {
        let mut tasks = JoinSet::new();
        for &name in enabled {
            let ctx = ctx.clone();
            tasks.spawn(async move {
                loop {
                    let result = run_one(name, ctx.clone()).await;
                    match &result {
                        Ok(()) => warn!(controller = name, "controller stopped; restarting"),
                        Err(e) => error!(controller = name, error = %e, "controller failed; restarting"),
                    }
                    ctx.metrics().count(name, false);
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            });
        }
        info!(controllers = ?enabled, "controllers started");
        ControllerManager { tasks }
    }

    /// Waits until every controller task has ended (they restart themselves, so this is
    /// forever unless they are aborted).
    pub async fn wait(&mut self) {
        while self.tasks.join_next().await.is_some() {}
    }

    /// Aborts every controller and waits for their tasks to finish.
    pub async fn shutdown(mut self) {
        self.tasks.abort_all();
        while self.tasks.join_next().await.is_some() {}
    }
}

/// Runs the enabled controllers until `shutdown` completes, then aborts them.
pub async fn run(ctx: Context, enabled: &[&'static str], shutdown: impl Future<Output = ()>) {
    let mut manager = ControllerManager::start(ctx, enabled);
    tokio::select! {
        () = shutdown => {}
        () = manager.wait() => {}
    }
    manager.shutdown().await;
}

/// Runs `work` only while this process holds the Lease of `config`: waits to be elected,
/// runs it, and when the Lease is lost drops `work` at once (aborting whatever it runs) and
/// enters the election again. Returns when `shutdown` completes (releasing the Lease).
///
/// `work` must stop acting when its future is dropped (tasks it spawns must be aborted on
/// drop, as [`ControllerManager`] does), so that two holders never act at once.
pub async fn run_leader_elected<W, F>(
    client: kube::Client,
    config: LeaderConfig,
    shutdown: impl Future<Output = ()>,
    mut work: W,
    on_leading: impl Fn(bool),
) where
    W: FnMut() -> F,
    F: Future<Output = ()>,
{
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let mut leadership = tokio::select! {
            () = &mut shutdown => return,
            acquired = leader::acquire(client.clone(), config.clone(), std::future::pending()) => {
                match acquired {
                    Ok(l) => l,
                    Err(e) => {
                        warn!(lease = %config.name, error = %e, "leader election failed");
                        return;
                    }
                }
            }
        };
        on_leading(true);
        info!(lease = %config.name, identity = %config.identity, "leading: starting work");
        let stop = {
            let work = work();
            tokio::select! {
                () = &mut shutdown => true,
                () = leadership.lost() => false,
                () = work => {
                    warn!(lease = %config.name, "work ended while leading; re-running it");
                    false
                }
            }
            // `work` is dropped here, before anything else can happen.
        };
        on_leading(false);
        if stop {
            leadership.release().await;
            return;
        }
        if !leadership.is_leading() {
            warn!(lease = %config.name, "lost the lease: work stopped, re-entering the election");
        } else {
            // The work ended by itself (a failure): let another candidate have a go, and do
            // not spin if it fails at once again.
            leadership.release().await;
            tokio::select! {
                () = &mut shutdown => return,
                () = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    }
}

/// Runs the controller-manager under the `kube-controller-manager` Lease (or whatever name
/// `leader` carries) until `shutdown`.
pub async fn run_elected(
    ctx: Context,
    enabled: Vec<&'static str>,
    leader: LeaderConfig,
    shutdown: impl Future<Output = ()>,
) {
    let client = ctx.client.clone();
    let metrics = ctx.metrics().clone();
    run_leader_elected(
        client,
        leader,
        shutdown,
        || {
            let ctx = ctx.clone();
            let enabled = enabled.clone();
            async move { run(ctx, &enabled, std::future::pending()).await }
        },
        move |leading| metrics.set_leader(leading),
    )
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn controller_lists() {
        let all = all_controllers();
        assert_eq!(enabled_controllers(&[]).unwrap(), all);
        assert_eq!(enabled_controllers(&s(&["*"])).unwrap(), all);
        let no_job = enabled_controllers(&s(&["*,-job"])).unwrap();
        assert!(!no_job.contains(&"job") && no_job.contains(&"replicaset"));
        assert_eq!(
            enabled_controllers(&s(&["endpointslice-controller", "garbage-collector-controller"])).unwrap(),
            vec!["endpointslice", "garbagecollector"]
        );
        assert_eq!(enabled_controllers(&s(&["endpoints-controller"])).unwrap(), vec!["endpoint"]);
        assert!(enabled_controllers(&s(&["*", "-nosuch"])).is_err());
        assert!(enabled_controllers(&s(&["-*"])).unwrap().is_empty());
        assert_eq!(enabled_controllers(&s(&["-*,nodeipam"])).unwrap(), vec!["nodeipam"]);
        for upstream in ["root-ca-cert-publisher", "root-ca-certificate-publisher-controller"] {
            assert_eq!(enabled_controllers(&s(&[upstream])).unwrap(), vec!["rootcacertpublisher"]);
        }
        assert_eq!(enabled_controllers(&s(&["resourcequota-controller"])).unwrap(), vec!["resourcequota"]);
    }
}
