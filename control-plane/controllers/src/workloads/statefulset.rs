//! The StatefulSet controller: pods with stable names `name-0..N-1`, created in order and
//! removed from the highest ordinal under OrderedReady (all at once under Parallel),
//! rolled from the highest ordinal down to the partition, with ControllerRevisions as
//! history and `currentRevision`/`updateRevision` in the status.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use coxswain_runtime::events::{EventType, Recorder, object_ref};
use k8s_openapi::api::apps::v1::{ControllerRevision, StatefulSet, StatefulSetStatus};
use k8s_openapi::api::core::v1::{Pod, PodTemplateSpec};
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Client, ResourceExt};
use serde_json::json;
use tracing::info;

use super::Error;
use super::common::{
    self, Expectations, METRICS, claim, controller_of, delete_pod, ensure_revision,
    is_active, is_available, is_ready, is_terminating, key_of, owner_ref, pod_from_template,
    reflect, reflect_owners, selector_of, selects, until_available, wait_synced,
};

const COMPONENT: &str = "statefulset-controller";
/// The label naming each pod, for per-pod Services.
pub(crate) const POD_NAME_LABEL: &str = "statefulset.kubernetes.io/pod-name";
const POD_INDEX_LABEL: &str = "apps.kubernetes.io/pod-index";
const REVISION_LABEL: &str = "controller-revision-hash";

struct Ctx {
    client: Client,
    metrics: Arc<crate::Metrics>,
    pods: Store<Pod>,
    revisions: Store<ControllerRevision>,
    expectations: Arc<Expectations>,
    recorder: Recorder,
}

/// Runs the StatefulSet controller until aborted.
pub async fn run_statefulset(ctx: crate::Context) -> Result<(), Error> {
    let client = ctx.client.clone();
    let expectations = Arc::new(Expectations::default());
    let exp = expectations.clone();
    let (pods, pod_stream) = reflect(Api::<Pod>::all(client.clone()), move |ev| exp.observe(ev));
    let (sets, sts_stream) = reflect_owners(
        Api::<StatefulSet>::all(client.clone()),
        expectations.clone(),
    );
    let (revisions, rev_stream) = reflect(Api::<ControllerRevision>::all(client.clone()), |_| {});
    let ctx = Arc::new(Ctx {
        metrics: ctx.metrics().clone(),
        recorder: Recorder::new(client.clone(), COMPONENT, None),
        client,
        pods,
        revisions,
        expectations,
    });
    let sets_for_pods = sets.clone();
    let metrics = ctx.metrics.clone();
    let controller = Controller::for_stream(sts_stream, sets)
        .watches_stream(pod_stream, move |pod: Pod| pod_owners(&sets_for_pods, &pod))
        .watches_stream(rev_stream, |r: ControllerRevision| {
            common::owner_refs_of::<StatefulSet>(&r.metadata)
        });
    crate::reconciler::run(controller, "statefulset", metrics, ctx, reconcile).await;
    Ok(())
}

fn pod_owners(sets: &Store<StatefulSet>, pod: &Pod) -> Vec<ObjectRef<StatefulSet>> {
    if let Some(r) = common::owner_refs_of::<StatefulSet>(&pod.metadata) {
        return vec![r];
    }
    if controller_of(&pod.metadata).is_some() {
        return Vec::new();
    }
    let ns = pod.namespace().unwrap_or_default();
    sets.state()
        .iter()
        .filter(|s| s.namespace().as_deref() == Some(ns.as_str()))
        .filter(|s| {
            selector_of(Some(&s.spec.selector), "").is_ok_and(|sel| selects(&sel, &pod.metadata))
        })
        .map(|s| ObjectRef::from_obj(&**s))
        .collect()
}

async fn reconcile(sts: Arc<StatefulSet>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    let key = key_of(&*sts);
    sync(&sts, &ctx, &key)
    .await
}

