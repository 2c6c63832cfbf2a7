//! Defaults of the workload kinds (apps/v1, batch/v1), including their pod templates.

use serde_json::{Value, json};

use super::{child, pod_spec, set_default};

fn template(spec: &mut Value) {
    let template = child(spec, "template");
    pod_spec(child(template, "spec"));
}

/// Deployments: replicas, rolling update strategy, history and progress deadline.
pub(crate) fn deployment(obj: &mut Value) {
    let spec = child(obj, "spec");
    set_default(spec, "replicas", json!(1));
    set_default(
        spec,
        "strategy",
        json!({"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": "25%", "maxSurge": "25%"}}),
    );
    let strategy = child(spec, "strategy");
    set_default(strategy, "type", json!("RollingUpdate"));
    if strategy["type"] == "RollingUpdate" {
        let ru = child(strategy, "rollingUpdate");
        set_default(ru, "maxUnavailable", json!("25%"));
        set_default(ru, "maxSurge", json!("25%"));
    }
    set_default(spec, "revisionHistoryLimit", json!(10));
    set_default(spec, "progressDeadlineSeconds", json!(600));
    template(spec);
}

/// ReplicaSets: replicas.
pub(crate) fn replica_set(obj: &mut Value) {
    let spec = child(obj, "spec");
    set_default(spec, "replicas", json!(1));
    template(spec);
}

/// DaemonSets: rolling update strategy and history.
pub(crate) fn daemon_set(obj: &mut Value) {
    let spec = child(obj, "spec");
    set_default(
        spec,
        "updateStrategy",
        json!({"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1, "maxSurge": 0}}),
    );
    set_default(spec, "revisionHistoryLimit", json!(10));
    template(spec);
}

/// StatefulSets: replicas, pod management and update policies, history.
pub(crate) fn stateful_set(obj: &mut Value) {
    let spec = child(obj, "spec");
    set_default(spec, "replicas", json!(1));
    set_default(spec, "podManagementPolicy", json!("OrderedReady"));
    set_default(
        spec,
        "updateStrategy",
        json!({"type": "RollingUpdate", "rollingUpdate": {"partition": 0}}),
    );
    set_default(spec, "revisionHistoryLimit", json!(10));
    set_default(
        spec,
        "persistentVolumeClaimRetentionPolicy",
        json!({"whenDeleted": "Retain", "whenScaled": "Retain"}),
    );
    template(spec);
}

/// Jobs: parallelism, completions, backoff, and the generated selector on the job's uid.
pub(crate) fn job(obj: &mut Value) {
    let uid = crate::object::meta_str(obj, "uid").to_owned();
    let name = crate::object::name(obj).to_owned();
    let spec = child(obj, "spec");
    set_default(spec, "parallelism", json!(1));
    if spec.get("completions").is_none() && spec["parallelism"] == 1 {
        spec["completions"] = json!(1);
    }
    set_default(spec, "backoffLimit", json!(6));
    set_default(spec, "completionMode", json!("NonIndexed"));
    set_default(spec, "suspend", json!(false));
    let manual = spec.get("manualSelector").and_then(Value::as_bool) == Some(true);
    if !manual && spec.get("selector").is_none() && !uid.is_empty() {
        spec["selector"] = json!({"matchLabels": {"batch.kubernetes.io/controller-uid": uid}});
        let template = child(spec, "template");
        let meta = child(template, "metadata");
        let labels = child(meta, "labels");
        labels["batch.kubernetes.io/controller-uid"] = json!(uid);
        labels["controller-uid"] = json!(uid);
        labels["batch.kubernetes.io/job-name"] = json!(name);
        labels["job-name"] = json!(name);
    }
    template(spec);
}

/// CronJobs: concurrency policy and history limits.
pub(crate) fn cron_job(obj: &mut Value) {
    let spec = child(obj, "spec");
    set_default(spec, "concurrencyPolicy", json!("Allow"));
    set_default(spec, "suspend", json!(false));
    set_default(spec, "successfulJobsHistoryLimit", json!(3));
    set_default(spec, "failedJobsHistoryLimit", json!(1));
    let job_template = child(spec, "jobTemplate");
    let job_spec = child(job_template, "spec");
    template(job_spec);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deployment_defaults() {
        let mut d =
            json!({"spec": {"template": {"spec": {"containers": [{"name": "c", "image": "x"}]}}}});
        deployment(&mut d);
        assert_eq!(d["spec"]["replicas"], 1);
        assert_eq!(d["spec"]["strategy"]["rollingUpdate"]["maxSurge"], "25%");
        assert_eq!(d["spec"]["revisionHistoryLimit"], 10);
        assert_eq!(d["spec"]["progressDeadlineSeconds"], 600);
        assert_eq!(d["spec"]["template"]["spec"]["dnsPolicy"], "ClusterFirst");
        let mut r = json!({"spec": {"strategy": {"type": "Recreate"}}});
        deployment(&mut r);
        assert!(r["spec"]["strategy"].get("rollingUpdate").is_none());
    }
}
