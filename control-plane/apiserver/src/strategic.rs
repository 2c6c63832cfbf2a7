//! Strategic merge patch (what `kubectl apply` and `kubectl patch` send by default) and the
//! managed-fields sets of server-side apply.
//!
//! A strategic merge patch is a JSON merge patch in which some lists merge element by element
//! on a key (containers by `name`, container ports by `containerPort`, ...) instead of being
//! replaced, plus directives: `$patch` (`replace`, `delete`, `merge`), `$retainKeys`,
//! `$setElementOrder/<list>` and `$deleteFromPrimitiveList/<list>`. Upstream reads the merge
//! keys from struct tags; here they come from [`list_strategy`], a table keyed by field path.

use serde_json::{Map, Value, json};

/// How a list field merges.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListStrategy {
    /// Elements are objects merged by this key.
    MergeKey(&'static str),
    /// Elements are primitives; the patch's are added to the original's.
    MergePrimitives,
    /// The patch's list replaces the original (the default).
    Replace,
}

/// The merge strategy of the list at `path` (field names from the object's root, list
/// indices omitted), as upstream's `patchStrategy`/`patchMergeKey` tags say.
pub fn list_strategy(path: &[&str]) -> ListStrategy {
    let Some((last, parents)) = path.split_last() else {
        return ListStrategy::Replace;
    };
    let in_container = parents
        .iter()
        .any(|p| matches!(*p, "containers" | "initContainers" | "ephemeralContainers"));
    match *last {
        "containers" | "initContainers" | "ephemeralContainers" => ListStrategy::MergeKey("name"),
        "env" | "volumes" | "imagePullSecrets" | "resourceClaims" | "schedulingGates" => {
            ListStrategy::MergeKey("name")
        }
        "volumeMounts" => ListStrategy::MergeKey("mountPath"),
        "volumeDevices" => ListStrategy::MergeKey("devicePath"),
        "hostAliases" => ListStrategy::MergeKey("ip"),
        "topologySpreadConstraints" => ListStrategy::MergeKey("topologyKey"),
        "conditions" => ListStrategy::MergeKey("type"),
        "ownerReferences" => ListStrategy::MergeKey("uid"),
        "ports" if in_container => ListStrategy::MergeKey("containerPort"),
        "ports" if parents == ["spec"] => ListStrategy::MergeKey("port"),
        "addresses" if parents == ["status"] => ListStrategy::MergeKey("type"),
        "finalizers" if parents == ["metadata"] => ListStrategy::MergePrimitives,
        _ => ListStrategy::Replace,
    }
}

/// Applies a strategic merge patch to `original`.
pub fn apply(original: &Value, patch: &Value) -> Result<Value, String> {
    if !patch.is_object() {
        return Err("a strategic merge patch must be a JSON object".to_owned());
    }
    let mut out = original.clone();
    let mut path = Vec::new();
    merge_value(&mut out, patch, &mut path)?;
    Ok(out)
}

fn merge_value(orig: &mut Value, patch: &Value, path: &mut Vec<String>) -> Result<(), String> {
    match patch {
        Value::Object(pm) => {
            match pm.get("$patch").and_then(Value::as_str) {
                Some("replace") => {
                    let mut replaced = pm.clone();
                    strip_directives(&mut replaced);
                    *orig = Value::Object(replaced);
                    return Ok(());
                }
                Some("delete") => {
                    *orig = Value::Null;
                    return Ok(());
                }
                Some("merge") | None => {}
                Some(other) => return Err(format!("unknown patch type {other:?}")),
            }
            if !orig.is_object() {
                *orig = Value::Object(Map::new());
            }
            let om = orig.as_object_mut().expect("made an object above");
            merge_map(om, pm, path)
        }
        other => {
            *orig = other.clone();
            Ok(())
        }
    }
}

fn strip_directives(m: &mut Map<String, Value>) {
    m.retain(|k, _| !k.starts_with('$'));
}

