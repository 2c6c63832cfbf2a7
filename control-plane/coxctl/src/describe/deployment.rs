//! Deployments: replicas, strategy, template, conditions, old and new ReplicaSets.

use serde_json::Value;

use super::pod::pod_template;
use super::text::{
    Text, annotation_lines, conditions, map_lines, scalar_text, selector_text, time_text,
};
use crate::output::{at, str_at};
use crate::rollout::{owned_replicasets, revision_of, without_hash};

pub fn describe_deployment(text: &mut Text, o: &Value, replicasets: &[Value]) {
    text.kv(0, "Name", str_at(o, "metadata.name").unwrap_or(""));
    text.kv(
        0,
        "Namespace",
        str_at(o, "metadata.namespace").unwrap_or(""),
    );
    text.kv(
        0,
        "CreationTimestamp",
        time_text(str_at(o, "metadata.creationTimestamp")),
    );
    text.kv_lines(0, "Labels", &map_lines(at(o, "metadata.labels")));
    text.kv_lines(
        0,
        "Annotations",
        &annotation_lines(at(o, "metadata.annotations")),
    );
    text.kv(0, "Selector", selector_text(at(o, "spec.selector")));
    let n = |path: &str| at(o, path).and_then(Value::as_i64).unwrap_or(0);
    text.kv(
        0,
        "Replicas",
        format!(
            "{} desired | {} updated | {} total | {} available | {} unavailable",
            n("spec.replicas"),
            n("status.updatedReplicas"),
            n("status.replicas"),
            n("status.availableReplicas"),
            n("status.unavailableReplicas")
        ),
    );
    let strategy = str_at(o, "spec.strategy.type").unwrap_or("RollingUpdate");
    text.kv(0, "StrategyType", strategy);
    text.kv(0, "MinReadySeconds", n("spec.minReadySeconds"));
    if strategy == "RollingUpdate" {
        let ru = at(o, "spec.strategy.rollingUpdate");
        let field = |k: &str| {
            ru.and_then(|r| r.get(k))
                .map(scalar_text)
                .unwrap_or_else(|| "25%".to_owned())
        };
        text.kv(
            0,
            "RollingUpdateStrategy",
            format!(
                "{} max unavailable, {} max surge",
                field("maxUnavailable"),
                field("maxSurge")
            ),
        );
    }
    pod_template(text, at(o, "spec.template").unwrap_or(&Value::Null), 0);
    conditions(
        text,
        o,
        &[("Type", "type"), ("Status", "status"), ("Reason", "reason")],
        true,
    );
    // The new ReplicaSet is the one whose template is the Deployment's (ignoring
    // pod-template-hash), as the Deployment controller decides; the others are old.
    let template = without_hash(at(o, "spec.template").unwrap_or(&Value::Null));
    let mut owned = owned_replicasets(o, replicasets);
    owned.sort_by_key(|rs| revision_of(rs).unwrap_or(0));
    let rs_text = |rs: &Value| {
        format!(
            "{} ({}/{} replicas created)",
            str_at(rs, "metadata.name").unwrap_or(""),
            at(rs, "status.replicas")
                .and_then(Value::as_i64)
                .unwrap_or(0),
            at(rs, "spec.replicas").and_then(Value::as_i64).unwrap_or(0)
        )
    };
    let (new, old): (Vec<&Value>, Vec<&Value>) = owned.into_iter().partition(|rs| {
        without_hash(rs.pointer("/spec/template").unwrap_or(&Value::Null)) == template
    });
    let old: Vec<String> = old.into_iter().map(rs_text).collect();
    text.kv(
        0,
        "OldReplicaSets",
        if old.is_empty() {
            "<none>".to_owned()
        } else {
            old.join(", ")
        },
    );
    text.kv(
        0,
        "NewReplicaSet",
        new.last()
            .map(|rs| rs_text(rs))
            .unwrap_or_else(|| "<none>".to_owned()),
    );
}
