//! The `Store` trait: the API every backend implements with identical semantics.

use async_trait::async_trait;
use bytes::Bytes;

use crate::{Deleted, KeyValue, ListOptions, ListResult, Result, Revision, WatchStream};

/// A revisioned key-value store with etcd's semantics.
///
/// # Keys
/// A key names one object: it starts with '/', does not end with '/', holds no NUL byte and is
/// at most [`crate::MAX_KEY_SIZE`] bytes. A prefix (for [`Store::list`] and [`Store::count`])
/// starts and ends with '/'. A watch target is either. Values are at most
/// [`crate::MAX_VALUE_SIZE`] bytes. Bad arguments fail with [`crate::Error::InvalidKey`],
/// [`crate::Error::ValueTooLarge`] or [`crate::Error::InvalidRevision`] and change nothing.
///
/// # Revisions
/// One counter for the whole store; each successful write bumps it by one and stamps the key
/// with it as its mod revision. Reads at an older revision see the store exactly as it was,
/// until [`Store::compact`] drops that history ([`crate::Error::Compacted`]).
#[async_trait]
pub trait Store: Send + Sync + std::fmt::Debug + 'static {
    /// Reads `key` at the latest revision (`at == None`) or at revision `at`.
    ///
    /// Returns the key-value (`None` if absent) and the revision the read was served at.
    async fn get(&self, key: &str, at: Option<Revision>) -> Result<(Option<KeyValue>, Revision)>;

    /// Lists the keys under `prefix`, in key order, at one revision.
    ///
    /// With a limit, a page that has more items carries a [`crate::ContinueToken`]; the next
    /// page is read at the first page's revision.
    async fn list(&self, prefix: &str, opts: ListOptions) -> Result<ListResult>;

    /// Counts the keys under `prefix` at the latest revision.
    async fn count(&self, prefix: &str) -> Result<i64>;

    /// Creates `key`; fails with [`crate::Error::AlreadyExists`] if it exists.
    async fn create(&self, key: &str, value: Bytes) -> Result<KeyValue>;

    /// Replaces the value of `key` if its mod revision is `expected_mod_revision`
    /// (compare-and-swap): [`crate::Error::Conflict`] on mismatch, [`crate::Error::NotFound`]
    /// if absent.
    async fn update(
        &self,
        key: &str,
        value: Bytes,
        expected_mod_revision: Revision,
    ) -> Result<KeyValue>;

    /// Deletes `key`, only if its mod revision is `expected_mod_revision` when given.
    async fn delete(&self, key: &str, expected_mod_revision: Option<Revision>) -> Result<Deleted>;

    /// Watches a key (or every key under a prefix ending in '/') for the changes with a
    /// revision greater than `from`, in revision order, each exactly once, with the previous
    /// value. `from == 0` replays all retained history.
    ///
    /// Fails with [`crate::Error::Compacted`] (at once or as the stream's item) when history
    /// after `from` is no longer complete, that is when `from` is below the compacted
    /// revision, and with [`crate::Error::FutureRevision`] when `from` is beyond the current
    /// revision. An idle watch receives [`crate::Event::Progress`] notifications.
    async fn watch(&self, key_or_prefix: &str, from: Revision) -> Result<WatchStream>;

    /// The store's current revision.
    async fn current_revision(&self) -> Result<Revision>;

    /// Drops the history older than `revision`: afterwards, reads below it and watches starting
    /// below it fail with [`crate::Error::Compacted`]. Compacting to a revision at or below
    /// the compacted one does nothing.
    async fn compact(&self, revision: Revision) -> Result<()>;
}

/// Which backend to run: what the API server's storage flags resolve to.
#[derive(Debug, Clone)]
pub enum StoreConfig {
    /// The embedded store (the default: nothing to install).
    Embedded(crate::EmbeddedConfig),
    /// An etcd cluster.
    Etcd(crate::EtcdConfig),
}

impl StoreConfig {
    /// Opens the configured backend.
    pub async fn open(self) -> Result<std::sync::Arc<dyn Store>> {
        Ok(match self {
            StoreConfig::Embedded(config) => {
                std::sync::Arc::new(crate::EmbeddedStore::open(config).await?)
            }
            StoreConfig::Etcd(config) => {
                std::sync::Arc::new(crate::EtcdStore::connect(config).await?)
            }
        })
    }
}
