//! What the workload controllers share: owner references, pod predicates, expectations,
//! slow-start batches, adoption and release, and the workload write metrics.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Debug;
use std::future::Future;
use std::hash::Hash;
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};

use futures::{Stream, TryStreamExt};
use jiff::Timestamp;
use k8s_openapi::api::apps::v1::ControllerRevision;
use k8s_openapi::api::core::v1::{Pod, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::runtime::RawExtension;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::core::{Selector, SelectorExt};
use kube::runtime::controller::Action;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Resource, ResourceExt};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use serde::de::DeserializeOwned;
use serde_json::json;
use tracing::debug;

use super::Error;

/// How long unmet expectations are trusted before a controller acts anyway (upstream's
/// `ExpectationsTimeout`).
const EXPECTATIONS_TIMEOUT: Duration = Duration::from_secs(300);
/// Upper bound of creations or deletions in one sync (upstream's `burstReplicas`).
pub(crate) const BURST: usize = 500;
/// First batch of a slow-start creation run (upstream's `SlowStartInitialBatchSize`).
const SLOW_START_INITIAL: usize = 1;
/// Characters of generated name suffixes, as upstream's `rand.String` (no vowels, no
/// look-alikes).
const ALPHANUMS: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";

/// Uniform access to `spec` whether k8s-openapi makes it optional (Pod, Job) or not
/// (the apps kinds).
pub(crate) trait SpecOpt {
    type Spec;
    fn spec_opt(&self) -> Option<&Self::Spec>;
}

macro_rules! spec_opt {
    ($kind:ty, $spec:ty, required) => {
        impl SpecOpt for $kind {
            type Spec = $spec;
            fn spec_opt(&self) -> Option<&$spec> {
                Some(&self.spec)
            }
        }
    };
    ($kind:ty, $spec:ty, optional) => {
        impl SpecOpt for $kind {
            type Spec = $spec;
            fn spec_opt(&self) -> Option<&$spec> {
                self.spec.as_ref()
            }
        }
    };
}

spec_opt!(
    k8s_openapi::api::apps::v1::Deployment,
    k8s_openapi::api::apps::v1::DeploymentSpec,
    required
);
spec_opt!(
    k8s_openapi::api::apps::v1::ReplicaSet,
    k8s_openapi::api::apps::v1::ReplicaSetSpec,
    required
);
spec_opt!(Pod, k8s_openapi::api::core::v1::PodSpec, optional);

/// The current time.
pub(crate) fn now() -> Timestamp {
    Timestamp::now()
}

/// Namespace and name of an object, for logs and messages.
pub(crate) fn key_of<K: Resource>(obj: &K) -> String {
    format!("{}/{}", obj.namespace().unwrap_or_default(), obj.name_any())
}

/// `n` characters from upstream's alphabet for generated names.
pub(crate) fn random_suffix(n: usize) -> String {
    let mut out = String::with_capacity(n);
    while out.len() < n {
        for b in uuid::Uuid::new_v4().into_bytes() {
            if out.len() == n {
                break;
            }
            out.push(ALPHANUMS[usize::from(b) % ALPHANUMS.len()] as char);
        }
    }
    out
}

