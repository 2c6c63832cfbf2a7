//! The values the store API takes and returns: revisions, key-values, events, list pages.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures::Stream;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::Result;

/// A store revision: one counter for the whole store, bumped by every successful write.
///
/// An object's mod revision is its Kubernetes `resourceVersion`. Revisions are positive; a fresh
/// store is at revision 1, as etcd is.
pub type Revision = i64;

/// A key with its value and revisions, as stored at some revision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyValue {
    /// The key, starting with '/'.
    pub key: String,
    /// The value bytes.
    pub value: Bytes,
    /// The revision that created the key (since it last did not exist).
    pub create_revision: Revision,
    /// The revision of the last change to the key.
    pub mod_revision: Revision,
}

/// One change seen by a watch, or a progress notification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The key was created (`prev` is `None`) or updated (`prev` is the value it replaced).
    Put {
        /// The key as written; `kv.mod_revision` is the event's revision.
        kv: KeyValue,
        /// The value before this change, if the key existed.
        prev: Option<KeyValue>,
    },
    /// The key was deleted.
    Delete {
        /// The deleted key.
        key: String,
        /// The value it had before the delete.
        prev: KeyValue,
        /// The revision of the delete.
        revision: Revision,
    },
    /// No change is pending for this watch up to `revision`: every event with a revision at or
    /// below it has been delivered. Sent when the watch has been idle for a while.
    Progress {
        /// The store revision the watch has caught up with.
        revision: Revision,
    },
}

impl Event {
    /// The revision of the change, or the revision a progress notification reports.
    pub fn revision(&self) -> Revision {
        match self {
            Event::Put { kv, .. } => kv.mod_revision,
            Event::Delete { revision, .. } => *revision,
            Event::Progress { revision } => *revision,
        }
    }

    /// The changed key (`None` for progress notifications).
    pub fn key(&self) -> Option<&str> {
        match self {
            Event::Put { kv, .. } => Some(&kv.key),
            Event::Delete { key, .. } => Some(key),
            Event::Progress { .. } => None,
        }
    }
}

/// The result of a successful delete.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deleted {
    /// The key and value as they were just before the delete.
    pub prev: KeyValue,
    /// The revision of the delete.
    pub revision: Revision,
}

/// Where a paginated list continues: returned with a page that has more items, passed back in
/// [`ListOptions::continue_token`] to get the next page.
///
/// It pins the revision of the first page, so every page is read from the same snapshot even
/// while writes continue. The API server may serialize it into Kubernetes' opaque `continue`
/// string; it holds no secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContinueToken {
    /// The revision every page is read at.
    pub revision: Revision,
    /// The last key returned; the next page starts after it.
    pub start_after: String,
}

/// Options of [`crate::Store::list`]. `ListOptions::default()` lists everything at the latest
/// revision.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListOptions {
    /// Read at this revision instead of the latest. Ignored when `continue_token` is set
    /// (the token carries its own revision).
    pub revision: Option<Revision>,
    /// Return at most this many items (`None`: no limit).
    pub limit: Option<usize>,
    /// Continue a previous list from the token it returned.
    pub continue_token: Option<ContinueToken>,
}

impl ListOptions {
    /// Reads at `revision` instead of the latest.
    pub fn at(mut self, revision: Revision) -> Self {
        self.revision = Some(revision);
        self
    }

    /// Returns at most `limit` items per page.
    pub fn limit(mut self, limit: usize) -> Self {
        self.limit = Some(limit);
        self
    }

    /// Continues from a previous page.
    pub fn continue_from(mut self, token: ContinueToken) -> Self {
        self.continue_token = Some(token);
        self
    }
}

/// One page of a list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListResult {
    /// The key-values, in key order.
    pub items: Vec<KeyValue>,
    /// The revision the page was read at (the list's `resourceVersion`).
    pub revision: Revision,
    /// Set when more items follow: pass it back to get the next page.
    pub continue_token: Option<ContinueToken>,
}

impl ListResult {
    /// Whether more items follow this page.
    pub fn more(&self) -> bool {
        self.continue_token.is_some()
    }
}

/// The events of a watch, in revision order; see [`crate::Store::watch`].
///
/// After an `Err` item the stream ends. Dropping the stream cancels the watch.
#[derive(Debug)]
pub struct WatchStream {
    events: mpsc::Receiver<Result<Event>>,
    producer: JoinHandle<()>,
}

impl WatchStream {
    /// Wraps the receiving end of a watch's channel and the task that feeds it.
    pub(crate) fn new(events: mpsc::Receiver<Result<Event>>, producer: JoinHandle<()>) -> Self {
        WatchStream { events, producer }
    }
}

impl Stream for WatchStream {
    type Item = Result<Event>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.events.poll_recv(cx)
    }
}

impl Drop for WatchStream {
    fn drop(&mut self) {
        self.producer.abort();
    }
}
