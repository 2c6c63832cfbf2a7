//! `PATCH`: JSON patch, JSON merge patch, strategic merge patch and server-side apply, on an
//! object, its status or its `Scale`. Apply's merge, ownership and conflicts are
//! [`crate::fieldmanager`]'s; this file only reads, decodes and commits.

use axum::http::StatusCode;
use axum::response::Response;
use bytes::Bytes;
use serde_json::{Value, json};

use super::update::{check_precondition, precondition, set_replicas};
use super::write::{self, Commit, Ownership};
use super::{Ctx, create, scale_of};
use crate::codec::{self, BodyType, add_warnings, json_response};
use crate::fieldmanager::{self, ApplyError};
use crate::object::{self, meta_mut};
use crate::registry::Subresource;
use crate::status::{ApiError, Result};
use crate::strategic;

/// Retries of a patch that raced with another writer.
const RETRIES: usize = 16;

/// Applies a decoded patch of type `ty` to `base`.
fn apply_patch(ty: BodyType, base: &Value, patch: &Value) -> Result<Value> {
    match ty {
        BodyType::JsonPatch => {
            let ops: json_patch::Patch = serde_json::from_value(patch.clone())
                .map_err(|e| ApiError::BadRequest(format!("the JSON patch is malformed: {e}")))?;
            let mut out = base.clone();
            json_patch::patch(&mut out, &ops).map_err(|e| {
                ApiError::BadRequest(format!("the JSON patch could not be applied: {e}"))
            })?;
            Ok(out)
        }
        BodyType::MergePatch => {
            if !patch.is_object() {
                return Err(ApiError::BadRequest(
                    "a JSON merge patch must be a JSON object".to_owned(),
                ));
            }
            let mut out = base.clone();
            json_patch::merge(&mut out, patch);
            Ok(out)
        }
        BodyType::StrategicMergePatch => strategic::apply(base, patch)
            .map_err(|e| {
                ApiError::BadRequest(format!(
                    "the strategic merge patch could not be applied: {e}"
                ))
            }),
        BodyType::ApplyPatch => Err(ApiError::Internal(
            "server-side apply is not a patch of the object".to_owned(),
        )),
        BodyType::Json | BodyType::Yaml | BodyType::Protobuf => {
            Err(ApiError::UnsupportedMediaType(
                "PATCH requires application/json-patch+json, application/merge-patch+json, \
             application/strategic-merge-patch+json or application/apply-patch+yaml"
                    .to_owned(),
            ))
        }
    }
}

/// `PATCH /.../<resource>/<name>[/status|/scale]`.
pub(crate) async fn patch(ctx: &Ctx, body: Bytes) -> Result<Response> {
    let name = ctx.url_name()?.to_owned();
    let ty = codec::body_type(&ctx.headers)?;
    if matches!(ty, BodyType::Json | BodyType::Yaml | BodyType::Protobuf) {
        apply_patch(ty, &Value::Null, &Value::Null)?;
    }
    let force = ctx.params.force()?;
    ctx.check_write_options("PatchOptions", Some(ty == BodyType::ApplyPatch))?;
    let patch = codec::decode(&body, ty)?;
    if ty == BodyType::ApplyPatch {
        return server_side_apply(ctx, &name, &patch, force.unwrap_or(false)).await;
    }
    for _ in 0..RETRIES {
        let (current, rev) = ctx.current(&name).await?;
        let base = if ctx.subresource == Some(Subresource::Scale) {
            scale_of(&current)
        } else {
            current.clone()
        };
        let patched = apply_patch(ty, &base, &patch)?;
        let wanted = precondition(&patched)?;
        check_precondition(ctx, &name, wanted, rev)?;
        if ctx.subresource == Some(Subresource::Scale) {
            let replicas = object::at_path(&patched, "spec.replicas")
                .cloned()
                .unwrap_or(json!(0));
            match set_replicas(ctx, &current, rev, replicas).await? {
                Commit::Done(code, stored) => return Ok(json_response(code, &scale_of(&stored))),
                Commit::Raced => continue,
            }
        }
        let (obj, warnings) = ctx.decode_object(patched)?;
        let merged = write::merge_update(ctx, &current, obj);
        match write::commit_update(ctx, &current, rev, merged).await? {
            Commit::Done(code, stored) => {
                let mut response = json_response(code, &stored);
                add_warnings(&mut response, &warnings);
                return Ok(response);
            }
            Commit::Raced => {
                if wanted.is_some() {
                    check_precondition(ctx, &name, wanted, -1)?;
                }
            }
        }
    }
    Err(too_many_updates(ctx, &name))
}

fn too_many_updates(ctx: &Ctx, name: &str) -> ApiError {
    ApiError::Conflict(ctx.target(name), "too many concurrent updates".to_owned())
}

/// An apply's failure as the client sees it.
fn apply_error(e: ApplyError) -> ApiError {
    match e {
        ApplyError::Invalid(message) => ApiError::BadRequest(message),
        ApplyError::Conflicts(conflicts) => ApiError::ApplyConflict {
            message: fieldmanager::conflict_message(&conflicts),
            causes: conflicts
                .into_iter()
                .map(|c| (c.field, format!("conflict with {}", c.manager)))
                .collect(),
        },
    }
}

