//! ResourceQuota evaluation, as upstream's `pkg/quota/v1` and its evaluators: the resource
//! names each kind is counted under (`pods`, `requests.cpu`, `count/deployments.apps`...),
//! what one object uses, which quotas an object falls under (resources and scopes), the
//! admission check of a new object against `status.hard` and `status.used`, and the usage a
//! controller recomputes from the objects that exist.
//!
//! Objects are typed where their content matters (pods, services) and only counted
//! otherwise. Everything here is pure: the API server charges what [`check`] returns with a
//! compare-and-swap on the quota, the controller writes what [`calculate_usage`] returns.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::{Pod, ResourceQuota, Service};
use k8s_openapi::jiff::Timestamp;

use crate::pod;
use crate::quantity::{self, Format, Quantity, ResourceList};

/// `count/pods`: every pod, finished or not.
pub const POD_OBJECT_COUNT: &str = "count/pods";
/// `kubernetes.io/limit-ranger`-style prefix of quota names for requests.
const REQUESTS_PREFIX: &str = "requests.";

/// The names the pod evaluator tracks besides the hugepage and extended ones.
const POD_RESOURCES: [&str; 11] = [
    POD_OBJECT_COUNT,
    "cpu",
    "memory",
    "ephemeral-storage",
    "requests.cpu",
    "requests.memory",
    "requests.ephemeral-storage",
    "limits.cpu",
    "limits.memory",
    "limits.ephemeral-storage",
    "pods",
];

/// The names for which every container must state a value once a quota constrains them
/// (upstream's backward-compatibility rule for cpu and memory).
const MUST_SPECIFY: [&str; 6] = [
    "cpu",
    "memory",
    "requests.cpu",
    "requests.memory",
    "limits.cpu",
    "limits.memory",
];

/// The quota scopes upstream knows.
pub const STANDARD_SCOPES: [&str; 7] = [
    "Terminating",
    "NotTerminating",
    "BestEffort",
    "NotBestEffort",
    "PriorityClass",
    "CrossNamespacePodAffinity",
    "VolumeAttributesClass",
];

/// Scopes that only `Exists` can select (and `spec.scopes` lists).
pub const EXISTS_ONLY_SCOPES: [&str; 5] = [
    "Terminating",
    "NotTerminating",
    "BestEffort",
    "NotBestEffort",
    "CrossNamespacePodAffinity",
];

/// Pairs of scopes no quota may ask for together.
pub const CONFLICTING_SCOPES: [(&str, &str); 2] =
    [("BestEffort", "NotBestEffort"), ("Terminating", "NotTerminating")];

/// Resource names a quota may limit without a `/` (upstream's `standardQuotaResources`).
const STANDARD_QUOTA_RESOURCES: [&str; 19] = [
    "cpu",
    "memory",
    "ephemeral-storage",
    "requests.cpu",
    "requests.memory",
    "requests.storage",
    "requests.ephemeral-storage",
    "limits.cpu",
    "limits.memory",
    "limits.ephemeral-storage",
    "pods",
    "resourcequotas",
    "services",
    "replicationcontrollers",
    "secrets",
    "persistentvolumeclaims",
    "configmaps",
    "services.nodeports",
    "services.loadbalancers",
];

/// Names counted in whole objects (upstream's `integerResources`).
const INTEGER_RESOURCES: [&str; 9] = [
    "pods",
    "resourcequotas",
    "services",
    "replicationcontrollers",
    "secrets",
    "configmaps",
    "persistentvolumeclaims",
    "services.nodeports",
    "services.loadbalancers",
];

/// Whether `name` is in the `*kubernetes.io/` namespace (every name without a `/` is).
pub fn is_native_resource(name: &str) -> bool {
    !name.contains('/') || name.contains("kubernetes.io/")
}

/// Whether `name` is an extended resource (`example.com/gpu`): qualified, outside
/// `kubernetes.io`, not itself a `requests.` name.
pub fn is_extended_resource(name: &str) -> bool {
    !is_native_resource(name) && !name.starts_with(REQUESTS_PREFIX)
}

