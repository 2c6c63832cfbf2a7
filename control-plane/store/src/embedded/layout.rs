//! The embedded store's on-disk layout (tables, record encoding, format version) and its reads.
//!
//! Tables (all in one redb file):
//! - `meta`: `&str -> i64`: `format_version`, `current_revision`, `compacted_revision` (oldest
//!   readable revision, 0 when nothing was compacted) and `compacted_physical` (how far old
//!   versions have actually been deleted; it trails `compacted_revision` while a compaction runs).
//! - `revisions`: `(key, mod_revision) -> record`: every version of every key still retained,
//!   including deletion tombstones. A record is a tag byte (0 put, 1 tombstone), the create
//!   revision as 8 little-endian bytes, then the value.
//! - `live`: `key -> mod_revision` of the keys that exist at the current revision.
//! - `log`: `revision -> key` changed at that revision (exactly one per revision), which drives
//!   watch catch-up and compaction.

use std::ops::Bound;

use bytes::Bytes;
use redb::{ReadTransaction, ReadableTable, TableDefinition};

use crate::error::BoxError;
use crate::validate::{prefix_end, selects};
use crate::{ContinueToken, Error, Event, KeyValue, Result, Revision};

/// The storage layout version this build writes and reads. Opening a file with a newer
/// version fails with [`Error::UnsupportedFormat`]; an older one would be migrated on open.
pub const FORMAT_VERSION: i64 = 1;

pub(crate) const META: TableDefinition<&str, i64> = TableDefinition::new("meta");
pub(crate) const REVISIONS: TableDefinition<(&str, i64), &[u8]> = TableDefinition::new("revisions");
pub(crate) const LIVE: TableDefinition<&str, i64> = TableDefinition::new("live");
pub(crate) const LOG: TableDefinition<i64, &str> = TableDefinition::new("log");

pub(crate) const META_FORMAT: &str = "format_version";
pub(crate) const META_CURRENT: &str = "current_revision";
pub(crate) const META_COMPACTED: &str = "compacted_revision";
pub(crate) const META_COMPACTED_PHYSICAL: &str = "compacted_physical";

/// The revision of a freshly created store, as in etcd.
pub(crate) const INITIAL_REVISION: Revision = 1;

const TAG_PUT: u8 = 0;
const TAG_TOMBSTONE: u8 = 1;

/// One version of a key as stored in `revisions`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Record {
    /// The key held `value`, created at `create_revision`.
    Put {
        create_revision: Revision,
        value: Bytes,
    },
    /// The key was deleted.
    Tombstone,
}

impl Record {
    pub(crate) fn encode(&self) -> Vec<u8> {
        match self {
            Record::Put {
                create_revision,
                value,
            } => {
                let mut out = Vec::with_capacity(9 + value.len());
                out.push(TAG_PUT);
                out.extend_from_slice(&create_revision.to_le_bytes());
                out.extend_from_slice(value);
                out
            }
            Record::Tombstone => vec![TAG_TOMBSTONE],
        }
    }

    pub(crate) fn decode(bytes: &[u8]) -> Result<Record> {
        match bytes.first() {
            Some(&TAG_PUT) if bytes.len() >= 9 => {
                let mut rev = [0u8; 8];
                rev.copy_from_slice(&bytes[1..9]);
                Ok(Record::Put {
                    create_revision: i64::from_le_bytes(rev),
                    value: Bytes::copy_from_slice(&bytes[9..]),
                })
            }
            Some(&TAG_TOMBSTONE) => Ok(Record::Tombstone),
            _ => Err(Error::backend(
                "decode a stored record",
                format!("corrupted record of {} bytes", bytes.len()),
            )),
        }
    }

    /// Whether encoded record bytes are a tombstone, without decoding the value.
    pub(crate) fn is_tombstone(bytes: &[u8]) -> bool {
        bytes.first() == Some(&TAG_TOMBSTONE)
    }

    /// The key-value this record stands for at `mod_revision`, if it is not a tombstone.
    pub(crate) fn into_kv(self, key: &str, mod_revision: Revision) -> Option<KeyValue> {
        match self {
            Record::Put {
                create_revision,
                value,
            } => Some(KeyValue {
                key: key.to_owned(),
                value,
                create_revision,
                mod_revision,
            }),
            Record::Tombstone => None,
        }
    }
}

/// Maps any redb error into [`Error::Backend`].
pub(crate) fn storage(op: &'static str) -> impl FnOnce(redb::Error) -> Error {
    move |e| Error::backend(op, BoxError::from(e))
}

/// Converts a redb error type into [`Error::Backend`] via `redb::Error`.
pub(crate) fn db_err<E: Into<redb::Error>>(op: &'static str) -> impl FnOnce(E) -> Error {
    move |e| storage(op)(e.into())
}

/// Reads one value from `meta`, 0 if absent.
pub(crate) fn meta_get(table: &impl ReadableTable<&'static str, i64>, name: &str) -> Result<i64> {
    Ok(table
        .get(name)
        .map_err(db_err("read store metadata"))?
        .map(|v| v.value())
        .unwrap_or(0))
}

