//! `PUT`: replace an object, its status, or its `Scale`, with optimistic concurrency on
//! `metadata.resourceVersion`.

use axum::response::Response;
use bytes::Bytes;
use serde_json::{Value, json};

use super::write::{self, Commit, Ownership};
use super::{Ctx, scale_of};
use crate::codec::{add_warnings, json_response};
use crate::object;
use crate::registry::Subresource;
use crate::status::{ApiError, Result};
use crate::storage::parse_resource_version;

/// Retries of an update that raced with another writer (only without a client precondition).
const RETRIES: usize = 16;

/// The `resourceVersion` a client's object carries, if any.
pub(crate) fn precondition(obj: &Value) -> Result<Option<i64>> {
    match object::meta_str(obj, "resourceVersion") {
        "" => Ok(None),
        rv => parse_resource_version(rv).map(Some),
    }
}

/// 409 Conflict when the object changed since the client read it.
pub(crate) fn check_precondition(
    ctx: &Ctx,
    name: &str,
    wanted: Option<i64>,
    rev: i64,
) -> Result<()> {
    match wanted {
        Some(rv) if rv != rev => Err(ApiError::Conflict(
            ctx.target(name),
            "the object has been modified; please apply your changes to the latest version and try again"
                .to_owned(),
        )),
        _ => Ok(()),
    }
}

/// `PUT /.../<resource>/<name>[/status|/scale]`.
pub(crate) async fn update(ctx: &Ctx, body: Bytes) -> Result<Response> {
    let name = ctx.url_name()?.to_owned();
    ctx.check_write_options("UpdateOptions", None)?;
    let value = super::create::decode_body(ctx, &body)?;
    if ctx.subresource == Some(Subresource::Scale) {
        return update_scale(ctx, &name, value).await;
    }
    let (obj, warnings) = ctx.decode_object(value)?;
    match object::name(&obj) {
        "" => {}
        n if n == name => {}
        n => {
            return Err(ApiError::BadRequest(format!(
                "the name of the object ({n}) does not match the name on the URL ({name})"
            )));
        }
    }
    if ctx.rt.namespaced {
        let ns = object::namespace(&obj);
        if !ns.is_empty() && Some(ns) != ctx.namespace.as_deref() {
            return Err(ApiError::BadRequest(
                "the namespace of the provided object does not match the namespace sent on the request"
                    .to_owned(),
            ));
        }
    }
    let wanted = precondition(&obj)?;
    for _ in 0..RETRIES {
        let (current, rev) = ctx.current(&name).await?;
        check_precondition(ctx, &name, wanted, rev)?;
        let merged = write::merge_update(ctx, &current, obj.clone());
        if let Commit::Done(code, stored) = write::commit_update(ctx, &current, rev, merged).await?
        {
            let mut response = json_response(code, &stored);
            add_warnings(&mut response, &warnings);
            return Ok(response);
        }
        if wanted.is_some() {
            check_precondition(ctx, &name, wanted, -1)?;
        }
    }
    Err(ApiError::Conflict(
        ctx.target(&name),
        "too many concurrent updates".to_owned(),
    ))
}

async fn update_scale(ctx: &Ctx, name: &str, scale: Value) -> Result<Response> {
    let wanted = precondition(&scale)?;
    let replicas = object::at_path(&scale, "spec.replicas")
        .cloned()
        .unwrap_or(json!(0));
    for _ in 0..RETRIES {
        let (current, rev) = ctx.current(name).await?;
        check_precondition(ctx, name, wanted, rev)?;
        let (code, stored) = match set_replicas(ctx, &current, rev, replicas.clone()).await? {
            Commit::Done(code, stored) => (code, stored),
            Commit::Raced => continue,
        };
        return Ok(json_response(code, &scale_of(&stored)));
    }
    Err(ApiError::Conflict(
        ctx.target(name),
        "too many concurrent updates".to_owned(),
    ))
}

/// Writes a new `spec.replicas` (a `Scale` update), owned by the request's writer with
/// subresource `scale`.
pub(crate) async fn set_replicas(
    ctx: &Ctx,
    current: &Value,
    rev: i64,
    replicas: Value,
) -> Result<Commit> {
    let writer = ctx.writer();
    if replicas.as_i64().is_none_or(|r| r < 0) {
        return Err(ApiError::Invalid {
            kind: "Scale".into(),
            target: ctx.target(object::name(current)),
            causes: vec![crate::status::Cause::invalid_value(
                "spec.replicas",
                &replicas,
                "must be greater than or equal to 0",
            )],
        });
    }
    let mut new = current.clone();
    new["spec"]["replicas"] = replicas;
    let main = Ctx {
        state: ctx.state.clone(),
        rt: ctx.rt,
        namespace: ctx.namespace.clone(),
        name: ctx.name.clone(),
        subresource: None,
        params: Default::default(),
        headers: Default::default(),
        user: ctx.user.clone(),
    };
    let merged = write::merge_update(&main, current, new);
    write::commit_update_as(&main, current, rev, merged, &Ownership::Update(writer)).await
}
