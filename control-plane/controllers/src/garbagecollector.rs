//! The garbage collector: deletes objects whose owners (`metadata.ownerReferences`) are all
//! gone, across every kind the API server serves (found through discovery), and carries out
//! the three propagation policies the API server records on delete:
//!
//! - Background: the owner goes at once; its dependents, now owner-less, are deleted after.
//! - Foreground: the API server leaves the owner with a deletionTimestamp and the
//!   `foregroundDeletion` finalizer; the collector deletes its dependents (in foreground when
//!   they block it with `blockOwnerDeletion`), and removes the finalizer once no blocking
//!   dependent remains, which lets the API server delete the owner.
//! - Orphan: the owner keeps the `orphan` finalizer until the collector has removed its
//!   ownerReference from every dependent; then the finalizer goes, and the owner with it.
//!
//! The object graph (uid, owners, deletion state: metadata only) is kept from one watch per
//! resource. A change of owners, finalizers or deletion state (not a mere heartbeat update)
//! triggers a pass over the whole graph, which decides what to do (O(objects) per batch of
//! changes, plenty for a single cluster's control plane; upstream keeps per-object work
//! queues instead). An owner missing from the graph
//! is confirmed absent with a live read before anything is deleted, so a watch that lags
//! cannot delete a dependent whose owner exists.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use futures::TryStreamExt;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{Api, ApiResource, DeleteParams, DynamicObject, Patch, PatchParams, Preconditions};
use kube::discovery::{Discovery, Scope, verbs};
use kube::runtime::{WatchStreamExt, watcher};
use kube::ResourceExt;
use serde_json::json;
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use crate::Context;

/// The controller's name in `--controllers`.
pub const NAME: &str = "garbagecollector";
/// Finalizer of an owner being deleted in foreground.
pub const FOREGROUND_FINALIZER: &str = "foregroundDeletion";
/// Finalizer of an owner whose dependents are being orphaned.
pub const ORPHAN_FINALIZER: &str = "orphan";
/// Resources never collected (as upstream: Events churn and are never owned).
const IGNORED: [(&str, &str); 2] = [("", "events"), ("events.k8s.io", "events")];

/// Errors of the garbage collector.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Discovery of the served resources failed.
    #[error("failed to discover the API server's resources: {0}")]
    Discovery(#[source] kube::Error),
    /// An API call about one object failed.
    #[error("failed to {action} {object}: {source}")]
    Object {
        action: &'static str,
        object: String,
        #[source]
        source: kube::Error,
    },
    /// Every watch ended.
    #[error("failed to run the garbage collector: its watches ended")]
    Stopped,
}

/// A served resource the collector watches.
#[derive(Debug)]
struct Resource {
    api: ApiResource,
    namespaced: bool,
}

/// What the collector knows of one object.
#[derive(Debug, Clone)]
struct Item {
    resource: usize,
    namespace: Option<String>,
    name: String,
    uid: String,
    resource_version: String,
    owners: Vec<OwnerReference>,
    deleting: bool,
    finalizers: Vec<String>,
}

impl Item {
    fn from_object(resource: usize, obj: &DynamicObject) -> Option<Item> {
        Some(Item {
            resource,
            namespace: obj.namespace(),
            name: obj.name_any(),
            uid: obj.uid()?,
            resource_version: obj.resource_version().unwrap_or_default(),
            owners: obj.metadata.owner_references.clone().unwrap_or_default(),
            deleting: obj.metadata.deletion_timestamp.is_some(),
            finalizers: obj.metadata.finalizers.clone().unwrap_or_default(),
        })
    }

    fn has_finalizer(&self, f: &str) -> bool {
        self.finalizers.iter().any(|x| x == f)
    }
}

enum Change {
    Relist(usize),
    Listed(usize, DynamicObject),
    Relisted(usize),
    Applied(usize, DynamicObject),
    Deleted(DynamicObject),
}

/// The collector's state: resources, the graph, and the listing in progress per resource.
struct Collector {
    ctx: Context,
    resources: Vec<Resource>,
    items: HashMap<String, Item>,
    listing: HashMap<usize, HashSet<String>>,
    synced: HashSet<usize>,
}

