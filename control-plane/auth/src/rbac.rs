//! RBAC as users write it: Roles and ClusterRoles (verbs, API groups, resources with
//! subresources, resourceNames, nonResourceURLs; aggregated ClusterRoles), bound to users,
//! groups and ServiceAccounts by RoleBindings and ClusterRoleBindings.
//!
//! A [`RbacPolicy`] is an immutable snapshot of all four kinds with role references resolved
//! and aggregation applied; the API server rebuilds it when any of them changes, so a check is
//! a walk over the bindings of one user, without any store access.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use k8s_openapi::api::rbac::v1::{
    ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding, RoleRef, Subject,
};
use kube_core::{Selector, SelectorExt};

use crate::authn::{SERVICE_ACCOUNT_PREFIX, UserInfo};

/// What a request asks to do, as kube-apiserver's `authorizer.Attributes`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Attributes {
    /// `get`, `list`, `watch`, `create`, `update`, `patch`, `delete`, `deletecollection`, or
    /// a lower-cased HTTP method for non-resource paths.
    pub verb: String,
    /// Whether this is about an API resource (otherwise `path` is what is asked for).
    pub resource_request: bool,
    /// The namespace, for namespaced requests.
    pub namespace: Option<String>,
    /// API group (`""` for core).
    pub api_group: String,
    /// Plural resource.
    pub resource: String,
    /// Subresource (`status`, `log`, ...).
    pub subresource: Option<String>,
    /// Object name, when the request names one.
    pub name: Option<String>,
    /// The URL path (non-resource requests).
    pub path: String,
}

impl Attributes {
    /// A resource request.
    pub fn resource(
        verb: &str,
        api_group: &str,
        resource: &str,
        namespace: Option<&str>,
        name: Option<&str>,
    ) -> Attributes {
        let (resource, subresource) = match resource.split_once('/') {
            Some((r, s)) => (r, Some(s.to_owned())),
            None => (resource, None),
        };
        Attributes {
            verb: verb.to_owned(),
            resource_request: true,
            namespace: namespace.filter(|n| !n.is_empty()).map(str::to_owned),
            api_group: api_group.to_owned(),
            resource: resource.to_owned(),
            subresource,
            name: name.filter(|n| !n.is_empty()).map(str::to_owned),
            path: String::new(),
        }
    }

    /// A non-resource request (`/metrics`, `/healthz`, ...).
    pub fn non_resource(verb: &str, path: &str) -> Attributes {
        Attributes {
            verb: verb.to_owned(),
            path: path.to_owned(),
            ..Attributes::default()
        }
    }

    /// `resource/subresource` or `resource`.
    pub fn combined_resource(&self) -> String {
        match &self.subresource {
            Some(s) => format!("{}/{s}", self.resource),
            None => self.resource.clone(),
        }
    }
}

/// Whether one rule allows a request.
pub fn rule_allows(rule: &PolicyRule, attrs: &Attributes) -> bool {
    if !has(&rule.verbs, &attrs.verb) {
        return false;
    }
    if attrs.resource_request {
        let groups = rule.api_groups.as_deref().unwrap_or_default();
        let resources = rule.resources.as_deref().unwrap_or_default();
        if !has(groups, &attrs.api_group) || !resource_matches(resources, attrs) {
            return false;
        }
        match rule.resource_names.as_deref() {
            None | Some([]) => true,
            Some(names) => attrs
                .name
                .as_deref()
                .is_some_and(|n| names.iter().any(|r| r == n)),
        }
    } else {
        rule.non_resource_urls
            .as_deref()
            .unwrap_or_default()
            .iter()
            .any(|url| {
                url == "*"
                    || *url == attrs.path
                    || url
                        .strip_suffix('*')
                        .is_some_and(|prefix| attrs.path.starts_with(prefix))
            })
    }
}

fn has(list: &[String], item: &str) -> bool {
    list.iter().any(|x| x == "*" || x == item)
}

/// `pods` matches only `pods`; `pods/log` only the log subresource; `*/scale` every scale
/// subresource; `*` everything.
fn resource_matches(rule_resources: &[String], attrs: &Attributes) -> bool {
    let combined = attrs.combined_resource();
    rule_resources.iter().any(|r| {
        r == "*"
            || *r == combined
            || attrs
                .subresource
                .as_deref()
                .is_some_and(|s| r.strip_prefix("*/") == Some(s))
    })
}

/// A binding's subjects with the rules of the role it grants.
#[derive(Debug, Clone)]
struct Grant {
    subjects: Vec<Subject>,
    /// The binding's namespace (for ServiceAccount subjects without one).
    namespace: String,
    rules: Arc<Vec<PolicyRule>>,
    /// `RoleBinding ns/name` or `ClusterRoleBinding name`, for reasons.
    source: String,
}

