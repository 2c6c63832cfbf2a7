//! ResourceQuota admission, as upstream's plugin. Every create of a namespaced object (and
//! every update of a Service, whose type and ports change what it uses) is checked against
//! the quotas of its namespace with `coxswain_resources::quota::check`: refused with 403 and
//! upstream's message when it would exceed one (`exceeded quota: compute, requested:
//! requests.cpu=2, used: requests.cpu=1, limited: requests.cpu=2`), when it leaves unset what
//! a quota constrains (`must specify requests.cpu`), or when a quota's usage is not known yet.
//!
//! Admitting charges the object to each quota's `status.used` *before* the object is stored,
//! with a compare-and-swap on the quota's mod revision (its resourceVersion is the lock), so
//! concurrent creates can never together overshoot a quota, across API servers too: a
//! conflict re-reads the quotas not charged yet and checks again. Within one server the
//! charges of a namespace are serialized (an object no quota limits waits for nothing), so
//! only other servers (and the controller) ever conflict. What a refused or failed write leaves charged, the resourcequota controller
//! gives back when it recounts. Dry runs are checked, never charged. A new ResourceQuota
//! starts without a status: only the controller fills it.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, Weak};

use coxswain_resources::quantity;
use coxswain_resources::quota::{self, Item, Object};
use coxswain_store::ListOptions;
use k8s_openapi::api::core::v1::{Pod, ResourceQuota, Service};
use k8s_openapi::jiff::Timestamp;
use serde_json::Value;

use crate::handlers::Ctx;
use crate::object;
use crate::status::{ApiError, Result, Target};
use crate::storage;

/// Rounds of re-reading quotas after a conflicting charge before giving up.
const ATTEMPTS: usize = 32;

/// One lock per namespace: the quota checks of a namespace run one at a time in this server.
#[derive(Debug, Default)]
pub(crate) struct NamespaceLocks {
    locks: Mutex<HashMap<String, Weak<tokio::sync::Mutex<()>>>>,
}

impl NamespaceLocks {
    /// Waits for the namespace's lock.
    async fn lock(&self, namespace: &str) -> tokio::sync::OwnedMutexGuard<()> {
        let lock = {
            let mut locks = self.locks.lock().unwrap_or_else(|p| p.into_inner());
            match locks.get(namespace).and_then(Weak::upgrade) {
                Some(lock) => lock,
                None => {
                    locks.retain(|_, weak| weak.strong_count() > 0);
                    let lock = Arc::new(tokio::sync::Mutex::new(()));
                    locks.insert(namespace.to_owned(), Arc::downgrade(&lock));
                    lock
                }
            }
        };
        lock.lock_owned().await
    }
}

/// A new ResourceQuota starts without usage: clients do not get to claim any (upstream's
/// `PrepareForCreate`).
pub(crate) fn prepare_create(ctx: &Ctx, obj: &mut Value) {
    if ctx.rt.group.is_empty()
        && ctx.rt.kind == "ResourceQuota"
        && let Some(o) = obj.as_object_mut()
    {
        o.remove("status");
    }
}

/// An object typed as far as quota looks into it.
enum Typed {
    Pod(Box<Pod>),
    Service(Box<Service>),
    Other,
}

impl Typed {
    fn of(ctx: &Ctx, obj: &Value) -> Result<Typed> {
        let decode = |e: serde_json::Error| {
            ApiError::Internal(format!("failed to read the {} for quota: {e}", ctx.rt.kind))
        };
        Ok(match (ctx.rt.group, ctx.rt.plural) {
            ("", "pods") => Typed::Pod(Box::new(serde_json::from_value(obj.clone()).map_err(decode)?)),
            ("", "services") => {
                Typed::Service(Box::new(serde_json::from_value(obj.clone()).map_err(decode)?))
            }
            _ => Typed::Other,
        })
    }

    fn item<'a>(&'a self, ctx: &'a Ctx) -> Item<'a> {
        Item {
            group: ctx.rt.group,
            resource: ctx.rt.plural,
            object: match self {
                Typed::Pod(p) => Object::Pod(p),
                Typed::Service(s) => Object::Service(s),
                Typed::Other => Object::Other,
            },
        }
    }
}

/// A quota as stored: its key, mod revision, JSON and typed forms.
struct Stored {
    key: String,
    revision: i64,
    json: Value,
    typed: ResourceQuota,
}

