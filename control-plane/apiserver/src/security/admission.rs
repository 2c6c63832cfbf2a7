//! Admission plugins that need more than the object itself (NamespaceLifecycle lives in
//! `handlers/write.rs`; defaulting and validation in the registry rows): NodeRestriction's
//! checks of created objects, and PodSecurity, which refuses pods that break their
//! namespace's `pod-security.kubernetes.io/enforce` level.

use coxswain_auth::podsecurity::{self, ENFORCE_LABEL, Level};
use serde_json::Value;

use crate::handlers::Ctx;
use crate::object;
use crate::status::{ApiError, Result};

/// The enforced level of a namespace (privileged when unlabelled, as upstream's default).
fn enforced_level(namespace: &Value) -> Level {
    namespace
        .pointer("/metadata/labels")
        .and_then(|l| l.get(ENFORCE_LABEL))
        .and_then(Value::as_str)
        .and_then(|v| Level::parse(v).ok())
        .unwrap_or(Level::Privileged)
}

/// Mutating admission on create: a CertificateSigningRequest records who asked for it
/// (`spec.username`, `uid`, `groups`, `extra` come from the requester, never the body).
pub(crate) fn mutate_create(ctx: &Ctx, obj: &mut Value) {
    if ctx.rt.kind == "CertificateSigningRequest"
        && let Some(user) = &ctx.user
    {
        let spec = &mut obj["spec"];
        spec["username"] = Value::from(user.name.clone());
        spec["uid"] = Value::from(user.uid.clone());
        spec["groups"] = serde_json::json!(user.groups);
        if user.extra.is_empty() {
            if let Some(o) = spec.as_object_mut() {
                o.remove("extra");
            }
        } else {
            spec["extra"] = serde_json::json!(user.extra);
        }
    }
}

/// Runs the admission plugins on an object about to be created (in `namespace`, for
/// namespaced kinds): NodeRestriction for kubelets, then PodSecurity.
pub(crate) fn admit_create(ctx: &Ctx, namespace: Option<&Value>, obj: &Value) -> Result<()> {
    if let Some(user) = &ctx.user {
        super::noderestriction::admit_create(
            user,
            ctx.rt.group,
            ctx.rt.plural,
            namespace.map(object::name),
            obj,
        )?;
    }
    if let Some(namespace) = namespace
        && ctx.rt.group.is_empty()
        && ctx.rt.kind == "Pod"
    {
        let level = enforced_level(namespace);
        let spec = obj.get("spec").cloned().unwrap_or(Value::Null);
        let findings = podsecurity::check(&spec, level);
        if !findings.is_empty() {
            let name = object::name(obj);
            return Err(ApiError::Forbidden {
                target: ctx.target(name),
                message: format!(
                    "pods {name:?} is forbidden: {}",
                    podsecurity::violation_message(level, &findings)
                ),
            });
        }
    }
    Ok(())
}
