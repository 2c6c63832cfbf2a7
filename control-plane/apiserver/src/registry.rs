//! The table of served kinds: every resource is one [`ResourceType`] row, served by the same
//! generic handlers. Adding a kind means adding a row, not a handler.

use std::collections::HashMap;

use k8s_openapi::api::{
    apps, authentication, authorization, batch, certificates, coordination, core, discovery, rbac,
    scheduling,
};
use k8s_openapi::schemars::{JsonSchema, Schema, SchemaGenerator};
use k8s_openapi::{ClusterResourceScope, NamespaceResourceScope, Resource};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::status::Cause;
use crate::table::{self, TableSpec};
use crate::{defaults, validation};

/// A subresource a kind serves besides the object itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Subresource {
    /// `/status`: writes change only `.status`; writes to the main resource never do.
    Status,
    /// `/scale`: an `autoscaling/v1` `Scale` view of `.spec.replicas`.
    Scale,
    /// `/binding` (pods): assigns `.spec.nodeName` once.
    Binding,
    /// `/token` (serviceaccounts): `create` issues a token (TokenRequest).
    Token,
    /// `/approval` (certificatesigningrequests): writes the Approved/Denied conditions in
    /// `.status`, like `/status`, under its own permission.
    Approval,
}

impl Subresource {
    /// The URL segment.
    pub fn name(self) -> &'static str {
        match self {
            Subresource::Status => "status",
            Subresource::Scale => "scale",
            Subresource::Binding => "binding",
            Subresource::Token => "token",
            Subresource::Approval => "approval",
        }
    }
}

/// Which rule a kind's `metadata.name` follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameRule {
    /// RFC 1123 subdomain: lowercase alphanumerics, '-' and '.', at most 253 characters.
    Subdomain,
    /// RFC 1123 label: lowercase alphanumerics and '-', at most 63 characters.
    Label,
    /// Anything usable as a URL path segment (RBAC objects, `system:...`).
    PathSegment,
}

/// Checks on a kind's objects beyond what its typed struct enforces: `(new, old)` where `old`
/// is the stored object on update.
pub type ValidateFn = fn(&Value, Option<&Value>, &mut Vec<Cause>);

/// One served kind and everything the generic handlers need to know about it.
#[derive(Debug)]
pub struct ResourceType {
    /// API group, empty for the core group.
    pub group: &'static str,
    /// API version (`v1`).
    pub version: &'static str,
    /// Kind (`Pod`).
    pub kind: &'static str,
    /// The plural resource name used in URLs (`pods`).
    pub plural: &'static str,
    /// The singular name (`pod`).
    pub singular: &'static str,
    /// Whether objects live in namespaces.
    pub namespaced: bool,
    /// Short names (`po`).
    pub short_names: &'static [&'static str],
    /// Categories (`all`).
    pub categories: &'static [&'static str],
    /// Subresources served.
    pub subresources: &'static [Subresource],
    /// Which rule names follow.
    pub name_rule: NameRule,
    /// Field selector fields beyond `metadata.name` and `metadata.namespace`.
    pub selectable_fields: &'static [&'static str],
    /// Decodes JSON into the kind's typed struct and encodes it back: rejects malformed
    /// objects and drops unknown fields.
    pub(crate) roundtrip: fn(Value) -> Result<Value, serde_json::Error>,
    /// Fills defaults the way upstream does.
    pub(crate) defaults: fn(&mut Value),
    /// Kind-specific validation.
    pub(crate) validate: ValidateFn,
    /// A review kind: only `create`, answered and never stored (`SelfSubjectAccessReview`).
    pub create_only: bool,
    /// Table columns and cells for `kubectl get`.
    pub(crate) table: &'static TableSpec,
    /// Adds the kind's JSON schema (and those it refers to) to an OpenAPI generator.
    pub(crate) schema: fn(&mut SchemaGenerator) -> Schema,
}

impl ResourceType {
    /// `v1` or `apps/v1`.
    pub fn api_version(&self) -> String {
        crate::object::api_version(self.group, self.version)
    }

    /// Whether the kind serves `sub`.
    pub fn has(&self, sub: Subresource) -> bool {
        self.subresources.contains(&sub)
    }

    /// Whether `metadata.generation` tracks spec changes (kinds with a status subresource).
    pub fn tracks_generation(&self) -> bool {
        self.has(Subresource::Status)
    }

