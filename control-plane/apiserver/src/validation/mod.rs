//! Validation with field paths: metadata rules shared by every kind (names, labels,
//! annotations) and kind-specific checks, each reported as a [`Cause`].

mod kinds;
mod names;
mod quota;

use serde_json::Value;

use crate::registry::{NameRule, ResourceType};
use crate::status::Cause;

pub(crate) use kinds::{config_map, csr, namespace, none, pod, service, workload};
pub(crate) use quota::{limit_range, resource_quota};
pub(crate) use names::{
    dns1123_label, dns1123_subdomain, label_value, path_segment_name, qualified_name,
};

/// Annotations may hold at most this many bytes in total (upstream's limit).
const MAX_ANNOTATIONS_SIZE: usize = 256 * 1024;

/// Validates an object of `rt` (metadata and kind rules). `old` is the stored object on update.
pub(crate) fn validate(rt: &ResourceType, obj: &Value, old: Option<&Value>) -> Vec<Cause> {
    let mut causes = Vec::new();
    metadata(rt, obj, &mut causes);
    (rt.validate)(obj, old, &mut causes);
    causes
}

fn metadata(rt: &ResourceType, obj: &Value, causes: &mut Vec<Cause>) {
    let name = crate::object::name(obj);
    if name.is_empty() {
        causes.push(Cause {
            field: "metadata.name".into(),
            reason: "FieldValueRequired",
            message: "Required value: name or generateName is required".into(),
        });
    } else {
        let problem = match rt.name_rule {
            NameRule::Subdomain => dns1123_subdomain(name),
            NameRule::Label => dns1123_label(name),
            NameRule::PathSegment => path_segment_name(name),
        };
        if let Some(problem) = problem {
            causes.push(Cause::invalid("metadata.name", name, problem));
        }
    }
    let ns = crate::object::namespace(obj);
    if rt.namespaced
        && !ns.is_empty()
        && let Some(problem) = dns1123_label(ns)
    {
        causes.push(Cause::invalid("metadata.namespace", ns, problem));
    }
    for (key, value) in crate::object::meta_map(obj, "labels") {
        if let Some(problem) = qualified_name(key) {
            causes.push(Cause::invalid("metadata.labels", key, problem));
        }
        if let Some(problem) = label_value(value) {
            causes.push(Cause::invalid(
                format!("metadata.labels.{key}"),
                value,
                problem,
            ));
        }
    }
    let mut size = 0;
    for (key, value) in crate::object::meta_map(obj, "annotations") {
        if let Some(problem) = qualified_name(&key.to_lowercase()) {
            causes.push(Cause::invalid("metadata.annotations", key, problem));
        }
        size += key.len() + value.len();
    }
    if size > MAX_ANNOTATIONS_SIZE {
        causes.push(Cause {
            field: "metadata.annotations".into(),
            reason: "FieldValueTooLong",
            message: format!("Too long: may not be more than {MAX_ANNOTATIONS_SIZE} bytes"),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::Registry;
    use serde_json::json;

    #[test]
    fn metadata_rules() {
        let r = Registry::builtin();
        let cm = r.lookup("", "v1", "configmaps").unwrap();
        let ns = r.lookup("", "v1", "namespaces").unwrap();
        // (kind, object, expected cause fields)
        let table: Vec<(&ResourceType, Value, Vec<&str>)> = vec![
            (cm, json!({"metadata": {"name": "ok.name-1"}}), vec![]),
            (
                cm,
                json!({"metadata": {"name": "Bad_Name"}}),
                vec!["metadata.name"],
            ),
            (cm, json!({"metadata": {}}), vec!["metadata.name"]),
            (
                ns,
                json!({"metadata": {"name": "a.b"}}),
                vec!["metadata.name"],
            ),
            (
                cm,
                json!({"metadata": {"name": "x", "labels": {"a/b/c": "v", "ok": "bad value!"}}}),
                vec!["metadata.labels", "metadata.labels.ok"],
            ),
        ];
        for (rt, obj, want) in table {
            let got: Vec<String> = validate(rt, &obj, None)
                .into_iter()
                .map(|c| c.field)
                .collect();
            assert_eq!(got, want, "{obj}");
        }
    }
}
