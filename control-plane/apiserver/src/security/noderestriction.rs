//! NodeRestriction: a kubelet (`system:node:<name>` in `system:nodes`) may write only its own
//! Node, its own Lease in `kube-node-lease`, and pods bound to it (status, deletion,
//! eviction); the only pods it may create are mirror pods of its static pods, bound to
//! itself. RBAC's `system:node` role says which kinds a kubelet may write; this says which
//! objects, as kube-apiserver's NodeRestriction admission plugin does.

use coxswain_auth::UserInfo;
use serde_json::Value;

use crate::request_info::RequestInfo;
use crate::server::ApiState;
use crate::status::{ApiError, Result, Target};

/// The annotation of mirror pods.
const MIRROR: &str = "kubernetes.io/config.mirror";
const LEASE_NAMESPACE: &str = "kube-node-lease";

fn refuse(info: &RequestInfo, message: String) -> ApiError {
    ApiError::Forbidden {
        target: Target::new(&info.api_group, &info.resource, info.name.as_deref().unwrap_or_default()),
        message: format!(
            "{} {:?} is forbidden: {message}",
            info.resource,
            info.name.as_deref().unwrap_or_default()
        ),
    }
}

async fn stored_pod(state: &ApiState, namespace: &str, name: &str) -> Result<Option<Value>> {
    let rt = state
        .registry
        .lookup("", "v1", "pods")
        .ok_or_else(|| ApiError::Internal("pods are not registered".into()))?;
    let (kv, _) = state
        .store
        .get(&rt.key(Some(namespace), name), None)
        .await
        .map_err(|e| ApiError::from_store(e, &Target::new("", "pods", name)))?;
    kv.map(|kv| crate::storage::decode(&kv)).transpose()
}

fn pod_node(pod: &Value) -> &str {
    pod.pointer("/spec/nodeName").and_then(Value::as_str).unwrap_or_default()
}

/// Checks a request by a kubelet identity that RBAC allowed (all verbs but `create` of whole
/// objects, which [`admit_create`] checks with the body).
pub(crate) async fn check(state: &ApiState, user: &UserInfo, info: &RequestInfo) -> Result<()> {
    let Some(node) = user.node_name() else { return Ok(()) };
    if !info.is_resource_request || !info.api_group.is_empty() && info.api_group != "coordination.k8s.io" {
        return Ok(());
    }
    let writes = matches!(info.verb.as_str(), "update" | "patch" | "delete" | "deletecollection");
    let name = info.name.as_deref().unwrap_or_default();
    match (info.api_group.as_str(), info.resource.as_str()) {
        ("", "nodes") if writes && (info.verb == "deletecollection" || name != node) => {
            return Err(refuse(info, format!("node {node:?} is not allowed to modify node {name:?}")));
        }
        ("coordination.k8s.io", "leases")
            if writes
                && info.namespace.as_deref() == Some(LEASE_NAMESPACE)
                && (info.verb == "deletecollection" || name != node) =>
        {
            return Err(refuse(info, format!("node {node:?} can only access leases with the same name as the requesting node")));
        }
        ("", "pods") => {
            let eviction = info.verb == "create" && info.subresource.as_deref() == Some("eviction");
            if !(writes || eviction) {
                return Ok(());
            }
            if info.verb == "deletecollection" {
                return Err(refuse(info, format!("node {node:?} can only delete pods with spec.nodeName set to itself")));
            }
            let namespace = info.namespace.as_deref().unwrap_or_default();
            // A pod that does not exist: let the handler answer 404.
            if let Some(pod) = stored_pod(state, namespace, name).await?
                && pod_node(&pod) != node
            {
                let what = match (info.verb.as_str(), info.subresource.as_deref()) {
                    (_, Some("status")) => "update pod status",
                    ("delete", _) => "delete pods",
                    ("create", _) => "evict pods",
                    _ => "modify pods",
                };
                return Err(refuse(info, format!("node {node:?} can only {what} with spec.nodeName set to itself")));
            }
        }
        _ => {}
    }
    Ok(())
}

/// Checks an object a kubelet identity creates: its own Node and Lease, mirror pods bound
/// to itself.
pub(crate) fn admit_create(
    user: &UserInfo,
    group: &str,
    resource: &str,
    namespace: Option<&str>,
    obj: &Value,
) -> Result<()> {
    let Some(node) = user.node_name() else { return Ok(()) };
    let name = obj.pointer("/metadata/name").and_then(Value::as_str).unwrap_or_default();
    let refuse = |message: String| ApiError::Forbidden {
        target: Target::new(group, resource, name),
        message: format!("{resource} {name:?} is forbidden: {message}"),
    };
    match (group, resource) {
        ("", "nodes") if name != node => Err(refuse(format!("node {node:?} is not allowed to modify node {name:?}"))),
        ("coordination.k8s.io", "leases") if namespace == Some(LEASE_NAMESPACE) && name != node => {
            Err(refuse(format!("node {node:?} can only access leases with the same name as the requesting node")))
        }
        ("", "pods") => {
            let mirror = obj
                .pointer("/metadata/annotations")
                .and_then(|a| a.get(MIRROR))
                .is_some();
            if !mirror {
                return Err(refuse(format!(
                    "pod does not have \"{MIRROR}\" annotation, node {node:?} can only create mirror pods"
                )));
            }
            if pod_node(obj) != node {
                return Err(refuse(format!("node {node:?} can only create pods with spec.nodeName set to itself")));
            }
            Ok(())
        }
        _ => Ok(()),
    }
}
