//! The resourcequota controller: keeps every ResourceQuota's status true to what exists.
//! `status.hard` follows `spec.hard`; `status.used` is recounted from the objects of the
//! quota's namespace (`coxswain_resources::quota::calculate_usage`), so that what admission
//! charged comes back when pods finish or go, Services change type, objects are deleted, or
//! a charged create never got stored.
//!
//! A namespace is recounted when one of its quotas is new or changed its `spec.hard`, when a
//! counted object is deleted (or relisted away), when a pod stops being charged (it finished)
//! or a Service changes type, and for every namespace with quotas on a periodic full resync
//! (upstream's `--resource-quota-sync-period`). Other kinds named by `count/<resource>.<group>`
//! are found through discovery and watched from the first quota that names them.
//!
//! A recount reads the quotas first and the objects after, and writes with the quota's
//! resourceVersion as precondition: a charge admitted in between fails the write, which is
//! retried. One race remains, which upstream has too: a create admitted (charged) before the
//! quota was read whose object is not stored yet when the objects are listed would be
//! uncounted. So a recount lowers a usage only once the quota has not changed for
//! `Config::quota_settle_period` (2 s), far longer than admission takes between its charge
//! and its write; until then it keeps the charged value and looks again. Increases apply at
//! once.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::time::{Duration, Instant};

use coxswain_resources::pod;
use coxswain_resources::quantity::{self, ResourceList};
use coxswain_resources::quota::{self, Item, Object};
use futures::TryStreamExt;
use k8s_openapi::api::core::v1::{Pod, ResourceQuota, ResourceQuotaStatus, Service};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ApiResource, DynamicObject, ListParams, PostParams};
use kube::discovery::Scope;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Resource, ResourceExt};
use serde::de::DeserializeOwned;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tracing::{debug, info, warn};

use crate::Context;

/// The controller's name in `--controllers` (upstream's `resourcequota-controller`).
pub const NAME: &str = "resourcequota";
/// Pause before retrying a namespace whose recount failed.
const RETRY: Duration = Duration::from_secs(1);

/// Errors of the resourcequota controller.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Listing quotas or counted objects failed.
    #[error("failed to list {what} in namespace {namespace}: {source}")]
    List {
        what: String,
        namespace: String,
        #[source]
        source: kube::Error,
    },
    /// Writing a quota's status failed (other than a conflict, which is retried).
    #[error("failed to update the status of ResourceQuota {namespace}/{name}: {source}")]
    Update {
        namespace: String,
        name: String,
        #[source]
        source: kube::Error,
    },
    /// A watch ended.
    #[error("failed to run the resourcequota controller: its watches ended")]
    Stopped,
}

/// What a watched object's state is, as far as quota cares: a change of it (or the object's
/// deletion) gives usage back.
type Class<K> = fn(&K, Timestamp) -> u8;

/// A pod is charged for compute until it finishes (or outlives its deletion grace period).
fn pod_class(p: &Pod, now: Timestamp) -> u8 {
    u8::from(pod::charged_for_compute(p, now))
}

/// A Service's quota type: node ports and load balancers are counted.
fn service_class(s: &Service, _: Timestamp) -> u8 {
    match s.spec.as_ref().and_then(|s| s.type_.as_deref()) {
        Some("NodePort") => 1,
        Some("LoadBalancer") => 2,
        _ => 0,
    }
}

fn constant<K>(_: &K, _: Timestamp) -> u8 {
    0
}