fn describe(resource: &Resource, namespace: Option<&str>, name: &str) -> String {
    match namespace {
        Some(ns) => format!("{} {ns}/{name}", resource.api.kind),
        None => format!("{} {name}", resource.api.kind),
    }
}

/// How a dependent stands with respect to one of its owners.
#[derive(Debug, PartialEq)]
enum OwnerState {
    /// The owner exists and is not waiting for its dependents.
    Solid,
    /// The owner is being deleted in foreground.
    WaitingForDependents,
    /// The owner does not exist (or another object with its name does).
    Dangling,
}

impl Collector {
    fn api_for(&self, resource: usize, namespace: Option<&str>) -> Api<DynamicObject> {
        let r = &self.resources[resource];
        match (r.namespaced, namespace) {
            (true, Some(ns)) => Api::namespaced_with(self.ctx.client.clone(), ns, &r.api),
            _ => Api::all_with(self.ctx.client.clone(), &r.api),
        }
    }

    fn item_api(&self, item: &Item) -> Api<DynamicObject> {
        self.api_for(item.resource, item.namespace.as_deref())
    }

    fn describe(&self, item: &Item) -> String {
        describe(&self.resources[item.resource], item.namespace.as_deref(), &item.name)
    }

    /// Applies a watched change; returns whether it can matter to collection (a change of
    /// owners, finalizers or deletion state, a deletion, the end of a list). Heartbeat-like
    /// updates (a node's Lease renewed every few seconds) only refresh the stored version.
    fn apply(&mut self, change: Change) -> bool {
        match change {
            Change::Relist(r) => {
                self.listing.insert(r, HashSet::new());
                false
            }
            Change::Listed(r, obj) => {
                if let Some(item) = Item::from_object(r, &obj) {
                    self.listing.entry(r).or_default().insert(item.uid.clone());
                    self.items.insert(item.uid.clone(), item);
                }
                false
            }
            Change::Relisted(r) => {
                let listed = self.listing.remove(&r).unwrap_or_default();
                self.items
                    .retain(|uid, item| item.resource != r || listed.contains(uid));
                self.synced.insert(r);
                true
            }
            Change::Applied(r, obj) => {
                let Some(item) = Item::from_object(r, &obj) else { return false };
                let relevant = match self.items.get(&item.uid) {
                    Some(old) => {
                        old.owners != item.owners
                            || old.deleting != item.deleting
                            || old.finalizers != item.finalizers
                    }
                    None => true,
                };
                self.items.insert(item.uid.clone(), item);
                relevant
            }
            Change::Deleted(obj) => {
                if let Some(uid) = obj.uid() {
                    self.items.remove(&uid);
                }
                true
            }
        }
    }

    /// The resource an ownerReference points at.
    fn resource_of(&self, owner: &OwnerReference) -> Option<usize> {
        let (group, version) = match owner.api_version.split_once('/') {
            Some((g, v)) => (g, v),
            None => ("", owner.api_version.as_str()),
        };
        let by_kind = |exact_version: bool| {
            self.resources.iter().position(|r| {
                r.api.group == group
                    && r.api.kind == owner.kind
                    && (!exact_version || r.api.version == version)
            })
        };
        by_kind(true).or_else(|| by_kind(false))
    }

    /// Whether the owner `owner` of `dependent` exists, confirming absence with a live read.
    async fn owner_state(&self, dependent: &Item, owner: &OwnerReference) -> Result<OwnerState, Error> {
        if let Some(o) = self.items.get(&owner.uid) {
            return Ok(if o.deleting && o.has_finalizer(FOREGROUND_FINALIZER) {
                OwnerState::WaitingForDependents
            } else {
                OwnerState::Solid
            });
        }
        let Some(r) = self.resource_of(owner) else {
            // A kind this server does not serve cannot be checked: leave the dependent be.
            debug!(owner = %owner.kind, "ownerReference to an unknown kind");
            return Ok(OwnerState::Solid);
        };
        let namespace = if self.resources[r].namespaced {
            dependent.namespace.as_deref()
        } else {
            None
        };
        if self.resources[r].namespaced && namespace.is_none() {
            // A cluster-scoped object cannot be owned by a namespaced one.
            return Ok(OwnerState::Dangling);
        }
        match self.api_for(r, namespace).get_opt(&owner.name).await {
            Ok(Some(o)) if o.uid().as_deref() == Some(owner.uid.as_str()) => {
                let waiting = o.metadata.deletion_timestamp.is_some()
                    && o.finalizers().iter().any(|f| f == FOREGROUND_FINALIZER);
                Ok(if waiting {
                    OwnerState::WaitingForDependents
                } else {
                    OwnerState::Solid
                })
            }
            Ok(_) => Ok(OwnerState::Dangling),
            Err(source) => Err(Error::Object {
                action: "read the owner of",
                object: self.describe(dependent),
                source,
            }),
        }
    }

