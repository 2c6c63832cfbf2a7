//! Resource types from the server's discovery: what `po`, `deploy`, `deployments.apps` or
//! `Deployment` name, with the short names, singular names and scopes kubectl resolves.

use anyhow::{Context, Result, bail};
use futures::future::try_join_all;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::APIResourceList;
use kube::api::{Api, DynamicObject};
use kube::client::APIGroupDiscoveryList;
use kube::core::ApiResource;

use crate::client::{Connection, server_error};

/// One resource type the server serves, at one group version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resource {
    /// API group (`""` for the core group).
    pub group: String,
    /// Version (`v1`).
    pub version: String,
    /// Kind (`Deployment`).
    pub kind: String,
    /// Plural, the name in URLs (`deployments`).
    pub plural: String,
    /// Singular (`deployment`; kind lower-cased when the server leaves it empty).
    pub singular: String,
    /// Short names (`deploy`).
    pub short_names: Vec<String>,
    /// Namespaced or cluster-scoped.
    pub namespaced: bool,
    /// Verbs (`get`, `list`, `patch`...).
    pub verbs: Vec<String>,
    /// Subresources (`status`, `scale`, `log`...).
    pub subresources: Vec<String>,
    /// Whether this is the group's preferred version.
    pub preferred: bool,
}

impl Resource {
    /// `apps/v1` or `v1`.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.clone()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// The kube-rs description of this resource.
    pub fn api_resource(&self) -> ApiResource {
        ApiResource {
            group: self.group.clone(),
            version: self.version.clone(),
            api_version: self.api_version(),
            kind: self.kind.clone(),
            plural: self.plural.clone(),
        }
    }

    /// How kubectl names the type in messages: `deployment.apps`, `pod`.
    pub fn display(&self) -> String {
        let kind = self.kind.to_lowercase();
        if self.group.is_empty() {
            kind
        } else {
            format!("{kind}.{}", self.group)
        }
    }

    /// How kubectl names the type in `Error from server` messages: `deployments.apps`, `pods`.
    pub fn plural_display(&self) -> String {
        if self.group.is_empty() {
            self.plural.clone()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }

    /// Whether `verb` is allowed.
    pub fn supports(&self, verb: &str) -> bool {
        self.verbs.iter().any(|v| v == verb)
    }

    /// A dynamic API for this resource in `namespace` (ignored when cluster-scoped);
    /// `None` lists across all namespaces.
    pub fn api(&self, conn: &Connection, namespace: Option<&str>) -> Api<DynamicObject> {
        let ar = self.api_resource();
        match (self.namespaced, namespace) {
            (true, Some(ns)) => Api::namespaced_with(conn.client.clone(), ns, &ar),
            _ => Api::all_with(conn.client.clone(), &ar),
        }
    }

    fn matches_name(&self, name: &str) -> bool {
        name == self.plural
            || name == self.singular
            || name == self.kind.to_lowercase()
            || self.short_names.iter().any(|s| s == name)
    }
}

/// Every resource type the server serves.
#[derive(Debug, Clone, Default)]
pub struct Catalog {
    resources: Vec<Resource>,
}

impl Catalog {
    /// Builds the catalog from discovery documents: `(group, version, preferred, list)`.
    pub fn from_lists(lists: Vec<(String, String, bool, APIResourceList)>) -> Catalog {
        let mut resources = Vec::new();
        for (group, version, preferred, list) in lists {
            let subresources = |plural: &str| -> Vec<String> {
                list.resources
                    .iter()
                    .filter_map(|r| r.name.strip_prefix(plural)?.strip_prefix('/'))
                    .map(str::to_owned)
                    .collect()
            };
            for r in list.resources.iter().filter(|r| !r.name.contains('/')) {
                let singular = if r.singular_name.is_empty() {
                    r.kind.to_lowercase()
                } else {
                    r.singular_name.clone()
                };
                resources.push(Resource {
                    group: group.clone(),
                    version: version.clone(),
                    kind: r.kind.clone(),
                    plural: r.name.clone(),
                    singular,
                    short_names: r.short_names.clone().unwrap_or_default(),
                    namespaced: r.namespaced,
                    verbs: r.verbs.clone(),
                    subresources: subresources(&r.name),
                    preferred,
                });
            }
        }
        Catalog { resources }
    }

