//! What every write shares: namespace lifecycle checks, system metadata, status/spec
//! separation, generation, Service address and port allocation, and the compare-and-swap
//! commit of an updated object.

use axum::http::StatusCode;
use serde_json::{Value, json};

use super::Ctx;
use crate::fieldmanager::{self, Writer};
use crate::object::{self, meta_mut};
use crate::registry::Subresource;
use crate::status::{ApiError, Cause, Result, Target};
use crate::{storage, validation};

/// Refuses a namespaced object in a namespace that is missing (404) or terminating (403),
/// as kube-apiserver's NamespaceLifecycle admission does; returns the namespace.
pub(crate) async fn check_namespace(ctx: &Ctx, ns: &str, name: &str) -> Result<Value> {
    let ns_type = ctx
        .state
        .registry
        .lookup("", "v1", "namespaces")
        .ok_or_else(|| ApiError::Internal("namespaces are not registered".into()))?;
    let (kv, _) = ctx
        .state
        .store
        .get(&ns_type.key(None, ns), None)
        .await
        .map_err(|e| ApiError::from_store(e, &Target::new("", "namespaces", ns)))?;
    let Some(kv) = kv else {
        return Err(ApiError::NotFound(Target::new("", "namespaces", ns)));
    };
    let ns_obj = storage::decode(&kv)?;
    if object::is_terminating(&ns_obj) {
        return Err(ApiError::Forbidden {
            target: ctx.target(name),
            message: format!(
                "{} \"{name}\" is forbidden: unable to create new content in namespace {ns} \
                 because it is being terminated",
                ctx.rt.plural
            ),
        });
    }
    Ok(ns_obj)
}

/// Stamps a new object's system metadata: uid, creation time, generation; clears what a
/// client may not set on create.
pub(crate) fn stamp_new(ctx: &Ctx, obj: &mut Value) {
    let tracks = ctx.rt.tracks_generation();
    let meta = meta_mut(obj);
    meta.insert("uid".into(), json!(uuid::Uuid::new_v4().to_string()));
    meta.insert("creationTimestamp".into(), json!(object::now_rfc3339()));
    for field in [
        "resourceVersion",
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
        "selfLink",
    ] {
        meta.remove(field);
    }
    if tracks {
        meta.insert("generation".into(), json!(1));
    } else {
        meta.remove("generation");
    }
}

/// Builds the object an update stores from the stored one and the client's: system metadata
/// comes from `old`; the main resource never changes `.status` and `/status` changes only
/// `.status`.
pub(crate) fn merge_update(ctx: &Ctx, old: &Value, new: Value) -> Value {
    let mut out = match ctx.subresource {
        Some(Subresource::Status | Subresource::Approval) => {
            let mut out = old.clone();
            match new.get("status") {
                Some(s) => out["status"] = s.clone(),
                None => {
                    if let Some(m) = out.as_object_mut() {
                        m.remove("status");
                    }
                }
            }
            out
        }
        _ => {
            let mut out = new;
            if ctx.rt.has(Subresource::Status) {
                match old.get("status") {
                    Some(s) => out["status"] = s.clone(),
                    None => {
                        if let Some(m) = out.as_object_mut() {
                            m.remove("status");
                        }
                    }
                }
            }
            out
        }
    };
    if ctx.rt.kind == "Namespace"
        && let Some(spec) = old.get("spec")
    {
        // A namespace's spec (its finalizers) changes only through /finalize.
        out["spec"] = spec.clone();
    }
    let old_meta = object::meta(old).cloned().unwrap_or_default();
    let meta = meta_mut(&mut out);
    for field in [
        "uid",
        "creationTimestamp",
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
        "namespace",
        "name",
        "generation",
    ] {
        match old_meta.get(field) {
            Some(v) => meta.insert(field.into(), v.clone()),
            None => meta.remove(field),
        };
    }
    if !meta.contains_key("managedFields")
        && let Some(mf) = old_meta.get("managedFields")
    {
        meta.insert("managedFields".into(), mf.clone());
    }
    out
}

/// Bumps `metadata.generation` when anything but metadata and status changed.
fn bump_generation(ctx: &Ctx, old: &Value, new: &mut Value) {
    if !ctx.rt.tracks_generation() {
        return;
    }
    let generation = object::at_path(old, "metadata.generation")
        .and_then(Value::as_i64)
        .unwrap_or(1);
    let changed = object::without_meta_and_status(old) != object::without_meta_and_status(new);
    meta_mut(new).insert(
        "generation".into(),
        json!(if changed { generation + 1 } else { generation }),
    );
}

