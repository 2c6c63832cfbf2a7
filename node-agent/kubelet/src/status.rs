//! The pod status the kubelet reports, computed from the pod spec, what the
//! runtime shows (CRI container statuses), probe results and the reasons a
//! container is waiting. Pure functions: unit-tested without a runtime.

use std::collections::HashMap;

use k8s_cri::v1::{ContainerState, ContainerStatus};
use k8s_openapi::api::core::v1::{Container, Pod};
use serde_json::{Value, json};

use crate::probes::ProbeState;

/// Why a container is not running (shown as `state.waiting`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Waiting {
    /// `ContainerCreating`, `PodInitializing`, `ErrImagePull`, `ImagePullBackOff`,
    /// `CrashLoopBackOff`, `CreateContainerConfigError`, `CreateContainerError`...
    pub reason: String,
    /// Detail.
    pub message: String,
}

/// What is known of one container of the spec.
#[derive(Debug, Clone, Default)]
pub struct ContainerView {
    /// The latest runtime container (highest attempt), if any.
    pub current: Option<ContainerStatus>,
    /// The one before, for `lastState`.
    pub previous: Option<ContainerStatus>,
    /// Probe verdicts for `current`.
    pub probes: Option<ProbeState>,
    /// Why it is waiting, when the kubelet knows better than the runtime.
    pub waiting: Option<Waiting>,
}

/// RFC 3339 (seconds) from CRI nanoseconds.
pub fn rfc3339(ns: i64) -> Value {
    if ns <= 0 {
        return Value::Null;
    }
    jiff::Timestamp::from_nanosecond(ns as i128)
        .map(|t| Value::from(t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()))
        .unwrap_or(Value::Null)
}

/// Whether a runtime container is running.
pub fn is_running(s: &ContainerStatus) -> bool {
    s.state == ContainerState::ContainerRunning as i32
}

/// Whether a runtime container has exited.
pub fn is_exited(s: &ContainerStatus) -> bool {
    s.state == ContainerState::ContainerExited as i32
}

fn terminated(s: &ContainerStatus) -> Value {
    let reason = if s.reason.is_empty() {
        if s.exit_code == 0 { "Completed" } else { "Error" }.to_owned()
    } else {
        s.reason.clone()
    };
    let mut t = json!({
        "exitCode": s.exit_code,
        "reason": reason,
        "startedAt": rfc3339(s.started_at),
        "finishedAt": rfc3339(s.finished_at),
        "containerID": format!("containerd://{}", s.id),
    });
    if !s.message.is_empty() {
        t["message"] = Value::from(s.message.clone());
    }
    json!({"terminated": t})
}

fn container_status(c: &Container, view: &ContainerView, is_init: bool, initializing: bool) -> Value {
    let image = c.image.clone().unwrap_or_default();
    let mut out = json!({
        "name": c.name,
        "image": image,
        "imageID": "",
        "ready": false,
        "started": false,
        "restartCount": 0,
        "state": {"waiting": {"reason": if is_init || initializing { "PodInitializing" } else { "ContainerCreating" }}},
        "lastState": {},
    });
    if let Some(cur) = &view.current {
        out["restartCount"] = json!(cur.metadata.as_ref().map_or(0, |m| m.attempt));
        out["imageID"] = json!(cur.image_ref);
        out["containerID"] = json!(format!("containerd://{}", cur.id));
        if is_running(cur) {
            let probes = view.probes.unwrap_or(ProbeState {
                started: c.startup_probe.is_none(),
                ready: c.startup_probe.is_none() && c.readiness_probe.is_none(),
                unhealthy: false,
            });
            out["state"] = json!({"running": {"startedAt": rfc3339(cur.started_at)}});
            out["started"] = json!(probes.started);
            out["ready"] = json!(!is_init && probes.started && probes.ready);
        } else if is_exited(cur) {
            out["state"] = terminated(cur);
            if is_init && cur.exit_code == 0 {
                out["ready"] = json!(true);
            }
        }
        if let Some(prev) = &view.previous
            && is_exited(prev)
        {
            out["lastState"] = terminated(prev);
        }
    }
    if let Some(w) = &view.waiting {
        if let Some(cur) = &view.current
            && is_exited(cur)
        {
            // A restart pending: the dead container becomes lastState.
            out["lastState"] = terminated(cur);
        }
        let running = view.current.as_ref().is_some_and(is_running);
        if !running {
            out["state"] = json!({"waiting": {"reason": w.reason, "message": w.message}});
        }
    }
    out
}

/// How a pod is doing overall.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Not every container has started yet.
    Pending,
    /// Bound and at least one container running or restarting.
    Running,
    /// Every container exited 0 and none will restart.
    Succeeded,
    /// Every container exited, one of them (or an init container) failed, none will restart.
    Failed,
}