/// The ordinal of `pod` if it is named `{set}-{n}`.
fn ordinal(set: &str, pod: &Pod) -> Option<i32> {
    pod.name_any()
        .strip_prefix(set)?
        .strip_prefix('-')?
        .parse()
        .ok()
}

/// The pod template a ControllerRevision holds.
fn revision_template(
    revisions: &Store<ControllerRevision>,
    ns: &str,
    name: &str,
) -> Option<PodTemplateSpec> {
    let rev = revisions.get(&ObjectRef::new(name).within(ns))?;
    let mut t = rev.data.0.get("spec")?.get("template")?.clone();
    t.as_object_mut()?.remove("$patch");
    serde_json::from_value(t).ok()
}

/// What one pass decided to do next.
enum Step {
    Create(i32),
    Delete(Arc<Pod>, &'static str),
    Wait,
    Nothing,
}

async fn sync(sts: &StatefulSet, ctx: &Ctx, key: &str) -> Result<Action, Error> {
    wait_synced(&ctx.pods, "pod").await?;
    wait_synced(&ctx.revisions, "controllerrevision").await?;
    let ns = sts.namespace().unwrap_or_default();
    let name = sts.name_any();
    let uid = sts.metadata.uid.clone().unwrap_or_default();
    let selector = selector_of(Some(&sts.spec.selector), &format!("statefulset {key}"))?;
    let pod_api: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    let candidates: Vec<Arc<Pod>> = ctx
        .pods
        .state()
        .into_iter()
        .filter(|p| p.namespace().as_deref() == Some(ns.as_str()))
        .filter(|p| match controller_of(&p.metadata) {
            Some(r) => r.uid == uid,
            None => selects(&selector, &p.metadata) && ordinal(&name, p).is_some(),
        })
        .collect();
    let pods = claim(&pod_api, sts, &selector, candidates).await?;
    let old = sts.status.clone().unwrap_or_default();
    let update_revision = ensure_revision(
        &ctx.client,
        &ctx.revisions,
        sts,
        &sts.spec.template,
        &old.current_revision
            .as_deref()
            .into_iter()
            .collect::<Vec<_>>(),
        sts.spec.revision_history_limit.unwrap_or(10),
    )
    .await?;
    let current_revision = old
        .current_revision
        .clone()
        .unwrap_or_else(|| update_revision.clone());

    let replicas = sts.spec.replicas.unwrap_or(1).max(0);
    let min_ready = sts.spec.min_ready_seconds.unwrap_or(0);
    let parallel = sts.spec.pod_management_policy.as_deref() == Some("Parallel");
    let rolling = sts
        .spec
        .update_strategy
        .as_ref()
        .and_then(|s| s.type_.as_deref())
        .unwrap_or("RollingUpdate")
        == "RollingUpdate";
    let partition = sts
        .spec
        .update_strategy
        .as_ref()
        .and_then(|s| s.rolling_update.as_ref())
        .and_then(|r| r.partition)
        .unwrap_or(0);
    let now = common::now();
    let by_ordinal: HashMap<i32, Arc<Pod>> = pods
        .iter()
        .filter_map(|p| Some((ordinal(&name, p)?, p.clone())))
        .collect();
    let revision_of = |p: &Pod| p.labels().get(REVISION_LABEL).cloned().unwrap_or_default();
    let healthy = |p: &Pod| is_active(p) && is_available(p, min_ready, now);

    // Decide: create missing pods in order, replace finished ones, then scale down from
    // the top, then roll from the top down to the partition.
    let mut steps: Vec<Step> = Vec::new();
    'decide: {
        for i in 0..replicas {
            match by_ordinal.get(&i) {
                None => {
                    steps.push(Step::Create(i));
                    if !parallel {
                        break 'decide;
                    }
                }
                Some(p) if is_terminating(p) => {
                    if !parallel {
                        steps.push(Step::Wait);
                        break 'decide;
                    }
                }
                Some(p) if !is_active(p) => {
                    steps.push(Step::Delete(p.clone(), "finished"));
                    if !parallel {
                        break 'decide;
                    }
                }
                Some(p) if !healthy(p) && !parallel => {
                    steps.push(Step::Wait);
                    break 'decide;
                }
                Some(_) => {}
            }
        }
        let mut condemned: Vec<(i32, &Arc<Pod>)> = by_ordinal
            .iter()
            .filter(|(i, _)| **i >= replicas)
            .map(|(i, p)| (*i, p))
            .collect();
        condemned.sort_by_key(|(i, _)| std::cmp::Reverse(*i));
        for (_, p) in &condemned {
            if is_terminating(p) {
                if !parallel {
                    steps.push(Step::Wait);
                    break 'decide;
                }
                continue;
            }
            steps.push(Step::Delete((*p).clone(), "scale down"));
            if !parallel {
                break 'decide;
            }
        }
        if !condemned.is_empty() {
            break 'decide;
        }
        if rolling {
            for i in (partition.max(0)..replicas).rev() {
                let Some(p) = by_ordinal.get(&i) else {
                    continue;
                };
                if revision_of(p) != update_revision {
                    if is_terminating(p) {
                        steps.push(Step::Wait);
                    } else {
                        steps.push(Step::Delete(p.clone(), "update"));
                    }
                    break 'decide;
                }
                if !healthy(p) {
                    steps.push(Step::Wait);
                    break 'decide;
                }
            }
        }
        steps.push(Step::Nothing);
    }