/// Fails with 422 when there are causes.
pub(crate) fn invalid(ctx: &Ctx, name: &str, causes: Vec<Cause>) -> Result<()> {
    if causes.is_empty() {
        return Ok(());
    }
    Err(ApiError::Invalid {
        kind: ctx.rt.kind.to_owned(),
        target: ctx.target(name),
        causes,
    })
}

fn strip_rv(v: &Value) -> Value {
    let mut v = v.clone();
    if let Some(m) = v.get_mut("metadata").and_then(Value::as_object_mut) {
        m.remove("resourceVersion");
    }
    v
}

/// How a write records field ownership in `metadata.managedFields`.
#[derive(Debug, Clone)]
pub(crate) enum Ownership {
    /// The writer becomes the owner of what it changed (an `Update` entry): creates,
    /// updates and every patch but apply.
    Update(Writer),
    /// The managed fields are already computed (server-side apply).
    Computed,
    /// They stay as they are (a pod binding, as upstream's binding storage).
    Unchanged,
}

impl Ownership {
    /// Records `new`'s ownership over `old` (`None` on create) as this says.
    pub(crate) fn record(&self, ctx: &Ctx, old: Option<&Value>, new: &mut Value) {
        if let Ownership::Update(writer) = self {
            fieldmanager::record_update(old, new, writer, ctx.scope(), &object::now_rfc3339());
        }
    }
}

/// The outcome of one update attempt.
pub(crate) enum Commit {
    /// Written (or deleted, when the last finalizer went): status code and object.
    Done(StatusCode, Value),
    /// The stored object changed since it was read; read again and retry.
    Raced,
}

/// Validates and stores `new` over `old` (read at mod revision `old_rev`) with a
/// compare-and-swap, recording the request's writer as the owner of what it changed.
/// `new` has already been merged with [`merge_update`].
pub(crate) async fn commit_update(
    ctx: &Ctx,
    old: &Value,
    old_rev: i64,
    new: Value,
) -> Result<Commit> {
    commit_update_as(ctx, old, old_rev, new, &Ownership::Update(ctx.writer())).await
}

/// [`commit_update`] with the ownership recorded as `ownership` says.
pub(crate) async fn commit_update_as(
    ctx: &Ctx,
    old: &Value,
    old_rev: i64,
    mut new: Value,
    ownership: &Ownership,
) -> Result<Commit> {
    let rt = ctx.rt;
    let name = object::name(old).to_owned();
    (rt.defaults)(&mut new);
    ownership.record(ctx, Some(old), &mut new);
    invalid(ctx, &name, validation::validate(rt, &new, Some(old)))?;
    bump_generation(ctx, old, &mut new);
    if strip_rv(&new) == strip_rv(old) {
        // Nothing changed: no write, same resourceVersion, no watch event.
        return Ok(Commit::Done(StatusCode::OK, old.clone()));
    }
    let dry_run = ctx.params.dry_run()?;
    crate::security::resourcequota::charge(ctx, Some(old), &new, dry_run).await?;
    let allocations = if rt.kind == "Service" && ctx.subresource.is_none() && !dry_run {
        service::on_update(ctx, old, &mut new).await?
    } else {
        service::Allocations::default()
    };
    if dry_run {
        return Ok(Commit::Done(StatusCode::OK, new));
    }
    let key = ctx.key(&name);
    let finished = object::is_terminating(&new)
        && object::finalizers(&new).is_empty()
        && object::at_path(&new, "metadata.deletionGracePeriodSeconds")
            .and_then(Value::as_i64)
            .unwrap_or(0)
            == 0;
    let store = &ctx.state.store;
    if finished {
        return match store.delete(&key, Some(old_rev)).await {
            Ok(d) => {
                service::release_all(ctx, &new).await;
                object::set_resource_version(&mut new, d.revision);
                Ok(Commit::Done(StatusCode::OK, new))
            }
            Err(coxswain_store::Error::Conflict { .. }) => Ok(Commit::Raced),
            Err(e) => Err(ApiError::from_store(e, &ctx.target(&name))),
        };
    }
    match store.update(&key, storage::encode(&new)?, old_rev).await {
        Ok(kv) => {
            allocations.commit(ctx).await;
            object::set_resource_version(&mut new, kv.mod_revision);
            Ok(Commit::Done(StatusCode::OK, new))
        }
        Err(coxswain_store::Error::Conflict { .. }) => {
            allocations.rollback(ctx).await;
            Ok(Commit::Raced)
        }
        Err(e) => {
            allocations.rollback(ctx).await;
            Err(ApiError::from_store(e, &ctx.target(&name)))
        }
    }
}

/// Service address and node port bookkeeping around writes.
pub(crate) mod service {
    use serde_json::{Value, json};

    use super::Ctx;
    use crate::status::{ApiError, Cause, Result};

