//! Accessors for objects held as JSON values: metadata fields, resourceVersion, timestamps.

use serde_json::{Map, Value, json};

/// `metadata` of an object, if it is a JSON object.
pub fn meta(obj: &Value) -> Option<&Map<String, Value>> {
    obj.get("metadata")?.as_object()
}

/// `metadata` of an object, created if missing (the object must be a JSON object).
pub fn meta_mut(obj: &mut Value) -> &mut Map<String, Value> {
    if !obj.get("metadata").is_some_and(Value::is_object) {
        obj["metadata"] = json!({});
    }
    obj["metadata"]
        .as_object_mut()
        .expect("metadata was just made an object")
}

/// A string field of `metadata` (`""` if absent).
pub fn meta_str<'a>(obj: &'a Value, field: &str) -> &'a str {
    meta(obj)
        .and_then(|m| m.get(field))
        .and_then(Value::as_str)
        .unwrap_or("")
}

/// `metadata.name`.
pub fn name(obj: &Value) -> &str {
    meta_str(obj, "name")
}

/// `metadata.namespace`.
pub fn namespace(obj: &Value) -> &str {
    meta_str(obj, "namespace")
}

/// A string-to-string map of `metadata` (labels, annotations), empty if absent.
pub fn meta_map<'a>(obj: &'a Value, field: &str) -> impl Iterator<Item = (&'a str, &'a str)> {
    meta(obj)
        .and_then(|m| m.get(field))
        .and_then(Value::as_object)
        .into_iter()
        .flat_map(|m| m.iter())
        .filter_map(|(k, v)| Some((k.as_str(), v.as_str()?)))
}

/// One label's value.
pub fn label<'a>(obj: &'a Value, key: &str) -> Option<&'a str> {
    meta(obj)?.get("labels")?.get(key)?.as_str()
}

/// Sets `metadata.resourceVersion` to a store revision.
pub fn set_resource_version(obj: &mut Value, revision: i64) {
    if obj.is_object() {
        meta_mut(obj).insert("resourceVersion".into(), json!(revision.to_string()));
    }
}

/// `metadata.finalizers`.
pub fn finalizers(obj: &Value) -> Vec<String> {
    meta(obj)
        .and_then(|m| m.get("finalizers"))
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// Whether the object is being deleted (`metadata.deletionTimestamp` is set).
pub fn is_terminating(obj: &Value) -> bool {
    meta(obj).is_some_and(|m| m.get("deletionTimestamp").is_some_and(|v| !v.is_null()))
}

/// The object with `metadata` and `status` removed: what a spec change is measured on.
pub fn without_meta_and_status(obj: &Value) -> Value {
    let mut v = obj.clone();
    if let Some(m) = v.as_object_mut() {
        m.remove("metadata");
        m.remove("status");
    }
    v
}

/// Reads a value at a dotted path (`spec.nodeName`).
pub fn at_path<'a>(obj: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.').try_fold(obj, |v, part| v.get(part))
}

/// The current time as an RFC 3339 timestamp with second precision, as Kubernetes writes.
pub fn now_rfc3339() -> String {
    format_time(jiff::Timestamp::now())
}

/// Formats a timestamp as Kubernetes does (`2024-01-02T03:04:05Z`).
pub fn format_time(ts: jiff::Timestamp) -> String {
    ts.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// Parses an RFC 3339 timestamp.
pub fn parse_time(s: &str) -> Option<jiff::Timestamp> {
    s.parse().ok()
}

/// The apiVersion string of a group and version (`v1`, `apps/v1`).
pub fn api_version(group: &str, version: &str) -> String {
    if group.is_empty() {
        version.to_owned()
    } else {
        format!("{group}/{version}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_accessors() {
        let mut o = json!({"metadata": {"name": "a", "labels": {"x": "1"}}, "spec": {"n": 1}});
        assert_eq!(name(&o), "a");
        assert_eq!(namespace(&o), "");
        assert_eq!(label(&o, "x"), Some("1"));
        set_resource_version(&mut o, 42);
        assert_eq!(o["metadata"]["resourceVersion"], "42");
        assert_eq!(at_path(&o, "spec.n"), Some(&json!(1)));
        assert!(!is_terminating(&o));
        assert_eq!(without_meta_and_status(&o), json!({"spec": {"n": 1}}));
    }

    #[test]
    fn time_round_trips() {
        let t = parse_time("2024-01-02T03:04:05Z").unwrap();
        assert_eq!(format_time(t), "2024-01-02T03:04:05Z");
    }
}
