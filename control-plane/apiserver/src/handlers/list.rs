//! `GET` of a collection: label and field selectors, limit/continue pinned to one revision,
//! `resourceVersion` semantics (unset: consistent read from the store; `0`: any recent state,
//! from the watch cache; `N` with `NotOlderThan` or `Exact`), as a list or a `Table`.

use axum::http::StatusCode;
use axum::response::Response;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use coxswain_store::{ContinueToken, ListOptions};
use serde_json::{Value, json};

use super::Ctx;
use crate::codec::json_response;
use crate::selectors::{FieldSelector, LabelSelector};
use crate::status::{ApiError, Result};
use crate::storage::{self, parse_resource_version};
use crate::table::{self, IncludeObject};

/// Store page size when selectors filter the items (more are read than returned).
const FILTERED_PAGE: usize = 500;

/// The selectors of a list or watch request.
#[derive(Debug)]
pub(crate) struct Selectors {
    pub labels: LabelSelector,
    pub fields: FieldSelector,
}

impl Selectors {
    pub fn parse(ctx: &Ctx) -> Result<Selectors> {
        Ok(Selectors {
            labels: LabelSelector::parse(ctx.params.label_selector.as_deref().unwrap_or(""))
                .map_err(|e| ApiError::BadRequest(format!("unable to parse requirement: {e}")))?,
            fields: FieldSelector::parse(
                ctx.params.field_selector.as_deref().unwrap_or(""),
                ctx.rt,
            )?,
        })
    }

    pub fn matches(&self, obj: &Value) -> bool {
        self.labels.matches(obj) && self.fields.matches(obj)
    }

    fn is_empty(&self) -> bool {
        self.labels.is_empty() && self.fields.is_empty()
    }
}

fn encode_continue(token: &ContinueToken) -> String {
    let raw = json!({"v": "meta.k8s.io/v1", "rv": token.revision, "start": token.start_after});
    URL_SAFE_NO_PAD.encode(raw.to_string())
}

fn decode_continue(s: &str, prefix: &str) -> Result<ContinueToken> {
    let bad = || {
        ApiError::BadRequest(
            "the provided continue parameter is too old or malformed; start the list again without it"
                .to_owned(),
        )
    };
    let bytes = URL_SAFE_NO_PAD
        .decode(s.trim_end_matches('='))
        .map_err(|_| bad())?;
    let v: Value = serde_json::from_slice(&bytes).map_err(|_| bad())?;
    let revision = v.get("rv").and_then(Value::as_i64).ok_or_else(bad)?;
    let start_after = v.get("start").and_then(Value::as_str).ok_or_else(bad)?;
    if !start_after.starts_with(prefix) || revision < 1 {
        return Err(bad());
    }
    Ok(ContinueToken {
        revision,
        start_after: start_after.to_owned(),
    })
}

/// One page of matching objects read from the store.
struct Page {
    items: Vec<Value>,
    revision: i64,
    next: Option<ContinueToken>,
}

async fn read_store(
    ctx: &Ctx,
    selectors: &Selectors,
    at: Option<i64>,
    limit: Option<usize>,
    mut token: Option<ContinueToken>,
) -> Result<Page> {
    let prefix = ctx.rt.namespace_prefix(ctx.namespace.as_deref());
    let page_size = match limit {
        Some(l) if selectors.is_empty() => Some(l),
        Some(l) => Some(l.max(FILTERED_PAGE)),
        None => None,
    };
    let mut items = Vec::new();
    let mut revision = None;
    loop {
        let mut opts = ListOptions {
            limit: page_size,
            ..ListOptions::default()
        };
        match token.take() {
            Some(t) => opts = opts.continue_from(t),
            None => {
                if let Some(at) = at.or(revision) {
                    opts = opts.at(at);
                }
            }
        }
        let page = ctx
            .state
            .store
            .list(&prefix, opts)
            .await
            .map_err(|e| ApiError::from_store(e, &ctx.target("")))?;
        revision = Some(page.revision);
        let count = page.items.len();
        for (i, kv) in page.items.iter().enumerate() {
            let obj = storage::decode(kv)?;
            if selectors.matches(&obj) {
                items.push(obj);
            }
            if limit.is_some_and(|l| items.len() >= l) {
                let more = i + 1 < count || page.more();
                let next = more.then(|| ContinueToken {
                    revision: page.revision,
                    start_after: kv.key.clone(),
                });
                return Ok(Page {
                    items,
                    revision: page.revision,
                    next,
                });
            }
        }
        match page.continue_token {
            Some(t) => token = Some(t),
            None => {
                return Ok(Page {
                    items,
                    revision: page.revision,
                    next: None,
                });
            }
        }
    }
}