    async fn delete(&self, item: &Item, params: DeleteParams) -> Result<(), Error> {
        let params = DeleteParams {
            preconditions: Some(Preconditions {
                uid: Some(item.uid.clone()),
                resource_version: None,
            }),
            ..params
        };
        match self.item_api(item).delete(&item.name, &params).await {
            Ok(_) => {
                info!(object = %self.describe(item), policy = ?params.propagation_policy, "garbage collected");
                Ok(())
            }
            Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => Ok(()),
            Err(source) => Err(Error::Object {
                action: "delete",
                object: self.describe(item),
                source,
            }),
        }
    }

    /// Removes the ownerReferences with `uids` from `item` (strategic merge, keyed by uid).
    async fn remove_owner_refs(&self, item: &Item, uids: &[&str]) -> Result<(), Error> {
        let refs: Vec<_> = uids.iter().map(|u| json!({"$patch": "delete", "uid": u})).collect();
        let patch = json!({"metadata": {"ownerReferences": refs, "uid": item.uid}});
        match self
            .item_api(item)
            .patch(&item.name, &PatchParams::default(), &Patch::Strategic(&patch))
            .await
        {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
            Err(source) => Err(Error::Object {
                action: "remove ownerReferences from",
                object: self.describe(item),
                source,
            }),
        }
    }

    /// Removes `finalizer` from `item`, guarded by its resourceVersion.
    async fn remove_finalizer(&self, item: &Item, finalizer: &str) -> Result<(), Error> {
        let finalizers: Vec<&String> = item.finalizers.iter().filter(|f| *f != finalizer).collect();
        let patch = json!({"metadata": {
            "finalizers": finalizers,
            "resourceVersion": item.resource_version,
        }});
        match self
            .item_api(item)
            .patch(&item.name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => {
                info!(object = %self.describe(item), finalizer, "finalizer removed");
                Ok(())
            }
            // A newer version exists: the next pass sees it.
            Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => Ok(()),
            Err(source) => Err(Error::Object {
                action: "remove a finalizer from",
                object: self.describe(item),
                source,
            }),
        }
    }

    /// One pass over the graph. Returns how many objects still need work.
    async fn collect(&self) -> (usize, Vec<Error>) {
        let mut errors = Vec::new();
        let mut pending = 0;
        let mut dependents: HashMap<&str, Vec<&Item>> = HashMap::new();
        for item in self.items.values() {
            for owner in &item.owners {
                dependents.entry(owner.uid.as_str()).or_default().push(item);
            }
        }
        for item in self.items.values() {
            let result = self.process(item, &dependents, &mut pending).await;
            if let Err(e) = result {
                errors.push(e);
            }
        }
        (pending, errors)
    }