/// 32-bit FNV-1a, the hash upstream's `ComputeHash` uses for pod-template-hash and
/// controller-revision-hash.
pub(crate) fn fnv32a(data: &[u8]) -> u32 {
    let mut hash: u32 = 0x811c_9dc5;
    for b in data {
        hash ^= u32::from(*b);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    hash
}

/// Upstream's `rand.SafeEncodeString`: each character mapped onto the alphabet without
/// vowels, so hashes never spell words.
pub(crate) fn safe_encode(s: &str) -> String {
    s.bytes()
        .map(|b| ALPHANUMS[usize::from(b) % ALPHANUMS.len()] as char)
        .collect()
}

/// The hash of a pod template (plus the collision count), as a label value.
pub(crate) fn template_hash(template: &PodTemplateSpec, collision_count: Option<i32>) -> String {
    let mut data = serde_json::to_vec(template).unwrap_or_default();
    if let Some(c) = collision_count {
        data.extend_from_slice(&c.to_le_bytes());
    }
    safe_encode(&fnv32a(&data).to_string())
}

/// The controller owner reference of `meta`, if any.
pub(crate) fn controller_of(meta: &ObjectMeta) -> Option<&OwnerReference> {
    meta.owner_references
        .as_ref()?
        .iter()
        .find(|r| r.controller == Some(true))
}

/// Whether `meta` is controlled by the object with `uid`.
pub(crate) fn is_controlled_by(meta: &ObjectMeta, uid: &str) -> bool {
    controller_of(meta).is_some_and(|r| r.uid == uid)
}

/// A controller owner reference to `owner` (controller and blockOwnerDeletion set, so the
/// garbage collector cascades deletes in foreground too).
pub(crate) fn owner_ref<K: Resource<DynamicType = ()>>(owner: &K) -> OwnerReference {
    OwnerReference {
        api_version: K::api_version(&()).into_owned(),
        kind: K::kind(&()).into_owned(),
        name: owner.name_any(),
        uid: owner.meta().uid.clone().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

/// A label selector as kube's [`Selector`].
pub(crate) fn selector_of(ls: Option<&LabelSelector>, object: &str) -> Result<Selector, Error> {
    let ls = ls.cloned().unwrap_or_default();
    let empty = ls.match_labels.as_ref().is_none_or(BTreeMap::is_empty)
        && ls.match_expressions.as_ref().is_none_or(Vec::is_empty);
    if empty {
        return Err(Error::Invalid {
            object: object.to_owned(),
            message: "spec.selector is empty; it would select every pod".to_owned(),
        });
    }
    Selector::try_from(ls).map_err(|e| Error::Invalid {
        object: object.to_owned(),
        message: format!("invalid spec.selector: {e}"),
    })
}

/// Whether `selector` selects the labels of `meta`.
pub(crate) fn selects(selector: &Selector, meta: &ObjectMeta) -> bool {
    let empty = BTreeMap::new();
    selector.matches(meta.labels.as_ref().unwrap_or(&empty))
}

/// The pod's phase (`""` when unset).
pub(crate) fn phase(pod: &Pod) -> &str {
    pod.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("")
}

/// Not terminating and not finished: counts towards a ReplicaSet's replicas.
pub(crate) fn is_active(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_none() && !matches!(phase(pod), "Succeeded" | "Failed")
}

/// Terminating: has a deletionTimestamp.
pub(crate) fn is_terminating(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_some()
}

/// When the pod became Ready, if it is Ready.
pub(crate) fn ready_since(pod: &Pod) -> Option<Timestamp> {
    let cond = pod
        .status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "Ready")?;
    if cond.status != "True" {
        return None;
    }
    Some(
        cond.last_transition_time
            .as_ref()
            .map(|t| t.0)
            .unwrap_or(Timestamp::UNIX_EPOCH),
    )
}

/// Running and Ready (and not terminating).
pub(crate) fn is_ready(pod: &Pod) -> bool {
    !is_terminating(pod) && phase(pod) == "Running" && ready_since(pod).is_some()
}

/// Ready for at least `min_ready_seconds` at `now`. Terminating pods are never available.
pub(crate) fn is_available(pod: &Pod, min_ready_seconds: i32, now: Timestamp) -> bool {
    if !is_ready(pod) {
        return false;
    }
    let Some(since) = ready_since(pod) else {
        return false;
    };
    min_ready_seconds <= 0
        || since
            .checked_add(jiff::SignedDuration::from_secs(i64::from(
                min_ready_seconds,
            )))
            .is_ok_and(|t| t <= now)
}

/// How long until a Ready pod becomes available, if it is Ready but not yet available.
pub(crate) fn until_available(
    pod: &Pod,
    min_ready_seconds: i32,
    now: Timestamp,
) -> Option<Duration> {
    if min_ready_seconds <= 0 || !is_ready(pod) {
        return None;
    }
    let since = ready_since(pod)?;
    let at = since
        .checked_add(jiff::SignedDuration::from_secs(i64::from(
            min_ready_seconds,
        )))
        .ok()?;
    if at <= now {
        return None;
    }
    Some(at.duration_since(now).unsigned_abs() + Duration::from_millis(100))
}

/// A pod for `template`, named `name`, owned by `owner`, with `extra_labels` added.
pub(crate) fn pod_from_template(
    template: &PodTemplateSpec,
    name: &str,
    namespace: &str,
    owner: OwnerReference,
    extra_labels: &BTreeMap<String, String>,
) -> Pod {
    let tmeta = template.metadata.clone().unwrap_or_default();
    let mut labels = tmeta.labels.unwrap_or_default();
    labels.extend(extra_labels.clone());
    Pod {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            namespace: Some(namespace.to_owned()),
            labels: Some(labels),
            annotations: tmeta.annotations,
            finalizers: tmeta.finalizers,
            owner_references: Some(vec![owner]),
            ..ObjectMeta::default()
        },
        spec: template.spec.clone(),
        status: None,
    }
}

/// Sizes of slow-start batches for `count` creations: 1, 2, 4, ... (upstream's
/// `slowStartBatch`). A batch runs only if every call of the previous one succeeded.
pub(crate) async fn slow_start<F, Fut>(count: usize, mut create: F) -> (usize, Option<Error>)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<(), Error>>,
{
    let mut done = 0;
    let mut batch = SLOW_START_INITIAL.min(count);
    while batch > 0 {
        let results = futures::future::join_all((0..batch).map(|_| create())).await;
        let mut first_err = None;
        for r in results {
            match r {
                Ok(()) => done += 1,
                Err(e) => {
                    first_err.get_or_insert(e);
                }
            }
        }
        if let Some(e) = first_err {
            return (done, Some(e));
        }
        batch = (2 * batch).min(count - done);
    }
    (done, None)
}

/// Pending creations (by name) and deletions (by uid) of one controller object, like
/// upstream's `UIDTrackingControllerExpectations`: until the pod watch has shown every
/// one of them, the object's pod cache may lag behind its own writes and the controller
/// must not create or delete more.
#[derive(Debug, Default)]
pub(crate) struct Expectations {
    pending: Mutex<HashMap<String, Pending>>,
}

#[derive(Debug)]
struct Pending {
    adds: HashSet<String>,
    deletes: HashSet<String>,
    since: Instant,
}

impl Expectations {
    /// Records that `key` is about to create a pod named `name`.
    pub(crate) fn expect_create(&self, key: &str, name: &str) {
        self.entry(key, |p| {
            p.adds.insert(name.to_owned());
        });
    }

    /// Records that `key` is about to delete the pod with `uid`.
    pub(crate) fn expect_delete(&self, key: &str, uid: &str) {
        self.entry(key, |p| {
            p.deletes.insert(uid.to_owned());
        });
    }

    fn entry(&self, key: &str, f: impl FnOnce(&mut Pending)) {
        let mut pending = self.pending.lock().expect("expectations lock");
        let p = pending.entry(key.to_owned()).or_insert_with(|| Pending {
            adds: HashSet::new(),
            deletes: HashSet::new(),
            since: Instant::now(),
        });
        if p.adds.is_empty() && p.deletes.is_empty() {
            p.since = Instant::now();
        }
        f(p);
    }

    /// A write that failed will never be observed: forget it.
    pub(crate) fn creation_failed(&self, key: &str, name: &str) {
        if let Some(p) = self.pending.lock().expect("expectations lock").get_mut(key) {
            p.adds.remove(name);
        }
    }

    /// A deletion that failed (or found nothing) will never be observed: forget it.
    pub(crate) fn deletion_failed(&self, key: &str, uid: &str) {
        if let Some(p) = self.pending.lock().expect("expectations lock").get_mut(key) {
            p.deletes.remove(uid);
        }
    }

    /// Whether `key` may act on its pod cache: nothing pending, or pending for too long.
    pub(crate) fn satisfied(&self, key: &str) -> bool {
        let pending = self.pending.lock().expect("expectations lock");
        match pending.get(key) {
            None => true,
            Some(p) => {
                (p.adds.is_empty() && p.deletes.is_empty())
                    || p.since.elapsed() > EXPECTATIONS_TIMEOUT
            }
        }
    }

    /// Forgets everything about `key` (its object is gone).
    pub(crate) fn forget(&self, key: &str) {
        self.pending.lock().expect("expectations lock").remove(key);
    }

    /// Feeds one pod watch event (after the cache has applied it).
    pub(crate) fn observe(&self, event: &watcher::Event<Pod>) {
        let (pod, deleted) = match event {
            watcher::Event::Apply(p) | watcher::Event::InitApply(p) => (p, false),
            watcher::Event::Delete(p) => (p, true),
            watcher::Event::Init | watcher::Event::InitDone => return,
        };
        let name = pod.name_any();
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let gone = deleted || pod.metadata.deletion_timestamp.is_some();
        let mut pending = self.pending.lock().expect("expectations lock");
        // The owner is not needed to find the entry: names and uids are unique within
        // a namespace and the key holds it.
        let ns = pod.namespace().unwrap_or_default();
        for (key, p) in pending.iter_mut() {
            if !key.starts_with(&format!("{ns}/")) {
                continue;
            }
            p.adds.remove(&name);
            if gone {
                p.deletes.remove(&uid);
            }
        }
        pending.retain(|_, p| !(p.adds.is_empty() && p.deletes.is_empty()));
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ActionLabels {
    controller: &'static str,
    action: &'static str,
}

/// Objects the workload controllers wrote, beyond the reconcile counts and latencies
/// every controller reports through [`crate::Metrics`].
#[derive(Debug)]
pub(crate) struct Metrics {
    writes: Family<ActionLabels, Counter>,
}

pub(crate) static METRICS: LazyLock<Metrics> = LazyLock::new(|| Metrics {
    writes: Family::default(),
});

impl Metrics {
    /// Counts a pod/ReplicaSet/Job creation or deletion.
    pub(crate) fn write(&self, controller: &'static str, action: &'static str) {
        self.writes
            .get_or_create(&ActionLabels { controller, action })
            .inc();
    }
}

/// Registers the workload controllers' own metrics (`coxswain_workload_writes`: pods,
/// ReplicaSets and Jobs created or deleted, by controller and action). Reconcile counts
/// and latencies are in [`crate::Metrics`].
pub fn register_metrics(registry: &mut Registry) {
    registry.register(
        "coxswain_workload_writes",
        "Objects created or deleted by the workload controllers, by controller and action",
        METRICS.writes.clone(),
    );
}

/// A reflector over all objects of `K` whose events go through `observe` after the cache
/// applied them, as a trigger stream of touched objects.
pub(crate) fn reflect<K>(
    api: Api<K>,
    observe: impl Fn(&watcher::Event<K>) + Send + 'static,
) -> (
    Store<K>,
    impl Stream<Item = Result<K, watcher::Error>> + Send + 'static,
)
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    let (reader, writer) = reflector::store();
    let stream = reflector::reflector(
        writer,
        watcher(api, watcher::Config::default()).default_backoff(),
    )
    .inspect_ok(move |ev| observe(ev))
    .touched_objects();
    (reader, stream)
}

/// [`reflect`] over the owners a controller keeps [`Expectations`] for: a deleted owner's
/// pending expectations are forgotten, so a recreated one with the same name starts clean.
pub(crate) fn reflect_owners<K>(
    api: Api<K>,
    expectations: Arc<Expectations>,
) -> (
    Store<K>,
    impl Stream<Item = Result<K, watcher::Error>> + Send + 'static,
)
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    reflect(api, move |ev| {
        if let watcher::Event::Delete(owner) = ev {
            expectations.forget(&key_of(owner));
        }
    })
}

/// Waits until `store` has its first full list (bounded, so a broken watch shows up as a
/// retried error rather than a hang).
pub(crate) async fn wait_synced<K>(store: &Store<K>, what: &str) -> Result<(), Error>
where
    K: Resource<DynamicType = ()> + Clone + 'static,
    K::DynamicType: Eq + Hash + Clone,
{
    match tokio::time::timeout(Duration::from_secs(30), store.wait_until_ready()).await {
        Ok(Ok(())) => Ok(()),
        _ => Err(Error::NotSynced(what.to_owned())),
    }
}

/// The controller-owner refs of `obj`, as the object refs of kind `K` to requeue.
pub(crate) fn owner_refs_of<K>(meta: &ObjectMeta) -> Option<ObjectRef<K>>
where
    K: Resource<DynamicType = ()>,
{
    let r = controller_of(meta)?;
    if r.kind != K::kind(&()) {
        return None;
    }
    let mut obj = ObjectRef::new(&r.name);
    if let Some(ns) = &meta.namespace {
        obj = obj.within(ns);
    }
    Some(obj)
}

/// Reconciles ownership of `candidates` for `owner` (upstream's `ClaimPods`/`ClaimReplicaSets`):
/// adopts orphans `selector` selects (when the owner is not being deleted), releases owned
/// objects it no longer selects, and returns what the owner controls afterwards.
pub(crate) async fn claim<K, O>(
    api: &Api<K>,
    owner: &O,
    selector: &Selector,
    candidates: Vec<Arc<K>>,
) -> Result<Vec<Arc<K>>, Error>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug,
    O: Resource<DynamicType = ()>,
{
    let uid = owner.meta().uid.clone().unwrap_or_default();
    let owner_deleting = owner.meta().deletion_timestamp.is_some();
    let mut owned = Vec::new();
    for obj in candidates {
        let meta = obj.meta();
        let matches = selects(selector, meta);
        match controller_of(meta) {
            Some(r) if r.uid == uid => {
                if matches || owner_deleting {
                    owned.push(obj);
                    continue;
                }
                // Release: drop our reference, keep the others.
                let refs: Vec<_> = meta
                    .owner_references
                    .clone()
                    .unwrap_or_default()
                    .into_iter()
                    .filter(|r| r.uid != uid)
                    .collect();
                let patch = json!({"metadata": {
                    "ownerReferences": refs,
                    "resourceVersion": meta.resource_version,
                }});
                match api
                    .patch(
                        &obj.name_any(),
                        &PatchParams::default(),
                        &Patch::Merge(&patch),
                    )
                    .await
                {
                    Ok(_) => debug!(object = %key_of(&*obj), "released"),
                    Err(kube::Error::Api(s)) if s.code == 404 => {}
                    Err(e) => return Err(api_err("release", &*obj, e)),
                }
            }
            Some(_) => {}
            None => {
                if !matches || owner_deleting || meta.deletion_timestamp.is_some() {
                    continue;
                }
                let mut refs = meta.owner_references.clone().unwrap_or_default();
                refs.push(owner_ref(owner));
                let patch = json!({"metadata": {
                    "ownerReferences": refs,
                    "resourceVersion": meta.resource_version,
                }});
                match api
                    .patch(
                        &obj.name_any(),
                        &PatchParams::default(),
                        &Patch::Merge(&patch),
                    )
                    .await
                {
                    Ok(adopted) => {
                        debug!(object = %key_of(&adopted), owner = %owner.name_any(), "adopted");
                        owned.push(Arc::new(adopted));
                    }
                    // Gone or changed under us: the next sync sees the new state.
                    Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => {}
                    Err(e) => return Err(api_err("adopt", &*obj, e)),
                }
            }
        }
    }
    Ok(owned)
}

/// An API error about `obj`.
pub(crate) fn api_err<K: Resource<DynamicType = ()>>(
    verb: &'static str,
    obj: &K,
    source: kube::Error,
) -> Error {
    Error::Api {
        verb,
        object: format!("{} {}", K::kind(&()).to_lowercase(), key_of(obj)),
        source,
    }
}

/// An API error about `kind` `ns/name`.
pub(crate) fn api_err_named(
    verb: &'static str,
    kind: &str,
    ns: &str,
    name: &str,
    source: kube::Error,
) -> Error {
    Error::Api {
        verb,
        object: format!("{kind} {ns}/{name}"),
        source,
    }
}

/// Creates `pod`, with expectations raised first (so the watch can never overtake them).
pub(crate) async fn create_pod(
    api: &Api<Pod>,
    expectations: &Expectations,
    key: &str,
    pod: &Pod,
) -> Result<Pod, Error> {
    let name = pod.name_any();
    expectations.expect_create(key, &name);
    match api.create(&PostParams::default(), pod).await {
        Ok(p) => Ok(p),
        Err(e) => {
            expectations.creation_failed(key, &name);
            Err(api_err_named(
                "create",
                "pod",
                &pod.namespace().unwrap_or_default(),
                &name,
                e,
            ))
        }
    }
}

/// Deletes `pod` (by uid precondition), with expectations raised first. A pod already
/// gone counts as deleted.
pub(crate) async fn delete_pod(
    api: &Api<Pod>,
    expectations: &Expectations,
    key: &str,
    pod: &Pod,
) -> Result<(), Error> {
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    expectations.expect_delete(key, &uid);
    let params = DeleteParams {
        preconditions: Some(kube::api::Preconditions {
            uid: Some(uid.clone()),
            resource_version: None,
        }),
        ..DeleteParams::default()
    };
    match api.delete(&pod.name_any(), &params).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => {
            expectations.deletion_failed(key, &uid);
            Ok(())
        }
        Err(e) => {
            expectations.deletion_failed(key, &uid);
            Err(api_err("delete", pod, e))
        }
    }
}