fn merge_map(
    om: &mut Map<String, Value>,
    pm: &Map<String, Value>,
    path: &mut Vec<String>,
) -> Result<(), String> {
    for (k, pv) in pm {
        if k.starts_with('$') {
            continue;
        }
        path.push(k.clone());
        let result = merge_field(om, k, pv, path);
        path.pop();
        result?;
    }
    for (k, pv) in pm {
        if let Some(field) = k.strip_prefix("$deleteFromPrimitiveList/") {
            let remove: Vec<&Value> = pv.as_array().into_iter().flatten().collect();
            if let Some(list) = om.get_mut(field).and_then(Value::as_array_mut) {
                list.retain(|v| !remove.contains(&v));
            }
        }
    }
    for (k, pv) in pm {
        if let Some(field) = k.strip_prefix("$setElementOrder/") {
            path.push(field.to_owned());
            let strategy = list_strategy(&path.iter().map(String::as_str).collect::<Vec<_>>());
            path.pop();
            if let (Some(order), Some(list)) = (
                pv.as_array(),
                om.get_mut(field).and_then(Value::as_array_mut),
            ) {
                reorder(list, order, strategy);
            }
        }
    }
    if let Some(keep) = pm.get("$retainKeys").and_then(Value::as_array) {
        let keep: Vec<&str> = keep.iter().filter_map(Value::as_str).collect();
        om.retain(|k, _| keep.contains(&k.as_str()));
    }
    Ok(())
}

fn merge_field(
    om: &mut Map<String, Value>,
    k: &str,
    pv: &Value,
    path: &mut Vec<String>,
) -> Result<(), String> {
    match pv {
        Value::Null => {
            om.remove(k);
        }
        Value::Object(_) => {
            let mut current = om.remove(k).unwrap_or(Value::Null);
            merge_value(&mut current, pv, path)?;
            if !current.is_null() {
                om.insert(k.to_owned(), current);
            }
        }
        Value::Array(items) => {
            let strategy = list_strategy(&path.iter().map(String::as_str).collect::<Vec<_>>());
            let replace_all = items
                .iter()
                .any(|i| i.get("$patch").and_then(Value::as_str) == Some("replace"));
            let merged = match (strategy, om.remove(k)) {
                (_, _) if replace_all => items
                    .iter()
                    .filter(|i| i.get("$patch").is_none())
                    .cloned()
                    .collect(),
                (ListStrategy::MergeKey(key), Some(Value::Array(orig))) => {
                    merge_keyed(orig, items, key, path)?
                }
                (ListStrategy::MergeKey(_), _) => items
                    .iter()
                    .filter(|i| i.get("$patch").is_none())
                    .map(|i| {
                        let mut i = i.clone();
                        if let Some(m) = i.as_object_mut() {
                            strip_directives(m);
                        }
                        i
                    })
                    .collect(),
                (ListStrategy::MergePrimitives, Some(Value::Array(mut orig))) => {
                    for item in items {
                        if !orig.contains(item) {
                            orig.push(item.clone());
                        }
                    }
                    orig
                }
                _ => items.clone(),
            };
            om.insert(k.to_owned(), Value::Array(merged));
        }
        other => {
            om.insert(k.to_owned(), other.clone());
        }
    }
    Ok(())
}

fn merge_keyed(
    mut orig: Vec<Value>,
    items: &[Value],
    key: &str,
    path: &mut Vec<String>,
) -> Result<Vec<Value>, String> {
    for item in items {
        let Some(id) = item.get(key) else {
            return Err(format!(
                "map: {item} does not contain declared merge key: {key} (at {})",
                path.join(".")
            ));
        };
        let pos = orig.iter().position(|o| o.get(key) == Some(id));
        let directive = item.get("$patch").and_then(Value::as_str);
        match (directive, pos) {
            (Some("delete"), Some(i)) => {
                orig.remove(i);
            }
            (Some("delete"), None) => {}
            (_, Some(i)) => merge_value(&mut orig[i], item, path)?,
            (_, None) => {
                let mut fresh = Value::Null;
                merge_value(&mut fresh, item, path)?;
                orig.push(fresh);
            }
        }
    }
    Ok(orig)
}

