//! The CronJob controller: creates a Job for each scheduled time (standard five-field
//! cron and the `@hourly`-style macros, in `spec.timeZone` or UTC), honours
//! `concurrencyPolicy`, `suspend` and `startingDeadlineSeconds`, keeps
//! `successful/failedJobsHistoryLimit` finished Jobs, and reports active Jobs and
//! `lastScheduleTime`/`lastSuccessfulTime`.

use std::sync::Arc;
use std::time::Duration;

use coxswain_runtime::events::{EventType, Recorder, object_ref};
use croner::Cron;
use croner::parser::{CronParser, Seconds, Year};
use jiff::tz::TimeZone;
use jiff::{SignedDuration, Timestamp, Zoned};
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::Store;
use kube::{Client, ResourceExt};
use serde_json::json;
use tracing::{debug, info};

use super::Error;
use super::common::{
    self, METRICS, api_err, is_controlled_by, key_of, owner_ref, reflect, wait_synced,
};

const COMPONENT: &str = "cronjob-controller";
/// The scheduled time a Job was created for.
pub(crate) const SCHEDULED_TIMESTAMP: &str = "batch.kubernetes.io/cronjob-scheduled-timestamp";
/// More missed start times than this since the last one is reported (upstream's 100).
const TOO_MANY_MISSED: usize = 100;

struct Ctx {
    client: Client,
    metrics: Arc<crate::Metrics>,
    jobs: Store<Job>,
    recorder: Recorder,
}

/// Runs the CronJob controller until aborted.
pub async fn run_cronjob(ctx: crate::Context) -> Result<(), Error> {
    let client = ctx.client.clone();
    let (jobs, job_stream) = reflect(Api::<Job>::all(client.clone()), |_| {});
    let (cronjobs, cj_stream) = reflect(Api::<CronJob>::all(client.clone()), |_| {});
    let ctx = Arc::new(Ctx {
        metrics: ctx.metrics().clone(),
        recorder: Recorder::new(client.clone(), COMPONENT, None),
        client,
        jobs,
    });
    let metrics = ctx.metrics.clone();
    let controller = Controller::for_stream(cj_stream, cronjobs)
        .watches_stream(job_stream, |job: Job| {
            common::owner_refs_of::<CronJob>(&job.metadata)
        });
    crate::reconciler::run(controller, "cronjob", metrics, ctx, reconcile).await;
    Ok(())
}

async fn reconcile(cj: Arc<CronJob>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    let key = key_of(&*cj);
    sync(&cj, &ctx, &key)
    .await
}

/// A parsed schedule in its time zone.
#[derive(Debug)]
pub(crate) struct Schedule {
    cron: Cron,
    tz: TimeZone,
}

impl Schedule {
    /// Parses a standard five-field schedule (or `@hourly` and friends) in `time_zone`
    /// (UTC when unset).
    pub(crate) fn parse(schedule: &str, time_zone: Option<&str>) -> Result<Schedule, String> {
        if schedule.trim_start().starts_with("TZ=") || schedule.trim_start().starts_with("CRON_TZ=")
        {
            return Err(
                "CRON_TZ or TZ in the schedule is not supported; use spec.timeZone".to_owned(),
            );
        }
        let cron = CronParser::builder()
            .seconds(Seconds::Disallowed)
            .year(Year::Disallowed)
            .build()
            .parse(schedule)
            .map_err(|e| format!("unparseable schedule {schedule:?}: {e}"))?;
        let tz = match time_zone {
            None => TimeZone::UTC,
            Some(name) => {
                TimeZone::get(name).map_err(|e| format!("unknown time zone {name:?}: {e}"))?
            }
        };
        Ok(Schedule { cron, tz })
    }