/// Whether a hugepages name (`hugepages-2Mi`, or `requests.hugepages-2Mi` for quota).
fn is_quota_hugepages(name: &str) -> bool {
    name.starts_with("hugepages-") || name.starts_with("requests.hugepages-")
}

/// Whether a quota may limit `name` (names with a `/` are checked as qualified names).
pub fn is_standard_quota_resource(name: &str) -> bool {
    STANDARD_QUOTA_RESOURCES.contains(&name) || is_quota_hugepages(name)
}

/// Whether `name` is a standard resource name at all (upstream's `standardResources`).
pub fn is_standard_resource(name: &str) -> bool {
    is_standard_quota_resource(name) || name == "storage"
}

/// Whether a container may request `name` without a `/`.
pub fn is_standard_container_resource(name: &str) -> bool {
    matches!(name, "cpu" | "memory" | "ephemeral-storage") || name.starts_with("hugepages-")
}

/// Whether `name` is counted in whole units (object counts, extended resources).
pub fn is_integer_resource(name: &str) -> bool {
    INTEGER_RESOURCES.contains(&name) || is_extended_resource(name)
}

/// Whether a quota with `scope` may limit `name` (upstream's
/// `IsResourceQuotaScopeValidForResource`).
pub fn scope_valid_for_resource(scope: &str, name: &str) -> bool {
    let pod_count = name == "pods";
    let pod_compute = matches!(
        name,
        "cpu" | "memory" | "limits.cpu" | "limits.memory" | "requests.cpu" | "requests.memory"
    );
    match scope {
        "Terminating" | "NotTerminating" | "NotBestEffort" | "PriorityClass"
        | "CrossNamespacePodAffinity" => pod_count || pod_compute,
        "BestEffort" => pod_count,
        "VolumeAttributesClass" => matches!(
            name,
            "persistentvolumeclaims" | "requests.storage"
        ),
        _ => true,
    }
}

/// The object-count name of a kind: `count/pods`, `count/deployments.apps`.
pub fn object_count_name(group: &str, resource: &str) -> String {
    if group.is_empty() {
        format!("count/{resource}")
    } else {
        format!("count/{resource}.{group}")
    }
}

/// The kind an object-count name counts: `count/deployments.apps` → (`apps`, `deployments`).
pub fn kind_of_count_name(name: &str) -> Option<(String, String)> {
    let rest = name.strip_prefix("count/")?;
    match rest.split_once('.') {
        Some((resource, group)) => Some((group.to_owned(), resource.to_owned())),
        None => Some((String::new(), rest.to_owned())),
    }
}

/// The classic name core kinds are also counted under (`configmaps`, `secrets`...).
fn legacy_count_name(group: &str, resource: &str) -> Option<&'static str> {
    if !group.is_empty() {
        return None;
    }
    Some(match resource {
        "configmaps" => "configmaps",
        "secrets" => "secrets",
        "resourcequotas" => "resourcequotas",
        "replicationcontrollers" => "replicationcontrollers",
        "persistentvolumeclaims" => "persistentvolumeclaims",
        _ => return None,
    })
}

/// An object quota evaluates, as far as its content matters.
#[derive(Debug, Clone, Copy)]
pub enum Object<'a> {
    /// A pod: compute resources, lifecycle, scopes.
    Pod(&'a Pod),
    /// A service: node ports and load balancers.
    Service(&'a Service),
    /// Anything else: counted.
    Other,
}

/// An object of a kind (group and plural resource).
#[derive(Debug, Clone, Copy)]
pub struct Item<'a> {
    /// API group (empty for core).
    pub group: &'a str,
    /// Plural resource name.
    pub resource: &'a str,
    /// The object, where its content matters.
    pub object: Object<'a>,
}

fn is_pods(group: &str, resource: &str) -> bool {
    group.is_empty() && resource == "pods"
}

fn is_services(group: &str, resource: &str) -> bool {
    group.is_empty() && resource == "services"
}

