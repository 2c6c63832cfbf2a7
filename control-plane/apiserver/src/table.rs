//! Server-side printing: `meta.k8s.io/v1` `Table` responses with kubectl's columns per kind.
//! Columns with priority 1 are the extra ones `kubectl get -o wide` shows.

use jiff::Timestamp;
use serde_json::{Value, json};

use crate::object;
use crate::selectors::format_label_selector;

/// One column of a table.
#[derive(Debug)]
pub struct Column {
    /// Header (`Name`, printed upper-cased by kubectl).
    pub name: &'static str,
    /// OpenAPI type: `string`, `integer`, `date`.
    pub ty: &'static str,
    /// 0: always shown; 1: shown with `-o wide`.
    pub priority: u8,
}

/// The columns of a kind and how to compute one row's cells (one per column).
#[derive(Debug)]
pub struct TableSpec {
    /// The columns.
    pub columns: &'static [Column],
    /// The cells of one object, given the current time.
    pub cells: fn(&Value, Timestamp) -> Vec<Value>,
}

const fn col(name: &'static str, ty: &'static str, priority: u8) -> Column {
    Column { name, ty, priority }
}

/// What a row carries beside its cells (`includeObject`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IncludeObject {
    /// Nothing.
    None,
    /// A `PartialObjectMetadata` (the default).
    Metadata,
    /// The whole object.
    Object,
}

impl IncludeObject {
    /// Parses the `includeObject` query parameter.
    pub fn parse(s: Option<&str>) -> IncludeObject {
        match s {
            Some("None") => IncludeObject::None,
            Some("Object") => IncludeObject::Object,
            _ => IncludeObject::Metadata,
        }
    }
}

/// The column definitions of a spec, as JSON.
pub fn column_definitions(spec: &TableSpec) -> Value {
    spec.columns
        .iter()
        .map(|c| {
            json!({
                "name": c.name,
                "type": c.ty,
                "format": if c.name == "Name" { "name" } else { "" },
                "description": c.name,
                "priority": c.priority,
            })
        })
        .collect()
}

/// One row for an object.
pub fn row(spec: &TableSpec, obj: &Value, include: IncludeObject, now: Timestamp) -> Value {
    let mut row = json!({"cells": (spec.cells)(obj, now)});
    match include {
        IncludeObject::None => {}
        IncludeObject::Object => row["object"] = obj.clone(),
        IncludeObject::Metadata => {
            row["object"] = json!({
                "kind": "PartialObjectMetadata",
                "apiVersion": "meta.k8s.io/v1",
                "metadata": obj.get("metadata").cloned().unwrap_or(json!({})),
            })
        }
    }
    row
}

/// A whole table for a list of objects.
pub fn table(
    spec: &TableSpec,
    objects: &[Value],
    list_meta: Value,
    include: IncludeObject,
) -> Value {
    let now = Timestamp::now();
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": list_meta,
        "columnDefinitions": column_definitions(spec),
        "rows": objects.iter().map(|o| row(spec, o, include, now)).collect::<Vec<_>>(),
    })
}

/// Age as kubectl prints it (`45s`, `5m30s`, `3h`, `2d4h`, `3y`), as upstream's
/// `HumanDuration`.
pub fn human_duration(seconds: i64) -> String {
    if seconds < -1 {
        return "<invalid>".to_owned();
    }
    let seconds = seconds.max(0);
    let minutes = seconds / 60;
    let hours = minutes / 60;
    let days = hours / 24;
    if seconds < 120 {
        format!("{seconds}s")
    } else if minutes < 10 {
        match seconds % 60 {
            0 => format!("{minutes}m"),
            s => format!("{minutes}m{s}s"),
        }
    } else if minutes < 180 {
        format!("{minutes}m")
    } else if hours < 8 {
        match minutes % 60 {
            0 => format!("{hours}h"),
            m => format!("{hours}h{m}m"),
        }
    } else if hours < 48 {
        format!("{hours}h")
    } else if hours < 24 * 8 {
        match hours % 24 {
            0 => format!("{days}d"),
            h => format!("{days}d{h}h"),
        }
    } else if hours < 24 * 365 * 2 {
        format!("{days}d")
    } else if hours < 24 * 365 * 8 {
        match days % 365 {
            0 => format!("{}y", days / 365),
            d => format!("{}y{d}d", days / 365),
        }
    } else {
        format!("{}y", days / 365)
    }
}

