//! The embedded store's single writer thread: group commit, revision assignment, event
//! publication and compaction.
//!
//! All writes go through one thread that drains its queue into a single redb write
//! transaction per batch (one fsync for many writes), assigns each successful write the next
//! revision, commits, publishes the batch's events to the watch fan-out in revision order, and
//! only then acknowledges the writers. A CAS that fails inside a batch changes nothing and does
//! not affect its neighbours; a storage error aborts the whole batch and fails all its writes.

use std::sync::Arc;

use bytes::Bytes;
use redb::{Database, ReadableTable, Table, WriteTransaction};
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{debug, error, info};

use super::layout::{
    LIVE, LOG, META, META_COMPACTED, META_COMPACTED_PHYSICAL, META_CURRENT, REVISIONS, Record,
};
use crate::fanout::Hub;
use crate::{Deleted, Error, Event, KeyValue, Result, Revision};

/// Most writes committed in one transaction.
const MAX_BATCH: usize = 512;
/// Revisions physically compacted per transaction, so writers wait at most one chunk.
const COMPACTION_CHUNK: i64 = 2048;

/// A write the caller asked for (already validated).
#[derive(Debug)]
pub(crate) enum WriteOp {
    Create {
        key: String,
        value: Bytes,
    },
    Update {
        key: String,
        value: Bytes,
        expected: Revision,
    },
    Delete {
        key: String,
        expected: Option<Revision>,
    },
}

/// The result of a successful write.
#[derive(Debug)]
pub(crate) enum Written {
    Put(KeyValue),
    Deleted(Deleted),
}

/// A request to the writer thread.
#[derive(Debug)]
pub(crate) enum Command {
    Write {
        op: WriteOp,
        reply: oneshot::Sender<Result<Written>>,
    },
    Compact {
        revision: Revision,
        reply: oneshot::Sender<Result<()>>,
    },
}

/// The writer thread's state; the revisions mirror the `meta` table.
pub(crate) struct Writer {
    pub(crate) db: Arc<Database>,
    pub(crate) hub: Arc<Hub>,
    pub(crate) current: Revision,
    pub(crate) compacted: Revision,
    pub(crate) physical: Revision,
    /// Reports `physical` as old versions are deleted.
    pub(crate) physical_progress: watch::Sender<Revision>,
}

type Tables<'t> = (
    Table<'t, (&'static str, i64), &'static [u8]>,
    Table<'t, &'static str, i64>,
    Table<'t, i64, &'static str>,
);

impl Writer {
    /// Serves commands until every sender is dropped.
    pub(crate) fn run(mut self, mut commands: mpsc::Receiver<Command>) {
        let mut deferred: Option<Command> = None;
        let mut compaction_paused = false;
        loop {
            let command = if let Some(command) = deferred.take() {
                command
            } else if self.physical < self.compacted && !compaction_paused {
                // Background compaction: one chunk whenever no write is waiting.
                match commands.try_recv() {
                    Ok(command) => command,
                    Err(mpsc::error::TryRecvError::Empty) => {
                        if let Err(e) = self.compact_chunk() {
                            error!(error = %e, "compaction failed; it resumes with the next compaction request or restart");
                            compaction_paused = true;
                        }
                        continue;
                    }
                    Err(mpsc::error::TryRecvError::Disconnected) => break,
                }
            } else {
                match commands.blocking_recv() {
                    Some(command) => command,
                    None => break,
                }
            };
            match command {
                Command::Compact { revision, reply } => {
                    compaction_paused = false;
                    let _ = reply.send(self.compact(revision));
                }
                Command::Write { op, reply } => {
                    let mut batch = vec![(op, reply)];
                    while batch.len() < MAX_BATCH {
                        match commands.try_recv() {
                            Ok(Command::Write { op, reply }) => batch.push((op, reply)),
                            Ok(other) => {
                                deferred = Some(other);
                                break;
                            }
                            Err(_) => break,
                        }
                    }
                    self.write_batch(batch);
                }
            }
        }
        info!(revision = self.current, "embedded store writer stopped");
    }

