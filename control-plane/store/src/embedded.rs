//! The embedded backend: a single-file, crash-safe store on redb, with in-process watches.

mod layout;
mod writer;

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use redb::{Database, ReadableDatabase};
use tokio::sync::{mpsc, oneshot, watch};
use tracing::info;

pub use layout::FORMAT_VERSION;
use layout::{
    INITIAL_REVISION, LIVE, LOG, META, META_COMPACTED, META_COMPACTED_PHYSICAL, META_CURRENT,
    META_FORMAT, REVISIONS, Snapshot, continue_after, db_err, meta_get,
};
use writer::{Command, WriteOp, Writer, Written};

use crate::error::BoxError;
use crate::fanout::{self, History, Hub};
use crate::{
    Deleted, Error, Event, KeyValue, ListOptions, ListResult, Result, Revision, Store, WatchStream,
    validate,
};

/// Writes waiting for the writer thread before callers wait to enqueue.
const COMMAND_QUEUE: usize = 4096;

/// How to open an [`EmbeddedStore`].
#[derive(Debug, Clone)]
pub struct EmbeddedConfig {
    /// The database file (created with its parent directories if missing).
    pub path: PathBuf,
    /// How long a watch stays silent before it gets an [`Event::Progress`]. Default 5 s.
    pub progress_interval: Duration,
    /// Fan-out buffer sizes (only tests change them, to force slow-watcher resyncs).
    tuning: Tuning,
}

#[derive(Debug, Clone, Copy)]
struct Tuning {
    broadcast_capacity: usize,
    watch_buffer: usize,
}

impl EmbeddedConfig {
    /// A configuration for the database file at `path`, with defaults otherwise.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        EmbeddedConfig {
            path: path.into(),
            progress_interval: Duration::from_secs(5),
            tuning: Tuning {
                broadcast_capacity: fanout::BROADCAST_CAPACITY,
                watch_buffer: fanout::WATCH_BUFFER,
            },
        }
    }

    /// Sets the idle time after which watches get a progress notification.
    pub fn progress_interval(mut self, interval: Duration) -> Self {
        self.progress_interval = interval;
        self
    }
}

/// The embedded store: one redb file, one writer thread, watches served from memory.
///
/// Cheap to clone (clones share the store). The file is locked while open; it is closed when
/// the last clone is dropped (open watch streams do not keep it open: they end with
/// [`Error::Unavailable`]).
#[derive(Clone)]
pub struct EmbeddedStore {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    db: Arc<Database>,
    hub: Arc<Hub>,
    commands: Mutex<Option<mpsc::Sender<Command>>>,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
    progress_interval: Duration,
    watch_buffer: usize,
    /// How far old versions have been deleted (trails the compacted revision).
    #[cfg(test)]
    physical: watch::Receiver<Revision>,
}

impl fmt::Debug for EmbeddedStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EmbeddedStore")
            .field("path", &self.inner.path)
            .finish_non_exhaustive()
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Closing the queue stops the writer after its current batch; joining it releases
        // the database so the file can be reopened at once.
        if let Ok(mut commands) = self.commands.lock() {
            commands.take();
        }
        if let Ok(mut writer) = self.writer.lock()
            && let Some(handle) = writer.take()
        {
            let _ = handle.join();
        }
    }
}