/// Whether a `requests.<extended>` name (quota counts extended resources only as requests).
fn is_extended_for_quota(name: &str) -> bool {
    name.strip_prefix(REQUESTS_PREFIX)
        .is_some_and(is_extended_resource)
}

/// The names among `names` that objects of a kind are counted under.
pub fn matching_resources<'n>(
    group: &str,
    resource: &str,
    names: impl IntoIterator<Item = &'n str>,
) -> Vec<String> {
    let names = names.into_iter();
    if is_pods(group, resource) {
        return names
            .filter(|n| POD_RESOURCES.contains(n) || is_quota_hugepages(n) || is_extended_for_quota(n))
            .map(str::to_owned)
            .collect();
    }
    let count = object_count_name(group, resource);
    let legacy = legacy_count_name(group, resource);
    let services = is_services(group, resource);
    names
        .filter(|n| {
            *n == count
                || legacy == Some(*n)
                || (services && matches!(*n, "services" | "services.nodeports" | "services.loadbalancers"))
        })
        .map(str::to_owned)
        .collect()
}

/// The kinds whose objects a quota limiting `names` counts, as (group, resource).
pub fn tracked_kinds<'n>(names: impl IntoIterator<Item = &'n str>) -> BTreeSet<(String, String)> {
    let mut kinds = BTreeSet::new();
    for name in names {
        let kind = if !matching_resources("", "pods", [name]).is_empty() {
            Some((String::new(), "pods".to_owned()))
        } else if matches!(name, "services" | "services.nodeports" | "services.loadbalancers") {
            Some((String::new(), "services".to_owned()))
        } else if let Some(kind) = kind_of_count_name(name) {
            Some(kind)
        } else {
            ["configmaps", "secrets", "resourcequotas", "replicationcontrollers", "persistentvolumeclaims"]
                .into_iter()
                .find(|r| *r == name)
                .map(|r| (String::new(), r.to_owned()))
        };
        kinds.extend(kind);
    }
    kinds
}

fn one() -> Quantity {
    Quantity::from_units(1, Format::DecimalSI)
}

/// The compute usage of requests and limits (a pod's or one container's), as upstream's
/// `podComputeUsageHelper`: `pods` 1, cpu/memory/ephemeral-storage under their bare and
/// `requests.` names, limits under `limits.`, hugepages and extended resources as requests.
fn compute_usage(requests: &ResourceList, limits: &ResourceList) -> ResourceList {
    let mut out = ResourceList::new();
    out.insert("pods".to_owned(), one());
    for r in ["cpu", "memory", "ephemeral-storage"] {
        if let Some(q) = requests.get(r) {
            out.insert(r.to_owned(), *q);
            out.insert(format!("{REQUESTS_PREFIX}{r}"), *q);
        }
        if let Some(q) = limits.get(r) {
            out.insert(format!("limits.{r}"), *q);
        }
    }
    for (name, q) in requests {
        if name.starts_with("hugepages-") {
            out.insert(name.clone(), *q);
            out.insert(format!("{REQUESTS_PREFIX}{name}"), *q);
        }
        if is_extended_resource(name) {
            out.insert(format!("{REQUESTS_PREFIX}{name}"), *q);
        }
    }
    out
}