    /// The store prefix of every object of this kind: `/registry/<group>/<plural>/`.
    pub fn prefix(&self) -> String {
        let group = if self.group.is_empty() {
            "core"
        } else {
            self.group
        };
        format!("/registry/{group}/{}/", self.plural)
    }

    /// The store prefix of the objects in one namespace (or of all objects when `None` or
    /// cluster-scoped).
    pub fn namespace_prefix(&self, namespace: Option<&str>) -> String {
        match namespace {
            Some(ns) if self.namespaced => format!("{}{ns}/", self.prefix()),
            _ => self.prefix(),
        }
    }

    /// The store key of one object.
    pub fn key(&self, namespace: Option<&str>, name: &str) -> String {
        match namespace {
            Some(ns) if self.namespaced => format!("{}{ns}/{name}", self.prefix()),
            _ => format!("{}{name}", self.prefix()),
        }
    }

    /// Whether `field` may be used in a field selector.
    pub fn selectable(&self, field: &str) -> bool {
        field == "metadata.name"
            || (field == "metadata.namespace" && self.namespaced)
            || self.selectable_fields.contains(&field)
    }
}

trait Scope {
    const NAMESPACED: bool;
}
impl Scope for NamespaceResourceScope {
    const NAMESPACED: bool = true;
}
impl Scope for ClusterResourceScope {
    const NAMESPACED: bool = false;
}

fn roundtrip<T: DeserializeOwned + Serialize>(v: Value) -> Result<Value, serde_json::Error> {
    let typed: T = serde_json::from_value(v)?;
    serde_json::to_value(typed)
}

/// The parts of a row that are not implied by the typed struct.
struct Row {
    singular: &'static str,
    short_names: &'static [&'static str],
    categories: &'static [&'static str],
    subresources: &'static [Subresource],
    name_rule: NameRule,
    selectable_fields: &'static [&'static str],
    defaults: fn(&mut Value),
    validate: ValidateFn,
    table: &'static TableSpec,
    create_only: bool,
}

const ROW: Row = Row {
    singular: "",
    short_names: &[],
    categories: &[],
    subresources: &[],
    name_rule: NameRule::Subdomain,
    selectable_fields: &[],
    defaults: defaults::none,
    validate: validation::none,
    table: &table::DEFAULT,
    create_only: false,
};

fn kind<T>(row: Row) -> ResourceType
where
    T: Resource + DeserializeOwned + Serialize + JsonSchema,
    T::Scope: Scope,
{
    ResourceType {
        group: T::GROUP,
        version: T::VERSION,
        kind: T::KIND,
        plural: T::URL_PATH_SEGMENT,
        singular: row.singular,
        namespaced: <T::Scope as Scope>::NAMESPACED,
        short_names: row.short_names,
        categories: row.categories,
        subresources: row.subresources,
        name_rule: row.name_rule,
        selectable_fields: row.selectable_fields,
        roundtrip: roundtrip::<T>,
        defaults: row.defaults,
        validate: row.validate,
        table: row.table,
        create_only: row.create_only,
        schema: |generator| generator.subschema_for::<T>(),
    }
}

use Subresource::{Approval, Binding, Scale, Status, Token};

const ALL: &[&str] = &["all"];