    /// Values claimed for a write (released if it fails) and values to release once it
    /// succeeds.
    #[derive(Debug, Default)]
    pub(crate) struct Allocations {
        claimed_ips: Vec<String>,
        claimed_ports: Vec<i64>,
        freed_ips: Vec<String>,
        freed_ports: Vec<i64>,
    }

    impl Allocations {
        /// The write failed: give back what was claimed.
        pub(crate) async fn rollback(self, ctx: &Ctx) {
            for ip in self.claimed_ips {
                ctx.state.allocator.release_ip(&ip).await;
            }
            for port in self.claimed_ports {
                ctx.state.allocator.release_port(port).await;
            }
        }

        /// The write succeeded: release what the object no longer uses.
        pub(crate) async fn commit(self, ctx: &Ctx) {
            for ip in self.freed_ips {
                ctx.state.allocator.release_ip(&ip).await;
            }
            for port in self.freed_ports {
                ctx.state.allocator.release_port(port).await;
            }
        }
    }

    fn owner(obj: &Value) -> String {
        format!(
            "{}/{}",
            crate::object::namespace(obj),
            crate::object::name(obj)
        )
    }

    fn ty(obj: &Value) -> &str {
        crate::object::at_path(obj, "spec.type")
            .and_then(Value::as_str)
            .unwrap_or("ClusterIP")
    }

    fn node_ports_wanted(obj: &Value) -> bool {
        matches!(ty(obj), "NodePort" | "LoadBalancer")
    }

    fn ips(obj: &Value) -> Vec<String> {
        let spec = obj.get("spec");
        let mut out: Vec<String> = spec
            .and_then(|s| s.get("clusterIPs"))
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .map(str::to_owned)
            .collect();
        if let Some(ip) = spec
            .and_then(|s| s.get("clusterIP"))
            .and_then(Value::as_str)
            && !out.iter().any(|x| x == ip)
        {
            out.push(ip.to_owned());
        }
        out.retain(|ip| !ip.is_empty() && ip != "None");
        out
    }

