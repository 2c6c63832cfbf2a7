//! `GET ...?watch=true`: a stream of watch events, served from the watch cache (or from a
//! direct store watch for resourceVersions outside the cache's window), with selectors,
//! bookmarks, `sendInitialEvents`, timeouts and 410 Gone past compaction.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::{BufMut, Bytes, BytesMut};
use coxswain_store::WatchStream;
use futures::StreamExt;
use serde_json::{Value, json};
use tokio::sync::{broadcast, mpsc};
use tracing::debug;

use super::list::Selectors;
use super::{Ctx, flag};
use crate::registry::ResourceType;
use crate::status::{ApiError, Result};
use crate::storage::parse_resource_version;
use crate::table::{self, IncludeObject, TableSpec};
use crate::watch_cache::{CachedObject, WatchEvent};

/// Frames buffered between a watch task and the connection.
const FRAME_BUFFER: usize = 64;

enum Source {
    Cache(broadcast::Receiver<Arc<WatchEvent>>),
    Store(WatchStream),
}

impl Source {
    /// The next event; `None` when the source ended (or the watcher fell too far behind).
    async fn next(&mut self) -> Option<std::result::Result<Arc<WatchEvent>, ApiError>> {
        match self {
            Source::Cache(rx) => match rx.recv().await {
                Ok(ev) => Some(Ok(ev)),
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    debug!(missed = n, "closing a watcher that fell behind");
                    None
                }
                Err(broadcast::error::RecvError::Closed) => None,
            },
            Source::Store(stream) => loop {
                match stream.next().await? {
                    Ok(ev) => {
                        if let Some(ev) = WatchEvent::from_store(ev) {
                            return Some(Ok(Arc::new(ev)));
                        }
                    }
                    Err(e) => {
                        return Some(Err(ApiError::from_store(e, &Default::default())));
                    }
                }
            },
        }
    }
}

/// How events are rendered for this watcher.
struct Render {
    rt: &'static ResourceType,
    table: Option<(&'static TableSpec, IncludeObject)>,
}

impl Render {
    fn frame(&self, ty: &str, obj: &CachedObject) -> Bytes {
        match self.table {
            None => {
                let mut buf = BytesMut::with_capacity(obj.json.len() + 40);
                buf.put_slice(b"{\"type\":\"");
                buf.put_slice(ty.as_bytes());
                buf.put_slice(b"\",\"object\":");
                buf.put_slice(&obj.json);
                buf.put_slice(b"}\n");
                buf.freeze()
            }
            Some((spec, include)) => {
                let meta = json!({"resourceVersion": obj.revision.to_string()});
                let t = table::table(spec, std::slice::from_ref(&obj.value), meta, include);
                line(&json!({"type": ty, "object": t}))
            }
        }
    }