/// Every built-in kind, in discovery order.
fn builtin() -> Vec<ResourceType> {
    vec![
        kind::<core::v1::Namespace>(Row {
            singular: "namespace",
            short_names: &["ns"],
            subresources: &[Status],
            name_rule: NameRule::Label,
            selectable_fields: &["status.phase"],
            defaults: defaults::namespace,
            validate: validation::namespace,
            table: &table::NAMESPACES,
            ..ROW
        }),
        kind::<core::v1::Pod>(Row {
            singular: "pod",
            short_names: &["po"],
            categories: ALL,
            subresources: &[Status, Binding],
            selectable_fields: &[
                "spec.nodeName",
                "spec.restartPolicy",
                "spec.schedulerName",
                "spec.serviceAccountName",
                "spec.hostNetwork",
                "status.phase",
                "status.podIP",
                "status.nominatedNodeName",
            ],
            defaults: defaults::pod,
            validate: validation::pod,
            table: &table::PODS,
            ..ROW
        }),
        kind::<core::v1::Service>(Row {
            singular: "service",
            short_names: &["svc"],
            categories: ALL,
            subresources: &[Status],
            name_rule: NameRule::Label,
            defaults: defaults::service,
            validate: validation::service,
            table: &table::SERVICES,
            ..ROW
        }),
        kind::<core::v1::Endpoints>(Row {
            singular: "endpoints",
            short_names: &["ep"],
            table: &table::ENDPOINTS,
            ..ROW
        }),
        kind::<core::v1::ConfigMap>(Row {
            singular: "configmap",
            short_names: &["cm"],
            validate: validation::config_map,
            table: &table::CONFIG_MAPS,
            ..ROW
        }),
        kind::<core::v1::Secret>(Row {
            singular: "secret",
            selectable_fields: &["type"],
            defaults: defaults::secret,
            validate: validation::config_map,
            table: &table::SECRETS,
            ..ROW
        }),
        kind::<core::v1::ServiceAccount>(Row {
            singular: "serviceaccount",
            short_names: &["sa"],
            subresources: &[Token],
            table: &table::SERVICE_ACCOUNTS,
            ..ROW
        }),
        kind::<core::v1::Node>(Row {
            singular: "node",
            short_names: &["no"],
            subresources: &[Status],
            selectable_fields: &["spec.unschedulable"],
            table: &table::NODES,
            ..ROW
        }),
        kind::<core::v1::Event>(Row {
            singular: "event",
            short_names: &["ev"],
            selectable_fields: &[
                "involvedObject.kind",
                "involvedObject.namespace",
                "involvedObject.name",
                "involvedObject.uid",
                "involvedObject.apiVersion",
                "involvedObject.resourceVersion",
                "involvedObject.fieldPath",
                "reason",
                "reportingComponent",
                "source",
                "type",
            ],
            table: &table::EVENTS,
            ..ROW
        }),
        kind::<core::v1::LimitRange>(Row {
            singular: "limitrange",
            short_names: &["limits"],
            defaults: defaults::limit_range,
            validate: validation::limit_range,
            table: &table::LIMIT_RANGES,
            ..ROW
        }),
        kind::<core::v1::ResourceQuota>(Row {
            singular: "resourcequota",
            short_names: &["quota"],
            subresources: &[Status],
            defaults: defaults::resource_quota,
            validate: validation::resource_quota,
            table: &table::RESOURCE_QUOTAS,
            ..ROW
        }),
        kind::<apps::v1::Deployment>(Row {
            singular: "deployment",
            short_names: &["deploy"],
            categories: ALL,
            subresources: &[Status, Scale],
            defaults: defaults::deployment,
            validate: validation::workload,
            table: &table::DEPLOYMENTS,
            ..ROW
        }),
        kind::<apps::v1::ReplicaSet>(Row {
            singular: "replicaset",
            short_names: &["rs"],
            categories: ALL,
            subresources: &[Status, Scale],
            selectable_fields: &["status.replicas"],
            defaults: defaults::replica_set,
            validate: validation::workload,
            table: &table::REPLICA_SETS,
            ..ROW
        }),
        kind::<apps::v1::DaemonSet>(Row {
            singular: "daemonset",
            short_names: &["ds"],
            categories: ALL,
            subresources: &[Status],
            defaults: defaults::daemon_set,
            validate: validation::workload,
            table: &table::DAEMON_SETS,
            ..ROW
        }),
        kind::<apps::v1::StatefulSet>(Row {
            singular: "statefulset",
            short_names: &["sts"],
            categories: ALL,
            subresources: &[Status, Scale],
            defaults: defaults::stateful_set,
            validate: validation::workload,
            table: &table::STATEFUL_SETS,
            ..ROW
        }),
        kind::<apps::v1::ControllerRevision>(Row {
            singular: "controllerrevision",
            ..ROW
        }),
        kind::<batch::v1::Job>(Row {
            singular: "job",
            categories: ALL,
            subresources: &[Status],
            defaults: defaults::job,
            table: &table::JOBS,
            ..ROW
        }),
        kind::<batch::v1::CronJob>(Row {
            singular: "cronjob",
            short_names: &["cj"],
            categories: ALL,
            subresources: &[Status],
            defaults: defaults::cron_job,
            table: &table::CRON_JOBS,
            ..ROW
        }),
        kind::<discovery::v1::EndpointSlice>(Row {
            singular: "endpointslice",
            selectable_fields: &["addressType"],
            ..ROW
        }),
        kind::<coordination::v1::Lease>(Row {
            singular: "lease",
            table: &table::LEASES,
            ..ROW
        }),
        kind::<scheduling::v1::PriorityClass>(Row {
            singular: "priorityclass",
            short_names: &["pc"],
            ..ROW
        }),
        kind::<rbac::v1::Role>(Row {
            singular: "role",
            name_rule: NameRule::PathSegment,
            ..ROW
        }),
        kind::<rbac::v1::ClusterRole>(Row {
            singular: "clusterrole",
            name_rule: NameRule::PathSegment,
            ..ROW
        }),
        kind::<rbac::v1::RoleBinding>(Row {
            singular: "rolebinding",
            name_rule: NameRule::PathSegment,
            table: &table::ROLE_BINDINGS,
            ..ROW
        }),
        kind::<rbac::v1::ClusterRoleBinding>(Row {
            singular: "clusterrolebinding",
            name_rule: NameRule::PathSegment,
            table: &table::ROLE_BINDINGS,
            ..ROW
        }),
        kind::<certificates::v1::CertificateSigningRequest>(Row {
            singular: "certificatesigningrequest",
            short_names: &["csr"],
            subresources: &[Status, Approval],
            validate: validation::csr,
            ..ROW
        }),
        kind::<authentication::v1::TokenReview>(Row {
            singular: "tokenreview",
            create_only: true,
            ..ROW
        }),
        kind::<authentication::v1::SelfSubjectReview>(Row {
            singular: "selfsubjectreview",
            create_only: true,
            ..ROW
        }),
        kind::<authorization::v1::SelfSubjectAccessReview>(Row {
            singular: "selfsubjectaccessreview",
            create_only: true,
            ..ROW
        }),
        kind::<authorization::v1::SelfSubjectRulesReview>(Row {
            singular: "selfsubjectrulesreview",
            create_only: true,
            ..ROW
        }),
        kind::<authorization::v1::SubjectAccessReview>(Row {
            singular: "subjectaccessreview",
            create_only: true,
            ..ROW
        }),
        kind::<authorization::v1::LocalSubjectAccessReview>(Row {
            singular: "localsubjectaccessreview",
            create_only: true,
            ..ROW
        }),
    ]
}

