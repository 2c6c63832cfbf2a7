//! Kind-specific validation: pods, services, workloads, config maps and secrets.

use serde_json::Value;

use super::{dns1123_label, qualified_name};
use crate::status::Cause;

/// No checks beyond metadata.
pub(crate) fn none(_: &Value, _: Option<&Value>, _: &mut Vec<Cause>) {}

fn str_at<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v.get(key).and_then(Value::as_str)
}

fn port_range(field: String, v: Option<&Value>, causes: &mut Vec<Cause>) {
    if let Some(p) = v
        && !p.as_i64().is_some_and(|p| (1..=65535).contains(&p))
    {
        causes.push(Cause::invalid(
            field,
            &p.to_string(),
            "must be between 1 and 65535, inclusive",
        ));
    }
}

/// Checks a pod spec at `path` (`spec` or `spec.template.spec`).
fn pod_spec(spec: &Value, path: &str, causes: &mut Vec<Cause>) {
    let containers = spec.get("containers").and_then(Value::as_array);
    match containers {
        None => causes.push(Cause::required(format!("{path}.containers"))),
        Some(c) if c.is_empty() => causes.push(Cause::required(format!("{path}.containers"))),
        Some(_) => {}
    }
    let mut names: Vec<&str> = Vec::new();
    for list in ["initContainers", "containers"] {
        for (i, c) in spec
            .get(list)
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .enumerate()
        {
            let at = format!("{path}.{list}[{i}]");
            match str_at(c, "name") {
                None | Some("") => causes.push(Cause::required(format!("{at}.name"))),
                Some(name) => {
                    if let Some(p) = dns1123_label(name) {
                        causes.push(Cause::invalid(format!("{at}.name"), name, p));
                    }
                    if names.contains(&name) {
                        causes.push(Cause::duplicate(
                            format!("{at}.name"),
                            name,
                            "container names must be unique",
                        ));
                    }
                    names.push(name);
                }
            }
            if str_at(c, "image").is_none_or(|i| i.trim().is_empty()) {
                causes.push(Cause::required(format!("{at}.image")));
            }
            if let Some(resources) = c.get("resources") {
                super::quota::resource_requirements(resources, &format!("{at}.resources"), causes);
            }
            for (j, p) in c
                .get("ports")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .enumerate()
            {
                let field = format!("{at}.ports[{j}].containerPort");
                match p.get("containerPort") {
                    None => causes.push(Cause::required(field)),
                    v => port_range(field, v, causes),
                }
            }
        }
    }
    if let Some(rp) = str_at(spec, "restartPolicy")
        && !["Always", "OnFailure", "Never"].contains(&rp)
    {
        causes.push(Cause::not_supported(
            format!("{path}.restartPolicy"),
            rp,
            &["Always", "OnFailure", "Never"],
        ));
    }
    if let Some(dp) = str_at(spec, "dnsPolicy")
        && !["ClusterFirst", "ClusterFirstWithHostNet", "Default", "None"].contains(&dp)
    {
        causes.push(Cause::not_supported(
            format!("{path}.dnsPolicy"),
            dp,
            &["ClusterFirst", "ClusterFirstWithHostNet", "Default", "None"],
        ));
    }
}

/// Pods: containers, names, images, ports, policies; on update, only images, the active
/// deadline and tolerations may change in the spec.
pub(crate) fn pod(obj: &Value, old: Option<&Value>, causes: &mut Vec<Cause>) {
    let spec = obj.get("spec").unwrap_or(&Value::Null);
    pod_spec(spec, "spec", causes);
    if let Some(old) = old {
        let masked = |v: &Value| {
            let mut s = v.get("spec").cloned().unwrap_or(Value::Null);
            for list in ["containers", "initContainers"] {
                if let Some(cs) = s.get_mut(list).and_then(Value::as_array_mut) {
                    for c in cs {
                        c["image"] = Value::Null;
                    }
                }
            }
            if let Some(m) = s.as_object_mut() {
                for mutable in [
                    "activeDeadlineSeconds",
                    "tolerations",
                    "terminationGracePeriodSeconds",
                    "schedulingGates",
                ] {
                    m.remove(mutable);
                }
                // nodeName is set once, by a binding.
                if old.get("spec").and_then(|s| s.get("nodeName")).is_none() {
                    m.remove("nodeName");
                }
            }
            s
        };
        if masked(obj) != masked(old) {
            causes.push(Cause {
                field: "spec".into(),
                reason: "FieldValueForbidden",
                message: "Forbidden: pod updates may not change fields other than \
                          `spec.containers[*].image`, `spec.initContainers[*].image`, \
                          `spec.activeDeadlineSeconds`, `spec.tolerations` (only additions to \
                          existing tolerations), `spec.terminationGracePeriodSeconds`"
                    .into(),
            });
        }
    }
}

