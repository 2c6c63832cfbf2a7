//! Pod and pod template defaults (restart and DNS policy, grace period, container fields).

use serde_json::{Value, json};

use super::{child, set_default};

/// Pods: spec defaults plus the initial status (phase Pending, QoS class).
pub(crate) fn pod(obj: &mut Value) {
    pod_spec(child(obj, "spec"));
    let qos = qos_class(&obj["spec"]);
    let status = child(obj, "status");
    set_default(status, "phase", json!("Pending"));
    set_default(status, "qosClass", json!(qos));
}

/// The defaults of a pod spec, also applied to the templates of workloads.
pub(crate) fn pod_spec(spec: &mut Value) {
    set_default(spec, "restartPolicy", json!("Always"));
    set_default(spec, "dnsPolicy", json!("ClusterFirst"));
    set_default(spec, "terminationGracePeriodSeconds", json!(30));
    set_default(spec, "schedulerName", json!("default-scheduler"));
    set_default(spec, "securityContext", json!({}));
    set_default(spec, "enableServiceLinks", json!(true));
    // `serviceAccount` is the deprecated twin of `serviceAccountName` (upstream's conversion
    // fills each from the other); the ServiceAccount admission plugin sets `default`.
    let named = |s: &Value, f: &str| s.get(f).and_then(Value::as_str).filter(|v| !v.is_empty()).map(str::to_owned);
    if let Some(name) = named(spec, "serviceAccountName").or_else(|| named(spec, "serviceAccount")) {
        spec["serviceAccountName"] = json!(name);
        spec["serviceAccount"] = json!(name);
    }
    for list in ["containers", "initContainers"] {
        if let Some(containers) = spec.get_mut(list).and_then(Value::as_array_mut) {
            for c in containers {
                container(c);
            }
        }
    }
}

fn container(c: &mut Value) {
    let image = c.get("image").and_then(Value::as_str).unwrap_or("");
    set_default(c, "imagePullPolicy", json!(pull_policy(image)));
    set_default(c, "terminationMessagePath", json!("/dev/termination-log"));
    set_default(c, "terminationMessagePolicy", json!("File"));
    set_default(c, "resources", json!({}));
    if let Some(ports) = c.get_mut("ports").and_then(Value::as_array_mut) {
        for p in ports {
            set_default(p, "protocol", json!("TCP"));
        }
    }
}

/// `Always` for `:latest` or untagged images, `IfNotPresent` otherwise (digests included).
fn pull_policy(image: &str) -> &'static str {
    if image.contains('@') {
        return "IfNotPresent";
    }
    let last = image.rsplit('/').next().unwrap_or(image);
    match last.split_once(':') {
        Some((_, "latest")) | None => "Always",
        Some(_) => "IfNotPresent",
    }
}

/// A new pod's containers get their limits as the requests they do not state (pods only,
/// not templates, as upstream's `SetDefaults_Pod`). Applied when a pod is created (by
/// admission, before LimitRanger) rather than with the other defaults: those also run on
/// every update, where they would change the containers of pods stored without it.
/// Returns whether it set any.
pub(crate) fn pod_requests_from_limits(obj: &mut Value) -> bool {
    let mut set = false;
    for list in ["containers", "initContainers"] {
        if let Some(containers) = obj
            .get_mut("spec")
            .and_then(|s| s.get_mut(list))
            .and_then(Value::as_array_mut)
        {
            for c in containers {
                set |= requests_from_limits(c);
            }
        }
    }
    set
}

/// A container's limits stand in for the requests it does not state; whether any did.
fn requests_from_limits(c: &mut Value) -> bool {
    let Some(limits) = c.pointer("/resources/limits").and_then(Value::as_object).cloned() else {
        return false;
    };
    let requests = child(child(c, "resources"), "requests");
    let mut set = false;
    for (name, q) in limits {
        if requests.get(&name).is_none_or(Value::is_null) {
            requests[name.as_str()] = q;
            set = true;
        }
    }
    set
}

/// The QoS class of a pod spec, as upstream computes it (`coxswain_resources::pod`).
pub(crate) fn qos_class(spec: &Value) -> &'static str {
    serde_json::from_value::<k8s_openapi::api::core::v1::PodSpec>(spec.clone())
        .map(|s| coxswain_resources::pod::qos_class(&s))
        .unwrap_or("BestEffort")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_pull_policy_follows_the_tag() {
        let table = [
            ("nginx", "Always"),
            ("nginx:latest", "Always"),
            ("nginx:1.25", "IfNotPresent"),
            ("registry:5000/nginx", "Always"),
            ("registry:5000/nginx:1", "IfNotPresent"),
            ("nginx@sha256:abc", "IfNotPresent"),
        ];
        for (image, want) in table {
            assert_eq!(pull_policy(image), want, "{image}");
        }
    }

    #[test]
    fn pod_defaults() {
        let mut p = json!({"spec": {"containers": [{"name": "c", "image": "busybox:1", "ports": [{"containerPort": 80}]}]}});
        pod(&mut p);
        assert_eq!(p["spec"]["restartPolicy"], "Always");
        assert_eq!(p["spec"]["terminationGracePeriodSeconds"], 30);
        assert_eq!(
            p["spec"]["containers"][0]["imagePullPolicy"],
            "IfNotPresent"
        );
        assert_eq!(p["spec"]["containers"][0]["ports"][0]["protocol"], "TCP");
        assert_eq!(p["status"]["phase"], "Pending");
        assert_eq!(p["status"]["qosClass"], "BestEffort");
        assert!(p["spec"].get("serviceAccountName").is_none(), "admission names the account, not defaults");
        let mut old = json!({"spec": {"serviceAccount": "robot", "containers": []}});
        pod(&mut old);
        assert_eq!(old["spec"]["serviceAccountName"], "robot");
        assert_eq!(old["spec"]["serviceAccount"], "robot");
    }

    #[test]
    fn requests_default_to_limits() {
        let mut p = json!({"spec": {"containers": [{"name": "c", "image": "i", "resources": {"limits": {"cpu": "1"}, "requests": {"memory": "1Gi"}}}]}});
        pod_requests_from_limits(&mut p);
        pod(&mut p);
        let r = &p["spec"]["containers"][0]["resources"];
        assert_eq!(r["requests"], json!({"cpu": "1", "memory": "1Gi"}));
        assert_eq!(p["status"]["qosClass"], "Burstable");
    }

    #[test]
    fn qos_classes() {
        // Limits alone make a pod Guaranteed once its requests default to them.
        let mut g = json!({"spec": {"containers": [{"name": "c", "image": "i", "resources": {"limits": {"cpu": "1", "memory": "1Gi"}}}]}});
        pod_requests_from_limits(&mut g);
        pod(&mut g);
        assert_eq!(g["status"]["qosClass"], "Guaranteed");
        let b = json!({"containers": [{"name": "c", "resources": {"requests": {"cpu": "1"}}}]});
        assert_eq!(qos_class(&b), "Burstable");
    }
}