/// What one object uses (upstream's evaluators' `Usage`).
pub fn usage(item: &Item<'_>, now: Timestamp) -> ResourceList {
    match item.object {
        Object::Pod(p) => {
            let mut out = ResourceList::from([(POD_OBJECT_COUNT.to_owned(), one())]);
            // Finished pods (and pods past their deletion grace period) hold no compute.
            if pod::charged_for_compute(p, now) {
                out = quantity::add(&out, &compute_usage(&pod::requests(p), &pod::limits(p)));
            }
            out
        }
        Object::Service(s) => {
            let spec = s.spec.as_ref();
            let ports = spec.and_then(|s| s.ports.as_ref()).map_or(0, Vec::len) as i64;
            let mut out = ResourceList::new();
            out.insert(object_count_name("", "services"), one());
            out.insert("services".to_owned(), one());
            let (node_ports, balancers) = match spec.and_then(|s| s.type_.as_deref()) {
                Some("NodePort") => (ports, 0),
                Some("LoadBalancer") => {
                    let allocate = spec
                        .and_then(|s| s.allocate_load_balancer_node_ports)
                        .unwrap_or(true);
                    (if allocate { ports } else { 0 }, 1)
                }
                _ => (0, 0),
            };
            out.insert("services.nodeports".to_owned(), Quantity::from_units(node_ports, Format::DecimalSI));
            out.insert("services.loadbalancers".to_owned(), Quantity::from_units(balancers, Format::DecimalSI));
            out
        }
        Object::Other => {
            let mut out = ResourceList::from([(object_count_name(item.group, item.resource), one())]);
            if let Some(legacy) = legacy_count_name(item.group, item.resource) {
                out.insert(legacy.to_owned(), one());
            }
            out
        }
    }
}

/// Refuses a pod that leaves unset what a quota constrains (`must specify requests.cpu for:
/// c`): every container must state the cpu and memory amounts among `required`.
pub fn constraints(item: &Item<'_>, required: &[String]) -> Result<(), String> {
    let Object::Pod(p) = item.object else {
        return Ok(());
    };
    let required: Vec<&str> = required
        .iter()
        .map(String::as_str)
        .filter(|r| MUST_SPECIFY.contains(r))
        .collect();
    if required.is_empty() {
        return Ok(());
    }
    let mut missing: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    let Some(spec) = p.spec.as_ref() else {
        return Ok(());
    };
    for c in spec.containers.iter().chain(spec.init_containers.iter().flatten()) {
        let own = compute_usage(
            &pod::container_resources(c, pod::Side::Requests),
            &pod::container_resources(c, pod::Side::Limits),
        );
        for r in &required {
            if !own.contains_key(*r) {
                missing.entry(r).or_default().insert(&c.name);
            }
        }
    }
    if missing.is_empty() {
        return Ok(());
    }
    let parts: Vec<String> = missing
        .iter()
        .map(|(r, names)| format!("{r} for: {}", names.iter().copied().collect::<Vec<_>>().join(",")))
        .collect();
    Err(format!("must specify {}", parts.join("; ")))
}

/// One scope requirement: a scope name, an operator and values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScopeRequirement {
    /// `Terminating`, `BestEffort`, `PriorityClass`...
    pub scope: String,
    /// `In`, `NotIn`, `Exists`, `DoesNotExist`.
    pub operator: String,
    /// The values of `In` and `NotIn`.
    pub values: Vec<String>,
}

/// A quota's scopes: `spec.scopes` as `Exists` requirements, then `spec.scopeSelector`.
pub fn scope_requirements(quota: &ResourceQuota) -> Vec<ScopeRequirement> {
    let Some(spec) = quota.spec.as_ref() else {
        return Vec::new();
    };
    let mut out: Vec<ScopeRequirement> = spec
        .scopes
        .iter()
        .flatten()
        .map(|s| ScopeRequirement {
            scope: s.clone(),
            operator: "Exists".to_owned(),
            values: Vec::new(),
        })
        .collect();
    for e in spec
        .scope_selector
        .iter()
        .flat_map(|s| s.match_expressions.iter().flatten())
    {
        out.push(ScopeRequirement {
            scope: e.scope_name.clone(),
            operator: e.operator.clone(),
            values: e.values.clone().unwrap_or_default(),
        });
    }
    out
}

