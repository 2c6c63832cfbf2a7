//! The Job controller: runs pods until `completions` succeed (`parallelism` at a time),
//! retries failures with exponential backoff up to `backoffLimit`, enforces
//! `activeDeadlineSeconds`, and reports counts, times and the Complete/Failed conditions.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use coxswain_runtime::events::{EventType, Recorder, object_ref};
use futures::StreamExt;
use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::batch::v1::{Job, JobCondition, JobStatus};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::Store;
use kube::{Client, ResourceExt};
use serde_json::json;
use tracing::{debug, info};

use super::Error;
use super::common::{
    self, BURST, ErrorBackoff, Expectations, METRICS, claim, controller_of, create_pod, delete_pod,
    is_active, is_ready, is_terminating, key_of, owner_ref, pod_from_template, random_suffix,
    reflect, reflect_owners, selector_of, selects, slow_start, wait_synced,
};

const COMPONENT: &str = "job-controller";
/// Labels every Job pod carries (the API server also puts them in generated templates).
pub(crate) const JOB_NAME_LABEL: &str = "batch.kubernetes.io/job-name";
pub(crate) const CONTROLLER_UID_LABEL: &str = "batch.kubernetes.io/controller-uid";

/// Settings of the Job controller.
#[derive(Debug, Clone)]
pub struct JobOptions {
    /// Delay before replacing the first failed pod; doubles with each further failure
    /// (upstream's `DefaultJobPodFailureBackOff`, 10 s).
    pub pod_failure_backoff: Duration,
    /// Upper bound of that delay (upstream's `MaxJobPodFailureBackOff`, 10 min).
    pub max_pod_failure_backoff: Duration,
}

impl Default for JobOptions {
    fn default() -> JobOptions {
        JobOptions {
            pod_failure_backoff: Duration::from_secs(10),
            max_pod_failure_backoff: Duration::from_secs(600),
        }
    }
}

struct Ctx {
    client: Client,
    metrics: Arc<crate::Metrics>,
    pods: Store<Pod>,
    expectations: Arc<Expectations>,
    backoff: ErrorBackoff,
    recorder: Recorder,
    options: JobOptions,
}

/// Runs the Job controller with default settings until aborted.
pub async fn run_job(ctx: crate::Context) -> Result<(), Error> {
    run_job_with(ctx, JobOptions::default()).await
}

/// Runs the Job controller with `options` until aborted.
pub async fn run_job_with(ctx: crate::Context, options: JobOptions) -> Result<(), Error> {
    let client = ctx.client.clone();
    let expectations = Arc::new(Expectations::default());
    let exp = expectations.clone();
    let (pods, pod_stream) = reflect(Api::<Pod>::all(client.clone()), move |ev| exp.observe(ev));
    let (jobs, job_stream) = reflect_owners(Api::<Job>::all(client.clone()), expectations.clone());
    let ctx = Arc::new(Ctx {
        metrics: ctx.metrics().clone(),
        recorder: Recorder::new(client.clone(), COMPONENT, None),
        client,
        pods,
        expectations,
        backoff: ErrorBackoff::default(),
        options,
    });
    Controller::for_stream(job_stream, jobs)
        .watches_stream(pod_stream, |pod: Pod| {
            common::owner_refs_of::<Job>(&pod.metadata)
        })
        .run(reconcile, error_policy, ctx)
        .for_each(|r| async move {
            if let Err(e) = r {
                debug!(error = %e, "job controller event");
            }
        })
        .await;
    Ok(())
}

fn error_policy(job: Arc<Job>, _err: &Error, ctx: Arc<Ctx>) -> Action {
    Action::requeue(ctx.backoff.next(&key_of(&*job)))
}

async fn reconcile(job: Arc<Job>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    let key = key_of(&*job);
    common::instrumented(
        &ctx.metrics,
        "job",
        &key,
        &ctx.backoff,
        sync(&job, &ctx, &key),
    )
    .await
}

fn has_condition(status: &JobStatus, type_: &str) -> bool {
    status
        .conditions
        .as_ref()
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == type_ && c.status == "True"))
}

fn job_condition(type_: &str, reason: &str, message: &str, now: Timestamp) -> JobCondition {
    JobCondition {
        type_: type_.to_owned(),
        status: "True".to_owned(),
        reason: Some(reason.to_owned()),
        message: Some(message.to_owned()),
        last_probe_time: Some(Time(now)),
        last_transition_time: Some(Time(now)),
    }
}