/// Why a request was allowed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allowed {
    /// The binding and role that allowed it.
    pub reason: String,
}

/// A snapshot of the cluster's RBAC objects.
#[derive(Debug, Default)]
pub struct RbacPolicy {
    cluster: Vec<Grant>,
    namespaced: HashMap<String, Vec<Grant>>,
}

impl RbacPolicy {
    /// Builds the snapshot: aggregated ClusterRoles get the rules of the roles their
    /// selectors pick (repeatedly, so `admin` includes `edit` includes `view`), then every
    /// binding's role reference is resolved. A binding to a missing role grants nothing.
    pub fn new(
        cluster_roles: &[ClusterRole],
        roles: &[Role],
        cluster_role_bindings: &[ClusterRoleBinding],
        role_bindings: &[RoleBinding],
    ) -> RbacPolicy {
        let cluster_rules = aggregate(cluster_roles);
        let role_rules: HashMap<(String, String), Arc<Vec<PolicyRule>>> = roles
            .iter()
            .map(|r| {
                (
                    (
                        r.metadata.namespace.clone().unwrap_or_default(),
                        r.metadata.name.clone().unwrap_or_default(),
                    ),
                    Arc::new(r.rules.clone().unwrap_or_default()),
                )
            })
            .collect();
        let resolve = |namespace: &str, role_ref: &RoleRef| -> Option<Arc<Vec<PolicyRule>>> {
            match role_ref.kind.as_str() {
                "ClusterRole" => cluster_rules.get(&role_ref.name).cloned(),
                "Role" => role_rules
                    .get(&(namespace.to_owned(), role_ref.name.clone()))
                    .cloned(),
                _ => None,
            }
        };
        let mut policy = RbacPolicy::default();
        for b in cluster_role_bindings {
            if b.role_ref.kind != "ClusterRole" {
                continue;
            }
            if let Some(rules) = resolve("", &b.role_ref) {
                policy.cluster.push(Grant {
                    subjects: b.subjects.clone().unwrap_or_default(),
                    namespace: String::new(),
                    rules,
                    source: format!(
                        "ClusterRoleBinding {:?} of ClusterRole {:?}",
                        b.metadata.name.as_deref().unwrap_or_default(),
                        b.role_ref.name
                    ),
                });
            }
        }
        for b in role_bindings {
            let ns = b.metadata.namespace.clone().unwrap_or_default();
            if let Some(rules) = resolve(&ns, &b.role_ref) {
                let source = format!(
                    "RoleBinding \"{ns}/{}\" of {} {:?}",
                    b.metadata.name.as_deref().unwrap_or_default(),
                    b.role_ref.kind,
                    b.role_ref.name
                );
                policy.namespaced.entry(ns.clone()).or_default().push(Grant {
                    subjects: b.subjects.clone().unwrap_or_default(),
                    namespace: ns,
                    rules,
                    source,
                });
            }
        }
        policy
    }

    fn grants<'a>(
        &'a self,
        user: &'a UserInfo,
        namespace: Option<&'a str>,
    ) -> impl Iterator<Item = &'a Grant> + 'a {
        let namespaced = namespace
            .and_then(|ns| self.namespaced.get(ns))
            .into_iter()
            .flatten();
        self.cluster
            .iter()
            .chain(namespaced)
            .filter(move |g| g.subjects.iter().any(|s| subject_matches(s, &g.namespace, user)))
    }

    /// Whether `user` may do what `attrs` says; `Some` names the binding that allows it.
    pub fn authorize(&self, user: &UserInfo, attrs: &Attributes) -> Option<Allowed> {
        let namespace = if attrs.resource_request {
            attrs.namespace.as_deref()
        } else {
            None
        };
        self.grants(user, namespace).find_map(|g| {
            g.rules.iter().any(|r| rule_allows(r, attrs)).then(|| Allowed {
                reason: format!("RBAC: allowed by {}", g.source),
            })
        })
    }

    /// Every rule that applies to `user` in `namespace` (cluster-wide ones included), as
    /// `SelfSubjectRulesReview` reports them.
    pub fn rules_for(&self, user: &UserInfo, namespace: &str) -> Vec<PolicyRule> {
        let ns = (!namespace.is_empty()).then_some(namespace);
        self.grants(user, ns)
            .flat_map(|g| g.rules.iter().cloned())
            .collect()
    }
}

/// Whether a binding subject names `user`.
fn subject_matches(subject: &Subject, binding_namespace: &str, user: &UserInfo) -> bool {
    match subject.kind.as_str() {
        "User" => subject.name == user.name,
        "Group" => user.in_group(&subject.name),
        "ServiceAccount" => {
            let ns = subject
                .namespace
                .as_deref()
                .filter(|n| !n.is_empty())
                .unwrap_or(binding_namespace);
            user.name
                .strip_prefix(SERVICE_ACCOUNT_PREFIX)
                .and_then(|rest| rest.split_once(':'))
                == Some((ns, subject.name.as_str()))
        }
        _ => false,
    }
}