/// Services: type, ports, and an immutable cluster IP.
pub(crate) fn service(obj: &Value, old: Option<&Value>, causes: &mut Vec<Cause>) {
    let spec = obj.get("spec").unwrap_or(&Value::Null);
    let ty = str_at(spec, "type").unwrap_or("ClusterIP");
    const TYPES: [&str; 4] = ["ClusterIP", "NodePort", "LoadBalancer", "ExternalName"];
    if !TYPES.contains(&ty) {
        causes.push(Cause::not_supported("spec.type", ty, &TYPES));
    }
    let ports = spec.get("ports").and_then(Value::as_array);
    let headless = str_at(spec, "clusterIP") == Some("None");
    if ty != "ExternalName" && !headless && ports.is_none_or(Vec::is_empty) {
        causes.push(Cause::required("spec.ports"));
    }
    if ty == "ExternalName" && str_at(spec, "externalName").is_none_or(str::is_empty) {
        causes.push(Cause::required("spec.externalName"));
    }
    let many = ports.is_some_and(|p| p.len() > 1);
    let mut seen: Vec<(i64, &str)> = Vec::new();
    for (i, p) in ports.into_iter().flatten().enumerate() {
        let at = format!("spec.ports[{i}]");
        match p.get("port") {
            None => causes.push(Cause::required(format!("{at}.port"))),
            v => port_range(format!("{at}.port"), v, causes),
        }
        if many && str_at(p, "name").is_none_or(str::is_empty) {
            causes.push(Cause::required(format!("{at}.name")));
        }
        let proto = str_at(p, "protocol").unwrap_or("TCP");
        if !["TCP", "UDP", "SCTP"].contains(&proto) {
            causes.push(Cause::not_supported(
                format!("{at}.protocol"),
                proto,
                &["SCTP", "TCP", "UDP"],
            ));
        }
        if let Some(port) = p.get("port").and_then(Value::as_i64) {
            if seen.contains(&(port, proto)) {
                causes.push(Cause::duplicate(
                    at.clone(),
                    &format!("{port}/{proto}"),
                    "duplicate port",
                ));
            }
            seen.push((port, proto));
        }
        if let Some(np) = p.get("nodePort")
            && !np
                .as_i64()
                .is_some_and(|n| n == 0 || (30000..=32767).contains(&n))
        {
            causes.push(Cause::invalid(
                format!("{at}.nodePort"),
                &np.to_string(),
                "provided port is not in the valid range. The range of valid ports is 30000-32767",
            ));
        }
    }
    if let Some(old) = old {
        let old_ip = old.get("spec").and_then(|s| str_at(s, "clusterIP"));
        let new_ip = str_at(spec, "clusterIP");
        if ty != "ExternalName" && old_ip.is_some() && new_ip.is_some() && old_ip != new_ip {
            causes.push(Cause::immutable("spec.clusterIP"));
        }
    }
}

/// Label selector `matchLabels` as a map, if present.
fn match_labels(v: Option<&Value>) -> Option<&serde_json::Map<String, Value>> {
    v?.get("matchLabels")?.as_object()
}