/// Orders `list` as `order` says (elements it names first, in its order; the rest after).
fn reorder(list: &mut Vec<Value>, order: &[Value], strategy: ListStrategy) {
    let rank = |v: &Value| -> usize {
        order
            .iter()
            .position(|o| match strategy {
                ListStrategy::MergeKey(key) => o.get(key).is_some() && o.get(key) == v.get(key),
                _ => o == v,
            })
            .unwrap_or(usize::MAX)
    };
    let mut indexed: Vec<(usize, usize, Value)> = list
        .drain(..)
        .enumerate()
        .map(|(i, v)| (rank(&v), i, v))
        .collect();
    indexed.sort_by_key(|(r, i, _)| (*r, *i));
    list.extend(indexed.into_iter().map(|(_, _, v)| v));
}

/// The `fieldsV1` set of the fields an applied configuration sets, for `managedFields`.
pub fn fields_v1(applied: &Value) -> Value {
    let mut root = Map::new();
    if let Some(m) = applied.as_object() {
        for (k, v) in m {
            if k == "apiVersion" || k == "kind" {
                continue;
            }
            root.insert(format!("f:{k}"), fields_of(v, &mut vec![k.clone()]));
        }
    }
    Value::Object(root)
}

fn fields_of(v: &Value, path: &mut Vec<String>) -> Value {
    match v {
        Value::Object(m) => {
            let mut out = Map::new();
            for (k, v) in m {
                path.push(k.clone());
                out.insert(format!("f:{k}"), fields_of(v, path));
                path.pop();
            }
            Value::Object(out)
        }
        Value::Array(items) => {
            let strategy = list_strategy(&path.iter().map(String::as_str).collect::<Vec<_>>());
            let mut out = Map::new();
            match strategy {
                ListStrategy::MergeKey(key) => {
                    for item in items {
                        if let Some(id) = item.get(key) {
                            let mut entry = fields_of(item, path);
                            if let Some(m) = entry.as_object_mut() {
                                m.insert(".".into(), json!({}));
                            }
                            out.insert(format!("k:{}", json!({ key: id })), entry);
                        }
                    }
                }
                ListStrategy::MergePrimitives => {
                    for item in items {
                        out.insert(format!("v:{item}"), json!({}));
                    }
                }
                ListStrategy::Replace => {}
            }
            Value::Object(out)
        }
        _ => json!({}),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deployment() -> Value {
        json!({
            "metadata": {"name": "web", "labels": {"app": "web"}, "finalizers": ["a"]},
            "spec": {
                "replicas": 1,
                "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "25%"}},
                "template": {"spec": {"containers": [
                    {"name": "app", "image": "nginx:1", "ports": [{"containerPort": 80, "protocol": "TCP"}],
                     "env": [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}]},
                    {"name": "sidecar", "image": "envoy:1"}
                ]}}
            }
        })
    }

    #[test]
    fn strategic_merge_table() {
        // (patch, path to check, expected value there)
        let table: Vec<(Value, &str, Value)> = vec![
            // Containers merge by name: the image changes, the other container and fields stay.
            (
                json!({"spec": {"template": {"spec": {"containers": [{"name": "app", "image": "nginx:2"}]}}}}),
                "/spec/template/spec/containers",
                json!([
                    {"name": "app", "image": "nginx:2", "ports": [{"containerPort": 80, "protocol": "TCP"}],
                     "env": [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}]},
                    {"name": "sidecar", "image": "envoy:1"}
                ]),
            ),
            // A new container is appended.
            (
                json!({"spec": {"template": {"spec": {"containers": [{"name": "new", "image": "x"}]}}}}),
                "/spec/template/spec/containers/2/name",
                json!("new"),
            ),
            // $patch: delete removes one element by key.
            (
                json!({"spec": {"template": {"spec": {"containers": [{"name": "sidecar", "$patch": "delete"}]}}}}),
                "/spec/template/spec/containers/1",
                Value::Null,
            ),
            // env merges by name; null deletes a field.
            (
                json!({"spec": {"template": {"spec": {"containers": [{"name": "app", "env": [{"name": "B", "value": "3"}]}]}}}}),
                "/spec/template/spec/containers/0/env",
                json!([{"name": "A", "value": "1"}, {"name": "B", "value": "3"}]),
            ),
            (
                json!({"metadata": {"labels": {"app": null}}}),
                "/metadata/labels",
                json!({}),
            ),
            // Ports merge by containerPort.
            (
                json!({"spec": {"template": {"spec": {"containers": [{"name": "app", "ports": [{"containerPort": 443}]}]}}}}),
                "/spec/template/spec/containers/0/ports",
                json!([{"containerPort": 80, "protocol": "TCP"}, {"containerPort": 443}]),
            ),
            // Finalizers merge as a set; $deleteFromPrimitiveList removes.
            (
                json!({"metadata": {"finalizers": ["b", "a"]}}),
                "/metadata/finalizers",
                json!(["a", "b"]),
            ),
            (
                json!({"metadata": {"$deleteFromPrimitiveList/finalizers": ["a"]}}),
                "/metadata/finalizers",
                json!([]),
            ),
            // $retainKeys drops what is not listed (the strategy union).
            (
                json!({"spec": {"strategy": {"$retainKeys": ["type"], "type": "Recreate"}}}),
                "/spec/strategy",
                json!({"type": "Recreate"}),
            ),
            // $setElementOrder reorders.
            (
                json!({"spec": {"template": {"spec": {"$setElementOrder/containers": [{"name": "sidecar"}, {"name": "app"}]}}}}),
                "/spec/template/spec/containers/0/name",
                json!("sidecar"),
            ),
            // $patch: replace on a map.
            (
                json!({"spec": {"strategy": {"$patch": "replace", "type": "Recreate"}}}),
                "/spec/strategy",
                json!({"type": "Recreate"}),
            ),
        ];
        for (patch, path, want) in table {
            let out = apply(&deployment(), &patch).unwrap();
            assert_eq!(
                out.pointer(path).cloned().unwrap_or(Value::Null),
                want,
                "patch {patch}"
            );
        }
    }

    #[test]
    fn rejects_items_without_merge_key() {
        let patch = json!({"spec": {"template": {"spec": {"containers": [{"image": "x"}]}}}});
        assert!(apply(&deployment(), &patch).is_err());
        assert!(apply(&deployment(), &json!([1])).is_err());
    }

    #[test]
    fn service_ports_merge_by_port() {
        let svc = json!({"spec": {"ports": [{"port": 80, "name": "http"}, {"port": 443, "name": "https"}]}});
        let out = apply(
            &svc,
            &json!({"spec": {"ports": [{"port": 443, "targetPort": 8443}]}}),
        )
        .unwrap();
        assert_eq!(out["spec"]["ports"][1]["targetPort"], 8443);
        assert_eq!(out["spec"]["ports"].as_array().unwrap().len(), 2);
    }

    #[test]
    fn managed_fields_sets() {
        let applied = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}, "data": {"a": "1"}});
        assert_eq!(
            fields_v1(&applied),
            json!({"f:metadata": {"f:name": {}}, "f:data": {"f:a": {}}})
        );
        let pod = json!({"spec": {"containers": [{"name": "c", "image": "i"}]}});
        let f = fields_v1(&pod);
        assert!(
            f["f:spec"]["f:containers"]
                .get("k:{\"name\":\"c\"}")
                .is_some()
        );
    }
}