/// Sends the namespace of every object deleted, relisted away or whose class changed.
async fn watch_changes<K>(api: Api<K>, class: Class<K>, queue: mpsc::UnboundedSender<String>)
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug + Send + 'static,
{
    let mut known: HashMap<String, (String, u8)> = HashMap::new();
    let mut relisted: HashSet<String> = HashSet::new();
    let mut stream = std::pin::pin!(watcher(api, watcher::Config::default()).default_backoff());
    let identity = |o: &K| (o.uid().unwrap_or_default(), o.namespace().unwrap_or_default());
    loop {
        let event = match stream.try_next().await {
            Ok(Some(event)) => event,
            Ok(None) => return,
            Err(e) => {
                debug!(error = %e, "resourcequota watch error (retrying)");
                continue;
            }
        };
        match event {
            watcher::Event::Init => relisted.clear(),
            watcher::Event::InitApply(o) => {
                let (uid, ns) = identity(&o);
                relisted.insert(uid.clone());
                known.insert(uid, (ns, class(&o, Timestamp::now())));
            }
            watcher::Event::InitDone => {
                known.retain(|uid, (ns, _)| {
                    let kept = relisted.contains(uid);
                    if !kept {
                        let _ = queue.send(ns.clone());
                    }
                    kept
                });
                relisted.clear();
            }
            watcher::Event::Apply(o) => {
                let (uid, ns) = identity(&o);
                let now = class(&o, Timestamp::now());
                if let Some((_, before)) = known.insert(uid, (ns.clone(), now))
                    && before != now
                {
                    let _ = queue.send(ns);
                }
            }
            watcher::Event::Delete(o) => {
                let (uid, ns) = identity(&o);
                known.remove(&uid);
                let _ = queue.send(ns);
            }
        }
    }
}

/// Sends the namespace of every quota whose status does not reflect its spec yet (new
/// quotas, changed `spec.hard`); status-only changes (the controller's and admission's own
/// writes) send nothing.
async fn watch_quotas(api: Api<ResourceQuota>, queue: mpsc::UnboundedSender<String>) {
    let mut stream = std::pin::pin!(watcher(api, watcher::Config::default()).default_backoff());
    loop {
        let q = match stream.try_next().await {
            Ok(Some(watcher::Event::Apply(q) | watcher::Event::InitApply(q))) => q,
            Ok(Some(_)) => continue,
            Ok(None) => return,
            Err(e) => {
                debug!(error = %e, "resourcequota watch error (retrying)");
                continue;
            }
        };
        let status = q.status.as_ref();
        let spec_hard = q.spec.as_ref().and_then(|s| s.hard.as_ref()).map(quantity::from_api).unwrap_or_default();
        let stale = match status.and_then(|s| s.hard.as_ref()) {
            None => true,
            Some(h) => !quantity::equals(&quantity::from_api(h), &spec_hard),
        } || status.and_then(|s| s.used.as_ref()).is_none();
        if stale {
            let _ = queue.send(q.namespace().unwrap_or_default());
        }
    }
}

/// Every `period`, from now on, sends every namespace that has a quota.
async fn resync(api: Api<ResourceQuota>, period: Duration, queue: mpsc::UnboundedSender<String>) {
    let mut ticks = tokio::time::interval(period);
    loop {
        ticks.tick().await;
        match api.list(&ListParams::default()).await {
            Ok(list) => {
                let namespaces: BTreeSet<String> =
                    list.items.iter().filter_map(ResourceExt::namespace).collect();
                for ns in namespaces {
                    let _ = queue.send(ns);
                }
            }
            Err(e) => warn!(error = %e, "resourcequota resync: failed to list quotas"),
        }
    }
}

/// The usage to write from the `previous` one and what a recount `computed`: the computed
/// values for the quota's `hard` resources (the previous ones where nothing could be
/// counted, as upstream), except that a decrease waits until the quota has `settled`.
/// Returns whether a decrease was held back.
fn next_usage(
    previous: &ResourceList,
    hard: &ResourceList,
    computed: ResourceList,
    settled: bool,
) -> (ResourceList, bool) {
    let mut used = quantity::mask(previous, hard.keys().map(String::as_str));
    let mut held = false;
    for (name, value) in computed {
        match previous.get(&name) {
            Some(before) if value < *before && !settled => held = true,
            _ => {
                used.insert(name, value);
            }
        }
    }
    (used, held)
}