/// Workloads (deployments, replica sets, daemon sets, stateful sets): a selector matching the
/// template's labels, non-negative replicas, a valid pod template; the selector is immutable.
pub(crate) fn workload(obj: &Value, old: Option<&Value>, causes: &mut Vec<Cause>) {
    let spec = obj.get("spec").unwrap_or(&Value::Null);
    let selector = spec.get("selector");
    let template_labels = spec
        .get("template")
        .and_then(|t| t.get("metadata"))
        .and_then(|m| m.get("labels"))
        .and_then(Value::as_object);
    let has_expressions = selector
        .and_then(|s| s.get("matchExpressions"))
        .and_then(Value::as_array)
        .is_some_and(|e| !e.is_empty());
    match match_labels(selector) {
        Some(ml) if !ml.is_empty() => {
            let matches = ml
                .iter()
                .all(|(k, v)| template_labels.and_then(|t| t.get(k)) == Some(v));
            if !matches {
                causes.push(Cause::invalid(
                    "spec.template.metadata.labels",
                    &template_labels
                        .map(|t| Value::Object(t.clone()).to_string())
                        .unwrap_or_default(),
                    "`selector` does not match template `labels`",
                ));
            }
        }
        _ if has_expressions => {}
        _ => causes.push(Cause::required("spec.selector")),
    }
    for (key, _) in match_labels(selector).into_iter().flatten() {
        if let Some(p) = qualified_name(key) {
            causes.push(Cause::invalid("spec.selector.matchLabels", key, p));
        }
    }
    if let Some(r) = spec.get("replicas")
        && r.as_i64().is_none_or(|r| r < 0)
    {
        causes.push(Cause::invalid_value(
            "spec.replicas",
            r,
            "must be greater than or equal to 0",
        ));
    }
    match spec.get("template").and_then(|t| t.get("spec")) {
        Some(ps) => pod_spec(ps, "spec.template.spec", causes),
        None => causes.push(Cause::required("spec.template.spec.containers")),
    }
    if let Some(old) = old {
        let old_selector = old.get("spec").and_then(|s| s.get("selector"));
        if old_selector.is_some() && old_selector != selector {
            causes.push(Cause::immutable("spec.selector"));
        }
    }
}

/// Config maps and secrets: data keys are file names (alphanumerics, '-', '_' and '.').
pub(crate) fn config_map(obj: &Value, _: Option<&Value>, causes: &mut Vec<Cause>) {
    for field in ["data", "binaryData", "stringData"] {
        for key in obj
            .get(field)
            .and_then(Value::as_object)
            .into_iter()
            .flatten()
            .map(|(k, _)| k)
        {
            let ok = !key.is_empty()
                && key.len() <= 253
                && key != "."
                && key != ".."
                && key
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.');
            if !ok {
                causes.push(Cause::invalid(
                    format!("{field}[{key}]"),
                    key,
                    "a valid config key must consist of alphanumeric characters, '-', '_' or '.' (e.g. 'key.name')",
                ));
            }
        }
    }
}

/// Namespaces: the Pod Security labels must name a level (and a version).
pub(crate) fn namespace(obj: &Value, _: Option<&Value>, causes: &mut Vec<Cause>) {
    let Some(labels) = obj.pointer("/metadata/labels").and_then(Value::as_object) else {
        return;
    };
    for mode in ["enforce", "audit", "warn"] {
        let key = format!("pod-security.kubernetes.io/{mode}");
        if let Some(v) = labels.get(&key).and_then(Value::as_str)
            && let Err(e) = coxswain_auth::podsecurity::Level::parse(v)
        {
            causes.push(Cause::invalid(format!("metadata.labels[{key}]"), v, e));
        }
        let version_key = format!("{key}-version");
        if let Some(v) = labels.get(&version_key).and_then(Value::as_str) {
            let ok = v == "latest"
                || v.strip_prefix("v1.").is_some_and(|m| !m.is_empty() && m.bytes().all(|b| b.is_ascii_digit()));
            if !ok {
                causes.push(Cause::invalid(
                    format!("metadata.labels[{version_key}]"),
                    v,
                    "must be \"latest\" or a version like \"v1.37\"",
                ));
            }
        }
    }
}