/// `GET /.../<resource>`.
pub(crate) async fn list(ctx: &Ctx) -> Result<Response> {
    let selectors = Selectors::parse(ctx)?;
    let p = &ctx.params;
    let rv = p.resource_version.as_deref().filter(|s| !s.is_empty());
    let rv_match = p
        .resource_version_match
        .as_deref()
        .filter(|s| !s.is_empty());
    if rv_match.is_some() && rv.is_none() {
        return Err(ApiError::BadRequest(
            "resourceVersionMatch is forbidden unless resourceVersion is provided".to_owned(),
        ));
    }
    if let Some(m) = rv_match
        && m != "NotOlderThan"
        && m != "Exact"
    {
        return Err(ApiError::BadRequest(format!(
            "resourceVersionMatch {m:?} is not supported: use NotOlderThan or Exact"
        )));
    }
    let continue_token = p.continue_token.as_deref().filter(|s| !s.is_empty());
    if continue_token.is_some() && rv.is_some_and(|r| r != "0") {
        return Err(ApiError::BadRequest(
            "specifying resource version is not allowed when using continue".to_owned(),
        ));
    }
    let limit = p.limit.filter(|l| *l > 0).map(|l| l as usize);
    let prefix = ctx.rt.namespace_prefix(ctx.namespace.as_deref());
    let page = if let Some(c) = continue_token {
        let token = decode_continue(c, &prefix)?;
        read_store(ctx, &selectors, None, limit, Some(token)).await?
    } else {
        match (rv, rv_match) {
            (None, _) => read_store(ctx, &selectors, None, limit, None).await?,
            (Some("0"), m) if m != Some("Exact") => {
                let cache = ctx.state.caches.get(&ctx.rt.prefix()).await?;
                let (objects, revision) = cache.snapshot(&prefix);
                let items = objects
                    .iter()
                    .filter(|o| selectors.matches(&o.value))
                    .map(|o| o.value.clone())
                    .collect();
                Page {
                    items,
                    revision,
                    next: None,
                }
            }
            (Some(rv), Some("Exact")) => {
                let at = parse_resource_version(rv)?;
                if at == 0 {
                    return Err(ApiError::BadRequest(
                        "resourceVersionMatch=Exact requires a non-zero resourceVersion".to_owned(),
                    ));
                }
                read_store(ctx, &selectors, Some(at), limit, None).await?
            }
            (Some(rv), _) => {
                let at = parse_resource_version(rv)?;
                let current = ctx
                    .state
                    .store
                    .current_revision()
                    .await
                    .map_err(|e| ApiError::from_store(e, &ctx.target("")))?;
                if at > current {
                    return Err(ApiError::Timeout(format!(
                        "Too large resource version: {at}, current: {current}"
                    )));
                }
                read_store(ctx, &selectors, None, limit, None).await?
            }
        }
    };
    let mut meta = json!({"resourceVersion": page.revision.to_string()});
    if let Some(next) = &page.next {
        meta["continue"] = json!(encode_continue(next));
    }
    if crate::codec::wants_table(&ctx.headers) {
        let include = IncludeObject::parse(p.include_object.as_deref());
        return Ok(json_response(
            StatusCode::OK,
            &table::table(ctx.rt.table, &page.items, meta, include),
        ));
    }
    Ok(json_response(
        StatusCode::OK,
        &json!({
            "kind": format!("{}List", ctx.rt.kind),
            "apiVersion": ctx.rt.api_version(),
            "metadata": meta,
            "items": page.items,
        }),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn continue_tokens_round_trip_and_are_checked() {
        let t = ContinueToken {
            revision: 7,
            start_after: "/registry/core/pods/d/a".into(),
        };
        let s = encode_continue(&t);
        assert_eq!(decode_continue(&s, "/registry/core/pods/").unwrap(), t);
        assert!(decode_continue(&s, "/registry/core/services/").is_err());
        assert!(decode_continue("garbage!", "/").is_err());
    }
}