fn since(ts: Option<&str>, now: Timestamp) -> String {
    match ts.and_then(object::parse_time) {
        Some(t) => human_duration(now.as_second() - t.as_second()),
        None => "<unknown>".to_owned(),
    }
}

fn age(obj: &Value, now: Timestamp) -> Value {
    json!(since(Some(object::meta_str(obj, "creationTimestamp")), now))
}

fn name(obj: &Value) -> Value {
    json!(object::name(obj))
}

fn s<'a>(obj: &'a Value, path: &str) -> Option<&'a str> {
    object::at_path(obj, path).and_then(Value::as_str)
}

fn i(obj: &Value, path: &str) -> i64 {
    object::at_path(obj, path)
        .and_then(Value::as_i64)
        .unwrap_or(0)
}

fn arr<'a>(obj: &'a Value, path: &str) -> &'a [Value] {
    object::at_path(obj, path)
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or(&[])
}

fn or_none(v: Option<&str>) -> Value {
    match v {
        Some(v) if !v.is_empty() => json!(v),
        _ => json!("<none>"),
    }
}

fn joined(items: Vec<String>) -> Value {
    if items.is_empty() {
        json!("<none>")
    } else {
        json!(items.join(","))
    }
}

fn containers_images(obj: &Value, path: &str) -> (Value, Value) {
    let cs = arr(obj, path);
    let names = cs
        .iter()
        .filter_map(|c| s(c, "name"))
        .map(str::to_owned)
        .collect();
    let images = cs
        .iter()
        .filter_map(|c| s(c, "image"))
        .map(str::to_owned)
        .collect();
    (joined(names), joined(images))
}

fn selector_text(obj: &Value) -> Value {
    match object::at_path(obj, "spec.selector") {
        Some(sel) => or_none(Some(&format_label_selector(sel))),
        None => json!("<none>"),
    }
}

/// NAME AGE, for kinds without their own columns.
pub static DEFAULT: TableSpec = TableSpec {
    columns: &[col("Name", "string", 0), col("Age", "string", 0)],
    cells: |o, now| vec![name(o), age(o, now)],
};

/// The status kubectl shows for a pod: Terminating, a container's waiting or terminated
/// reason, the pod's reason, or its phase.
fn pod_status(pod: &Value) -> String {
    if object::is_terminating(pod) {
        return "Terminating".to_owned();
    }
    let mut reason = s(pod, "status.reason")
        .or(s(pod, "status.phase"))
        .unwrap_or("Pending")
        .to_owned();
    for cs in arr(pod, "status.containerStatuses") {
        if let Some(r) = s(cs, "state.waiting.reason").filter(|r| !r.is_empty()) {
            reason = r.to_owned();
        } else if let Some(r) = s(cs, "state.terminated.reason").filter(|r| !r.is_empty()) {
            reason = r.to_owned();
        }
    }
    reason
}

/// Pods: NAME READY STATUS RESTARTS AGE | IP NODE NOMINATED NODE READINESS GATES.
pub static PODS: TableSpec = TableSpec {
    columns: &[
        col("Name", "string", 0),
        col("Ready", "string", 0),
        col("Status", "string", 0),
        col("Restarts", "string", 0),
        col("Age", "string", 0),
        col("IP", "string", 1),
        col("Node", "string", 1),
        col("Nominated Node", "string", 1),
        col("Readiness Gates", "string", 1),
    ],
    cells: |o, now| {
        let statuses = arr(o, "status.containerStatuses");
        let ready = statuses
            .iter()
            .filter(|c| c.get("ready").and_then(Value::as_bool) == Some(true))
            .count();
        let total = arr(o, "spec.containers").len();
        let restarts: i64 = statuses.iter().map(|c| i(c, "restartCount")).sum();
        vec![
            name(o),
            json!(format!("{ready}/{total}")),
            json!(pod_status(o)),
            json!(restarts.to_string()),
            age(o, now),
            or_none(s(o, "status.podIP")),
            or_none(s(o, "spec.nodeName")),
            or_none(s(o, "status.nominatedNodeName")),
            json!("<none>"),
        ]
    },
};

