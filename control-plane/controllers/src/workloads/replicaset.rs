//! The ReplicaSet controller: keeps `spec.replicas` active pods matching the selector,
//! adopting orphans, releasing pods that stopped matching, replacing finished ones, and
//! reports replicas, ready and available counts.

use std::collections::BTreeMap;
use std::sync::Arc;

use coxswain_runtime::events::{EventType, Recorder, object_ref};
use k8s_openapi::api::apps::v1::{ReplicaSet, ReplicaSetCondition, ReplicaSetStatus};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Client, ResourceExt};
use serde_json::json;
use tracing::{debug, info};

use super::Error;
use super::common::{
    self, BURST, Expectations, METRICS, SpecOpt, claim, controller_of, create_pod,
    delete_pod, is_active, is_available, is_ready, is_terminating, key_of, owner_ref,
    pod_from_template, random_suffix, ready_since, reflect, reflect_owners, selector_of, selects,
    slow_start, until_available, wait_synced,
};

const COMPONENT: &str = "replicaset-controller";

struct Ctx {
    client: Client,
    metrics: Arc<crate::Metrics>,
    pods: Store<Pod>,
    expectations: Arc<Expectations>,
    recorder: Recorder,
}

/// Runs the ReplicaSet controller until aborted.
pub async fn run_replicaset(ctx: crate::Context) -> Result<(), Error> {
    let client = ctx.client.clone();
    let expectations = Arc::new(Expectations::default());
    let exp = expectations.clone();
    let (pods, pod_stream) = reflect(Api::<Pod>::all(client.clone()), move |ev| exp.observe(ev));
    let (sets, set_stream) =
        reflect_owners(Api::<ReplicaSet>::all(client.clone()), expectations.clone());
    let ctx = Arc::new(Ctx {
        metrics: ctx.metrics().clone(),
        recorder: Recorder::new(client.clone(), COMPONENT, None),
        client,
        pods,
        expectations,
    });
    let sets_for_pods = sets.clone();
    let metrics = ctx.metrics.clone();
    let controller = Controller::for_stream(set_stream, sets)
        .watches_stream(pod_stream, move |pod: Pod| pod_owners(&sets_for_pods, &pod));
    crate::reconciler::run(controller, "replicaset", metrics, ctx, reconcile).await;
    Ok(())
}

/// The ReplicaSets a pod event concerns: its controller, or for an orphan every
/// ReplicaSet in its namespace that selects it (one of them adopts it).
fn pod_owners(sets: &Store<ReplicaSet>, pod: &Pod) -> Vec<ObjectRef<ReplicaSet>> {
    if let Some(r) = common::owner_refs_of::<ReplicaSet>(&pod.metadata) {
        return vec![r];
    }
    if controller_of(&pod.metadata).is_some() {
        return Vec::new();
    }
    let ns = pod.namespace().unwrap_or_default();
    sets.state()
        .iter()
        .filter(|rs| rs.namespace().as_deref() == Some(ns.as_str()))
        .filter(|rs| {
            selector_of(Some(&rs.spec.selector), "").is_ok_and(|sel| selects(&sel, &pod.metadata))
        })
        .map(|rs| ObjectRef::from_obj(&**rs))
        .collect()
}

async fn reconcile(rs: Arc<ReplicaSet>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    let key = key_of(&*rs);
    sync(&rs, &ctx, &key)
    .await
}

/// Deletion preference (upstream's `ActivePods` ordering): the pods that matter least go
/// first: unscheduled, then pending, then unready, then ready for the shortest time,
/// then most restarted, then newest.
fn deletion_rank(pod: &Pod) -> impl Ord {
    let scheduled = pod
        .spec_opt()
        .and_then(|s| s.node_name.as_ref())
        .is_some_and(|n| !n.is_empty());
    let phase_rank = match common::phase(pod) {
        "Pending" => 0,
        "Running" => 2,
        _ => 1,
    };
    let ready = is_ready(pod);
    // Newer readiness first: negate the timestamp.
    let ready_for = ready_since(pod).map(|t| -t.as_millisecond()).unwrap_or(0);
    let restarts: i32 = pod
        .status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .map(|cs| cs.iter().map(|c| c.restart_count).sum())
        .unwrap_or(0);
    let created = pod
        .metadata
        .creation_timestamp
        .as_ref()
        .map(|t| -t.0.as_millisecond())
        .unwrap_or(0);
    (scheduled, phase_rank, ready, ready_for, -restarts, created)
}

