//! The default RBAC policy the API server keeps in the store (as upstream's bootstrap
//! policy): `cluster-admin` for `system:masters`; the user-facing `admin`, `edit` and `view`
//! aggregated from `system:aggregate-to-*`; discovery, public info and self reviews for every
//! authenticated user; and one least-privileged role per component identity.
//!
//! Every object carries `kubernetes.io/bootstrapping: rbac-defaults` and
//! `rbac.authorization.kubernetes.io/autoupdate: "true"`; the API server recreates missing
//! ones at start and brings back the rules of those still marked autoupdate.

use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use serde_json::{Value, json};

/// The controller-manager's user.
pub const CONTROLLER_MANAGER_USER: &str = "system:kube-controller-manager";
/// The scheduler's user.
pub const SCHEDULER_USER: &str = "system:kube-scheduler";
/// The admin kubeconfig's user.
pub const ADMIN_USER: &str = "kubernetes-admin";
/// The API server's own identity (its loopback client and calls to kubelets).
pub const APISERVER_USER: &str = "kube-apiserver";
/// The API server's identity towards kubelets (kubeadm's `apiserver-kubelet-client`
/// certificate), bound to `system:kubelet-api-admin`.
pub const KUBELET_CLIENT_USER: &str = "kube-apiserver-kubelet-client";
/// The annotation that lets the API server restore a default object's rules.
pub const AUTOUPDATE: &str = "rbac.authorization.kubernetes.io/autoupdate";

fn rule(groups: &[&str], resources: &[&str], verbs: &[&str]) -> Value {
    json!({"apiGroups": groups, "resources": resources, "verbs": verbs})
}

fn urls(urls: &[&str], verbs: &[&str]) -> Value {
    json!({"nonResourceURLs": urls, "verbs": verbs})
}

const READ: &[&str] = &["get", "list", "watch"];
const WRITE: &[&str] = &["create", "delete", "deletecollection", "patch", "update"];
const ALL: &[&str] = &["get", "list", "watch", "create", "delete", "deletecollection", "patch", "update"];

fn meta(name: &str, extra_labels: &[(&str, &str)]) -> Value {
    let mut labels = serde_json::Map::new();
    labels.insert("kubernetes.io/bootstrapping".into(), "rbac-defaults".into());
    for (k, v) in extra_labels {
        labels.insert((*k).into(), (*v).into());
    }
    json!({"name": name, "labels": labels, "annotations": {AUTOUPDATE: "true"}})
}

fn cluster_role(name: &str, labels: &[(&str, &str)], rules: Vec<Value>) -> ClusterRole {
    typed(json!({"metadata": meta(name, labels), "rules": rules}))
}

fn aggregated(name: &str, labels: &[(&str, &str)], aggregate_from: &[&str]) -> ClusterRole {
    let selectors: Vec<Value> = aggregate_from
        .iter()
        .map(|l| json!({"matchLabels": {*l: "true"}}))
        .collect();
    typed(json!({
        "metadata": meta(name, labels),
        "aggregationRule": {"clusterRoleSelectors": selectors},
        "rules": [],
    }))
}

fn typed<T: serde::de::DeserializeOwned>(v: Value) -> T {
    // The values are literals of this module; the tests deserialize every one of them.
    serde_json::from_value(v).unwrap_or_else(|e| panic!("a bootstrap policy object is malformed: {e}"))
}

const TO_ADMIN: &str = "rbac.authorization.k8s.io/aggregate-to-admin";
const TO_EDIT: &str = "rbac.authorization.k8s.io/aggregate-to-edit";
const TO_VIEW: &str = "rbac.authorization.k8s.io/aggregate-to-view";

