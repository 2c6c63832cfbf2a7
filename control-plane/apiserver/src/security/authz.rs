//! The authorization layer: `system:masters` may do anything; everyone else needs an RBAC
//! rule. Refusals are 403 with upstream's message ("pods is forbidden: User "alice" cannot
//! list resource "pods" in API group "" in the namespace "default"").
//!
//! The RBAC snapshot ([`RbacPolicy`]) is rebuilt from the store when it is stale: a write to
//! an RBAC kind through this server marks it stale before the response leaves (so a client
//! that creates a RoleBinding and then uses it is never refused), and a watch on the four
//! kinds marks it stale for writes made elsewhere (another API server, namespace deletion).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use coxswain_auth::authn::SYSTEM_MASTERS;
use coxswain_auth::{Attributes, RbacPolicy, UserInfo};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use serde::de::DeserializeOwned;
use tracing::{debug, warn};

use crate::request_info::RequestInfo;
use crate::server::ApiState;
use crate::status::{ApiError, Result, Target};

const RBAC_GROUP: &str = "rbac.authorization.k8s.io";
const RBAC_RESOURCES: [&str; 4] = ["clusterroles", "roles", "clusterrolebindings", "rolebindings"];

/// The RBAC snapshot and whether it is current.
#[derive(Debug)]
pub(crate) struct Authorizer {
    policy: RwLock<Arc<RbacPolicy>>,
    /// Bumped whenever the RBAC objects may have changed.
    wanted: AtomicU64,
    /// The value of `wanted` the snapshot was built for.
    built: AtomicU64,
    rebuild: tokio::sync::Mutex<()>,
}

impl Default for Authorizer {
    fn default() -> Self {
        Authorizer {
            policy: RwLock::new(Arc::new(RbacPolicy::default())),
            wanted: AtomicU64::new(1),
            built: AtomicU64::new(0),
            rebuild: tokio::sync::Mutex::new(()),
        }
    }
}

impl Authorizer {
    /// Marks the snapshot stale.
    pub(crate) fn invalidate(&self) {
        self.wanted.fetch_add(1, Ordering::SeqCst);
    }

    /// The current snapshot, rebuilt from the store first when stale.
    pub(crate) async fn policy(&self, state: &ApiState) -> Result<Arc<RbacPolicy>> {
        if self.built.load(Ordering::SeqCst) == self.wanted.load(Ordering::SeqCst) {
            return Ok(self.current());
        }
        let _guard = self.rebuild.lock().await;
        let wanted = self.wanted.load(Ordering::SeqCst);
        if self.built.load(Ordering::SeqCst) == wanted {
            return Ok(self.current());
        }
        let policy = Arc::new(RbacPolicy::new(
            &list::<ClusterRole>(state, "clusterroles").await?,
            &list::<Role>(state, "roles").await?,
            &list::<ClusterRoleBinding>(state, "clusterrolebindings").await?,
            &list::<RoleBinding>(state, "rolebindings").await?,
        ));
        *self.policy.write().unwrap_or_else(|e| e.into_inner()) = policy.clone();
        self.built.store(wanted, Ordering::SeqCst);
        state.metrics.rbac_rebuilt();
        Ok(policy)
    }

    fn current(&self) -> Arc<RbacPolicy> {
        self.policy.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Watches the RBAC kinds and marks the snapshot stale on every change, until shutdown.
    pub(crate) fn spawn_watch(state: Arc<ApiState>) {
        for resource in RBAC_RESOURCES {
            let state = state.clone();
            tokio::spawn(async move {
                let Some(rt) = state.registry.lookup(RBAC_GROUP, "v1", resource) else { return };
                let prefix = rt.prefix();
                let mut shutdown = state.shutdown.clone();
                loop {
                    let cache = match state.caches.get(&prefix).await {
                        Ok(c) => c,
                        Err(e) => {
                            warn!(resource, error = %e, "cannot watch RBAC objects; retrying");
                            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                            continue;
                        }
                    };
                    let mut sub = cache.subscribe_current(&prefix);
                    // Whatever happened before the subscription is in the store already.
                    state.authorizer.invalidate();
                    loop {
                        tokio::select! {
                            _ = shutdown.wait_for(|s| *s) => return,
                            event = sub.live.recv() => match event {
                                Ok(_) => state.authorizer.invalidate(),
                                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                                    state.authorizer.invalidate();
                                }
                                Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
                            },
                        }
                    }
                }
            });
        }
    }
}

async fn list<T: DeserializeOwned>(state: &ApiState, resource: &str) -> Result<Vec<T>> {
    let rt = state
        .registry
        .lookup(RBAC_GROUP, "v1", resource)
        .ok_or_else(|| ApiError::Internal(format!("{resource} are not registered")))?;
    let page = state
        .store
        .list(&rt.prefix(), coxswain_store::ListOptions::default())
        .await
        .map_err(|e| ApiError::from_store(e, &Target::new(RBAC_GROUP, resource, "")))?;
    Ok(page
        .items
        .iter()
        .filter_map(|kv| match serde_json::from_slice::<T>(&kv.value) {
            Ok(obj) => Some(obj),
            Err(e) => {
                warn!(key = %kv.key, error = %e, "ignoring an unreadable RBAC object");
                None
            }
        })
        .collect())
}

