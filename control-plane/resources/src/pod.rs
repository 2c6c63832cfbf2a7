//! What a pod asks for, computed as upstream's `resourcehelper` and `qos` packages do:
//! requests and limits summed over containers (restartable init containers alongside them,
//! the largest regular init container if it is larger), pod-level resources, overhead; the
//! QoS class; and the lifecycle facts quota looks at.

use k8s_openapi::api::core::v1::{Container, Pod, PodSpec};
use k8s_openapi::jiff::Timestamp;

use crate::quantity::{self, Quantity, ResourceList};

/// Which half of `resources` to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// `resources.requests`.
    Requests,
    /// `resources.limits`.
    Limits,
}

/// Resources that may be set at the pod level (`spec.resources`).
const POD_LEVEL_RESOURCES: [&str; 2] = ["cpu", "memory"];
/// Resources the QoS class looks at.
const QOS_RESOURCES: [&str; 2] = ["cpu", "memory"];

/// One container's requests or limits.
pub fn container_resources(c: &Container, side: Side) -> ResourceList {
    c.resources
        .as_ref()
        .and_then(|r| match side {
            Side::Requests => r.requests.as_ref(),
            Side::Limits => r.limits.as_ref(),
        })
        .map(quantity::from_api)
        .unwrap_or_default()
}

fn add_into(list: &mut ResourceList, other: &ResourceList) {
    for (k, v) in other {
        list.entry(k.clone()).or_insert_with(Quantity::zero).add(v);
    }
}

fn max_into(list: &mut ResourceList, other: &ResourceList) {
    for (k, v) in other {
        match list.get(k) {
            Some(existing) if existing >= v => {}
            _ => {
                list.insert(k.clone(), *v);
            }
        }
    }
}

/// What a pod spec requests (or is limited to) in total, as upstream's `PodRequests` and
/// `PodLimits`: containers plus restartable (sidecar) init containers, or the largest regular
/// init container (with the sidecars started before it) if larger; pod-level `cpu` and
/// `memory` replace the sum; `overhead` (the RuntimeClass's) is added when asked for (to
/// limits only where a limit exists).
pub fn pod_resources(spec: &PodSpec, side: Side, with_overhead: bool) -> ResourceList {
    let mut total = ResourceList::new();
    for c in &spec.containers {
        add_into(&mut total, &container_resources(c, side));
    }
    let mut sidecars = ResourceList::new();
    let mut init_max = ResourceList::new();
    for c in spec.init_containers.iter().flatten() {
        let own = container_resources(c, side);
        let running = if c.restart_policy.as_deref() == Some("Always") {
            add_into(&mut total, &own);
            add_into(&mut sidecars, &own);
            sidecars.clone()
        } else {
            let mut with_sidecars = own;
            add_into(&mut with_sidecars, &sidecars);
            with_sidecars
        };
        max_into(&mut init_max, &running);
    }
    max_into(&mut total, &init_max);
    let pod_level = spec
        .resources
        .as_ref()
        .and_then(|r| match side {
            Side::Requests => r.requests.as_ref(),
            Side::Limits => r.limits.as_ref(),
        })
        .map(quantity::from_api)
        .unwrap_or_default();
    for (name, q) in pod_level {
        if POD_LEVEL_RESOURCES.contains(&name.as_str()) {
            total.insert(name, q);
        }
    }
    if with_overhead && let Some(overhead) = &spec.overhead {
        for (name, q) in quantity::from_api(overhead) {
            match side {
                Side::Requests => total.entry(name).or_insert_with(Quantity::zero).add(&q),
                // Overhead raises only the limits that exist.
                Side::Limits => {
                    if let Some(limit) = total.get_mut(&name) {
                        limit.add(&q);
                    }
                }
            }
        }
    }
    total
}

/// The pod's requests (overhead included), as quota counts them.
pub fn requests(pod: &Pod) -> ResourceList {
    pod.spec
        .as_ref()
        .map(|s| pod_resources(s, Side::Requests, true))
        .unwrap_or_default()
}

/// The pod's limits (overhead included), as quota counts them.
pub fn limits(pod: &Pod) -> ResourceList {
    pod.spec
        .as_ref()
        .map(|s| pod_resources(s, Side::Limits, true))
        .unwrap_or_default()
}

/// The positive cpu and memory amounts of `list`, added into `into`; returns their names.
fn qos_amounts(into: &mut ResourceList, list: &ResourceList) -> Vec<String> {
    let mut found = Vec::new();
    for (name, q) in list {
        if QOS_RESOURCES.contains(&name.as_str()) && q.nano_value() > 0 {
            into.entry(name.clone()).or_insert_with(Quantity::zero).add(q);
            found.push(name.clone());
        }
    }
    found
}

