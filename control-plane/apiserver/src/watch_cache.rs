//! The watch cache: one store watch per resource, fanned out to every API watch in memory.
//!
//! Each resource's cache lists its prefix once at revision R, then follows a single store
//! watch from R. It keeps the current objects (serving `resourceVersion=0` lists and the
//! initial ADDED events of new watches) and a ring of recent events (serving watches that
//! resume from a recent resourceVersion). Live events go out on one broadcast channel, each
//! object encoded to JSON once. Watches from a resourceVersion outside the ring are served by
//! a direct store watch instead (and get 410 Gone if the store compacted past it).
//!
//! Invariant: under the cache's lock, `revision` is the revision of the last applied change
//! or progress notification, the ring holds every event with a revision in
//! `(oldest, revision]`, and a subscription taken under the lock sees every later event
//! exactly once on its receiver.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use coxswain_store::{Event, ListOptions, Store};
use futures::StreamExt;
use serde_json::Value;
use tokio::sync::{broadcast, watch};
use tokio::task::JoinHandle;
use tracing::{debug, warn};

use crate::status::{ApiError, Result};
use crate::storage;

/// How long a request waits for a cache's first list before failing.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// Pause before a failed cache lists and watches again.
const RETRY_DELAY: Duration = Duration::from_millis(500);
/// Page size of the cache's initial list.
const LIST_PAGE: usize = 1000;

/// An object as the cache holds it: the decoded value (with `resourceVersion`) and its JSON.
#[derive(Debug)]
pub struct CachedObject {
    /// The store key.
    pub key: String,
    /// The object, `metadata.resourceVersion` set.
    pub value: Value,
    /// `value` encoded once, shared by every watcher.
    pub json: Bytes,
    /// The object's `resourceVersion` (for a deleted object: the delete's revision).
    pub revision: i64,
}

impl CachedObject {
    fn new(key: String, value: Value, revision: i64) -> Arc<CachedObject> {
        let json = Bytes::from(serde_json::to_vec(&value).unwrap_or_default());
        Arc::new(CachedObject {
            key,
            value,
            json,
            revision,
        })
    }
}

/// One change as watchers see it.
#[derive(Debug)]
pub enum WatchEvent {
    /// A new object.
    Added(Arc<CachedObject>),
    /// A changed object, with its previous state (for selector transitions).
    Modified {
        /// The new state.
        obj: Arc<CachedObject>,
        /// The state before.
        prev: Arc<CachedObject>,
    },
    /// A deleted object: its last state, `resourceVersion` set to the delete's revision.
    Deleted(Arc<CachedObject>),
    /// Nothing else happened up to this revision (for bookmarks).
    Progress(i64),
}

impl WatchEvent {
    /// The event's revision.
    pub fn revision(&self) -> i64 {
        match self {
            WatchEvent::Added(o) | WatchEvent::Modified { obj: o, .. } | WatchEvent::Deleted(o) => {
                o.revision
            }
            WatchEvent::Progress(r) => *r,
        }
    }

    /// Converts a store event, decoding values. `None` for undecodable values (logged).
    pub fn from_store(event: Event) -> Option<WatchEvent> {
        let decode = |key: &str, bytes: &[u8], rev: i64| match storage::decode_at(key, bytes, rev) {
            Ok(v) => Some(CachedObject::new(key.to_owned(), v, rev)),
            Err(e) => {
                warn!(error = %e, "skipping undecodable object in a watch");
                None
            }
        };
        Some(match event {
            Event::Put { kv, prev: None } => {
                WatchEvent::Added(decode(&kv.key, &kv.value, kv.mod_revision)?)
            }
            Event::Put { kv, prev: Some(p) } => WatchEvent::Modified {
                obj: decode(&kv.key, &kv.value, kv.mod_revision)?,
                prev: decode(&p.key, &p.value, p.mod_revision)?,
            },
            Event::Delete {
                key,
                prev,
                revision,
            } => WatchEvent::Deleted(decode(&key, &prev.value, revision)?),
            Event::Progress { revision } => WatchEvent::Progress(revision),
        })
    }
}

/// A new watch's view of a cache: events to send first, then the live receiver.
#[derive(Debug)]
pub struct Subscription {
    /// Events to deliver before anything from `live`.
    pub initial: Vec<Arc<WatchEvent>>,
    /// Every event after `revision`.
    pub live: broadcast::Receiver<Arc<WatchEvent>>,
    /// The revision `initial` brings the watcher to.
    pub revision: i64,
}

