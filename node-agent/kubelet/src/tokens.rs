//! ServiceAccount tokens for projected volumes (upstream's token manager): each is requested
//! with TokenRequest (`POST serviceaccounts/<name>/token`) as the node's identity, bound to
//! the pod by name and UID, for the projection's audience and lifetime; it is cached and
//! requested again once 80% of its lifetime has passed (or after 24 hours). A token that
//! cannot be renewed is used as long as it is still valid.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use k8s_openapi::api::authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::ServiceAccount;
use kube::api::{Api, PostParams};
use tracing::{debug, warn};

/// Tokens are renewed at most this long after they were issued, whatever their lifetime.
const MAX_AGE: Duration = Duration::from_secs(24 * 3600);

/// Errors of getting a token.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The API server refused or could not be reached.
    #[error("failed to fetch token: {0}")]
    Request(#[source] kube::Error),
    /// The API server answered without a token.
    #[error("failed to fetch token: the TokenRequest response has no token")]
    Empty,
}

/// What a token is for.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TokenKey {
    /// The pod's namespace.
    pub namespace: String,
    /// The ServiceAccount.
    pub service_account: String,
    /// The pod the token is bound to.
    pub pod_name: String,
    /// Its UID.
    pub pod_uid: String,
    /// The audience (`None`: the API server's own).
    pub audience: Option<String>,
    /// The requested lifetime in seconds.
    pub expiration_seconds: i64,
}

#[derive(Debug, Clone)]
struct Cached {
    token: String,
    issued: jiff::Timestamp,
    expires: jiff::Timestamp,
}

/// Whether a token issued at `issued`, expiring at `expires`, should be requested again at
/// `now`: 80% of its lifetime has passed, or it is older than a day.
pub fn requires_refresh(issued: jiff::Timestamp, expires: jiff::Timestamp, now: jiff::Timestamp) -> bool {
    let life = expires.as_millisecond() - issued.as_millisecond();
    let age = now.as_millisecond() - issued.as_millisecond();
    age * 5 >= life * 4 || age >= MAX_AGE.as_millis() as i64
}

/// The tokens of the pods on this node.
#[derive(Debug, Default)]
pub struct TokenManager {
    cache: Mutex<HashMap<TokenKey, Cached>>,
}

impl TokenManager {
    /// The token for `key`: the cached one unless it is due for renewal, else a new one.
    pub async fn get(&self, client: &kube::Client, key: &TokenKey) -> Result<String, Error> {
        let now = jiff::Timestamp::now();
        let cached = self.cache.lock().unwrap_or_else(|e| e.into_inner()).get(key).cloned();
        if let Some(c) = &cached
            && !requires_refresh(c.issued, c.expires, now)
        {
            return Ok(c.token.clone());
        }
        match request(client, key).await {
            Ok(fresh) => {
                debug!(pod = %key.pod_name, namespace = %key.namespace, service_account = %key.service_account,
                    expires = %fresh.expires, "got a ServiceAccount token");
                let token = fresh.token.clone();
                self.cache.lock().unwrap_or_else(|e| e.into_inner()).insert(key.clone(), fresh);
                Ok(token)
            }
            Err(e) => match cached {
                Some(c) if c.expires > now => {
                    warn!(pod = %key.pod_name, namespace = %key.namespace, error = %e,
                        "renewing a ServiceAccount token failed; the current one is still valid");
                    Ok(c.token)
                }
                _ => Err(e),
            },
        }
    }

    /// Forgets the tokens of the pod `uid` (it is gone from this node).
    pub fn forget_pod(&self, uid: &str) {
        self.cache.lock().unwrap_or_else(|e| e.into_inner()).retain(|k, _| k.pod_uid != uid);
    }
}

async fn request(client: &kube::Client, key: &TokenKey) -> Result<Cached, Error> {
    let api: Api<ServiceAccount> = Api::namespaced(client.clone(), &key.namespace);
    let request = TokenRequest {
        spec: Some(TokenRequestSpec {
            audiences: key.audience.clone().map(|a| vec![a]),
            expiration_seconds: Some(key.expiration_seconds),
            bound_object_ref: Some(BoundObjectReference {
                api_version: Some("v1".to_owned()),
                kind: Some("Pod".to_owned()),
                name: Some(key.pod_name.clone()),
                uid: Some(key.pod_uid.clone()),
            }),
            ..TokenRequestSpec::default()
        }),
        ..TokenRequest::default()
    };
    let issued = jiff::Timestamp::now();
    let answer = api
        .create_token_request(&key.service_account, &PostParams::default(), &request)
        .await
        .map_err(Error::Request)?;
    let status = answer.status.ok_or(Error::Empty)?;
    let token = status.token.filter(|t| !t.is_empty()).ok_or(Error::Empty)?;
    // Without an expiry, assume the lifetime asked for.
    let expires = status
        .expiration_timestamp
        .map(|t| t.0)
        .unwrap_or_else(|| issued + jiff::SignedDuration::from_secs(key.expiration_seconds));
    Ok(Cached { token, issued, expires })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_renewed_after_four_fifths_of_their_life() {
        let t = |s: i64| jiff::Timestamp::from_second(s).unwrap();
        let (issued, expires) = (t(1000), t(1000 + 3607));
        assert!(!requires_refresh(issued, expires, t(1000)));
        assert!(!requires_refresh(issued, expires, t(1000 + 2885)), "before 80%");
        assert!(requires_refresh(issued, expires, t(1000 + 2886)), "at 80%");
        assert!(requires_refresh(issued, expires, t(1000 + 4000)), "expired");
        let year = t(1000 + 365 * 24 * 3600);
        assert!(requires_refresh(issued, year, t(1000 + 24 * 3600)), "a day old");
    }
}