/// Deployments: NAME READY UP-TO-DATE AVAILABLE AGE | CONTAINERS IMAGES SELECTOR.
pub static DEPLOYMENTS: TableSpec = TableSpec {
    columns: &[
        col("Name", "string", 0),
        col("Ready", "string", 0),
        col("Up-to-date", "integer", 0),
        col("Available", "integer", 0),
        col("Age", "string", 0),
        col("Containers", "string", 1),
        col("Images", "string", 1),
        col("Selector", "string", 1),
    ],
    cells: |o, now| {
        let (c, im) = containers_images(o, "spec.template.spec.containers");
        vec![
            name(o),
            json!(format!(
                "{}/{}",
                i(o, "status.readyReplicas"),
                i(o, "spec.replicas")
            )),
            json!(i(o, "status.updatedReplicas")),
            json!(i(o, "status.availableReplicas")),
            age(o, now),
            c,
            im,
            selector_text(o),
        ]
    },
};

/// ReplicaSets: NAME DESIRED CURRENT READY AGE | CONTAINERS IMAGES SELECTOR.
pub static REPLICA_SETS: TableSpec = TableSpec {
    columns: &[
        col("Name", "string", 0),
        col("Desired", "integer", 0),
        col("Current", "integer", 0),
        col("Ready", "integer", 0),
        col("Age", "string", 0),
        col("Containers", "string", 1),
        col("Images", "string", 1),
        col("Selector", "string", 1),
    ],
    cells: |o, now| {
        let (c, im) = containers_images(o, "spec.template.spec.containers");
        vec![
            name(o),
            json!(i(o, "spec.replicas")),
            json!(i(o, "status.replicas")),
            json!(i(o, "status.readyReplicas")),
            age(o, now),
            c,
            im,
            selector_text(o),
        ]
    },
};

/// DaemonSets: NAME DESIRED CURRENT READY UP-TO-DATE AVAILABLE NODE SELECTOR AGE.
pub static DAEMON_SETS: TableSpec = TableSpec {
    columns: &[
        col("Name", "string", 0),
        col("Desired", "integer", 0),
        col("Current", "integer", 0),
        col("Ready", "integer", 0),
        col("Up-to-date", "integer", 0),
        col("Available", "integer", 0),
        col("Node Selector", "string", 0),
        col("Age", "string", 0),
        col("Containers", "string", 1),
        col("Images", "string", 1),
        col("Selector", "string", 1),
    ],
    cells: |o, now| {
        let (c, im) = containers_images(o, "spec.template.spec.containers");
        let node_selector: Vec<String> = object::at_path(o, "spec.template.spec.nodeSelector")
            .and_then(Value::as_object)
            .into_iter()
            .flatten()
            .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
            .collect();
        vec![
            name(o),
            json!(i(o, "status.desiredNumberScheduled")),
            json!(i(o, "status.currentNumberScheduled")),
            json!(i(o, "status.numberReady")),
            json!(i(o, "status.updatedNumberScheduled")),
            json!(i(o, "status.numberAvailable")),
            joined(node_selector),
            age(o, now),
            c,
            im,
            selector_text(o),
        ]
    },
};

