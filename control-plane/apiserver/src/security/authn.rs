//! The authentication layer: every request gets a [`UserInfo`] extension or a 401.
//!
//! In order: the client certificate verified during the TLS handshake; then a bearer token,
//! tried against the static token file and then as a bootstrap token (`<id>.<secret>`,
//! looked up in `kube-system/bootstrap-token-<id>`). A request without credentials is
//! `system:anonymous` only for `/healthz`, `/livez`, `/readyz` and `/version`; elsewhere it
//! is refused. A malformed `Authorization` header or an unknown token is refused even where
//! anonymous access would do, as kube-apiserver does.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine;
use coxswain_auth::UserInfo;
use coxswain_auth::authn::{AuthnError, BootstrapToken, bearer_token};
use serde_json::Value;
use tracing::debug;

use super::tls::ClientCertUser;
use crate::server::ApiState;
use crate::status::ApiError;

/// The anonymous user's name and group.
pub(crate) const ANONYMOUS: &str = "system:anonymous";
pub(crate) const UNAUTHENTICATED: &str = "system:unauthenticated";

/// Paths anyone may read without credentials.
fn public_path(path: &str) -> bool {
    let path = path.trim_end_matches('/');
    ["/healthz", "/livez", "/readyz", "/version"]
        .iter()
        .any(|p| path == *p || path.strip_prefix(p).is_some_and(|rest| rest.starts_with('/')))
}

fn anonymous() -> UserInfo {
    UserInfo {
        name: ANONYMOUS.to_owned(),
        groups: vec![UNAUTHENTICATED.to_owned()],
        ..UserInfo::default()
    }
}

/// Bootstrap token Secrets live in this namespace.
const BOOTSTRAP_NAMESPACE: &str = "kube-system";

async fn bootstrap_user(state: &ApiState, token: &BootstrapToken) -> Result<UserInfo, AuthnError> {
    let invalid = || AuthnError::InvalidToken(String::new());
    let rt = state
        .registry
        .lookup("", "v1", "secrets")
        .ok_or_else(invalid)?;
    let key = rt.key(Some(BOOTSTRAP_NAMESPACE), &token.secret_name());
    let (kv, _) = state.store.get(&key, None).await.map_err(|e| {
        debug!(error = %e, "bootstrap token lookup failed");
        invalid()
    })?;
    let kv = kv.ok_or_else(invalid)?;
    let secret: Value = serde_json::from_slice(&kv.value).map_err(|_| invalid())?;
    if secret.get("type").and_then(Value::as_str) != Some("bootstrap.kubernetes.io/token")
        || secret.pointer("/metadata/deletionTimestamp").is_some()
    {
        return Err(invalid());
    }
    let mut data = BTreeMap::new();
    for (k, v) in secret
        .get("data")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
    {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(v.as_str().unwrap_or_default())
            .map_err(|_| invalid())?;
        data.insert(k.clone(), String::from_utf8(bytes).map_err(|_| invalid())?);
    }
    token.authenticate(&data, jiff::Timestamp::now().as_second())
}

/// What authentication reads from a request (owned, so no borrow of the request is held
/// across the store lookup).
struct Credentials {
    cert_user: Option<UserInfo>,
    authorization: Option<Vec<u8>>,
    path: String,
}

impl Credentials {
    fn of(request: &Request) -> Credentials {
        Credentials {
            cert_user: request
                .extensions()
                .get::<ClientCertUser>()
                .and_then(|c| c.0.clone()),
            authorization: request
                .headers()
                .get(header::AUTHORIZATION)
                .map(|v| v.as_bytes().to_vec()),
            path: request.uri().path().to_owned(),
        }
    }
}

async fn authenticate(state: &ApiState, creds: Credentials) -> Result<(UserInfo, &'static str), AuthnError> {
    if let Some(user) = creds.cert_user {
        return Ok((user, "certificate"));
    }
    match bearer_token(creds.authorization.as_deref())? {
        Some(token) => {
            if let Some(user) = state.security.tokens.authenticate(token) {
                return Ok((user.clone(), "token"));
            }
            if super::tokens::looks_like_jwt(token) {
                return Ok((super::tokens::authenticate(state, token).await?, "service_account_token"));
            }
            if let Some(bootstrap) = BootstrapToken::parse(token) {
                return Ok((bootstrap_user(state, &bootstrap).await?, "bootstrap_token"));
            }
            Err(AuthnError::InvalidToken(String::new()))
        }
        None if public_path(&creds.path) => Ok((anonymous(), "anonymous")),
        None => Err(AuthnError::InvalidToken("no credentials".to_owned())),
    }
}

/// What `Impersonate-*` headers ask for.
#[derive(Debug, Default)]
struct Impersonation {
    user: Option<String>,
    uid: Option<String>,
    groups: Vec<String>,
    extra: BTreeMap<String, Vec<String>>,
}

