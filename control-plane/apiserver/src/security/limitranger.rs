//! LimitRanger admission, as upstream's plugin. A pod created in a namespace with
//! LimitRanges first gets, for whatever its containers leave unset, the `defaultRequest` and
//! `default` amounts of their `Container` limits (recorded in the `kubernetes.io/limit-ranger`
//! annotation, its QoS class recomputed); once validated, each container must fit the
//! `min`, `max` and `maxLimitRequestRatio` of the `Container` limits, and the whole pod those
//! of the `Pod` limits, or the pod is refused with 403 and upstream's message (`maximum cpu
//! usage per Container is 500m, but limit is 1`). Before all that comes the one pod default
//! that must only touch new pods: requests defaulted to limits.
//!
//! As upstream, pod updates are not checked (containers and their resources cannot change
//! after creation) and subresources are ignored. `PersistentVolumeClaim` limits are stored
//! and validated but enforce nothing: this server serves no PersistentVolumeClaims.

use std::collections::BTreeMap;

use coxswain_resources::pod::{self, Side};
use coxswain_resources::quantity::{self, Quantity, ResourceList};
use coxswain_store::ListOptions;
use k8s_openapi::api::core::v1::{LimitRange, Pod};
use serde_json::Value;

use crate::defaults::child;
use crate::handlers::Ctx;
use crate::object;
use crate::status::{ApiError, Result, Target};

/// The annotation recording which defaults were applied.
pub(crate) const ANNOTATION: &str = "kubernetes.io/limit-ranger";
/// Upstream's `resource.MaxMilliValue`: beyond it, amounts compare in whole units.
const MAX_MILLI: i64 = i64::MAX / 1000;

fn applies(ctx: &Ctx) -> bool {
    ctx.rt.group.is_empty() && ctx.rt.kind == "Pod" && ctx.subresource.is_none()
}

/// The LimitRanges of `namespace`, in name order, read from the store.
async fn limit_ranges(ctx: &Ctx, namespace: &str) -> Result<Vec<LimitRange>> {
    let rt = ctx
        .state
        .registry
        .lookup("", "v1", "limitranges")
        .ok_or_else(|| ApiError::Internal("limitranges are not registered".into()))?;
    let listed = ctx
        .state
        .store
        .list(&rt.namespace_prefix(Some(namespace)), ListOptions::default())
        .await
        .map_err(|e| ApiError::from_store(e, &Target::new("", "limitranges", "")))?;
    listed
        .items
        .iter()
        .map(|kv| {
            serde_json::from_slice(&kv.value).map_err(|e| {
                ApiError::Internal(format!("failed to decode stored LimitRange {}: {e}", kv.key))
            })
        })
        .collect()
}

/// The default requests and limits of the `Container` limits (the first LimitRange to name
/// a resource wins).
fn container_defaults(ranges: &[LimitRange]) -> (BTreeMap<String, String>, BTreeMap<String, String>) {
    let mut requests = BTreeMap::new();
    let mut limits = BTreeMap::new();
    for item in ranges
        .iter()
        .filter_map(|r| r.spec.as_ref())
        .flat_map(|s| &s.limits)
        .filter(|l| l.type_ == "Container")
    {
        for (k, v) in item.default_request.iter().flatten() {
            requests.entry(k.clone()).or_insert_with(|| v.0.clone());
        }
        for (k, v) in item.default.iter().flatten() {
            limits.entry(k.clone()).or_insert_with(|| v.0.clone());
        }
    }
    (requests, limits)
}

/// Sets the defaults a container leaves unset; returns the annotation's parts for it.
fn merge_container(
    c: &mut Value,
    requests: &BTreeMap<String, String>,
    limits: &BTreeMap<String, String>,
    label: &str,
) -> Vec<String> {
    let name = c.get("name").and_then(Value::as_str).unwrap_or("").to_owned();
    let resources = child(c, "resources");
    let mut fill = |key: &str, defaults: &BTreeMap<String, String>| -> Vec<String> {
        let list = child(resources, key);
        let mut set = Vec::new();
        for (k, v) in defaults {
            if list.get(k).is_none_or(Value::is_null) {
                list[k.as_str()] = Value::String(v.clone());
                set.push(k.clone());
            }
        }
        set
    };
    let set_requests = fill("requests", requests);
    let set_limits = fill("limits", limits);
    let mut parts = Vec::new();
    if !set_requests.is_empty() {
        parts.push(format!("{} request for {label} {name}", set_requests.join(", ")));
    }
    if !set_limits.is_empty() {
        parts.push(format!("{} limit for {label} {name}", set_limits.join(", ")));
    }
    parts
}

