//! `PATCH`: JSON patch, JSON merge patch, strategic merge patch and server-side apply, on an
//! object, its status or its `Scale`.

use axum::http::StatusCode;
use axum::response::Response;
use bytes::Bytes;
use serde_json::{Value, json};

use super::update::{check_precondition, precondition, set_replicas};
use super::write::{self, Commit};
use super::{Ctx, scale_of};
use crate::codec::{self, BodyType, add_warnings, json_response};
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
        BodyType::StrategicMergePatch | BodyType::ApplyPatch => strategic::apply(base, patch)
            .map_err(|e| {
                ApiError::BadRequest(format!(
                    "the strategic merge patch could not be applied: {e}"
                ))
            }),
        BodyType::Json | BodyType::Yaml | BodyType::Protobuf => {
            Err(ApiError::UnsupportedMediaType(
                "PATCH requires application/json-patch+json, application/merge-patch+json, \
             application/strategic-merge-patch+json or application/apply-patch+yaml"
                    .to_owned(),
            ))
        }
    }
}

/// Records (or refreshes) the `managedFields` entry of an apply by `manager`. An apply
/// that changes nothing (same object as `previous`, same fields owned) keeps the entry as
/// it was, timestamp included, so that it is a no-op: no write, the same resourceVersion,
/// no watch event, as upstream.
fn record_apply(
    obj: &mut Value,
    manager: &str,
    api_version: &str,
    applied: &Value,
    previous: Option<&Value>,
) {
    let fields = strategic::fields_v1(applied);
    let is_ours = |e: &Value| e["manager"] == manager && e["operation"] == "Apply";
    let mut entries: Vec<Value> = obj
        .pointer("/metadata/managedFields")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let same_object = previous.is_some_and(|p| without_managed_fields(p) == without_managed_fields(obj));
    let kept_time = entries
        .iter()
        .find(|e| is_ours(e) && e["apiVersion"] == api_version && e["fieldsV1"] == fields)
        .filter(|_| same_object)
        .map(|e| e["time"].clone());
    let entry = json!({
        "manager": manager,
        "operation": "Apply",
        "apiVersion": api_version,
        "time": kept_time.unwrap_or_else(|| json!(object::now_rfc3339())),
        "fieldsType": "FieldsV1",
        "fieldsV1": fields,
    });
    match entries.iter().position(is_ours) {
        Some(i) => entries[i] = entry,
        None => entries.push(entry),
    }
    meta_mut(obj).insert("managedFields".into(), Value::Array(entries));
}

/// The object without `metadata.managedFields` and `metadata.resourceVersion`.
fn without_managed_fields(obj: &Value) -> Value {
    let mut copy = obj.clone();
    if let Some(meta) = copy.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.remove("managedFields");
        meta.remove("resourceVersion");
    }
    copy
}

/// `PATCH /.../<resource>/<name>[/status|/scale]`.
pub(crate) async fn patch(ctx: &Ctx, body: Bytes) -> Result<Response> {
    let name = ctx.url_name()?.to_owned();
    let ty = codec::body_type(&ctx.headers)?;
    if matches!(ty, BodyType::Json | BodyType::Yaml | BodyType::Protobuf) {
        apply_patch(ty, &Value::Null, &Value::Null)?;
    }
    let patch = codec::decode(&body, ty)?;
    let manager = ctx.params.field_manager.clone().unwrap_or_default();
    if ty == BodyType::ApplyPatch {
        if manager.is_empty() {
            return Err(ApiError::BadRequest(
                "PATCH with apply requires the fieldManager parameter".to_owned(),
            ));
        }
        if !patch.is_object() {
            return Err(ApiError::BadRequest(
                "an applied configuration must be an object".to_owned(),
            ));
        }
    }
    for _ in 0..RETRIES {
        let (current, rev) = match ctx.current(&name).await {
            Ok(found) => found,
            Err(ApiError::NotFound(_))
                if ty == BodyType::ApplyPatch && ctx.subresource.is_none() =>
            {
                return apply_create(ctx, &name, &patch, &manager).await;
            }
            Err(e) => return Err(e),
        };
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
        let mut merged = write::merge_update(ctx, &current, obj);
        if ty == BodyType::ApplyPatch {
            record_apply(&mut merged, &manager, &ctx.rt.api_version(), &patch, Some(&current));
        }
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
    Err(ApiError::Conflict(
        ctx.target(&name),
        "too many concurrent updates".to_owned(),
    ))
}

/// Server-side apply of an object that does not exist yet: creates it.
async fn apply_create(ctx: &Ctx, name: &str, applied: &Value, manager: &str) -> Result<Response> {
    let mut obj = applied.clone();
    match object::name(&obj) {
        "" => {
            meta_mut(&mut obj).insert("name".into(), json!(name));
        }
        n if n == name => {}
        n => {
            return Err(ApiError::BadRequest(format!(
                "the name of the object ({n}) does not match the name on the URL ({name})"
            )));
        }
    }
    let (mut obj, warnings) = ctx.decode_object(obj)?;
    record_apply(&mut obj, manager, &ctx.rt.api_version(), applied, None);
    let (_, stored) = super::create::create_object(ctx, obj).await?;
    let mut response = json_response(StatusCode::CREATED, &stored);
    add_warnings(&mut response, &warnings);
    Ok(response)
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
