//! The etcd backend: the same semantics on a real etcd 3.4+ cluster, under a key prefix.

mod members;
mod watch;

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use etcd_client::{
    CompactionOptions, Compare, CompareOp, DeleteOptions, GetOptions, PutOptions, Txn, TxnOp,
    TxnOpResponse,
};
use tracing::info;

use members::{CallError, Kind, Members, is_out_of_range};

use crate::validate::{self, prefix_end};
use crate::{
    ContinueToken, Deleted, Error, KeyValue, ListOptions, ListResult, Result, Revision, Store,
    WatchStream,
};

/// The default key prefix in etcd, kube-apiserver's `--etcd-prefix`.
pub const DEFAULT_ETCD_PREFIX: &str = "/registry/";

/// How to reach etcd.
///
/// Progress notifications on watches are etcd's own: their interval is the server's
/// `--experimental-watch-progress-notify-interval` (etcd's default is 10 minutes).
#[derive(Debug, Clone)]
pub struct EtcdConfig {
    /// Client URLs of the members, e.g. `http://127.0.0.1:2379`; give all of them so the
    /// store can fail over.
    pub endpoints: Vec<String>,
    /// Every store key `/a/b` is stored at `{prefix}a/b`. Starts and ends with '/'.
    /// Default [`DEFAULT_ETCD_PREFIX`].
    pub prefix: String,
    /// How long one request may take before it counts as failed. Default 5 s.
    pub request_timeout: Duration,
    /// How long reads and watches keep retrying transient failures (member down, leader
    /// election) before failing with [`Error::Unavailable`]. Default 30 s.
    pub retry_timeout: Duration,
    /// How long connecting to a member may take. Default 2 s.
    pub connect_timeout: Duration,
}

impl EtcdConfig {
    /// A configuration for these member URLs, with defaults otherwise.
    pub fn new<S: Into<String>>(endpoints: impl IntoIterator<Item = S>) -> Self {
        EtcdConfig {
            endpoints: endpoints.into_iter().map(Into::into).collect(),
            prefix: DEFAULT_ETCD_PREFIX.to_owned(),
            request_timeout: Duration::from_secs(5),
            retry_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(2),
        }
    }

    /// Sets the key prefix.
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// Sets the per-request timeout.
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// Sets how long transient failures are retried.
    pub fn retry_timeout(mut self, timeout: Duration) -> Self {
        self.retry_timeout = timeout;
        self
    }
}

/// The etcd store. Cheap to clone (clones share connections).
#[derive(Debug, Clone)]
pub struct EtcdStore {
    inner: Arc<Inner>,
}

#[derive(Debug)]
pub(crate) struct Inner {
    members: Members,
    /// The prefix without its trailing '/': the etcd key of `/a` is `{root}/a`.
    root: String,
    /// The highest compacted revision this store has performed or been told about.
    known_compacted: AtomicI64,
}

impl Inner {
    fn etcd_key(&self, key: &str) -> String {
        format!("{}{}", self.root, key)
    }

    fn store_key(&self, etcd_key: &[u8]) -> Option<String> {
        let key = std::str::from_utf8(etcd_key).ok()?;
        key.strip_prefix(self.root.as_str()).map(str::to_owned)
    }

    fn convert(&self, kv: &etcd_client::KeyValue) -> Option<KeyValue> {
        Some(KeyValue {
            key: self.store_key(kv.key())?,
            value: Bytes::copy_from_slice(kv.value()),
            create_revision: kv.create_revision(),
            mod_revision: kv.mod_revision(),
        })
    }

    fn saw_compaction(&self, revision: Revision) {
        self.known_compacted.fetch_max(revision, Ordering::Relaxed);
    }
}

fn header_revision(header: Option<&etcd_client::ResponseHeader>) -> Result<Revision> {
    header
        .map(|h| h.revision())
        .ok_or_else(|| Error::backend("read an etcd response", "response has no header"))
}

