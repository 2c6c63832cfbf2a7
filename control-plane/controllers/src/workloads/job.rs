//! The Job controller: runs pods until `completions` succeed (`parallelism` at a time),
//! retries failures with exponential backoff up to `backoffLimit`, enforces
//! `activeDeadlineSeconds`, and reports counts, times and the Complete/Failed conditions.
//!
//! `completionMode: Indexed`: each of `completions` indexes gets its own pod, named
//! `<job>-<index>-<suffix>`, with the index in the `batch.kubernetes.io/job-completion-index`
//! annotation and label, the `JOB_COMPLETION_INDEX` environment variable (a downward-API
//! reference to that annotation) and the hostname `<job>-<index>`; the Job completes when
//! every index has a succeeded pod, listed in `status.completedIndexes` ("0-2,4").

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use coxswain_runtime::events::{EventType, Recorder, object_ref};
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
    self, BURST, Expectations, METRICS, claim, controller_of, create_pod, delete_pod,
    is_active, is_ready, is_terminating, key_of, owner_ref, pod_from_template, random_suffix,
    reflect, reflect_owners, selector_of, selects, slow_start, wait_synced,
};

const COMPONENT: &str = "job-controller";
/// Labels every Job pod carries (the API server also puts them in generated templates).
pub(crate) const JOB_NAME_LABEL: &str = "batch.kubernetes.io/job-name";
pub(crate) const CONTROLLER_UID_LABEL: &str = "batch.kubernetes.io/controller-uid";
/// Annotation and label of an Indexed Job's pod: its completion index.
pub const COMPLETION_INDEX: &str = "batch.kubernetes.io/job-completion-index";
/// The environment variable an Indexed Job's containers find their index in.
const COMPLETION_INDEX_ENV: &str = "JOB_COMPLETION_INDEX";

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
        options,
    });
    let metrics = ctx.metrics.clone();
    let controller = Controller::for_stream(job_stream, jobs)
        .watches_stream(pod_stream, |pod: Pod| {
            common::owner_refs_of::<Job>(&pod.metadata)
        });
    crate::reconciler::run(controller, "job", metrics, ctx, reconcile).await;
    Ok(())
}

async fn reconcile(job: Arc<Job>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    let key = key_of(&*job);
    sync(&job, &ctx, &key)
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
    let indexed = spec.completion_mode.as_deref() == Some("Indexed");
    let completions = spec.completions.unwrap_or(0).max(0);
    let mut active: Vec<&Arc<Pod>> = pods.iter().filter(|p| is_active(p)).collect();
    // Indexed: the indexes with a succeeded pod (never forgotten, as the counts below),
    // and active pods that duplicate an index, hold a finished or invalid one: extra.
    let mut completed: BTreeSet<i32> = BTreeSet::new();
    let mut extra_indexed: Vec<&Arc<Pod>> = Vec::new();
    if indexed {
        completed = parse_indexes(old.completed_indexes.as_deref().unwrap_or(""), completions);
        completed.extend(
            pods.iter()
                .filter(|p| common::phase(p) == "Succeeded")
                .filter_map(|p| completion_index(p, completions)),
        );
        let mut seen = BTreeSet::new();
        let (keep, extra): (Vec<&Arc<Pod>>, Vec<&Arc<Pod>>) = active.into_iter().partition(|p| {
            completion_index(p, completions)
                .is_some_and(|i| !completed.contains(&i) && seen.insert(i))
        });
        active = keep;
        extra_indexed = extra;
    }
    let succeeded = if indexed {
        completed.len()
    } else {
        pods.iter()
            .filter(|p| common::phase(p) == "Succeeded")
            .count()
    };
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
    for pod in &extra_indexed {
        if finished.is_none() && !suspended && ctx.expectations.satisfied(key) {
            debug!(job = key, pod = %pod.name_any(), "deleting a pod of a duplicate or finished index");
            delete_pod(&pod_api, &ctx.expectations, key, pod).await?;
            METRICS.write("job", "delete_pod");
        }
    }
    if let Some((type_, reason, message)) = finished {
        // Nothing more runs: stop what is left.
        for pod in active.iter().chain(&extra_indexed) {
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
        for pod in active.iter().chain(&extra_indexed) {
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
            } else {
                let n = (want - active.len()).min(BURST);
                let indexes: Vec<Option<i32>> = if indexed {
                    let running: BTreeSet<i32> = active
                        .iter()
                        .filter_map(|p| completion_index(p, completions))
                        .collect();
                    (0..completions)
                        .filter(|i| !completed.contains(i) && !running.contains(i))
                        .take(n)
                        .map(Some)
                        .collect()
                } else {
                    vec![None; n]
                };
                if let Err(e) = create_pods(job, ctx, key, &pod_api, indexes).await {
                    manage_err = Some(e);
                }
            }
        } else if active.len() > want {
            let mut extra = active.clone();
            if indexed {
                // Upstream keeps the lowest indexes when parallelism shrinks.
                extra.sort_by_key(|p| std::cmp::Reverse(completion_index(p, completions)));
            } else {
                extra.sort_by_key(|p| std::cmp::Reverse(p.metadata.creation_timestamp.clone()));
            }
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
        i32::try_from(active.len() + extra_indexed.len()).unwrap_or(i32::MAX)
    });
    status.succeeded = Some(succeeded);
    status.failed = Some(failed);
    if indexed {
        status.completed_indexes = Some(format_indexes(&completed));
    }
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
        "completedIndexes": s.completed_indexes,
        "startTime": s.start_time,
        "completionTime": s.completion_time,
        "conditions": s.conditions,
    })
}

