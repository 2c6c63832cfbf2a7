//! The Deployment controller: one ReplicaSet per pod template (named by its
//! `pod-template-hash`), rolled with RollingUpdate (maxSurge/maxUnavailable) or Recreate,
//! revision annotations that `kubectl rollout history/undo` read, history cleanup, pause,
//! and the status and conditions `kubectl rollout status` waits on.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use coxswain_runtime::events::{EventType, Recorder, object_ref};
use k8s_openapi::api::apps::v1::{
    Deployment, DeploymentCondition, DeploymentStatus, ReplicaSet, ReplicaSetSpec,
};
use k8s_openapi::api::core::v1::{Pod, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, Time};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Client, ResourceExt};
use serde_json::json;
use tracing::{debug, info};

use super::Error;
use super::common::{
    self, METRICS, SpecOpt, api_err, claim, controller_of, is_active, is_terminating,
    key_of, owner_ref, reflect, scaled_value, selector_of, selects, template_hash, wait_synced,
};

const COMPONENT: &str = "deployment-controller";
/// The revision of a ReplicaSet (and of its Deployment), read by `kubectl rollout`.
pub(crate) const REVISION: &str = "deployment.kubernetes.io/revision";
const REVISION_HISTORY: &str = "deployment.kubernetes.io/revision-history";
const DESIRED_REPLICAS: &str = "deployment.kubernetes.io/desired-replicas";
const MAX_REPLICAS: &str = "deployment.kubernetes.io/max-replicas";
/// The label that tells the ReplicaSets of one Deployment apart.
pub(crate) const HASH_LABEL: &str = "pod-template-hash";
/// Annotations the Deployment keeps to itself (as upstream's `annotationsToSkip`).
const NOT_COPIED: &[&str] = &[
    "kubectl.kubernetes.io/last-applied-configuration",
    REVISION,
    REVISION_HISTORY,
    DESIRED_REPLICAS,
    MAX_REPLICAS,
    "deprecated.deployment.rollback.to",
];

struct Ctx {
    client: Client,
    metrics: Arc<crate::Metrics>,
    sets: Store<ReplicaSet>,
    pods: Store<Pod>,
    recorder: Recorder,
}

/// Runs the Deployment controller until aborted.
pub async fn run_deployment(ctx: crate::Context) -> Result<(), Error> {
    let client = ctx.client.clone();
    let (deployments, d_stream) = reflect(Api::<Deployment>::all(client.clone()), |_| {});
    let (sets, rs_stream) = reflect(Api::<ReplicaSet>::all(client.clone()), |_| {});
    let (pods, pod_stream) = reflect(Api::<Pod>::all(client.clone()), |_| {});
    let ctx = Arc::new(Ctx {
        metrics: ctx.metrics().clone(),
        recorder: Recorder::new(client.clone(), COMPONENT, None),
        client,
        sets: sets.clone(),
        pods,
    });
    let d_for_rs = deployments.clone();
    let sets_for_pods = sets.clone();
    let metrics = ctx.metrics.clone();
    let controller = Controller::for_stream(d_stream, deployments)
        .watches_stream(rs_stream, move |rs: ReplicaSet| rs_owners(&d_for_rs, &rs))
        .watches_stream(pod_stream, move |pod: Pod| {
            // A pod matters to its ReplicaSet's Deployment (Recreate waits for old pods).
            let rs = common::owner_refs_of::<ReplicaSet>(&pod.metadata)?;
            let rs = sets_for_pods.get(&rs)?;
            common::owner_refs_of::<Deployment>(&rs.metadata)
        });
    crate::reconciler::run(controller, "deployment", metrics, ctx, reconcile).await;
    Ok(())
}

fn rs_owners(deployments: &Store<Deployment>, rs: &ReplicaSet) -> Vec<ObjectRef<Deployment>> {
    if let Some(r) = common::owner_refs_of::<Deployment>(&rs.metadata) {
        return vec![r];
    }
    if controller_of(&rs.metadata).is_some() {
        return Vec::new();
    }
    let ns = rs.namespace().unwrap_or_default();
    deployments
        .state()
        .iter()
        .filter(|d| d.namespace().as_deref() == Some(ns.as_str()))
        .filter(|d| {
            selector_of(Some(&d.spec).map(|s| &s.selector), "")
                .is_ok_and(|sel| selects(&sel, &rs.metadata))
        })
        .map(|d| ObjectRef::from_obj(&**d))
        .collect()
}

async fn reconcile(d: Arc<Deployment>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    let key = key_of(&*d);
    wait_synced(&ctx.sets, "replicaset").await?;
    wait_synced(&ctx.pods, "pod").await?;
    Sync::new(&ctx, &d, &key)?.run().await
}

fn revision(rs: &ReplicaSet) -> i64 {
    rs.annotations()
        .get(REVISION)
        .and_then(|r| r.parse().ok())
        .unwrap_or(0)
}

fn spec_replicas(rs: &ReplicaSet) -> i32 {
    Some(&rs.spec).and_then(|s| s.replicas).unwrap_or(0)
}

fn status_replicas(rs: &ReplicaSet) -> i32 {
    rs.status.as_ref().map(|s| s.replicas).unwrap_or(0)
}

fn ready_replicas(rs: &ReplicaSet) -> i32 {
    rs.status
        .as_ref()
        .and_then(|s| s.ready_replicas)
        .unwrap_or(0)
}