impl EtcdStore {
    /// Configures the clients. Connections are made lazily, so this succeeds even while the
    /// members are down; the first request then retries until `retry_timeout`.
    pub async fn connect(config: EtcdConfig) -> Result<EtcdStore> {
        if !config.prefix.starts_with('/') || !config.prefix.ends_with('/') {
            return Err(Error::InvalidKey {
                key: config.prefix.clone(),
                reason: "the etcd prefix must start and end with '/'",
            });
        }
        let members = Members::connect(
            &config.endpoints,
            config.connect_timeout,
            config.request_timeout,
            config.retry_timeout,
        )
        .await?;
        info!(endpoints = ?config.endpoints, prefix = %config.prefix, "configured etcd store");
        Ok(EtcdStore {
            inner: Arc::new(Inner {
                members,
                root: config.prefix.trim_end_matches('/').to_owned(),
                known_compacted: AtomicI64::new(0),
            }),
        })
    }

    /// Turns a failed call into the store's error, filling in revisions from etcd when it
    /// reports a compacted or future revision.
    async fn fail(&self, error: CallError, requested: Option<Revision>) -> Error {
        let error = match error {
            CallError::Unavailable(e) => return e,
            CallError::Server(e) => e,
        };
        if let (Some(message), Some(requested)) = (is_out_of_range(&error), requested) {
            if message.contains("compacted") {
                let compacted = watch::compacted_revision(&self.inner, requested).await;
                return Error::Compacted {
                    requested,
                    compacted,
                };
            }
            if message.contains("future revision") {
                let current = self.current_revision().await.unwrap_or(requested - 1);
                return Error::FutureRevision { requested, current };
            }
        }
        Error::backend("run an etcd request", error)
    }
}

#[async_trait]
impl Store for EtcdStore {
    async fn get(&self, key: &str, at: Option<Revision>) -> Result<(Option<KeyValue>, Revision)> {
        validate::key(key)?;
        if let Some(at) = at {
            validate::revision(at)?;
        }
        let etcd_key = self.inner.etcd_key(key);
        let mut options = GetOptions::new();
        if let Some(at) = at {
            options = options.with_revision(at);
        }
        let response = self
            .inner
            .members
            .call("get a key", Kind::Read, |mut m| {
                let (key, options) = (etcd_key.clone(), options.clone());
                async move { m.kv.get(key, Some(options)).await }
            })
            .await;
        let response = match response {
            Ok(r) => r,
            Err(e) => return Err(self.fail(e, at).await),
        };
        let revision = header_revision(response.header())?;
        let kv = response.kvs().first().and_then(|kv| self.inner.convert(kv));
        Ok((kv, at.unwrap_or(revision)))
    }

    async fn list(&self, prefix: &str, opts: ListOptions) -> Result<ListResult> {
        validate::prefix(prefix)?;
        let (at, start) = match &opts.continue_token {
            Some(token) => {
                validate::revision(token.revision)?;
                if !token.start_after.starts_with(prefix) {
                    return Err(Error::InvalidContinue {
                        prefix: prefix.to_owned(),
                        reason: "it continues a list of another prefix",
                    });
                }
                // The smallest key after `start_after`.
                (
                    Some(token.revision),
                    format!("{}\0", self.inner.etcd_key(&token.start_after)),
                )
            }
            None => {
                if let Some(at) = opts.revision {
                    validate::revision(at)?;
                }
                (opts.revision, self.inner.etcd_key(prefix))
            }
        };
        let end = prefix_end(&self.inner.etcd_key(prefix));
        let limit = opts.limit.filter(|&l| l > 0);
        let mut options = GetOptions::new().with_range(end);
        if let Some(limit) = limit {
            options = options.with_limit(i64::try_from(limit).unwrap_or(i64::MAX));
        }
        if let Some(at) = at {
            options = options.with_revision(at);
        }
        let response = self
            .inner
            .members
            .call("list keys", Kind::Read, |mut m| {
                let (start, options) = (start.clone(), options.clone());
                async move { m.kv.get(start, Some(options)).await }
            })
            .await;
        let response = match response {
            Ok(r) => r,
            Err(e) => return Err(self.fail(e, at).await),
        };
        let revision = at.unwrap_or(header_revision(response.header())?);
        let items: Vec<KeyValue> = response
            .kvs()
            .iter()
            .filter_map(|kv| self.inner.convert(kv))
            .collect();
        let continue_token = match (response.more(), items.last()) {
            (true, Some(last)) => Some(ContinueToken {
                revision,
                start_after: last.key.clone(),
            }),
            _ => None,
        };
        Ok(ListResult {
            items,
            revision,
            continue_token,
        })
    }