/// Each ClusterRole's effective rules: its own, or for an aggregated role the union of the
/// rules of every other ClusterRole its selectors pick, iterated until nothing changes (so
/// aggregation chains resolve, as the aggregation controller's repeated passes do).
fn aggregate(cluster_roles: &[ClusterRole]) -> HashMap<String, Arc<Vec<PolicyRule>>> {
    let mut rules: BTreeMap<String, Vec<PolicyRule>> = cluster_roles
        .iter()
        .map(|r| {
            (
                r.metadata.name.clone().unwrap_or_default(),
                r.rules.clone().unwrap_or_default(),
            )
        })
        .collect();
    let selectors: Vec<(String, Vec<Selector>)> = cluster_roles
        .iter()
        .filter_map(|r| {
            let rule = r.aggregation_rule.as_ref()?;
            let selectors = rule
                .cluster_role_selectors
                .clone()
                .unwrap_or_default()
                .into_iter()
                .filter_map(|s| Selector::try_from(s).ok())
                .collect();
            Some((r.metadata.name.clone().unwrap_or_default(), selectors))
        })
        .collect();
    let empty = BTreeMap::new();
    for _ in 0..=selectors.len() {
        let mut changed = false;
        for (name, sels) in &selectors {
            let mut union: Vec<PolicyRule> = Vec::new();
            for source in cluster_roles {
                let source_name = source.metadata.name.as_deref().unwrap_or_default();
                let labels = source.metadata.labels.as_ref().unwrap_or(&empty);
                if source_name == name
                    || !sels.iter().any(|s| !s.selects_all() && s.matches(labels))
                {
                    continue;
                }
                for rule in rules.get(source_name).into_iter().flatten() {
                    if !union.contains(rule) {
                        union.push(rule.clone());
                    }
                }
            }
            if rules.get(name) != Some(&union) {
                rules.insert(name.clone(), union);
                changed = true;
            }
        }
        if !changed {
            break;
        }
    }
    rules.into_iter().map(|(k, v)| (k, Arc::new(v))).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
    use serde_json::json;

    fn from<T: serde::de::DeserializeOwned>(v: serde_json::Value) -> T {
        serde_json::from_value(v).unwrap()
    }

    fn user(name: &str, groups: &[&str]) -> UserInfo {
        UserInfo::new(name, groups.iter().copied())
    }

    fn policy() -> RbacPolicy {
        let cluster_roles: Vec<ClusterRole> = vec![
            from(json!({"metadata": {"name": "pod-reader", "labels": {"agg": "view"}},
                "rules": [{"apiGroups": [""], "resources": ["pods", "pods/log"], "verbs": ["get", "list", "watch"]}]})),
            from(json!({"metadata": {"name": "deploy-scaler", "labels": {"agg": "edit"}},
                "rules": [{"apiGroups": ["apps"], "resources": ["*/scale"], "verbs": ["update", "patch"]}]})),
            from(json!({"metadata": {"name": "viewer", "labels": {"agg": "edit"}},
                "aggregationRule": {"clusterRoleSelectors": [{"matchLabels": {"agg": "view"}}]}})),
            from(json!({"metadata": {"name": "editor"},
                "aggregationRule": {"clusterRoleSelectors": [{"matchLabels": {"agg": "edit"}}]}})),
            from(json!({"metadata": {"name": "metrics"},
                "rules": [{"nonResourceURLs": ["/metrics", "/debug/*"], "verbs": ["get"]}]})),
        ];
        let roles: Vec<Role> = vec![
            from(json!({"metadata": {"name": "cm-one", "namespace": "team"},
                "rules": [{"apiGroups": [""], "resources": ["configmaps"], "resourceNames": ["settings"], "verbs": ["get", "update"]}]})),
        ];
        let crbs: Vec<ClusterRoleBinding> = vec![
            from(json!({"metadata": {"name": "ops-edit"}, "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "editor"},
                "subjects": [{"kind": "Group", "name": "ops", "apiGroup": "rbac.authorization.k8s.io"}]})),
            from(json!({"metadata": {"name": "prom"}, "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "metrics"},
                "subjects": [{"kind": "ServiceAccount", "name": "prometheus", "namespace": "monitoring"}]})),
            from(json!({"metadata": {"name": "dangling"}, "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "missing"},
                "subjects": [{"kind": "User", "name": "eve"}]})),
        ];
        let rbs: Vec<RoleBinding> = vec![
            from(json!({"metadata": {"name": "alice-view", "namespace": "team"}, "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "viewer"},
                "subjects": [{"kind": "User", "name": "alice", "apiGroup": "rbac.authorization.k8s.io"}]})),
            from(json!({"metadata": {"name": "alice-cm", "namespace": "team"}, "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "cm-one"},
                "subjects": [{"kind": "User", "name": "alice"}]})),
            from(json!({"metadata": {"name": "builder", "namespace": "ci"}, "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "pod-reader"},
                "subjects": [{"kind": "ServiceAccount", "name": "builder"}]})),
        ];
        RbacPolicy::new(&cluster_roles, &roles, &crbs, &rbs)
    }

    #[test]
    fn table_of_cases() {
        let policy = policy();
        let alice = user("alice", &[]);
        let ops = user("olga", &["ops"]);
        let builder = UserInfo::service_account("ci", "builder", "u1");
        let other_builder = UserInfo::service_account("other", "builder", "u2");
        let prom = UserInfo::service_account("monitoring", "prometheus", "u3");
        let eve = user("eve", &[]);
        let r = Attributes::resource;
        let cases: Vec<(&UserInfo, Attributes, bool)> = vec![
            // a ClusterRole bound in one namespace applies there only
            (&alice, r("list", "", "pods", Some("team"), None), true),
            (&alice, r("get", "", "pods/log", Some("team"), Some("web")), true),
            (&alice, r("list", "", "pods", Some("default"), None), false),
            (&alice, r("list", "", "pods", None, None), false),
            (&alice, r("delete", "", "pods", Some("team"), Some("web")), false),
            // `pods` does not grant subresources it does not name
            (&alice, r("get", "", "pods/exec", Some("team"), Some("web")), false),
            // resourceNames
            (&alice, r("get", "", "configmaps", Some("team"), Some("settings")), true),
            (&alice, r("get", "", "configmaps", Some("team"), Some("other")), false),
            (&alice, r("list", "", "configmaps", Some("team"), None), false),
            // aggregation chains: editor <- viewer <- pod-reader, editor <- deploy-scaler
            (&ops, r("watch", "", "pods", None, None), true),
            (&ops, r("update", "apps", "deployments/scale", Some("x"), Some("d")), true),
            (&ops, r("update", "apps", "deployments", Some("x"), Some("d")), false),
            (&ops, r("update", "", "pods/scale", Some("x"), Some("d")), false),
            // ServiceAccount subjects default to the binding's namespace
            (&builder, r("get", "", "pods", Some("ci"), Some("p")), true),
            (&other_builder, r("get", "", "pods", Some("ci"), Some("p")), false),
            // non-resource URLs, with prefixes
            (&prom, Attributes::non_resource("get", "/metrics"), true),
            (&prom, Attributes::non_resource("get", "/debug/pprof"), true),
            (&prom, Attributes::non_resource("post", "/metrics"), false),
            (&prom, Attributes::non_resource("get", "/metricsz"), false),
            // a binding to a missing role grants nothing
            (&eve, r("get", "", "pods", Some("default"), Some("p")), false),
        ];
        for (who, attrs, want) in cases {
            assert_eq!(
                policy.authorize(who, &attrs).is_some(),
                want,
                "{} {attrs:?}",
                who.name
            );
        }
    }

    #[test]
    fn reasons_name_the_binding() {
        let policy = policy();
        let allowed = policy
            .authorize(&user("alice", &[]), &Attributes::resource("get", "", "pods", Some("team"), Some("p")))
            .unwrap();
        assert!(allowed.reason.contains("RoleBinding \"team/alice-view\""), "{}", allowed.reason);
    }

    #[test]
    fn rules_for_lists_namespace_and_cluster_rules() {
        let policy = policy();
        let rules = policy.rules_for(&user("alice", &[]), "team");
        assert_eq!(rules.len(), 2, "{rules:?}");
        assert!(policy.rules_for(&user("alice", &[]), "default").is_empty());
    }

    #[test]
    fn an_empty_selector_aggregates_nothing() {
        let roles = vec![
            ClusterRole {
                metadata: ObjectMeta { name: Some("all".into()), ..ObjectMeta::default() },
                aggregation_rule: Some(from(json!({"clusterRoleSelectors": [{}]}))),
                ..ClusterRole::default()
            },
            from(json!({"metadata": {"name": "a"}, "rules": [{"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]}]})),
        ];
        let crb: ClusterRoleBinding = from(json!({"metadata": {"name": "b"}, "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "all"},
            "subjects": [{"kind": "User", "name": "u"}]}));
        let policy = RbacPolicy::new(&roles, &[], &[crb], &[]);
        assert!(policy.authorize(&user("u", &[]), &Attributes::resource("get", "", "pods", None, None)).is_none());
    }
}