/// StatefulSets: NAME READY AGE | CONTAINERS IMAGES.
pub static STATEFUL_SETS: TableSpec = TableSpec {
    columns: &[
        col("Name", "string", 0),
        col("Ready", "string", 0),
        col("Age", "string", 0),
        col("Containers", "string", 1),
        col("Images", "string", 1),
    ],
    cells: |o, now| {
        let (c, im) = containers_images(o, "spec.template.spec.containers");
        vec![
            name(o),
            json!(format!(
                "{}/{}",
                i(o, "status.readyReplicas"),
                i(o, "spec.replicas")
            )),
            age(o, now),
            c,
            im,
        ]
    },
};

/// Jobs: NAME STATUS COMPLETIONS DURATION AGE.
pub static JOBS: TableSpec = TableSpec {
    columns: &[
        col("Name", "string", 0),
        col("Status", "string", 0),
        col("Completions", "string", 0),
        col("Duration", "string", 0),
        col("Age", "string", 0),
    ],
    cells: |o, now| {
        let conditions = arr(o, "status.conditions");
        let has = |t: &str| {
            conditions
                .iter()
                .any(|c| s(c, "type") == Some(t) && s(c, "status") == Some("True"))
        };
        let status = if has("Complete") {
            "Complete"
        } else if has("Failed") {
            "Failed"
        } else if has("Suspended") {
            "Suspended"
        } else {
            "Running"
        };
        let completions = match object::at_path(o, "spec.completions").and_then(Value::as_i64) {
            Some(c) => format!("{}/{c}", i(o, "status.succeeded")),
            None => format!(
                "{}/1 of {}",
                i(o, "status.succeeded"),
                i(o, "spec.parallelism")
            ),
        };
        let duration = match (s(o, "status.startTime"), s(o, "status.completionTime")) {
            (Some(start), Some(end)) => {
                match (object::parse_time(start), object::parse_time(end)) {
                    (Some(a), Some(b)) => human_duration(b.as_second() - a.as_second()),
                    _ => String::new(),
                }
            }
            (Some(start), None) => since(Some(start), now),
            _ => String::new(),
        };
        vec![
            name(o),
            json!(status),
            json!(completions),
            json!(duration),
            age(o, now),
        ]
    },
};

/// CronJobs: NAME SCHEDULE TIMEZONE SUSPEND ACTIVE LAST SCHEDULE AGE.
pub static CRON_JOBS: TableSpec = TableSpec {
    columns: &[
        col("Name", "string", 0),
        col("Schedule", "string", 0),
        col("Timezone", "string", 0),
        col("Suspend", "boolean", 0),
        col("Active", "integer", 0),
        col("Last Schedule", "string", 0),
        col("Age", "string", 0),
    ],
    cells: |o, now| {
        vec![
            name(o),
            json!(s(o, "spec.schedule").unwrap_or_default()),
            or_none(s(o, "spec.timeZone")),
            json!(
                object::at_path(o, "spec.suspend")
                    .and_then(Value::as_bool)
                    .unwrap_or(false)
            ),
            json!(arr(o, "status.active").len()),
            match s(o, "status.lastScheduleTime") {
                Some(t) => json!(since(Some(t), now)),
                None => json!("<none>"),
            },
            age(o, now),
        ]
    },
};

fn service_ports(o: &Value) -> Value {
    let ports: Vec<String> = arr(o, "spec.ports")
        .iter()
        .map(|p| {
            let proto = s(p, "protocol").unwrap_or("TCP");
            let port = i(p, "port");
            match p.get("nodePort").and_then(Value::as_i64) {
                Some(np) if np > 0 => format!("{port}:{np}/{proto}"),
                _ => format!("{port}/{proto}"),
            }
        })
        .collect();
    joined(ports)
}