    async fn process(
        &self,
        item: &Item,
        dependents: &HashMap<&str, Vec<&Item>>,
        pending: &mut usize,
    ) -> Result<(), Error> {
        let deps: &[&Item] = dependents.get(item.uid.as_str()).map_or(&[], Vec::as_slice);
        // Orphan: strip our reference from every dependent, then let the owner go.
        if item.deleting && item.has_finalizer(ORPHAN_FINALIZER) {
            *pending += 1;
            for dep in deps {
                self.remove_owner_refs(dep, &[item.uid.as_str()]).await?;
            }
            self.ctx.metrics().count(NAME, true);
            return self.remove_finalizer(item, ORPHAN_FINALIZER).await;
        }
        // Foreground: delete the dependents; the owner goes when no blocking one is left.
        if item.deleting && item.has_finalizer(FOREGROUND_FINALIZER) {
            *pending += 1;
            let blocking = deps
                .iter()
                .filter(|d| {
                    d.owners
                        .iter()
                        .any(|o| o.uid == item.uid && o.block_owner_deletion == Some(true))
                })
                .count();
            for dep in deps.iter().filter(|d| !d.deleting) {
                let has_dependents = dependents.contains_key(dep.uid.as_str());
                self.delete_dependent(dep, has_dependents).await?;
            }
            if blocking == 0 {
                self.ctx.metrics().count(NAME, true);
                return self.remove_finalizer(item, FOREGROUND_FINALIZER).await;
            }
            return Ok(());
        }
        if item.deleting || item.owners.is_empty() {
            return Ok(());
        }
        // Background, and owners deleted long ago: is any owner still there?
        let mut dangling = Vec::new();
        let mut waiting = Vec::new();
        let mut solid = 0;
        for owner in &item.owners {
            match self.owner_state(item, owner).await? {
                OwnerState::Solid => solid += 1,
                OwnerState::WaitingForDependents => waiting.push(owner),
                OwnerState::Dangling => dangling.push(owner),
            }
        }
        if solid > 0 {
            if !dangling.is_empty() {
                let uids: Vec<&str> = dangling.iter().map(|o| o.uid.as_str()).collect();
                self.remove_owner_refs(item, &uids).await?;
                self.ctx.metrics().count(NAME, true);
            }
            return Ok(());
        }
        if waiting.is_empty() && dangling.is_empty() {
            return Ok(());
        }
        // Handled through the owner's foreground pass when one is waiting.
        if !waiting.is_empty() {
            return Ok(());
        }
        *pending += 1;
        self.ctx.metrics().count(NAME, true);
        self.delete(item, policy_for(item)).await
    }

    /// Deletes a dependent of an owner being deleted in foreground: in foreground itself when
    /// it blocks its owner and has dependents of its own (so the chain is waited for).
    async fn delete_dependent(&self, dep: &Item, has_dependents: bool) -> Result<(), Error> {
        // If another owner still holds it, only our reference goes.
        let mut others_solid = false;
        for owner in &dep.owners {
            let waiting = self
                .items
                .get(&owner.uid)
                .is_some_and(|o| o.deleting && o.has_finalizer(FOREGROUND_FINALIZER));
            if !waiting && self.owner_state(dep, owner).await? == OwnerState::Solid {
                others_solid = true;
            }
        }
        if others_solid {
            let waiting: Vec<&str> = dep
                .owners
                .iter()
                .filter(|o| {
                    self.items
                        .get(&o.uid)
                        .is_some_and(|x| x.deleting && x.has_finalizer(FOREGROUND_FINALIZER))
                })
                .map(|o| o.uid.as_str())
                .collect();
            return self.remove_owner_refs(dep, &waiting).await;
        }
        let blocks = dep.owners.iter().any(|o| o.block_owner_deletion == Some(true));
        let params = if has_dependents && blocks {
            DeleteParams::foreground()
        } else {
            policy_for(dep)
        };
        self.ctx.metrics().count(NAME, true);
        self.delete(dep, params).await
    }
}

/// Upstream's choice for an owner-less object: its own recorded policy, else background.
fn policy_for(item: &Item) -> DeleteParams {
    if item.has_finalizer(ORPHAN_FINALIZER) {
        DeleteParams::orphan()
    } else if item.has_finalizer(FOREGROUND_FINALIZER) {
        DeleteParams::foreground()
    } else {
        DeleteParams::background()
    }
}

/// The resources to watch: every listable, watchable, deletable one but Events.
async fn discover(client: kube::Client) -> Result<Vec<Resource>, Error> {
    let discovery = Discovery::new(client).run().await.map_err(Error::Discovery)?;
    let mut out = Vec::new();
    for group in discovery.groups() {
        for (api, caps) in group.recommended_resources() {
            let ops = [verbs::LIST, verbs::WATCH, verbs::DELETE];
            if !ops.iter().all(|v| caps.supports_operation(v)) {
                continue;
            }
            if IGNORED.contains(&(api.group.as_str(), api.plural.as_str())) {
                continue;
            }
            out.push(Resource {
                namespaced: caps.scope == Scope::Namespaced,
                api,
            });
        }
    }
    Ok(out)
}