    let reference = object_ref(sts);
    let mut manage_err = None;
    if sts.metadata.deletion_timestamp.is_none() && ctx.expectations.satisfied(key) {
        for step in steps {
            let result = match step {
                Step::Create(i) => {
                    // Ordinals below the partition stay on the current revision.
                    let (revision, template) =
                        if i < partition && current_revision != update_revision {
                            match revision_template(&ctx.revisions, &ns, &current_revision) {
                                Some(t) => (current_revision.clone(), t),
                                None => (update_revision.clone(), sts.spec.template.clone()),
                            }
                        } else {
                            (update_revision.clone(), sts.spec.template.clone())
                        };
                    create_member(sts, ctx, key, &pod_api, i, &revision, &template).await
                }
                Step::Delete(pod, why) => {
                    info!(statefulset = key, pod = %pod.name_any(), why, "deleting pod");
                    match delete_pod(&pod_api, &ctx.expectations, key, &pod).await {
                        Ok(()) => {
                            METRICS.write("statefulset", "delete_pod");
                            ctx.recorder
                                .record(
                                    &reference,
                                    EventType::Normal,
                                    "SuccessfulDelete",
                                    &format!(
                                        "delete Pod {} in StatefulSet {name} successful",
                                        pod.name_any()
                                    ),
                                )
                                .await;
                            Ok(())
                        }
                        Err(e) => Err(e),
                    }
                }
                Step::Wait | Step::Nothing => Ok(()),
            };
            if let Err(e) = result {
                manage_err = Some(e);
                break;
            }
        }
    }

