//! Authentication and authorization of the kubelet's API, as upstream's kubelet with
//! `--authentication-x509` (`clientCAFile`), webhook token authentication and webhook
//! authorization:
//!
//! - who: the client certificate the TLS handshake verified against the cluster CA, else a
//!   bearer token checked with a `TokenReview`; nobody else (401 `Unauthorized`);
//! - what: a `SubjectAccessReview` for the request's verb (from the HTTP method) on this
//!   kubelet's own Node and the subresource its path maps to (`/stats` → `stats`,
//!   `/metrics` → `metrics`, `/logs/` → `log`, `/healthz` → `healthz`, `/pods` → `pods`,
//!   `/configz` → `configz`, anything else, `/exec`, `/attach`, `/containerLogs` included →
//!   `proxy`); a refusal is 403 `Forbidden (user=..., verb=..., resource=nodes,
//!   subresource=...)`.
//!
//! Verdicts are cached as upstream's defaults: authorized 5 minutes, unauthorized 30 s;
//! token reviews 2 minutes (authenticated) and 30 s (not).

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use async_trait::async_trait;
use axum::{
    extract::{Request, State},
    http::{Method, StatusCode, header},
    middleware::Next,
    response::{IntoResponse, Response},
};
use coxswain_auth::UserInfo;
use k8s_openapi::api::{
    authentication::v1::{TokenReview, TokenReviewSpec},
    authorization::v1::{ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec},
};
use kube::api::{Api, PostParams};
use tracing::{debug, warn};

/// How long an allowed verdict is reused (upstream's `cacheAuthorizedTTL`).
const AUTHORIZED_TTL: Duration = Duration::from_secs(300);
/// How long a refusal is reused (upstream's `cacheUnauthorizedTTL`).
const UNAUTHORIZED_TTL: Duration = Duration::from_secs(30);
/// How long an authenticated token is reused (upstream's `cacheTTL` of token reviews).
const TOKEN_TTL: Duration = Duration::from_secs(120);
/// How long a refused token is remembered.
const BAD_TOKEN_TTL: Duration = Duration::from_secs(30);
/// Most cache entries before the oldest are dropped.
const CACHE_LIMIT: usize = 4096;

/// The user of the client certificate the connection was opened with (verified against the
/// cluster CA during the handshake), if any: the connection info the TLS listener gives
/// every request of the connection (`ConnectInfo<PeerUser>`).
#[derive(Debug, Clone)]
pub struct PeerUser(pub Option<UserInfo>);

/// What authorizing a request asks the API server.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Attributes {
    /// `get`, `create`, ...
    pub verb: String,
    /// Subresource of `nodes`.
    pub subresource: String,
}

/// The attributes of `method path` (upstream's `NodeAuthorizerAttributesGetter`).
pub fn attributes(method: &Method, path: &str) -> Attributes {
    let verb = match *method {
        Method::POST => "create",
        Method::GET | Method::HEAD => "get",
        Method::PUT => "update",
        Method::PATCH => "patch",
        Method::DELETE => "delete",
        _ => "",
    };
    let is_subpath = |prefix: &str| {
        let prefix = prefix.trim_end_matches('/');
        path == prefix || path.starts_with(&format!("{prefix}/"))
    };
    let subresource = if is_subpath("/stats") {
        "stats"
    } else if is_subpath("/metrics") {
        "metrics"
    } else if path.starts_with("/logs/") || path == "/logs" {
        "log"
    } else if is_subpath("/spec") {
        "spec"
    } else if is_subpath("/checkpoint") {
        "checkpoint"
    } else if is_subpath("/healthz") {
        "healthz"
    } else if is_subpath("/pods") {
        "pods"
    } else if is_subpath("/configz") {
        "configz"
    } else {
        "proxy"
    };
    Attributes { verb: verb.to_owned(), subresource: subresource.to_owned() }
}

/// The API calls behind authentication and authorization (a fake in unit tests).
#[async_trait]
pub trait Reviewer: Send + Sync {
    /// The user a bearer token stands for (`Ok(None)`: not authenticated).
    async fn token(&self, token: &str) -> Result<Option<UserInfo>, String>;
    /// Whether `user` may do `attrs` on node `node`, and why not.
    async fn access(&self, user: &UserInfo, node: &str, attrs: &Attributes) -> Result<(bool, String), String>;
}