async fn sync(rs: &ReplicaSet, ctx: &Ctx, key: &str) -> Result<Action, Error> {
    wait_synced(&ctx.pods, "pod").await?;
    let ns = rs.namespace().unwrap_or_default();
    let spec = rs.spec.clone();
    let selector = selector_of(Some(&spec.selector), &format!("replicaset {key}"))?;
    let uid = rs.metadata.uid.clone().unwrap_or_default();
    let pod_api: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    let candidates: Vec<Arc<Pod>> = ctx
        .pods
        .state()
        .into_iter()
        .filter(|p| p.namespace().as_deref() == Some(ns.as_str()))
        .filter(|p| match controller_of(&p.metadata) {
            Some(r) => r.uid == uid,
            None => selects(&selector, &p.metadata),
        })
        .collect();
    let pods = claim(&pod_api, rs, &selector, candidates).await?;
    let active: Vec<Arc<Pod>> = pods.iter().filter(|p| is_active(p)).cloned().collect();

    let mut manage_err = None;
    if rs.metadata.deletion_timestamp.is_none() && ctx.expectations.satisfied(key) {
        if let Err(e) =
            manage_replicas(rs, ctx, key, &pod_api, &active, spec.replicas.unwrap_or(1)).await
        {
            manage_err = Some(e);
        }
    } else {
        debug!(replicaset = key, "expectations pending; not scaling");
    }

    let now = common::now();
    let min_ready = spec.min_ready_seconds.unwrap_or(0);
    let template_labels = spec
        .template
        .as_ref()
        .and_then(|t| t.metadata.as_ref())
        .and_then(|m| m.labels.clone())
        .unwrap_or_default();
    let fully_labeled = active
        .iter()
        .filter(|p| {
            let labels = p.metadata.labels.clone().unwrap_or_default();
            template_labels
                .iter()
                .all(|(k, v)| labels.get(k) == Some(v))
        })
        .count();
    let old = rs.status.clone().unwrap_or_default();
    let mut conditions: Vec<ReplicaSetCondition> = old
        .conditions
        .clone()
        .unwrap_or_default()
        .into_iter()
        .filter(|c| c.type_.as_deref() != Some("ReplicaFailure"))
        .collect();
    if let Some(e) = &manage_err {
        let prev = old.conditions.as_ref().and_then(|cs| {
            cs.iter()
                .find(|c| c.type_.as_deref() == Some("ReplicaFailure"))
        });
        conditions.push(ReplicaSetCondition {
            type_: Some("ReplicaFailure".to_owned()),
            status: Some("True".to_owned()),
            reason: Some("FailedCreate".to_owned()),
            message: Some(e.to_string()),
            last_transition_time: Some(
                prev.and_then(|c| c.last_transition_time.clone())
                    .unwrap_or(Time(now)),
            ),
        });
    }
    let status = ReplicaSetStatus {
        replicas: count(active.len()),
        fully_labeled_replicas: Some(count(fully_labeled)),
        ready_replicas: Some(count(active.iter().filter(|p| is_ready(p)).count())),
        available_replicas: Some(count(
            active
                .iter()
                .filter(|p| is_available(p, min_ready, now))
                .count(),
        )),
        terminating_replicas: Some(count(pods.iter().filter(|p| is_terminating(p)).count())),
        observed_generation: rs.metadata.generation,
        conditions: if conditions.is_empty() {
            None
        } else {
            Some(conditions)
        },
    };
    if normalized(&status) != normalized(&old) {
        let api: Api<ReplicaSet> = Api::namespaced(ctx.client.clone(), &ns);
        let patch = json!({"status": status_json(&status)});
        match api
            .patch_status(
                &rs.name_any(),
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await
        {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => return Err(common::api_err("update status of", rs, e)),
        }
    }
    if let Some(e) = manage_err {
        return Err(e);
    }
    let next = active
        .iter()
        .filter_map(|p| until_available(p, min_ready, now))
        .min();
    Ok(common::requeue(next))
}

fn count(n: usize) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}