impl Phase {
    /// The API's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Pending => "Pending",
            Phase::Running => "Running",
            Phase::Succeeded => "Succeeded",
            Phase::Failed => "Failed",
        }
    }

    /// Whether nothing of the pod will run again.
    pub fn is_terminal(self) -> bool {
        matches!(self, Phase::Succeeded | Phase::Failed)
    }
}

/// The restart policy of a pod (`Always` by default).
pub fn restart_policy(pod: &Pod) -> &str {
    pod.spec
        .as_ref()
        .and_then(|s| s.restart_policy.as_deref())
        .unwrap_or("Always")
}

/// Whether a container that exited with `code` is to be restarted.
pub fn should_restart(policy: &str, code: i32) -> bool {
    match policy {
        "Never" => false,
        "OnFailure" => code != 0,
        _ => true,
    }
}

/// Whether every init container has succeeded.
pub fn init_done(init: &[ContainerView]) -> bool {
    init.iter()
        .all(|v| v.current.as_ref().is_some_and(|c| is_exited(c) && c.exit_code == 0))
}

/// The phase, as upstream's `getPhase`.
pub fn phase(policy: &str, init: &[ContainerView], main: &[ContainerView]) -> Phase {
    let failed_init = init.iter().any(|v| {
        v.current
            .as_ref()
            .is_some_and(|c| is_exited(c) && c.exit_code != 0)
    });
    if failed_init && policy == "Never" {
        return Phase::Failed;
    }
    if !init_done(init) {
        return Phase::Pending;
    }
    let (mut running, mut waiting, mut stopped, mut succeeded) = (0, 0, 0, 0);
    for v in main {
        match &v.current {
            Some(c) if is_running(c) => running += 1,
            Some(c) if is_exited(c) => {
                if should_restart(policy, c.exit_code) {
                    // Restarting (or in back-off): the pod is still running.
                    running += 1;
                } else {
                    stopped += 1;
                    if c.exit_code == 0 {
                        succeeded += 1;
                    }
                }
            }
            _ => waiting += 1,
        }
    }
    if waiting > 0 {
        return Phase::Pending;
    }
    if running > 0 {
        return Phase::Running;
    }
    if stopped > 0 && succeeded == stopped {
        Phase::Succeeded
    } else {
        Phase::Failed
    }
}

/// Inputs of [`pod_status`] that are not about containers.
#[derive(Debug, Clone)]
pub struct PodFacts<'a> {
    /// The node's IP.
    pub host_ip: &'a str,
    /// The pod's IPs (the first is `podIP`).
    pub pod_ips: &'a [String],
    /// `startTime`, once set.
    pub start_time: Option<&'a str>,
    /// Last transition times of conditions, by type: (status, time).
    pub since: &'a HashMap<String, (bool, String)>,
    /// Now, RFC 3339.
    pub now: &'a str,
}

fn qos_class(pod: &Pod) -> &'static str {
    let containers = pod.spec.iter().flat_map(|s| s.containers.iter());
    let mut any = false;
    let mut guaranteed = true;
    for c in containers {
        let r = c.resources.as_ref();
        let limits = r.and_then(|r| r.limits.clone()).unwrap_or_default();
        let requests = r.and_then(|r| r.requests.clone()).unwrap_or_default();
        any |= !limits.is_empty() || !requests.is_empty();
        for res in ["cpu", "memory"] {
            let l = limits.get(res);
            let q = requests.get(res).or(l);
            if l.is_none() || q != l {
                guaranteed = false;
            }
        }
    }
    match (any, guaranteed) {
        (false, _) => "BestEffort",
        (true, true) => "Guaranteed",
        (true, false) => "Burstable",
    }
}