/// The QoS class of a pod spec, as upstream's `ComputePodQOS`: `BestEffort` without any cpu
/// or memory request or limit; `Guaranteed` when every container (init containers included)
/// limits both cpu and memory and the summed requests equal the summed limits; `Burstable`
/// otherwise. Pod-level resources, when set, decide alone.
pub fn qos_class(spec: &PodSpec) -> &'static str {
    let mut requests = ResourceList::new();
    let mut limits = ResourceList::new();
    let mut guaranteed = true;
    let has_all = |found: &[String]| QOS_RESOURCES.iter().all(|r| found.iter().any(|f| f == r));
    if let Some(pod_level) = &spec.resources {
        if let Some(r) = &pod_level.requests {
            qos_amounts(&mut requests, &quantity::from_api(r));
        }
        match pod_level.limits.as_ref().filter(|l| !l.is_empty()) {
            Some(l) => {
                if !has_all(&qos_amounts(&mut limits, &quantity::from_api(l))) {
                    guaranteed = false;
                }
            }
            None => guaranteed = false,
        }
    } else {
        for c in spec.containers.iter().chain(spec.init_containers.iter().flatten()) {
            qos_amounts(&mut requests, &container_resources(c, Side::Requests));
            if !has_all(&qos_amounts(&mut limits, &container_resources(c, Side::Limits))) {
                guaranteed = false;
            }
        }
    }
    if requests.is_empty() && limits.is_empty() {
        return "BestEffort";
    }
    if guaranteed && requests.iter().any(|(name, req)| limits.get(name) != Some(req)) {
        guaranteed = false;
    }
    if guaranteed && requests.len() == limits.len() {
        "Guaranteed"
    } else {
        "Burstable"
    }
}

/// The pod's QoS class: `status.qosClass` once the API server set it, else computed.
pub fn pod_qos(pod: &Pod) -> &str {
    match pod.status.as_ref().and_then(|s| s.qos_class.as_deref()) {
        Some(q) if !q.is_empty() => q,
        _ => pod.spec.as_ref().map(qos_class).unwrap_or("BestEffort"),
    }
}

/// Whether the pod finished (`Succeeded` or `Failed`).
pub fn is_terminal(pod: &Pod) -> bool {
    matches!(
        pod.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded" | "Failed")
    )
}

/// Whether quota still charges the pod's compute resources at `now` (upstream's
/// `QuotaV1Pod`): not once it finished, nor once it is being deleted and its grace period
/// has run out.
pub fn charged_for_compute(pod: &Pod, now: Timestamp) -> bool {
    if is_terminal(pod) {
        return false;
    }
    if let (Some(deleted), Some(grace)) = (
        &pod.metadata.deletion_timestamp,
        pod.metadata.deletion_grace_period_seconds,
    ) && now.as_second() > deleted.0.as_second().saturating_add(grace)
    {
        return false;
    }
    true
}

/// Whether the pod has an active deadline (the `Terminating` quota scope).
pub fn has_active_deadline(pod: &Pod) -> bool {
    pod.spec
        .as_ref()
        .and_then(|s| s.active_deadline_seconds)
        .is_some_and(|d| d >= 0)
}