    fn write_batch(&mut self, batch: Vec<(WriteOp, oneshot::Sender<Result<Written>>)>) {
        let (ops, replies): (Vec<_>, Vec<_>) = batch.into_iter().unzip();
        match self.commit_batch(&ops) {
            Ok((results, events, revision)) => {
                self.current = revision;
                self.hub.publish(events, revision);
                for (reply, result) in replies.into_iter().zip(results) {
                    let _ = reply.send(result);
                }
            }
            Err(e) => {
                error!(error = %e, writes = ops.len(), "write transaction failed");
                let message = e.to_string();
                for reply in replies {
                    let _ = reply.send(Err(Error::backend(
                        "commit a write transaction",
                        message.clone(),
                    )));
                }
            }
        }
    }

    /// Applies a batch in one transaction. The outer error is a storage failure (nothing was
    /// committed); the inner results are each write's own outcome.
    #[allow(
        clippy::type_complexity,
        reason = "a private helper's tuple of outputs"
    )]
    fn commit_batch(
        &self,
        ops: &[WriteOp],
    ) -> Result<(Vec<Result<Written>>, Vec<Event>, Revision), redb::Error> {
        let txn = self.db.begin_write()?;
        let mut revision = self.current;
        let mut results = Vec::with_capacity(ops.len());
        let mut events = Vec::with_capacity(ops.len());
        {
            let mut tables: Tables<'_> = (
                txn.open_table(REVISIONS)?,
                txn.open_table(LIVE)?,
                txn.open_table(LOG)?,
            );
            for op in ops {
                results.push(apply(op, &mut tables, &mut revision, &mut events)?);
            }
            if revision != self.current {
                txn.open_table(META)?.insert(META_CURRENT, revision)?;
            }
        }
        if revision == self.current {
            txn.abort()?;
        } else {
            txn.commit()?;
        }
        Ok((results, events, revision))
    }

    /// Records a compaction to `revision`; old versions are deleted in the background.
    fn compact(&mut self, revision: Revision) -> Result<()> {
        if revision > self.current {
            return Err(Error::FutureRevision {
                requested: revision,
                current: self.current,
            });
        }
        if revision <= self.compacted {
            return Ok(());
        }
        let txn = self
            .db
            .begin_write()
            .map_err(super::layout::db_err("begin a compaction"))?;
        set_meta(&txn, META_COMPACTED, revision)
            .and_then(|()| txn.commit().map_err(redb::Error::from))
            .map_err(super::layout::storage("record a compaction"))?;
        info!(
            revision,
            previous = self.compacted,
            "compacted store history"
        );
        self.compacted = revision;
        Ok(())
    }

    /// Deletes the versions made unreachable by the compaction, one chunk of revisions.
    ///
    /// For each revision `r` in the chunk (all at or below the compacted revision): the
    /// version it superseded is no longer readable at any retained revision, so it goes; a
    /// tombstone at `r` goes too (absence reads the same); the log entry goes.
    fn compact_chunk(&mut self) -> Result<(), redb::Error> {
        let upto = self.compacted.min(self.physical + COMPACTION_CHUNK);
        let txn = self.db.begin_write()?;
        {
            let mut revisions = txn.open_table(REVISIONS)?;
            let mut log = txn.open_table(LOG)?;
            for rev in (self.physical + 1)..=upto {
                let Some(key) = log.remove(rev)?.map(|k| k.value().to_owned()) else {
                    continue;
                };
                let key = key.as_str();
                let superseded = revisions
                    .range((key, i64::MIN)..(key, rev))?
                    .next_back()
                    .transpose()?
                    .map(|(k, _)| k.value().1);
                if let Some(old) = superseded {
                    revisions.remove((key, old))?;
                }
                let tombstone = revisions
                    .get((key, rev))?
                    .is_some_and(|v| Record::is_tombstone(v.value()));
                if tombstone {
                    revisions.remove((key, rev))?;
                }
            }
        }
        set_meta(&txn, META_COMPACTED_PHYSICAL, upto)?;
        txn.commit()?;
        debug!(from = self.physical, upto, "deleted compacted history");
        self.physical = upto;
        self.physical_progress.send_replace(upto);
        Ok(())
    }
}

