//! Namespace lifecycle inside the API server: the built-in namespaces, and the finalization
//! of deleted namespaces (their objects are deleted, then the namespace itself), which
//! upstream's namespace controller does.

use std::sync::Arc;
use std::time::Duration;

use axum::http::{HeaderMap, StatusCode};
use serde_json::json;
use tracing::{debug, info, warn};

use crate::handlers::{Ctx, DeleteOptions, Params, create_object, delete_object};
use crate::object;
use crate::server::ApiState;
use crate::status::{ApiError, Result};
use crate::storage;

/// Namespaces every cluster has.
pub const BUILTIN_NAMESPACES: [&str; 4] =
    ["default", "kube-system", "kube-public", "kube-node-lease"];

pub(crate) fn ctx(state: &Arc<ApiState>, group: &str, plural: &str, namespace: Option<&str>) -> Result<Ctx> {
    let rt = state
        .registry
        .lookup(group, "v1", plural)
        .ok_or_else(|| ApiError::Internal(format!("{plural} are not registered")))?;
    Ok(Ctx {
        state: state.clone(),
        rt,
        namespace: namespace.map(str::to_owned),
        name: None,
        subresource: None,
        params: Params::default(),
        headers: HeaderMap::new(),
        user: None,
    })
}

/// Creates the built-in namespaces if missing, and resumes the finalization of namespaces
/// that were being deleted when the server stopped.
pub(crate) async fn bootstrap(state: &Arc<ApiState>) -> Result<()> {
    let ns_ctx = ctx(state, "", "namespaces", None)?;
    for name in BUILTIN_NAMESPACES {
        let obj = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}});
        match create_object(&ns_ctx, obj).await {
            Ok(_) => info!(namespace = name, "created built-in namespace"),
            Err(ApiError::AlreadyExists(_)) => {}
            Err(e) => return Err(e),
        }
    }
    let page = state
        .store
        .list(&ns_ctx.rt.prefix(), coxswain_store::ListOptions::default())
        .await
        .map_err(|e| ApiError::from_store(e, &ns_ctx.target("")))?;
    for kv in &page.items {
        let ns = storage::decode(kv)?;
        if object::is_terminating(&ns) {
            spawn_cleanup(state.clone(), object::name(&ns).to_owned());
        }
    }
    Ok(())
}

/// Finalizes a terminating namespace in the background, retrying until it is gone.
pub(crate) fn spawn_cleanup(state: Arc<ApiState>, namespace: String) {
    tokio::spawn(async move {
        let mut delay = Duration::from_millis(50);
        loop {
            match cleanup_once(&state, &namespace).await {
                Ok(true) => {
                    info!(%namespace, "namespace deleted");
                    return;
                }
                Ok(false) => debug!(%namespace, "namespace still has content"),
                Err(e) => warn!(%namespace, error = %e, "namespace cleanup failed, will retry"),
            }
            if *state.shutdown.borrow() {
                return;
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(5));
        }
    });
}

/// One pass: deletes every object in the namespace; removes the namespace once empty.
/// Returns whether the namespace is gone.
async fn cleanup_once(state: &Arc<ApiState>, namespace: &str) -> Result<bool> {
    let mut remaining = 0;
    for rt in state.registry.all() {
        if !rt.namespaced {
            continue;
        }
        let c = ctx(state, rt.group, rt.plural, Some(namespace))?;
        let c = Ctx { rt, ..c };
        let page = state
            .store
            .list(
                &rt.namespace_prefix(Some(namespace)),
                coxswain_store::ListOptions::default(),
            )
            .await
            .map_err(|e| ApiError::from_store(e, &c.target("")))?;
        for kv in &page.items {
            let obj = storage::decode(kv)?;
            match delete_object(&c, object::name(&obj), &DeleteOptions::default()).await {
                Ok((StatusCode::OK, _)) | Err(ApiError::NotFound(_)) => {}
                Ok(_) => remaining += 1,
                Err(e) => return Err(e),
            }
        }
    }
    if remaining > 0 {
        return Ok(false);
    }
    let ns_ctx = ctx(state, "", "namespaces", None)?;
    let (ns, rev) = match ns_ctx.current(namespace).await {
        Ok(found) => found,
        Err(ApiError::NotFound(_)) => return Ok(true),
        Err(e) => return Err(e),
    };
    if !object::finalizers(&ns).is_empty() {
        return Ok(false);
    }
    match state.store.delete(&ns_ctx.key(namespace), Some(rev)).await {
        Ok(_) => Ok(true),
        Err(coxswain_store::Error::Conflict { .. }) => Ok(false),
        Err(e) => Err(ApiError::from_store(e, &ns_ctx.target(namespace))),
    }
}