async fn quotas(ctx: &Ctx, namespace: &str) -> Result<Vec<Stored>> {
    let rt = ctx
        .state
        .registry
        .lookup("", "v1", "resourcequotas")
        .ok_or_else(|| ApiError::Internal("resourcequotas are not registered".into()))?;
    let listed = ctx
        .state
        .store
        .list(&rt.namespace_prefix(Some(namespace)), ListOptions::default())
        .await
        .map_err(|e| ApiError::from_store(e, &Target::new("", "resourcequotas", "")))?;
    listed
        .items
        .iter()
        .map(|kv| {
            let json = storage::decode(kv)?;
            let typed = serde_json::from_value(json.clone()).map_err(|e| {
                ApiError::Internal(format!("failed to decode stored ResourceQuota {}: {e}", kv.key))
            })?;
            Ok(Stored {
                key: kv.key.clone(),
                revision: kv.mod_revision,
                json,
                typed,
            })
        })
        .collect()
}

/// Upstream's name for an object in a refusal: `pods "web"`, `deployments.apps "web"`.
fn forbidden(ctx: &Ctx, name: &str, message: String) -> ApiError {
    let resource = match ctx.rt.group {
        "" => ctx.rt.plural.to_owned(),
        g => format!("{}.{g}", ctx.rt.plural),
    };
    ApiError::Forbidden {
        target: ctx.target(name),
        message: format!("{resource} {name:?} is forbidden: {message}"),
    }
}

/// Checks `new` (replacing `old` on update) against the namespace's quotas and charges it to
/// them, unless `dry_run`. See the module documentation.
pub(crate) async fn charge(ctx: &Ctx, old: Option<&Value>, new: &Value, dry_run: bool) -> Result<()> {
    if !ctx.rt.namespaced || ctx.subresource.is_some() || ctx.rt.create_only {
        return Ok(());
    }
    // Only a Service's usage can change on update (its type and ports).
    if old.is_some() && !(ctx.rt.group.is_empty() && ctx.rt.plural == "services") {
        return Ok(());
    }
    let namespace = object::namespace(new);
    if namespace.is_empty() {
        return Ok(());
    }
    let check = |stored: &[Stored], new_item: &Item<'_>, old_item: Option<&Item<'_>>| {
        let list: Vec<ResourceQuota> = stored.iter().map(|q| q.typed.clone()).collect();
        quota::check(&list, new_item, old_item, Timestamp::now())
            .map_err(|message| forbidden(ctx, object::name(new), message))
    };
    // Most creates fall under no quota: find out without waiting for the namespace's lock.
    let stored = quotas(ctx, namespace).await?;
    if stored.is_empty() {
        return Ok(());
    }
    let typed_new = Typed::of(ctx, new)?;
    let typed_old = old.map(|o| Typed::of(ctx, o)).transpose()?;
    let new_item = typed_new.item(ctx);
    let old_item = typed_old.as_ref().map(|t| t.item(ctx));
    if dry_run || check(&stored, &new_item, old_item.as_ref())?.is_empty() {
        return Ok(());
    }
    let _serialized = ctx.state.quota_locks.lock(namespace).await;
    let mut charged: BTreeSet<String> = BTreeSet::new();
    for _ in 0..ATTEMPTS {
        let mut stored = quotas(ctx, namespace).await?;
        stored.retain(|q| !charged.contains(&q.key));
        if stored.is_empty() {
            return Ok(());
        }
        let charges = check(&stored, &new_item, old_item.as_ref())?;
        if charges.is_empty() {
            return Ok(());
        }
        let mut raced = false;
        for c in charges {
            let q = &stored[c.index];
            let mut json = q.json.clone();
            crate::defaults::child(&mut json, "status")["used"] =
                serde_json::to_value(quantity::to_api(&c.used))
                    .map_err(|e| ApiError::Internal(format!("failed to encode quota usage: {e}")))?;
            match ctx
                .state
                .store
                .update(&q.key, storage::encode(&json)?, q.revision)
                .await
            {
                Ok(_) => {
                    charged.insert(q.key.clone());
                }
                // Changed (or deleted) since it was read: read it again and check again.
                Err(coxswain_store::Error::Conflict { .. } | coxswain_store::Error::NotFound { .. }) => {
                    raced = true;
                }
                Err(e) => {
                    return Err(ApiError::from_store(
                        e,
                        &Target::new("", "resourcequotas", object::name(&q.json)),
                    ));
                }
            }
        }
        if !raced {
            return Ok(());
        }
    }
    Err(ApiError::Conflict(
        Target::new("", "resourcequotas", ""),
        "too many concurrent changes to the namespace's quotas; please try again".to_owned(),
    ))
}