/// Mutating admission of a pod being created: applies the namespace's container defaults.
/// Returns the LimitRanges, for [`validate`] once the pod passed validation.
pub(crate) async fn admit(ctx: &Ctx, obj: &mut Value) -> Result<Vec<LimitRange>> {
    if !applies(ctx) {
        return Ok(Vec::new());
    }
    // Upstream's defaulting, which comes before admission.
    let defaulted = crate::defaults::pod_requests_from_limits(obj);
    let namespace = object::namespace(obj).to_owned();
    let ranges = limit_ranges(ctx, &namespace).await?;
    let (requests, limits) = container_defaults(&ranges);
    let mut parts = Vec::new();
    if !requests.is_empty() || !limits.is_empty() {
        for (list, label) in [("containers", "container"), ("initContainers", "init container")] {
            if let Some(containers) = obj
                .get_mut("spec")
                .and_then(|s| s.get_mut(list))
                .and_then(Value::as_array_mut)
            {
                for c in containers {
                    parts.extend(merge_container(c, &requests, &limits, label));
                }
            }
        }
    }
    if !parts.is_empty() {
        let annotations = child(child(obj, "metadata"), "annotations");
        annotations[ANNOTATION] = Value::String(format!("LimitRanger plugin set: {}", parts.join("; ")));
    }
    // The QoS class follows the final resources (upstream computes it after admission).
    if (defaulted || !parts.is_empty())
        && let Ok(spec) = serde_json::from_value(obj.get("spec").cloned().unwrap_or(Value::Null))
    {
        child(obj, "status")["qosClass"] = Value::from(pod::qos_class(&spec));
    }
    Ok(ranges)
}

/// Amounts at a common precision: milli-units unless one would overflow.
fn comparable(request: Option<&Quantity>, limit: Option<&Quantity>, enforced: &Quantity) -> (i64, i64, i64) {
    let zero = Quantity::zero();
    let (r, l) = (request.unwrap_or(&zero), limit.unwrap_or(&zero));
    if r.value() <= MAX_MILLI && l.value() <= MAX_MILLI && enforced.value() <= MAX_MILLI {
        (r.milli_value(), l.milli_value(), enforced.milli_value())
    } else {
        (r.value(), l.value(), enforced.value())
    }
}

fn min_constraint(ty: &str, name: &str, enforced: &Quantity, requests: &ResourceList, limits: &ResourceList) -> Option<String> {
    let (req, lim) = (requests.get(name), limits.get(name));
    let (r, l, e) = comparable(req, lim, enforced);
    match (req, lim) {
        (None, _) => Some(format!("minimum {name} usage per {ty} is {enforced}.  No request is specified")),
        (Some(req), _) if r < e => Some(format!("minimum {name} usage per {ty} is {enforced}, but request is {req}")),
        (_, Some(lim)) if l < e => Some(format!("minimum {name} usage per {ty} is {enforced}, but limit is {lim}")),
        _ => None,
    }
}

fn max_constraint(ty: &str, name: &str, enforced: &Quantity, requests: &ResourceList, limits: &ResourceList) -> Option<String> {
    let (req, lim) = (requests.get(name), limits.get(name));
    let (r, l, e) = comparable(req, lim, enforced);
    match (req, lim) {
        (_, None) => Some(format!("maximum {name} usage per {ty} is {enforced}.  No limit is specified")),
        (_, Some(lim)) if l > e => Some(format!("maximum {name} usage per {ty} is {enforced}, but limit is {lim}")),
        (Some(req), _) if r > e => Some(format!("maximum {name} usage per {ty} is {enforced}, but request is {req}")),
        _ => None,
    }
}

fn ratio_constraint(ty: &str, name: &str, enforced: &Quantity, requests: &ResourceList, limits: &ResourceList) -> Option<String> {
    let (req, lim) = (requests.get(name), limits.get(name));
    let (r, l, _) = comparable(req, lim, enforced);
    if req.is_none() || r == 0 {
        return Some(format!("{name} max limit to request ratio per {ty} is {enforced}, but no request is specified or request is 0"));
    }
    if lim.is_none() || l == 0 {
        return Some(format!("{name} max limit to request ratio per {ty} is {enforced}, but no limit is specified or limit is 0"));
    }
    let observed = l as f64 / r as f64;
    let (scaled, allowed) = if enforced.value() <= MAX_MILLI {
        (observed * 1000.0, enforced.milli_value() as f64)
    } else {
        (observed, enforced.value() as f64)
    };
    (scaled > allowed).then(|| {
        format!("{name} max limit to request ratio per {ty} is {enforced}, but provided ratio is {observed:.6}")
    })
}

/// What one LimitRange finds wrong with a pod, in upstream's order.
fn violations(range: &LimitRange, p: &Pod) -> Vec<String> {
    let mut errors = Vec::new();
    let Some(spec) = p.spec.as_ref() else {
        return errors;
    };
    let mut check = |ty: &str, item: &k8s_openapi::api::core::v1::LimitRangeItem, requests: &ResourceList, limits: &ResourceList| {
        for (name, q) in quantity::from_api(item.min.as_ref().unwrap_or(&BTreeMap::new())) {
            errors.extend(min_constraint(ty, &name, &q, requests, limits));
        }
        for (name, q) in quantity::from_api(item.max.as_ref().unwrap_or(&BTreeMap::new())) {
            errors.extend(max_constraint(ty, &name, &q, requests, limits));
        }
        for (name, q) in quantity::from_api(item.max_limit_request_ratio.as_ref().unwrap_or(&BTreeMap::new())) {
            errors.extend(ratio_constraint(ty, &name, &q, requests, limits));
        }
    };
    for item in range.spec.iter().flat_map(|s| &s.limits) {
        match item.type_.as_str() {
            "Container" => {
                for c in spec.containers.iter().chain(spec.init_containers.iter().flatten()) {
                    let requests = pod::container_resources(c, Side::Requests);
                    let limits = pod::container_resources(c, Side::Limits);
                    check("Container", item, &requests, &limits);
                }
            }
            "Pod" => {
                let requests = pod::pod_resources(spec, Side::Requests, false);
                let limits = pod::pod_resources(spec, Side::Limits, false);
                check("Pod", item, &requests, &limits);
            }
            _ => {}
        }
    }
    errors
}