/// The store-wide revisions of a snapshot.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Heads {
    pub(crate) current: Revision,
    pub(crate) compacted: Revision,
}

/// A consistent read snapshot of the store.
pub(crate) struct Snapshot {
    txn: ReadTransaction,
    pub(crate) heads: Heads,
}

impl Snapshot {
    pub(crate) fn new(txn: ReadTransaction) -> Result<Snapshot> {
        let meta = txn
            .open_table(META)
            .map_err(db_err("open the meta table"))?;
        let heads = Heads {
            current: meta_get(&meta, META_CURRENT)?,
            compacted: meta_get(&meta, META_COMPACTED)?,
        };
        Ok(Snapshot { txn, heads })
    }

    /// Checks that `revision` can be read in this snapshot.
    pub(crate) fn check_readable(&self, revision: Revision) -> Result<()> {
        if revision > self.heads.current {
            return Err(Error::FutureRevision {
                requested: revision,
                current: self.heads.current,
            });
        }
        if revision < self.heads.compacted {
            return Err(Error::Compacted {
                requested: revision,
                compacted: self.heads.compacted,
            });
        }
        Ok(())
    }

    /// The newest version of `key` with a mod revision at or below `at`, tombstones included.
    fn version_at(
        revisions: &impl ReadableTable<(&'static str, i64), &'static [u8]>,
        key: &str,
        at: Revision,
    ) -> Result<Option<(Revision, Record)>> {
        let mut range = revisions
            .range((key, i64::MIN)..=(key, at))
            .map_err(db_err("read key history"))?;
        match range.next_back() {
            Some(entry) => {
                let (k, v) = entry.map_err(db_err("read key history"))?;
                Ok(Some((k.value().1, Record::decode(v.value())?)))
            }
            None => Ok(None),
        }
    }

    /// Reads `key` at the latest revision or at `at`.
    pub(crate) fn get(&self, key: &str, at: Option<Revision>) -> Result<Option<KeyValue>> {
        let revisions = self
            .txn
            .open_table(REVISIONS)
            .map_err(db_err("open the revisions table"))?;
        let at = match at {
            Some(at) => {
                self.check_readable(at)?;
                at
            }
            None => self.heads.current,
        };
        Ok(Self::version_at(&revisions, key, at)?.and_then(|(rev, rec)| rec.into_kv(key, rev)))
    }

    /// Lists keys under `prefix` at `at`, starting after `start_after`, at most `limit` items.
    ///
    /// Returns the items and whether more follow.
    pub(crate) fn list(
        &self,
        prefix: &str,
        at: Revision,
        start_after: Option<&str>,
        limit: Option<usize>,
    ) -> Result<(Vec<KeyValue>, bool)> {
        self.check_readable(at)?;
        let end = prefix_end(prefix);
        let start: Bound<&str> = match start_after {
            Some(after) => Bound::Excluded(after),
            None => Bound::Included(prefix),
        };
        let limit = limit.unwrap_or(usize::MAX);
        let revisions = self
            .txn
            .open_table(REVISIONS)
            .map_err(db_err("open the revisions table"))?;
        let mut items = Vec::new();
        if at == self.heads.current {
            // Latest: walk the index of live keys, one point read per key.
            let live = self
                .txn
                .open_table(LIVE)
                .map_err(db_err("open the live table"))?;
            let range = live
                .range::<&str>((start, Bound::Excluded(end.as_str())))
                .map_err(db_err("list live keys"))?;
            for entry in range {
                let (k, v) = entry.map_err(db_err("list live keys"))?;
                if items.len() == limit {
                    return Ok((items, true));
                }
                let key = k.value();
                let rev = v.value();
                let record = revisions
                    .get((key, rev))
                    .map_err(db_err("read a live key"))?
                    .ok_or_else(|| {
                        Error::backend(
                            "read a live key",
                            format!("live key {key} has no version at revision {rev}"),
                        )
                    })?;
                if let Some(kv) = Record::decode(record.value())?.into_kv(key, rev) {
                    items.push(kv);
                }
            }
            return Ok((items, false));
        }
        // Historical: walk every retained version in the range, keeping per key the newest
        // one at or below `at`. Versions of one key are adjacent and in revision order.
        let start_bound: Bound<(&str, i64)> = match start {
            Bound::Excluded(after) => Bound::Excluded((after, i64::MAX)),
            _ => Bound::Included((prefix, i64::MIN)),
        };
        let range = revisions
            .range::<(&str, i64)>((start_bound, Bound::Excluded((end.as_str(), i64::MIN))))
            .map_err(db_err("list key history"))?;
        let mut scanning: Option<String> = None;
        let mut newest: Option<(Revision, Vec<u8>)> = None;
        for entry in range {
            let (k, v) = entry.map_err(db_err("list key history"))?;
            let (key, rev) = k.value();
            if scanning.as_deref() != Some(key) {
                if let Some(kv) = visible(scanning.take(), newest.take())? {
                    if items.len() == limit {
                        return Ok((items, true));
                    }
                    items.push(kv);
                }
                scanning = Some(key.to_owned());
            }
            if rev <= at {
                newest = Some((rev, v.value().to_vec()));
            }
        }
        if let Some(kv) = visible(scanning, newest)? {
            if items.len() == limit {
                return Ok((items, true));
            }
            items.push(kv);
        }
        Ok((items, false))
    }

    /// Counts the keys under `prefix` at the current revision.
    pub(crate) fn count(&self, prefix: &str) -> Result<i64> {
        let live = self
            .txn
            .open_table(LIVE)
            .map_err(db_err("open the live table"))?;
        let end = prefix_end(prefix);
        let range = live
            .range::<&str>(prefix..end.as_str())
            .map_err(db_err("count live keys"))?;
        let mut n = 0i64;
        for entry in range {
            entry.map_err(db_err("count live keys"))?;
            n += 1;
        }
        Ok(n)
    }

    /// Reads the history after revision `after` for watch catch-up: the events selected by
    /// `target`, scanning at most `max_scan` revisions.
    ///
    /// Returns the events and the last revision scanned (the next call continues after it).
    pub(crate) fn history(
        &self,
        target: &str,
        after: Revision,
        max_scan: i64,
    ) -> Result<(Vec<Event>, Revision)> {
        if after < self.heads.compacted {
            return Err(Error::Compacted {
                requested: after,
                compacted: self.heads.compacted,
            });
        }
        let upto = self.heads.current.min(after.saturating_add(max_scan));
        if upto <= after {
            return Ok((Vec::new(), after));
        }
        let log = self.txn.open_table(LOG).map_err(db_err("open the log"))?;
        let revisions = self
            .txn
            .open_table(REVISIONS)
            .map_err(db_err("open the revisions table"))?;
        let mut events = Vec::new();
        for entry in log
            .range((after + 1)..=upto)
            .map_err(db_err("read the log"))?
        {
            let (rev, key) = entry.map_err(db_err("read the log"))?;
            let (rev, key) = (rev.value(), key.value());
            if !selects(target, key) {
                continue;
            }
            events.push(Self::event_at(&revisions, key, rev)?);
        }
        Ok((events, upto))
    }

    /// Rebuilds the event of revision `rev`, which changed `key`.
    fn event_at(
        revisions: &impl ReadableTable<(&'static str, i64), &'static [u8]>,
        key: &str,
        rev: Revision,
    ) -> Result<Event> {
        let record = revisions
            .get((key, rev))
            .map_err(db_err("read an event"))?
            .ok_or_else(|| {
                Error::backend(
                    "read an event",
                    format!("log names key {key} at revision {rev} but it has no such version"),
                )
            })?;
        let record = Record::decode(record.value())?;
        let prev =
            Self::version_at(revisions, key, rev - 1)?.and_then(|(r, rec)| rec.into_kv(key, r));
        match record {
            Record::Put {
                create_revision,
                value,
            } => Ok(Event::Put {
                kv: KeyValue {
                    key: key.to_owned(),
                    value,
                    create_revision,
                    mod_revision: rev,
                },
                prev,
            }),
            Record::Tombstone => match prev {
                Some(prev) => Ok(Event::Delete {
                    key: key.to_owned(),
                    prev,
                    revision: rev,
                }),
                None => Err(Error::backend(
                    "read an event",
                    format!("deletion of {key} at revision {rev} has no previous version"),
                )),
            },
        }
    }
}

/// The key-value a scanned key shows at the list revision: its newest version at or below it,
/// unless that is a tombstone.
fn visible(key: Option<String>, newest: Option<(Revision, Vec<u8>)>) -> Result<Option<KeyValue>> {
    match (key, newest) {
        (Some(key), Some((rev, bytes))) => Ok(Record::decode(&bytes)?.into_kv(&key, rev)),
        _ => Ok(None),
    }
}

/// Builds the continuation of a page whose last item is `last`.
pub(crate) fn continue_after(
    items: &[KeyValue],
    more: bool,
    revision: Revision,
) -> Option<ContinueToken> {
    match (more, items.last()) {
        (true, Some(last)) => Some(ContinueToken {
            revision,
            start_after: last.key.clone(),
        }),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_round_trip() {
        let records = [
            Record::Put {
                create_revision: 7,
                value: Bytes::from_static(b"hello"),
            },
            Record::Put {
                create_revision: i64::MAX,
                value: Bytes::new(),
            },
            Record::Tombstone,
        ];
        for record in records {
            assert_eq!(Record::decode(&record.encode()).unwrap(), record);
        }
        assert!(Record::decode(&[]).is_err());
        assert!(Record::decode(&[TAG_PUT, 1, 2]).is_err());
        assert!(Record::decode(&[9]).is_err());
    }
}
