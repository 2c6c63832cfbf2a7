//! NodeRestriction: a kubelet (`system:node:<name>` in `system:nodes`) may write only its own
//! Node, its own Lease in `kube-node-lease`, and pods bound to it (status, deletion,
//! eviction); the only pods it may create are mirror pods of its static pods, bound to
//! itself. RBAC's `system:node` role says which kinds a kubelet may write; this says which
//! objects, as kube-apiserver's NodeRestriction admission plugin does.
//!
//! Tokens: a kubelet may request a token (`serviceaccounts/<name>/token`) only for a
//! ServiceAccount used by a pod bound to it (the Node authorizer's relationship), only bound to
//! such a pod by name and UID, and only for the API server's audience or one the pod's
//! projected token volumes name (NodeRestriction's ServiceAccountNodeAudienceRestriction).

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

fn pod_service_account(pod: &Value) -> &str {
    pod.pointer("/spec/serviceAccountName").and_then(Value::as_str).unwrap_or_default()
}

/// The Node authorizer's relationship for tokens: some pod bound to `node` in `namespace`
/// uses the ServiceAccount `name`.
async fn node_uses_service_account(state: &ApiState, node: &str, namespace: &str, name: &str) -> Result<bool> {
    let rt = state
        .registry
        .lookup("", "v1", "pods")
        .ok_or_else(|| ApiError::Internal("pods are not registered".into()))?;
    let page = state
        .store
        .list(&rt.namespace_prefix(Some(namespace)), coxswain_store::ListOptions::default())
        .await
        .map_err(|e| ApiError::from_store(e, &Target::new("", "pods", "")))?;
    for kv in &page.items {
        let pod = crate::storage::decode(kv)?;
        if pod_node(&pod) == node && pod_service_account(&pod) == name {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Checks a request by a kubelet identity that RBAC allowed (all verbs but `create` of whole
/// objects, which [`admit_create`] checks with the body).
pub(crate) async fn check(state: &ApiState, user: &UserInfo, info: &RequestInfo) -> Result<()> {
    let Some(node) = user.node_name() else { return Ok(()) };
    if info.is_resource_request
        && info.api_group.is_empty()
        && info.resource == "serviceaccounts"
        && info.subresource.as_deref() == Some("token")
        && info.verb == "create"
    {
        let namespace = info.namespace.as_deref().unwrap_or_default();
        let name = info.name.as_deref().unwrap_or_default();
        if !node_uses_service_account(state, node, namespace, name).await? {
            let attrs = super::authz::attributes(info);
            return Err(super::authz::forbidden(
                user,
                &attrs,
                &format!("no relationship found between node '{node}' and this object"),
            ));
        }
        return Ok(());
    }
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

/// Whether one of the pod's projected token volumes asks for `audience` (`""`: the API
/// server's own, a projection without an audience).
fn pod_references_audience(pod: &Value, audience: &str) -> bool {
    pod.pointer("/spec/volumes").and_then(Value::as_array).into_iter().flatten().any(|v| {
        v.pointer("/projected/sources").and_then(Value::as_array).into_iter().flatten().any(|s| {
            s.get("serviceAccountToken")
                .is_some_and(|t| t.get("audience").and_then(Value::as_str).unwrap_or_default() == audience)
        })
    })
}

/// NodeRestriction on a TokenRequest by a kubelet for the ServiceAccount `name`: the token
/// must be bound to a pod (name and UID) bound to this node, for 0 or 1 audiences the pod
/// uses (or that RBAC lets the kubelet request with the `request-serviceaccounts-token-audience`
/// verb). `pod` is the stored pod the request names, if any.
pub(crate) async fn admit_token_request(
    state: &ApiState,
    user: &UserInfo,
    namespace: &str,
    name: &str,
    spec: &k8s_openapi::api::authentication::v1::TokenRequestSpec,
    pod: Option<&Value>,
) -> Result<()> {
    let Some(node) = user.node_name() else { return Ok(()) };
    let refuse = |message: String| ApiError::Forbidden {
        target: Target::new("", "serviceaccounts", name),
        message: format!("serviceaccounts {name:?} is forbidden: {message}"),
    };
    let bound = spec.bound_object_ref.as_ref().filter(|r| {
        r.api_version.as_deref() == Some("v1")
            && r.kind.as_deref() == Some("Pod")
            && r.name.as_deref().is_some_and(|n| !n.is_empty())
    });
    let Some(bound) = bound else {
        return Err(refuse("node requested token not bound to a pod".to_owned()));
    };
    let uid = bound.uid.as_deref().unwrap_or_default();
    if uid.is_empty() {
        return Err(refuse("node requested token with a pod binding without a uid".to_owned()));
    }
    let Some(pod) = pod else {
        return Err(ApiError::NotFound(Target::new("", "pods", bound.name.as_deref().unwrap_or_default())));
    };
    let pod_uid = pod.pointer("/metadata/uid").and_then(Value::as_str).unwrap_or_default();
    if uid != pod_uid {
        return Err(refuse(format!(
            "the UID in the bound object reference ({uid}) does not match the UID in record. The object might have been deleted and then recreated"
        )));
    }
    if pod_node(pod) != node {
        return Err(refuse("node requested token bound to a pod scheduled on a different node".to_owned()));
    }
    let audiences = spec.audiences.clone().unwrap_or_default();
    if audiences.len() > 1 {
        return Err(refuse("node may only request 0 or 1 audiences".to_owned()));
    }
    let audience = audiences.first().map(String::as_str).unwrap_or_default();
    if pod_references_audience(pod, audience) {
        return Ok(());
    }
    // Built by hand: an audience may contain '/', which is no subresource here.
    let attrs = coxswain_auth::Attributes {
        verb: "request-serviceaccounts-token-audience".to_owned(),
        resource_request: true,
        namespace: Some(namespace.to_owned()),
        resource: audience.to_owned(),
        name: Some(name.to_owned()),
        ..coxswain_auth::Attributes::default()
    };
    if super::authz::decide(state, user, &attrs).await?.is_ok() {
        return Ok(());
    }
    Err(refuse(format!(
        "audience {audience:?} not found in pod spec volume, {} is not authorized to request tokens for this audience",
        user.name
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn audiences_come_from_projected_token_volumes() {
        let pod = json!({"spec": {"volumes": [
            {"name": "kube-api-access-x", "projected": {"sources": [{"serviceAccountToken": {"path": "token"}}]}},
            {"name": "vault", "projected": {"sources": [{"serviceAccountToken": {"path": "t", "audience": "vault"}}]}},
            {"name": "cm", "configMap": {"name": "c"}},
        ]}});
        assert!(pod_references_audience(&pod, ""));
        assert!(pod_references_audience(&pod, "vault"));
        assert!(!pod_references_audience(&pod, "other"));
        assert!(!pod_references_audience(&json!({"spec": {}}), ""), "a pod without a token volume");
    }
}
