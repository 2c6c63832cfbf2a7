//! `POST`: create an object (generateName, system metadata, defaults, validation,
//! namespace lifecycle, Service allocations), and pod bindings.

use axum::http::StatusCode;
use axum::response::Response;
use bytes::Bytes;
use serde_json::{Value, json};

use super::Ctx;
use super::write::{self, Commit, Ownership, service};
use crate::codec::{self, BodyType, add_warnings, json_response};
use crate::object::{self, meta_mut};
use crate::status::{ApiError, Result, success_status};
use crate::{storage, validation};

/// Characters of generated name suffixes (no vowels, no look-alikes), as upstream.
const SUFFIX_ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
/// Attempts at a free generated name before giving up.
const GENERATE_ATTEMPTS: usize = 8;

/// Five random characters, as upstream's generated names use.
pub(crate) fn random_suffix() -> String {
    let bytes = uuid::Uuid::new_v4().into_bytes();
    bytes[..5]
        .iter()
        .map(|b| SUFFIX_ALPHABET[*b as usize % SUFFIX_ALPHABET.len()] as char)
        .collect()
}

/// Decodes a create or update body (JSON, YAML or Kubernetes protobuf; not a patch).
pub(crate) fn decode_body(ctx: &Ctx, body: &Bytes) -> Result<Value> {
    let ty = codec::body_type(&ctx.headers)?;
    if !matches!(ty, BodyType::Json | BodyType::Yaml | BodyType::Protobuf) {
        return Err(ApiError::UnsupportedMediaType(
            "a patch media type is only accepted by PATCH: use application/json, \
             application/yaml or application/vnd.kubernetes.protobuf"
                .to_owned(),
        ));
    }
    codec::decode(body, ty)
}

/// `POST /.../<resource>`.
pub(crate) async fn create(ctx: &Ctx, body: Bytes) -> Result<Response> {
    ctx.check_write_options("CreateOptions", None)?;
    let value = decode_body(ctx, &body)?;
    let (obj, warnings) = ctx.decode_object(value)?;
    let (status, obj) = create_object(ctx, obj).await?;
    let mut response = json_response(status, &obj);
    add_warnings(&mut response, &warnings);
    Ok(response)
}

/// Creates a decoded object, its writer owning what it holds: the body of `create`, also
/// used for the server's own objects.
pub(crate) async fn create_object(ctx: &Ctx, obj: Value) -> Result<(StatusCode, Value)> {
    create_object_as(ctx, obj, &Ownership::Update(ctx.writer())).await
}

/// [`create_object`] with the ownership recorded as `ownership` says (server-side apply of
/// an absent object brings its own).
pub(crate) async fn create_object_as(
    ctx: &Ctx,
    mut obj: Value,
    ownership: &Ownership,
) -> Result<(StatusCode, Value)> {
    let rt = ctx.rt;
    if rt.namespaced {
        let ns = ctx.namespace.clone().unwrap_or_default();
        let body_ns = object::namespace(&obj);
        if !body_ns.is_empty() && body_ns != ns {
            return Err(ApiError::BadRequest(
                "the namespace of the provided object does not match the namespace sent on the request"
                    .to_owned(),
            ));
        }
        meta_mut(&mut obj).insert("namespace".into(), json!(ns));
    } else {
        meta_mut(&mut obj).remove("namespace");
    }
    let generate = object::name(&obj)
        .is_empty()
        .then(|| object::meta_str(&obj, "generateName").to_owned())
        .filter(|g| !g.is_empty());
    if let Some(prefix) = &generate {
        let mut prefix = prefix.clone();
        prefix.truncate(63 - 5);
        meta_mut(&mut obj).insert("name".into(), json!(format!("{prefix}{}", random_suffix())));
    }
    let name = object::name(&obj).to_owned();
    let namespace = if rt.namespaced && !name.is_empty() {
        Some(write::check_namespace(ctx, object::namespace(&obj), &name).await?)
    } else {
        None
    };
    write::stamp_new(ctx, &mut obj);
    crate::security::resourcequota::prepare_create(ctx, &mut obj);
    (rt.defaults)(&mut obj);
    if rt.group.is_empty() && rt.kind == "Pod" {
        let ns = ctx.namespace.clone().unwrap_or_default();
        crate::security::serviceaccount::admit(ctx, &ns, &mut obj).await?;
    }
    ownership.record(ctx, None, &mut obj);
    crate::security::admission::mutate_create(ctx, &mut obj);
    let limit_ranges = crate::security::limitranger::admit(ctx, &mut obj).await?;
    write::invalid(ctx, &name, validation::validate(rt, &obj, None))?;
    crate::security::admission::admit_create(ctx, namespace.as_ref(), &obj)?;
    crate::security::limitranger::validate(ctx, &limit_ranges, &obj)?;
    let dry_run = ctx.params.dry_run()?;
    crate::security::resourcequota::charge(ctx, None, &obj, dry_run).await?;
    if dry_run {
        return Ok((StatusCode::CREATED, obj));
    }
    let allocations = if rt.kind == "Service" {
        service::on_create(ctx, &mut obj).await?
    } else {
        service::Allocations::default()
    };
    let mut attempts = 0;
    loop {
        let name = object::name(&obj).to_owned();
        let result = ctx
            .state
            .store
            .create(&ctx.key(&name), storage::encode(&obj)?)
            .await;
        match result {
            Ok(kv) => {
                object::set_resource_version(&mut obj, kv.mod_revision);
                return Ok((StatusCode::CREATED, obj));
            }
            Err(coxswain_store::Error::AlreadyExists { .. })
                if generate.is_some() && attempts < GENERATE_ATTEMPTS =>
            {
                attempts += 1;
                let mut prefix = generate.clone().unwrap_or_default();
                prefix.truncate(63 - 5);
                meta_mut(&mut obj)
                    .insert("name".into(), json!(format!("{prefix}{}", random_suffix())));
            }
            Err(e) => {
                allocations.rollback(ctx).await;
                return Err(ApiError::from_store(e, &ctx.target(&name)));
            }
        }
    }
}