/// Requeue after `d`, or never.
pub(crate) fn requeue(d: Option<Duration>) -> Action {
    match d {
        Some(d) => Action::requeue(d),
        None => Action::await_change(),
    }
}

/// The smaller of two optional durations.
pub(crate) fn min_opt(a: Option<Duration>, b: Option<Duration>) -> Option<Duration> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, None) => a,
        (None, b) => b,
    }
}

/// Resolves an int-or-percent against `total` (`round_up` as upstream's
/// `GetScaledValueFromIntOrPercent`).
pub(crate) fn scaled_value(
    v: Option<&k8s_openapi::apimachinery::pkg::util::intstr::IntOrString>,
    total: i32,
    round_up: bool,
    default: i32,
) -> i32 {
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
    match v {
        None => default,
        Some(IntOrString::Int(i)) => *i,
        Some(IntOrString::String(s)) => {
            let Some(p) = s.strip_suffix('%').and_then(|p| p.parse::<i64>().ok()) else {
                return s.parse().unwrap_or(default);
            };
            let v = i64::from(total) * p;
            let r = if round_up { (v + 99) / 100 } else { v / 100 };
            i32::try_from(r).unwrap_or(i32::MAX)
        }
    }
}

/// Finds or creates the ControllerRevision of `template` for `owner` (named
/// `{owner}-{hash}`, data `{"spec":{"template":...}}` as upstream's DaemonSet and
/// StatefulSet controllers write), with a revision number above every other one; deletes
/// the oldest unused revisions beyond `history_limit`. Returns the revision's name.
pub(crate) async fn ensure_revision<O>(
    client: &kube::Client,
    revisions: &Store<ControllerRevision>,
    owner: &O,
    template: &PodTemplateSpec,
    in_use: &[&str],
    history_limit: i32,
) -> Result<String, Error>
where
    O: Resource<DynamicType = ()>,
{
    let ns = owner.namespace().unwrap_or_default();
    let uid = owner.meta().uid.clone().unwrap_or_default();
    let api: Api<ControllerRevision> = Api::namespaced(client.clone(), &ns);
    let mut owned: Vec<Arc<ControllerRevision>> = revisions
        .state()
        .into_iter()
        .filter(|r| {
            r.namespace().as_deref() == Some(ns.as_str()) && is_controlled_by(&r.metadata, &uid)
        })
        .collect();
    owned.sort_by_key(|r| r.revision);
    let hash = template_hash(template, None);
    let base: String = owner.name_any().chars().take(52).collect();
    let name = format!("{base}-{hash}");
    let max = owned
        .iter()
        .map(|r| r.revision.unwrap_or(0))
        .max()
        .unwrap_or(0);
    match owned.iter().find(|r| r.name_any() == name) {
        Some(r) if r.revision.unwrap_or(0) == max => {}
        Some(r) => {
            // Rolled back to an older template: it becomes the newest revision.
            let patch = json!({"revision": max + 1});
            api.patch(
                &r.name_any(),
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await
            .map_err(|e| api_err("update", &**r, e))?;
        }
        None => {
            let mut labels = owner.labels().clone();
            labels.insert("controller-revision-hash".to_owned(), hash.clone());
            let revision = ControllerRevision {
                metadata: ObjectMeta {
                    name: Some(name.clone()),
                    namespace: Some(ns.clone()),
                    labels: Some(labels),
                    owner_references: Some(vec![owner_ref(owner)]),
                    ..ObjectMeta::default()
                },
                data: RawExtension(json!({"spec": {"template": template_patch(template)}})),
                revision: Some(max + 1),
            };
            match api.create(&PostParams::default(), &revision).await {
                Ok(_) => {}
                Err(kube::Error::Api(s)) if s.code == 409 => {}
                Err(e) => return Err(api_err_named("create", "controllerrevision", &ns, &name, e)),
            }
        }
    }
    let limit = usize::try_from(history_limit.max(0)).unwrap_or(0);
    let unused: Vec<&Arc<ControllerRevision>> = owned
        .iter()
        .filter(|r| r.name_any() != name && !in_use.contains(&r.name_any().as_str()))
        .collect();
    for r in unused.iter().take(unused.len().saturating_sub(limit)) {
        match api.delete(&r.name_any(), &DeleteParams::default()).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => return Err(api_err("delete", &***r, e)),
        }
    }
    Ok(name)
}