    async fn count(&self, prefix: &str) -> Result<i64> {
        validate::prefix(prefix)?;
        let start = self.inner.etcd_key(prefix);
        let options = GetOptions::new()
            .with_range(prefix_end(&start))
            .with_count_only();
        match self
            .inner
            .members
            .call("count keys", Kind::Read, |mut m| {
                let (start, options) = (start.clone(), options.clone());
                async move { m.kv.get(start, Some(options)).await }
            })
            .await
        {
            Ok(response) => Ok(response.count()),
            Err(e) => Err(self.fail(e, None).await),
        }
    }

    async fn create(&self, key: &str, value: Bytes) -> Result<KeyValue> {
        validate::key(key)?;
        validate::value(key, &value)?;
        let etcd_key = self.inner.etcd_key(key);
        let txn = Txn::new()
            .when([Compare::create_revision(
                etcd_key.clone(),
                CompareOp::Equal,
                0,
            )])
            .and_then([TxnOp::put(etcd_key.clone(), value.to_vec(), None)]);
        let response = match self
            .inner
            .members
            .call("create a key", Kind::Write, |mut m| {
                let txn = txn.clone();
                async move { m.kv.txn(txn).await }
            })
            .await
        {
            Ok(r) => r,
            Err(e) => return Err(self.fail(e, None).await),
        };
        if !response.succeeded() {
            return Err(Error::AlreadyExists {
                key: key.to_owned(),
            });
        }
        let revision = header_revision(response.header())?;
        Ok(KeyValue {
            key: key.to_owned(),
            value,
            create_revision: revision,
            mod_revision: revision,
        })
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
        let etcd_key = self.inner.etcd_key(key);
        let txn = Txn::new()
            .when([Compare::mod_revision(
                etcd_key.clone(),
                CompareOp::Equal,
                expected_mod_revision,
            )])
            .and_then([TxnOp::put(
                etcd_key.clone(),
                value.to_vec(),
                Some(PutOptions::new().with_prev_key()),
            )])
            .or_else([TxnOp::get(etcd_key.clone(), None)]);
        let response = match self
            .inner
            .members
            .call("update a key", Kind::Write, |mut m| {
                let txn = txn.clone();
                async move { m.kv.txn(txn).await }
            })
            .await
        {
            Ok(r) => r,
            Err(e) => return Err(self.fail(e, None).await),
        };
        let revision = header_revision(response.header())?;
        let results = response.op_responses();
        if !response.succeeded() {
            let current = results.iter().find_map(|r| match r {
                TxnOpResponse::Get(get) => Some(get.kvs().first().map(|kv| kv.mod_revision())),
                _ => None,
            });
            return Err(match current.flatten() {
                Some(current) => Error::Conflict {
                    key: key.to_owned(),
                    expected: expected_mod_revision,
                    current,
                },
                None => Error::NotFound {
                    key: key.to_owned(),
                },
            });
        }
        let create_revision = results
            .iter()
            .find_map(|r| match r {
                TxnOpResponse::Put(put) => put.prev_key().map(|kv| kv.create_revision()),
                _ => None,
            })
            .ok_or_else(|| {
                Error::backend(
                    "update a key",
                    "etcd returned no previous value for a CAS put",
                )
            })?;
        Ok(KeyValue {
            key: key.to_owned(),
            value,
            create_revision,
            mod_revision: revision,
        })
    }