    /// Builds the catalog from aggregated discovery (`apidiscovery.k8s.io/v2`, the core
    /// group's document then the others'); versions come in preference order.
    pub fn from_aggregated(documents: &[APIGroupDiscoveryList]) -> Catalog {
        let mut resources = Vec::new();
        for group in documents.iter().flat_map(|d| &d.items) {
            let name = group
                .metadata
                .as_ref()
                .and_then(|m| m.name.clone())
                .unwrap_or_default();
            for (i, version) in group.versions.iter().enumerate() {
                let Some(v) = version.version.clone() else {
                    continue;
                };
                for r in &version.resources {
                    let (Some(plural), Some(kind)) = (
                        r.resource.clone(),
                        r.response_kind.as_ref().and_then(|k| k.kind.clone()),
                    ) else {
                        continue;
                    };
                    let singular = r
                        .singular_resource
                        .clone()
                        .filter(|s| !s.is_empty())
                        .unwrap_or_else(|| kind.to_lowercase());
                    resources.push(Resource {
                        group: name.clone(),
                        version: v.clone(),
                        kind,
                        plural,
                        singular,
                        short_names: r.short_names.clone(),
                        namespaced: r.scope.as_deref() == Some("Namespaced"),
                        verbs: r.verbs.clone(),
                        subresources: r
                            .subresources
                            .iter()
                            .filter_map(|s| s.subresource.clone())
                            .collect(),
                        preferred: i == 0,
                    });
                }
            }
        }
        Catalog { resources }
    }

    /// Reads the server's discovery: aggregated (two requests) when the server serves it,
    /// else `/api`, `/apis` and every group version.
    pub async fn load(conn: &Connection) -> Result<Catalog> {
        let core = conn
            .client
            .list_core_api_versions_aggregated()
            .await
            .map_err(|e| server_error(e, &conn.url))
            .context("failed to read the server's API discovery (/api)")?;
        // A server without aggregated discovery answers with plain JSON (an APIVersions),
        // which reads as an empty list here.
        if !core.items.is_empty() {
            let groups = conn
                .client
                .list_api_groups_aggregated()
                .await
                .map_err(|e| server_error(e, &conn.url))
                .context("failed to read the server's API discovery (/apis)")?;
            return Ok(Catalog::from_aggregated(&[core, groups]));
        }
        Catalog::load_per_group_version(conn).await
    }

    /// Reads the legacy discovery: `/api`, `/apis` and every group version.
    async fn load_per_group_version(conn: &Connection) -> Result<Catalog> {
        let client = &conn.client;
        let core = client
            .list_core_api_versions()
            .await
            .map_err(|e| server_error(e, &conn.url))
            .context("failed to read the server's API discovery (/api)")?;
        let groups = client
            .list_api_groups()
            .await
            .map_err(|e| server_error(e, &conn.url))
            .context("failed to read the server's API discovery (/apis)")?;
        let mut wanted: Vec<(String, String, bool)> = Vec::new();
        for (i, version) in core.versions.iter().enumerate() {
            wanted.push((String::new(), version.clone(), i == 0));
        }
        for group in &groups.groups {
            let preferred = group.preferred_version.as_ref().map(|p| p.version.as_str());
            for (i, v) in group.versions.iter().enumerate() {
                let is_preferred = preferred.map_or(i == 0, |p| p == v.version);
                wanted.push((group.name.clone(), v.version.clone(), is_preferred));
            }
        }
        let lists = try_join_all(wanted.into_iter().map(
            |(group, version, preferred)| async move {
                let list = if group.is_empty() {
                    client.list_core_api_resources(&version).await
                } else {
                    client
                        .list_api_group_resources(&format!("{group}/{version}"))
                        .await
                };
                let list = list
                    .map_err(|e| server_error(e, &conn.url))
                    .with_context(|| {
                        format!("failed to read the discovery of {group}/{version}")
                    })?;
                anyhow::Ok((group, version, preferred, list))
            },
        ))
        .await?;
        Ok(Catalog::from_lists(lists))
    }

    /// Resolves what a user typed (`po`, `pods`, `pod`, `Pod`, `deployments.apps`,
    /// `deployments.v1.apps`) to the preferred version of a resource type.
    pub fn resolve(&self, typed: &str) -> Result<&Resource> {
        let name = typed.to_lowercase();
        let preferred = || self.resources.iter().filter(|r| r.preferred);
        // Core group first, as kubectl's priority RESTMapper does, then the rest in order.
        let found = preferred()
            .filter(|r| r.group.is_empty())
            .chain(preferred().filter(|r| !r.group.is_empty()))
            .find(|r| r.matches_name(&name))
            .or_else(|| {
                // `resource.group` or `resource.version.group`.
                let (resource, rest) = name.split_once('.')?;
                if let Some(found) =
                    preferred().find(|r| r.group == rest && r.matches_name(resource))
                {
                    return Some(found);
                }
                let (version, group) = rest.split_once('.')?;
                self.resources
                    .iter()
                    .find(|r| r.group == group && r.version == version && r.matches_name(resource))
            });
        match found {
            Some(r) => Ok(r),
            None => bail!("the server doesn't have a resource type \"{typed}\""),
        }
    }