/// Upstream's aggregate of several errors: the one message, or `[a, b]` without repeats.
fn aggregate(errors: Vec<String>) -> String {
    let mut seen: Vec<String> = Vec::new();
    for e in errors {
        if !seen.contains(&e) {
            seen.push(e);
        }
    }
    match seen.len() {
        1 => seen.remove(0),
        _ => format!("[{}]", seen.join(", ")),
    }
}

/// Validating admission of a pod being created against the LimitRanges [`admit`] read: the
/// first LimitRange the pod breaks refuses it (403).
pub(crate) fn validate(ctx: &Ctx, ranges: &[LimitRange], obj: &Value) -> Result<()> {
    if !applies(ctx) || ranges.is_empty() {
        return Ok(());
    }
    let p: Pod = serde_json::from_value(obj.clone())
        .map_err(|e| ApiError::Internal(format!("failed to read the pod for LimitRanger: {e}")))?;
    for range in ranges {
        let errors = violations(range, &p);
        if !errors.is_empty() {
            let name = object::name(obj);
            return Err(ApiError::Forbidden {
                target: ctx.target(name),
                message: format!("pods {name:?} is forbidden: {}", aggregate(errors)),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn range(limits: Value) -> LimitRange {
        let mut obj = json!({"metadata": {"name": "limits"}, "spec": {"limits": limits}});
        crate::defaults::limit_range(&mut obj);
        serde_json::from_value(obj).expect("a LimitRange")
    }

    #[test]
    fn defaults_fill_only_what_containers_leave_unset() {
        let ranges = [range(json!([{"type": "Container", "default": {"cpu": "500m", "memory": "256Mi"}, "defaultRequest": {"cpu": "100m"}}]))];
        let (requests, limits) = container_defaults(&ranges);
        let mut c = json!({"name": "nginx", "resources": {"limits": {"memory": "1Gi"}}});
        let parts = merge_container(&mut c, &requests, &limits, "container");
        assert_eq!(c["resources"]["limits"], json!({"cpu": "500m", "memory": "1Gi"}));
        // The default request falls back to the default limit (LimitRange defaulting).
        assert_eq!(c["resources"]["requests"], json!({"cpu": "100m", "memory": "256Mi"}));
        assert_eq!(parts, vec!["cpu, memory request for container nginx", "cpu limit for container nginx"]);
        let again = merge_container(&mut c, &requests, &limits, "container");
        assert!(again.is_empty(), "nothing left to set");
    }

    fn pod_with(resources: Value) -> Pod {
        serde_json::from_value(json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c", "resources": resources}]}})).unwrap()
    }

    #[test]
    fn bounds_per_container_and_pod_with_upstreams_messages() {
        let r = range(json!([
            {"type": "Container", "max": {"cpu": "500m"}, "min": {"memory": "64Mi"}, "maxLimitRequestRatio": {"memory": "2"}},
            {"type": "Pod", "max": {"memory": "1Gi"}},
        ]));
        let table = [
            (json!({"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"cpu": "500m", "memory": "256Mi"}}), vec![]),
            (
                json!({"requests": {"cpu": "1", "memory": "128Mi"}, "limits": {"cpu": "1", "memory": "256Mi"}}),
                vec!["maximum cpu usage per Container is 500m, but limit is 1"],
            ),
            (
                json!({"requests": {"memory": "32Mi"}, "limits": {"cpu": "100m", "memory": "2Gi"}}),
                vec![
                    "minimum memory usage per Container is 64Mi, but request is 32Mi",
                    "memory max limit to request ratio per Container is 2, but provided ratio is 64.000000",
                    "maximum memory usage per Pod is 1Gi, but limit is 2Gi",
                ],
            ),
            (
                json!({"limits": {"memory": "128Mi"}}),
                vec![
                    "minimum memory usage per Container is 64Mi.  No request is specified",
                    "maximum cpu usage per Container is 500m.  No limit is specified",
                    "memory max limit to request ratio per Container is 2, but no request is specified or request is 0",
                ],
            ),
        ];
        for (resources, want) in table {
            assert_eq!(violations(&r, &pod_with(resources.clone())), want, "{resources}");
        }
        assert_eq!(aggregate(vec!["a".into()]), "a");
        assert_eq!(aggregate(vec!["a".into(), "b".into(), "a".into()]), "[a, b]");
    }
}
