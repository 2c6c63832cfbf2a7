//! LimitRange and ResourceQuota defaults: upstream's `SetDefaults_LimitRangeItem` (a
//! Container limit's default falls back to its max, its default request to its default, then
//! to its min) and every amount in its canonical form (`1000m` is stored as `1`, as
//! upstream's serialization of a Quantity does).

use coxswain_resources::Quantity;
use serde_json::{Map, Value};

/// Rewrites the quantities of the map at `parent[key]` in their canonical form (leaving what
/// does not parse for validation to report).
pub(crate) fn canonical_amounts(parent: &mut Value, key: &str) {
    if let Some(map) = parent.get_mut(key).and_then(Value::as_object_mut) {
        for value in map.values_mut() {
            if let Some(canonical) = value.as_str().and_then(Quantity::canonical) {
                *value = Value::String(canonical);
            }
        }
    }
}

/// LimitRanges: Container limits get their default and default request filled in.
pub(crate) fn limit_range(obj: &mut Value) {
    let Some(limits) = obj
        .get_mut("spec")
        .and_then(|s| s.get_mut("limits"))
        .and_then(Value::as_array_mut)
    else {
        return;
    };
    for limit in limits {
        for key in ["max", "min", "default", "defaultRequest", "maxLimitRequestRatio"] {
            canonical_amounts(limit, key);
        }
        if limit.get("type").and_then(Value::as_str) != Some("Container") {
            continue;
        }
        let map = |limit: &Value, key: &str| -> Map<String, Value> {
            limit.get(key).and_then(Value::as_object).cloned().unwrap_or_default()
        };
        let mut default = map(limit, "default");
        for (name, q) in map(limit, "max") {
            default.entry(name).or_insert(q);
        }
        let mut request = map(limit, "defaultRequest");
        for (name, q) in default.iter().chain(map(limit, "min").iter()) {
            request.entry(name.clone()).or_insert(q.clone());
        }
        limit["default"] = Value::Object(default);
        limit["defaultRequest"] = Value::Object(request);
    }
}

/// ResourceQuotas: amounts in their canonical form.
pub(crate) fn resource_quota(obj: &mut Value) {
    if let Some(spec) = obj.get_mut("spec") {
        canonical_amounts(spec, "hard");
    }
    if let Some(status) = obj.get_mut("status") {
        canonical_amounts(status, "hard");
        canonical_amounts(status, "used");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn container_limits_default_from_max_and_min() {
        let mut lr = json!({"spec": {"limits": [
            {"type": "Container", "max": {"cpu": "1000m", "memory": "1Gi"}, "min": {"cpu": "100m", "ephemeral-storage": "1Gi"}, "default": {"memory": "512Mi"}},
            {"type": "Pod", "max": {"cpu": "2"}},
        ]}});
        limit_range(&mut lr);
        let c = &lr["spec"]["limits"][0];
        assert_eq!(c["max"]["cpu"], "1", "canonical");
        assert_eq!(c["default"], json!({"cpu": "1", "memory": "512Mi"}));
        assert_eq!(c["defaultRequest"], json!({"cpu": "1", "memory": "512Mi", "ephemeral-storage": "1Gi"}));
        assert!(lr["spec"]["limits"][1].get("default").is_none(), "only Container limits");
        let again = lr.clone();
        limit_range(&mut lr);
        assert_eq!(lr, again, "idempotent");
        let mut q = json!({"spec": {"hard": {"requests.memory": "1024Mi", "pods": "x"}}});
        resource_quota(&mut q);
        assert_eq!(q["spec"]["hard"], json!({"requests.memory": "1Gi", "pods": "x"}));
    }
}