    // Status.
    let members: Vec<&Arc<Pod>> = by_ordinal.values().collect();
    let count = |f: &dyn Fn(&Pod) -> bool| {
        i32::try_from(members.iter().filter(|p| f(p)).count()).unwrap_or(0)
    };
    let updated = count(&|p| revision_of(p) == update_revision && !is_terminating(p));
    let ready = count(&|p| is_ready(p));
    let available = count(&|p| is_available(p, min_ready, now));
    let all_updated = updated == replicas
        && ready == replicas
        && by_ordinal.len() == usize::try_from(replicas).unwrap_or(0);
    let current_revision = if all_updated {
        update_revision.clone()
    } else {
        current_revision
    };
    let current = count(&|p| revision_of(p) == current_revision && !is_terminating(p));
    let status = StatefulSetStatus {
        replicas: count(&|p| !is_terminating(p)),
        ready_replicas: Some(ready),
        available_replicas: Some(available),
        current_replicas: Some(current),
        updated_replicas: Some(updated),
        current_revision: Some(current_revision),
        update_revision: Some(update_revision),
        observed_generation: sts.metadata.generation,
        collision_count: old.collision_count.or(Some(0)),
        conditions: old.conditions.clone(),
    };
    if status_value(&status) != status_value(&old) {
        let api: Api<StatefulSet> = Api::namespaced(ctx.client.clone(), &ns);
        match api
            .patch_status(
                &name,
                &PatchParams::default(),
                &Patch::Merge(&json!({"status": status_value(&status)})),
            )
            .await
        {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => return Err(common::api_err("update status of", sts, e)),
        }
    }
    if let Some(e) = manage_err {
        return Err(e);
    }
    let next = members
        .iter()
        .filter_map(|p| until_available(p, min_ready, now))
        .min();
    Ok(common::requeue(next))
}

fn status_value(s: &StatefulSetStatus) -> serde_json::Value {
    let nz = |v: Option<i32>| v.filter(|n| *n != 0);
    json!({
        "replicas": s.replicas,
        "readyReplicas": nz(s.ready_replicas),
        "availableReplicas": nz(s.available_replicas),
        "currentReplicas": nz(s.current_replicas),
        "updatedReplicas": nz(s.updated_replicas),
        "currentRevision": s.current_revision,
        "updateRevision": s.update_revision,
        "observedGeneration": s.observed_generation,
        "collisionCount": s.collision_count,
    })
}

async fn create_member(
    sts: &StatefulSet,
    ctx: &Ctx,
    key: &str,
    pod_api: &Api<Pod>,
    i: i32,
    revision: &str,
    template: &PodTemplateSpec,
) -> Result<(), Error> {
    let ns = sts.namespace().unwrap_or_default();
    let set = sts.name_any();
    let pod_name = format!("{set}-{i}");
    let labels = BTreeMap::from([
        (POD_NAME_LABEL.to_owned(), pod_name.clone()),
        (POD_INDEX_LABEL.to_owned(), i.to_string()),
        (REVISION_LABEL.to_owned(), revision.to_owned()),
    ]);
    let mut pod = pod_from_template(template, &pod_name, &ns, owner_ref(sts), &labels);
    if let Some(spec) = pod.spec.as_mut() {
        spec.hostname = Some(pod_name.clone());
        spec.subdomain = sts.spec.service_name.clone().filter(|s| !s.is_empty());
    }
    match pod_api.create(&PostParams::default(), &pod).await {
        Ok(_) => {
            METRICS.write("statefulset", "create_pod");
            info!(statefulset = key, pod = %pod_name, "created pod");
            ctx.recorder
                .record(
                    &object_ref(sts),
                    EventType::Normal,
                    "SuccessfulCreate",
                    &format!("create Pod {pod_name} in StatefulSet {set} successful"),
                )
                .await;
            Ok(())
        }
        // Created by an earlier pass the cache has not shown yet.
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(()),
        Err(e) => {
            let err = common::api_err_named("create", "pod", &ns, &pod_name, e);
            ctx.recorder
                .record(
                    &object_ref(sts),
                    EventType::Warning,
                    "FailedCreate",
                    &format!("create Pod {pod_name} in StatefulSet {set} failed error: {err}"),
                )
                .await;
            Err(err)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    #[test]
    fn ordinals_come_from_stable_names() {
        let pod = |n: &str| Pod {
            metadata: ObjectMeta {
                name: Some(n.into()),
                ..ObjectMeta::default()
            },
            ..Pod::default()
        };
        assert_eq!(ordinal("web", &pod("web-0")), Some(0));
        assert_eq!(ordinal("web", &pod("web-12")), Some(12));
        assert_eq!(ordinal("web", &pod("web-x")), None);
        assert_eq!(ordinal("web", &pod("webby-1")), None);
    }
}