/// The objects of one namespace a recount looked at.
#[derive(Default)]
struct Listed {
    kinds: BTreeSet<(String, String)>,
    pods: Vec<Pod>,
    services: Vec<Service>,
    /// How many objects of each other kind.
    counts: Vec<((String, String), usize)>,
}

impl Listed {
    fn items(&self) -> Vec<Item<'_>> {
        let mut items: Vec<Item<'_>> = Vec::new();
        items.extend(self.pods.iter().map(|p| Item { group: "", resource: "pods", object: Object::Pod(p) }));
        items.extend(
            self.services
                .iter()
                .map(|s| Item { group: "", resource: "services", object: Object::Service(s) }),
        );
        for ((group, resource), n) in &self.counts {
            items.extend((0..*n).map(|_| Item { group, resource, object: Object::Other }));
        }
        items
    }
}

/// The controller's state between recounts.
struct Controller {
    ctx: Context,
    queue: mpsc::UnboundedSender<String>,
    watchers: JoinSet<()>,
    /// Kinds named by quotas, resolved through discovery (`None`: not served).
    resolved: HashMap<(String, String), Option<ApiResource>>,
    /// Kinds whose deletions are watched.
    watched: HashSet<(String, String)>,
    /// Each quota's resourceVersion and when it was first seen with it.
    seen: HashMap<String, (String, Instant)>,
}

impl Controller {
    /// The namespaced resource `resource` of `group`, through discovery (cached).
    async fn resolve(&mut self, group: &str, resource: &str) -> Option<ApiResource> {
        let key = (group.to_owned(), resource.to_owned());
        if let Some(known) = self.resolved.get(&key) {
            return known.clone();
        }
        let found = match kube::discovery::group(&self.ctx.client, group).await {
            Ok(g) => g
                .recommended_resources()
                .into_iter()
                .find(|(ar, caps)| ar.plural == resource && caps.scope == Scope::Namespaced)
                .map(|(ar, _)| ar),
            Err(e) => {
                // Not cached: the group may appear later.
                debug!(group, error = %e, "resourcequota: group not discovered");
                return None;
            }
        };
        self.resolved.insert(key, found.clone());
        found
    }

    /// Starts watching the deletions of a counted kind, once.
    fn watch(&mut self, group: &str, resource: &str, api: &ApiResource) {
        if self.watched.insert((group.to_owned(), resource.to_owned())) {
            let all: Api<DynamicObject> = Api::all_with(self.ctx.client.clone(), api);
            self.watchers.spawn(watch_changes(all, constant::<DynamicObject>, self.queue.clone()));
        }
    }

    fn list_error(what: &str, namespace: &str) -> impl FnOnce(kube::Error) -> Error {
        let (what, namespace) = (what.to_owned(), namespace.to_owned());
        move |source| Error::List { what, namespace, source }
    }

