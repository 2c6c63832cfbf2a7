//! The review APIs: create-only kinds answered from the authenticator's and the authorizer's
//! view, never stored. `SelfSubjectAccessReview` (`kubectl auth can-i`),
//! `SelfSubjectRulesReview` (`kubectl auth can-i --list`), `SubjectAccessReview` and
//! `LocalSubjectAccessReview` (asking about someone else, for admins),
//! `SelfSubjectReview` (`kubectl auth whoami`) and `TokenReview` (is this ServiceAccount
//! token valid, and whose is it).

use axum::http::StatusCode;
use axum::response::Response;
use bytes::Bytes;
use coxswain_auth::{Attributes, UserInfo};
use serde_json::{Value, json};

use super::authz;
use crate::codec::json_response;
use crate::handlers::Ctx;
use crate::status::{ApiError, Cause, Result};

fn text<'a>(v: &'a Value, key: &str) -> &'a str {
    v.get(key).and_then(Value::as_str).unwrap_or_default()
}

fn invalid(ctx: &Ctx, field: &str, message: &str) -> ApiError {
    ApiError::Invalid {
        kind: ctx.rt.kind.to_owned(),
        target: ctx.target(""),
        causes: vec![Cause::invalid(field, "null", message)],
    }
}

/// The attributes a review's `spec` asks about.
fn spec_attributes(ctx: &Ctx, spec: &Value) -> Result<Attributes> {
    let resource = spec.get("resourceAttributes");
    let non_resource = spec.get("nonResourceAttributes");
    match (resource, non_resource) {
        (Some(r), None) => {
            let mut namespace = text(r, "namespace").to_owned();
            if ctx.rt.namespaced {
                // LocalSubjectAccessReview: the URL's namespace, which the spec may repeat.
                let url_ns = ctx.namespace.clone().unwrap_or_default();
                if !namespace.is_empty() && namespace != url_ns {
                    return Err(invalid(
                        ctx,
                        "spec.resourceAttributes.namespace",
                        "must match the namespace of the request",
                    ));
                }
                namespace = url_ns;
            }
            let resource = text(r, "resource");
            let subresource = text(r, "subresource");
            let combined = if subresource.is_empty() {
                resource.to_owned()
            } else {
                format!("{resource}/{subresource}")
            };
            Ok(Attributes::resource(
                text(r, "verb"),
                text(r, "group"),
                &combined,
                Some(namespace.as_str()),
                Some(text(r, "name")),
            ))
        }
        (None, Some(n)) => Ok(Attributes::non_resource(text(n, "verb"), text(n, "path"))),
        (Some(_), Some(_)) => Err(invalid(
            ctx,
            "spec.nonResourceAttributes",
            "cannot be specified in combination with resourceAttributes",
        )),
        (None, None) => Err(invalid(
            ctx,
            "spec.resourceAttributes",
            "exactly one of nonResourceAttributes or resourceAttributes must be specified",
        )),
    }
}

/// The user a `SubjectAccessReview` asks about: exactly what the spec says.
fn spec_user(ctx: &Ctx, spec: &Value) -> Result<UserInfo> {
    let groups: Vec<String> = spec
        .get("groups")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .map(str::to_owned)
        .collect();
    let name = text(spec, "user");
    if name.is_empty() && groups.is_empty() {
        return Err(invalid(
            ctx,
            "spec.user",
            "at least one of user or group must be specified",
        ));
    }
    let extra = spec
        .get("extra")
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .map(|(k, v)| {
                    let values = v
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(Value::as_str)
                        .map(str::to_owned)
                        .collect();
                    (k.clone(), values)
                })
                .collect()
        })
        .unwrap_or_default();
    Ok(UserInfo {
        name: name.to_owned(),
        uid: text(spec, "uid").to_owned(),
        groups,
        extra,
    })
}

async fn access_status(ctx: &Ctx, user: &UserInfo, attrs: &Attributes) -> Result<Value> {
    Ok(match authz::decide(&ctx.state, user, attrs).await? {
        Ok(reason) => json!({"allowed": true, "reason": reason}),
        Err(reason) => json!({"allowed": false, "reason": reason}),
    })
}