fn set_meta(txn: &WriteTransaction, name: &str, value: i64) -> Result<(), redb::Error> {
    txn.open_table(META)?.insert(name, value)?;
    Ok(())
}

/// Applies one write inside the batch's transaction.
fn apply(
    op: &WriteOp,
    (revisions, live, log): &mut Tables<'_>,
    revision: &mut Revision,
    events: &mut Vec<Event>,
) -> Result<Result<Written>, redb::Error> {
    let key = match op {
        WriteOp::Create { key, .. } | WriteOp::Update { key, .. } | WriteOp::Delete { key, .. } => {
            key.as_str()
        }
    };
    let current_mod = live.get(key)?.map(|v| v.value());
    let previous = match current_mod {
        Some(rev) => match revisions.get((key, rev))? {
            Some(bytes) => match Record::decode(bytes.value()) {
                Ok(record) => record.into_kv(key, rev),
                Err(e) => return Ok(Err(e)),
            },
            None => None,
        },
        None => None,
    };
    let next = *revision + 1;
    match op {
        WriteOp::Create { value, .. } => {
            if previous.is_some() {
                return Ok(Err(Error::AlreadyExists {
                    key: key.to_owned(),
                }));
            }
            let kv = KeyValue {
                key: key.to_owned(),
                value: value.clone(),
                create_revision: next,
                mod_revision: next,
            };
            put(revisions, live, log, &kv)?;
            events.push(Event::Put {
                kv: kv.clone(),
                prev: None,
            });
            *revision = next;
            Ok(Ok(Written::Put(kv)))
        }
        WriteOp::Update {
            value, expected, ..
        } => {
            let Some(prev) = previous else {
                return Ok(Err(Error::NotFound {
                    key: key.to_owned(),
                }));
            };
            if prev.mod_revision != *expected {
                return Ok(Err(Error::Conflict {
                    key: key.to_owned(),
                    expected: *expected,
                    current: prev.mod_revision,
                }));
            }
            let kv = KeyValue {
                key: key.to_owned(),
                value: value.clone(),
                create_revision: prev.create_revision,
                mod_revision: next,
            };
            put(revisions, live, log, &kv)?;
            events.push(Event::Put {
                kv: kv.clone(),
                prev: Some(prev),
            });
            *revision = next;
            Ok(Ok(Written::Put(kv)))
        }
        WriteOp::Delete { expected, .. } => {
            let Some(prev) = previous else {
                return Ok(Err(Error::NotFound {
                    key: key.to_owned(),
                }));
            };
            if let Some(expected) = expected
                && prev.mod_revision != *expected
            {
                return Ok(Err(Error::Conflict {
                    key: key.to_owned(),
                    expected: *expected,
                    current: prev.mod_revision,
                }));
            }
            revisions.insert((key, next), Record::Tombstone.encode().as_slice())?;
            live.remove(key)?;
            log.insert(next, key)?;
            events.push(Event::Delete {
                key: key.to_owned(),
                prev: prev.clone(),
                revision: next,
            });
            *revision = next;
            Ok(Ok(Written::Deleted(Deleted {
                prev,
                revision: next,
            })))
        }
    }
}

fn put(
    revisions: &mut Table<'_, (&'static str, i64), &'static [u8]>,
    live: &mut Table<'_, &'static str, i64>,
    log: &mut Table<'_, i64, &'static str>,
    kv: &KeyValue,
) -> Result<(), redb::Error> {
    let record = Record::Put {
        create_revision: kv.create_revision,
        value: kv.value.clone(),
    };
    revisions.insert(
        (kv.key.as_str(), kv.mod_revision),
        record.encode().as_slice(),
    )?;
    live.insert(kv.key.as_str(), kv.mod_revision)?;
    log.insert(kv.mod_revision, kv.key.as_str())?;
    Ok(())
}