/// [`Reviewer`] over the API server: `TokenReview` and `SubjectAccessReview` as the node.
#[derive(Clone)]
pub struct ApiReviewer(pub kube::Client);

#[async_trait]
impl Reviewer for ApiReviewer {
    async fn token(&self, token: &str) -> Result<Option<UserInfo>, String> {
        let api: Api<TokenReview> = Api::all(self.0.clone());
        let review = TokenReview {
            spec: TokenReviewSpec { token: token.to_owned(), audiences: None },
            ..TokenReview::default()
        };
        let answer = api
            .create(&PostParams::default(), &review)
            .await
            .map_err(|e| format!("failed to create a TokenReview: {e}"))?;
        let status = answer.status.unwrap_or_default();
        if status.authenticated != Some(true) {
            return Ok(None);
        }
        let user = status.user.unwrap_or_default();
        Ok(Some(UserInfo {
            name: user.username.unwrap_or_default(),
            uid: user.uid.unwrap_or_default(),
            groups: user.groups.unwrap_or_default(),
            extra: user.extra.unwrap_or_default().into_iter().collect(),
        }))
    }

    async fn access(&self, user: &UserInfo, node: &str, attrs: &Attributes) -> Result<(bool, String), String> {
        let api: Api<SubjectAccessReview> = Api::all(self.0.clone());
        let review = SubjectAccessReview {
            spec: SubjectAccessReviewSpec {
                user: Some(user.name.clone()),
                uid: Some(user.uid.clone()).filter(|u| !u.is_empty()),
                groups: Some(user.groups.clone()),
                extra: Some(user.extra.clone()).filter(|e| !e.is_empty()),
                resource_attributes: Some(ResourceAttributes {
                    verb: Some(attrs.verb.clone()),
                    group: Some(String::new()),
                    version: Some("v1".to_owned()),
                    resource: Some("nodes".to_owned()),
                    subresource: Some(attrs.subresource.clone()),
                    name: Some(node.to_owned()),
                    ..ResourceAttributes::default()
                }),
                ..SubjectAccessReviewSpec::default()
            },
            ..SubjectAccessReview::default()
        };
        let answer = api
            .create(&PostParams::default(), &review)
            .await
            .map_err(|e| format!("failed to create a SubjectAccessReview: {e}"))?;
        let status = answer.status.unwrap_or_default();
        Ok((status.allowed, status.reason.unwrap_or_default()))
    }
}

type AccessKey = (String, String, Vec<String>, BTreeMap<String, Vec<String>>, Attributes);

/// Authenticates and authorizes the kubelet's requests.
pub struct RequestAuth {
    node: String,
    reviewer: Arc<dyn Reviewer>,
    tokens: Mutex<HashMap<String, (Option<UserInfo>, Instant)>>,
    verdicts: Mutex<HashMap<AccessKey, (bool, Instant)>>,
}

impl std::fmt::Debug for RequestAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequestAuth").field("node", &self.node).finish_non_exhaustive()
    }
}

/// Why a request was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// No (valid) credential: 401.
    Unauthenticated,
    /// Authenticated but not allowed: 403 with upstream's message.
    Forbidden(String),
    /// The API server could not be asked: 500 (nothing is allowed meanwhile).
    Failed(String),
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let (code, text) = match self {
            Refusal::Unauthenticated => (StatusCode::UNAUTHORIZED, "Unauthorized".to_owned()),
            Refusal::Forbidden(m) => (StatusCode::FORBIDDEN, m),
            Refusal::Failed(m) => (StatusCode::INTERNAL_SERVER_ERROR, m),
        };
        (code, [(header::CONTENT_TYPE, "text/plain; charset=utf-8")], text).into_response()
    }
}

fn fresh<V: Clone>(entry: Option<&(V, Instant)>, ttl: impl Fn(&V) -> Duration) -> Option<V> {
    entry.filter(|(v, at)| at.elapsed() < ttl(v)).map(|(v, _)| v.clone())
}