    async fn delete(&self, key: &str, expected_mod_revision: Option<Revision>) -> Result<Deleted> {
        validate::key(key)?;
        if let Some(expected) = expected_mod_revision {
            validate::revision(expected)?;
        }
        let etcd_key = self.inner.etcd_key(key);
        let condition = match expected_mod_revision {
            Some(expected) => Compare::mod_revision(etcd_key.clone(), CompareOp::Equal, expected),
            None => Compare::create_revision(etcd_key.clone(), CompareOp::Greater, 0),
        };
        let txn = Txn::new()
            .when([condition])
            .and_then([TxnOp::delete(
                etcd_key.clone(),
                Some(DeleteOptions::new().with_prev_key()),
            )])
            .or_else([TxnOp::get(etcd_key.clone(), None)]);
        let response = match self
            .inner
            .members
            .call("delete a key", Kind::Write, |mut m| {
                let txn = txn.clone();
                async move { m.kv.txn(txn).await }
            })
            .await
        {
            Ok(r) => r,
            Err(e) => return Err(self.fail(e, None).await),
        };
        let revision = header_revision(response.header())?;
        let results = response.op_responses();
        if !response.succeeded() {
            let current = results.iter().find_map(|r| match r {
                TxnOpResponse::Get(get) => Some(get.kvs().first().map(|kv| kv.mod_revision())),
                _ => None,
            });
            return Err(match (current.flatten(), expected_mod_revision) {
                (Some(current), Some(expected)) => Error::Conflict {
                    key: key.to_owned(),
                    expected,
                    current,
                },
                _ => Error::NotFound {
                    key: key.to_owned(),
                },
            });
        }
        let prev = results
            .iter()
            .find_map(|r| match r {
                TxnOpResponse::Delete(delete) => delete
                    .prev_kvs()
                    .first()
                    .and_then(|kv| self.inner.convert(kv)),
                _ => None,
            })
            .ok_or_else(|| {
                Error::backend(
                    "delete a key",
                    "etcd returned no previous value for a delete",
                )
            })?;
        Ok(Deleted { prev, revision })
    }

    async fn watch(&self, key_or_prefix: &str, from: Revision) -> Result<WatchStream> {
        validate::key_or_prefix(key_or_prefix)?;
        validate::watch_start(from)?;
        // Fail at once, as the embedded store does, when `from` is compacted or in the
        // future: a count-only read at that revision checks both.
        let probe_at = from.max(1);
        let probe = self.inner.etcd_key("/");
        let options = GetOptions::new().with_revision(probe_at).with_count_only();
        let checked = self
            .inner
            .members
            .call("check a watch revision", Kind::Read, |mut m| {
                let (probe, options) = (probe.clone(), options.clone());
                async move { m.kv.get(probe, Some(options)).await }
            })
            .await;
        if let Err(e) = checked {
            return Err(match self.fail(e, Some(probe_at)).await {
                Error::Compacted { compacted, .. } => Error::Compacted {
                    requested: from,
                    compacted,
                },
                other => other,
            });
        }
        Ok(watch::spawn(self.inner.clone(), key_or_prefix, from))
    }

    async fn current_revision(&self) -> Result<Revision> {
        let probe = self.inner.etcd_key("/");
        match self
            .inner
            .members
            .call("read the current revision", Kind::Read, |mut m| {
                let probe = probe.clone();
                async move {
                    m.kv.get(probe, Some(GetOptions::new().with_count_only()))
                        .await
                }
            })
            .await
        {
            Ok(response) => header_revision(response.header()),
            Err(e) => Err(self.fail(e, None).await),
        }
    }

    async fn compact(&self, revision: Revision) -> Result<()> {
        validate::revision(revision)?;
        // Compaction is idempotent, so it is retried like a read.
        let result = self
            .inner
            .members
            .call("compact history", Kind::Read, |mut m| async move {
                m.kv.compact(revision, Some(CompactionOptions::new().with_physical()))
                    .await
            })
            .await;
        match result {
            Ok(_) => {
                self.inner.saw_compaction(revision);
                info!(revision, "compacted etcd history");
                Ok(())
            }
            Err(CallError::Server(e))
                if is_out_of_range(&e).is_some_and(|m| m.contains("compacted")) =>
            {
                Ok(())
            }
            Err(e) => Err(self.fail(e, Some(revision)).await),
        }
    }
}