    /// The resource type of an object's `apiVersion` and `kind`.
    pub fn by_kind(&self, api_version: &str, kind: &str) -> Option<&Resource> {
        let (group, version) = match api_version.split_once('/') {
            Some((g, v)) => (g, v),
            None => ("", api_version),
        };
        self.resources
            .iter()
            .find(|r| r.group == group && r.version == version && r.kind == kind)
    }
}

/// Splits `kind/name` into its parts; `None` without a slash.
pub fn split_kind_name(arg: &str) -> Option<(&str, &str)> {
    let (kind, name) = arg.split_once('/')?;
    (!kind.is_empty() && !name.is_empty()).then_some((kind, name))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::APIResource;

    fn resource(
        name: &str,
        singular: &str,
        kind: &str,
        short: &[&str],
        namespaced: bool,
    ) -> APIResource {
        APIResource {
            name: name.to_owned(),
            singular_name: singular.to_owned(),
            kind: kind.to_owned(),
            short_names: (!short.is_empty())
                .then(|| short.iter().map(|s| (*s).to_owned()).collect()),
            namespaced,
            verbs: vec!["get".into(), "list".into(), "patch".into()],
            ..APIResource::default()
        }
    }

    fn list(group_version: &str, resources: Vec<APIResource>) -> APIResourceList {
        APIResourceList {
            group_version: group_version.to_owned(),
            resources,
        }
    }

    /// A catalog shaped like a real server's: core, apps (with scale), autoscaling v1 and v2.
    pub(crate) fn catalog() -> Catalog {
        Catalog::from_lists(vec![
            (
                String::new(),
                "v1".into(),
                true,
                list(
                    "v1",
                    vec![
                        resource("pods", "pod", "Pod", &["po"], true),
                        resource("pods/log", "", "Pod", &[], true),
                        resource("services", "service", "Service", &["svc"], true),
                        resource("namespaces", "namespace", "Namespace", &["ns"], false),
                        resource("nodes", "node", "Node", &["no"], false),
                        resource("endpoints", "endpoints", "Endpoints", &["ep"], true),
                        resource("configmaps", "configmap", "ConfigMap", &["cm"], true),
                        resource("events", "event", "Event", &["ev"], true),
                    ],
                ),
            ),
            (
                "apps".into(),
                "v1".into(),
                true,
                list(
                    "apps/v1",
                    vec![
                        resource("deployments", "deployment", "Deployment", &["deploy"], true),
                        resource("deployments/scale", "", "Scale", &[], true),
                        resource("deployments/status", "", "Deployment", &[], true),
                        resource("replicasets", "replicaset", "ReplicaSet", &["rs"], true),
                    ],
                ),
            ),
            (
                "events.k8s.io".into(),
                "v1".into(),
                true,
                list(
                    "events.k8s.io/v1",
                    vec![resource("events", "event", "Event", &["ev"], true)],
                ),
            ),
            (
                "autoscaling".into(),
                "v2".into(),
                true,
                list(
                    "autoscaling/v2",
                    vec![resource(
                        "horizontalpodautoscalers",
                        "horizontalpodautoscaler",
                        "HorizontalPodAutoscaler",
                        &["hpa"],
                        true,
                    )],
                ),
            ),
            (
                "autoscaling".into(),
                "v1".into(),
                false,
                list(
                    "autoscaling/v1",
                    vec![resource(
                        "horizontalpodautoscalers",
                        "horizontalpodautoscaler",
                        "HorizontalPodAutoscaler",
                        &["hpa"],
                        true,
                    )],
                ),
            ),
        ])
    }

    #[test]
    fn resolves_what_kubectl_resolves() {
        let catalog = catalog();
        // typed, (group, version, plural)
        let table = [
            ("po", ("", "v1", "pods")),
            ("pod", ("", "v1", "pods")),
            ("pods", ("", "v1", "pods")),
            ("Pod", ("", "v1", "pods")),
            ("svc", ("", "v1", "services")),
            ("deploy", ("apps", "v1", "deployments")),
            ("Deployment", ("apps", "v1", "deployments")),
            ("deployments.apps", ("apps", "v1", "deployments")),
            ("rs", ("apps", "v1", "replicasets")),
            ("ns", ("", "v1", "namespaces")),
            ("no", ("", "v1", "nodes")),
            ("ep", ("", "v1", "endpoints")),
            ("cm", ("", "v1", "configmaps")),
            // Core group wins over events.k8s.io, as in kubectl.
            ("ev", ("", "v1", "events")),
            ("events.events.k8s.io", ("events.k8s.io", "v1", "events")),
            // Preferred version unless one is named.
            ("hpa", ("autoscaling", "v2", "horizontalpodautoscalers")),
            (
                "hpa.v1.autoscaling",
                ("autoscaling", "v1", "horizontalpodautoscalers"),
            ),
        ];
        for (typed, (group, version, plural)) in table {
            let r = catalog
                .resolve(typed)
                .unwrap_or_else(|e| panic!("{typed}: {e}"));
            assert_eq!(
                (r.group.as_str(), r.version.as_str(), r.plural.as_str()),
                (group, version, plural),
                "{typed}"
            );
        }
    }

    #[test]
    fn unknown_types_are_named() {
        let err = catalog().resolve("widgets").unwrap_err();
        assert_eq!(
            err.to_string(),
            "the server doesn't have a resource type \"widgets\""
        );
        // Subresources are not types of their own.
        assert!(catalog().resolve("pods/log").is_err());
    }

    #[test]
    fn subresources_scope_and_display() {
        let catalog = catalog();
        let deploy = catalog.resolve("deploy").unwrap();
        assert_eq!(deploy.subresources, vec!["scale", "status"]);
        assert_eq!(deploy.display(), "deployment.apps");
        assert_eq!(deploy.plural_display(), "deployments.apps");
        let node = catalog.resolve("no").unwrap();
        assert!(!node.namespaced);
        assert_eq!(node.display(), "node");
        assert_eq!(
            catalog
                .by_kind("apps/v1", "Deployment")
                .map(|r| r.plural.as_str()),
            Some("deployments")
        );
        assert_eq!(
            catalog
                .by_kind("autoscaling/v1", "HorizontalPodAutoscaler")
                .map(|r| r.version.as_str()),
            Some("v1")
        );
        assert!(catalog.by_kind("apps/v1", "Pod").is_none());
    }

    #[test]
    fn aggregated_discovery_reads_like_the_legacy_one() {
        let document = |items: serde_json::Value| -> APIGroupDiscoveryList {
            serde_json::from_value(
                serde_json::json!({"kind": "APIGroupDiscoveryList", "items": items}),
            )
            .unwrap()
        };
        let core = document(serde_json::json!([{
            "metadata": {"name": ""},
            "versions": [{"version": "v1", "resources": [
                {"resource": "pods", "responseKind": {"group": "", "version": "v1", "kind": "Pod"}, "scope": "Namespaced",
                 "singularResource": "pod", "shortNames": ["po"], "verbs": ["get", "list"], "subresources": [{"subresource": "log"}]},
                {"resource": "nodes", "responseKind": {"group": "", "version": "v1", "kind": "Node"}, "scope": "Cluster",
                 "singularResource": "node", "shortNames": ["no"], "verbs": ["get"]},
            ]}],
        }]));
        let hpa = serde_json::json!([{"resource": "horizontalpodautoscalers", "responseKind": {"kind": "HorizontalPodAutoscaler"},
            "scope": "Namespaced", "singularResource": "horizontalpodautoscaler", "shortNames": ["hpa"], "verbs": ["get"]}]);
        let groups = document(serde_json::json!([{
            "metadata": {"name": "autoscaling"},
            "versions": [{"version": "v2", "resources": hpa}, {"version": "v1", "resources": hpa}],
        }]));
        let catalog = Catalog::from_aggregated(&[core, groups]);
        let po = catalog.resolve("po").unwrap();
        assert_eq!((po.kind.as_str(), po.namespaced), ("Pod", true));
        assert_eq!(po.subresources, vec!["log".to_owned()]);
        assert!(!catalog.resolve("no").unwrap().namespaced);
        assert_eq!(catalog.resolve("hpa").unwrap().version, "v2");
        assert_eq!(catalog.resolve("hpa.v1.autoscaling").unwrap().version, "v1");
        let v1 = catalog
            .by_kind("autoscaling/v1", "HorizontalPodAutoscaler")
            .unwrap();
        assert_eq!(v1.plural, "horizontalpodautoscalers");
    }

    #[test]
    fn kind_slash_name() {
        assert_eq!(split_kind_name("deploy/web"), Some(("deploy", "web")));
        assert_eq!(split_kind_name("web"), None);
        assert_eq!(split_kind_name("/web"), None);
    }
}