/// The default ClusterRoles.
pub fn cluster_roles() -> Vec<ClusterRole> {
    let core_read = &[
        "pods", "pods/log", "pods/status", "services", "services/status", "endpoints",
        "configmaps", "persistentvolumeclaims", "persistentvolumeclaims/status",
        "replicationcontrollers", "replicationcontrollers/scale", "serviceaccounts", "events",
        "limitranges", "resourcequotas", "resourcequotas/status", "namespaces", "namespaces/status",
    ][..];
    let apps = &[
        "deployments", "deployments/scale", "deployments/status", "replicasets",
        "replicasets/scale", "replicasets/status", "daemonsets", "daemonsets/status",
        "statefulsets", "statefulsets/scale", "statefulsets/status", "controllerrevisions",
    ][..];
    let batch = &["jobs", "jobs/status", "cronjobs", "cronjobs/status"][..];
    vec![
        cluster_role(
            "cluster-admin",
            &[],
            vec![rule(&["*"], &["*"], &["*"]), urls(&["*"], &["*"])],
        ),
        aggregated("admin", &[], &[TO_ADMIN]),
        aggregated("edit", &[(TO_ADMIN, "true")], &[TO_EDIT]),
        aggregated("view", &[(TO_EDIT, "true")], &[TO_VIEW]),
        cluster_role(
            "system:aggregate-to-view",
            &[(TO_VIEW, "true")],
            vec![
                rule(&[""], core_read, READ),
                rule(&["apps"], apps, READ),
                rule(&["batch"], batch, READ),
                rule(&["discovery.k8s.io"], &["endpointslices"], READ),
                rule(&["policy"], &["poddisruptionbudgets", "poddisruptionbudgets/status"], READ),
                rule(&["autoscaling"], &["horizontalpodautoscalers", "horizontalpodautoscalers/status"], READ),
                rule(&["networking.k8s.io"], &["ingresses", "ingresses/status", "networkpolicies"], READ),
                rule(&["coordination.k8s.io"], &["leases"], READ),
            ],
        ),
        cluster_role(
            "system:aggregate-to-edit",
            &[(TO_EDIT, "true")],
            vec![
                rule(&[""], &["pods/attach", "pods/exec", "pods/portforward", "pods/proxy", "secrets", "services/proxy"], READ),
                rule(&[""], &["serviceaccounts"], &["impersonate"]),
                rule(&[""], &["pods", "pods/attach", "pods/exec", "pods/portforward", "pods/proxy", "pods/eviction"], &["create"]),
                rule(&[""], &["pods", "pods/attach", "pods/exec", "pods/portforward", "pods/proxy"], &["delete", "deletecollection", "patch", "update"]),
                rule(&[""], &["configmaps", "events", "persistentvolumeclaims", "replicationcontrollers", "replicationcontrollers/scale", "secrets", "serviceaccounts", "services", "services/proxy", "endpoints"], WRITE),
                rule(&[""], &["serviceaccounts/token"], &["create"]),
                rule(&["apps"], &["daemonsets", "deployments", "deployments/rollback", "deployments/scale", "replicasets", "replicasets/scale", "statefulsets", "statefulsets/scale"], WRITE),
                rule(&["batch"], &["jobs", "cronjobs"], WRITE),
                rule(&["discovery.k8s.io"], &["endpointslices"], WRITE),
                rule(&["policy"], &["poddisruptionbudgets"], WRITE),
                rule(&["autoscaling"], &["horizontalpodautoscalers"], WRITE),
                rule(&["networking.k8s.io"], &["ingresses", "networkpolicies"], WRITE),
                rule(&["coordination.k8s.io"], &["leases"], WRITE),
            ],
        ),
        cluster_role(
            "system:aggregate-to-admin",
            &[(TO_ADMIN, "true")],
            vec![
                rule(&["authorization.k8s.io"], &["localsubjectaccessreviews"], &["create"]),
                rule(&["rbac.authorization.k8s.io"], &["rolebindings", "roles"], ALL),
            ],
        ),
        cluster_role(
            "system:basic-user",
            &[],
            vec![
                rule(&["authorization.k8s.io"], &["selfsubjectaccessreviews", "selfsubjectrulesreviews"], &["create"]),
                rule(&["authentication.k8s.io"], &["selfsubjectreviews"], &["create"]),
            ],
        ),
        cluster_role(
            "system:discovery",
            &[],
            vec![urls(
                &["/api", "/api/*", "/apis", "/apis/*", "/healthz", "/livez", "/livez/*", "/readyz", "/readyz/*", "/openapi", "/openapi/*", "/version", "/version/"],
                &["get"],
            )],
        ),
        cluster_role(
            "system:public-info-viewer",
            &[],
            vec![urls(&["/healthz", "/livez", "/readyz", "/version", "/version/"], &["get"])],
        ),
        cluster_role(
            "system:monitoring",
            &[],
            vec![urls(&["/metrics", "/healthz", "/livez", "/readyz"], &["get"])],
        ),
        cluster_role(
            "system:kube-scheduler",
            &[],
            vec![
                rule(&[""], &["pods", "nodes", "namespaces"], READ),
                rule(&[""], &["pods"], &["delete"]),
                rule(&[""], &["pods/binding", "bindings"], &["create"]),
                rule(&[""], &["pods/status"], &["patch", "update"]),
                rule(&["", "events.k8s.io"], &["events"], &["create", "patch", "update"]),
                rule(&["coordination.k8s.io"], &["leases"], &["get", "create", "update"]),
                rule(&["scheduling.k8s.io"], &["priorityclasses"], READ),
            ],
        ),
        cluster_role(
            "system:kube-controller-manager",
            &[],
            vec![
                // The garbage collector and the namespace controller act on every kind.
                rule(&["*"], &["*"], &["get", "list", "watch", "delete", "deletecollection", "patch", "update"]),
                rule(&[""], &["pods", "endpoints", "serviceaccounts", "events", "nodes", "configmaps"], &["create"]),
                rule(&[""], &["pods/eviction"], &["create"]),
                rule(&["events.k8s.io"], &["events"], &["create"]),
                rule(&["apps"], &["replicasets", "controllerrevisions"], &["create"]),
                rule(&["batch"], &["jobs"], &["create"]),
                rule(&["discovery.k8s.io"], &["endpointslices"], &["create"]),
                rule(&["coordination.k8s.io"], &["leases"], &["create"]),
                rule(&["certificates.k8s.io"], &["certificatesigningrequests/approval", "certificatesigningrequests/status"], &["update", "patch"]),
            ],
        ),
        cluster_role(
            "system:node",
            &[],
            vec![
                rule(&[""], &["nodes"], &["get", "list", "watch", "create", "update", "patch"]),
                rule(&[""], &["nodes/status"], &["patch", "update"]),
                rule(&[""], &["pods"], &["get", "list", "watch", "create", "delete"]),
                rule(&[""], &["pods/status"], &["patch", "update"]),
                rule(&[""], &["pods/eviction"], &["create"]),
                rule(&[""], &["configmaps", "secrets", "services", "endpoints", "persistentvolumeclaims", "namespaces"], &["get", "list", "watch"]),
                rule(&[""], &["serviceaccounts/token"], &["create"]),
                rule(&["", "events.k8s.io"], &["events"], &["create", "patch", "update"]),
                rule(&["discovery.k8s.io"], &["endpointslices"], READ),
                rule(&["coordination.k8s.io"], &["leases"], &["get", "create", "update", "patch", "delete"]),
                rule(&["certificates.k8s.io"], &["certificatesigningrequests"], &["create", "get", "list", "watch"]),
                // The kubelet's delegated authentication and authorization of its own API.
                rule(&["authentication.k8s.io"], &["tokenreviews"], &["create"]),
                rule(&["authorization.k8s.io"], &["subjectaccessreviews", "localsubjectaccessreviews"], &["create"]),
            ],
        ),
        cluster_role(
            "system:node-bootstrapper",
            &[],
            vec![rule(&["certificates.k8s.io"], &["certificatesigningrequests"], &["create", "get", "list", "watch"])],
        ),
        cluster_role(
            "system:service-account-issuer-discovery",
            &[],
            vec![urls(&["/.well-known/openid-configuration", "/.well-known/openid-configuration/", "/openid/v1/jwks", "/openid/v1/jwks/"], &["get"])],
        ),
        cluster_role(
            "system:auth-delegator",
            &[],
            vec![
                rule(&["authentication.k8s.io"], &["tokenreviews"], &["create"]),
                rule(&["authorization.k8s.io"], &["subjectaccessreviews"], &["create"]),
            ],
        ),
        cluster_role(
            "system:kubelet-api-admin",
            &[],
            vec![
                rule(&[""], &["nodes"], &["get", "list", "watch", "proxy"]),
                rule(&[""], &["nodes/proxy", "nodes/metrics", "nodes/stats", "nodes/log", "nodes/configz", "nodes/healthz", "nodes/pods"], &["*"]),
            ],
        ),
        cluster_role(
            "system:kube-apiserver-to-kubelet",
            &[],
            vec![rule(&[""], &["nodes/proxy", "nodes/stats", "nodes/log", "nodes/metrics"], &["*"])],
        ),
    ]
}