/// Sets the pod's `PodScheduled` condition to `True` as upstream's `UpdatePodCondition`
/// does: the condition is replaced by one without reason or message, and its
/// `lastTransitionTime` moves to now unless it was `True` already.
fn set_scheduled(pod: &mut Value, now: &str) {
    if !pod.get("status").is_some_and(Value::is_object) {
        pod["status"] = json!({});
    }
    let status = &mut pod["status"];
    if !status.get("conditions").is_some_and(Value::is_array) {
        status["conditions"] = json!([]);
    }
    let Some(conditions) = status["conditions"].as_array_mut() else {
        return;
    };
    let existing = conditions
        .iter()
        .position(|c| c.get("type").and_then(Value::as_str) == Some("PodScheduled"));
    let mut condition = json!({
        "type": "PodScheduled",
        "status": "True",
        "lastProbeTime": null,
        "lastTransitionTime": now,
    });
    match existing {
        Some(i) => {
            let old = &conditions[i];
            if old.get("status").and_then(Value::as_str) == Some("True") {
                condition["lastTransitionTime"] =
                    old.get("lastTransitionTime").cloned().unwrap_or(Value::Null);
            }
            conditions[i] = condition;
        }
        None => conditions.push(condition),
    }
}

/// Whether the stored pod `current` (at mod revision `rev`) may be bound by a Binding
/// with these preconditions: upstream's checks and messages.
fn bindable(
    ctx: &Ctx,
    name: &str,
    current: &Value,
    rev: i64,
    want_uid: Option<&str>,
    want_rv: Option<&str>,
) -> Result<()> {
    if object::is_terminating(current) {
        return Err(ApiError::Conflict(
            ctx.target(name),
            "pod is being deleted, cannot be assigned to a host".to_owned(),
        ));
    }
    if let Some(uid) = want_uid {
        let stored = object::meta_str(current, "uid");
        if stored != uid {
            return Err(ApiError::Conflict(
                ctx.target(name),
                format!(
                    "Precondition failed: UID in precondition: {uid}, UID in object meta: {stored}"
                ),
            ));
        }
    }
    if let Some(want) = want_rv
        && want != rev.to_string()
    {
        return Err(ApiError::Conflict(
            ctx.target(name),
            format!(
                "Precondition failed: ResourceVersion in precondition: {want}, ResourceVersion in object meta: {rev}"
            ),
        ));
    }
    match object::at_path(current, "spec.nodeName").and_then(Value::as_str) {
        Some(existing) if !existing.is_empty() => {
            return Err(ApiError::Conflict(
                ctx.target(name),
                format!("pod {name} is already assigned to node \"{existing}\""),
            ));
        }
        _ => {}
    }
    if object::at_path(current, "spec.schedulingGates")
        .and_then(Value::as_array)
        .is_some_and(|g| !g.is_empty())
    {
        return Err(ApiError::Conflict(
            ctx.target(name),
            format!("pod {name} has non-empty .spec.schedulingGates"),
        ));
    }
    Ok(())
}