/// Whether an object satisfies one scope requirement; only pods ever do.
fn matches_scope(req: &ScopeRequirement, item: &Item<'_>) -> bool {
    let Object::Pod(p) = item.object else {
        return false;
    };
    match req.scope.as_str() {
        "Terminating" => pod::has_active_deadline(p),
        "NotTerminating" => !pod::has_active_deadline(p),
        "BestEffort" => pod::pod_qos(p) == "BestEffort",
        "NotBestEffort" => pod::pod_qos(p) != "BestEffort",
        "CrossNamespacePodAffinity" => pod::uses_cross_namespace_affinity(p),
        "PriorityClass" => {
            let class = p
                .spec
                .as_ref()
                .and_then(|s| s.priority_class_name.as_deref())
                .filter(|c| !c.is_empty());
            match (req.operator.as_str(), class) {
                ("Exists", c) => c.is_some(),
                ("DoesNotExist", c) => c.is_none(),
                ("In", Some(c)) => req.values.iter().any(|v| v == c),
                ("In", None) => false,
                ("NotIn", Some(c)) => !req.values.iter().any(|v| v == c),
                ("NotIn", None) => true,
                _ => false,
            }
        }
        _ => false,
    }
}

/// Whether an object satisfies every scope requirement of a quota.
pub fn matches_scopes(requirements: &[ScopeRequirement], item: &Item<'_>) -> bool {
    requirements.iter().all(|r| matches_scope(r, item))
}

fn hard_of(quota: &ResourceQuota) -> ResourceList {
    quota
        .status
        .as_ref()
        .and_then(|s| s.hard.as_ref())
        .map(quantity::from_api)
        .unwrap_or_default()
}

fn used_of(quota: &ResourceQuota) -> ResourceList {
    quota
        .status
        .as_ref()
        .and_then(|s| s.used.as_ref())
        .map(quantity::from_api)
        .unwrap_or_default()
}

fn name_of(quota: &ResourceQuota) -> &str {
    quota.metadata.name.as_deref().unwrap_or("")
}

/// A new `status.used` for the quota at `index` of the list given to [`check`].
#[derive(Debug, Clone, PartialEq)]
pub struct Charge {
    /// Which quota.
    pub index: usize,
    /// Its usage with the object charged.
    pub used: ResourceList,
}

/// Admission's check of an object being created (`old` is `None`) or updated against the
/// quotas of its namespace, as upstream's `checkRequest`: every quota whose `status.hard`
/// counts the object's kind and whose scopes the object satisfies must have usage for those
/// resources, the object must meet its constraints, and `used + requested` must stay within
/// `hard`. Returns the quotas to charge and their new usage, or upstream's refusal message
/// (`exceeded quota: compute, requested: requests.cpu=2, used: requests.cpu=1, limited:
/// requests.cpu=2`).
pub fn check(
    quotas: &[ResourceQuota],
    new: &Item<'_>,
    old: Option<&Item<'_>>,
    now: Timestamp,
) -> Result<Vec<Charge>, String> {
    let mut interesting = Vec::new();
    for (i, q) in quotas.iter().enumerate() {
        let hard = hard_of(q);
        let restricted = matching_resources(new.group, new.resource, hard.keys().map(String::as_str));
        if restricted.is_empty() || !matches_scopes(&scope_requirements(q), new) {
            continue;
        }
        constraints(new, &restricted).map_err(|e| format!("failed quota: {}: {e}", name_of(q)))?;
        let used = used_of(q);
        if restricted.iter().any(|r| !used.contains_key(r)) {
            let mut names = restricted.clone();
            names.sort();
            return Err(format!(
                "status unknown for quota: {}, resources: {}",
                name_of(q),
                names.join(",")
            ));
        }
        interesting.push(i);
    }
    let mut delta = usage(new, now);
    let negative = quantity::negative(&delta);
    if !negative.is_empty() {
        return Err(format!(
            "quota usage is negative for resource(s): {}",
            negative.join(",")
        ));
    }
    if let Some(old) = old {
        delta = quantity::subtract_non_negative(&delta, &usage(old, now));
    }
    let delta = quantity::remove_zeros(&delta);
    if delta.is_empty() {
        return Ok(Vec::new());
    }
    let mut charges = Vec::new();
    for i in interesting {
        let q = &quotas[i];
        let hard = hard_of(q);
        let used = used_of(q);
        let requested = quantity::mask(&delta, hard.keys().map(String::as_str));
        let new_used = quantity::add(&used, &requested);
        let checked = quantity::mask(&new_used, requested.keys().map(String::as_str));
        let (ok, exceeded) = quantity::less_than_or_equal(&checked, &hard);
        if !ok {
            let names = || exceeded.iter().map(String::as_str);
            return Err(format!(
                "exceeded quota: {}, requested: {}, used: {}, limited: {}",
                name_of(q),
                quantity::pretty_print(&quantity::mask(&requested, names())),
                quantity::pretty_print(&quantity::mask(&used, names())),
                quantity::pretty_print(&quantity::mask(&hard, names())),
            ));
        }
        if !quantity::equals(&new_used, &used) {
            charges.push(Charge { index: i, used: new_used });
        }
    }
    Ok(charges)
}

