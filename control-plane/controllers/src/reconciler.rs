//! The skeleton every kube-runtime controller here shares: an instrumented reconcile
//! (counted and timed in [`crate::Metrics`], the object's failure count reset when it
//! succeeds) and the matching error policy (client-go's per-item exponential backoff,
//! the failure logged with its retry delay).
//!
//! A controller provides only its state and its sync function; [`run`] drives a
//! configured kube-runtime [`Controller`] with them until its streams end.

use std::fmt::Debug;
use std::future::Future;
use std::hash::Hash;
use std::sync::Arc;

use futures::StreamExt;
use kube::runtime::controller::{Action, Controller};
use kube::{Resource, ResourceExt};
use serde::de::DeserializeOwned;
use tracing::{debug, warn};

use crate::Metrics;
use crate::backoff::Backoff;

/// `namespace/name`, or `name` for a cluster-scoped object: the per-object key of the
/// backoff and of log lines.
pub(crate) fn object_key<K: Resource>(obj: &K) -> String {
    match obj.namespace() {
        Some(ns) if !ns.is_empty() => format!("{ns}/{}", obj.name_any()),
        _ => obj.name_any(),
    }
}

/// What the reconcile and error policy closures share.
struct Instrumented<S, F> {
    /// The controller's name in the metrics (`controller="..."`).
    name: &'static str,
    metrics: Arc<Metrics>,
    backoff: Backoff,
    state: Arc<S>,
    sync: F,
}

/// Runs `controller` with `sync(object, state)` as its reconcile until its streams end:
/// every reconcile is counted and timed under `name`, a success resets the object's
/// backoff, a failure is logged and retried after the object's next backoff delay (5 ms
/// doubling to 1000 s).
pub(crate) async fn run<K, S, E, F, Fut>(
    controller: Controller<K>,
    name: &'static str,
    metrics: Arc<Metrics>,
    state: Arc<S>,
    sync: F,
) where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    K::DynamicType: Eq + Hash + Clone + Debug + Unpin + Send + Sync,
    S: Send + Sync + 'static,
    E: std::error::Error + Send + Sync + 'static,
    F: Fn(Arc<K>, Arc<S>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Action, E>> + Send + 'static,
{
    let shared = Arc::new(Instrumented {
        name,
        metrics,
        backoff: Backoff::default(),
        state,
        sync,
    });
    controller
        .run(reconcile, error_policy, shared)
        .for_each(|r| async move {
            if let Err(e) = r {
                debug!(controller = name, error = %e, "controller event");
            }
        })
        .await;
}

fn reconcile<K, S, E, F, Fut>(
    obj: Arc<K>,
    shared: Arc<Instrumented<S, F>>,
) -> impl Future<Output = Result<Action, E>> + Send + 'static
where
    K: Resource + Send + Sync + 'static,
    S: Send + Sync + 'static,
    E: Send + 'static,
    F: Fn(Arc<K>, Arc<S>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Action, E>> + Send + 'static,
{
    let key = object_key(&*obj);
    let work = (shared.sync)(obj, shared.state.clone());
    async move {
        let result = shared.metrics.reconcile(shared.name, work).await;
        if result.is_ok() {
            shared.backoff.reset(&key);
        }
        result
    }
}

fn error_policy<K, S, E, F>(obj: Arc<K>, error: &E, shared: Arc<Instrumented<S, F>>) -> Action
where
    K: Resource,
    E: std::error::Error,
{
    let key = object_key(&*obj);
    let delay = shared.backoff.next_delay(&key);
    warn!(controller = shared.name, object = %key, %error, retry_in = ?delay, "sync failed");
    Action::requeue(delay)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{Namespace, Service};
    use kube::api::ObjectMeta;

    #[test]
    fn keys_name_namespaced_and_cluster_objects() {
        let svc = Service {
            metadata: ObjectMeta {
                name: Some("web".into()),
                namespace: Some("shop".into()),
                ..ObjectMeta::default()
            },
            ..Service::default()
        };
        let ns = Namespace {
            metadata: ObjectMeta {
                name: Some("shop".into()),
                ..ObjectMeta::default()
            },
            ..Namespace::default()
        };
        assert_eq!(object_key(&svc), "shop/web");
        assert_eq!(object_key(&ns), "shop");
    }
}
