//! Nodes: heartbeat Lease, conditions, addresses, capacity, system info, pods.

use jiff::Timestamp;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Pod;
use serde_json::Value;

use super::text::{Text, annotation_lines, conditions, map_lines, or_none, scalar_text, time_text};
use crate::output::{age, at, str_at};

pub fn describe_node(text: &mut Text, o: &Value, pods: &[Pod], lease: Option<&Lease>) {
    text.kv(0, "Name", str_at(o, "metadata.name").unwrap_or(""));
    let roles: Vec<String> = at(o, "metadata.labels")
        .and_then(Value::as_object)
        .map(|m| {
            m.keys()
                .filter_map(|k| k.strip_prefix("node-role.kubernetes.io/"))
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default();
    text.kv(
        0,
        "Roles",
        if roles.is_empty() {
            "<none>".to_owned()
        } else {
            roles.join(",")
        },
    );
    text.kv_lines(0, "Labels", &map_lines(at(o, "metadata.labels")));
    text.kv_lines(
        0,
        "Annotations",
        &annotation_lines(at(o, "metadata.annotations")),
    );
    text.kv(
        0,
        "CreationTimestamp",
        time_text(str_at(o, "metadata.creationTimestamp")),
    );
    let taints: Vec<String> = at(o, "spec.taints")
        .and_then(Value::as_array)
        .map(|ts| {
            ts.iter()
                .map(|t| {
                    let key = t["key"].as_str().unwrap_or("");
                    let effect = t["effect"].as_str().unwrap_or("");
                    match t["value"].as_str() {
                        Some(v) => format!("{key}={v}:{effect}"),
                        None => format!("{key}:{effect}"),
                    }
                })
                .collect()
        })
        .unwrap_or_default();
    text.kv_lines(0, "Taints", &taints);
    text.kv(
        0,
        "Unschedulable",
        at(o, "spec.unschedulable")
            .and_then(Value::as_bool)
            .unwrap_or(false),
    );
    if let Some(lease) = lease {
        let spec = lease.spec.clone().unwrap_or_default();
        text.row(0, &["Lease:"]);
        text.kv(
            1,
            "HolderIdentity",
            spec.holder_identity.unwrap_or_else(|| "<unset>".to_owned()),
        );
        text.kv(
            1,
            "AcquireTime",
            time_text(spec.acquire_time.map(|t| t.0.to_string()).as_deref()),
        );
        text.kv(
            1,
            "RenewTime",
            time_text(spec.renew_time.map(|t| t.0.to_string()).as_deref()),
        );
    }
    conditions(
        text,
        o,
        &[
            ("Type", "type"),
            ("Status", "status"),
            ("LastHeartbeatTime", "lastHeartbeatTime"),
            ("LastTransitionTime", "lastTransitionTime"),
            ("Reason", "reason"),
            ("Message", "message"),
        ],
        true,
    );
    text.row(0, &["Addresses:"]);
    for a in at(o, "status.addresses")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default()
    {
        text.kv(
            1,
            a["type"].as_str().unwrap_or(""),
            a["address"].as_str().unwrap_or(""),
        );
    }
    for (key, field) in [
        ("Capacity", "status.capacity"),
        ("Allocatable", "status.allocatable"),
    ] {
        if let Some(map) = at(o, field).and_then(Value::as_object) {
            text.row(0, &[&format!("{key}:")]);
            for (k, v) in map {
                text.kv(1, k, scalar_text(v));
            }
        }
    }
    if let Some(info) = at(o, "status.nodeInfo") {
        text.row(0, &["System Info:"]);
        for (label, field) in [
            ("Machine ID", "machineID"),
            ("System UUID", "systemUUID"),
            ("Boot ID", "bootID"),
            ("Kernel Version", "kernelVersion"),
            ("OS Image", "osImage"),
            ("Operating System", "operatingSystem"),
            ("Architecture", "architecture"),
            ("Container Runtime Version", "containerRuntimeVersion"),
            ("Kubelet Version", "kubeletVersion"),
        ] {
            text.kv(1, label, info[field].as_str().unwrap_or(""));
        }
    }
    text.kv(0, "PodCIDR", or_none(str_at(o, "spec.podCIDR")));
    let cidrs: Vec<String> = at(o, "spec.podCIDRs")
        .and_then(Value::as_array)
        .map(|c| c.iter().map(scalar_text).collect())
        .unwrap_or_default();
    text.kv(
        0,
        "PodCIDRs",
        if cidrs.is_empty() {
            "<none>".to_owned()
        } else {
            cidrs.join(",")
        },
    );
    let running: Vec<&Pod> = pods
        .iter()
        .filter(|p| {
            !matches!(
                p.status.as_ref().and_then(|s| s.phase.as_deref()),
                Some("Succeeded" | "Failed")
            )
        })
        .collect();
    text.kv(
        0,
        "Non-terminated Pods",
        format!("({} in total)", running.len()),
    );
    if !running.is_empty() {
        text.row(
            1,
            &[
                "Namespace",
                "Name",
                "CPU Requests",
                "Memory Requests",
                "Age",
            ],
        );
        text.row(
            1,
            &[
                "---------",
                "----",
                "------------",
                "---------------",
                "---",
            ],
        );
        let now = Timestamp::now();
        for p in running {
            let sum = |resource: &str| {
                let parts: Vec<String> = p
                    .spec
                    .as_ref()
                    .map(|s| s.containers.as_slice())
                    .unwrap_or_default()
                    .iter()
                    .filter_map(|c| {
                        c.resources
                            .as_ref()?
                            .requests
                            .as_ref()?
                            .get(resource)
                            .map(|q| q.0.clone())
                    })
                    .collect();
                if parts.is_empty() {
                    "0".to_owned()
                } else {
                    parts.join("+")
                }
            };
            let created = p
                .metadata
                .creation_timestamp
                .as_ref()
                .map(|t| t.0.to_string());
            text.row(
                1,
                &[
                    p.metadata.namespace.as_deref().unwrap_or(""),
                    p.metadata.name.as_deref().unwrap_or(""),
                    &sum("cpu"),
                    &sum("memory"),
                    &age(created.as_deref(), now),
                ],
            );
        }
    }
}