#[derive(Debug)]
struct Inner {
    revision: i64,
    oldest: i64,
    objects: BTreeMap<String, Arc<CachedObject>>,
    events: VecDeque<Arc<WatchEvent>>,
    sender: broadcast::Sender<Arc<WatchEvent>>,
}

/// The cache of one resource (one store prefix).
#[derive(Debug)]
pub struct WatchCache {
    prefix: String,
    inner: Mutex<Inner>,
    ready: watch::Receiver<bool>,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl Drop for WatchCache {
    fn drop(&mut self) {
        if let Ok(mut t) = self.task.lock()
            && let Some(t) = t.take()
        {
            t.abort();
        }
    }
}

/// Tuning of the caches.
#[derive(Debug, Clone, Copy)]
pub struct CacheConfig {
    /// Events kept per resource for watches resuming from a recent resourceVersion.
    pub ring: usize,
    /// Events buffered per watcher before it counts as too slow and is closed.
    pub broadcast: usize,
}

impl WatchCache {
    fn start(store: Arc<dyn Store>, prefix: String, config: CacheConfig) -> Arc<WatchCache> {
        let (ready_tx, ready) = watch::channel(false);
        let (sender, _) = broadcast::channel(config.broadcast.max(16));
        let cache = Arc::new(WatchCache {
            prefix,
            inner: Mutex::new(Inner {
                revision: 0,
                oldest: 0,
                objects: BTreeMap::new(),
                events: VecDeque::new(),
                sender,
            }),
            ready,
            task: Mutex::new(None),
        });
        let weak = Arc::downgrade(&cache);
        let task = tokio::spawn(async move {
            let mut first = true;
            loop {
                let Some(cache) = weak.upgrade() else { return };
                let result = cache.follow(&store, config, &ready_tx, first).await;
                first = false;
                if let Err(e) = result {
                    warn!(prefix = %cache.prefix, error = %e, "watch cache restarting");
                }
                drop(cache);
                tokio::time::sleep(RETRY_DELAY).await;
            }
        });
        if let Ok(mut t) = cache.task.lock() {
            *t = Some(task);
        }
        cache
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Lists the prefix, then applies the store watch until it fails.
    async fn follow(
        &self,
        store: &Arc<dyn Store>,
        config: CacheConfig,
        ready: &watch::Sender<bool>,
        first: bool,
    ) -> Result<()> {
        let target = crate::status::Target::default();
        let mut objects = BTreeMap::new();
        let mut opts = ListOptions::default().limit(LIST_PAGE);
        let revision = loop {
            let page = store
                .list(&self.prefix, opts.clone())
                .await
                .map_err(|e| ApiError::from_store(e, &target))?;
            for kv in &page.items {
                if let Ok(v) = storage::decode(kv) {
                    objects.insert(
                        kv.key.clone(),
                        CachedObject::new(kv.key.clone(), v, kv.mod_revision),
                    );
                }
            }
            match page.continue_token {
                Some(t) => opts = ListOptions::default().limit(LIST_PAGE).continue_from(t),
                None => break page.revision,
            }
        };
        let mut stream = store
            .watch(&self.prefix, revision)
            .await
            .map_err(|e| ApiError::from_store(e, &target))?;
        {
            let mut inner = self.lock();
            inner.objects = objects;
            inner.revision = revision;
            inner.oldest = revision;
            inner.events.clear();
            if !first {
                // Watchers of the previous incarnation may have missed events: close them.
                let (sender, _) = broadcast::channel(config.broadcast.max(16));
                inner.sender = sender;
            }
        }
        let _ = ready.send(true);
        debug!(prefix = %self.prefix, revision, "watch cache ready");
        while let Some(event) = stream.next().await {
            let event = event.map_err(|e| ApiError::from_store(e, &target))?;
            let Some(event) = self.convert(event) else {
                continue;
            };
            self.apply(Arc::new(event), config.ring);
        }
        Err(ApiError::Unavailable("the store watch ended".to_owned()))
    }

    /// [`WatchEvent::from_store`], except that a modification's previous state is the
    /// object the cache already holds at that revision (decoded once, when it was new)
    /// rather than a second decode of the same bytes.
    fn convert(&self, event: Event) -> Option<WatchEvent> {
        match event {
            Event::Put { kv, prev: Some(p) } => {
                let cached = self
                    .lock()
                    .objects
                    .get(&kv.key)
                    .filter(|o| o.revision == p.mod_revision)
                    .cloned();
                let Some(prev) = cached else {
                    return WatchEvent::from_store(Event::Put { kv, prev: Some(p) });
                };
                match storage::decode_at(&kv.key, &kv.value, kv.mod_revision) {
                    Ok(v) => Some(WatchEvent::Modified {
                        obj: CachedObject::new(kv.key, v, kv.mod_revision),
                        prev,
                    }),
                    Err(e) => {
                        warn!(error = %e, "skipping undecodable object in a watch");
                        None
                    }
                }
            }
            other => WatchEvent::from_store(other),
        }
    }

    /// The current object stored at `key` as the cache last saw it, with its revision: a
    /// hint for read-modify-write handlers, whose compare-and-swap on that revision
    /// fails (and who then read the store) if the cache is behind.
    pub fn object(&self, key: &str) -> Option<Arc<CachedObject>> {
        self.lock().objects.get(key).cloned()
    }

    fn apply(&self, event: Arc<WatchEvent>, ring: usize) {
        let mut inner = self.lock();
        let revision = event.revision();
        if revision < inner.revision {
            return;
        }
        inner.revision = revision;
        match &*event {
            WatchEvent::Added(o) | WatchEvent::Modified { obj: o, .. } => {
                inner.objects.insert(o.key.clone(), o.clone());
            }
            WatchEvent::Deleted(o) => {
                inner.objects.remove(&o.key);
            }
            WatchEvent::Progress(_) => {
                let _ = inner.sender.send(event);
                return;
            }
        }
        inner.events.push_back(event.clone());
        while inner.events.len() > ring.max(1) {
            if let Some(old) = inner.events.pop_front() {
                inner.oldest = old.revision();
            }
        }
        let _ = inner.sender.send(event);
    }

    /// Waits until the cache has listed its prefix once.
    async fn wait_ready(&self) -> Result<()> {
        let mut ready = self.ready.clone();
        match tokio::time::timeout(READY_TIMEOUT, ready.wait_for(|r| *r)).await {
            Ok(Ok(_)) => Ok(()),
            _ => Err(ApiError::Unavailable(format!(
                "the watch cache of {} is not ready",
                self.prefix
            ))),
        }
    }

    /// The objects under `prefix` and the cache's revision (for `resourceVersion=0` lists).
    pub fn snapshot(&self, prefix: &str) -> (Vec<Arc<CachedObject>>, i64) {
        let inner = self.lock();
        let objects = inner
            .objects
            .range(prefix.to_owned()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(_, v)| v.clone())
            .collect();
        (objects, inner.revision)
    }

    /// A watch starting with the current objects under `prefix` as ADDED events.
    pub fn subscribe_current(&self, prefix: &str) -> Subscription {
        let inner = self.lock();
        let initial = inner
            .objects
            .range(prefix.to_owned()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(_, v)| Arc::new(WatchEvent::Added(v.clone())))
            .collect();
        Subscription {
            initial,
            live: inner.sender.subscribe(),
            revision: inner.revision,
        }
    }

    /// A watch of every event after `revision`; `None` if the ring no longer holds them all.
    ///
    /// A `revision` newer than the cache has applied (the store moved on through other
    /// resources, or this resource's events are in flight) is served from the live stream:
    /// events arrive in revision order, so the watcher skips those up to `revision` and sees
    /// every later one. The caller checks that `revision` is not beyond the store's.
    pub fn subscribe_after(&self, revision: i64) -> Option<Subscription> {
        let inner = self.lock();
        if revision < inner.oldest {
            return None;
        }
        if revision > inner.revision {
            return Some(Subscription {
                initial: Vec::new(),
                live: inner.sender.subscribe(),
                revision,
            });
        }
        let initial = inner
            .events
            .iter()
            .filter(|e| e.revision() > revision)
            .cloned()
            .collect();
        Some(Subscription {
            initial,
            live: inner.sender.subscribe(),
            revision: inner.revision,
        })
    }
}

/// Every resource's cache, started on first use.
#[derive(Debug)]
pub struct WatchCaches {
    store: Arc<dyn Store>,
    config: CacheConfig,
    caches: Mutex<HashMap<String, Arc<WatchCache>>>,
}

impl WatchCaches {
    /// No caches yet; each starts when its resource is first watched or listed at RV 0.
    pub fn new(store: Arc<dyn Store>, config: CacheConfig) -> WatchCaches {
        WatchCaches {
            store,
            config,
            caches: Mutex::new(HashMap::new()),
        }
    }