fn impersonation(headers: &axum::http::HeaderMap) -> Result<Option<Impersonation>, ApiError> {
    let text = |v: &axum::http::HeaderValue, name: &str| {
        v.to_str()
            .map(str::to_owned)
            .map_err(|_| ApiError::BadRequest(format!("the {name} header is not valid text")))
    };
    let mut wanted = Impersonation::default();
    let mut any = false;
    for (name, value) in headers {
        let name = name.as_str();
        if name == "impersonate-user" {
            wanted.user = Some(text(value, name)?);
        } else if name == "impersonate-uid" {
            wanted.uid = Some(text(value, name)?);
        } else if name == "impersonate-group" {
            wanted.groups.push(text(value, name)?);
        } else if let Some(key) = name.strip_prefix("impersonate-extra-") {
            wanted.extra.entry(key.to_owned()).or_default().push(text(value, name)?);
        } else {
            continue;
        }
        any = true;
    }
    if !any {
        return Ok(None);
    }
    if wanted.user.as_deref().unwrap_or_default().is_empty() {
        return Err(ApiError::BadRequest(
            "impersonating groups, a uid or extra fields requires Impersonate-User".to_owned(),
        ));
    }
    Ok(Some(wanted))
}

/// The user a request impersonates, after checking that `user` may impersonate each part of
/// it (`impersonate` on `users`, `groups`, `serviceaccounts`, `uids`, `userextras/<key>`).
async fn impersonate(state: &ApiState, user: &UserInfo, wanted: Impersonation) -> Result<UserInfo, ApiError> {
    use coxswain_auth::Attributes;
    let name = wanted.user.unwrap_or_default();
    let mut checks = Vec::new();
    let mut target = match name
        .strip_prefix(coxswain_auth::authn::SERVICE_ACCOUNT_PREFIX)
        .and_then(|rest| rest.split_once(':'))
    {
        Some((ns, sa)) => {
            checks.push(Attributes::resource("impersonate", "", "serviceaccounts", Some(ns), Some(sa)));
            UserInfo::service_account(ns, sa, "")
        }
        None => {
            checks.push(Attributes::resource("impersonate", "", "users", None, Some(&name)));
            UserInfo {
                name: name.clone(),
                ..UserInfo::default()
            }
        }
    };
    for group in &wanted.groups {
        checks.push(Attributes::resource("impersonate", "", "groups", None, Some(group)));
        if !target.in_group(group) {
            target.groups.push(group.clone());
        }
    }
    if let Some(uid) = &wanted.uid {
        checks.push(Attributes::resource("impersonate", "authentication.k8s.io", "uids", None, Some(uid)));
        target.uid = uid.clone();
    }
    for (key, values) in &wanted.extra {
        for value in values {
            checks.push(Attributes::resource(
                "impersonate",
                "authentication.k8s.io",
                &format!("userextras/{key}"),
                None,
                Some(value),
            ));
        }
    }
    target.extra = wanted.extra;
    for attrs in &checks {
        if let Err(reason) = super::authz::decide(state, user, attrs).await? {
            return Err(super::authz::forbidden(user, attrs, &reason));
        }
    }
    if target.name != ANONYMOUS && !target.in_group(coxswain_auth::authn::AUTHENTICATED) {
        target.groups.push(coxswain_auth::authn::AUTHENTICATED.to_owned());
    }
    Ok(target)
}

/// The authentication layer (with impersonation: an authenticated user allowed to may act as
/// another through `Impersonate-*` headers, as `kubectl --as` sends).
pub(crate) async fn layer(State(state): State<Arc<ApiState>>, mut request: Request, next: Next) -> Response {
    match authenticate(&state, Credentials::of(&request)).await {
        Ok((user, how)) => {
            state.metrics.authenticated(how);
            let wanted = match impersonation(request.headers()) {
                Ok(w) => w,
                Err(e) => return e.into_response(),
            };
            let user = match wanted {
                None => user,
                Some(wanted) => match impersonate(&state, &user, wanted).await {
                    Ok(target) => {
                        debug!(user = %user.name, as_user = %target.name, "impersonating");
                        target
                    }
                    Err(e) => return e.into_response(),
                },
            };
            request.extensions_mut().insert(user);
            next.run(request).await
        }
        Err(e) => {
            state.metrics.authenticated("failure");
            debug!(path = %request.uri().path(), error = %e, "unauthenticated request refused");
            ApiError::Unauthorized.into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_health_and_version_are_public() {
        for p in ["/healthz", "/livez", "/readyz", "/version", "/version/", "/readyz/etcd"] {
            assert!(public_path(p), "{p}");
        }
        for p in ["/api", "/apis", "/metrics", "/versionx", "/healthzz", "/api/v1/pods", "/"] {
            assert!(!public_path(p), "{p}");
        }
    }
}