impl EmbeddedStore {
    /// Opens the store at `config.path`, creating it if missing and recovering it after a
    /// crash (redb repairs an interrupted commit on open).
    ///
    /// Fails with [`Error::UnsupportedFormat`] if the file was written by a newer storage
    /// format, and with [`Error::Open`] if it is not a store, is corrupted, or is open in
    /// another process.
    pub async fn open(config: EmbeddedConfig) -> Result<EmbeddedStore> {
        let path = config.path.clone();
        let (db, current, compacted, physical) =
            tokio::task::spawn_blocking(move || open_database(&path))
                .await
                .map_err(|e| Error::backend("open the store", e))??;
        let db = Arc::new(db);
        let hub = Arc::new(Hub::new(current, config.tuning.broadcast_capacity));
        let (physical_tx, _physical_rx) = watch::channel(physical);
        #[cfg(test)]
        let physical_rx = _physical_rx;
        let (commands, queue) = mpsc::channel(COMMAND_QUEUE);
        let writer = Writer {
            db: db.clone(),
            hub: hub.clone(),
            current,
            compacted,
            physical,
            physical_progress: physical_tx,
        };
        let handle = std::thread::Builder::new()
            .name("store-writer".into())
            .spawn(move || writer.run(queue))
            .map_err(|e| Error::Open {
                path: config.path.clone(),
                source: Box::new(e),
            })?;
        info!(path = %config.path.display(), revision = current, compacted, "opened embedded store");
        Ok(EmbeddedStore {
            inner: Arc::new(Inner {
                path: config.path,
                db,
                hub,
                commands: Mutex::new(Some(commands)),
                writer: Mutex::new(Some(handle)),
                progress_interval: config.progress_interval,
                watch_buffer: config.tuning.watch_buffer,
                #[cfg(test)]
                physical: physical_rx,
            }),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Runs `read` on a consistent snapshot, off the async threads.
    async fn read<T: Send + 'static>(
        &self,
        read: impl FnOnce(&Snapshot) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let db = self.inner.db.clone();
        tokio::task::spawn_blocking(move || {
            let snapshot = Snapshot::new(db.begin_read().map_err(db_err("begin a read"))?)?;
            read(&snapshot)
        })
        .await
        .map_err(|e| Error::backend("read the store", e))?
    }

    async fn write(&self, op: WriteOp) -> Result<Written> {
        let (reply, response) = oneshot::channel();
        let sender = self
            .inner
            .commands
            .lock()
            .ok()
            .and_then(|c| c.clone())
            .ok_or_else(stopped)?;
        sender
            .send(Command::Write { op, reply })
            .await
            .map_err(|_| stopped())?;
        response.await.map_err(|_| stopped())?
    }
}

fn stopped() -> Error {
    Error::unavailable("the embedded store's writer has stopped", None)
}

/// Opens or creates the database and checks (or initializes) its format.
///
/// Returns the database and its current, compacted and physically compacted revisions.
fn open_database(path: &Path) -> Result<(Database, Revision, Revision, Revision)> {
    let open_err = |source: BoxError| Error::Open {
        path: path.to_owned(),
        source,
    };
    if let Some(parent) = path.parent()
        && !parent.as_os_str().is_empty()
    {
        std::fs::create_dir_all(parent).map_err(|e| open_err(Box::new(e)))?;
    }
    let db = Database::create(path).map_err(|e| open_err(Box::new(e)))?;
    let txn = db.begin_write().map_err(|e| open_err(Box::new(e)))?;
    let has_tables = txn
        .list_tables()
        .map_err(|e| open_err(Box::new(e)))?
        .next()
        .is_some();
    let heads = {
        let mut meta = txn.open_table(META).map_err(|e| open_err(Box::new(e)))?;
        let found = meta_get(&meta, META_FORMAT)?;
        match found {
            0 if has_tables => {
                return Err(open_err(
                    "the file is a redb database but not a coxswain store (no format version)"
                        .into(),
                ));
            }
            0 => {
                for (name, value) in [
                    (META_FORMAT, FORMAT_VERSION),
                    (META_CURRENT, INITIAL_REVISION),
                    (META_COMPACTED, 0),
                    (META_COMPACTED_PHYSICAL, 0),
                ] {
                    meta.insert(name, value)
                        .map_err(|e| open_err(Box::new(e)))?;
                }
            }
            FORMAT_VERSION => {}
            newer if newer > FORMAT_VERSION => {
                return Err(Error::UnsupportedFormat {
                    path: path.to_owned(),
                    found: newer,
                    supported: FORMAT_VERSION,
                });
            }
            // Older layouts would be migrated here, inside this transaction. Version 1 is the
            // first, so any other value is damage.
            other => {
                return Err(open_err(
                    format!("unknown store format version {other}").into(),
                ));
            }
        }
        (
            meta_get(&meta, META_CURRENT)?,
            meta_get(&meta, META_COMPACTED)?,
            meta_get(&meta, META_COMPACTED_PHYSICAL)?,
        )
    };
    // Create the other tables so that read transactions always find them.
    txn.open_table(REVISIONS)
        .map_err(|e| open_err(Box::new(e)))?;
    txn.open_table(LIVE).map_err(|e| open_err(Box::new(e)))?;
    txn.open_table(LOG).map_err(|e| open_err(Box::new(e)))?;
    txn.commit().map_err(|e| open_err(Box::new(e)))?;
    Ok((db, heads.0, heads.1, heads.2))
}

/// Catch-up reads for watches, holding the database weakly.
struct DbHistory {
    db: Weak<Database>,
}

impl History for DbHistory {
    fn read(
        &self,
        target: &str,
        after: Revision,
        max_scan: i64,
    ) -> Result<(Vec<Event>, Revision, Revision)> {
        let db = self
            .db
            .upgrade()
            .ok_or_else(|| Error::unavailable("the embedded store was closed", None))?;
        let snapshot = Snapshot::new(db.begin_read().map_err(db_err("begin a read"))?)?;
        let (events, scanned) = snapshot.history(target, after, max_scan)?;
        Ok((events, scanned, snapshot.heads.current))
    }
}

#[async_trait]
impl Store for EmbeddedStore {
    async fn get(&self, key: &str, at: Option<Revision>) -> Result<(Option<KeyValue>, Revision)> {
        validate::key(key)?;
        if let Some(at) = at {
            validate::revision(at)?;
        }
        let key = key.to_owned();
        self.read(move |snapshot| {
            let kv = snapshot.get(&key, at)?;
            Ok((kv, at.unwrap_or(snapshot.heads.current)))
        })
        .await
    }

    async fn list(&self, prefix: &str, opts: ListOptions) -> Result<ListResult> {
        validate::prefix(prefix)?;
        let (at, start_after) = match opts.continue_token {
            Some(token) => {
                validate::revision(token.revision)?;
                if !token.start_after.starts_with(prefix) {
                    return Err(Error::InvalidContinue {
                        prefix: prefix.to_owned(),
                        reason: "it continues a list of another prefix",
                    });
                }
                (Some(token.revision), Some(token.start_after))
            }
            None => {
                if let Some(at) = opts.revision {
                    validate::revision(at)?;
                }
                (opts.revision, None)
            }
        };
        let limit = opts.limit.filter(|&l| l > 0);
        let prefix = prefix.to_owned();
        self.read(move |snapshot| {
            let at = at.unwrap_or(snapshot.heads.current);
            let (items, more) = snapshot.list(&prefix, at, start_after.as_deref(), limit)?;
            let continue_token = continue_after(&items, more, at);
            Ok(ListResult {
                items,
                revision: at,
                continue_token,
            })
        })
        .await
    }

    async fn count(&self, prefix: &str) -> Result<i64> {
        validate::prefix(prefix)?;
        let prefix = prefix.to_owned();
        self.read(move |snapshot| snapshot.count(&prefix)).await
    }

    async fn create(&self, key: &str, value: Bytes) -> Result<KeyValue> {
        validate::key(key)?;
        validate::value(key, &value)?;
        match self
            .write(WriteOp::Create {
                key: key.to_owned(),
                value,
            })
            .await?
        {
            Written::Put(kv) => Ok(kv),
            Written::Deleted(_) => Err(Error::backend("create a key", "writer answered a delete")),
        }
    }

    async fn update(
        &self,
        key: &str,
        value: Bytes,
        expected_mod_revision: Revision,
    ) -> Result<KeyValue> {
        validate::key(key)?;
        validate::value(key, &value)?;
        validate::revision(expected_mod_revision)?;
        match self
            .write(WriteOp::Update {
                key: key.to_owned(),
                value,
                expected: expected_mod_revision,
            })
            .await?
        {
            Written::Put(kv) => Ok(kv),
            Written::Deleted(_) => Err(Error::backend("update a key", "writer answered a delete")),
        }
    }

    async fn delete(&self, key: &str, expected_mod_revision: Option<Revision>) -> Result<Deleted> {
        validate::key(key)?;
        if let Some(expected) = expected_mod_revision {
            validate::revision(expected)?;
        }
        match self
            .write(WriteOp::Delete {
                key: key.to_owned(),
                expected: expected_mod_revision,
            })
            .await?
        {
            Written::Deleted(deleted) => Ok(deleted),
            Written::Put(_) => Err(Error::backend("delete a key", "writer answered a put")),
        }
    }

    async fn watch(&self, key_or_prefix: &str, from: Revision) -> Result<WatchStream> {
        validate::key_or_prefix(key_or_prefix)?;
        validate::watch_start(from)?;
        let heads = self.read(|snapshot| Ok(snapshot.heads)).await?;
        if from > heads.current {
            return Err(Error::FutureRevision {
                requested: from,
                current: heads.current,
            });
        }
        if from < heads.compacted {
            return Err(Error::Compacted {
                requested: from,
                compacted: heads.compacted,
            });
        }
        Ok(fanout::spawn_watch(
            Arc::downgrade(&self.inner.hub),
            Arc::new(DbHistory {
                db: Arc::downgrade(&self.inner.db),
            }),
            key_or_prefix.to_owned(),
            from,
            self.inner.progress_interval,
            self.inner.watch_buffer,
        ))
    }

    async fn current_revision(&self) -> Result<Revision> {
        self.read(|snapshot| Ok(snapshot.heads.current)).await
    }

    async fn compact(&self, revision: Revision) -> Result<()> {
        validate::revision(revision)?;
        let (reply, response) = oneshot::channel();
        let sender = self
            .inner
            .commands
            .lock()
            .ok()
            .and_then(|c| c.clone())
            .ok_or_else(stopped)?;
        sender
            .send(Command::Compact { revision, reply })
            .await
            .map_err(|_| stopped())?;
        response.await.map_err(|_| stopped())?
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use futures::StreamExt;
    use redb::{ReadableDatabase, ReadableTableMetadata};

    use super::*;

    const GUARD: Duration = Duration::from_secs(10);

    fn b(s: &str) -> Bytes {
        Bytes::copy_from_slice(s.as_bytes())
    }

    async fn open(dir: &tempfile::TempDir) -> EmbeddedStore {
        EmbeddedStore::open(EmbeddedConfig::new(dir.path().join("store.redb")))
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn lagging_watcher_resyncs_from_history() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = EmbeddedConfig::new(dir.path().join("store.redb"));
        // A tiny fan-out: the watcher lags after a few unconsumed writes and must replay the
        // rest from the database.
        config.tuning = Tuning {
            broadcast_capacity: 2,
            watch_buffer: 1,
        };
        let store = EmbeddedStore::open(config).await.unwrap();
        let start = store.current_revision().await.unwrap();
        let mut watch = store.watch("/lag/", start).await.unwrap();
        let mut revisions = Vec::new();
        for i in 0..50 {
            let key = format!("/lag/{i:02}");
            revisions.push(store.create(&key, b("v")).await.unwrap().mod_revision);
            // Unrelated writes must not disturb the watcher either.
            store.create(&format!("/other/{i}"), b("v")).await.unwrap();
        }
        let mut seen = Vec::new();
        while seen.len() < revisions.len() {
            let event = tokio::time::timeout(GUARD, watch.next())
                .await
                .expect("watch stalled")
                .expect("watch ended")
                .expect("watch failed");
            if let Event::Put { kv, prev: None } = event {
                seen.push(kv.mod_revision);
            } else if !matches!(event, Event::Progress { .. }) {
                panic!("unexpected event {event:?}");
            }
        }
        assert_eq!(seen, revisions);
    }

    #[tokio::test]
    async fn compaction_deletes_unreachable_versions() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir).await;
        let a = store.create("/c/a", b("1")).await.unwrap();
        let a = store.update("/c/a", b("2"), a.mod_revision).await.unwrap();
        let a = store.update("/c/a", b("3"), a.mod_revision).await.unwrap();
        let gone = store.create("/c/gone", b("x")).await.unwrap();
        let deleted = store.delete("/c/gone", None).await.unwrap();
        let after = store.update("/c/a", b("4"), a.mod_revision).await.unwrap();
        store.compact(deleted.revision).await.unwrap();
        let mut physical = store.inner.physical.clone();
        tokio::time::timeout(GUARD, physical.wait_for(|&p| p >= deleted.revision))
            .await
            .expect("physical compaction stalled")
            .unwrap();

        let txn = store.inner.db.begin_read().unwrap();
        let revisions = txn.open_table(REVISIONS).unwrap();
        let mut kept: Vec<(String, i64)> = Vec::new();
        for entry in revisions.range::<(&str, i64)>(..).unwrap() {
            let (k, _) = entry.unwrap();
            let (key, rev) = k.value();
            kept.push((key.to_owned(), rev));
        }
        // /c/a keeps its version at the compacted revision (3) and the newer one (4); the
        // deleted key leaves nothing behind.
        assert_eq!(
            kept,
            vec![
                ("/c/a".to_owned(), a.mod_revision),
                ("/c/a".to_owned(), after.mod_revision)
            ]
        );
        let log = txn.open_table(LOG).unwrap();
        assert_eq!(
            log.len().unwrap(),
            1,
            "only the log entry after the compaction remains"
        );
        drop((log, revisions, txn));

        // Reads at and after the compacted revision are unchanged.
        let (at, _) = store.get("/c/a", Some(deleted.revision)).await.unwrap();
        assert_eq!(at.unwrap().value, b("3"));
        assert_eq!(
            store
                .get("/c/gone", Some(gone.mod_revision + 1))
                .await
                .unwrap()
                .0,
            None
        );
        assert!(matches!(
            store.get("/c/gone", Some(gone.mod_revision)).await,
            Err(Error::Compacted { .. })
        ));
    }

    #[tokio::test]
    async fn refuses_a_newer_format() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.redb");
        drop(open(&dir).await);
        {
            let db = Database::create(&path).unwrap();
            let txn = db.begin_write().unwrap();
            txn.open_table(META)
                .unwrap()
                .insert(META_FORMAT, FORMAT_VERSION + 1)
                .unwrap();
            txn.commit().unwrap();
        }
        let err = EmbeddedStore::open(EmbeddedConfig::new(&path))
            .await
            .unwrap_err();
        assert!(
            matches!(err, Error::UnsupportedFormat { found, supported: FORMAT_VERSION, .. } if found == FORMAT_VERSION + 1),
            "{err}"
        );
        assert!(err.to_string().contains("newer than the supported version"));
    }