fn insert_bounded<K: std::hash::Hash + Eq, V>(map: &mut HashMap<K, (V, Instant)>, key: K, value: V) {
    if map.len() >= CACHE_LIMIT {
        let mut ages: Vec<Instant> = map.values().map(|(_, at)| *at).collect();
        ages.sort();
        let cut = ages[ages.len() / 2];
        map.retain(|_, (_, at)| *at > cut);
    }
    map.insert(key, (value, Instant::now()));
}

impl RequestAuth {
    /// Authorizes against node `node` through `reviewer`.
    pub fn new(node: impl Into<String>, reviewer: Arc<dyn Reviewer>) -> RequestAuth {
        RequestAuth {
            node: node.into(),
            reviewer,
            tokens: Mutex::default(),
            verdicts: Mutex::default(),
        }
    }

    /// Who is asking: the certificate's user, else the bearer token's.
    pub async fn authenticate(&self, peer: Option<&UserInfo>, authorization: Option<&str>) -> Result<UserInfo, Refusal> {
        if let Some(user) = peer {
            return Ok(user.clone());
        }
        let token = authorization
            .and_then(|h| h.strip_prefix("Bearer ").or_else(|| h.strip_prefix("bearer ")))
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or(Refusal::Unauthenticated)?;
        let cached = {
            let tokens = self.tokens.lock().unwrap_or_else(|e| e.into_inner());
            fresh(tokens.get(token), |u: &Option<UserInfo>| if u.is_some() { TOKEN_TTL } else { BAD_TOKEN_TTL })
        };
        let user = match cached {
            Some(user) => user,
            None => {
                let user = self.reviewer.token(token).await.map_err(|e| {
                    warn!(error = %e, "cannot review a bearer token");
                    Refusal::Unauthenticated
                })?;
                insert_bounded(&mut self.tokens.lock().unwrap_or_else(|e| e.into_inner()), token.to_owned(), user.clone());
                user
            }
        };
        user.ok_or(Refusal::Unauthenticated)
    }

    /// Whether `user` may do `attrs` on this node.
    pub async fn authorize(&self, user: &UserInfo, attrs: &Attributes) -> Result<(), Refusal> {
        let key: AccessKey = (user.name.clone(), user.uid.clone(), user.groups.clone(), user.extra.clone(), attrs.clone());
        let cached = {
            let verdicts = self.verdicts.lock().unwrap_or_else(|e| e.into_inner());
            fresh(verdicts.get(&key), |ok: &bool| if *ok { AUTHORIZED_TTL } else { UNAUTHORIZED_TTL })
        };
        let allowed = match cached {
            Some(allowed) => allowed,
            None => {
                let (allowed, reason) = self
                    .reviewer
                    .access(user, &self.node, attrs)
                    .await
                    .map_err(|e| Refusal::Failed(format!("Authorization error (user={}, verb={}, resource=nodes, subresource={}): {e}", user.name, attrs.verb, attrs.subresource)))?;
                debug!(user = %user.name, verb = %attrs.verb, subresource = %attrs.subresource, allowed, %reason, "subject access review");
                insert_bounded(&mut self.verdicts.lock().unwrap_or_else(|e| e.into_inner()), key, allowed);
                allowed
            }
        };
        if allowed {
            Ok(())
        } else {
            Err(Refusal::Forbidden(format!(
                "Forbidden (user={}, verb={}, resource=nodes, subresource={})",
                user.name, attrs.verb, attrs.subresource
            )))
        }
    }
}