fn available_replicas(rs: &ReplicaSet) -> i32 {
    rs.status
        .as_ref()
        .and_then(|s| s.available_replicas)
        .unwrap_or(0)
}

/// Pods a ReplicaSet may have right now: its spec, or more while it has not yet caught up
/// with a scale-down (so a surge never counts on pods that are still there).
fn pods_bound(rs: &ReplicaSet) -> i32 {
    spec_replicas(rs).max(status_replicas(rs))
}

/// Available pods a ReplicaSet can be relied on for: never more than its spec, since it
/// deletes down to it (its status may lag behind our own scale-down).
fn reliable_available(rs: &ReplicaSet) -> i32 {
    available_replicas(rs).min(spec_replicas(rs))
}

/// The template without the `pod-template-hash` label, for comparisons (upstream's
/// `EqualIgnoreHash`).
fn without_hash(template: &PodTemplateSpec) -> serde_json::Value {
    let mut t = template.clone();
    if let Some(labels) = t.metadata.as_mut().and_then(|m| m.labels.as_mut()) {
        labels.remove(HASH_LABEL);
    }
    let mut v = serde_json::to_value(&t).unwrap_or_default();
    // An empty label map and none are the same template.
    if v["metadata"]["labels"]
        .as_object()
        .is_some_and(|m| m.is_empty())
    {
        v["metadata"].as_object_mut().map(|m| m.remove("labels"));
    }
    v
}

fn condition<'a>(status: &'a DeploymentStatus, type_: &str) -> Option<&'a DeploymentCondition> {
    status
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_.as_deref() == Some(type_))
}

/// Upstream's `SetDeploymentCondition`: same status and reason is no change; same status
/// keeps the transition time.
fn set_condition(status: &mut DeploymentStatus, mut cond: DeploymentCondition) {
    let conds = status.conditions.get_or_insert_with(Vec::new);
    if let Some(cur) = conds.iter().find(|c| c.type_ == cond.type_) {
        if cur.status == cond.status && cur.reason == cond.reason {
            return;
        }
        if cur.status == cond.status {
            cond.last_transition_time = cur.last_transition_time.clone();
        }
    }
    conds.retain(|c| c.type_ != cond.type_);
    conds.push(cond);
}

fn new_condition(type_: &str, status: &str, reason: &str, message: String) -> DeploymentCondition {
    let now = Time(common::now());
    DeploymentCondition {
        type_: Some(type_.to_owned()),
        status: Some(status.to_owned()),
        reason: Some(reason.to_owned()),
        message: Some(message),
        last_update_time: Some(now.clone()),
        last_transition_time: Some(now),
    }
}

/// One sync of one Deployment.
struct Sync<'a> {
    ctx: &'a Ctx,
    d: &'a Deployment,
    key: &'a str,
    ns: String,
    replicas: i32,
    max_surge: i32,
    max_unavailable: i32,
    rs_api: Api<ReplicaSet>,
    /// Conditions and collision count being built for this sync's status write.
    status: DeploymentStatus,
}

