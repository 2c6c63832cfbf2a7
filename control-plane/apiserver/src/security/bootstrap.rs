//! Keeps the default RBAC policy ([`coxswain_auth::policy`]) in the store: missing objects
//! are created at start, and those still annotated `rbac.authorization.kubernetes.io/
//! autoupdate: "true"` get their rules (or subjects and role) back if someone changed them.
//! Setting the annotation to `"false"` keeps an administrator's edits, as upstream.

use std::sync::Arc;

use serde::Serialize;
use serde_json::Value;
use tracing::info;

use crate::handlers::{Ctx, create_object};
use crate::namespaces::ctx;
use crate::server::ApiState;
use crate::status::{ApiError, Result};

const GROUP: &str = "rbac.authorization.k8s.io";

/// The fields a default object owns.
const OWNED: [&str; 4] = ["rules", "aggregationRule", "subjects", "roleRef"];

async fn reconcile(state: &Arc<ApiState>, plural: &str, wanted: Value) -> Result<()> {
    let mut wanted = wanted;
    let kind = if plural == "clusterroles" { "ClusterRole" } else { "ClusterRoleBinding" };
    wanted["apiVersion"] = Value::from(format!("{GROUP}/v1"));
    wanted["kind"] = Value::from(kind);
    let name = wanted["metadata"]["name"].as_str().unwrap_or_default().to_owned();
    let c: Ctx = ctx(state, GROUP, plural, None)?;
    let key = c.rt.key(None, &name);
    let (existing, _) = state
        .store
        .get(&key, None)
        .await
        .map_err(|e| ApiError::from_store(e, &c.target(&name)))?;
    let Some(kv) = existing else {
        match create_object(&c, wanted).await {
            Ok(_) => info!(kind, name, "created default RBAC object"),
            Err(ApiError::AlreadyExists(_)) => {}
            Err(e) => return Err(e),
        }
        return Ok(());
    };
    let current = crate::storage::decode(&kv)?;
    let autoupdate = current
        .pointer("/metadata/annotations")
        .and_then(|a| a.get(coxswain_auth::policy::AUTOUPDATE))
        .and_then(Value::as_str)
        != Some("false");
    let differs = OWNED.iter().any(|f| {
        let have = current.get(*f).filter(|v| !v.is_null());
        let want = wanted.get(*f).filter(|v| !v.is_null());
        // An aggregated role's rules are filled by aggregation; only its selectors count.
        !(*f == "rules" && wanted.get("aggregationRule").is_some()) && have != want
    });
    if !autoupdate || !differs {
        return Ok(());
    }
    let mut updated = current.clone();
    for f in OWNED {
        if f == "rules" && wanted.get("aggregationRule").is_some() {
            continue;
        }
        match wanted.get(f) {
            Some(v) => updated[f] = v.clone(),
            None => {
                if let Some(o) = updated.as_object_mut() {
                    o.remove(f);
                }
            }
        }
    }
    let mut c = c;
    c.name = Some(name.clone());
    let body = serde_json::to_vec(&updated)
        .map_err(|e| ApiError::Internal(format!("encode {kind} {name}: {e}")))?;
    match crate::handlers::update_object(&c, bytes::Bytes::from(body)).await {
        Ok(_) => info!(kind, name, "restored default RBAC object"),
        // Changed concurrently: the next start reconciles again.
        Err(ApiError::Conflict(..)) => {}
        Err(e) => return Err(e),
    }
    Ok(())
}

fn json<T: Serialize>(v: &T) -> Result<Value> {
    serde_json::to_value(v).map_err(|e| ApiError::Internal(format!("encode a default RBAC object: {e}")))
}

/// Creates or restores every default ClusterRole and ClusterRoleBinding.
pub(crate) async fn ensure_default_policy(state: &Arc<ApiState>) -> Result<()> {
    for role in coxswain_auth::policy::cluster_roles() {
        reconcile(state, "clusterroles", json(&role)?).await?;
    }
    for binding in coxswain_auth::policy::cluster_role_bindings() {
        reconcile(state, "clusterrolebindings", json(&binding)?).await?;
    }
    Ok(())
}