/// Services: NAME TYPE CLUSTER-IP EXTERNAL-IP PORT(S) AGE | SELECTOR.
pub static SERVICES: TableSpec = TableSpec {
    columns: &[
        col("Name", "string", 0),
        col("Type", "string", 0),
        col("Cluster-IP", "string", 0),
        col("External-IP", "string", 0),
        col("Port(s)", "string", 0),
        col("Age", "string", 0),
        col("Selector", "string", 1),
    ],
    cells: |o, now| {
        let ty = s(o, "spec.type").unwrap_or("ClusterIP");
        let mut external: Vec<String> = arr(o, "spec.externalIPs")
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_owned)
            .collect();
        for ing in arr(o, "status.loadBalancer.ingress") {
            if let Some(ip) = s(ing, "ip").or(s(ing, "hostname")) {
                external.push(ip.to_owned());
            }
        }
        let external = match ty {
            "ExternalName" => or_none(s(o, "spec.externalName")),
            "LoadBalancer" if external.is_empty() => json!("<pending>"),
            _ => joined(external),
        };
        let selector: Vec<String> = object::at_path(o, "spec.selector")
            .and_then(Value::as_object)
            .into_iter()
            .flatten()
            .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
            .collect();
        vec![
            name(o),
            json!(ty),
            or_none(s(o, "spec.clusterIP")),
            external,
            service_ports(o),
            age(o, now),
            joined(selector),
        ]
    },
};

/// Endpoints: NAME ENDPOINTS AGE.
pub static ENDPOINTS: TableSpec = TableSpec {
    columns: &[
        col("Name", "string", 0),
        col("Endpoints", "string", 0),
        col("Age", "string", 0),
    ],
    cells: |o, now| {
        let mut eps = Vec::new();
        for subset in arr(o, "subsets") {
            for addr in arr(subset, "addresses") {
                let ip = s(addr, "ip").unwrap_or_default();
                let ports = arr(subset, "ports");
                if ports.is_empty() {
                    eps.push(ip.to_owned());
                }
                for p in ports {
                    eps.push(format!("{ip}:{}", i(p, "port")));
                }
            }
        }
        vec![name(o), joined(eps), age(o, now)]
    },
};

/// Nodes: NAME STATUS ROLES AGE VERSION | INTERNAL-IP EXTERNAL-IP OS-IMAGE KERNEL-VERSION
/// CONTAINER-RUNTIME.
pub static NODES: TableSpec = TableSpec {
    columns: &[
        col("Name", "string", 0),
        col("Status", "string", 0),
        col("Roles", "string", 0),
        col("Age", "string", 0),
        col("Version", "string", 0),
        col("Internal-IP", "string", 1),
        col("External-IP", "string", 1),
        col("OS-Image", "string", 1),
        col("Kernel-Version", "string", 1),
        col("Container-Runtime", "string", 1),
    ],
    cells: |o, now| {
        let ready = arr(o, "status.conditions")
            .iter()
            .find(|c| s(c, "type") == Some("Ready"))
            .and_then(|c| s(c, "status"));
        let mut status = match ready {
            Some("True") => "Ready".to_owned(),
            Some("False") => "NotReady".to_owned(),
            _ => "Unknown".to_owned(),
        };
        if object::at_path(o, "spec.unschedulable").and_then(Value::as_bool) == Some(true) {
            status.push_str(",SchedulingDisabled");
        }
        let roles: Vec<String> = object::meta_map(o, "labels")
            .filter_map(|(k, _)| k.strip_prefix("node-role.kubernetes.io/"))
            .map(str::to_owned)
            .collect();
        let address = |ty: &str| {
            arr(o, "status.addresses")
                .iter()
                .find(|a| s(a, "type") == Some(ty))
                .and_then(|a| s(a, "address"))
        };
        vec![
            name(o),
            json!(status),
            joined(roles),
            age(o, now),
            json!(s(o, "status.nodeInfo.kubeletVersion").unwrap_or_default()),
            or_none(address("InternalIP")),
            or_none(address("ExternalIP")),
            json!(s(o, "status.nodeInfo.osImage").unwrap_or("<unknown>")),
            json!(s(o, "status.nodeInfo.kernelVersion").unwrap_or("<unknown>")),
            json!(s(o, "status.nodeInfo.containerRuntimeVersion").unwrap_or("<unknown>")),
        ]
    },
};