/// Whether a pod (anti-)affinity term reaches into other namespaces (the
/// `CrossNamespacePodAffinity` quota scope).
pub fn uses_cross_namespace_affinity(pod: &Pod) -> bool {
    let Some(affinity) = pod.spec.as_ref().and_then(|s| s.affinity.as_ref()) else {
        return false;
    };
    let crosses = |t: &k8s_openapi::api::core::v1::PodAffinityTerm| {
        t.namespace_selector.is_some() || t.namespaces.as_ref().is_some_and(|n| !n.is_empty())
    };
    let affinity_terms = affinity.pod_affinity.iter().flat_map(|a| {
        a.required_during_scheduling_ignored_during_execution
            .iter()
            .flatten()
            .chain(
                a.preferred_during_scheduling_ignored_during_execution
                    .iter()
                    .flatten()
                    .map(|w| &w.pod_affinity_term),
            )
    });
    let anti_terms = affinity.pod_anti_affinity.iter().flat_map(|a| {
        a.required_during_scheduling_ignored_during_execution
            .iter()
            .flatten()
            .chain(
                a.preferred_during_scheduling_ignored_during_execution
                    .iter()
                    .flatten()
                    .map(|w| &w.pod_affinity_term),
            )
    });
    affinity_terms.chain(anti_terms).any(crosses)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(v: serde_json::Value) -> Pod {
        serde_json::from_value(v).expect("a pod")
    }

    fn printed(list: &ResourceList) -> String {
        quantity::pretty_print(list)
    }

    #[test]
    fn requests_and_limits_follow_resourcehelper() {
        let p = pod(json!({"spec": {
            "containers": [
                {"name": "a", "resources": {"requests": {"cpu": "200m", "memory": "100Mi"}, "limits": {"cpu": "1"}}},
                {"name": "b", "resources": {"requests": {"cpu": "300m"}}},
            ],
            "initContainers": [
                {"name": "setup", "resources": {"requests": {"cpu": "1", "memory": "50Mi"}}},
                {"name": "proxy", "restartPolicy": "Always", "resources": {"requests": {"cpu": "100m", "memory": "10Mi"}}},
                {"name": "late", "resources": {"requests": {"memory": "200Mi"}}},
            ],
            "overhead": {"cpu": "10m", "memory": "1Mi"},
        }}));
        // cpu: max(0.5 + 0.1 sidecar, setup 1) + 10m overhead; memory: max(110Mi, late 200Mi
        // + 10Mi) + 1Mi.
        assert_eq!(printed(&requests(&p)), "cpu=1010m,memory=211Mi");
        assert_eq!(printed(&limits(&p)), "cpu=1010m", "no memory limit to raise");
        let spec = p.spec.as_ref().unwrap();
        assert_eq!(printed(&pod_resources(spec, Side::Requests, false)), "cpu=1,memory=210Mi");
    }

    #[test]
    fn pod_level_resources_replace_the_sum() {
        let p = pod(json!({"spec": {
            "resources": {"requests": {"cpu": "2"}, "limits": {"cpu": "4", "memory": "1Gi"}},
            "containers": [{"name": "a", "resources": {"requests": {"cpu": "1", "memory": "64Mi"}}}],
        }}));
        assert_eq!(printed(&requests(&p)), "cpu=2,memory=64Mi");
        assert_eq!(printed(&limits(&p)), "cpu=4,memory=1Gi");
    }

    #[test]
    fn qos_classes_as_upstream() {
        let class = |spec: serde_json::Value| qos_class(&serde_json::from_value(spec).unwrap());
        assert_eq!(class(json!({"containers": [{"name": "a"}]})), "BestEffort");
        assert_eq!(
            class(json!({"containers": [{"name": "a", "resources": {"limits": {"cpu": "1", "memory": "1Gi"}, "requests": {"cpu": "1000m", "memory": "1Gi"}}}]})),
            "Guaranteed"
        );
        assert_eq!(
            class(json!({"containers": [{"name": "a", "resources": {"limits": {"cpu": "1", "memory": "1Gi"}, "requests": {"cpu": "500m", "memory": "1Gi"}}}]})),
            "Burstable"
        );
        assert_eq!(
            class(json!({"containers": [{"name": "a", "resources": {"limits": {"cpu": "1", "memory": "1Gi"}, "requests": {"cpu": "1", "memory": "1Gi"}}}], "initContainers": [{"name": "i"}]})),
            "Burstable",
            "an init container without limits is not guaranteed"
        );
        assert_eq!(
            class(json!({"containers": [{"name": "a", "resources": {"requests": {"nvidia.com/gpu": "1"}}}]})),
            "BestEffort",
            "only cpu and memory count"
        );
    }

    #[test]
    fn lifecycle_facts() {
        let now = Timestamp::from_second(1_000_000).unwrap();
        let running = pod(json!({"spec": {"containers": [], "activeDeadlineSeconds": 30}, "status": {"phase": "Running"}}));
        assert!(charged_for_compute(&running, now));
        assert!(has_active_deadline(&running));
        let done = pod(json!({"status": {"phase": "Succeeded"}}));
        assert!(!charged_for_compute(&done, now));
        let deleting = |since: i64| {
            pod(json!({"metadata": {
                "deletionTimestamp": Timestamp::from_second(1_000_000 - since).unwrap().to_string(),
                "deletionGracePeriodSeconds": 30,
            }}))
        };
        assert!(charged_for_compute(&deleting(10), now), "within its grace period");
        assert!(!charged_for_compute(&deleting(31), now), "past its grace period");
        let cross = pod(json!({"spec": {"containers": [], "affinity": {"podAntiAffinity": {
            "preferredDuringSchedulingIgnoredDuringExecution": [{"weight": 1, "podAffinityTerm": {"topologyKey": "k", "namespaces": ["other"]}}]
        }}}}));
        assert!(uses_cross_namespace_affinity(&cross));
        assert!(!uses_cross_namespace_affinity(&running));
    }
}