/// CertificateSigningRequests: a readable, self-signed PEM request and a signer.
pub(crate) fn csr(obj: &Value, old: Option<&Value>, causes: &mut Vec<Cause>) {
    if old.is_some() {
        return;
    }
    let spec = obj.get("spec").cloned().unwrap_or(Value::Null);
    match spec.get("request").and_then(Value::as_str) {
        None | Some("") => causes.push(Cause::required("spec.request")),
        Some(b64) => {
            use base64::Engine;
            let pem = base64::engine::general_purpose::STANDARD
                .decode(b64)
                .ok()
                .and_then(|b| String::from_utf8(b).ok());
            match pem.map(|p| coxswain_auth::pki::csr_subject(&p)) {
                Some(Ok(_)) => {}
                Some(Err(e)) => causes.push(Cause::invalid("spec.request", "<request>", e.to_string())),
                None => causes.push(Cause::invalid("spec.request", "<request>", "must be a PEM certificate signing request")),
            }
        }
    }
    if str_at(&spec, "signerName").is_none_or(str::is_empty) {
        causes.push(Cause::required("spec.signerName"));
    }
    if spec.get("usages").and_then(Value::as_array).is_none_or(|u| u.is_empty()) {
        causes.push(Cause::required("spec.usages"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn fields(
        f: fn(&Value, Option<&Value>, &mut Vec<Cause>),
        obj: Value,
        old: Option<Value>,
    ) -> Vec<String> {
        let mut causes = Vec::new();
        f(&obj, old.as_ref(), &mut causes);
        causes.into_iter().map(|c| c.field).collect()
    }

    #[test]
    fn pods() {
        assert_eq!(
            fields(pod, json!({"spec": {}}), None),
            vec!["spec.containers"]
        );
        assert_eq!(
            fields(
                pod,
                json!({"spec": {"containers": [{"name": "a", "image": "x"}, {"name": "a"}]}}),
                None
            ),
            vec!["spec.containers[1].name", "spec.containers[1].image"]
        );
        assert_eq!(
            fields(
                pod,
                json!({"spec": {"restartPolicy": "Sometimes", "containers": [{"name": "a", "image": "x", "ports": [{"containerPort": 70000}]}]}}),
                None
            ),
            vec![
                "spec.containers[0].ports[0].containerPort",
                "spec.restartPolicy"
            ]
        );
        let old = json!({"spec": {"containers": [{"name": "a", "image": "x"}]}});
        assert!(
            fields(
                pod,
                json!({"spec": {"containers": [{"name": "a", "image": "y"}]}}),
                Some(old.clone())
            )
            .is_empty()
        );
        assert_eq!(
            fields(
                pod,
                json!({"spec": {"containers": [{"name": "b", "image": "y"}]}}),
                Some(old)
            ),
            vec!["spec"]
        );
    }

    #[test]
    fn services() {
        assert_eq!(
            fields(service, json!({"spec": {"type": "ClusterIP"}}), None),
            vec!["spec.ports"]
        );
        assert_eq!(
            fields(
                service,
                json!({"spec": {"type": "Weird", "ports": [{"port": 80}]}}),
                None
            ),
            vec!["spec.type"]
        );
        assert_eq!(
            fields(
                service,
                json!({"spec": {"ports": [{"port": 80, "nodePort": 80}]}}),
                None
            ),
            vec!["spec.ports[0].nodePort"]
        );
    }

    #[test]
    fn workloads() {
        let ok = json!({"spec": {"selector": {"matchLabels": {"app": "a"}}, "template": {"metadata": {"labels": {"app": "a"}}, "spec": {"containers": [{"name": "c", "image": "i"}]}}}});
        assert!(fields(workload, ok.clone(), None).is_empty());
        let mut bad = ok.clone();
        bad["spec"]["template"]["metadata"]["labels"]["app"] = json!("b");
        assert_eq!(
            fields(workload, bad, None),
            vec!["spec.template.metadata.labels"]
        );
        let mut moved = ok.clone();
        moved["spec"]["selector"]["matchLabels"]["tier"] = json!("x");
        moved["spec"]["template"]["metadata"]["labels"]["tier"] = json!("x");
        assert_eq!(fields(workload, moved, Some(ok)), vec!["spec.selector"]);
    }
}