/// Namespaces: NAME STATUS AGE.
pub static NAMESPACES: TableSpec = TableSpec {
    columns: &[
        col("Name", "string", 0),
        col("Status", "string", 0),
        col("Age", "string", 0),
    ],
    cells: |o, now| {
        vec![
            name(o),
            json!(s(o, "status.phase").unwrap_or("Active")),
            age(o, now),
        ]
    },
};

/// Events: LAST SEEN TYPE REASON OBJECT MESSAGE | SUBOBJECT SOURCE FIRST SEEN COUNT NAME.
pub static EVENTS: TableSpec = TableSpec {
    columns: &[
        col("Last Seen", "string", 0),
        col("Type", "string", 0),
        col("Reason", "string", 0),
        col("Object", "string", 0),
        col("Subobject", "string", 1),
        col("Source", "string", 1),
        col("Message", "string", 0),
        col("First Seen", "string", 1),
        col("Count", "string", 1),
        col("Name", "string", 1),
    ],
    cells: |o, now| {
        let last = s(o, "lastTimestamp")
            .or(s(o, "eventTime"))
            .or(Some(object::meta_str(o, "creationTimestamp")));
        let kind = s(o, "involvedObject.kind")
            .unwrap_or_default()
            .to_lowercase();
        let object_name = s(o, "involvedObject.name").unwrap_or_default();
        vec![
            json!(since(last, now)),
            json!(s(o, "type").unwrap_or_default()),
            json!(s(o, "reason").unwrap_or_default()),
            json!(format!("{kind}/{object_name}")),
            json!(s(o, "involvedObject.fieldPath").unwrap_or_default()),
            json!(
                s(o, "source.component")
                    .or(s(o, "reportingComponent"))
                    .unwrap_or_default()
            ),
            json!(s(o, "message").unwrap_or_default().trim()),
            json!(since(s(o, "firstTimestamp").or(last), now)),
            json!(i(o, "count").max(1).to_string()),
            name(o),
        ]
    },
};

fn data_count(o: &Value) -> usize {
    ["data", "binaryData"]
        .iter()
        .filter_map(|f| o.get(*f).and_then(Value::as_object))
        .map(serde_json::Map::len)
        .sum()
}

/// ConfigMaps: NAME DATA AGE.
pub static CONFIG_MAPS: TableSpec = TableSpec {
    columns: &[
        col("Name", "string", 0),
        col("Data", "integer", 0),
        col("Age", "string", 0),
    ],
    cells: |o, now| vec![name(o), json!(data_count(o)), age(o, now)],
};

/// Secrets: NAME TYPE DATA AGE.
pub static SECRETS: TableSpec = TableSpec {
    columns: &[
        col("Name", "string", 0),
        col("Type", "string", 0),
        col("Data", "integer", 0),
        col("Age", "string", 0),
    ],
    cells: |o, now| {
        vec![
            name(o),
            json!(s(o, "type").unwrap_or("Opaque")),
            json!(data_count(o)),
            age(o, now),
        ]
    },
};

/// ServiceAccounts: NAME SECRETS AGE.
pub static SERVICE_ACCOUNTS: TableSpec = TableSpec {
    columns: &[
        col("Name", "string", 0),
        col("Secrets", "integer", 0),
        col("Age", "string", 0),
    ],
    cells: |o, now| vec![name(o), json!(arr(o, "secrets").len()), age(o, now)],
};

/// Leases: NAME HOLDER AGE.
pub static LEASES: TableSpec = TableSpec {
    columns: &[
        col("Name", "string", 0),
        col("Holder", "string", 0),
        col("Age", "string", 0),
    ],
    cells: |o, now| {
        vec![
            name(o),
            json!(s(o, "spec.holderIdentity").unwrap_or_default()),
            age(o, now),
        ]
    },
};