/// The completion index of an Indexed Job's pod (its annotation), if valid for
/// `completions`.
fn completion_index(pod: &Pod, completions: i32) -> Option<i32> {
    pod.annotations()
        .get(COMPLETION_INDEX)
        .and_then(|v| v.parse::<i32>().ok())
        .filter(|i| (0..completions).contains(i))
}

/// `status.completedIndexes` ("1,3-5,7"): sorted, consecutive runs as intervals.
fn format_indexes(indexes: &BTreeSet<i32>) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut run: Option<(i32, i32)> = None;
    for &i in indexes {
        run = match run {
            Some((a, b)) if i == b + 1 => Some((a, i)),
            Some((a, b)) => {
                parts.push(if a == b { a.to_string() } else { format!("{a}-{b}") });
                Some((i, i))
            }
            None => Some((i, i)),
        };
    }
    if let Some((a, b)) = run {
        parts.push(if a == b { a.to_string() } else { format!("{a}-{b}") });
    }
    parts.join(",")
}

/// Parses `status.completedIndexes`, keeping the indexes below `completions`.
fn parse_indexes(text: &str, completions: i32) -> BTreeSet<i32> {
    let mut out = BTreeSet::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (a, b) = match part.split_once('-') {
            Some((a, b)) => (a.parse::<i32>(), b.parse::<i32>()),
            None => (part.parse::<i32>(), part.parse::<i32>()),
        };
        if let (Ok(a), Ok(b)) = (a, b) {
            out.extend((a.max(0)..=b.min(completions - 1)).filter(|i| *i >= a));
        }
    }
    out
}