fn rules_status(rules: &[k8s_openapi::api::rbac::v1::PolicyRule]) -> Value {
    let mut resource_rules = Vec::new();
    let mut non_resource_rules = Vec::new();
    for rule in rules {
        if let Some(urls) = rule.non_resource_urls.as_ref().filter(|u| !u.is_empty()) {
            non_resource_rules.push(json!({"verbs": rule.verbs, "nonResourceURLs": urls}));
        }
        if rule.resources.as_ref().is_some_and(|r| !r.is_empty()) {
            let mut r = json!({
                "verbs": rule.verbs,
                "apiGroups": rule.api_groups.clone().unwrap_or_default(),
                "resources": rule.resources.clone().unwrap_or_default(),
            });
            if let Some(names) = rule.resource_names.as_ref().filter(|n| !n.is_empty()) {
                r["resourceNames"] = json!(names);
            }
            resource_rules.push(r);
        }
    }
    json!({
        "resourceRules": resource_rules,
        "nonResourceRules": non_resource_rules,
        "incomplete": false,
    })
}

fn user_json(user: &UserInfo) -> Value {
    let mut v = json!({"username": user.name, "groups": user.groups});
    if !user.uid.is_empty() {
        v["uid"] = json!(user.uid);
    }
    if !user.extra.is_empty() {
        v["extra"] = json!(user.extra);
    }
    v
}

/// `POST` of a review: answers it and returns it with its `status`.
pub(crate) async fn create(ctx: &Ctx, user: &UserInfo, body: Bytes) -> Result<Response> {
    let value = crate::handlers::create::decode_body(ctx, &body)?;
    let mut review = (ctx.rt.roundtrip)(value)
        .map_err(|e| ApiError::BadRequest(format!("the {} is malformed: {e}", ctx.rt.kind)))?;
    let spec = review.get("spec").cloned().unwrap_or_else(|| json!({}));
    let status = match ctx.rt.kind {
        "SelfSubjectAccessReview" => access_status(ctx, user, &spec_attributes(ctx, &spec)?).await?,
        "SubjectAccessReview" | "LocalSubjectAccessReview" => {
            let subject = spec_user(ctx, &spec)?;
            access_status(ctx, &subject, &spec_attributes(ctx, &spec)?).await?
        }
        "SelfSubjectRulesReview" => {
            let namespace = text(&spec, "namespace");
            let policy = ctx.state.authorizer.policy(&ctx.state).await?;
            rules_status(&policy.rules_for(user, namespace))
        }
        "SelfSubjectReview" => json!({"userInfo": user_json(user)}),
        "TokenReview" => {
            let token = text(&spec, "token");
            let audiences: Vec<String> = spec
                .get("audiences")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect();
            let audience = audiences.first().map(String::as_str);
            let result = if super::tokens::looks_like_jwt(token) {
                super::tokens::authenticate_for(&ctx.state, token, audience).await
            } else {
                Err(coxswain_auth::authn::AuthnError::InvalidToken(
                    "not a service account token".to_owned(),
                ))
            };
            match result {
                Ok(who) => json!({
                    "authenticated": true,
                    "user": user_json(&who),
                    "audiences": if audiences.is_empty() { vec![ctx.state.security.signer.issuer().to_owned()] } else { audiences },
                }),
                Err(e) => json!({"authenticated": false, "error": e.to_string()}),
            }
        }
        other => return Err(ApiError::Internal(format!("{other} is not a review kind"))),
    };
    review["apiVersion"] = json!(ctx.rt.api_version());
    review["kind"] = json!(ctx.rt.kind);
    let meta = review
        .as_object_mut()
        .map(|o| o.entry("metadata").or_insert_with(|| json!({})).clone());
    let mut meta = meta.unwrap_or_else(|| json!({}));
    meta["creationTimestamp"] = Value::Null;
    if ctx.rt.namespaced {
        meta["namespace"] = json!(ctx.namespace.clone().unwrap_or_default());
    }
    review["metadata"] = meta;
    review["status"] = status;
    Ok(json_response(StatusCode::CREATED, &review))
}