    /// Lists what the quotas of `namespace` count.
    async fn list(&mut self, namespace: &str, kinds: BTreeSet<(String, String)>) -> Result<Listed, Error> {
        let client = self.ctx.client.clone();
        let params = ListParams::default();
        let mut listed = Listed::default();
        for (group, resource) in kinds {
            match (group.as_str(), resource.as_str()) {
                ("", "pods") => {
                    let api: Api<Pod> = Api::namespaced(client.clone(), namespace);
                    listed.pods = api.list(&params).await.map_err(Self::list_error("pods", namespace))?.items;
                }
                ("", "services") => {
                    let api: Api<Service> = Api::namespaced(client.clone(), namespace);
                    listed.services = api.list(&params).await.map_err(Self::list_error("services", namespace))?.items;
                }
                _ => {
                    let Some(ar) = self.resolve(&group, &resource).await else {
                        continue;
                    };
                    self.watch(&group, &resource, &ar);
                    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), namespace, &ar);
                    let n = api
                        .list(&params)
                        .await
                        .map_err(Self::list_error(&quota::object_count_name(&group, &resource), namespace))?
                        .items
                        .len();
                    listed.counts.push(((group.clone(), resource.clone()), n));
                }
            }
            listed.kinds.insert((group, resource));
        }
        Ok(listed)
    }

    /// Recounts the quotas of `namespace`; returns when to look again, if its usage is
    /// held (a decrease waiting for the quota to settle) or a write conflicted.
    async fn sync(&mut self, namespace: &str) -> Result<Option<Duration>, Error> {
        let api: Api<ResourceQuota> = Api::namespaced(self.ctx.client.clone(), namespace);
        let quotas = api
            .list(&ListParams::default())
            .await
            .map_err(Self::list_error("resourcequotas", namespace))?
            .items;
        let prefix = format!("{namespace}/");
        let current: HashSet<String> = quotas.iter().map(|q| format!("{namespace}/{}", q.name_any())).collect();
        self.seen.retain(|k, _| !k.starts_with(&prefix) || current.contains(k));
        if quotas.is_empty() {
            return Ok(None);
        }
        let kinds: BTreeSet<(String, String)> = quotas
            .iter()
            .filter_map(|q| q.spec.as_ref()?.hard.as_ref())
            .flat_map(|h| quota::tracked_kinds(h.keys().map(String::as_str)))
            .collect();
        let listed = self.list(namespace, kinds).await?;
        let items = listed.items();
        let now = Timestamp::now();
        let settle = self.ctx.config.quota_settle_period;
        let mut again: Option<Duration> = None;
        for q in quotas {
            let name = q.name_any();
            let key = format!("{namespace}/{name}");
            let rv = q.resource_version().unwrap_or_default();
            let first_seen = match self.seen.get(&key) {
                Some((seen_rv, at)) if *seen_rv == rv => *at,
                _ => {
                    let at = Instant::now();
                    self.seen.insert(key.clone(), (rv.clone(), at));
                    at
                }
            };
            let hard = q.spec.as_ref().and_then(|s| s.hard.as_ref()).map(quantity::from_api).unwrap_or_default();
            let status = q.status.clone().unwrap_or_default();
            let previous = status.used.as_ref().map(quantity::from_api).unwrap_or_default();
            let computed = quota::calculate_usage(&q, &listed.kinds, &items, now);
            let settled = first_seen.elapsed() >= settle;
            let (used, held) = next_usage(&previous, &hard, computed, settled);
            if held {
                let wait = settle.saturating_sub(first_seen.elapsed()) + Duration::from_millis(50);
                again = Some(again.map_or(wait, |a| a.min(wait)));
            }
            let hard_changed = status
                .hard
                .as_ref()
                .is_none_or(|h| !quantity::equals(&quantity::from_api(h), &hard));
            if !hard_changed && status.used.is_some() && quantity::equals(&used, &previous) {
                continue;
            }
            let mut updated = q.clone();
            updated.status = Some(ResourceQuotaStatus {
                hard: Some(quantity::to_api(&hard)),
                used: Some(quantity::to_api(&used)),
            });
            match api.replace_status(&name, &PostParams::default(), &updated).await {
                Ok(written) => {
                    debug!(quota = %key, used = %quantity::pretty_print(&used), "quota usage updated");
                    // Our own write signals no admission in flight: the quota stays as settled
                    // as it was.
                    self.seen.insert(key, (written.resource_version().unwrap_or_default(), first_seen));
                }
                // Charged (or changed) since it was read: count again at once.
                Err(kube::Error::Api(s)) if s.code == 409 => again = Some(Duration::ZERO),
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(source) => {
                    return Err(Error::Update { namespace: namespace.to_owned(), name, source });
                }
            }
        }
        Ok(again)
    }
}