impl<'a> Sync<'a> {
    fn new(ctx: &'a Ctx, d: &'a Deployment, key: &'a str) -> Result<Sync<'a>, Error> {
        let ns = d.namespace().unwrap_or_default();
        let spec = d.spec.clone();
        let replicas = spec.replicas.unwrap_or(1);
        let (max_surge, max_unavailable) = resolve_fenceposts(d, replicas);
        Ok(Sync {
            ctx,
            d,
            key,
            rs_api: Api::namespaced(ctx.client.clone(), &ns),
            ns,
            replicas,
            max_surge,
            max_unavailable,
            status: d.status.clone().unwrap_or_default(),
        })
    }

    fn is_recreate(&self) -> bool {
        self.d
            .spec_opt()
            .and_then(|s| s.strategy.as_ref())
            .and_then(|s| s.type_.as_deref())
            == Some("Recreate")
    }

    fn paused(&self) -> bool {
        Some(&self.d.spec).and_then(|s| s.paused).unwrap_or(false)
    }

    fn template(&self) -> PodTemplateSpec {
        Some(&self.d.spec)
            .map(|s| s.template.clone())
            .unwrap_or_default()
    }

    async fn run(mut self) -> Result<Action, Error> {
        let selector = selector_of(
            Some(&self.d.spec).map(|s| &s.selector),
            &format!("deployment {}", self.key),
        )?;
        let uid = self.d.metadata.uid.clone().unwrap_or_default();
        let candidates: Vec<Arc<ReplicaSet>> = self
            .ctx
            .sets
            .state()
            .into_iter()
            .filter(|rs| rs.namespace().as_deref() == Some(self.ns.as_str()))
            .filter(|rs| match controller_of(&rs.metadata) {
                Some(r) => r.uid == uid,
                None => selects(&selector, &rs.metadata),
            })
            .collect();
        let owned = claim(&self.rs_api, self.d, &selector, candidates).await?;
        let mut sets: Vec<ReplicaSet> = owned.iter().map(|rs| (**rs).clone()).collect();
        sets.sort_by_key(|rs| (rs.metadata.creation_timestamp.clone(), rs.name_any()));

        if self.d.metadata.deletion_timestamp.is_some() {
            return self.write_status(&sets, None).await;
        }
        self.check_paused_condition();
        let template = without_hash(&self.template());
        let new_idx = sets.iter().position(|rs| {
            rs.spec_opt()
                .and_then(|s| s.template.as_ref())
                .is_some_and(|t| without_hash(t) == template)
        });
        // Paused, or scaled since the ReplicaSets were last sized: size them (upstream's
        // `sync`), no rollout step.
        if self.paused() || self.is_scaling_event(&sets) {
            self.scale_proportionally(&mut sets, new_idx).await?;
            return self.write_status(&sets, new_idx).await;
        }
        if self.is_recreate() {
            self.rollout_recreate(sets, new_idx).await
        } else {
            self.rollout_rolling(sets, new_idx).await
        }
    }

    /// Progressing becomes Unknown/DeploymentPaused while paused, DeploymentResumed after.
    fn check_paused_condition(&mut self) {
        if Some(&self.d.spec)
            .and_then(|s| s.progress_deadline_seconds)
            .is_none()
        {
            return;
        }
        let cur = condition(&self.status, "Progressing").and_then(|c| c.reason.clone());
        let paused_now = cur.as_deref() == Some("DeploymentPaused");
        if self.paused() && !paused_now {
            set_condition(
                &mut self.status,
                new_condition(
                    "Progressing",
                    "Unknown",
                    "DeploymentPaused",
                    "Deployment is paused".into(),
                ),
            );
        } else if !self.paused() && paused_now {
            set_condition(
                &mut self.status,
                new_condition(
                    "Progressing",
                    "Unknown",
                    "DeploymentResumed",
                    "Deployment is resumed".into(),
                ),
            );
        }
    }

    /// Annotations the ReplicaSets carry: the Deployment's own (but not the skipped
    /// ones), the revision, desired and max replicas.
    fn rs_annotations(
        &self,
        revision: i64,
        prior: Option<&BTreeMap<String, String>>,
    ) -> BTreeMap<String, String> {
        let mut out: BTreeMap<String, String> = self
            .d
            .annotations()
            .iter()
            .filter(|(k, _)| !NOT_COPIED.contains(&k.as_str()))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        if let Some(prior) = prior {
            let old = prior
                .get(REVISION)
                .and_then(|r| r.parse::<i64>().ok())
                .unwrap_or(0);
            if old > 0 && old < revision {
                let mut history: Vec<String> = prior
                    .get(REVISION_HISTORY)
                    .map(|h| {
                        h.split(',')
                            .filter(|s| !s.is_empty())
                            .map(str::to_owned)
                            .collect()
                    })
                    .unwrap_or_default();
                history.push(old.to_string());
                out.insert(REVISION_HISTORY.to_owned(), history.join(","));
            } else if let Some(h) = prior.get(REVISION_HISTORY) {
                out.insert(REVISION_HISTORY.to_owned(), h.clone());
            }
        }
        out.insert(REVISION.to_owned(), revision.max(1).to_string());
        out.insert(DESIRED_REPLICAS.to_owned(), self.replicas.to_string());
        out.insert(
            MAX_REPLICAS.to_owned(),
            (self.replicas + self.max_surge).to_string(),
        );
        out
    }

    /// Finds or creates the ReplicaSet of the current template, with the newest revision.
    /// Returns its index in `sets`.
    async fn ensure_new_rs(
        &mut self,
        sets: &mut Vec<ReplicaSet>,
        new_idx: Option<usize>,
        initial_replicas: i32,
    ) -> Result<usize, Error> {
        let max_old = sets
            .iter()
            .enumerate()
            .filter(|(i, _)| Some(*i) != new_idx)
            .map(|(_, rs)| revision(rs))
            .max()
            .unwrap_or(0);
        let new_revision = max_old + 1;
        let min_ready = Some(&self.d.spec).and_then(|s| s.min_ready_seconds);
        if let Some(i) = new_idx {
            let rs = &sets[i];
            let want = self.rs_annotations(new_revision.max(revision(rs)), Some(rs.annotations()));
            let annotations_stale = want.iter().any(|(k, v)| rs.annotations().get(k) != Some(v));
            let min_ready_stale = Some(&rs.spec).and_then(|s| s.min_ready_seconds) != min_ready;
            if annotations_stale || min_ready_stale {
                let patch = json!({
                    "metadata": {"annotations": want},
                    "spec": {"minReadySeconds": min_ready},
                });
                let updated = self
                    .rs_api
                    .patch(
                        &rs.name_any(),
                        &PatchParams::default(),
                        &Patch::Merge(&patch),
                    )
                    .await
                    .map_err(|e| api_err("update", rs, e))?;
                sets[i] = updated;
            }
            self.set_deployment_revision(revision(&sets[i])).await?;
            if Some(&self.d.spec)
                .and_then(|s| s.progress_deadline_seconds)
                .is_some()
                && condition(&self.status, "Progressing").is_none()
            {
                let msg = format!("Found new replica set \"{}\"", sets[i].name_any());
                set_condition(
                    &mut self.status,
                    new_condition("Progressing", "True", "FoundNewReplicaSet", msg),
                );
            }
            return Ok(i);
        }

        let template = self.template();
        let collision = self.status.collision_count;
        let hash = template_hash(&template, collision);
        let mut rs_template = template.clone();
        rs_template
            .metadata
            .get_or_insert_with(ObjectMeta::default)
            .labels
            .get_or_insert_with(BTreeMap::new)
            .insert(HASH_LABEL.to_owned(), hash.clone());
        let mut selector: LabelSelector = Some(&self.d.spec)
            .map(|s| s.selector.clone())
            .unwrap_or_default();
        selector
            .match_labels
            .get_or_insert_with(BTreeMap::new)
            .insert(HASH_LABEL.to_owned(), hash.clone());
        let mut labels = template
            .metadata
            .as_ref()
            .and_then(|m| m.labels.clone())
            .unwrap_or_default();
        labels.insert(HASH_LABEL.to_owned(), hash.clone());
        let base: String = self.d.name_any().chars().take(52).collect();
        let name = format!("{base}-{hash}");
        let rs = ReplicaSet {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                namespace: Some(self.ns.clone()),
                labels: Some(labels),
                annotations: Some(self.rs_annotations(new_revision, None)),
                owner_references: Some(vec![owner_ref(self.d)]),
                ..ObjectMeta::default()
            },
            spec: ReplicaSetSpec {
                replicas: Some(initial_replicas),
                min_ready_seconds: min_ready,
                selector,
                template: Some(rs_template),
            },
            status: None,
        };
        let created = match self.rs_api.create(&PostParams::default(), &rs).await {
            Ok(created) => created,
            Err(kube::Error::Api(s)) if s.code == 409 => {
                // Ours but not in the cache yet, or a hash collision.
                let existing = self
                    .rs_api
                    .get(&name)
                    .await
                    .map_err(|e| api_err("get", &rs, e))?;
                let same = existing
                    .spec_opt()
                    .and_then(|s| s.template.as_ref())
                    .is_some_and(|t| without_hash(t) == without_hash(&template));
                let ours = common::is_controlled_by(
                    &existing.metadata,
                    self.d.metadata.uid.as_deref().unwrap_or_default(),
                );
                if same && ours {
                    existing
                } else {
                    let count = collision.unwrap_or(0) + 1;
                    self.status.collision_count = Some(count);
                    let api: Api<Deployment> = Api::namespaced(self.ctx.client.clone(), &self.ns);
                    api.patch_status(
                        &self.d.name_any(),
                        &PatchParams::default(),
                        &Patch::Merge(&json!({"status": {"collisionCount": count}})),
                    )
                    .await
                    .map_err(|e| api_err("update status of", self.d, e))?;
                    return Err(Error::Invalid {
                        object: format!("deployment {}", self.key),
                        message: format!(
                            "hash collision on replica set {name}; retrying with collisionCount {count}"
                        ),
                    });
                }
            }
            Err(e) => return Err(api_err("create", &rs, e)),
        };
        METRICS.write("deployment", "create_replicaset");
        info!(deployment = self.key, replicaset = %name, revision = new_revision, "created new replica set");
        if initial_replicas > 0 {
            self.event(
                "ScalingReplicaSet",
                format!("Scaled up replica set {name} from 0 to {initial_replicas}"),
            )
            .await;
        }
        if Some(&self.d.spec)
            .and_then(|s| s.progress_deadline_seconds)
            .is_some()
        {
            set_condition(
                &mut self.status,
                new_condition(
                    "Progressing",
                    "True",
                    "NewReplicaSetCreated",
                    format!("Created new replica set \"{name}\""),
                ),
            );
        }
        self.set_deployment_revision(new_revision).await?;
        sets.push(created);
        Ok(sets.len() - 1)
    }