    fn bookmark(&self, revision: i64, initial_end: bool) -> Bytes {
        let mut meta = json!({"resourceVersion": revision.to_string()});
        if initial_end {
            meta["annotations"] = json!({"k8s.io/initial-events-end": "true"});
        }
        line(&json!({
            "type": "BOOKMARK",
            "object": {"kind": self.rt.kind, "apiVersion": self.rt.api_version(), "metadata": meta},
        }))
    }
}

fn line(v: &Value) -> Bytes {
    let mut out = serde_json::to_vec(v).unwrap_or_default();
    out.push(b'\n');
    Bytes::from(out)
}

/// What a watcher receives for an event, given which objects it selects: a change into the
/// selection is ADDED, out of it DELETED.
fn select(
    ev: &WatchEvent,
    matches: impl Fn(&CachedObject) -> bool,
) -> Option<(&'static str, &CachedObject)> {
    match ev {
        WatchEvent::Added(o) => matches(o).then_some(("ADDED", &**o)),
        WatchEvent::Deleted(o) => matches(o).then_some(("DELETED", &**o)),
        WatchEvent::Modified { obj, prev } => match (matches(obj), matches(prev)) {
            (true, true) => Some(("MODIFIED", &**obj)),
            (true, false) => Some(("ADDED", &**obj)),
            (false, true) => Some(("DELETED", &**obj)),
            (false, false) => None,
        },
        WatchEvent::Progress(_) => None,
    }
}

/// `GET /.../<resource>?watch=true`.
pub(crate) async fn watch(ctx: &Ctx) -> Result<Response> {
    let selectors = Selectors::parse(ctx)?;
    let p = &ctx.params;
    let prefix = ctx.rt.namespace_prefix(ctx.namespace.as_deref());
    let rv = p.resource_version.as_deref().filter(|s| !s.is_empty());
    let send_initial = flag(&p.send_initial_events);
    let bookmarks = flag(&p.allow_watch_bookmarks);
    if send_initial && !bookmarks {
        return Err(ApiError::Invalid {
            kind: "ListOptions".into(),
            target: ctx.target(""),
            causes: vec![crate::status::Cause::invalid(
                "allowWatchBookmarks",
                "false",
                "sendInitialEvents requires setting allowWatchBookmarks=true",
            )],
        });
    }
    let timeout = match p.timeout_seconds {
        Some(s) if s > 0 => Duration::from_secs(s as u64),
        _ => ctx.state.config.default_watch_timeout,
    };
    let render = Render {
        rt: ctx.rt,
        table: crate::codec::wants_table(&ctx.headers).then(|| {
            (
                ctx.rt.table,
                IncludeObject::parse(p.include_object.as_deref()),
            )
        }),
    };
    let cache = ctx.state.caches.get(&ctx.rt.prefix()).await?;
    let (initial, source, start) = match rv {
        None | Some("0") => {
            let sub = cache.subscribe_current(&prefix);
            (sub.initial, Source::Cache(sub.live), sub.revision)
        }
        Some(rv) => {
            let rv = parse_resource_version(rv)?;
            let current = ctx
                .state
                .store
                .current_revision()
                .await
                .map_err(|e| ApiError::from_store(e, &ctx.target("")))?;
            if rv > current {
                return Err(ApiError::Timeout(format!(
                    "Too large resource version: {rv}, current: {current}"
                )));
            }
            if send_initial {
                let sub = cache.subscribe_current(&prefix);
                (sub.initial, Source::Cache(sub.live), sub.revision)
            } else if let Some(sub) = cache.subscribe_after(rv) {
                (sub.initial, Source::Cache(sub.live), sub.revision.max(rv))
            } else {
                let stream = ctx
                    .state
                    .store
                    .watch(&prefix, rv)
                    .await
                    .map_err(|e| ApiError::from_store(e, &ctx.target("")))?;
                (Vec::new(), Source::Store(stream), rv)
            }
        }
    };
    let name = ctx.name.clone();
    let matches = move |o: &CachedObject| {
        o.key.starts_with(&prefix)
            && name
                .as_deref()
                .is_none_or(|n| crate::object::name(&o.value) == n)
            && selectors.matches(&o.value)
    };
    let (tx, mut rx) = mpsc::channel::<Bytes>(FRAME_BUFFER);
    let mut shutdown = ctx.state.shutdown.clone();
    let bookmark_interval = ctx.state.config.bookmark_interval;
    let guard = ctx.state.metrics.watcher(ctx.rt.group, ctx.rt.plural);
    tokio::spawn(async move {
        let _guard = guard;
        let mut source = source;
        let mut last_rev = start;
        let mut bookmarked = start;
        for ev in &initial {
            if let Some((ty, obj)) = select(ev, &matches)
                && tx.send(render.frame(ty, obj)).await.is_err()
            {
                return;
            }
        }
        if send_initial && tx.send(render.bookmark(last_rev, true)).await.is_err() {
            return;
        }
        let deadline = tokio::time::sleep(timeout);
        tokio::pin!(deadline);
        let mut ticks = tokio::time::interval(bookmark_interval);
        ticks.reset();
        loop {
            tokio::select! {
                _ = &mut deadline => break,
                _ = async { let _ = shutdown.wait_for(|s| *s).await; } => break,
                _ = tx.closed() => break,
                _ = ticks.tick(), if bookmarks => {
                    if last_rev > bookmarked && render.table.is_none() {
                        bookmarked = last_rev;
                        if tx.send(render.bookmark(last_rev, false)).await.is_err() {
                            break;
                        }
                    }
                }
                ev = source.next() => match ev {
                    Some(Ok(ev)) => {
                        if ev.revision() <= last_rev && !matches!(*ev, WatchEvent::Progress(_)) {
                            continue;
                        }
                        last_rev = last_rev.max(ev.revision());
                        if let Some((ty, obj)) = select(&ev, &matches)
                            && tx.send(render.frame(ty, obj)).await.is_err()
                        {
                            break;
                        }
                    }
                    Some(Err(e)) => {
                        let _ = tx.send(line(&json!({"type": "ERROR", "object": e.to_status()}))).await;
                        break;
                    }
                    None => break,
                },
            }
        }
    });
    let stream =
        futures::stream::poll_fn(move |cx| rx.poll_recv(cx)).map(Ok::<Bytes, std::io::Error>);
    let mut response = (StatusCode::OK, Body::from_stream(stream)).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    Ok(response)
}