/// Runs the resourcequota controller until its watches end.
pub async fn run(ctx: Context) -> Result<(), Error> {
    let client = ctx.client.clone();
    let (queue, mut pending) = mpsc::unbounded_channel::<String>();
    let mut watchers = JoinSet::new();
    watchers.spawn(watch_quotas(Api::all(client.clone()), queue.clone()));
    watchers.spawn(resync(Api::all(client.clone()), ctx.config.quota_resync_period, queue.clone()));
    watchers.spawn(watch_changes(Api::<Pod>::all(client.clone()), pod_class, queue.clone()));
    watchers.spawn(watch_changes(Api::<Service>::all(client.clone()), service_class, queue.clone()));
    let mut controller = Controller {
        ctx,
        queue: queue.clone(),
        watchers,
        resolved: HashMap::new(),
        watched: HashSet::from([(String::new(), "pods".to_owned()), (String::new(), "services".to_owned())]),
        seen: HashMap::new(),
    };
    // Delayed recounts; dropped (aborted) with the controller.
    let mut timers: JoinSet<()> = JoinSet::new();
    info!("starting the resourcequota controller");
    loop {
        while timers.try_join_next().is_some() {}
        let first = tokio::select! {
            ns = pending.recv() => match ns {
                Some(ns) => ns,
                None => return Err(Error::Stopped),
            },
            _ = controller.watchers.join_next() => return Err(Error::Stopped),
        };
        // Every namespace queued meanwhile is recounted once.
        let mut batch = BTreeSet::from([first]);
        while let Ok(ns) = pending.try_recv() {
            batch.insert(ns);
        }
        for ns in batch {
            if ns.is_empty() {
                continue;
            }
            let metrics = controller.ctx.metrics().clone();
            let result = metrics.reconcile(NAME, controller.sync(&ns)).await;
            let delay = match result {
                Ok(None) => continue,
                Ok(Some(delay)) => delay,
                Err(e) => {
                    warn!(namespace = %ns, error = %e, "resourcequota sync failed; retrying");
                    RETRY
                }
            };
            let queue = queue.clone();
            timers.spawn(async move {
                tokio::time::sleep(delay).await;
                let _ = queue.send(ns);
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn decreases_wait_for_the_quota_to_settle() {
        let list = |pairs: &[(&str, &str)]| -> ResourceList {
            pairs.iter().map(|(k, v)| (k.to_string(), coxswain_resources::Quantity::parse(v).unwrap())).collect()
        };
        let hard = list(&[("pods", "5"), ("requests.cpu", "2"), ("count/widgets.example.com", "1")]);
        let previous = list(&[("pods", "3"), ("requests.cpu", "1"), ("count/widgets.example.com", "1"), ("gone", "1")]);
        // Fewer pods than charged (one may be in flight), more cpu than charged.
        let computed = list(&[("pods", "2"), ("requests.cpu", "1500m")]);
        let (used, held) = next_usage(&previous, &hard, computed.clone(), false);
        assert!(held);
        assert_eq!(
            quantity::pretty_print(&used),
            "count/widgets.example.com=1,pods=3,requests.cpu=1500m",
            "the decrease waits, the increase applies, what was not counted stays, what is not limited goes"
        );
        let (used, held) = next_usage(&previous, &hard, computed, true);
        assert!(!held);
        assert_eq!(quantity::pretty_print(&used), "count/widgets.example.com=1,pods=2,requests.cpu=1500m");
    }

    #[test]
    fn what_gives_usage_back() {
        let now = Timestamp::now();
        let running: Pod = serde_json::from_value(json!({"status": {"phase": "Running"}})).unwrap();
        let done: Pod = serde_json::from_value(json!({"status": {"phase": "Succeeded"}})).unwrap();
        assert_ne!(pod_class(&running, now), pod_class(&done, now));
        let svc = |ty: &str| -> Service { serde_json::from_value(json!({"spec": {"type": ty}})).unwrap() };
        assert_eq!(service_class(&svc("ClusterIP"), now), service_class(&svc("ExternalName"), now));
        assert_ne!(service_class(&svc("ClusterIP"), now), service_class(&svc("NodePort"), now));
    }
}
