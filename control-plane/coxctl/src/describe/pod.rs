//! Pods, their containers, and pod templates (shared with Deployments and `rollout
//! history --revision`).

use jiff::Timestamp;
use serde_json::Value;

use super::text::{
    Text, annotation_lines, conditions, label_for, map_lines, or_none, scalar_text, time_text,
};
use crate::output::{age, at, str_at};

pub fn controlled_by(o: &Value) -> Option<String> {
    at(o, "metadata.ownerReferences")?
        .as_array()?
        .iter()
        .find(|r| r["controller"] == true)
        .map(|r| {
            format!(
                "{}/{}",
                r["kind"].as_str().unwrap_or(""),
                r["name"].as_str().unwrap_or("")
            )
        })
}

pub fn container_ports(c: &Value) -> String {
    let ports: Vec<String> = c["ports"]
        .as_array()
        .map(|ps| {
            ps.iter()
                .map(|p| {
                    format!(
                        "{}/{}",
                        p["containerPort"],
                        p["protocol"].as_str().unwrap_or("TCP")
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    if ports.is_empty() {
        "<none>".to_owned()
    } else {
        ports.join(", ")
    }
}

pub fn container_state(text: &mut Text, level: usize, key: &str, state: Option<&Value>) {
    let Some(state) = state.and_then(Value::as_object).filter(|s| !s.is_empty()) else {
        if key == "State" {
            text.kv(level, key, "Waiting");
        }
        return;
    };
    for (name, detail) in state {
        text.kv(level, key, label_for(name));
        if let Some(reason) = detail["reason"].as_str() {
            text.kv(level + 1, "Reason", reason);
        }
        if let Some(message) = detail["message"].as_str() {
            text.kv(level + 1, "Message", message);
        }
        if let Some(code) = detail["exitCode"].as_i64() {
            text.kv(level + 1, "Exit Code", code);
        }
        if detail.get("startedAt").is_some() {
            text.kv(
                level + 1,
                "Started",
                time_text(detail["startedAt"].as_str()),
            );
        }
        if detail.get("finishedAt").is_some() {
            text.kv(
                level + 1,
                "Finished",
                time_text(detail["finishedAt"].as_str()),
            );
        }
    }
}

pub fn resources(text: &mut Text, level: usize, c: &Value) {
    for (key, field) in [("Limits", "limits"), ("Requests", "requests")] {
        if let Some(map) = c["resources"][field].as_object().filter(|m| !m.is_empty()) {
            text.row(level, &[&format!("{key}:")]);
            for (k, v) in map {
                text.kv(level + 1, k, scalar_text(v));
            }
        }
    }
}

pub fn probe_text(p: &Value) -> String {
    let action = if let Some(get) = p.get("httpGet") {
        format!(
            "http-get {}://:{}{}",
            get["scheme"].as_str().unwrap_or("HTTP").to_lowercase(),
            scalar_text(&get["port"]),
            get["path"].as_str().unwrap_or("/")
        )
    } else if let Some(tcp) = p.get("tcpSocket") {
        format!("tcp-socket :{}", scalar_text(&tcp["port"]))
    } else if let Some(exec) = p.get("exec") {
        let cmd: Vec<String> = exec["command"]
            .as_array()
            .map(|c| c.iter().map(scalar_text).collect())
            .unwrap_or_default();
        format!("exec [{}]", cmd.join(" "))
    } else if p.get("grpc").is_some() {
        format!("grpc :{}", scalar_text(&p["grpc"]["port"]))
    } else {
        "unknown".to_owned()
    };
    let n = |k: &str, d: i64| p[k].as_i64().unwrap_or(d);
    format!(
        "{action} delay={}s timeout={}s period={}s #success={} #failure={}",
        n("initialDelaySeconds", 0),
        n("timeoutSeconds", 1),
        n("periodSeconds", 10),
        n("successThreshold", 1),
        n("failureThreshold", 3)
    )
}

/// `(name, value)` of each environment variable, values as kubectl shows them.
pub fn env_vars(c: &Value) -> Vec<(String, String)> {
    let field = |e: &Value, path: &str| {
        e.pointer(path)
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned()
    };
    c["env"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .map(|e| {
            let name = e["name"].as_str().unwrap_or("").to_owned();
            let value = if let Some(v) = e["value"].as_str() {
                v.to_owned()
            } else if e.pointer("/valueFrom/fieldRef").is_some() {
                let version = e
                    .pointer("/valueFrom/fieldRef/apiVersion")
                    .and_then(Value::as_str)
                    .unwrap_or("v1");
                format!("({version}:{})", field(e, "/valueFrom/fieldRef/fieldPath"))
            } else if e.pointer("/valueFrom/resourceFieldRef").is_some() {
                format!(
                    "{} ({})",
                    field(e, "/valueFrom/resourceFieldRef/resource"),
                    field(e, "/valueFrom/resourceFieldRef/containerName")
                )
            } else if e.pointer("/valueFrom/secretKeyRef").is_some() {
                format!(
                    "<set to the key '{}' in secret '{}'>",
                    field(e, "/valueFrom/secretKeyRef/key"),
                    field(e, "/valueFrom/secretKeyRef/name")
                )
            } else if e.pointer("/valueFrom/configMapKeyRef").is_some() {
                format!(
                    "<set to the key '{}' of config map '{}'>",
                    field(e, "/valueFrom/configMapKeyRef/key"),
                    field(e, "/valueFrom/configMapKeyRef/name")
                )
            } else {
                String::new()
            };
            (name, value)
        })
        .collect()
}

pub fn environment(text: &mut Text, level: usize, c: &Value) {
    let sources: Vec<String> = c["envFrom"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .filter_map(|from| {
            let prefix = from["prefix"]
                .as_str()
                .map(|p| format!(" (prefix {p})"))
                .unwrap_or_default();
            if let Some(n) = from.pointer("/configMapRef/name").and_then(Value::as_str) {
                Some(format!("{n}\tConfigMap{prefix}"))
            } else {
                from.pointer("/secretRef/name")
                    .and_then(Value::as_str)
                    .map(|n| format!("{n}\tSecret{prefix}"))
            }
        })
        .collect();
    if !sources.is_empty() {
        text.row(level, &["Environment Variables from:"]);
        for source in &sources {
            text.row(level + 1, &[source]);
        }
    }
    let vars = env_vars(c);
    if vars.is_empty() {
        text.kv(level, "Environment", "<none>");
        return;
    }
    text.row(level, &["Environment:"]);
    for (name, value) in vars {
        text.kv(level + 1, &name, value);
    }
}

/// One container of a pod spec (with its status, when the pod has one).
pub fn container(text: &mut Text, level: usize, c: &Value, status: Option<&Value>) {
    text.row(level, &[&format!("{}:", c["name"].as_str().unwrap_or(""))]);
    let l = level + 1;
    if let Some(s) = status {
        text.kv(l, "Container ID", or_none(s["containerID"].as_str()));
    }
    text.kv(l, "Image", or_none(c["image"].as_str()));
    if let Some(s) = status {
        text.kv(l, "Image ID", or_none(s["imageID"].as_str()));
    }
    text.kv(l, "Port", container_ports(c));
    for (key, field) in [("Command", "command"), ("Args", "args")] {
        if let Some(words) = c[field].as_array() {
            text.row(l, &[&format!("{key}:")]);
            for w in words {
                text.row(l + 1, &[&scalar_text(w)]);
            }
        }
    }
    if let Some(s) = status {
        container_state(text, l, "State", s.get("state"));
        container_state(text, l, "Last State", s.get("lastState"));
        text.kv(
            l,
            "Ready",
            if s["ready"] == true { "True" } else { "False" },
        );
        text.kv(l, "Restart Count", s["restartCount"].as_i64().unwrap_or(0));
    }
    resources(text, l, c);
    for (key, field) in [
        ("Liveness", "livenessProbe"),
        ("Readiness", "readinessProbe"),
        ("Startup", "startupProbe"),
    ] {
        if let Some(p) = c.get(field) {
            text.kv(l, key, probe_text(p));
        }
    }
    environment(text, l, c);
    let mounts: Vec<String> = c["volumeMounts"]
        .as_array()
        .map(|ms| {
            ms.iter()
                .map(|m| {
                    format!(
                        "{} from {} ({})",
                        m["mountPath"].as_str().unwrap_or(""),
                        m["name"].as_str().unwrap_or(""),
                        if m["readOnly"] == true { "ro" } else { "rw" }
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    text.kv_lines(l, "Mounts", &mounts);
}

/// The `Pod Template:` block (Deployments, ReplicaSets, `rollout history --revision`).
pub fn pod_template(text: &mut Text, template: &Value, level: usize) {
    text.row(level, &["Pod Template:"]);
    let l = level + 1;
    text.kv_lines(l, "Labels", &map_lines(at(template, "metadata.labels")));
    let annotations = annotation_lines(at(template, "metadata.annotations"));
    if !annotations.is_empty() {
        text.kv_lines(l, "Annotations", &annotations);
    }
    if let Some(sa) = str_at(template, "spec.serviceAccountName") {
        text.kv(l, "Service Account", sa);
    }
    for (key, field) in [
        ("Init Containers", "initContainers"),
        ("Containers", "containers"),
    ] {
        let Some(containers) = at(template, &format!("spec.{field}")).and_then(Value::as_array)
        else {
            continue;
        };
        text.row(l, &[&format!("{key}:")]);
        for c in containers {
            container(text, l + 1, c, None);
        }
    }
    volumes(text, l, at(template, "spec.volumes"));
    text.kv_lines(
        l,
        "Node-Selectors",
        &map_lines(at(template, "spec.nodeSelector")),
    );
    text.kv_lines(
        l,
        "Tolerations",
        &toleration_lines(at(template, "spec.tolerations")),
    );
}

pub fn volumes(text: &mut Text, level: usize, volumes: Option<&Value>) {
    let Some(list) = volumes.and_then(Value::as_array).filter(|v| !v.is_empty()) else {
        text.kv(level, "Volumes", "<none>");
        return;
    };
    text.row(level, &["Volumes:"]);
    for v in list {
        text.row(
            level + 1,
            &[&format!("{}:", v["name"].as_str().unwrap_or(""))],
        );
        if let Some(map) = v.as_object() {
            for (k, source) in map.iter().filter(|(k, _)| k.as_str() != "name") {
                text.kv(level + 2, "Type", label_for(k));
                if let Some(fields) = source.as_object() {
                    for (fk, fv) in fields {
                        if !fv.is_object() && !fv.is_array() {
                            text.kv(level + 2, &label_for(fk), scalar_text(fv));
                        }
                    }
                }
            }
        }
    }
}

/// Tolerations as kubectl prints them (`key=value:Effect op=Exists for 300s`).
pub fn toleration_lines(tolerations: Option<&Value>) -> Vec<String> {
    tolerations
        .and_then(Value::as_array)
        .map(|ts| {
            ts.iter()
                .map(|t| {
                    let mut s = t["key"].as_str().unwrap_or("").to_owned();
                    if let Some(v) = t["value"].as_str() {
                        s = format!("{s}={v}");
                    }
                    if let Some(e) = t["effect"].as_str() {
                        s = format!("{s}:{e}");
                    }
                    if t["operator"] == "Exists" && t.get("key").is_none() {
                        s = format!("op=Exists{s}");
                    } else if t["operator"] == "Exists" {
                        s = format!("{s} op=Exists");
                    }
                    if let Some(secs) = t["tolerationSeconds"].as_i64() {
                        s = format!("{s} for {secs}s");
                    }
                    s
                })
                .collect()
        })
        .unwrap_or_default()
}

pub fn describe_pod(text: &mut Text, o: &Value) {
    text.kv(0, "Name", str_at(o, "metadata.name").unwrap_or(""));
    text.kv(
        0,
        "Namespace",
        str_at(o, "metadata.namespace").unwrap_or(""),
    );
    if let Some(priority) = at(o, "spec.priority").and_then(Value::as_i64) {
        text.kv(0, "Priority", priority);
    }
    if let Some(class) = str_at(o, "spec.priorityClassName") {
        text.kv(0, "Priority Class Name", class);
    }
    text.kv(
        0,
        "Service Account",
        or_none(str_at(o, "spec.serviceAccountName")),
    );
    let node = match (str_at(o, "spec.nodeName"), str_at(o, "status.hostIP")) {
        (Some(n), Some(ip)) => format!("{n}/{ip}"),
        (Some(n), None) => n.to_owned(),
        _ => "<none>".to_owned(),
    };
    text.kv(0, "Node", node);
    if let Some(start) = str_at(o, "status.startTime") {
        text.kv(0, "Start Time", time_text(Some(start)));
    }
    text.kv_lines(0, "Labels", &map_lines(at(o, "metadata.labels")));
    text.kv_lines(
        0,
        "Annotations",
        &annotation_lines(at(o, "metadata.annotations")),
    );
    let phase = or_none(str_at(o, "status.phase"));
    match str_at(o, "metadata.deletionTimestamp") {
        Some(_) => text.kv(
            0,
            "Status",
            format!(
                "Terminating (lasts {})",
                age(str_at(o, "metadata.deletionTimestamp"), Timestamp::now())
            ),
        ),
        None => text.kv(0, "Status", phase),
    }
    for (key, field) in [("Reason", "status.reason"), ("Message", "status.message")] {
        if let Some(v) = str_at(o, field) {
            text.kv(0, key, v);
        }
    }
    text.kv(0, "IP", or_none(str_at(o, "status.podIP")));
    let ips: Vec<&str> = at(o, "status.podIPs")
        .and_then(Value::as_array)
        .map(|ips| ips.iter().filter_map(|i| i["ip"].as_str()).collect())
        .unwrap_or_default();
    if ips.is_empty() {
        text.kv(0, "IPs", "<none>");
    } else {
        text.row(0, &["IPs:"]);
        for ip in ips {
            text.kv(1, "IP", ip);
        }
    }
    if let Some(owner) = controlled_by(o) {
        text.kv(0, "Controlled By", owner);
    }
    let statuses = |field: &str| {
        at(o, &format!("status.{field}"))
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default()
    };
    for (key, field, status_field) in [
        ("Init Containers", "initContainers", "initContainerStatuses"),
        ("Containers", "containers", "containerStatuses"),
    ] {
        let Some(containers) = at(o, &format!("spec.{field}")).and_then(Value::as_array) else {
            continue;
        };
        let sts = statuses(status_field);
        text.row(0, &[&format!("{key}:")]);
        for c in containers {
            let status = sts.iter().find(|s| s["name"] == c["name"]);
            container(
                text,
                1,
                c,
                status.or(Some(&Value::Null)).filter(|s| !s.is_null()),
            );
        }
    }
    // kubectl prints pod conditions without a rule under the heading.
    conditions(text, o, &[("Type", "type"), ("Status", "status")], false);
    volumes(text, 0, at(o, "spec.volumes"));
    text.kv(0, "QoS Class", or_none(str_at(o, "status.qosClass")));
    text.kv_lines(0, "Node-Selectors", &map_lines(at(o, "spec.nodeSelector")));
    text.kv_lines(
        0,
        "Tolerations",
        &toleration_lines(at(o, "spec.tolerations")),
    );
}
