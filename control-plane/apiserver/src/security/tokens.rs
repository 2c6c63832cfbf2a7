//! ServiceAccount tokens: the TokenRequest subresource that issues them
//! (`POST /api/v1/namespaces/<ns>/serviceaccounts/<name>/token`, what `kubectl create token`
//! and kubelets call), their authentication (signature, issuer, expiry, audience, and the
//! ServiceAccount and bound Pod still existing with the same UIDs), and the OIDC discovery
//! documents that let others verify them.

use axum::http::StatusCode;
use axum::response::Response;
use bytes::Bytes;
use coxswain_auth::UserInfo;
use coxswain_auth::authn::AuthnError;
use coxswain_auth::satoken::{
    self, DEFAULT_EXPIRATION_SECONDS, MAX_EXPIRATION_SECONDS, MIN_EXPIRATION_SECONDS, ObjectRef,
};
use serde_json::{Value, json};

use crate::codec::json_response;
use crate::handlers::Ctx;
use crate::server::ApiState;
use crate::status::{ApiError, Cause, Result, Target};

/// The stored object `namespace/name` of core/v1 `plural`, if any.
async fn stored(state: &ApiState, plural: &str, namespace: &str, name: &str) -> Result<Option<Value>> {
    let rt = state
        .registry
        .lookup("", "v1", plural)
        .ok_or_else(|| ApiError::Internal(format!("{plural} are not registered")))?;
    let (kv, _) = state
        .store
        .get(&rt.key(Some(namespace), name), None)
        .await
        .map_err(|e| ApiError::from_store(e, &Target::new("", plural, name)))?;
    kv.map(|kv| crate::storage::decode(&kv)).transpose()
}

fn uid(obj: &Value) -> String {
    obj.pointer("/metadata/uid")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned()
}

fn invalid(ctx: &Ctx, name: &str, cause: Cause) -> ApiError {
    ApiError::Invalid {
        kind: "TokenRequest".to_owned(),
        target: ctx.target(name),
        causes: vec![cause],
    }
}

/// `POST .../serviceaccounts/<name>/token`.
pub(crate) async fn token_request(ctx: &Ctx, user: &UserInfo, body: Bytes) -> Result<Response> {
    let state = &ctx.state;
    let namespace = ctx.namespace.clone().unwrap_or_default();
    let name = ctx.name.clone().unwrap_or_default();
    let request = crate::handlers::create::decode_body(ctx, &body)?;
    let request: k8s_openapi::api::authentication::v1::TokenRequest = serde_json::from_value(request)
        .map_err(|e| ApiError::BadRequest(format!("the TokenRequest is malformed: {e}")))?;
    let spec = request.spec.unwrap_or_default();
    let bound_pod = match spec.bound_object_ref.as_ref() {
        Some(r) if r.kind.as_deref() == Some("Pod") => {
            stored(state, "pods", &namespace, r.name.as_deref().unwrap_or_default()).await?
        }
        _ => None,
    };
    crate::security::noderestriction::admit_token_request(state, user, &namespace, &name, &spec, bound_pod.as_ref())
        .await?;
    let sa = stored(state, "serviceaccounts", &namespace, &name)
        .await?
        .ok_or_else(|| ApiError::NotFound(ctx.target(&name)))?;
    let expiration = spec.expiration_seconds.unwrap_or(DEFAULT_EXPIRATION_SECONDS);
    if expiration < MIN_EXPIRATION_SECONDS {
        return Err(invalid(
            ctx,
            &name,
            Cause::invalid(
                "spec.expirationSeconds",
                &expiration.to_string(),
                format!("may not specify a duration less than {MIN_EXPIRATION_SECONDS} seconds"),
            ),
        ));
    }
    // Longer requests are shortened, as upstream's --service-account-max-token-expiration.
    let expiration = expiration.min(MAX_EXPIRATION_SECONDS);
    let signer = &state.security.signer;
    let audiences = match spec.audiences.clone() {
        Some(a) if !a.is_empty() => a,
        _ => vec![signer.issuer().to_owned()],
    };
    let (pod, node) = match &spec.bound_object_ref {
        None => (None, None),
        Some(r) if r.kind.as_deref() == Some("Pod") => {
            let pod_name = r.name.clone().unwrap_or_default();
            let pod = bound_pod
                .clone()
                .ok_or_else(|| ApiError::NotFound(Target::new("", "pods", &pod_name)))?;
            let pod_sa = pod.pointer("/spec/serviceAccountName").and_then(Value::as_str).unwrap_or_default();
            if pod_sa != name {
                return Err(ApiError::BadRequest(format!(
                    "cannot bind token for serviceaccount {name:?} to pod running with different serviceaccount name."
                )));
            }
            let pod_uid = uid(&pod);
            if r.uid.as_deref().is_some_and(|u| !u.is_empty() && u != pod_uid) {
                return Err(ApiError::Conflict(
                    Target::new("", "pods", &pod_name),
                    format!("the UID in the bound object reference ({}) does not match the pod's ({pod_uid})", r.uid.as_deref().unwrap_or_default()),
                ));
            }
            let node = pod
                .pointer("/spec/nodeName")
                .and_then(Value::as_str)
                .filter(|n| !n.is_empty())
                .map(|n| ObjectRef { name: n.to_owned(), uid: String::new() });
            (Some(ObjectRef { name: pod_name, uid: pod_uid }), node)
        }
        Some(r) => {
            return Err(invalid(
                ctx,
                &name,
                Cause::not_supported(
                    "spec.boundObjectRef.kind",
                    r.kind.as_deref().unwrap_or_default(),
                    &["Pod"],
                ),
            ));
        }
    };
    let now = jiff::Timestamp::now().as_second();
    let claims = satoken::claims(
        signer.issuer(),
        &namespace,
        ObjectRef { name: name.clone(), uid: uid(&sa) },
        pod,
        node,
        audiences.clone(),
        now,
        expiration,
    );
    let token = signer
        .sign(&claims)
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    let expires = jiff::Timestamp::from_second(claims.exp)
        .map(|t| t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string())
        .unwrap_or_default();
    let mut spec = serde_json::to_value(&spec).unwrap_or_else(|_| json!({}));
    spec["audiences"] = json!(audiences);
    spec["expirationSeconds"] = json!(expiration);
    Ok(json_response(
        StatusCode::CREATED,
        &json!({
            "kind": "TokenRequest",
            "apiVersion": "authentication.k8s.io/v1",
            "metadata": {"name": name, "namespace": namespace, "creationTimestamp": null},
            "spec": spec,
            "status": {"token": token, "expirationTimestamp": expires},
        }),
    ))
}