/// Status with zero counts as absent, as the API server drops them (`omitempty`).
fn normalized(s: &ReplicaSetStatus) -> serde_json::Value {
    status_json(s)
}

fn status_json(s: &ReplicaSetStatus) -> serde_json::Value {
    let nz = |v: Option<i32>| v.filter(|n| *n != 0);
    json!({
        "replicas": s.replicas,
        "fullyLabeledReplicas": nz(s.fully_labeled_replicas),
        "readyReplicas": nz(s.ready_replicas),
        "availableReplicas": nz(s.available_replicas),
        "terminatingReplicas": nz(s.terminating_replicas),
        "observedGeneration": s.observed_generation,
        "conditions": s.conditions,
    })
}

async fn manage_replicas(
    rs: &ReplicaSet,
    ctx: &Ctx,
    key: &str,
    pod_api: &Api<Pod>,
    active: &[Arc<Pod>],
    desired: i32,
) -> Result<(), Error> {
    let desired = usize::try_from(desired.max(0)).unwrap_or(0);
    let reference = object_ref(rs);
    if active.len() < desired {
        let n = (desired - active.len()).min(BURST);
        let template = rs
            .spec_opt()
            .and_then(|s| s.template.clone())
            .ok_or_else(|| Error::Invalid {
                object: format!("replicaset {key}"),
                message: "spec.template is missing".to_owned(),
            })?;
        let ns = rs.namespace().unwrap_or_default();
        let name = rs.name_any();
        let base: String = name.chars().take(57).collect();
        let owner = owner_ref(rs);
        info!(replicaset = key, creating = n, "scaling up");
        let (_, err) = slow_start(n, || {
            let pod = pod_from_template(
                &template,
                &format!("{base}-{}", random_suffix(5)),
                &ns,
                owner.clone(),
                &BTreeMap::new(),
            );
            let reference = reference.clone();
            async move {
                let created = create_pod(pod_api, &ctx.expectations, key, &pod).await?;
                METRICS.write("replicaset", "create_pod");
                ctx.recorder
                    .record(
                        &reference,
                        EventType::Normal,
                        "SuccessfulCreate",
                        &format!("Created pod: {}", created.name_any()),
                    )
                    .await;
                Ok(())
            }
        })
        .await;
        if let Some(e) = err {
            ctx.recorder
                .record(
                    &reference,
                    EventType::Warning,
                    "FailedCreate",
                    &format!("Error creating: {e}"),
                )
                .await;
            return Err(e);
        }
    } else if active.len() > desired {
        let n = (active.len() - desired).min(BURST);
        let mut victims: Vec<&Arc<Pod>> = active.iter().collect();
        victims.sort_by_cached_key(|p| deletion_rank(p));
        info!(replicaset = key, deleting = n, "scaling down");
        let results = futures::future::join_all(victims.into_iter().take(n).map(|pod| {
            let reference = reference.clone();
            async move {
                delete_pod(pod_api, &ctx.expectations, key, pod).await?;
                METRICS.write("replicaset", "delete_pod");
                ctx.recorder
                    .record(
                        &reference,
                        EventType::Normal,
                        "SuccessfulDelete",
                        &format!("Deleted pod: {}", pod.name_any()),
                    )
                    .await;
                Ok::<(), Error>(())
            }
        }))
        .await;
        if let Some(e) = results.into_iter().find_map(Result::err) {
            ctx.recorder
                .record(
                    &reference,
                    EventType::Warning,
                    "FailedDelete",
                    &format!("Error deleting: {e}"),
                )
                .await;
            return Err(e);
        }
    }
    Ok(())
}