/// When a failed pod finished (its containers' finishedAt, else its last status time).
fn finished_at(pod: &Pod) -> Option<Timestamp> {
    let status = pod.status.as_ref()?;
    let from_containers = status
        .container_statuses
        .as_ref()
        .into_iter()
        .flatten()
        .filter_map(|c| c.state.as_ref()?.terminated.as_ref()?.finished_at.as_ref())
        .map(|t| t.0)
        .max();
    from_containers.or_else(|| {
        status
            .conditions
            .as_ref()?
            .iter()
            .filter_map(|c| c.last_transition_time.as_ref().map(|t| t.0))
            .max()
    })
}

async fn sync(job: &Job, ctx: &Ctx, key: &str) -> Result<Action, Error> {
    wait_synced(&ctx.pods, "pod").await?;
    let old = job.status.clone().unwrap_or_default();
    if has_condition(&old, "Complete") || has_condition(&old, "Failed") {
        return Ok(Action::await_change());
    }
    let spec = job.spec.clone().unwrap_or_default();
    let ns = job.namespace().unwrap_or_default();
    let uid = job.metadata.uid.clone().unwrap_or_default();
    let selector = selector_of(spec.selector.as_ref(), &format!("job {key}"))?;
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
    let pods = claim(&pod_api, job, &selector, candidates).await?;
    let active: Vec<&Arc<Pod>> = pods.iter().filter(|p| is_active(p)).collect();
    let succeeded = pods
        .iter()
        .filter(|p| common::phase(p) == "Succeeded")
        .count();
    let failed_pods: Vec<&Arc<Pod>> = pods
        .iter()
        .filter(|p| common::phase(p) == "Failed")
        .collect();
    let failed = failed_pods.len();
    // Counts never go down, even if finished pods are deleted by someone.
    let succeeded = i32::try_from(succeeded)
        .unwrap_or(i32::MAX)
        .max(old.succeeded.unwrap_or(0));
    let failed = i32::try_from(failed)
        .unwrap_or(i32::MAX)
        .max(old.failed.unwrap_or(0));

    let now = common::now();
    let suspended = spec.suspend.unwrap_or(false);
    let mut status = old.clone();
    if status.start_time.is_none() && !suspended {
        status.start_time = Some(Time(now));
    }
    let start = status.start_time.as_ref().map(|t| t.0);
    let parallelism = spec.parallelism.unwrap_or(1).max(0);
    let backoff_limit = spec.backoff_limit.unwrap_or(6);
    let reference = object_ref(job);

    let deadline_at = match (spec.active_deadline_seconds, start) {
        (Some(secs), Some(start)) => start.checked_add(SignedDuration::from_secs(secs)).ok(),
        _ => None,
    };
    let finished: Option<(&str, &str, &str)> = if failed > backoff_limit {
        Some((
            "Failed",
            "BackoffLimitExceeded",
            "Job has reached the specified backoff limit",
        ))
    } else if deadline_at.is_some_and(|at| at <= now) {
        Some((
            "Failed",
            "DeadlineExceeded",
            "Job was active longer than specified deadline",
        ))
    } else if match spec.completions {
        Some(c) => succeeded >= c,
        None => succeeded > 0 && active.is_empty(),
    } {
        Some(("Complete", "Completed", "Job completed"))
    } else {
        None
    };

    let mut requeue = None;
    let mut manage_err = None;
    if let Some((type_, reason, message)) = finished {
        // Nothing more runs: stop what is left.
        for pod in &active {
            delete_pod(&pod_api, &ctx.expectations, key, pod).await?;
            METRICS.write("job", "delete_pod");
            ctx.recorder
                .record(
                    &reference,
                    EventType::Normal,
                    "SuccessfulDelete",
                    &format!("Deleted pod: {}", pod.name_any()),
                )
                .await;
        }
        let conds = status.conditions.get_or_insert_with(Vec::new);
        if type_ == "Failed" {
            conds.push(job_condition("FailureTarget", reason, message, now));
            conds.push(job_condition("Failed", reason, message, now));
            ctx.recorder
                .record(&reference, EventType::Warning, reason, message)
                .await;
        } else {
            conds.push(job_condition(
                "SuccessCriteriaMet",
                "CompletionsReached",
                "Reached expected number of succeeded pods",
                now,
            ));
            conds.push(job_condition(
                "Complete",
                "CompletionsReached",
                "Reached expected number of succeeded pods",
                now,
            ));
            status.completion_time = Some(Time(now));
            ctx.recorder
                .record(&reference, EventType::Normal, "Completed", message)
                .await;
        }
        info!(job = key, outcome = type_, reason, "job finished");
    } else if suspended {
        for pod in &active {
            delete_pod(&pod_api, &ctx.expectations, key, pod).await?;
        }
    } else if ctx.expectations.satisfied(key) {
        let want = match spec.completions {
            Some(c) => (c - succeeded).clamp(0, parallelism),
            None if succeeded > 0 => 0,
            None => parallelism,
        };
        let want = usize::try_from(want).unwrap_or(0);
        if active.len() < want {
            // Back off after failures: 10 s, 20 s, 40 s ... since the last one.
            let wait = if failed > 0 {
                let exp = u32::try_from(failed - 1).unwrap_or(0).min(20);
                let delay = ctx
                    .options
                    .pod_failure_backoff
                    .saturating_mul(1u32 << exp)
                    .min(ctx.options.max_pod_failure_backoff);
                let last = failed_pods.iter().filter_map(|p| finished_at(p)).max();
                last.and_then(|t| t.checked_add(SignedDuration::try_from(delay).ok()?).ok())
                    .filter(|at| *at > now)
                    .map(|at| at.duration_since(now).unsigned_abs())
            } else {
                None
            };
            if let Some(wait) = wait {
                debug!(job = key, ?wait, "backing off before replacing failed pods");
                requeue = Some(wait);
            } else if let Err(e) =
                create_pods(job, ctx, key, &pod_api, (want - active.len()).min(BURST)).await
            {
                manage_err = Some(e);
            }
        } else if active.len() > want {
            let mut extra = active.clone();
            extra.sort_by_key(|p| std::cmp::Reverse(p.metadata.creation_timestamp.clone()));
            for pod in extra.into_iter().take(active.len() - want) {
                delete_pod(&pod_api, &ctx.expectations, key, pod).await?;
                METRICS.write("job", "delete_pod");
                ctx.recorder
                    .record(
                        &reference,
                        EventType::Normal,
                        "SuccessfulDelete",
                        &format!("Deleted pod: {}", pod.name_any()),
                    )
                    .await;
            }
        }
    }

    status.active = Some(if finished.is_some() {
        0
    } else {
        i32::try_from(active.len()).unwrap_or(i32::MAX)
    });
    status.succeeded = Some(succeeded);
    status.failed = Some(failed);
    status.ready = Some(i32::try_from(active.iter().filter(|p| is_ready(p)).count()).unwrap_or(0));
    status.terminating =
        Some(i32::try_from(pods.iter().filter(|p| is_terminating(p)).count()).unwrap_or(0));
    if status_value(&status) != status_value(&old) {
        let api: Api<Job> = Api::namespaced(ctx.client.clone(), &ns);
        let patch = json!({"status": status_value(&status)});
        match api
            .patch_status(
                &job.name_any(),
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await
        {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => return Err(common::api_err("update status of", job, e)),
        }
    }
    if let Some(e) = manage_err {
        return Err(e);
    }
    if finished.is_none() {
        let to_deadline = deadline_at
            .filter(|at| *at > now)
            .map(|at| at.duration_since(now).unsigned_abs() + Duration::from_millis(50));
        requeue = common::min_opt(requeue, to_deadline);
    }
    Ok(common::requeue(requeue))
}

fn status_value(s: &JobStatus) -> serde_json::Value {
    let nz = |v: Option<i32>| v.filter(|n| *n != 0);
    json!({
        "active": nz(s.active),
        "succeeded": nz(s.succeeded),
        "failed": nz(s.failed),
        "ready": s.ready,
        "terminating": s.terminating,
        "startTime": s.start_time,
        "completionTime": s.completion_time,
        "conditions": s.conditions,
    })
}

async fn create_pods(
    job: &Job,
    ctx: &Ctx,
    key: &str,
    pod_api: &Api<Pod>,
    n: usize,
) -> Result<(), Error> {
    let spec = job.spec.clone().unwrap_or_default();
    let ns = job.namespace().unwrap_or_default();
    let name = job.name_any();
    let uid = job.metadata.uid.clone().unwrap_or_default();
    let labels = BTreeMap::from([
        (JOB_NAME_LABEL.to_owned(), name.clone()),
        (CONTROLLER_UID_LABEL.to_owned(), uid.clone()),
        ("job-name".to_owned(), name.clone()),
        ("controller-uid".to_owned(), uid),
    ]);
    let owner = owner_ref(job);
    let base: String = name.chars().take(57).collect();
    let reference = object_ref(job);
    info!(job = key, creating = n, "creating pods");
    let (_, err) = slow_start(n, || {
        let pod = pod_from_template(
            &spec.template,
            &format!("{base}-{}", random_suffix(5)),
            &ns,
            owner.clone(),
            &labels,
        );
        let reference = reference.clone();
        async move {
            let created = create_pod(pod_api, &ctx.expectations, key, &pod).await?;
            METRICS.write("job", "create_pod");
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
    Ok(())
}
