//! `DELETE`: immediate deletion, graceful deletion (pods), finalizers with
//! `deletionTimestamp`, the propagation policy, and DeleteCollection.

use axum::http::StatusCode;
use axum::response::Response;
use serde_json::{Value, json};

use super::Ctx;
use super::write::service;
use crate::codec::json_response;
use crate::object::{self, meta_mut};
use crate::selectors::{FieldSelector, LabelSelector};
use crate::status::{ApiError, Result, success_status};
use crate::storage;

/// Retries of a delete that raced with another writer.
const RETRIES: usize = 16;

/// `DeleteOptions`, from the body and the query.
#[derive(Debug, Default, Clone)]
pub(crate) struct DeleteOptions {
    pub grace_period: Option<i64>,
    pub uid: Option<String>,
    pub resource_version: Option<i64>,
    pub propagation: Option<String>,
    pub dry_run: bool,
}

impl DeleteOptions {
    fn parse(ctx: &Ctx, body: Option<Value>) -> Result<DeleteOptions> {
        let body = body.unwrap_or(Value::Null);
        if !body.is_null() && !body.is_object() {
            return Err(ApiError::BadRequest(
                "DeleteOptions must be a JSON object".to_owned(),
            ));
        }
        let mut opts = DeleteOptions {
            grace_period: body
                .get("gracePeriodSeconds")
                .and_then(Value::as_i64)
                .or(ctx.params.grace_period_seconds),
            uid: object::at_path(&body, "preconditions.uid")
                .and_then(Value::as_str)
                .map(str::to_owned),
            resource_version: object::at_path(&body, "preconditions.resourceVersion")
                .and_then(Value::as_str)
                .map(storage::parse_resource_version)
                .transpose()?,
            propagation: body
                .get("propagationPolicy")
                .and_then(Value::as_str)
                .map(str::to_owned)
                .or_else(|| ctx.params.propagation_policy.clone()),
            dry_run: ctx.params.dry_run()?,
        };
        if body.get("orphanDependents").and_then(Value::as_bool) == Some(true) {
            opts.propagation.get_or_insert_with(|| "Orphan".to_owned());
        }
        if let Some(dry) = body.get("dryRun").and_then(Value::as_array) {
            opts.dry_run |= dry.iter().any(|d| d == "All");
        }
        match opts.propagation.as_deref() {
            None | Some("Background" | "Foreground" | "Orphan") => Ok(opts),
            Some(other) => Err(ApiError::BadRequest(format!(
                "propagationPolicy {other:?} is invalid: must be Background, Foreground or Orphan"
            ))),
        }
    }
}

/// The grace period of a delete: pods get theirs (or the request's); unscheduled or finished
/// pods, and every other kind, go at once.
fn grace_period(ctx: &Ctx, obj: &Value, requested: Option<i64>) -> i64 {
    if ctx.rt.kind != "Pod" {
        return 0;
    }
    let unscheduled = object::at_path(obj, "spec.nodeName")
        .and_then(Value::as_str)
        .is_none_or(str::is_empty);
    let finished = matches!(
        object::at_path(obj, "status.phase").and_then(Value::as_str),
        Some("Succeeded" | "Failed")
    );
    if unscheduled || finished {
        return 0;
    }
    requested
        .or_else(|| {
            object::at_path(obj, "spec.terminationGracePeriodSeconds").and_then(Value::as_i64)
        })
        .unwrap_or(30)
        .max(0)
}