/// The attributes of a request.
pub(crate) fn attributes(info: &RequestInfo) -> Attributes {
    if info.is_resource_request {
        Attributes {
            verb: info.verb.clone(),
            resource_request: true,
            namespace: info.namespace.clone(),
            api_group: info.api_group.clone(),
            resource: info.resource.clone(),
            subresource: info.subresource.clone(),
            name: info.name.clone(),
            path: info.path.clone(),
        }
    } else {
        Attributes::non_resource(&info.verb, &info.path)
    }
}

/// Whether `user` may do what `attrs` says: `Ok(reason)` or `Err(reason)`.
pub(crate) async fn decide(
    state: &ApiState,
    user: &UserInfo,
    attrs: &Attributes,
) -> Result<std::result::Result<String, String>> {
    if user.in_group(SYSTEM_MASTERS) {
        return Ok(Ok(format!("{SYSTEM_MASTERS} may do anything")));
    }
    let policy = state.authorizer.policy(state).await?;
    Ok(match policy.authorize(user, attrs) {
        Some(allowed) => Ok(allowed.reason),
        None => Err(String::new()),
    })
}

/// Upstream's refusal: `pods "web" is forbidden: User "alice" cannot get resource "pods" in
/// API group "" in the namespace "default"`.
pub(crate) fn forbidden(user: &UserInfo, attrs: &Attributes, reason: &str) -> ApiError {
    let suffix = if reason.is_empty() {
        String::new()
    } else {
        format!(": {reason}")
    };
    if !attrs.resource_request {
        return ApiError::Forbidden {
            target: Target::new("", "", ""),
            message: format!(
                "forbidden: User {:?} cannot {} path {:?}{suffix}",
                user.name, attrs.verb, attrs.path
            ),
        };
    }
    let qualified = if attrs.api_group.is_empty() {
        attrs.resource.clone()
    } else {
        format!("{}.{}", attrs.resource, attrs.api_group)
    };
    let subject = match &attrs.name {
        Some(name) => format!("{qualified} {name:?}"),
        None => qualified,
    };
    let scope = match &attrs.namespace {
        Some(ns) => format!("in the namespace {ns:?}"),
        None => "at the cluster scope".to_owned(),
    };
    ApiError::Forbidden {
        target: Target::new(
            &attrs.api_group,
            &attrs.resource,
            attrs.name.as_deref().unwrap_or_default(),
        ),
        message: format!(
            "{subject} is forbidden: User {:?} cannot {} resource {:?} in API group {:?} {scope}{suffix}",
            user.name,
            attrs.verb,
            attrs.combined_resource(),
            attrs.api_group,
        ),
    }
}

fn mutating(verb: &str) -> bool {
    matches!(verb, "create" | "update" | "patch" | "delete" | "deletecollection")
}

/// The authorization layer.
pub(crate) async fn layer(State(state): State<Arc<ApiState>>, request: Request, next: Next) -> Response {
    let info = request
        .extensions()
        .get::<RequestInfo>()
        .cloned()
        .unwrap_or_else(|| RequestInfo::parse(request.method(), request.uri().path(), request.uri().query()));
    let Some(user) = request.extensions().get::<UserInfo>().cloned() else {
        return ApiError::Unauthorized.into_response();
    };
    let attrs = attributes(&info);
    match decide(&state, &user, &attrs).await {
        Ok(Ok(_)) => {
            state.metrics.authorized(true);
            if let Err(e) = super::noderestriction::check(&state, &user, &info).await {
                return e.into_response();
            }
        }
        Ok(Err(reason)) => {
            state.metrics.authorized(false);
            debug!(user = %user.name, verb = %attrs.verb, resource = %attrs.combined_resource(), path = %attrs.path, "forbidden");
            return forbidden(&user, &attrs, &reason).into_response();
        }
        Err(e) => return e.into_response(),
    }
    let rbac_write = info.is_resource_request && info.api_group == RBAC_GROUP && mutating(&info.verb);
    let response = next.run(request).await;
    if rbac_write {
        state.authorizer.invalidate();
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forbidden_messages_read_like_upstream() {
        let alice = UserInfo::new("alice", Vec::<String>::new());
        let list = Attributes::resource("list", "", "pods", Some("default"), None);
        assert_eq!(
            forbidden(&alice, &list, "").to_string(),
            r#"pods is forbidden: User "alice" cannot list resource "pods" in API group "" in the namespace "default""#
        );
        let get = Attributes::resource("get", "apps", "deployments/scale", None, Some("web"));
        assert_eq!(
            forbidden(&alice, &get, "").to_string(),
            r#"deployments.apps "web" is forbidden: User "alice" cannot get resource "deployments/scale" in API group "apps" at the cluster scope"#
        );
        let path = Attributes::non_resource("get", "/metrics");
        assert_eq!(
            forbidden(&alice, &path, "").to_string(),
            r#"forbidden: User "alice" cannot get path "/metrics""#
        );
    }
}