/// Whether `token` looks like a JWT (and so should be verified as a ServiceAccount token).
pub(crate) fn looks_like_jwt(token: &str) -> bool {
    token.starts_with("eyJ") && token.bytes().filter(|b| *b == b'.').count() == 2
}

/// Authenticates a ServiceAccount token for the API server's own audience.
pub(crate) async fn authenticate(state: &ApiState, token: &str) -> Result<UserInfo, AuthnError> {
    authenticate_for(state, token, None).await
}

/// Authenticates a ServiceAccount token for `audience` (the issuer when `None`).
pub(crate) async fn authenticate_for(
    state: &ApiState,
    token: &str,
    audience: Option<&str>,
) -> Result<UserInfo, AuthnError> {
    let signer = &state.security.signer;
    let invalid = |why: String| AuthnError::InvalidToken(why);
    let claims = signer
        .verify(token, audience.unwrap_or(signer.issuer()), jiff::Timestamp::now().as_second())
        .map_err(|e| invalid(e.to_string()))?;
    let k = &claims.kubernetes;
    let lookup = |plural: &'static str, name: String| async move {
        stored(state, plural, &k.namespace, &name)
            .await
            .map_err(|e| invalid(format!("cannot check the token's {plural}: {e}")))
    };
    let sa = lookup("serviceaccounts", k.serviceaccount.name.clone()).await?;
    if sa.as_ref().map(uid).as_deref() != Some(k.serviceaccount.uid.as_str()) {
        return Err(invalid(format!(
            "service account {}/{} has been deleted",
            k.namespace, k.serviceaccount.name
        )));
    }
    let mut user = UserInfo::service_account(&k.namespace, &k.serviceaccount.name, &k.serviceaccount.uid);
    if let Some(pod) = &k.pod {
        let found = lookup("pods", pod.name.clone()).await?;
        if found.as_ref().map(uid).as_deref() != Some(pod.uid.as_str()) {
            return Err(invalid(format!("pod {}/{} has been deleted", k.namespace, pod.name)));
        }
        user.extra.insert("authentication.kubernetes.io/pod-name".into(), vec![pod.name.clone()]);
        user.extra.insert("authentication.kubernetes.io/pod-uid".into(), vec![pod.uid.clone()]);
    }
    if let Some(node) = &k.node {
        user.extra.insert("authentication.kubernetes.io/node-name".into(), vec![node.name.clone()]);
    }
    user.extra.insert("authentication.kubernetes.io/credential-id".into(), vec![format!("JTI={}", claims.jti)]);
    Ok(user)
}

/// `GET /.well-known/openid-configuration`.
pub(crate) fn openid_configuration(state: &ApiState) -> Response {
    let issuer = state.security.signer.issuer();
    json_response(
        StatusCode::OK,
        &json!({
            "issuer": issuer,
            "jwks_uri": format!("{issuer}/openid/v1/jwks"),
            "response_types_supported": ["id_token"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["ES256"],
        }),
    )
}

/// `GET /openid/v1/jwks`.
pub(crate) fn jwks(state: &ApiState) -> Response {
    json_response(
        StatusCode::OK,
        &json!({"keys": [state.security.signer.jwk()]}),
    )
}
