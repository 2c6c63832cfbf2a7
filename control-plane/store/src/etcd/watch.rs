//! etcd watches that survive member failures: re-established after the last delivered
//! revision, so no event is lost or delivered twice.

use std::sync::Arc;
use std::time::Duration;

use etcd_client::{EventType, WatchOptions, WatchResponse};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::{debug, warn};

use super::Inner;
use super::members::{Failure, classify};
use crate::validate::prefix_end;
use crate::{Error, Event, Result, Revision, WatchStream};

/// Events buffered between a watch task and its consumer.
const WATCH_BUFFER: usize = 1024;
const BACKOFF_START: Duration = Duration::from_millis(20);
const BACKOFF_MAX: Duration = Duration::from_millis(500);

/// Starts watching `target` (a key, or a prefix ending in '/') after revision `from`.
pub(crate) fn spawn(inner: Arc<Inner>, target: &str, from: Revision) -> WatchStream {
    let (tx, rx) = mpsc::channel(WATCH_BUFFER);
    let key = inner.etcd_key(target);
    let range_end = target.ends_with('/').then(|| prefix_end(&key));
    let watch = Watch {
        inner,
        key,
        range_end,
        last: from,
        tx,
    };
    WatchStream::new(rx, tokio::spawn(watch.run()))
}

struct Watch {
    inner: Arc<Inner>,
    key: String,
    range_end: Option<String>,
    /// Every event at or below this revision has been delivered (or reported by progress).
    last: Revision,
    tx: mpsc::Sender<Result<Event>>,
}

/// How one etcd watch stream ended.
enum Ended {
    /// The consumer dropped the stream: stop quietly.
    Gone,
    /// The watch cannot continue: report and stop.
    Failed(Error),
    /// The stream broke (member down, no leader): re-establish it.
    Broken(String),
}