/// Deletes (or starts deleting) one object. Returns the HTTP code (200 when gone, 202 when
/// deletion is pending on a grace period or finalizers) and the object as it now is.
pub(crate) async fn delete_object(
    ctx: &Ctx,
    name: &str,
    opts: &DeleteOptions,
) -> Result<(StatusCode, Value)> {
    for _ in 0..RETRIES {
        let (current, rev) = ctx.current(name).await?;
        if let Some(uid) = &opts.uid
            && uid != object::meta_str(&current, "uid")
        {
            return Err(ApiError::Conflict(
                ctx.target(name),
                format!(
                    "Precondition failed: UID in precondition: {uid}, UID in object meta: {}",
                    object::meta_str(&current, "uid")
                ),
            ));
        }
        if let Some(rv) = opts.resource_version
            && rv != rev
        {
            return Err(ApiError::Conflict(
                ctx.target(name),
                format!(
                    "Precondition failed: ResourceVersion in precondition: {rv}, ResourceVersion in object meta: {rev}"
                ),
            ));
        }
        let grace = grace_period(ctx, &current, opts.grace_period);
        let mut finalizers = object::finalizers(&current);
        let added = match opts.propagation.as_deref() {
            Some("Orphan") => Some("orphan"),
            Some("Foreground") => Some("foregroundDeletion"),
            _ => None,
        };
        if let Some(f) = added
            && !object::is_terminating(&current)
            && !finalizers.iter().any(|x| x == f)
        {
            finalizers.push(f.to_owned());
        }
        let is_namespace = ctx.rt.kind == "Namespace";
        if opts.dry_run {
            return Ok((StatusCode::OK, current));
        }
        if finalizers.is_empty() && grace == 0 && !is_namespace {
            match ctx.state.store.delete(&ctx.key(name), Some(rev)).await {
                Ok(d) => {
                    service::release_all(ctx, &current).await;
                    let mut gone = current;
                    object::set_resource_version(&mut gone, d.revision);
                    return Ok((StatusCode::OK, gone));
                }
                Err(coxswain_store::Error::Conflict { .. }) => continue,
                Err(e) => return Err(ApiError::from_store(e, &ctx.target(name))),
            }
        }
        let mut new = current.clone();
        let existing_grace = object::at_path(&current, "metadata.deletionGracePeriodSeconds")
            .and_then(Value::as_i64);
        if object::is_terminating(&current) && existing_grace.is_none_or(|g| grace >= g) {
            // Already being deleted, and this request does not shorten the wait.
            return Ok((StatusCode::ACCEPTED, current));
        }
        let deadline = jiff::Timestamp::now()
            .checked_add(jiff::SignedDuration::from_secs(grace))
            .unwrap_or_else(|_| jiff::Timestamp::now());
        {
            let meta = meta_mut(&mut new);
            meta.insert(
                "deletionTimestamp".into(),
                json!(object::format_time(deadline)),
            );
            meta.insert("deletionGracePeriodSeconds".into(), json!(grace));
            if finalizers.is_empty() {
                meta.remove("finalizers");
            } else {
                meta.insert("finalizers".into(), json!(finalizers));
            }
        }
        if is_namespace {
            new["status"]["phase"] = json!("Terminating");
        }
        match ctx
            .state
            .store
            .update(&ctx.key(name), storage::encode(&new)?, rev)
            .await
        {
            Ok(kv) => {
                object::set_resource_version(&mut new, kv.mod_revision);
                if is_namespace {
                    crate::namespaces::spawn_cleanup(ctx.state.clone(), name.to_owned());
                }
                return Ok((StatusCode::ACCEPTED, new));
            }
            Err(coxswain_store::Error::Conflict { .. }) => continue,
            Err(e) => return Err(ApiError::from_store(e, &ctx.target(name))),
        }
    }
    Err(ApiError::Conflict(
        ctx.target(name),
        "too many concurrent updates".to_owned(),
    ))
}

/// `DELETE /.../<resource>/<name>`.
pub(crate) async fn delete(ctx: &Ctx, body: Option<Value>) -> Result<Response> {
    let name = ctx.url_name()?.to_owned();
    let opts = DeleteOptions::parse(ctx, body)?;
    let (code, obj) = delete_object(ctx, &name, &opts).await?;
    if code == StatusCode::OK && !opts.dry_run {
        let details = json!({
            "name": name,
            "group": ctx.rt.group,
            "kind": ctx.rt.plural,
            "uid": object::meta_str(&obj, "uid"),
        });
        return Ok(json_response(code, &success_status(200, Some(details))));
    }
    Ok(json_response(code, &obj))
}

/// `DELETE /.../<resource>`: deletes every object matching the selectors.
pub(crate) async fn delete_collection(ctx: &Ctx, body: Option<Value>) -> Result<Response> {
    let opts = DeleteOptions::parse(ctx, body)?;
    let labels = LabelSelector::parse(ctx.params.label_selector.as_deref().unwrap_or(""))
        .map_err(ApiError::BadRequest)?;
    let fields = FieldSelector::parse(ctx.params.field_selector.as_deref().unwrap_or(""), ctx.rt)?;
    let prefix = ctx.rt.namespace_prefix(ctx.namespace.as_deref());
    let page = ctx
        .state
        .store
        .list(&prefix, coxswain_store::ListOptions::default())
        .await
        .map_err(|e| ApiError::from_store(e, &ctx.target("")))?;
    let mut items = Vec::new();
    for kv in &page.items {
        let obj = storage::decode(kv)?;
        if !labels.matches(&obj) || !fields.matches(&obj) {
            continue;
        }
        match delete_object(ctx, object::name(&obj), &opts).await {
            Ok((_, obj)) => items.push(obj),
            Err(ApiError::NotFound(_)) => {}
            Err(e) => return Err(e),
        }
    }
    let list = json!({
        "kind": format!("{}List", ctx.rt.kind),
        "apiVersion": ctx.rt.api_version(),
        "metadata": {"resourceVersion": page.revision.to_string()},
        "items": items,
    });
    Ok(json_response(StatusCode::OK, &list))
}