/// The whole `status` object, plus the conditions' (status) for remembering
/// transition times.
pub fn pod_status(
    pod: &Pod,
    init: &[ContainerView],
    main: &[ContainerView],
    facts: &PodFacts<'_>,
) -> (Value, Vec<(String, bool)>) {
    let spec = pod.spec.as_ref();
    let init_specs: Vec<&Container> = spec.iter().flat_map(|s| s.init_containers.iter().flatten()).collect();
    let main_specs: Vec<&Container> = spec.iter().flat_map(|s| s.containers.iter()).collect();
    let phase = phase(restart_policy(pod), init, main);
    let init_statuses: Vec<Value> = init_specs
        .iter()
        .zip(init)
        .map(|(c, v)| container_status(c, v, true, true))
        .collect();
    let initialized = init_done(init);
    let statuses: Vec<Value> = main_specs
        .iter()
        .zip(main)
        .map(|(c, v)| container_status(c, v, false, !initialized))
        .collect();
    let containers_ready = !statuses.is_empty() && statuses.iter().all(|s| s["ready"] == true);
    let not_ready_names: Vec<&str> = statuses
        .iter()
        .filter(|s| s["ready"] != true)
        .filter_map(|s| s["name"].as_str())
        .collect();
    let pending_init: Vec<&str> = init_statuses
        .iter()
        .filter(|s| s["state"]["terminated"]["exitCode"] != 0)
        .filter_map(|s| s["name"].as_str())
        .collect();
    let mut conds: Vec<(String, bool, Option<String>, Option<String>)> = vec![
        ("PodScheduled".into(), true, None, None),
        (
            "Initialized".into(),
            initialized,
            (!initialized).then(|| "ContainersNotInitialized".into()),
            (!initialized).then(|| format!("containers with incomplete status: [{}]", pending_init.join(" "))),
        ),
        (
            "ContainersReady".into(),
            containers_ready,
            (!containers_ready).then(|| "ContainersNotReady".into()),
            (!containers_ready).then(|| format!("containers with unready status: [{}]", not_ready_names.join(" "))),
        ),
        (
            "Ready".into(),
            containers_ready,
            (!containers_ready).then(|| "ContainersNotReady".into()),
            (!containers_ready).then(|| format!("containers with unready status: [{}]", not_ready_names.join(" "))),
        ),
    ];
    if phase.is_terminal() {
        for c in conds.iter_mut().filter(|c| c.0 == "Ready" || c.0 == "ContainersReady") {
            c.1 = false;
            c.2 = Some("PodCompleted".into());
            c.3 = None;
        }
    }
    // The API server sets PodScheduled=True as it binds the pod: that condition, with its
    // transition time, is the API's, and the kubelet repeats it as it is (so the two never
    // disagree). Pods placed by `spec.nodeName` alone get the kubelet's own.
    let api_scheduled = pod
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.type_ == "PodScheduled" && c.status == "True"))
        .and_then(|c| c.last_transition_time.as_ref())
        .map(|t| t.0.strftime("%Y-%m-%dT%H:%M:%SZ").to_string());
    let conditions: Vec<Value> = conds
        .iter()
        .map(|(ty, ok, reason, message)| {
            let time = match (ty.as_str(), &api_scheduled, facts.since.get(ty)) {
                ("PodScheduled", Some(t), _) => t.clone(),
                (_, _, Some((was, t))) if was == ok => t.clone(),
                _ => facts.now.to_owned(),
            };
            let mut c = json!({
                "type": ty,
                "status": if *ok { "True" } else { "False" },
                "lastProbeTime": null,
                "lastTransitionTime": time,
            });
            if let Some(r) = reason {
                c["reason"] = json!(r);
            }
            if let Some(m) = message {
                c["message"] = json!(m);
            }
            c
        })
        .collect();
    let status = json!({
        "phase": phase.as_str(),
        "conditions": conditions,
        "hostIP": facts.host_ip,
        "hostIPs": [{"ip": facts.host_ip}],
        "podIP": facts.pod_ips.first().cloned().map_or(Value::Null, Value::from),
        "podIPs": if facts.pod_ips.is_empty() { Value::Null } else {
            Value::from(facts.pod_ips.iter().map(|ip| json!({"ip": ip})).collect::<Vec<_>>())
        },
        "startTime": facts.start_time.map_or(Value::Null, Value::from),
        "initContainerStatuses": if init_statuses.is_empty() { Value::Null } else { Value::from(init_statuses) },
        "containerStatuses": statuses,
        "qosClass": qos_class(pod),
        "reason": null,
        "message": null,
    });
    (status, conds.into_iter().map(|(t, ok, _, _)| (t, ok)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_cri::v1::ContainerMetadata;

    fn cs(state: ContainerState, code: i32, attempt: u32) -> ContainerStatus {
        ContainerStatus {
            id: format!("id{attempt}"),
            metadata: Some(ContainerMetadata { name: "c".into(), attempt }),
            state: state as i32,
            exit_code: code,
            started_at: 1_700_000_000_000_000_000,
            finished_at: 1_700_000_010_000_000_000,
            ..Default::default()
        }
    }

    fn view(s: Option<ContainerStatus>) -> ContainerView {
        ContainerView { current: s, ..Default::default() }
    }

    #[test]
    fn phase_table() {
        use ContainerState::*;
        let run = || view(Some(cs(ContainerRunning, 0, 0)));
        let ok = || view(Some(cs(ContainerExited, 0, 0)));
        let bad = || view(Some(cs(ContainerExited, 1, 0)));
        let none = || view(None);
        let cases: Vec<(&str, Vec<ContainerView>, Vec<ContainerView>, Phase)> = vec![
            ("Always", vec![], vec![none()], Phase::Pending),
            ("Always", vec![], vec![run(), none()], Phase::Pending),
            ("Always", vec![], vec![run()], Phase::Running),
            ("Always", vec![], vec![ok()], Phase::Running),
            ("Never", vec![], vec![ok()], Phase::Succeeded),
            ("Never", vec![], vec![ok(), bad()], Phase::Failed),
            ("Never", vec![], vec![run(), bad()], Phase::Running),
            ("OnFailure", vec![], vec![ok()], Phase::Succeeded),
            ("OnFailure", vec![], vec![bad()], Phase::Running),
            ("Always", vec![run()], vec![none()], Phase::Pending),
            ("Always", vec![ok()], vec![run()], Phase::Running),
            ("Never", vec![bad()], vec![none()], Phase::Failed),
            ("OnFailure", vec![bad()], vec![none()], Phase::Pending),
        ];
        for (i, (policy, init, main, want)) in cases.into_iter().enumerate() {
            assert_eq!(phase(policy, &init, &main), want, "case {i}: {policy}");
        }
    }

    #[test]
    fn crash_loop_shows_waiting_and_last_state() {
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": "p"},
            "spec": {"containers": [{"name": "c", "image": "i"}]},
        }))
        .unwrap();
        let v = ContainerView {
            current: Some(cs(ContainerState::ContainerExited, 3, 2)),
            waiting: Some(Waiting { reason: "CrashLoopBackOff".into(), message: "back-off 20s".into() }),
            ..Default::default()
        };
        let since = HashMap::new();
        let facts = PodFacts { host_ip: "10.0.0.1", pod_ips: &["10.244.0.2".into()], start_time: None, since: &since, now: "2026-01-01T00:00:00Z" };
        let (status, _) = pod_status(&pod, &[], &[v], &facts);
        let c = &status["containerStatuses"][0];
        assert_eq!(c["state"]["waiting"]["reason"], "CrashLoopBackOff");
        assert_eq!(c["lastState"]["terminated"]["exitCode"], 3);
        assert_eq!(c["lastState"]["terminated"]["reason"], "Error");
        assert_eq!(c["restartCount"], 2);
        assert_eq!(status["phase"], "Running");
        assert_eq!(status["podIP"], "10.244.0.2");
        assert_eq!(status["conditions"][3]["status"], "False");
    }

    #[test]
    fn pod_scheduled_is_kept_as_the_api_server_set_it() {
        let mut pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": "p"},
            "spec": {"nodeName": "n1", "containers": [{"name": "c", "image": "i"}]},
            "status": {"conditions": [
                {"type": "PodScheduled", "status": "True", "lastTransitionTime": "2026-01-01T00:00:05Z"},
            ]},
        }))
        .unwrap();
        // The kubelet remembers a different time (it first saw the pod later).
        let since = HashMap::from([("PodScheduled".to_owned(), (true, "2026-01-01T00:00:09Z".to_owned()))]);
        let facts = PodFacts { host_ip: "h", pod_ips: &[], start_time: None, since: &since, now: "2026-01-01T00:01:00Z" };
        let (status, _) = pod_status(&pod, &[], &[view(None)], &facts);
        let c = &status["conditions"][0];
        assert_eq!((c["type"].as_str(), c["status"].as_str()), (Some("PodScheduled"), Some("True")));
        assert_eq!(c["lastTransitionTime"], "2026-01-01T00:00:05Z", "the API's time, not the kubelet's");
        // A pod placed by spec.nodeName alone (no binding, no condition): the kubelet's.
        pod.status = None;
        let (status, _) = pod_status(&pod, &[], &[view(None)], &facts);
        assert_eq!(status["conditions"][0]["lastTransitionTime"], "2026-01-01T00:00:09Z");
    }

    #[test]
    fn readiness_follows_probes() {
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": "p"},
            "spec": {"containers": [{"name": "c", "image": "i", "readinessProbe": {"tcpSocket": {"port": 80}}}]},
        }))
        .unwrap();
        let since = HashMap::new();
        let facts = PodFacts { host_ip: "h", pod_ips: &[], start_time: None, since: &since, now: "t" };
        for (ready, want) in [(false, "False"), (true, "True")] {
            let v = ContainerView {
                current: Some(cs(ContainerState::ContainerRunning, 0, 0)),
                probes: Some(ProbeState { started: true, ready, unhealthy: false }),
                ..Default::default()
            };
            let (status, _) = pod_status(&pod, &[], &[v], &facts);
            assert_eq!(status["conditions"][3]["type"], "Ready");
            assert_eq!(status["conditions"][3]["status"], want);
        }
    }
}
