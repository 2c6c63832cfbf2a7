//! Validation of what resource amounts are written in: containers' `resources`, LimitRanges
//! and ResourceQuotas, with upstream's rules and messages (resource names, quantities that
//! parse and are not negative, integers where objects are counted, min <= default request <=
//! default <= max, quota scopes).

use std::collections::{BTreeMap, BTreeSet};

use coxswain_resources::quantity::Quantity;
use coxswain_resources::quota;
use serde_json::Value;

use super::qualified_name;
use crate::status::Cause;

/// Upstream's message for a negative amount.
const NEGATIVE: &str = "must be greater than or equal to 0";

fn forbidden(field: impl Into<String>, message: &str) -> Cause {
    Cause {
        field: field.into(),
        reason: "FieldValueForbidden",
        message: format!("Forbidden: {message}"),
    }
}

/// The entries of a resource map at `parent[key]` as strings (non-strings show as JSON).
fn entries(parent: &Value, key: &str) -> Vec<(String, String)> {
    parent
        .get(key)
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
        .map(|(k, v)| {
            let text = v.as_str().map_or_else(|| v.to_string(), str::to_owned);
            (k.clone(), text)
        })
        .collect()
}

/// A resource name in general: qualified, and standard unless it has a `/`.
fn resource_name(name: &str, field: &str, causes: &mut Vec<Cause>) -> bool {
    if let Some(problem) = qualified_name(name) {
        causes.push(Cause::invalid(field, name, problem));
        return false;
    }
    if !name.contains('/') && !quota::is_standard_resource(name) {
        causes.push(Cause::invalid(field, name, "must be a standard resource type or fully qualified"));
        return false;
    }
    true
}

/// A resource a container (or a Pod/Container limit) may name.
fn container_resource_name(name: &str, field: &str, causes: &mut Vec<Cause>) -> bool {
    if !resource_name(name, field, causes) {
        return false;
    }
    if !name.contains('/') {
        if !quota::is_standard_container_resource(name) {
            causes.push(Cause::invalid(field, name, "must be a standard resource for containers"));
            return false;
        }
    } else if !quota::is_native_resource(name) && !quota::is_extended_resource(name) {
        causes.push(Cause::invalid(field, name, "doesn't follow extended resource name standard"));
        return false;
    }
    true
}

/// A resource a quota may limit.
fn quota_resource_name(name: &str, field: &str, causes: &mut Vec<Cause>) -> bool {
    if !resource_name(name, field, causes) {
        return false;
    }
    if !name.contains('/') && !quota::is_standard_quota_resource(name) {
        causes.push(Cause::invalid(field, name, "must be a standard resource for quota"));
        return false;
    }
    true
}

/// Parses an amount, reporting why it is not one.
fn amount(text: &str, field: &str, causes: &mut Vec<Cause>) -> Option<Quantity> {
    match Quantity::parse(text) {
        Ok(q) => Some(q),
        Err(e) => {
            causes.push(Cause::invalid(field, text, e.to_string()));
            None
        }
    }
}

/// An amount of `name`: a quantity, not negative, whole for counted resources.
fn amount_of(name: &str, text: &str, field: &str, causes: &mut Vec<Cause>) -> Option<Quantity> {
    let q = amount(text, field, causes)?;
    if q.is_negative() {
        causes.push(Cause::invalid(field, &q.to_string(), NEGATIVE));
    } else if quota::is_integer_resource(name) && q.milli_value() % 1000 != 0 {
        causes.push(Cause::invalid(field, &q.to_string(), "must be an integer"));
    }
    Some(q)
}