/// An Indexed Job's pod template for `index`: the annotation and label, the hostname
/// (unless the template sets one) and `JOB_COMPLETION_INDEX` in every container that
/// does not define it, as upstream's Job controller adds them.
fn indexed_pod(mut pod: Pod, job_name: &str, index: i32) -> Pod {
    let value = index.to_string();
    pod.metadata
        .annotations
        .get_or_insert_with(BTreeMap::new)
        .insert(COMPLETION_INDEX.to_owned(), value.clone());
    pod.metadata
        .labels
        .get_or_insert_with(BTreeMap::new)
        .insert(COMPLETION_INDEX.to_owned(), value);
    if let Some(spec) = pod.spec.as_mut() {
        if spec.hostname.as_deref().is_none_or(str::is_empty) {
            spec.hostname = Some(format!("{job_name}-{index}"));
        }
        let env = k8s_openapi::api::core::v1::EnvVar {
            name: COMPLETION_INDEX_ENV.to_owned(),
            value: None,
            value_from: Some(k8s_openapi::api::core::v1::EnvVarSource {
                field_ref: Some(k8s_openapi::api::core::v1::ObjectFieldSelector {
                    api_version: Some("v1".to_owned()),
                    field_path: format!("metadata.annotations['{COMPLETION_INDEX}']"),
                }),
                ..Default::default()
            }),
        };
        for c in spec
            .containers
            .iter_mut()
            .chain(spec.init_containers.iter_mut().flatten())
        {
            let vars = c.env.get_or_insert_with(Vec::new);
            if !vars.iter().any(|v| v.name == COMPLETION_INDEX_ENV) {
                vars.push(env.clone());
            }
        }
    }
    pod
}

/// Creates one pod per entry of `indexes` (`Some(i)`: the pod of index `i` of an Indexed
/// Job), in slow-start batches.
async fn create_pods(
    job: &Job,
    ctx: &Ctx,
    key: &str,
    pod_api: &Api<Pod>,
    indexes: Vec<Option<i32>>,
) -> Result<(), Error> {
    let n = indexes.len();
    let mut next = indexes.into_iter();
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
        let index = next.next().flatten();
        let pod_name = match index {
            // Upstream's `<job>-<index>-` generated name, the job name cut to fit.
            Some(i) => {
                let prefix: String = name.chars().take(57 - i.to_string().len()).collect();
                format!("{prefix}-{i}-{}", random_suffix(5))
            }
            None => format!("{base}-{}", random_suffix(5)),
        };
        let pod = pod_from_template(&spec.template, &pod_name, &ns, owner.clone(), &labels);
        let pod = match index {
            Some(i) => indexed_pod(pod, &name, i),
            None => pod,
        };
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn completed_indexes_read_and_write_as_intervals() {
        let table = [
            (vec![], ""),
            (vec![0], "0"),
            (vec![0, 1, 2], "0-2"),
            (vec![1, 3, 4, 5, 7], "1,3-5,7"),
        ];
        for (set, text) in table {
            let set: BTreeSet<i32> = set.into_iter().collect();
            assert_eq!(format_indexes(&set), text);
            assert_eq!(parse_indexes(text, 10), set, "{text}");
        }
        // Indexes past `completions` (the Job was changed) and garbage are dropped.
        assert_eq!(parse_indexes("2-5,x,9", 4), BTreeSet::from([2, 3]));
    }

    #[test]
    fn indexed_pods_carry_their_index_everywhere_upstream_puts_it() {
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": "p"},
            "spec": {"containers": [
                {"name": "a", "image": "i"},
                {"name": "b", "image": "i", "env": [{"name": "JOB_COMPLETION_INDEX", "value": "mine"}]},
            ]},
        }))
        .unwrap();
        let pod = indexed_pod(pod, "work", 3);
        assert_eq!(pod.annotations().get(COMPLETION_INDEX).map(String::as_str), Some("3"));
        assert_eq!(pod.labels().get(COMPLETION_INDEX).map(String::as_str), Some("3"));
        let spec = pod.spec.as_ref().unwrap();
        assert_eq!(spec.hostname.as_deref(), Some("work-3"));
        let env = |c: usize| spec.containers[c].env.clone().unwrap_or_default();
        let field = env(0)[0].value_from.as_ref().unwrap().field_ref.as_ref().unwrap().field_path.clone();
        assert_eq!(field, "metadata.annotations['batch.kubernetes.io/job-completion-index']");
        assert_eq!(env(1).len(), 1, "a container's own JOB_COMPLETION_INDEX stays");
        assert_eq!(env(1)[0].value.as_deref(), Some("mine"));
        assert_eq!(completion_index(&pod, 4), Some(3));
        assert_eq!(completion_index(&pod, 3), None, "out of range");
    }
}
