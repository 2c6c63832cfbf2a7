//! Strategic merge patch (what `kubectl apply` and `kubectl patch` send by default), and the
//! schema facts it shares with server-side apply ([`crate::fieldmanager`]).
//!
//! A strategic merge patch is a JSON merge patch in which some lists merge element by element
//! on a key (containers by `name`, container ports by `containerPort`, ...) instead of being
//! replaced, plus directives: `$patch` (`replace`, `delete`, `merge`), `$retainKeys`,
//! `$setElementOrder/<list>` and `$deleteFromPrimitiveList/<list>`. Upstream reads the merge
//! keys from struct tags; here they come from [`list_schema`], one table keyed by field path
//! that holds both tags of each list: `patchStrategy`/`patchMergeKey` (strategic merge) and
//! `listType`/`listMapKey` (server-side apply), plus [`is_atomic_object`] for the structs and
//! maps upstream marks `structType=atomic` / `mapType=atomic` and [`is_map_field`] for the
//! maps among objects.

use serde_json::{Map, Value};

/// How a list field merges in a strategic merge patch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListStrategy {
    /// Elements are objects merged by this key.
    MergeKey(&'static str),
    /// Elements are primitives; the patch's are added to the original's.
    MergePrimitives,
    /// The patch's list replaces the original (the default).
    Replace,
}

/// One key field of an associative list (`listMapKey`), with the value an element that
/// omits it is identified by (its schema default, as upstream's OpenAPI `default`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MapKey {
    pub name: &'static str,
    pub default: Option<&'static str>,
}

/// How server-side apply sees a list (`x-kubernetes-list-type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListType {
    /// Owned and replaced whole (the default for lists without a type).
    Atomic,
    /// A set of primitives, each owned on its own (`v:` elements).
    Set,
    /// An associative list: objects identified by these keys (`k:` elements).
    Map(&'static [MapKey]),
}

/// Both tags of one list field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListSchema {
    /// `patchStrategy`/`patchMergeKey`.
    pub patch: ListStrategy,
    /// `listType`/`listMapKey`.
    pub apply: ListType,
}

const fn key(name: &'static str) -> MapKey {
    MapKey {
        name,
        default: None,
    }
}

const NAME: &[MapKey] = &[key("name")];
const TYPE: &[MapKey] = &[key("type")];
const IP: &[MapKey] = &[key("ip")];
const UID: &[MapKey] = &[key("uid")];
const MOUNT_PATH: &[MapKey] = &[key("mountPath")];
const DEVICE_PATH: &[MapKey] = &[key("devicePath")];
const TOPOLOGY: &[MapKey] = &[key("topologyKey"), key("whenUnsatisfiable")];
const PROTOCOL_TCP: MapKey = MapKey {
    name: "protocol",
    default: Some("TCP"),
};
const CONTAINER_PORT: &[MapKey] = &[key("containerPort"), PROTOCOL_TCP];
const SERVICE_PORT: &[MapKey] = &[key("port"), PROTOCOL_TCP];

/// The tags of the list at `path` (field names from the object's root, list indices
/// omitted), as upstream's Go types declare them.
pub fn list_schema(path: &[&str]) -> ListSchema {
    use ListStrategy::{MergeKey, MergePrimitives, Replace};
    let both = |patch, apply| ListSchema { patch, apply };
    let Some((last, parents)) = path.split_last() else {
        return both(Replace, ListType::Atomic);
    };
    let in_container = parents
        .iter()
        .any(|p| matches!(*p, "containers" | "initContainers" | "ephemeralContainers"));
    match *last {
        "containers" | "initContainers" | "ephemeralContainers" => {
            both(MergeKey("name"), ListType::Map(NAME))
        }
        "env" | "volumes" | "imagePullSecrets" | "resourceClaims" | "schedulingGates" => {
            both(MergeKey("name"), ListType::Map(NAME))
        }
        "volumeMounts" => both(MergeKey("mountPath"), ListType::Map(MOUNT_PATH)),
        "volumeDevices" => both(MergeKey("devicePath"), ListType::Map(DEVICE_PATH)),
        "hostAliases" => both(MergeKey("ip"), ListType::Map(IP)),
        "topologySpreadConstraints" => both(MergeKey("topologyKey"), ListType::Map(TOPOLOGY)),
        "conditions" => both(MergeKey("type"), ListType::Map(TYPE)),
        "ownerReferences" => both(MergeKey("uid"), ListType::Map(UID)),
        "ports" if in_container => both(MergeKey("containerPort"), ListType::Map(CONTAINER_PORT)),
        "ports" if parents == ["spec"] => both(MergeKey("port"), ListType::Map(SERVICE_PORT)),
        "addresses" if parents == ["status"] => both(MergeKey("type"), ListType::Map(TYPE)),
        "podIPs" if parents == ["status"] => both(MergeKey("ip"), ListType::Map(IP)),
        "hostIPs" if parents == ["status"] => both(MergeKey("ip"), ListType::Atomic),
        "podCIDRs" if parents == ["spec"] => both(MergePrimitives, ListType::Set),
        "secrets" if parents.is_empty() => both(MergeKey("name"), ListType::Map(NAME)),
        "finalizers" if parents == ["metadata"] => both(MergePrimitives, ListType::Set),
        _ => both(Replace, ListType::Atomic),
    }
}