/// The template as a strategic-merge patch that replaces it wholesale.
fn template_patch(template: &PodTemplateSpec) -> serde_json::Value {
    let mut v = serde_json::to_value(template).unwrap_or_default();
    if let Some(m) = v.as_object_mut() {
        m.insert("$patch".to_owned(), json!("replace"));
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

    #[test]
    fn scaled_values_round_like_upstream() {
        let cases = [
            (IntOrString::String("25%".into()), 10, true, 3),
            (IntOrString::String("25%".into()), 10, false, 2),
            (IntOrString::String("100%".into()), 3, false, 3),
            (IntOrString::Int(2), 10, true, 2),
        ];
        for (v, total, up, want) in cases {
            assert_eq!(
                scaled_value(Some(&v), total, up, 0),
                want,
                "{v:?} of {total}"
            );
        }
    }

    #[tokio::test]
    async fn slow_start_doubles_and_stops_on_error() {
        let calls = std::sync::atomic::AtomicUsize::new(0);
        let (done, err) = slow_start(10, || async {
            calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Ok(())
        })
        .await;
        assert_eq!((done, err.is_none()), (10, true));
        // 1 + 2 + 4 succeed, then the batch of 3 (the rest) fails at its second call.
        let n = std::sync::atomic::AtomicUsize::new(0);
        let (done, err) = slow_start(10, || {
            let i = n.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            async move {
                if i == 1 {
                    Err(Error::NotSynced("x".into()))
                } else {
                    Ok(())
                }
            }
        })
        .await;
        // First batch (1 call) ok, second batch (2 calls) has one failure: stop there.
        assert_eq!(done, 2);
        assert!(err.is_some());
        assert_eq!(n.load(std::sync::atomic::Ordering::SeqCst), 3);
    }

    #[test]
    fn expectations_wait_for_the_watch() {
        let e = Expectations::default();
        e.expect_create("ns/rs", "rs-abcde");
        assert!(!e.satisfied("ns/rs"));
        let pod = Pod {
            metadata: ObjectMeta {
                name: Some("rs-abcde".into()),
                namespace: Some("ns".into()),
                uid: Some("u1".into()),
                ..ObjectMeta::default()
            },
            ..Pod::default()
        };
        e.observe(&watcher::Event::Apply(pod.clone()));
        assert!(e.satisfied("ns/rs"));
        e.expect_delete("ns/rs", "u1");
        assert!(!e.satisfied("ns/rs"));
        e.observe(&watcher::Event::Delete(pod));
        assert!(e.satisfied("ns/rs"));
    }

    #[test]
    fn random_names_use_the_safe_alphabet() {
        let s = random_suffix(5);
        assert_eq!(s.len(), 5);
        assert!(s.bytes().all(|b| ALPHANUMS.contains(&b)));
    }
}