impl Watch {
    async fn run(mut self) {
        let mut backoff = BACKOFF_START;
        let mut deadline = Instant::now() + self.inner.members.retry_timeout;
        loop {
            let (index, member) = self.inner.members.current();
            let ended = self.follow(member.watch, &mut deadline, &mut backoff).await;
            let reason = match ended {
                Ended::Gone => return,
                Ended::Failed(e) => {
                    let _ = self.tx.send(Err(e)).await;
                    return;
                }
                Ended::Broken(reason) => reason,
            };
            self.inner.members.failed(index);
            if Instant::now() + backoff > deadline {
                let _ = self
                    .tx
                    .send(Err(Error::unavailable(
                        format!(
                            "watch of {} could not be re-established within {:?}: {reason}",
                            self.key, self.inner.members.retry_timeout
                        ),
                        None,
                    )))
                    .await;
                return;
            }
            debug!(key = %self.key, last = self.last, %reason, endpoint = %member.endpoint, "re-establishing etcd watch");
            tokio::select! {
                _ = self.tx.closed() => return,
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    }

    /// Opens an etcd watch after `self.last` and delivers its events until it ends.
    async fn follow(
        &mut self,
        mut client: etcd_client::WatchClient,
        deadline: &mut Instant,
        backoff: &mut Duration,
    ) -> Ended {
        // etcd starts inclusive: starting at `last` (not `last + 1`) makes etcd report a
        // compaction exactly when `last` is below the compacted revision, as the embedded
        // store does; the events at `last` are skipped below.
        let mut options = WatchOptions::new()
            .with_start_revision(self.last.max(1))
            .with_prev_key()
            .with_progress_notify();
        if let Some(end) = &self.range_end {
            options = options.with_range(end.clone());
        }
        let opened = tokio::time::timeout(
            self.inner.members.request_timeout,
            client.watch(self.key.clone(), Some(options)),
        )
        .await;
        let mut stream = match opened {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) if classify(&e) == Failure::Fatal => {
                return Ended::Failed(Error::backend("open an etcd watch", e));
            }
            Ok(Err(e)) => return Ended::Broken(e.to_string()),
            Err(_) => return Ended::Broken("opening the watch timed out".into()),
        };
        loop {
            let message = tokio::select! {
                _ = self.tx.closed() => return Ended::Gone,
                message = stream.message() => message,
            };
            let response = match message {
                Ok(Some(response)) => response,
                Ok(None) => return Ended::Broken("the watch stream ended".into()),
                Err(e) if classify(&e) == Failure::Fatal => {
                    return Ended::Failed(Error::backend("read an etcd watch", e));
                }
                Err(e) => return Ended::Broken(e.to_string()),
            };
            // A healthy stream: the retry budget starts afresh.
            *deadline = Instant::now() + self.inner.members.retry_timeout;
            *backoff = BACKOFF_START;
            if let Some(ended) = self.handle(response).await {
                return ended;
            }
        }
    }

    /// Delivers one response. Returns `Some` when the stream is over.
    async fn handle(&mut self, response: WatchResponse) -> Option<Ended> {
        if response.compact_revision() > 0 {
            self.inner.saw_compaction(response.compact_revision());
            return Some(Ended::Failed(Error::Compacted {
                requested: self.last,
                compacted: response.compact_revision(),
            }));
        }
        if response.canceled() {
            return Some(Ended::Broken(format!(
                "etcd canceled the watch: {}",
                response.cancel_reason()
            )));
        }
        if response.created() {
            return None;
        }
        if response.events().is_empty() {
            // A progress notification: etcd sends them only for watchers that are in sync,
            // so everything up to the header's revision has been delivered.
            let revision = response.header().map_or(self.last, |h| h.revision());
            self.last = self.last.max(revision);
            if self
                .tx
                .send(Ok(Event::Progress {
                    revision: self.last,
                }))
                .await
                .is_err()
            {
                return Some(Ended::Gone);
            }
            return None;
        }
        // A revision's events always arrive in one response, so compare against the
        // revision delivered before this response.
        let seen = self.last;
        for event in response.events() {
            let Some(kv) = event.kv() else { continue };
            let revision = kv.mod_revision();
            if revision <= seen {
                continue;
            }
            let converted = match self.convert(event) {
                Ok(Some(converted)) => converted,
                Ok(None) => continue,
                Err(e) => return Some(Ended::Failed(e)),
            };
            if self.tx.send(Ok(converted)).await.is_err() {
                return Some(Ended::Gone);
            }
            self.last = self.last.max(revision);
        }
        None
    }

    fn convert(&self, event: &etcd_client::Event) -> Result<Option<Event>> {
        let Some(kv) = event.kv() else {
            return Ok(None);
        };
        let revision = kv.mod_revision();
        let prev = event.prev_kv().and_then(|p| self.inner.convert(p));
        // etcd omits the previous value when it was compacted before the event was read.
        let lost = || Error::Compacted {
            requested: revision - 1,
            compacted: self
                .inner
                .known_compacted
                .load(std::sync::atomic::Ordering::Relaxed)
                .max(revision),
        };
        match event.event_type() {
            EventType::Put => {
                let Some(kv) = self.inner.convert(kv) else {
                    return Ok(None);
                };
                if prev.is_none() && kv.create_revision != kv.mod_revision {
                    warn!(key = %kv.key, revision, "etcd watch event lacks its previous value");
                    return Err(lost());
                }
                Ok(Some(Event::Put { kv, prev }))
            }
            EventType::Delete => {
                let Some(key) = self.inner.store_key(kv.key()) else {
                    return Ok(None);
                };
                let Some(prev) = prev else {
                    warn!(%key, revision, "etcd delete event lacks its previous value");
                    return Err(lost());
                };
                Ok(Some(Event::Delete {
                    key,
                    prev,
                    revision,
                }))
            }
        }
    }
}

/// Asks etcd for its compacted revision, knowing that `requested` is compacted.
///
/// etcd 3.4 exposes the compacted revision only when it cancels a watch that starts below it,
/// so open one on a key that never exists; fall back to what this store has seen.
pub(super) async fn compacted_revision(inner: &Inner, requested: Revision) -> Revision {
    let known = inner
        .known_compacted
        .load(std::sync::atomic::Ordering::Relaxed)
        .max(requested + 1);
    let (_, mut member) = inner.members.current();
    let probe = async {
        let mut stream = member
            .watch
            .watch(
                inner.etcd_key("/\0compaction-probe"),
                Some(WatchOptions::new().with_start_revision(requested.max(1))),
            )
            .await
            .ok()?;
        while let Ok(Some(response)) = stream.message().await {
            if response.compact_revision() > 0 {
                return Some(response.compact_revision());
            }
            if response.canceled() {
                return None;
            }
        }
        None
    };
    match tokio::time::timeout(Duration::from_secs(2), probe).await {
        Ok(Some(compacted)) => {
            inner.saw_compaction(compacted);
            compacted
        }
        _ => known,
    }
}