    fn node_ports(obj: &Value) -> Vec<i64> {
        crate::object::at_path(obj, "spec.ports")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|p| p.get("nodePort").and_then(Value::as_i64))
            .filter(|p| *p > 0)
            .collect()
    }

    async fn assign_ip(
        ctx: &Ctx,
        obj: &mut Value,
        allocs: &mut Allocations,
        causes: &mut Vec<Cause>,
    ) -> Result<()> {
        let owner = owner(obj);
        let spec = &mut obj["spec"];
        match spec
            .get("clusterIP")
            .and_then(Value::as_str)
            .map(str::to_owned)
        {
            Some(ip) if ip == "None" => {
                spec["clusterIPs"] = json!(["None"]);
            }
            Some(ip) if !ip.is_empty() => match ctx.state.allocator.claim_ip(&ip, &owner).await? {
                Ok(()) => {
                    allocs.claimed_ips.push(ip.clone());
                    spec["clusterIPs"] = json!([ip]);
                }
                Err(msg) => causes.push(Cause::invalid("spec.clusterIP", &ip, msg)),
            },
            _ => {
                let ip = ctx.state.allocator.allocate_ip(&owner).await?.to_string();
                allocs.claimed_ips.push(ip.clone());
                spec["clusterIP"] = json!(ip);
                spec["clusterIPs"] = json!([ip]);
            }
        }
        spec["ipFamilies"] = json!(["IPv4"]);
        if spec.get("ipFamilyPolicy").is_none_or(Value::is_null) {
            spec["ipFamilyPolicy"] = json!("SingleStack");
        }
        Ok(())
    }

    /// Allocates node ports for ports without one; `reuse` maps (port, protocol) to the node
    /// port an older version of the object had.
    async fn assign_ports(
        ctx: &Ctx,
        obj: &mut Value,
        keep: &[i64],
        reuse: &[((i64, String), i64)],
        allocs: &mut Allocations,
        causes: &mut Vec<Cause>,
    ) -> Result<()> {
        let owner = owner(obj);
        let Some(ports) = obj
            .get_mut("spec")
            .and_then(|s| s.get_mut("ports"))
            .and_then(Value::as_array_mut)
        else {
            return Ok(());
        };
        for (i, port) in ports.iter_mut().enumerate() {
            let requested = port
                .get("nodePort")
                .and_then(Value::as_i64)
                .filter(|p| *p > 0);
            match requested {
                Some(np) if keep.contains(&np) => {}
                Some(np) => match ctx.state.allocator.claim_port(np, &owner).await? {
                    Ok(()) => allocs.claimed_ports.push(np),
                    Err(msg) => causes.push(Cause::invalid(
                        format!("spec.ports[{i}].nodePort"),
                        &np.to_string(),
                        msg,
                    )),
                },
                None => {
                    let id = (
                        port.get("port").and_then(Value::as_i64).unwrap_or(0),
                        port.get("protocol")
                            .and_then(Value::as_str)
                            .unwrap_or("TCP")
                            .to_owned(),
                    );
                    let np = match reuse.iter().find(|(k, _)| *k == id) {
                        Some((_, np)) => *np,
                        None => {
                            let np = i64::from(ctx.state.allocator.allocate_port(&owner).await?);
                            allocs.claimed_ports.push(np);
                            np
                        }
                    };
                    port["nodePort"] = json!(np);
                }
            }
        }
        Ok(())
    }

    fn fail(ctx: &Ctx, obj: &Value, causes: Vec<Cause>) -> Result<()> {
        super::invalid(ctx, crate::object::name(obj), causes)
    }

    /// Claims the addresses and ports of a Service being created.
    pub(crate) async fn on_create(ctx: &Ctx, obj: &mut Value) -> Result<Allocations> {
        let mut allocs = Allocations::default();
        let mut causes = Vec::new();
        let result = async {
            if ty(obj) != "ExternalName" {
                assign_ip(ctx, obj, &mut allocs, &mut causes).await?;
            }
            if node_ports_wanted(obj) {
                assign_ports(ctx, obj, &[], &[], &mut allocs, &mut causes).await?;
            }
            Ok::<(), ApiError>(())
        }
        .await;
        if let Err(e) = result.and_then(|()| fail(ctx, obj, causes)) {
            allocs.rollback(ctx).await;
            return Err(e);
        }
        Ok(allocs)
    }

    /// Carries addresses and node ports over from the stored Service, claims new ones and
    /// notes the ones to free.
    pub(crate) async fn on_update(ctx: &Ctx, old: &Value, new: &mut Value) -> Result<Allocations> {
        let mut allocs = Allocations::default();
        let mut causes = Vec::new();
        let old_ips = ips(old);
        let old_ports = node_ports(old);
        let result = async {
            if ty(new) == "ExternalName" {
                if let Some(spec) = new.get_mut("spec").and_then(Value::as_object_mut) {
                    spec.remove("clusterIP");
                    spec.remove("clusterIPs");
                }
            } else {
                let given = crate::object::at_path(new, "spec.clusterIP")
                    .and_then(Value::as_str)
                    .unwrap_or("");
                if given.is_empty() && !old_ips.is_empty() {
                    new["spec"]["clusterIP"] = json!(old_ips[0]);
                    new["spec"]["clusterIPs"] = json!(old_ips);
                } else if given.is_empty() || !old_ips.iter().any(|ip| ip == given) {
                    assign_ip(ctx, new, &mut allocs, &mut causes).await?;
                }
            }
            if node_ports_wanted(new) {
                let reuse: Vec<((i64, String), i64)> = crate::object::at_path(old, "spec.ports")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .filter_map(|p| {
                        let np = p.get("nodePort").and_then(Value::as_i64)?;
                        let port = p.get("port").and_then(Value::as_i64)?;
                        let proto = p.get("protocol").and_then(Value::as_str).unwrap_or("TCP");
                        Some(((port, proto.to_owned()), np))
                    })
                    .collect();
                assign_ports(ctx, new, &old_ports, &reuse, &mut allocs, &mut causes).await?;
            } else if let Some(ports) = new
                .get_mut("spec")
                .and_then(|s| s.get_mut("ports"))
                .and_then(Value::as_array_mut)
            {
                for p in ports {
                    if let Some(p) = p.as_object_mut() {
                        p.remove("nodePort");
                    }
                }
            }
            Ok::<(), ApiError>(())
        }
        .await;
        if let Err(e) = result.and_then(|()| fail(ctx, new, causes)) {
            allocs.rollback(ctx).await;
            return Err(e);
        }
        let new_ips = ips(new);
        let new_ports = node_ports(new);
        allocs.freed_ips = old_ips
            .into_iter()
            .filter(|ip| !new_ips.contains(ip))
            .collect();
        allocs.freed_ports = old_ports
            .into_iter()
            .filter(|p| !new_ports.contains(p))
            .collect();
        Ok(allocs)
    }

    /// Releases everything a deleted Service held.
    pub(crate) async fn release_all(ctx: &Ctx, obj: &Value) {
        if ctx.rt.kind != "Service" {
            return;
        }
        for ip in ips(obj) {
            ctx.state.allocator.release_ip(&ip).await;
        }
        for port in node_ports(obj) {
            ctx.state.allocator.release_port(port).await;
        }
    }
}