    #[tokio::test]
    async fn refuses_foreign_and_locked_files() {
        let dir = tempfile::tempdir().unwrap();
        let junk = dir.path().join("junk");
        std::fs::write(&junk, vec![0x42; 8192]).unwrap();
        let err = EmbeddedStore::open(EmbeddedConfig::new(&junk))
            .await
            .unwrap_err();
        assert!(matches!(err, Error::Open { .. }), "{err}");

        let foreign = dir.path().join("foreign.redb");
        {
            let db = Database::create(&foreign).unwrap();
            let txn = db.begin_write().unwrap();
            let table: redb::TableDefinition<&str, &str> = redb::TableDefinition::new("x");
            txn.open_table(table).unwrap().insert("k", "v").unwrap();
            txn.commit().unwrap();
        }
        let err = EmbeddedStore::open(EmbeddedConfig::new(&foreign))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("not a coxswain store"), "{err}");

        let store = open(&dir).await;
        let err = EmbeddedStore::open(EmbeddedConfig::new(store.path()))
            .await
            .unwrap_err();
        assert!(matches!(err, Error::Open { .. }), "{err}");
    }

    #[tokio::test]
    async fn reopens_with_data_and_history() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir).await;
        let a = store.create("/r/a", b("1")).await.unwrap();
        let a2 = store.update("/r/a", b("2"), a.mod_revision).await.unwrap();
        store.compact(a.mod_revision).await.unwrap();
        drop(store);

        let store = open(&dir).await;
        assert_eq!(store.current_revision().await.unwrap(), a2.mod_revision);
        assert_eq!(store.get("/r/a", None).await.unwrap().0, Some(a2.clone()));
        assert_eq!(
            store
                .get("/r/a", Some(a.mod_revision))
                .await
                .unwrap()
                .0
                .unwrap()
                .value,
            b("1")
        );
        assert!(matches!(
            store.get("/r/a", Some(a.mod_revision - 1)).await,
            Err(Error::Compacted { compacted, .. }) if compacted == a.mod_revision
        ));
        let b1 = store.create("/r/b", b("1")).await.unwrap();
        assert_eq!(b1.mod_revision, a2.mod_revision + 1);
    }
}