/// The strategic merge strategy of the list at `path` (see [`list_schema`]).
pub fn list_strategy(path: &[&str]) -> ListStrategy {
    list_schema(path).patch
}

/// Whether a field named `name` holds a map (`map[string]...` in Go) rather than a struct:
/// labels, annotations, ConfigMap and Secret data, resource quantities, parameters.
pub fn is_map_field(name: &str) -> bool {
    matches!(
        name,
        "labels"
            | "annotations"
            | "data"
            | "binaryData"
            | "stringData"
            | "limits"
            | "requests"
            | "capacity"
            | "allocatable"
            | "hard"
            | "used"
            | "parameters"
    )
}

/// Whether the object at `path` is owned and replaced whole by server-side apply: label
/// selectors (`structType=atomic`), the atomic maps (`selector` of a Service,
/// `nodeSelector`) and the reference structs upstream marks atomic.
pub fn is_atomic_object(path: &[&str]) -> bool {
    let Some((last, parents)) = path.split_last() else {
        return false;
    };
    match *last {
        "selector" | "nodeSelector" | "labelSelector" | "podSelector" | "namespaceSelector"
        | "objectSelector" | "configMapKeyRef" | "secretKeyRef" | "fieldRef"
        | "resourceFieldRef" | "fileKeyRef" | "claimRef" | "dataSource" | "involvedObject"
        | "regarding" | "related" | "targetRef" | "secretRef" => true,
        "requiredDuringSchedulingIgnoredDuringExecution" => parents.last() == Some(&"nodeAffinity"),
        _ => false,
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

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
    fn list_tags_table() {
        // (path, strategic merge, server-side apply)
        let table: Vec<(&[&str], ListStrategy, ListType)> = vec![
            (
                &["spec", "template", "spec", "containers"],
                ListStrategy::MergeKey("name"),
                ListType::Map(NAME),
            ),
            (
                &["spec", "containers", "ports"],
                ListStrategy::MergeKey("containerPort"),
                ListType::Map(CONTAINER_PORT),
            ),
            (
                &["spec", "ports"],
                ListStrategy::MergeKey("port"),
                ListType::Map(SERVICE_PORT),
            ),
            (
                &["status", "hostIPs"],
                ListStrategy::MergeKey("ip"),
                ListType::Atomic,
            ),
            (
                &["metadata", "finalizers"],
                ListStrategy::MergePrimitives,
                ListType::Set,
            ),
            (
                &["spec", "containers", "args"],
                ListStrategy::Replace,
                ListType::Atomic,
            ),
            (
                &["spec", "tolerations"],
                ListStrategy::Replace,
                ListType::Atomic,
            ),
            (&["subsets"], ListStrategy::Replace, ListType::Atomic),
        ];
        for (path, patch, apply) in table {
            assert_eq!(list_schema(path), ListSchema { patch, apply }, "{path:?}");
        }
        assert!(is_atomic_object(&["spec", "selector"]));
        assert!(is_atomic_object(&[
            "spec",
            "affinity",
            "nodeAffinity",
            "requiredDuringSchedulingIgnoredDuringExecution"
        ]));
        assert!(!is_atomic_object(&["metadata", "labels"]));
    }
}