/// What a quota's `status.used` should be given the objects of its namespace, as upstream's
/// `CalculateUsage`: for every kind in `listed` (the kinds the caller could list) that the
/// quota's `spec.hard` counts, the usage of its objects that satisfy the quota's scopes,
/// every counted name present (zero when nothing uses it) and nothing the quota does not
/// limit.
pub fn calculate_usage(
    quota: &ResourceQuota,
    listed: &BTreeSet<(String, String)>,
    items: &[Item<'_>],
    now: Timestamp,
) -> ResourceList {
    let hard: Vec<String> = quota
        .spec
        .as_ref()
        .and_then(|s| s.hard.as_ref())
        .map(|h| h.keys().cloned().collect())
        .unwrap_or_default();
    let scopes = scope_requirements(quota);
    let mut matched = BTreeSet::new();
    let mut total = ResourceList::new();
    for (group, resource) in listed {
        let names = matching_resources(group, resource, hard.iter().map(String::as_str));
        if names.is_empty() {
            continue;
        }
        for n in &names {
            total.entry(n.clone()).or_insert_with(Quantity::zero);
        }
        for item in items
            .iter()
            .filter(|i| i.group == group && i.resource == resource)
        {
            if matches_scopes(&scopes, item) {
                total = quantity::add(&total, &usage(item, now));
            }
        }
        matched.extend(names);
    }
    quantity::mask(&total, matched.iter().map(String::as_str))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn pod(v: Value) -> Pod {
        serde_json::from_value(v).expect("a pod")
    }

    fn quota(v: Value) -> ResourceQuota {
        serde_json::from_value(v).expect("a quota")
    }

    fn pod_item(p: &Pod) -> Item<'_> {
        Item {
            group: "",
            resource: "pods",
            object: Object::Pod(p),
        }
    }

    fn now() -> Timestamp {
        Timestamp::from_second(1_700_000_000).unwrap()
    }

    fn web(cpu: &str) -> Pod {
        pod(json!({"metadata": {"name": "web"}, "spec": {"containers": [
            {"name": "nginx", "resources": {"requests": {"cpu": cpu, "memory": "64Mi"}, "limits": {"cpu": cpu}}}
        ]}}))
    }

    fn compute(hard: Value, used: Value) -> ResourceQuota {
        quota(json!({"metadata": {"name": "compute"}, "spec": {"hard": hard}, "status": {"hard": hard, "used": used}}))
    }

    #[test]
    fn pod_usage_counts_compute_until_the_pod_finishes() {
        let p = web("500m");
        let used = quantity::pretty_print(&usage(&pod_item(&p), now()));
        assert_eq!(
            used,
            "count/pods=1,cpu=500m,limits.cpu=500m,memory=64Mi,pods=1,requests.cpu=500m,requests.memory=64Mi"
        );
        let mut done = p.clone();
        done.status = Some(serde_json::from_value(json!({"phase": "Failed"})).unwrap());
        assert_eq!(quantity::pretty_print(&usage(&pod_item(&done), now())), "count/pods=1");
    }

    #[test]
    fn exceeding_a_quota_is_refused_with_upstreams_message() {
        let quotas = [compute(json!({"requests.cpu": "2", "pods": "5"}), json!({"requests.cpu": "1", "pods": "1"}))];
        let p = web("2");
        let err = check(&quotas, &pod_item(&p), None, now()).unwrap_err();
        assert_eq!(
            err,
            "exceeded quota: compute, requested: requests.cpu=2, used: requests.cpu=1, limited: requests.cpu=2"
        );
        let fits = web("1");
        let charges = check(&quotas, &pod_item(&fits), None, now()).unwrap();
        assert_eq!(charges.len(), 1);
        assert_eq!(quantity::pretty_print(&charges[0].used), "pods=2,requests.cpu=2");
    }

    #[test]
    fn a_quota_on_requests_needs_every_container_to_state_them() {
        let quotas = [compute(json!({"requests.cpu": "2", "limits.memory": "1Gi"}), json!({"requests.cpu": "0", "limits.memory": "0"}))];
        let p = pod(json!({"metadata": {"name": "p"}, "spec": {
            "containers": [{"name": "app", "resources": {"requests": {"cpu": "1"}}}, {"name": "side"}],
            "initContainers": [{"name": "init", "resources": {"requests": {"cpu": "1"}, "limits": {"memory": "1Mi"}}}],
        }}));
        assert_eq!(
            check(&quotas, &pod_item(&p), None, now()).unwrap_err(),
            "failed quota: compute: must specify limits.memory for: app,side; requests.cpu for: side"
        );
    }

    #[test]
    fn status_unknown_until_the_controller_counted() {
        let quotas = [quota(json!({"metadata": {"name": "q"}, "status": {"hard": {"pods": "1", "requests.cpu": "1"}, "used": {"pods": "0"}}}))];
        assert_eq!(
            check(&quotas, &pod_item(&web("1")), None, now()).unwrap_err(),
            "status unknown for quota: q, resources: pods,requests.cpu"
        );
        // A quota the controller has not seen yet (no status.hard) limits nothing.
        let fresh = [quota(json!({"metadata": {"name": "q"}, "spec": {"hard": {"pods": "0"}}}))];
        assert_eq!(check(&fresh, &pod_item(&web("1")), None, now()).unwrap(), vec![]);
    }

    #[test]
    fn scopes_select_pods() {
        let scoped = |scopes: Value, selector: Value| {
            quota(json!({"metadata": {"name": "s"}, "spec": {"scopes": scopes, "scopeSelector": selector}}))
        };
        let best_effort = pod(json!({"spec": {"containers": [{"name": "c"}]}}));
        let deadline = pod(json!({"spec": {"activeDeadlineSeconds": 60, "priorityClassName": "high",
            "containers": [{"name": "c", "resources": {"requests": {"cpu": "1"}}}]}}));
        let table = [
            (json!(["BestEffort"]), json!(null), true, false),
            (json!(["NotBestEffort"]), json!(null), false, true),
            (json!(["Terminating"]), json!(null), false, true),
            (json!(["NotTerminating", "BestEffort"]), json!(null), true, false),
            (json!(null), json!({"matchExpressions": [{"scopeName": "PriorityClass", "operator": "In", "values": ["high"]}]}), false, true),
            (json!(null), json!({"matchExpressions": [{"scopeName": "PriorityClass", "operator": "NotIn", "values": ["high"]}]}), true, false),
            (json!(null), json!({"matchExpressions": [{"scopeName": "PriorityClass", "operator": "DoesNotExist"}]}), true, false),
        ];
        for (scopes, selector, want_best_effort, want_deadline) in table {
            let q = scoped(scopes.clone(), selector.clone());
            let reqs = scope_requirements(&q);
            assert_eq!(matches_scopes(&reqs, &pod_item(&best_effort)), want_best_effort, "{scopes} {selector}");
            assert_eq!(matches_scopes(&reqs, &pod_item(&deadline)), want_deadline, "{scopes} {selector}");
        }
        let svc = Service::default();
        let item = Item { group: "", resource: "services", object: Object::Service(&svc) };
        assert!(!matches_scopes(&scope_requirements(&scoped(json!(["BestEffort"]), json!(null))), &item));
    }

    #[test]
    fn services_count_node_ports_and_load_balancers() {
        let svc: Service = serde_json::from_value(json!({"spec": {"type": "LoadBalancer", "ports": [{"port": 80}, {"port": 443}]}})).unwrap();
        let item = Item { group: "", resource: "services", object: Object::Service(&svc) };
        assert_eq!(
            quantity::pretty_print(&usage(&item, now())),
            "count/services=1,services=1,services.loadbalancers=1,services.nodeports=2"
        );
        // Changing a ClusterIP service into a NodePort one charges only the node ports.
        let old: Service = serde_json::from_value(json!({"spec": {"type": "ClusterIP", "ports": [{"port": 80}]}})).unwrap();
        let new: Service = serde_json::from_value(json!({"spec": {"type": "NodePort", "ports": [{"port": 80}]}})).unwrap();
        let quotas = [quota(json!({"metadata": {"name": "svc"}, "status": {
            "hard": {"services": "2", "services.nodeports": "0"}, "used": {"services": "1", "services.nodeports": "0"}}}))];
        let as_item = |s| Item { group: "", resource: "services", object: Object::Service(s) };
        assert_eq!(
            check(&quotas, &as_item(&new), Some(&as_item(&old)), now()).unwrap_err(),
            "exceeded quota: svc, requested: services.nodeports=1, used: services.nodeports=0, limited: services.nodeports=0"
        );
    }

    #[test]
    fn object_counts_by_name() {
        assert_eq!(object_count_name("apps", "deployments"), "count/deployments.apps");
        assert_eq!(kind_of_count_name("count/deployments.apps"), Some(("apps".into(), "deployments".into())));
        assert_eq!(kind_of_count_name("count/configmaps"), Some((String::new(), "configmaps".into())));
        let cm = Item { group: "", resource: "configmaps", object: Object::Other };
        assert_eq!(quantity::pretty_print(&usage(&cm, now())), "configmaps=1,count/configmaps=1");
        assert_eq!(
            matching_resources("", "configmaps", ["configmaps", "count/configmaps", "pods", "count/secrets"]),
            vec!["configmaps", "count/configmaps"]
        );
        let kinds = tracked_kinds(["requests.cpu", "count/pods", "services.nodeports", "secrets", "count/jobs.batch"]);
        let kinds: Vec<_> = kinds.iter().map(|(g, r)| format!("{g}/{r}")).collect();
        assert_eq!(kinds, vec!["/pods", "/secrets", "/services", "batch/jobs"]);
    }

    #[test]
    fn the_controller_recounts_what_exists() {
        let q = quota(json!({"metadata": {"name": "q"}, "spec": {"hard": {"pods": "10", "count/pods": "10", "requests.memory": "1Gi", "configmaps": "3", "count/widgets.example.com": "1"}}}));
        let running = web("100m");
        let mut finished = web("100m");
        finished.status = Some(serde_json::from_value(json!({"phase": "Succeeded"})).unwrap());
        let items = [pod_item(&running), pod_item(&finished)];
        let listed = BTreeSet::from([(String::new(), "pods".to_owned()), (String::new(), "configmaps".to_owned())]);
        let used = calculate_usage(&q, &listed, &items, now());
        // The widgets could not be listed: no usage is claimed for them.
        assert_eq!(
            quantity::pretty_print(&used),
            "configmaps=0,count/pods=2,pods=1,requests.memory=64Mi"
        );
    }

    #[test]
    fn name_rules() {
        assert!(is_standard_quota_resource("requests.hugepages-2Mi"));
        assert!(!is_standard_quota_resource("storage"));
        assert!(is_standard_resource("storage"));
        assert!(is_integer_resource("services.nodeports"));
        assert!(is_integer_resource("example.com/gpu"));
        assert!(!is_integer_resource("cpu"));
        assert!(scope_valid_for_resource("BestEffort", "pods"));
        assert!(!scope_valid_for_resource("BestEffort", "requests.cpu"));
        assert!(scope_valid_for_resource("NotTerminating", "limits.memory"));
        assert!(!scope_valid_for_resource("Terminating", "services"));
    }
}