/// The axum middleware: every request is authenticated and authorized before its handler.
pub async fn layer(State(auth): State<Arc<RequestAuth>>, request: Request, next: Next) -> Response {
    let peer = request
        .extensions()
        .get::<axum::extract::ConnectInfo<PeerUser>>()
        .and_then(|p| p.0.0.clone());
    let authorization = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let user = match auth.authenticate(peer.as_ref(), authorization.as_deref()).await {
        Ok(user) => user,
        Err(refusal) => return refusal.into_response(),
    };
    let attrs = attributes(request.method(), request.uri().path());
    if let Err(refusal) = auth.authorize(&user, &attrs).await {
        debug!(user = %user.name, path = %request.uri().path(), "refused");
        return refusal.into_response();
    }
    next.run(request).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn paths_map_to_node_subresources_as_upstream() {
        let cases = [
            (Method::GET, "/containerLogs/ns/p/c", "get", "proxy"),
            (Method::POST, "/exec/ns/p/c", "create", "proxy"),
            (Method::GET, "/exec/ns/p/c", "get", "proxy"),
            (Method::POST, "/attach/ns/p/c", "create", "proxy"),
            (Method::POST, "/portForward/ns/p", "create", "proxy"),
            (Method::GET, "/logs/", "get", "log"),
            (Method::GET, "/logs/syslog", "get", "log"),
            (Method::GET, "/logsfoo", "get", "proxy"),
            (Method::GET, "/stats/summary", "get", "stats"),
            (Method::GET, "/metrics", "get", "metrics"),
            (Method::GET, "/metrics/cadvisor", "get", "metrics"),
            (Method::GET, "/healthz", "get", "healthz"),
            (Method::GET, "/pods", "get", "pods"),
            (Method::GET, "/configz", "get", "configz"),
            (Method::PUT, "/run/ns/p/c", "update", "proxy"),
        ];
        for (method, path, verb, sub) in cases {
            let a = attributes(&method, path);
            assert_eq!((a.verb.as_str(), a.subresource.as_str()), (verb, sub), "{method} {path}");
        }
    }

    struct Fake {
        allowed_user: &'static str,
        calls: AtomicUsize,
        token_calls: AtomicUsize,
    }

    #[async_trait]
    impl Reviewer for Fake {
        async fn token(&self, token: &str) -> Result<Option<UserInfo>, String> {
            self.token_calls.fetch_add(1, Ordering::SeqCst);
            Ok((token == "good").then(|| UserInfo::new(self.allowed_user, ["g"])))
        }
        async fn access(&self, user: &UserInfo, node: &str, attrs: &Attributes) -> Result<(bool, String), String> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            assert_eq!(node, "n1");
            Ok((user.name == self.allowed_user && attrs.subresource == "proxy", String::new()))
        }
    }

    #[tokio::test]
    async fn requests_are_authenticated_then_authorized_with_cached_verdicts() {
        let fake = Arc::new(Fake { allowed_user: "api", calls: AtomicUsize::new(0), token_calls: AtomicUsize::new(0) });
        let auth = RequestAuth::new("n1", fake.clone());
        assert_eq!(auth.authenticate(None, None).await, Err(Refusal::Unauthenticated));
        assert_eq!(auth.authenticate(None, Some("Basic abc")).await, Err(Refusal::Unauthenticated));
        assert_eq!(auth.authenticate(None, Some("Bearer bad")).await, Err(Refusal::Unauthenticated));
        let by_token = auth.authenticate(None, Some("Bearer good")).await.unwrap();
        assert_eq!(by_token.name, "api");
        auth.authenticate(None, Some("Bearer good")).await.unwrap();
        assert_eq!(fake.token_calls.load(Ordering::SeqCst), 2, "the good token was reviewed once");
        let cert_user = UserInfo::new("alice", Vec::<String>::new());
        assert_eq!(auth.authenticate(Some(&cert_user), Some("Bearer bad")).await.unwrap().name, "alice");

        let exec = attributes(&Method::POST, "/exec/ns/p/c");
        auth.authorize(&by_token, &exec).await.unwrap();
        auth.authorize(&by_token, &exec).await.unwrap();
        assert_eq!(fake.calls.load(Ordering::SeqCst), 1, "the verdict was cached");
        let refused = auth.authorize(&cert_user, &exec).await.unwrap_err();
        assert_eq!(
            refused,
            Refusal::Forbidden("Forbidden (user=alice, verb=create, resource=nodes, subresource=proxy)".into())
        );
        let _ = auth.authorize(&cert_user, &exec).await;
        assert_eq!(fake.calls.load(Ordering::SeqCst), 2, "the refusal was cached too");
        assert!(auth.authorize(&by_token, &attributes(&Method::GET, "/stats/summary")).await.is_err());
    }
}