    /// The latest scheduled time in `(after, now]`, and how many there were.
    pub(crate) fn most_recent(
        &self,
        after: Timestamp,
        now: Timestamp,
    ) -> (Option<Timestamp>, usize) {
        let start = after.to_zoned(self.tz.clone());
        let mut latest = None;
        let mut missed = 0;
        for t in self.cron.iter_after(start) {
            let ts = t.timestamp();
            if ts > now {
                break;
            }
            latest = Some(ts);
            missed += 1;
            if missed > TOO_MANY_MISSED {
                // Skip ahead: the most recent one is all that will run.
                let prev = self
                    .cron
                    .find_previous_occurrence(&now.to_zoned(self.tz.clone()), true)
                    .ok()
                    .map(|z: Zoned| z.timestamp());
                return (prev.or(latest), missed);
            }
        }
        (latest, missed)
    }

    /// The first scheduled time after `now`.
    pub(crate) fn next_after(&self, now: Timestamp) -> Option<Timestamp> {
        self.cron
            .find_next_occurrence(&now.to_zoned(self.tz.clone()), false)
            .ok()
            .map(|z: Zoned| z.timestamp())
    }
}

fn finished(job: &Job) -> Option<&'static str> {
    let conds = job.status.as_ref()?.conditions.as_ref()?;
    for c in conds {
        if c.status == "True" {
            if c.type_ == "Complete" {
                return Some("Complete");
            }
            if c.type_ == "Failed" {
                return Some("Failed");
            }
        }
    }
    None
}

fn job_ref(job: &Job) -> k8s_openapi::api::core::v1::ObjectReference {
    object_ref(job)
}

