//! Defaulting: the fields upstream fills in when a client leaves them out, where users see them.
//!
//! Each function takes a whole object (JSON) and only sets fields that are absent, so running
//! it again (on update) changes nothing the client chose.

mod pod;
mod quota;
mod workloads;

use serde_json::{Map, Value, json};

pub(crate) use pod::{pod, pod_requests_from_limits, pod_spec};
pub(crate) use quota::{limit_range, resource_quota};
pub(crate) use workloads::{cron_job, daemon_set, deployment, job, replica_set, stateful_set};

/// No defaults.
pub(crate) fn none(_: &mut Value) {}

/// Returns the object at `key` of `parent`, created empty if absent or not an object.
pub(crate) fn child<'a>(parent: &'a mut Value, key: &str) -> &'a mut Value {
    if !parent.get(key).is_some_and(Value::is_object) {
        parent[key] = Value::Object(Map::new());
    }
    &mut parent[key]
}

/// Sets `obj[key] = value` unless the key is present (and not null).
pub(crate) fn set_default(obj: &mut Value, key: &str, value: Value) {
    if obj.is_object() && obj.get(key).is_none_or(Value::is_null) {
        obj[key] = value;
    }
}

/// Namespaces: the `kubernetes` finalizer, phase Active, the name label.
pub(crate) fn namespace(obj: &mut Value) {
    let name = crate::object::name(obj).to_owned();
    let spec = child(obj, "spec");
    set_default(spec, "finalizers", json!(["kubernetes"]));
    let status = child(obj, "status");
    set_default(status, "phase", json!("Active"));
    if !name.is_empty() {
        let meta = child(obj, "metadata");
        let labels = child(meta, "labels");
        labels["kubernetes.io/metadata.name"] = json!(name);
    }
}

/// Secrets: type Opaque; `stringData` (write-only, plain text) merged into `data` (base64),
/// its keys winning, as upstream does. (Values that are not strings never get here: the
/// typed decode refuses them.)
pub(crate) fn secret(obj: &mut Value) {
    use base64::Engine;
    set_default(obj, "type", json!("Opaque"));
    let Some(Value::Object(string_data)) = obj.as_object_mut().and_then(|o| o.remove("stringData")) else {
        return;
    };
    let mut rejected = Map::new();
    for (key, value) in string_data {
        match value {
            Value::String(text) => {
                child(obj, "data")[key.as_str()] =
                    json!(base64::engine::general_purpose::STANDARD.encode(text.as_bytes()));
            }
            other => {
                rejected.insert(key, other);
            }
        }
    }
    if !rejected.is_empty() {
        obj["stringData"] = Value::Object(rejected);
    }
}

/// Services: type ClusterIP, session affinity, port protocols and target ports, IP family
/// fields. Addresses and node ports are allocated separately (`crate::allocator`).
pub(crate) fn service(obj: &mut Value) {
    let spec = child(obj, "spec");
    set_default(spec, "type", json!("ClusterIP"));
    let ty = spec["type"].as_str().unwrap_or("ClusterIP").to_owned();
    if ty != "ExternalName" {
        set_default(spec, "sessionAffinity", json!("None"));
        set_default(spec, "internalTrafficPolicy", json!("Cluster"));
    }
    if ty == "NodePort" || ty == "LoadBalancer" {
        set_default(spec, "externalTrafficPolicy", json!("Cluster"));
    }
    if let Some(ports) = spec.get_mut("ports").and_then(Value::as_array_mut) {
        for port in ports {
            set_default(port, "protocol", json!("TCP"));
            // 0 and "" are unset too, as upstream: Go writes the zero IntOrString in JSON
            // and protobuf (typed clients send `targetPort: 0` when they set none).
            if matches!(port.get("targetPort"), Some(t) if *t == json!(0) || *t == json!("")) {
                port["targetPort"] = Value::Null;
            }
            if let Some(p) = port.get("port").cloned() {
                set_default(port, "targetPort", p);
            }
        }
    }
    let status = child(obj, "status");
    set_default(status, "loadBalancer", json!({}));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_defaults_keep_client_choices() {
        let mut svc = json!({"metadata": {"name": "s"}, "spec": {"type": "NodePort", "ports": [{"port": 80}, {"port": 53, "protocol": "UDP", "targetPort": 5353}, {"port": 81, "targetPort": 0}, {"port": 82, "targetPort": ""}]}});
        service(&mut svc);
        let spec = &svc["spec"];
        assert_eq!(spec["type"], "NodePort");
        assert_eq!(spec["ports"][0]["protocol"], "TCP");
        assert_eq!(spec["ports"][0]["targetPort"], 80);
        assert_eq!(spec["ports"][1]["protocol"], "UDP");
        assert_eq!(spec["ports"][1]["targetPort"], 5353);
        assert_eq!(spec["ports"][2]["targetPort"], 81);
        assert_eq!(spec["ports"][3]["targetPort"], 82);
        assert_eq!(spec["externalTrafficPolicy"], "Cluster");
        let again = svc.clone();
        service(&mut svc);
        assert_eq!(svc, again, "defaulting is idempotent");
    }

    #[test]
    fn namespace_defaults() {
        let mut ns = json!({"metadata": {"name": "team-a"}});
        namespace(&mut ns);
        assert_eq!(ns["spec"]["finalizers"], json!(["kubernetes"]));
        assert_eq!(ns["status"]["phase"], "Active");
        assert_eq!(
            ns["metadata"]["labels"]["kubernetes.io/metadata.name"],
            "team-a"
        );
    }
}