    /// The cache of the resource stored under `prefix` if it is already running and has
    /// listed once; never starts one.
    pub fn running(&self, prefix: &str) -> Option<Arc<WatchCache>> {
        let caches = self.caches.lock().unwrap_or_else(|p| p.into_inner());
        caches.get(prefix).filter(|c| *c.ready.borrow()).cloned()
    }

    /// The ready cache of the resource stored under `prefix`.
    pub async fn get(&self, prefix: &str) -> Result<Arc<WatchCache>> {
        let cache = {
            let mut caches = self.caches.lock().unwrap_or_else(|p| p.into_inner());
            caches
                .entry(prefix.to_owned())
                .or_insert_with(|| {
                    WatchCache::start(self.store.clone(), prefix.to_owned(), self.config)
                })
                .clone()
        };
        cache.wait_ready().await?;
        Ok(cache)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use coxswain_store::{EmbeddedConfig, EmbeddedStore};

    async fn store() -> (Arc<dyn Store>, tempfile::TempDir) {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = EmbeddedStore::open(EmbeddedConfig::new(dir.path().join("s.redb")))
            .await
            .expect("open store");
        (Arc::new(store), dir)
    }

    async fn put(store: &Arc<dyn Store>, key: &str, value: &str) -> i64 {
        let bytes = Bytes::from(format!("{{\"metadata\":{{\"name\":\"{value}\"}}}}"));
        match store.get(key, None).await.expect("get").0 {
            Some(kv) => {
                store
                    .update(key, bytes, kv.mod_revision)
                    .await
                    .expect("update")
                    .mod_revision
            }
            None => store.create(key, bytes).await.expect("create").mod_revision,
        }
    }

    async fn next(live: &mut broadcast::Receiver<Arc<WatchEvent>>) -> Arc<WatchEvent> {
        loop {
            let ev = tokio::time::timeout(Duration::from_secs(10), live.recv())
                .await
                .expect("an event in time")
                .expect("open channel");
            if !matches!(*ev, WatchEvent::Progress(_)) {
                return ev;
            }
        }
    }

    #[tokio::test]
    async fn serves_state_ring_and_live_events() {
        let (store, _dir) = store().await;
        let r1 = put(&store, "/registry/core/configmaps/a/one", "one").await;
        put(&store, "/registry/core/other/a/x", "x").await;
        let caches = WatchCaches::new(
            store.clone(),
            CacheConfig {
                ring: 2,
                broadcast: 64,
            },
        );
        let cache = caches
            .get("/registry/core/configmaps/")
            .await
            .expect("cache");
        let (objects, _) = cache.snapshot("/registry/core/configmaps/a/");
        assert_eq!(objects.len(), 1, "only the resource's own prefix is cached");

        let mut current = cache.subscribe_current("/registry/core/configmaps/");
        assert_eq!(current.initial.len(), 1);
        let r2 = put(&store, "/registry/core/configmaps/a/two", "two").await;
        let ev = next(&mut current.live).await;
        assert!(matches!(&*ev, WatchEvent::Added(o) if o.revision == r2));
        let r3 = put(&store, "/registry/core/configmaps/a/one", "one-b").await;
        let ev = next(&mut current.live).await;
        assert!(
            matches!(&*ev, WatchEvent::Modified { obj, prev } if obj.revision == r3 && prev.revision == r1)
        );
        // The previous state is the object the cache held, not a second decode of it.
        assert!(matches!(&*ev, WatchEvent::Modified { prev, .. } if Arc::ptr_eq(prev, &objects[0])));
        let key = "/registry/core/configmaps/a/one";
        let held = cache.object(key).expect("the cache holds the object");
        assert_eq!((held.revision, held.value["metadata"]["name"].as_str()), (r3, Some("one-b")));
        assert!(cache.object("/registry/core/configmaps/a/none").is_none());

        // The ring (capacity 2) replays what came after a recent revision...
        let replay = cache.subscribe_after(r2 - 1).expect("within the ring");
        assert_eq!(
            replay
                .initial
                .iter()
                .map(|e| e.revision())
                .collect::<Vec<_>>(),
            vec![r2, r3]
        );
        // ...and not what it dropped.
        put(&store, "/registry/core/configmaps/a/three", "three").await;
        next(&mut current.live).await;
        assert!(
            cache.subscribe_after(r1).is_none(),
            "older than the ring: the store serves it"
        );
        // A revision newer than the cache has applied is served live from that revision.
        let ahead = cache.subscribe_after(i64::MAX / 2).expect("served live");
        assert!(ahead.initial.is_empty());
    }
}