async fn sync(cj: &CronJob, ctx: &Ctx, key: &str) -> Result<Action, Error> {
    wait_synced(&ctx.jobs, "job").await?;
    debug!(cronjob = key, "sync");
    let ns = cj.namespace().unwrap_or_default();
    let uid = cj.metadata.uid.clone().unwrap_or_default();
    let job_api: Api<Job> = Api::namespaced(ctx.client.clone(), &ns);
    let reference = object_ref(cj);
    let now = common::now();
    let mut jobs: Vec<Arc<Job>> = ctx
        .jobs
        .state()
        .into_iter()
        .filter(|j| {
            j.namespace().as_deref() == Some(ns.as_str()) && is_controlled_by(&j.metadata, &uid)
        })
        .collect();
    jobs.sort_by_key(|j| (j.metadata.creation_timestamp.clone(), j.name_any()));
    let old = cj.status.clone().unwrap_or_default();
    let mut status = old.clone();
    let was_active: Vec<String> = old
        .active
        .clone()
        .unwrap_or_default()
        .into_iter()
        .filter_map(|r| r.name)
        .collect();

    // Finished jobs: report them once, remember the last success.
    for job in &jobs {
        let Some(outcome) = finished(job) else {
            continue;
        };
        if was_active.contains(&job.name_any()) {
            ctx.recorder
                .record(
                    &reference,
                    EventType::Normal,
                    "SawCompletedJob",
                    &format!(
                        "Saw completed job: {}, condition: {outcome}",
                        job.name_any()
                    ),
                )
                .await;
        }
        if outcome == "Complete" {
            let done = job.status.as_ref().and_then(|s| s.completion_time.clone());
            if done.as_ref().map(|t| t.0) > status.last_successful_time.as_ref().map(|t| t.0) {
                status.last_successful_time = done;
            }
        }
    }
    let mut active: Vec<Arc<Job>> = jobs
        .iter()
        .filter(|j| finished(j).is_none())
        .cloned()
        .collect();

    // History limits.
    for (outcome, limit) in [
        (
            "Complete",
            cj.spec.successful_jobs_history_limit.unwrap_or(3),
        ),
        ("Failed", cj.spec.failed_jobs_history_limit.unwrap_or(1)),
    ] {
        let done: Vec<&Arc<Job>> = jobs
            .iter()
            .filter(|j| finished(j) == Some(outcome))
            .collect();
        let excess = done
            .len()
            .saturating_sub(usize::try_from(limit.max(0)).unwrap_or(0));
        for job in done.into_iter().take(excess) {
            delete_job(ctx, &job_api, cj, job).await?;
        }
    }

    let mut requeue = None;
    let suspended = cj.spec.suspend.unwrap_or(false);
    if cj.metadata.deletion_timestamp.is_none() && !suspended {
        match Schedule::parse(&cj.spec.schedule, cj.spec.time_zone.as_deref()) {
            Err(message) => {
                ctx.recorder
                    .record(
                        &reference,
                        EventType::Warning,
                        "UnparseableSchedule",
                        &message,
                    )
                    .await;
            }
            Ok(schedule) => {
                let created = cj
                    .metadata
                    .creation_timestamp
                    .as_ref()
                    .map(|t| t.0)
                    .unwrap_or(now);
                let mut earliest = status
                    .last_schedule_time
                    .as_ref()
                    .map(|t| t.0)
                    .unwrap_or(created);
                if let Some(deadline) = cj.spec.starting_deadline_seconds
                    && let Ok(floor) = now.checked_sub(SignedDuration::from_secs(deadline))
                {
                    earliest = earliest.max(floor);
                }
                let (scheduled, missed) = schedule.most_recent(earliest, now);
                if missed > TOO_MANY_MISSED {
                    ctx.recorder
                        .record(
                            &reference,
                            EventType::Warning,
                            "TooManyMissedTimes",
                            "too many missed start times; set or decrease .spec.startingDeadlineSeconds or check clock skew",
                        )
                        .await;
                }
                requeue = schedule
                    .next_after(now)
                    .map(|t| t.duration_since(now).unsigned_abs() + Duration::from_millis(100));
                if let Some(at) = scheduled {
                    start_job(ctx, cj, &job_api, at, &mut active, &mut status).await?;
                }
            }
        }
    }

    status.active = if active.is_empty() {
        None
    } else {
        Some(active.iter().map(|j| job_ref(j)).collect())
    };
    let value = |s: &k8s_openapi::api::batch::v1::CronJobStatus| {
        json!({
            "active": s.active.as_ref().map(|a| a.iter().map(|r| (r.name.clone(), r.uid.clone())).collect::<Vec<_>>()),
            "lastScheduleTime": s.last_schedule_time,
            "lastSuccessfulTime": s.last_successful_time,
        })
    };
    if value(&status) != value(&old) {
        let api: Api<CronJob> = Api::namespaced(ctx.client.clone(), &ns);
        let patch = json!({"status": {
            "active": status.active,
            "lastScheduleTime": status.last_schedule_time,
            "lastSuccessfulTime": status.last_successful_time,
        }});
        match api
            .patch_status(
                &cj.name_any(),
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await
        {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => return Err(api_err("update status of", cj, e)),
        }
    }
    Ok(common::requeue(requeue))
}

/// Starts the Job for the scheduled time `at`, as `concurrencyPolicy` allows.
async fn start_job(
    ctx: &Ctx,
    cj: &CronJob,
    job_api: &Api<Job>,
    at: Timestamp,
    active: &mut Vec<Arc<Job>>,
    status: &mut k8s_openapi::api::batch::v1::CronJobStatus,
) -> Result<(), Error> {
    let reference = object_ref(cj);
    let now = common::now();
    if let Some(deadline) = cj.spec.starting_deadline_seconds
        && at
            .checked_add(SignedDuration::from_secs(deadline))
            .is_ok_and(|late| late < now)
    {
        ctx.recorder
            .record(
                &reference,
                EventType::Warning,
                "MissSchedule",
                &format!("Missed scheduled time to start a job: {at}"),
            )
            .await;
        return Ok(());
    }
    match cj.spec.concurrency_policy.as_deref().unwrap_or("Allow") {
        "Forbid" if !active.is_empty() => {
            debug!(cronjob = %key_of(cj), "prior job still running and concurrencyPolicy is Forbid");
            ctx.recorder
                .record(
                    &reference,
                    EventType::Normal,
                    "JobAlreadyActive",
                    "Not starting job because prior execution is running and concurrency policy is Forbid",
                )
                .await;
            return Ok(());
        }
        "Replace" => {
            for job in active.drain(..) {
                delete_job(ctx, job_api, cj, &job).await?;
            }
        }
        _ => {}
    }
    let name = format!("{}-{}", cj.name_any(), at.as_second() / 60);
    let template = &cj.spec.job_template;
    let tmeta = template.metadata.clone().unwrap_or_default();
    let mut annotations = tmeta.annotations.unwrap_or_default();
    annotations.insert(SCHEDULED_TIMESTAMP.to_owned(), at.to_string());
    let job = Job {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            namespace: cj.namespace(),
            labels: Some(tmeta.labels.unwrap_or_default()),
            annotations: Some(annotations),
            owner_references: Some(vec![owner_ref(cj)]),
            ..ObjectMeta::default()
        },
        spec: template.spec.clone(),
        status: None,
    };
    let created = match job_api.create(&PostParams::default(), &job).await {
        Ok(created) => {
            METRICS.write("cronjob", "create_job");
            info!(cronjob = %key_of(cj), job = %name, scheduled = %at, "created job");
            ctx.recorder
                .record(
                    &reference,
                    EventType::Normal,
                    "SuccessfulCreate",
                    &format!("Created job {name}"),
                )
                .await;
            created
        }
        // Created by an earlier pass whose status write was lost: it stands for this time.
        Err(kube::Error::Api(s)) if s.code == 409 => job_api
            .get(&name)
            .await
            .map_err(|e| api_err("get", &job, e))?,
        Err(e) => {
            ctx.recorder
                .record(
                    &reference,
                    EventType::Warning,
                    "FailedCreate",
                    &format!("Error creating job: {e}"),
                )
                .await;
            return Err(api_err("create", &job, e));
        }
    };
    if !active
        .iter()
        .any(|j| j.metadata.uid == created.metadata.uid)
        && finished(&created).is_none()
    {
        active.push(Arc::new(created));
    }
    status.last_schedule_time = Some(Time(at));
    Ok(())
}

