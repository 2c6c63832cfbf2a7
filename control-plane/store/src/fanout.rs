//! Watch fan-out for the embedded store: one broadcast of committed events, per-watcher
//! catch-up from the history in the database.
//!
//! The writer thread publishes each committed batch of events once on a broadcast channel;
//! every watch is a task that filters that stream for its key or prefix. A watch starting in
//! the past, or one that fell behind far enough to lose broadcast messages (a slow consumer),
//! subscribes first and then replays the missing revisions from the database's log, so no
//! event is lost or duplicated and a slow watcher never slows the writer down.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::sync::{broadcast, mpsc};
use tokio::time::Instant;
use tracing::debug;

use crate::validate::selects;
use crate::{Error, Event, Result, Revision, WatchStream};

/// Broadcast capacity, in committed batches; a watcher further behind resynchronizes from disk.
pub(crate) const BROADCAST_CAPACITY: usize = 1024;
/// Events buffered between a watch task and its consumer.
pub(crate) const WATCH_BUFFER: usize = 1024;
/// Revisions scanned per catch-up read (bounds memory and the length of a read transaction).
const CATCH_UP_SCAN: i64 = 4096;

/// The publishing side of the fan-out, owned by the embedded store.
#[derive(Debug)]
pub(crate) struct Hub {
    sender: broadcast::Sender<Arc<[Event]>>,
    /// Every event at or below this revision has been sent on `sender`.
    published: AtomicI64,
}

impl Hub {
    pub(crate) fn new(current: Revision, capacity: usize) -> Hub {
        let (sender, _) = broadcast::channel(capacity.max(1));
        Hub {
            sender,
            published: AtomicI64::new(current),
        }
    }

    /// Publishes the events of a committed batch whose last revision is `revision`.
    pub(crate) fn publish(&self, events: Vec<Event>, revision: Revision) {
        if !events.is_empty() {
            // An error only means nobody is watching.
            let _ = self.sender.send(events.into());
        }
        self.published.store(revision, Ordering::SeqCst);
    }

    fn subscribe(&self) -> broadcast::Receiver<Arc<[Event]>> {
        self.sender.subscribe()
    }
}

/// Reads committed history for catch-up (implemented over the database).
pub(crate) trait History: Send + Sync + 'static {
    /// The events selected by `target` after revision `after`, scanning at most `max_scan`
    /// revisions. Returns the events, the last revision scanned and the current revision.
    fn read(
        &self,
        target: &str,
        after: Revision,
        max_scan: i64,
    ) -> Result<(Vec<Event>, Revision, Revision)>;
}

/// Starts a watch of `target` for the events after `from`.
///
/// The task holds only weak references, so dropping the store ends its watches (with
/// [`Error::Unavailable`]) and releases the database.
pub(crate) fn spawn_watch(
    hub: Weak<Hub>,
    history: Arc<dyn History>,
    target: String,
    from: Revision,
    progress_interval: Duration,
    buffer: usize,
) -> WatchStream {
    let (tx, rx) = mpsc::channel(buffer.max(1));
    let watcher = Watcher {
        hub,
        history,
        target,
        last: from,
        progress_interval,
        tx,
    };
    let task = tokio::spawn(watcher.run());
    WatchStream::new(rx, task)
}

struct Watcher {
    hub: Weak<Hub>,
    history: Arc<dyn History>,
    target: String,
    /// Every event at or below this revision has been delivered (or did not match).
    last: Revision,
    progress_interval: Duration,
    tx: mpsc::Sender<Result<Event>>,
}

/// Why a watch loop stopped.
enum Stop {
    /// The consumer dropped the stream.
    Gone,
    /// The watch failed; the error goes to the consumer.
    Failed(Error),
}

impl From<Error> for Stop {
    fn from(e: Error) -> Self {
        Stop::Failed(e)
    }
}

fn closed() -> Error {
    Error::unavailable("the embedded store was closed", None)
}

impl Watcher {
    async fn run(mut self) {
        if let Stop::Failed(e) = self.watch().await {
            let _ = self.tx.send(Err(e)).await;
        }
    }

    async fn send(&self, event: Event) -> Result<(), Stop> {
        self.tx.send(Ok(event)).await.map_err(|_| Stop::Gone)
    }

    async fn watch(&mut self) -> Stop {
        loop {
            // Subscribe before reading history: every event committed after the read's
            // snapshot is then in the receiver, and those already read are skipped by revision.
            let Some(hub) = self.hub.upgrade() else {
                return Stop::Failed(closed());
            };
            let rx = hub.subscribe();
            drop(hub);
            if let Err(stop) = self.catch_up().await {
                return stop;
            }
            match self.follow(rx).await {
                Ok(()) => {
                    debug!(target = %self.target, last = self.last, "watch fell behind, resynchronizing from history")
                }
                Err(stop) => return stop,
            }
        }
    }

    /// Replays history from the database until it reaches the revision current at the read.
    async fn catch_up(&mut self) -> Result<(), Stop> {
        loop {
            let history = self.history.clone();
            let (target, after) = (self.target.clone(), self.last);
            let (events, scanned, head) =
                tokio::task::spawn_blocking(move || history.read(&target, after, CATCH_UP_SCAN))
                    .await
                    .map_err(|e| Error::backend("read watch history", e))??;
            for event in events {
                self.send(event).await?;
            }
            self.last = self.last.max(scanned);
            if scanned >= head {
                return Ok(());
            }
        }
    }

    /// Delivers the live broadcast. Returns `Ok` when the watcher lagged and must resync.
    async fn follow(&mut self, mut rx: broadcast::Receiver<Arc<[Event]>>) -> Result<(), Stop> {
        let mut progress_at = Instant::now() + self.progress_interval;
        loop {
            tokio::select! {
                _ = self.tx.closed() => return Err(Stop::Gone),
                msg = rx.recv() => match msg {
                    Ok(batch) => {
                        if self.deliver(&batch).await? {
                            progress_at = Instant::now() + self.progress_interval;
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => return Ok(()),
                    Err(broadcast::error::RecvError::Closed) => return Err(closed().into()),
                },
                _ = tokio::time::sleep_until(progress_at) => {
                    // Everything up to `published` is already in the receiver: drain it, then
                    // `last` covers at least `published`, and a progress notification for it
                    // cannot overtake an event.
                    let Some(hub) = self.hub.upgrade() else {
                        return Err(closed().into());
                    };
                    let published = hub.published.load(Ordering::SeqCst);
                    drop(hub);
                    loop {
                        match rx.try_recv() {
                            Ok(batch) => {
                                self.deliver(&batch).await?;
                            }
                            Err(broadcast::error::TryRecvError::Empty) => break,
                            Err(broadcast::error::TryRecvError::Lagged(_)) => return Ok(()),
                            Err(broadcast::error::TryRecvError::Closed) => {
                                return Err(closed().into());
                            }
                        }
                    }
                    self.last = self.last.max(published);
                    self.send(Event::Progress { revision: self.last }).await?;
                    progress_at = Instant::now() + self.progress_interval;
                }
            }
        }
    }

    /// Delivers the matching events of a batch. Returns whether any was sent.
    async fn deliver(&mut self, batch: &[Event]) -> Result<bool, Stop> {
        let mut sent = false;
        for event in batch {
            let revision = event.revision();
            if revision <= self.last {
                continue;
            }
            if event.key().is_some_and(|key| selects(&self.target, key)) {
                self.send(event.clone()).await?;
                sent = true;
            }
            self.last = revision;
        }
        Ok(sent)
    }
}