/// `POST /api/v1/namespaces/<ns>/pods/<name>/binding`: sets `spec.nodeName` once, with
/// the Binding's annotations and `PodScheduled=True`, as upstream's binding storage does
/// (the Binding's `metadata.uid` and `resourceVersion`, when set, are preconditions).
pub(crate) async fn binding(ctx: &Ctx, body: Bytes) -> Result<Response> {
    let binding = decode_body(ctx, &body)?;
    let name = ctx.url_name()?.to_owned();
    let want_uid = object::at_path(&binding, "metadata.uid")
        .and_then(Value::as_str)
        .filter(|u| !u.is_empty())
        .map(str::to_owned);
    let want_rv = object::at_path(&binding, "metadata.resourceVersion")
        .and_then(Value::as_str)
        .filter(|r| !r.is_empty())
        .map(str::to_owned);
    let annotations = object::at_path(&binding, "metadata.annotations")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    let node = object::at_path(&binding, "target.name")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_owned();
    if node.is_empty() {
        return Err(ApiError::Invalid {
            kind: "Binding".into(),
            target: ctx.target(&name),
            causes: vec![crate::status::Cause::required("target.name")],
        });
    }
    // The watch cache's copy is the first guess (no store read, no decode): the
    // compare-and-swap on its revision fails if the cache is behind, and any refusal
    // based on it is confirmed against the store before it is returned.
    let mut hint = ctx
        .state
        .caches
        .running(&ctx.rt.prefix())
        .and_then(|cache| cache.object(&ctx.key(&name)));
    loop {
        let from_hint = hint.is_some();
        let (current, rev) = match hint.take() {
            Some(cached) => (cached.value.clone(), cached.revision),
            None => ctx.current(&name).await?,
        };
        if let Err(e) = bindable(ctx, &name, &current, rev, want_uid.as_deref(), want_rv.as_deref()) {
            if from_hint {
                continue;
            }
            return Err(e);
        }
        let mut new = current.clone();
        new["spec"]["nodeName"] = json!(node);
        if !annotations.is_empty() {
            let meta = meta_mut(&mut new);
            if !meta.get("annotations").is_some_and(Value::is_object) {
                meta.insert("annotations".into(), json!({}));
            }
            if let Some(a) = meta.get_mut("annotations").and_then(Value::as_object_mut) {
                a.extend(annotations.clone());
            }
        }
        let bind_ctx = Ctx {
            state: ctx.state.clone(),
            rt: ctx.rt,
            namespace: ctx.namespace.clone(),
            name: ctx.name.clone(),
            subresource: None,
            params: Default::default(),
            headers: Default::default(),
            user: ctx.user.clone(),
        };
        let mut merged = write::merge_update(&bind_ctx, &current, new);
        // The main resource keeps its stored status; the binding alone may set this one.
        set_scheduled(&mut merged, &object::now_rfc3339());
        match write::commit_update_as(&bind_ctx, &current, rev, merged, &Ownership::Unchanged)
            .await?
        {
            Commit::Done(..) => {
                return Ok(json_response(
                    StatusCode::CREATED,
                    &success_status(201, None),
                ));
            }
            Commit::Raced => continue,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binding_sets_pod_scheduled_as_update_pod_condition_does() {
        let now = "2026-11-02T10:00:00Z";
        // No status at all: the condition is added.
        let mut pod = json!({"spec": {}});
        set_scheduled(&mut pod, now);
        assert_eq!(
            pod["status"]["conditions"],
            json!([{"type": "PodScheduled", "status": "True", "lastProbeTime": null, "lastTransitionTime": now}])
        );
        // Unschedulable before: replaced (reason and message go), the transition is now.
        let mut pod = json!({"status": {"conditions": [
            {"type": "Ready", "status": "False"},
            {"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
             "message": "0/1 nodes are available", "lastTransitionTime": "2026-11-01T00:00:00Z"},
        ]}});
        set_scheduled(&mut pod, now);
        let c = &pod["status"]["conditions"];
        assert_eq!(c[0], json!({"type": "Ready", "status": "False"}));
        assert_eq!(
            c[1],
            json!({"type": "PodScheduled", "status": "True", "lastProbeTime": null, "lastTransitionTime": now})
        );
        // True already: the transition time stays.
        let mut pod = json!({"status": {"conditions": [
            {"type": "PodScheduled", "status": "True", "lastTransitionTime": "2026-11-01T00:00:00Z"},
        ]}});
        set_scheduled(&mut pod, now);
        assert_eq!(pod["status"]["conditions"][0]["lastTransitionTime"], "2026-11-01T00:00:00Z");
    }

    #[test]
    fn suffixes_use_the_upstream_alphabet() {
        let s = random_suffix();
        assert_eq!(s.len(), 5);
        assert!(s.bytes().all(|b| SUFFIX_ALPHABET.contains(&b)));
    }
}