async fn delete_job(ctx: &Ctx, job_api: &Api<Job>, cj: &CronJob, job: &Job) -> Result<(), Error> {
    match job_api
        .delete(&job.name_any(), &DeleteParams::background())
        .await
    {
        Ok(_) => {
            METRICS.write("cronjob", "delete_job");
            ctx.recorder
                .record(
                    &object_ref(cj),
                    EventType::Normal,
                    "SuccessfulDelete",
                    &format!("Deleted job {}", job.name_any()),
                )
                .await;
            Ok(())
        }
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(api_err("delete", job, e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: &str) -> Timestamp {
        s.parse().expect("timestamp")
    }

    #[test]
    fn schedules_find_the_most_recent_and_next_times() {
        let every_minute = Schedule::parse("* * * * *", None).expect("parse");
        let (at, n) =
            every_minute.most_recent(ts("2026-01-01T00:00:30Z"), ts("2026-01-01T00:03:10Z"));
        assert_eq!((at, n), (Some(ts("2026-01-01T00:03:00Z")), 3));
        assert_eq!(
            every_minute.next_after(ts("2026-01-01T00:03:10Z")),
            Some(ts("2026-01-01T00:04:00Z"))
        );
        let hourly = Schedule::parse("@hourly", None).expect("parse");
        let (at, _) = hourly.most_recent(ts("2026-01-01T00:00:30Z"), ts("2026-01-01T00:59:59Z"));
        assert_eq!(at, None);
        let at_nine = Schedule::parse("0 9 * * *", Some("Europe/Paris")).expect("parse");
        assert_eq!(
            at_nine.next_after(ts("2026-01-01T00:00:00Z")),
            Some(ts("2026-01-01T08:00:00Z"))
        );
        assert!(Schedule::parse("61 * * * *", None).is_err());
        assert!(Schedule::parse("* * * * *", Some("Mars/Olympus")).is_err());
    }
}