fn binding(name: &str, role: &str, subjects: Vec<Value>) -> ClusterRoleBinding {
    typed(json!({
        "metadata": meta(name, &[]),
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
        "subjects": subjects,
    }))
}

fn group(name: &str) -> Value {
    json!({"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": name})
}

fn user(name: &str) -> Value {
    json!({"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": name})
}

/// The default ClusterRoleBindings.
pub fn cluster_role_bindings() -> Vec<ClusterRoleBinding> {
    vec![
        binding("cluster-admin", "cluster-admin", vec![group("system:masters")]),
        binding("system:basic-user", "system:basic-user", vec![group("system:authenticated")]),
        binding("system:discovery", "system:discovery", vec![group("system:authenticated")]),
        binding(
            "system:public-info-viewer",
            "system:public-info-viewer",
            vec![group("system:authenticated"), group("system:unauthenticated")],
        ),
        binding("system:monitoring", "system:monitoring", vec![group("system:monitoring")]),
        binding("system:kube-scheduler", "system:kube-scheduler", vec![user(SCHEDULER_USER)]),
        binding(
            "system:kube-controller-manager",
            "system:kube-controller-manager",
            vec![user(CONTROLLER_MANAGER_USER)],
        ),
        binding("system:node", "system:node", vec![group(crate::authn::NODES)]),
        binding(
            "system:node-bootstrapper",
            "system:node-bootstrapper",
            vec![group(crate::authn::BOOTSTRAPPERS)],
        ),
        binding(
            "system:service-account-issuer-discovery",
            "system:service-account-issuer-discovery",
            vec![group(crate::authn::SERVICE_ACCOUNTS)],
        ),
        binding(
            "system:kube-apiserver-to-kubelet",
            "system:kube-apiserver-to-kubelet",
            vec![user(APISERVER_USER)],
        ),
        binding("kube-apiserver:kubelet-apis", "system:kubelet-api-admin", vec![user(KUBELET_CLIENT_USER)]),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::authn::UserInfo;
    use crate::rbac::{Attributes, RbacPolicy};

    fn defaults() -> RbacPolicy {
        RbacPolicy::new(&cluster_roles(), &[], &cluster_role_bindings(), &[])
    }

    #[test]
    fn every_binding_names_an_existing_role() {
        let roles = cluster_roles();
        for b in cluster_role_bindings() {
            assert!(
                roles.iter().any(|r| r.metadata.name.as_deref() == Some(&b.role_ref.name)),
                "{:?}",
                b.metadata.name
            );
        }
    }

    #[test]
    fn default_roles_as_users_know_them() {
        let policy = defaults();
        let r = Attributes::resource;
        let nobody = UserInfo::new("nobody", Vec::<String>::new());
        let admin = UserInfo::new(ADMIN_USER, ["system:masters"]);
        let scheduler = UserInfo::new(SCHEDULER_USER, Vec::<String>::new());
        let node = UserInfo::new("system:node:n1", [crate::authn::NODES]);
        let controllers = UserInfo::new(CONTROLLER_MANAGER_USER, Vec::<String>::new());
        let kubelet_client = UserInfo::new(KUBELET_CLIENT_USER, Vec::<String>::new());
        let cases: Vec<(&UserInfo, Attributes, bool)> = vec![
            (&admin, r("delete", "rbac.authorization.k8s.io", "clusterroles", None, Some("x")), true),
            (&admin, Attributes::non_resource("get", "/metrics"), true),
            (&nobody, Attributes::non_resource("get", "/apis/apps/v1"), true),
            (&nobody, Attributes::non_resource("get", "/metrics"), false),
            (&nobody, r("create", "authorization.k8s.io", "selfsubjectaccessreviews", None, None), true),
            (&nobody, r("list", "", "pods", Some("default"), None), false),
            (&scheduler, r("create", "", "pods/binding", Some("default"), Some("p")), true),
            (&scheduler, r("list", "", "secrets", None, None), false),
            (&scheduler, r("delete", "", "nodes", None, Some("n1")), false),
            (&node, r("update", "", "nodes/status", None, Some("n1")), true),
            (&node, r("create", "", "pods", Some("default"), None), true),
            (&node, r("create", "apps", "deployments", Some("default"), None), false),
            (&node, r("list", "rbac.authorization.k8s.io", "roles", None, None), false),
            // Tokens for its pods' accounts (NodeRestriction narrows this to those pods).
            (&node, r("create", "", "serviceaccounts/token", Some("default"), Some("default")), true),
            (&node, r("get", "", "configmaps", Some("default"), Some("kube-root-ca.crt")), true),
            (&node, r("create", "", "serviceaccounts", Some("default"), None), false),
            // The root CA publisher creates kube-root-ca.crt in every namespace.
            (&controllers, r("create", "", "configmaps", Some("team"), None), true),
            (&node, r("create", "authorization.k8s.io", "subjectaccessreviews", None, None), true),
            (&node, r("create", "authentication.k8s.io", "tokenreviews", None, None), true),
            (&node, r("get", "", "nodes/proxy", None, Some("n1")), false),
            (&kubelet_client, r("create", "", "nodes/proxy", None, Some("n1")), true),
            (&kubelet_client, r("get", "", "nodes/log", None, Some("n1")), true),
            (&kubelet_client, r("get", "", "pods", Some("default"), None), false),
            (&nobody, r("get", "", "nodes/proxy", None, Some("n1")), false),
        ];
        for (who, attrs, want) in cases {
            assert_eq!(policy.authorize(who, &attrs).is_some(), want, "{} {attrs:?}", who.name);
        }
    }

    #[test]
    fn admin_edit_view_aggregate_like_upstream() {
        let bind = |role: &str| -> RbacPolicy {
            let rb: k8s_openapi::api::rbac::v1::RoleBinding = typed(json!({
                "metadata": {"name": "b", "namespace": "team"},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
                "subjects": [user("u")],
            }));
            RbacPolicy::new(&cluster_roles(), &[], &[], &[rb])
        };
        let u = UserInfo::new("u", Vec::<String>::new());
        let r = Attributes::resource;
        let view = bind("view");
        let edit = bind("edit");
        let admin = bind("admin");
        let list_pods = r("list", "", "pods", Some("team"), None);
        let create_deploy = r("create", "apps", "deployments", Some("team"), None);
        let read_secret = r("get", "", "secrets", Some("team"), Some("s"));
        let create_role = r("create", "rbac.authorization.k8s.io", "roles", Some("team"), None);
        assert!(view.authorize(&u, &list_pods).is_some());
        assert!(view.authorize(&u, &create_deploy).is_none());
        assert!(view.authorize(&u, &read_secret).is_none(), "view cannot read secrets");
        assert!(edit.authorize(&u, &list_pods).is_some(), "edit includes view");
        assert!(edit.authorize(&u, &create_deploy).is_some());
        assert!(edit.authorize(&u, &read_secret).is_some());
        assert!(edit.authorize(&u, &create_role).is_none());
        assert!(admin.authorize(&u, &list_pods).is_some(), "admin includes edit and view");
        assert!(admin.authorize(&u, &create_role).is_some());
        assert!(admin.authorize(&u, &r("list", "", "pods", Some("other"), None)).is_none());
    }

    #[test]
    fn quotas_and_limit_ranges_are_read_only_below_cluster_admin() {
        // Upstream: view (so edit and admin) reads them; only cluster admins write them; the
        // controller-manager writes quota status.
        let bind = |role: &str| -> RbacPolicy {
            let rb: k8s_openapi::api::rbac::v1::RoleBinding = typed(json!({
                "metadata": {"name": "b", "namespace": "team"},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
                "subjects": [user("u")],
            }));
            RbacPolicy::new(&cluster_roles(), &[], &[], &[rb])
        };
        let u = UserInfo::new("u", Vec::<String>::new());
        let r = Attributes::resource;
        for role in ["view", "edit", "admin"] {
            let policy = bind(role);
            for resource in ["resourcequotas", "resourcequotas/status", "limitranges"] {
                for verb in ["get", "list", "watch"] {
                    assert!(policy.authorize(&u, &r(verb, "", resource, Some("team"), None)).is_some(), "{role} {verb} {resource}");
                }
            }
            for resource in ["resourcequotas", "limitranges"] {
                for verb in ["create", "update", "patch", "delete"] {
                    assert!(policy.authorize(&u, &r(verb, "", resource, Some("team"), Some("q"))).is_none(), "{role} {verb} {resource}");
                }
            }
        }
        let manager = UserInfo::new(CONTROLLER_MANAGER_USER, Vec::<String>::new());
        let status = r("update", "", "resourcequotas/status", Some("team"), Some("q"));
        assert!(defaults().authorize(&manager, &status).is_some());
    }
}