fn spawn_watch(
    client: kube::Client,
    index: usize,
    api: ApiResource,
    tx: mpsc::Sender<Change>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let all: Api<DynamicObject> = Api::all_with(client, &api);
        let mut stream = std::pin::pin!(watcher(all, watcher::Config::default()).default_backoff());
        loop {
            let change = match stream.try_next().await {
                Ok(Some(watcher::Event::Init)) => Change::Relist(index),
                Ok(Some(watcher::Event::InitApply(o))) => Change::Listed(index, o),
                Ok(Some(watcher::Event::InitDone)) => Change::Relisted(index),
                Ok(Some(watcher::Event::Apply(o))) => Change::Applied(index, o),
                Ok(Some(watcher::Event::Delete(o))) => Change::Deleted(o),
                Ok(None) => return,
                Err(e) => {
                    debug!(resource = %api.plural, error = %e, "garbage collector watch error");
                    continue;
                }
            };
            if tx.send(change).await.is_err() {
                return;
            }
        }
    })
}

/// Aborts the watch tasks when the collector stops (or is aborted).
struct Watches(Vec<tokio::task::JoinHandle<()>>);

impl Drop for Watches {
    fn drop(&mut self) {
        for t in &self.0 {
            t.abort();
        }
    }
}

/// Runs the garbage collector until its watches end.
pub async fn run(ctx: Context) -> Result<(), Error> {
    let client = ctx.client.clone();
    let resources = loop {
        match discover(client.clone()).await {
            Ok(r) => break r,
            Err(e) => {
                warn!(error = %e, "garbage collector discovery failed, retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    };
    info!(resources = resources.len(), "starting the garbage collector");
    let (tx, mut rx) = mpsc::channel(1024);
    let _watches = Watches(
        resources
            .iter()
            .enumerate()
            .map(|(i, r)| spawn_watch(client.clone(), i, r.api.clone(), tx.clone()))
            .collect(),
    );
    drop(tx);
    let resync = ctx.config.gc_resync_period;
    let mut collector = Collector {
        ctx,
        items: HashMap::new(),
        listing: HashMap::new(),
        synced: HashSet::new(),
        resources,
    };
    // When the next pass is due (after relevant changes, or to retry), and the next resync.
    let mut next_pass: Option<Instant> = None;
    let mut next_resync = Instant::now() + resync;
    loop {
        let due = next_pass.map_or(next_resync, |p| p.min(next_resync));
        tokio::select! {
            change = rx.recv() => {
                let Some(change) = change else { return Err(Error::Stopped) };
                let mut relevant = collector.apply(change);
                // Take everything already queued before acting on it.
                while let Ok(change) = rx.try_recv() {
                    relevant |= collector.apply(change);
                }
                if relevant {
                    // A short pause batches a burst of related changes (a cascade).
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    while let Ok(change) = rx.try_recv() {
                        collector.apply(change);
                    }
                    next_pass = Some(Instant::now());
                }
            }
            () = tokio::time::sleep_until(due.into()) => {}
        }
        let now = Instant::now();
        if now >= next_resync {
            next_pass = Some(now);
            next_resync = now + resync;
        }
        match next_pass {
            Some(p) if p <= now => {}
            _ => continue,
        }
        if collector.synced.len() < collector.resources.len() {
            next_pass = Some(now + Duration::from_millis(100));
            continue;
        }
        let (pending, errors) = collector.collect().await;
        collector.ctx.metrics().set_queue_depth(NAME, pending);
        next_pass = if !errors.is_empty() {
            for e in &errors {
                warn!(error = %e, "garbage collection step failed, will retry");
                collector.ctx.metrics().count(NAME, false);
            }
            Some(Instant::now() + Duration::from_millis(500))
        } else if pending > 0 {
            // Work waits on others (graceful deletions, finalizers): look again soon.
            Some(Instant::now() + Duration::from_secs(1))
        } else {
            None
        };
    }
}