/// Checks an applied configuration and returns it as the configuration of the object: a
/// `Scale` applied to `/scale` becomes the object's `.spec.replicas`.
fn configuration(ctx: &Ctx, name: &str, applied: &Value) -> Result<Value> {
    if !applied.is_object() {
        return Err(ApiError::BadRequest(
            "an applied configuration must be an object".to_owned(),
        ));
    }
    if applied
        .pointer("/metadata/managedFields")
        .is_some_and(|v| !v.is_null())
    {
        return Err(ApiError::BadRequest(
            "metadata.managedFields must be nil".to_owned(),
        ));
    }
    let scale = ctx.subresource == Some(Subresource::Scale);
    let expected = if scale {
        "autoscaling/v1".to_owned()
    } else {
        ctx.rt.api_version()
    };
    let version = applied.get("apiVersion").and_then(Value::as_str).unwrap_or("");
    if version != expected {
        return Err(ApiError::BadRequest(format!(
            "Incorrect version specified in apply patch. Specified patch version: {version}, \
             expected: {expected}"
        )));
    }
    let mut config = if scale {
        let mut c = json!({
            "apiVersion": ctx.rt.api_version(),
            "kind": ctx.rt.kind,
            "metadata": {"name": name},
        });
        if let Some(replicas) = object::at_path(applied, "spec.replicas") {
            c["spec"] = json!({"replicas": replicas});
        }
        c
    } else {
        applied.clone()
    };
    match object::name(&config) {
        "" => {
            meta_mut(&mut config).insert("name".into(), json!(name));
        }
        n if n == name => {}
        n => {
            return Err(ApiError::BadRequest(format!(
                "the name of the object ({n}) does not match the name on the URL ({name})"
            )));
        }
    }
    Ok(config)
}

/// Server-side apply: merges the configuration into the object (creating it if absent),
/// owned by the request's field manager, refused on conflicts unless forced.
async fn server_side_apply(ctx: &Ctx, name: &str, applied: &Value, force: bool) -> Result<Response> {
    let config = configuration(ctx, name, applied)?;
    let writer = ctx.writer();
    let scope = ctx.scope();
    let wanted = precondition(&config)?;
    let respond = |code, stored: &Value, warnings: &[String]| {
        let body = if ctx.subresource == Some(Subresource::Scale) {
            scale_of(stored)
        } else {
            stored.clone()
        };
        let mut response = json_response(code, &body);
        add_warnings(&mut response, warnings);
        response
    };
    for _ in 0..RETRIES {
        let now = object::now_rfc3339();
        let (current, rev) = match ctx.current(name).await {
            Ok(found) => found,
            Err(ApiError::NotFound(_)) if ctx.subresource.is_none() => {
                let applied = fieldmanager::apply(None, &config, &writer, scope, force, &now)
                    .map_err(apply_error)?;
                let (mut obj, warnings) = ctx.decode_object(applied)?;
                fieldmanager::forget_absent(&mut obj, &writer);
                match create::create_object_as(ctx, obj, &Ownership::Computed).await {
                    Ok((_, stored)) => return Ok(respond(StatusCode::CREATED, &stored, &warnings)),
                    // Created meanwhile: apply to it.
                    Err(ApiError::AlreadyExists(_)) => continue,
                    Err(e) => return Err(e),
                }
            }
            Err(e) => return Err(e),
        };
        check_precondition(ctx, name, wanted, rev)?;
        let applied = fieldmanager::apply(Some(&current), &config, &writer, scope, force, &now)
            .map_err(apply_error)?;
        let (mut obj, warnings) = ctx.decode_object(applied)?;
        fieldmanager::forget_absent(&mut obj, &writer);
        let merged = write::merge_update(ctx, &current, obj);
        match write::commit_update_as(ctx, &current, rev, merged, &Ownership::Computed).await? {
            Commit::Done(code, stored) => return Ok(respond(code, &stored, &warnings)),
            Commit::Raced => {
                if wanted.is_some() {
                    check_precondition(ctx, name, wanted, -1)?;
                }
            }
        }
    }
    Err(too_many_updates(ctx, name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patch_types() {
        let base = json!({"metadata": {"name": "a", "labels": {"x": "1"}}, "data": {"k": "v"}});
        let merged = apply_patch(
            BodyType::MergePatch,
            &base,
            &json!({"data": {"k": null, "n": "m"}}),
        )
        .unwrap();
        assert_eq!(merged["data"], json!({"n": "m"}));
        let patched = apply_patch(
            BodyType::JsonPatch,
            &base,
            &json!([{"op": "replace", "path": "/data/k", "value": "w"}, {"op": "add", "path": "/metadata/labels/y", "value": "2"}]),
        )
        .unwrap();
        assert_eq!(patched["data"]["k"], "w");
        assert_eq!(patched["metadata"]["labels"]["y"], "2");
        assert!(
            apply_patch(
                BodyType::JsonPatch,
                &base,
                &json!([{"op": "test", "path": "/data/k", "value": "no"}])
            )
            .is_err()
        );
        assert!(apply_patch(BodyType::JsonPatch, &base, &json!({"op": "add"})).is_err());
        assert!(apply_patch(BodyType::MergePatch, &base, &json!([1])).is_err());
    }
}