    async fn set_deployment_revision(&self, revision: i64) -> Result<(), Error> {
        let revision = revision.to_string();
        if self.d.annotations().get(REVISION) == Some(&revision) {
            return Ok(());
        }
        let api: Api<Deployment> = Api::namespaced(self.ctx.client.clone(), &self.ns);
        let patch = json!({"metadata": {"annotations": {REVISION: revision}}});
        api.patch(
            &self.d.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await
        .map_err(|e| api_err("annotate", self.d, e))?;
        Ok(())
    }

    async fn event(&self, reason: &str, message: String) {
        self.ctx
            .recorder
            .record(&object_ref(self.d), EventType::Normal, reason, &message)
            .await;
    }

    /// Sets a ReplicaSet's replicas (and the annotations), recording ScalingReplicaSet.
    async fn scale(&self, rs: &mut ReplicaSet, to: i32) -> Result<bool, Error> {
        let from = spec_replicas(rs);
        let annotations_current = rs.annotations().get(DESIRED_REPLICAS)
            == Some(&self.replicas.to_string())
            && rs.annotations().get(MAX_REPLICAS)
                == Some(&(self.replicas + self.max_surge).to_string());
        if from == to && annotations_current {
            return Ok(false);
        }
        let patch = json!({
            "metadata": {"annotations": {
                DESIRED_REPLICAS: self.replicas.to_string(),
                MAX_REPLICAS: (self.replicas + self.max_surge).to_string(),
            }},
            "spec": {"replicas": to},
        });
        *rs = self
            .rs_api
            .patch(
                &rs.name_any(),
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await
            .map_err(|e| api_err("scale", &*rs, e))?;
        if from != to {
            let direction = if to > from { "up" } else { "down" };
            info!(deployment = self.key, replicaset = %rs.name_any(), from, to, "scaled");
            self.event(
                "ScalingReplicaSet",
                format!(
                    "Scaled {direction} replica set {} from {from} to {to}",
                    rs.name_any()
                ),
            )
            .await;
        }
        Ok(from != to)
    }

    /// Whether `spec.replicas` changed since an active ReplicaSet was last sized (its
    /// `desired-replicas` annotation differs): upstream's `isScalingEvent`.
    fn is_scaling_event(&self, sets: &[ReplicaSet]) -> bool {
        let desired = self.replicas.to_string();
        sets.iter()
            .filter(|rs| spec_replicas(rs) > 0)
            .filter_map(|rs| rs.annotations().get(DESIRED_REPLICAS))
            .any(|d| *d != desired)
    }

    /// Upstream's `scale`: one active ReplicaSet (or none: the newest) takes
    /// `spec.replicas`; a saturated new one leaves the old ones at zero; otherwise, for a
    /// rolling Deployment, the replicas added or removed are shared among the active
    /// ReplicaSets in proportion to their sizes, each against the `max-replicas` it was
    /// last sized for (deployment-proportional-scaling).
    async fn scale_proportionally(
        &mut self,
        sets: &mut [ReplicaSet],
        new_idx: Option<usize>,
    ) -> Result<(), Error> {
        let active: Vec<usize> = (0..sets.len())
            .filter(|i| spec_replicas(&sets[*i]) > 0)
            .collect();
        let single = match active.as_slice() {
            // No active set: the new one, else the newest (sets are oldest first).
            [] => new_idx.or(sets.len().checked_sub(1)),
            [only] => Some(*only),
            _ => None,
        };
        if let Some(i) = single {
            if spec_replicas(&sets[i]) != self.replicas {
                self.scale(&mut sets[i], self.replicas).await?;
            }
            return Ok(());
        }
        if let Some(new) = new_idx
            && self.saturated(&sets[new])
        {
            for i in active.into_iter().filter(|i| *i != new) {
                self.scale(&mut sets[i], 0).await?;
            }
            return Ok(());
        }
        if self.is_recreate() {
            return Ok(());
        }
        let sizes: Vec<(usize, i32)> = active.iter().map(|&i| (i, spec_replicas(&sets[i]))).collect();
        let status_replicas = self.d.status.as_ref().and_then(|s| s.replicas).unwrap_or(0);
        let annotated: Vec<Option<i32>> = active
            .iter()
            .map(|&i| sets[i].annotations().get(MAX_REPLICAS).and_then(|m| m.parse().ok()))
            .collect();
        for (i, to) in proportional_sizes(
            &sizes,
            &annotated,
            self.replicas,
            self.max_surge,
            status_replicas,
        ) {
            self.scale(&mut sets[i], to).await?;
        }
        Ok(())
    }

    /// Upstream's `IsSaturated`: the ReplicaSet was sized for, has and makes available
    /// exactly `spec.replicas`.
    fn saturated(&self, rs: &ReplicaSet) -> bool {
        rs.annotations().get(DESIRED_REPLICAS) == Some(&self.replicas.to_string())
            && spec_replicas(rs) == self.replicas
            && available_replicas(rs) == self.replicas
    }

    async fn rollout_rolling(
        mut self,
        mut sets: Vec<ReplicaSet>,
        new_idx: Option<usize>,
    ) -> Result<Action, Error> {
        let initial = match new_idx {
            Some(_) => 0,
            None => {
                let current: i32 = sets.iter().map(pods_bound).sum();
                let room = (self.replicas + self.max_surge - current).max(0);
                if sets.iter().all(|rs| spec_replicas(rs) == 0) {
                    self.replicas
                } else {
                    room.min(self.replicas)
                }
            }
        };
        let new = self.ensure_new_rs(&mut sets, new_idx, initial).await?;

        // Scale the new ReplicaSet up within maxSurge (or down to spec.replicas).
        let current_new = spec_replicas(&sets[new]);
        let target_new = if current_new > self.replicas {
            self.replicas
        } else if current_new == self.replicas {
            current_new
        } else {
            let current: i32 = sets.iter().map(pods_bound).sum();
            let room = (self.replicas + self.max_surge - current).max(0);
            current_new + room.min(self.replicas - current_new)
        };
        if self.scale(&mut sets[new], target_new).await? {
            return self.write_status(&sets, Some(new)).await;
        }

        // Scale old ReplicaSets down within maxUnavailable.
        if self.scale_down_old(&mut sets, new).await? {
            return self.write_status(&sets, Some(new)).await;
        }
        self.cleanup(&sets, new).await?;
        self.write_status(&sets, Some(new)).await
    }

    /// Upstream's `reconcileOldReplicaSets`: first unhealthy old pods, then healthy ones,
    /// never below `replicas - maxUnavailable` available pods.
    async fn scale_down_old(&self, sets: &mut [ReplicaSet], new: usize) -> Result<bool, Error> {
        let old: Vec<usize> = (0..sets.len())
            .filter(|i| *i != new && spec_replicas(&sets[*i]) > 0)
            .collect();
        if old.is_empty() {
            return Ok(false);
        }
        let all_pods: i32 = sets.iter().map(pods_bound).sum();
        let min_available = self.replicas - self.max_unavailable;
        let new_unavailable = spec_replicas(&sets[new]) - reliable_available(&sets[new]);
        let mut max_scaled_down = all_pods - min_available - new_unavailable;
        if max_scaled_down <= 0 {
            return Ok(false);
        }
        let mut scaled = false;
        // Unhealthy pods first: they are not available anyway.
        for &i in &old {
            if max_scaled_down <= 0 {
                break;
            }
            let unhealthy = spec_replicas(&sets[i]) - reliable_available(&sets[i]);
            if unhealthy <= 0 {
                continue;
            }
            let down = unhealthy.min(max_scaled_down);
            let to = spec_replicas(&sets[i]) - down;
            scaled |= self.scale(&mut sets[i], to).await?;
            max_scaled_down -= down;
        }
        // Then available ones, oldest first, keeping min_available.
        let available: i32 = sets.iter().map(reliable_available).sum();
        let mut budget = (available - min_available).min(max_scaled_down.max(0));
        for &i in &old {
            if budget <= 0 {
                break;
            }
            let have = spec_replicas(&sets[i]);
            if have == 0 {
                continue;
            }
            let down = have.min(budget);
            scaled |= self.scale(&mut sets[i], have - down).await?;
            budget -= down;
        }
        Ok(scaled)
    }

    async fn rollout_recreate(
        mut self,
        mut sets: Vec<ReplicaSet>,
        new_idx: Option<usize>,
    ) -> Result<Action, Error> {
        // Down with every old ReplicaSet first.
        let mut scaled = false;
        for (i, rs) in sets.iter_mut().enumerate() {
            if Some(i) != new_idx && spec_replicas(rs) > 0 {
                scaled |= self.scale(rs, 0).await?;
            }
        }
        if scaled {
            return self.write_status(&sets, new_idx).await;
        }
        // Then wait until no old pod is left, terminating ones included.
        let old_uids: Vec<String> = sets
            .iter()
            .enumerate()
            .filter(|(i, _)| Some(*i) != new_idx)
            .filter_map(|(_, rs)| rs.metadata.uid.clone())
            .collect();
        let old_pods = self
            .ctx
            .pods
            .state()
            .iter()
            .filter(|p| p.namespace().as_deref() == Some(self.ns.as_str()))
            .filter(|p| controller_of(&p.metadata).is_some_and(|r| old_uids.contains(&r.uid)))
            .filter(|p| is_active(p) || is_terminating(p))
            .count();
        if old_pods > 0 {
            debug!(
                deployment = self.key,
                old_pods, "recreate: waiting for old pods to terminate"
            );
            return self.write_status(&sets, new_idx).await;
        }
        let new = self
            .ensure_new_rs(&mut sets, new_idx, self.replicas)
            .await?;
        if self.scale(&mut sets[new], self.replicas).await? {
            return self.write_status(&sets, Some(new)).await;
        }
        self.cleanup(&sets, new).await?;
        self.write_status(&sets, Some(new)).await
    }

    /// Deletes the oldest scaled-down ReplicaSets beyond `revisionHistoryLimit`.
    async fn cleanup(&self, sets: &[ReplicaSet], new: usize) -> Result<(), Error> {
        let limit = self
            .d
            .spec_opt()
            .and_then(|s| s.revision_history_limit)
            .unwrap_or(10)
            .max(0);
        let mut idle: Vec<&ReplicaSet> = sets
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != new)
            .map(|(_, rs)| rs)
            .filter(|rs| {
                spec_replicas(rs) == 0
                    && status_replicas(rs) == 0
                    && rs.metadata.deletion_timestamp.is_none()
                    && rs.status.as_ref().and_then(|s| s.observed_generation)
                        >= rs.metadata.generation
            })
            .collect();
        let excess = idle
            .len()
            .saturating_sub(usize::try_from(limit).unwrap_or(0));
        if excess == 0 {
            return Ok(());
        }
        idle.sort_by_key(|rs| (revision(rs), rs.metadata.creation_timestamp.clone()));
        for rs in idle.into_iter().take(excess) {
            info!(deployment = self.key, replicaset = %rs.name_any(), "deleting old replica set beyond revisionHistoryLimit");
            match self
                .rs_api
                .delete(&rs.name_any(), &DeleteParams::background())
                .await
            {
                Ok(_) => METRICS.write("deployment", "delete_replicaset"),
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(e) => return Err(api_err("delete", rs, e)),
            }
        }
        Ok(())
    }

    /// Computes counts and conditions and writes the status (when it changed); requeues
    /// for the progress deadline.
    async fn write_status(
        mut self,
        sets: &[ReplicaSet],
        new: Option<usize>,
    ) -> Result<Action, Error> {
        let prev = self.d.status.clone().unwrap_or_default();
        let replicas: i32 = sets.iter().map(status_replicas).sum();
        let updated = new.map(|i| status_replicas(&sets[i])).unwrap_or(0);
        let ready: i32 = sets.iter().map(ready_replicas).sum();
        let available: i32 = sets.iter().map(available_replicas).sum();
        let mut status = std::mem::take(&mut self.status);
        status.observed_generation = self.d.metadata.generation;
        status.replicas = Some(replicas);
        status.updated_replicas = Some(updated);
        status.ready_replicas = Some(ready);
        status.available_replicas = Some(available);
        status.unavailable_replicas = Some((self.replicas - available).max(0));
        status.terminating_replicas = None;

        if available >= self.replicas - self.max_unavailable {
            set_condition(
                &mut status,
                new_condition(
                    "Available",
                    "True",
                    "MinimumReplicasAvailable",
                    "Deployment has minimum availability.".into(),
                ),
            );
        } else {
            set_condition(
                &mut status,
                new_condition(
                    "Available",
                    "False",
                    "MinimumReplicasUnavailable",
                    "Deployment does not have minimum availability.".into(),
                ),
            );
        }

        let mut requeue = None;
        let deadline = Some(&self.d.spec).and_then(|s| s.progress_deadline_seconds);
        if let (Some(deadline), Some(new), false) = (deadline, new, self.paused()) {
            let name = sets[new].name_any();
            let cur = condition(&status, "Progressing").cloned();
            let already_complete = replicas == updated
                && cur.as_ref().and_then(|c| c.reason.as_deref()) == Some("NewReplicaSetAvailable");
            if !already_complete {
                let complete = updated == self.replicas
                    && replicas == self.replicas
                    && available == self.replicas;
                let old_replicas = |s: &DeploymentStatus| {
                    s.replicas.unwrap_or(0) - s.updated_replicas.unwrap_or(0)
                };
                let progressing = updated > prev.updated_replicas.unwrap_or(0)
                    || old_replicas(&status) < old_replicas(&prev)
                    || ready > prev.ready_replicas.unwrap_or(0)
                    || available > prev.available_replicas.unwrap_or(0);
                if complete {
                    set_condition(
                        &mut status,
                        new_condition(
                            "Progressing",
                            "True",
                            "NewReplicaSetAvailable",
                            format!("ReplicaSet \"{name}\" has successfully progressed."),
                        ),
                    );
                } else if progressing {
                    let mut c = new_condition(
                        "Progressing",
                        "True",
                        "ReplicaSetUpdated",
                        format!("ReplicaSet \"{name}\" is progressing."),
                    );
                    if let Some(cur) = &cur
                        && cur.status.as_deref() == Some("True")
                    {
                        c.last_transition_time = cur.last_transition_time.clone();
                    }
                    if let Some(conds) = status.conditions.as_mut() {
                        conds.retain(|c| c.type_.as_deref() != Some("Progressing"));
                    }
                    set_condition(&mut status, c);
                } else if let Some(cur) = &cur {
                    let since = cur
                        .last_update_time
                        .as_ref()
                        .map(|t| t.0)
                        .unwrap_or_else(common::now);
                    let at = since
                        .checked_add(jiff::SignedDuration::from_secs(i64::from(deadline)))
                        .unwrap_or(since);
                    let now = common::now();
                    let timed_out =
                        cur.reason.as_deref() != Some("NewReplicaSetAvailable") && at < now;
                    if timed_out {
                        if cur.reason.as_deref() != Some("ProgressDeadlineExceeded") {
                            self.ctx
                                .recorder
                                .record(
                                    &object_ref(self.d),
                                    EventType::Warning,
                                    "ProgressDeadlineExceeded",
                                    &format!("ReplicaSet \"{name}\" has timed out progressing."),
                                )
                                .await;
                        }
                        set_condition(
                            &mut status,
                            new_condition(
                                "Progressing",
                                "False",
                                "ProgressDeadlineExceeded",
                                format!("ReplicaSet \"{name}\" has timed out progressing."),
                            ),
                        );
                    } else if cur.status.as_deref() == Some("True") {
                        requeue = Some(
                            at.duration_since(now).unsigned_abs() + Duration::from_millis(200),
                        );
                    }
                }
            }
        }

        if status_value(&status) != status_value(&prev) {
            let api: Api<Deployment> = Api::namespaced(self.ctx.client.clone(), &self.ns);
            let patch = json!({"status": status_value(&status)});
            match api
                .patch_status(
                    &self.d.name_any(),
                    &PatchParams::default(),
                    &Patch::Merge(&patch),
                )
                .await
            {
                Ok(_) => {}
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(e) => return Err(api_err("update status of", self.d, e)),
            }
        }
        Ok(common::requeue(requeue))
    }
}

/// The status as the API server stores it: zero counts are absent.
fn status_value(s: &DeploymentStatus) -> serde_json::Value {
    let nz = |v: Option<i32>| v.filter(|n| *n != 0);
    json!({
        "observedGeneration": s.observed_generation,
        "replicas": nz(s.replicas),
        "updatedReplicas": nz(s.updated_replicas),
        "readyReplicas": nz(s.ready_replicas),
        "availableReplicas": nz(s.available_replicas),
        "unavailableReplicas": nz(s.unavailable_replicas),
        "collisionCount": s.collision_count,
        "conditions": s.conditions,
    })
}

/// maxSurge (rounded up) and maxUnavailable (rounded down) of a RollingUpdate, with
/// upstream's rule that both cannot be zero. Recreate: no surge, everything unavailable.
/// The new sizes of the active ReplicaSets `sizes` (index, `spec.replicas`, oldest first)
/// when a Deployment now wants `replicas` with `max_surge`: upstream's proportional
/// scaling. `annotated[k]` is the `max-replicas` set `k` was last sized for (missing:
/// the Deployment's `status.replicas`). The difference to `replicas + max_surge` is
/// shared by each set's fraction, largest sets first (newer first when growing, older
/// first when shrinking), the rounding leftover going to the first.
fn proportional_sizes(
    sizes: &[(usize, i32)],
    annotated: &[Option<i32>],
    replicas: i32,
    max_surge: i32,
    status_replicas: i32,
) -> Vec<(usize, i32)> {
    let total: i32 = sizes.iter().map(|(_, n)| n).sum();
    let allowed = if replicas > 0 { replicas + max_surge } else { 0 };
    let to_add = allowed - total;
    // Positions in `sizes`, by size descending; ties: newer first up, older first down.
    let mut order: Vec<usize> = (0..sizes.len()).collect();
    order.sort_by(|&a, &b| {
        sizes[b].1.cmp(&sizes[a].1).then(if to_add > 0 { b.cmp(&a) } else { a.cmp(&b) })
    });
    let mut added = 0;
    let mut out: Vec<(usize, i32)> = Vec::with_capacity(sizes.len());
    for &k in &order {
        let (idx, size) = sizes[k];
        let mut proportion = 0;
        if to_add != 0 && size != 0 && to_add != added {
            let fraction = if replicas == 0 {
                -size
            } else {
                let before = annotated[k].filter(|m| *m != 0).unwrap_or(status_replicas);
                if before == 0 {
                    0
                } else {
                    let scaled = f64::from(size) * f64::from(allowed) / f64::from(before);
                    scaled.round() as i32 - size
                }
            };
            let room = to_add - added;
            proportion = if to_add > 0 { fraction.min(room) } else { fraction.max(room) };
        }
        added += proportion;
        out.push((idx, size + proportion));
    }
    if to_add != 0
        && let Some(first) = out.first_mut()
    {
        first.1 = (first.1 + to_add - added).max(0);
    }
    out
}

fn resolve_fenceposts(d: &Deployment, replicas: i32) -> (i32, i32) {
    let strategy = Some(&d.spec).and_then(|s| s.strategy.as_ref());
    if strategy.and_then(|s| s.type_.as_deref()) == Some("Recreate") {
        return (0, replicas);
    }
    let ru = strategy.and_then(|s| s.rolling_update.as_ref());
    let surge = scaled_value(
        ru.and_then(|r| r.max_surge.as_ref()),
        replicas,
        true,
        (replicas + 3) / 4,
    );
    let unavailable = scaled_value(
        ru.and_then(|r| r.max_unavailable.as_ref()),
        replicas,
        false,
        replicas / 4,
    );
    if surge == 0 && unavailable == 0 {
        return (0, 1);
    }
    (surge.max(0), unavailable.clamp(0, replicas.max(0)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::apps::v1::{DeploymentSpec, DeploymentStrategy, RollingUpdateDeployment};
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

    fn deployment(surge: IntOrString, unavailable: IntOrString) -> Deployment {
        Deployment {
            spec: DeploymentSpec {
                strategy: Some(DeploymentStrategy {
                    type_: Some("RollingUpdate".into()),
                    rolling_update: Some(RollingUpdateDeployment {
                        max_surge: Some(surge),
                        max_unavailable: Some(unavailable),
                    }),
                }),
                ..DeploymentSpec::default()
            },
            ..Deployment::default()
        }
    }

    #[test]
    fn proportional_scaling_shares_the_difference_as_upstream() {
        // Upstream's e2e case: 10 replicas, maxSurge 3, a stalled rollout with the old set
        // at 8 and the new at 5 (both sized for 13), scaled to 30: 20 and 13.
        let sizes = [(0, 8), (1, 5)];
        let sized_for = [Some(13), Some(13)];
        assert_eq!(proportional_sizes(&sizes, &sized_for, 30, 3, 13), vec![(0, 20), (1, 13)]);
        // Back down to 10 (+3): the larger, older set gives the most; the total is 13.
        let sizes = [(0, 20), (1, 13)];
        let sized_for = [Some(33), Some(33)];
        let down = proportional_sizes(&sizes, &sized_for, 10, 3, 33);
        assert_eq!(down, vec![(0, 8), (1, 5)]);
        // Equal sizes growing: the newer one gets the rounding leftover.
        let up = proportional_sizes(&[(0, 1), (1, 1)], &[Some(2), Some(2)], 3, 0, 2);
        assert_eq!(up.iter().map(|(_, n)| n).sum::<i32>(), 3);
        assert_eq!(up[0], (1, 2), "{up:?}");
        // To zero: every set goes.
        let zero = proportional_sizes(&[(0, 4), (1, 2)], &[Some(6), Some(6)], 0, 1, 6);
        assert!(zero.iter().all(|(_, n)| *n == 0), "{zero:?}");
        // Without the annotation (a hand-scaled set), the status replicas stand in.
        let fallback = proportional_sizes(&[(0, 6), (1, 4)], &[None, None], 20, 0, 10);
        assert_eq!(fallback, vec![(0, 12), (1, 8)]);
    }

    #[test]
    fn fenceposts_follow_upstream_rounding() {
        use IntOrString::{Int, String as S};
        let cases = [
            (S("25%".into()), S("25%".into()), 4, (1, 1)),
            (S("25%".into()), S("25%".into()), 3, (1, 0)),
            (Int(0), Int(0), 3, (0, 1)),
            (Int(2), Int(5), 3, (2, 3)),
        ];
        for (surge, unavailable, replicas, want) in cases {
            let d = deployment(surge.clone(), unavailable.clone());
            assert_eq!(
                resolve_fenceposts(&d, replicas),
                want,
                "{surge:?}/{unavailable:?} of {replicas}"
            );
        }
    }

    #[test]
    fn templates_compare_without_the_hash_label() {
        let mut a = PodTemplateSpec {
            metadata: Some(ObjectMeta {
                labels: Some(BTreeMap::from([("app".to_owned(), "web".to_owned())])),
                ..ObjectMeta::default()
            }),
            spec: None,
        };
        let b = a.clone();
        a.metadata
            .as_mut()
            .and_then(|m| m.labels.as_mut())
            .map(|l| l.insert(HASH_LABEL.to_owned(), "abc".to_owned()));
        assert_eq!(without_hash(&a), without_hash(&b));
        assert_ne!(template_hash(&b, None), template_hash(&b, Some(1)));
    }
}