/// RoleBindings and ClusterRoleBindings: NAME ROLE AGE.
pub static ROLE_BINDINGS: TableSpec = TableSpec {
    columns: &[
        col("Name", "string", 0),
        col("Role", "string", 0),
        col("Age", "string", 0),
    ],
    cells: |o, now| {
        vec![
            name(o),
            json!(format!(
                "{}/{}",
                s(o, "roleRef.kind").unwrap_or_default(),
                s(o, "roleRef.name").unwrap_or_default()
            )),
            age(o, now),
        ]
    },
};

/// LimitRanges: NAME CREATED AT.
pub static LIMIT_RANGES: TableSpec = TableSpec {
    columns: &[col("Name", "string", 0), col("Created At", "date", 0)],
    cells: |o, _| vec![name(o), json!(object::meta_str(o, "creationTimestamp"))],
};

/// ResourceQuotas: NAME AGE REQUEST LIMIT, each column `resource: used/hard` from the status
/// (`limits.*` under LIMIT, everything else under REQUEST), as upstream's printer.
pub static RESOURCE_QUOTAS: TableSpec = TableSpec {
    columns: &[
        col("Name", "string", 0),
        col("Age", "string", 0),
        col("Request", "string", 0),
        col("Limit", "string", 0),
    ],
    cells: |o, now| {
        let amount = |path: &str, resource: &str| -> String {
            let text = object::at_path(o, path)
                .and_then(|m| m.get(resource))
                .and_then(Value::as_str)
                .unwrap_or("0");
            coxswain_resources::Quantity::canonical(text).unwrap_or_else(|| text.to_owned())
        };
        let mut requests = Vec::new();
        let mut limits = Vec::new();
        let mut names: Vec<&String> = object::at_path(o, "status.hard")
            .and_then(Value::as_object)
            .into_iter()
            .flat_map(|h| h.keys())
            .collect();
        names.sort();
        for resource in names {
            let cell = format!(
                "{resource}: {}/{}",
                amount("status.used", resource),
                amount("status.hard", resource)
            );
            if resource.starts_with("limits.") {
                limits.push(cell);
            } else {
                requests.push(cell);
            }
        }
        vec![name(o), age(o, now), json!(requests.join(", ")), json!(limits.join(", "))]
    },
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_durations() {
        let table = [
            (5, "5s"),
            (119, "119s"),
            (150, "2m30s"),
            (600, "10m"),
            (3 * 3600 + 60, "3h1m"),
            (10 * 3600, "10h"),
            (3 * 86400 + 3600, "3d1h"),
            (30 * 86400, "30d"),
            (3 * 365 * 86400, "3y"),
        ];
        for (secs, want) in table {
            assert_eq!(human_duration(secs), want, "{secs}");
        }
    }

    #[test]
    fn pod_row() {
        let now = Timestamp::now();
        let pod = json!({"metadata": {"name": "p", "creationTimestamp": object::format_time(now)},
            "spec": {"containers": [{"name": "a"}, {"name": "b"}], "nodeName": "n1"},
            "status": {"phase": "Running", "podIP": "10.0.0.5", "containerStatuses": [{"ready": true, "restartCount": 2}, {"ready": false, "restartCount": 1, "state": {"waiting": {"reason": "CrashLoopBackOff"}}}]}});
        let cells = (PODS.cells)(&pod, now);
        assert_eq!(cells.len(), PODS.columns.len());
        assert_eq!(cells[1], "1/2");
        assert_eq!(cells[2], "CrashLoopBackOff");
        assert_eq!(cells[3], "3");
        assert_eq!(cells[5], "10.0.0.5");
        assert_eq!(cells[6], "n1");
    }

    #[test]
    fn service_row() {
        let svc = json!({"metadata": {"name": "s"}, "spec": {"type": "NodePort", "clusterIP": "10.96.0.10", "ports": [{"port": 80, "nodePort": 30080, "protocol": "TCP"}]}});
        let cells = (SERVICES.cells)(&svc, Timestamp::now());
        assert_eq!(cells[4], "80:30080/TCP");
        assert_eq!(cells[3], "<none>");
    }
}