/// A container's (or pod's) `resources` at `path`: names, amounts, requests within limits
/// (equal to them for resources that cannot be overcommitted), as upstream's
/// `ValidateResourceRequirements`.
pub(crate) fn resource_requirements(resources: &Value, path: &str, causes: &mut Vec<Cause>) {
    let mut limits = BTreeMap::new();
    let mut cpu_or_memory = false;
    let mut hugepages = false;
    for (name, text) in entries(resources, "limits") {
        let field = format!("{path}.limits[{name}]");
        if container_resource_name(&name, &field, causes)
            && let Some(q) = amount_of(&name, &text, &field, causes)
        {
            limits.insert(name.clone(), q);
        }
        hugepages |= name.starts_with("hugepages-");
        cpu_or_memory |= name == "cpu" || name == "memory";
    }
    for (name, text) in entries(resources, "requests") {
        let field = format!("{path}.requests[{name}]");
        let overcommit = quota::is_native_resource(&name) && !name.starts_with("hugepages-");
        if container_resource_name(&name, &field, causes)
            && let Some(q) = amount_of(&name, &text, &field, causes)
        {
            match limits.get(&name) {
                Some(limit) if !overcommit && q != *limit => causes.push(Cause::invalid(
                    format!("{path}.requests"),
                    &q.to_string(),
                    format!("must be equal to {name} limit of {limit}"),
                )),
                Some(limit) if q > *limit => causes.push(Cause::invalid(
                    format!("{path}.requests"),
                    &q.to_string(),
                    format!("must be less than or equal to {name} limit of {limit}"),
                )),
                None if !overcommit => causes.push(Cause {
                    field: format!("{path}.limits"),
                    reason: "FieldValueRequired",
                    message: "Required value: Limit must be set for non overcommitable resources"
                        .to_owned(),
                }),
                _ => {}
            }
        }
        hugepages |= name.starts_with("hugepages-");
        cpu_or_memory |= name == "cpu" || name == "memory";
    }
    if hugepages && !cpu_or_memory {
        causes.push(forbidden(path, "HugePages require cpu or memory"));
    }
}

const LIMIT_TYPES: [&str; 3] = ["Pod", "Container", "PersistentVolumeClaim"];

/// LimitRanges, as upstream's `ValidateLimitRange` (after defaulting, so a Container limit's
/// default and default request are already filled from max and min).
pub(crate) fn limit_range(obj: &Value, _: Option<&Value>, causes: &mut Vec<Cause>) {
    let limits = crate::object::at_path(obj, "spec.limits")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or(&[]);
    let mut types = BTreeSet::new();
    for (i, limit) in limits.iter().enumerate() {
        let at = format!("spec.limits[{i}]");
        let ty = limit.get("type").and_then(Value::as_str).unwrap_or("");
        if let Some(problem) = qualified_name(ty) {
            causes.push(Cause::invalid(format!("{at}.type"), ty, problem));
        } else if !ty.contains('/') && !LIMIT_TYPES.contains(&ty) {
            causes.push(Cause::invalid(format!("{at}.type"), ty, "must be a standard limit type or fully qualified"));
        }
        if !types.insert(ty) {
            causes.push(Cause {
                field: format!("{at}.type"),
                reason: "FieldValueDuplicate",
                message: format!("Duplicate value: {ty:?}"),
            });
        }
        // Each bound by resource name, where it parsed.
        let mut bounds: BTreeMap<&str, BTreeMap<String, Quantity>> = BTreeMap::new();
        let read = |key: &'static str, bounds: &mut BTreeMap<&str, BTreeMap<String, Quantity>>, causes: &mut Vec<Cause>| {
            for (name, text) in entries(limit, key) {
                let field = format!("{at}.{key}[{name}]");
                let name_ok = match ty {
                    "Pod" | "Container" => container_resource_name(&name, &field, causes),
                    _ => resource_name(&name, &field, causes),
                };
                if name_ok && let Some(q) = amount(&text, &field, causes) {
                    bounds.entry(key).or_default().insert(name, q);
                }
            }
        };
        read("max", &mut bounds, causes);
        read("min", &mut bounds, causes);
        if ty == "Pod" {
            for key in ["default", "defaultRequest"] {
                if limit.get(key).and_then(Value::as_object).is_some_and(|m| !m.is_empty()) {
                    causes.push(forbidden(format!("{at}.{key}"), "may not be specified when `type` is 'Pod'"));
                }
            }
        } else {
            read("default", &mut bounds, causes);
            read("defaultRequest", &mut bounds, causes);
        }
        if ty == "PersistentVolumeClaim" {
            let has = |key: &str| bounds.get(key).is_some_and(|b| b.contains_key("storage"));
            if !has("min") && !has("max") {
                causes.push(Cause {
                    field: format!("{at}.limits"),
                    reason: "FieldValueRequired",
                    message: "Required value: either minimum or maximum storage value is required, but neither was provided".to_owned(),
                });
            }
        }
        read("maxLimitRequestRatio", &mut bounds, causes);
        let names: BTreeSet<String> = bounds.values().flat_map(|b| b.keys().cloned()).collect();
        for name in names {
            let get = |key: &str| bounds.get(key).and_then(|b| b.get(&name)).copied();
            let (min, max, default, request, ratio) =
                (get("min"), get("max"), get("default"), get("defaultRequest"), get("maxLimitRequestRatio"));
            let field = |key: &str| format!("{at}.{key}[{name}]");
            let mut invalid = |key: &str, value: Quantity, message: String| {
                causes.push(Cause::invalid(field(key), &value.to_string(), message));
            };
            if let (Some(min), Some(max)) = (min, max)
                && min > max
            {
                invalid("min", min, format!("min value {min} is greater than max value {max}"));
            }
            if let (Some(min), Some(request)) = (min, request)
                && min > request
            {
                invalid("defaultRequest", request, format!("min value {min} is greater than default request value {request}"));
            }
            if let (Some(request), Some(max)) = (request, max)
                && request > max
            {
                invalid("defaultRequest", request, format!("default request value {request} is greater than max value {max}"));
            }
            if let (Some(request), Some(default)) = (request, default)
                && request > default
            {
                invalid("defaultRequest", request, format!("default request value {request} is greater than default limit value {default}"));
            }
            if let (Some(min), Some(default)) = (min, default)
                && min > default
            {
                invalid("default", min, format!("min value {min} is greater than default value {default}"));
            }
            if let (Some(default), Some(max)) = (default, max)
                && default > max
            {
                invalid("default", max, format!("default value {default} is greater than max value {max}"));
            }
            if let Some(ratio) = ratio {
                if ratio < Quantity::from_units(1, coxswain_resources::Format::DecimalSI) {
                    invalid("maxLimitRequestRatio", ratio, format!("ratio {ratio} is less than 1"));
                }
                if let (Some(min), Some(max)) = (min, max)
                    && min.nano_value() > 0
                {
                    let allowed = max.nano_value() as f64 / min.nano_value() as f64;
                    if ratio.nano_value() as f64 / 1e9 > allowed {
                        invalid("maxLimitRequestRatio", ratio, format!("ratio {ratio} is greater than max/min = {allowed:.6}"));
                    }
                }
            }
            let overcommit = quota::is_native_resource(&name) && !name.starts_with("hugepages-");
            if let (Some(default), Some(request)) = (default, request)
                && !overcommit
                && default != request
            {
                invalid("defaultRequest", request, format!("default value {default} must equal to defaultRequest value {request} in {name}"));
            }
        }
    }
}