/// The served kinds, looked up by group, version and plural.
#[derive(Debug)]
pub struct Registry {
    types: Vec<&'static ResourceType>,
    by_path: HashMap<(&'static str, &'static str, &'static str), &'static ResourceType>,
}

impl Registry {
    /// The built-in kinds. The rows live for the whole process (they are few and immutable).
    pub fn builtin() -> Registry {
        let types: Vec<&'static ResourceType> = builtin()
            .into_iter()
            .map(|t| &*Box::leak(Box::new(t)))
            .collect();
        let by_path = types
            .iter()
            .map(|t| ((t.group, t.version, t.plural), *t))
            .collect();
        Registry { types, by_path }
    }

    /// The kind served at `/apis/<group>/<version>/<plural>` (`group` empty for `/api/v1`).
    pub fn lookup(
        &self,
        group: &str,
        version: &str,
        plural: &str,
    ) -> Option<&'static ResourceType> {
        self.by_path.get(&(group, version, plural)).copied()
    }

    /// The kind by group and kind name.
    pub fn by_kind(&self, group: &str, kind: &str) -> Option<&'static ResourceType> {
        self.types
            .iter()
            .find(|t| t.group == group && t.kind == kind)
            .copied()
    }

    /// Every kind, in discovery order.
    pub fn all(&self) -> &[&'static ResourceType] {
        &self.types
    }

    /// The served group-versions in discovery order, core (`""`) first.
    pub fn group_versions(&self) -> Vec<(&'static str, &'static str)> {
        let mut out: Vec<(&'static str, &'static str)> = Vec::new();
        for t in &self.types {
            if !out.contains(&(t.group, t.version)) {
                out.push((t.group, t.version));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_is_consistent() {
        let r = Registry::builtin();
        let pods = r.lookup("", "v1", "pods").unwrap();
        assert_eq!(pods.kind, "Pod");
        assert!(pods.namespaced);
        assert_eq!(
            pods.key(Some("default"), "web"),
            "/registry/core/pods/default/web"
        );
        let nodes = r.lookup("", "v1", "nodes").unwrap();
        assert!(!nodes.namespaced);
        assert_eq!(nodes.key(Some("ignored"), "n1"), "/registry/core/nodes/n1");
        let deploy = r.lookup("apps", "v1", "deployments").unwrap();
        assert!(deploy.has(Subresource::Scale));
        assert_eq!(deploy.api_version(), "apps/v1");
        for t in r.all() {
            assert!(!t.singular.is_empty(), "{} lacks a singular name", t.kind);
            assert_eq!(r.by_kind(t.group, t.kind).unwrap().plural, t.plural);
        }
        assert_eq!(r.group_versions()[0], ("", "v1"));
    }
}