/// A quota's `hard` or `used` map at `path`.
fn quota_amounts(parent: &Value, key: &str, path: &str, causes: &mut Vec<Cause>) -> Vec<String> {
    let mut names = Vec::new();
    for (name, text) in entries(parent, key) {
        let field = format!("{path}.{key}[{name}]");
        if quota_resource_name(&name, &field, causes) {
            amount_of(&name, &text, &field, causes);
        }
        names.push(name);
    }
    names
}

fn json_list(v: Option<&Value>) -> String {
    v.map_or_else(|| "[]".to_owned(), Value::to_string)
}

/// ResourceQuotas, as upstream's `ValidateResourceQuota` (and `...Update`: scopes are
/// immutable): resource names and amounts of `spec.hard` and of the status, scopes that
/// exist, suit every limited resource and do not conflict, and scope selectors with
/// operators and values that fit.
pub(crate) fn resource_quota(obj: &Value, old: Option<&Value>, causes: &mut Vec<Cause>) {
    let spec = obj.get("spec").unwrap_or(&Value::Null);
    let hard = quota_amounts(spec, "hard", "spec", causes);
    let standard_hard: Vec<&String> = hard.iter().filter(|h| quota::is_standard_quota_resource(h)).collect();
    let scopes: Vec<&str> = spec
        .get("scopes")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    let scopes_text = json_list(spec.get("scopes"));
    for scope in &scopes {
        if !quota::STANDARD_SCOPES.contains(scope) {
            causes.push(Cause::invalid("spec.scopes", &scopes_text, "unsupported scope"));
        }
        for h in &standard_hard {
            if !quota::scope_valid_for_resource(scope, h) {
                causes.push(Cause::invalid("spec.scopes", &scopes_text, "unsupported scope applied to resource"));
            }
        }
    }
    for (a, b) in quota::CONFLICTING_SCOPES {
        if scopes.contains(&a) && scopes.contains(&b) {
            causes.push(Cause::invalid("spec.scopes", &scopes_text, "conflicting scopes"));
        }
    }
    if let Some(selector) = spec.get("scopeSelector").filter(|s| !s.is_null()) {
        let at = "spec.scopeSelector.matchExpressions";
        let mut selected = Vec::new();
        for e in selector
            .get("matchExpressions")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let scope = e.get("scopeName").and_then(Value::as_str).unwrap_or("");
            let operator = e.get("operator").and_then(Value::as_str).unwrap_or("");
            let values = e.get("values").and_then(Value::as_array).map_or(0, Vec::len);
            if !quota::STANDARD_SCOPES.contains(&scope) {
                causes.push(Cause::invalid(format!("{at}.scopeName"), scope, "unsupported scope"));
            }
            for h in &standard_hard {
                if !quota::scope_valid_for_resource(scope, h) {
                    causes.push(Cause::invalid(at, &selector.to_string(), "unsupported scope applied to resource"));
                }
            }
            if quota::EXISTS_ONLY_SCOPES.contains(&scope) && operator != "Exists" {
                causes.push(Cause::invalid(
                    format!("{at}.operator"),
                    operator,
                    "must be 'Exist' when scope is any of ResourceQuotaScopeTerminating, \
                     ResourceQuotaScopeNotTerminating, ResourceQuotaScopeBestEffort, \
                     ResourceQuotaScopeNotBestEffort or ResourceQuotaScopeCrossNamespacePodAffinity",
                ));
            }
            match operator {
                "In" | "NotIn" if values == 0 => causes.push(Cause {
                    field: format!("{at}.values"),
                    reason: "FieldValueRequired",
                    message: "Required value: must be at least one value when `operator` is 'In' or 'NotIn' for scope selector".to_owned(),
                }),
                "Exists" | "DoesNotExist" if values != 0 => causes.push(Cause::invalid(
                    format!("{at}.values"),
                    &json_list(e.get("values")),
                    "must be no value when `operator` is 'Exist' or 'DoesNotExist' for scope selector",
                )),
                "In" | "NotIn" | "Exists" | "DoesNotExist" => {}
                other => causes.push(Cause::invalid(format!("{at}.operator"), other, "not a valid selector operator")),
            }
            selected.push(scope);
        }
        for (a, b) in quota::CONFLICTING_SCOPES {
            if selected.contains(&a) && selected.contains(&b) {
                causes.push(Cause::invalid(at, &scopes_text, "conflicting scopes"));
            }
        }
    }
    if let Some(status) = obj.get("status") {
        quota_amounts(status, "hard", "status", causes);
        quota_amounts(status, "used", "status", causes);
    }
    if let Some(old) = old {
        let set = |v: &Value| -> BTreeSet<String> {
            crate::object::at_path(v, "spec.scopes")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect()
        };
        if set(obj) != set(old) {
            causes.push(Cause::invalid("spec.scopes", &scopes_text, "field is immutable"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn fields(f: fn(&Value, Option<&Value>, &mut Vec<Cause>), obj: Value) -> Vec<String> {
        let mut causes = Vec::new();
        f(&obj, None, &mut causes);
        causes.into_iter().map(|c| format!("{}: {}", c.field, c.message)).collect()
    }

    fn requirements(resources: Value) -> Vec<String> {
        let mut causes = Vec::new();
        resource_requirements(&resources, "spec.containers[0].resources", &mut causes);
        causes.into_iter().map(|c| format!("{}: {}", c.field, c.message)).collect()
    }

    #[test]
    fn container_resources() {
        assert!(requirements(json!({"requests": {"cpu": "500m", "memory": "1Gi"}, "limits": {"cpu": "1"}})).is_empty());
        assert_eq!(
            requirements(json!({"requests": {"cpu": "2"}, "limits": {"cpu": "1"}})),
            vec!["spec.containers[0].resources.requests: Invalid value: \"2\": must be less than or equal to cpu limit of 1"]
        );
        assert_eq!(
            requirements(json!({"requests": {"cpu": "lots", "memory": "-1"}})),
            vec![
                "spec.containers[0].resources.requests[cpu]: Invalid value: \"lots\": quantities must match the regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'",
                "spec.containers[0].resources.requests[memory]: Invalid value: \"-1\": must be greater than or equal to 0",
            ]
        );
        assert_eq!(
            requirements(json!({"requests": {"pods": "1", "example.com/gpu": "1"}})),
            vec![
                "spec.containers[0].resources.limits: Required value: Limit must be set for non overcommitable resources",
                "spec.containers[0].resources.requests[pods]: Invalid value: \"pods\": must be a standard resource for containers",
            ]
        );
        assert_eq!(
            requirements(json!({"requests": {"example.com/gpu": "500m"}, "limits": {"example.com/gpu": "500m"}})).len(),
            2,
            "extended resources are whole"
        );
    }

    #[test]
    fn limit_ranges() {
        let ok = json!({"spec": {"limits": [
            {"type": "Container", "max": {"cpu": "1"}, "min": {"cpu": "100m"}, "default": {"cpu": "500m"}, "defaultRequest": {"cpu": "200m"}, "maxLimitRequestRatio": {"cpu": "4"}},
            {"type": "Pod", "max": {"memory": "1Gi"}},
        ]}});
        assert!(fields(limit_range, ok).is_empty());
        let bad = json!({"spec": {"limits": [
            {"type": "Container", "max": {"cpu": "500m"}, "min": {"cpu": "1"}, "default": {"cpu": "500m"}, "defaultRequest": {"cpu": "1"}},
            {"type": "Pod", "default": {"cpu": "1"}, "max": {"widgets": "1"}},
            {"type": "Pod"},
            {"type": "Node"},
        ]}});
        assert_eq!(
            fields(limit_range, bad),
            vec![
                "spec.limits[0].min[cpu]: Invalid value: \"1\": min value 1 is greater than max value 500m",
                "spec.limits[0].defaultRequest[cpu]: Invalid value: \"1\": default request value 1 is greater than max value 500m",
                "spec.limits[0].defaultRequest[cpu]: Invalid value: \"1\": default request value 1 is greater than default limit value 500m",
                "spec.limits[0].default[cpu]: Invalid value: \"1\": min value 1 is greater than default value 500m",
                "spec.limits[1].max[widgets]: Invalid value: \"widgets\": must be a standard resource type or fully qualified",
                "spec.limits[1].default: Forbidden: may not be specified when `type` is 'Pod'",
                "spec.limits[2].type: Duplicate value: \"Pod\"",
                "spec.limits[3].type: Invalid value: \"Node\": must be a standard limit type or fully qualified",
            ]
        );
        let ratio = json!({"spec": {"limits": [{"type": "Container", "min": {"cpu": "1"}, "max": {"cpu": "2"}, "maxLimitRequestRatio": {"cpu": "3"}}]}});
        assert_eq!(
            fields(limit_range, ratio),
            vec!["spec.limits[0].maxLimitRequestRatio[cpu]: Invalid value: \"3\": ratio 3 is greater than max/min = 2.000000"]
        );
    }

    #[test]
    fn resource_quotas() {
        let ok = json!({"spec": {"hard": {"pods": "10", "requests.cpu": "2", "count/deployments.apps": "3", "requests.example.com/gpu": "1"}, "scopes": ["NotTerminating"]}});
        assert_eq!(fields(resource_quota, ok), Vec::<String>::new());
        let bad = json!({"spec": {"hard": {"pods": "1.5", "cpu": "-1", "widgets": "1"}, "scopes": ["BestEffort", "NotBestEffort", "Sometimes"]}});
        let got = fields(resource_quota, bad);
        assert!(got.contains(&"spec.hard[pods]: Invalid value: \"1500m\": must be an integer".to_owned()), "{got:#?}");
        assert!(got.contains(&"spec.hard[cpu]: Invalid value: \"-1\": must be greater than or equal to 0".to_owned()), "{got:#?}");
        assert!(got.contains(&"spec.hard[widgets]: Invalid value: \"widgets\": must be a standard resource type or fully qualified".to_owned()), "{got:#?}");
        assert!(got.iter().any(|c| c.ends_with("unsupported scope")), "{got:#?}");
        assert!(got.iter().any(|c| c.ends_with("unsupported scope applied to resource")), "{got:#?}");
        assert!(got.iter().any(|c| c.ends_with("conflicting scopes")), "{got:#?}");
        let selector = json!({"spec": {"hard": {"pods": "1"}, "scopeSelector": {"matchExpressions": [
            {"scopeName": "PriorityClass", "operator": "In"},
            {"scopeName": "BestEffort", "operator": "In", "values": ["x"]},
            {"scopeName": "PriorityClass", "operator": "Matches", "values": ["x"]},
        ]}}});
        let got = fields(resource_quota, selector);
        assert_eq!(got.len(), 3, "{got:#?}");
        let mut causes = Vec::new();
        let old = json!({"spec": {"hard": {"pods": "1"}, "scopes": ["BestEffort"]}});
        resource_quota(&json!({"spec": {"hard": {"pods": "1"}}}), Some(&old), &mut causes);
        assert_eq!(causes[0].message, "Invalid value: \"[]\": field is immutable");
    }
}
