//! The background compactor: drops history older than a time window, for any backend.
//!
//! Like kube-apiserver does with etcd, it remembers which revision was current at each tick and
//! compacts to the revision that was current one window ago, so readers and watchers always
//! have at least `window` of history.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::{Instant, MissedTickBehavior};
use tracing::{debug, warn};

use crate::{Error, Revision, Store};

/// The default history window: 5 minutes, kube-apiserver's compaction interval.
pub const DEFAULT_COMPACTION_WINDOW: Duration = Duration::from_secs(300);

/// How a [`Compactor`] paces itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompactorConfig {
    /// History younger than this is kept. Default [`DEFAULT_COMPACTION_WINDOW`].
    pub window: Duration,
    /// How often the current revision is sampled (and compaction attempted): the history
    /// kept is between `window` and `window + tick` long. Default `window / 10`.
    pub tick: Duration,
}

impl Default for CompactorConfig {
    fn default() -> Self {
        CompactorConfig::with_window(DEFAULT_COMPACTION_WINDOW)
    }
}

impl CompactorConfig {
    /// A configuration keeping `window` of history, sampling ten times per window.
    pub fn with_window(window: Duration) -> Self {
        CompactorConfig {
            window,
            tick: (window / 10).max(Duration::from_millis(1)),
        }
    }
}

/// A running background compactor; dropping it stops it.
#[derive(Debug)]
pub struct Compactor {
    task: JoinHandle<()>,
    compacted: watch::Receiver<Revision>,
}

impl Compactor {
    /// Starts compacting `store` on the current tokio runtime.
    pub fn spawn(store: Arc<dyn Store>, config: CompactorConfig) -> Compactor {
        let (tx, compacted) = watch::channel(0);
        let task = tokio::spawn(run(store, config, tx));
        Compactor { task, compacted }
    }

    /// The last revision this compactor compacted to (0 before the first compaction); await
    /// `changed()` on it to learn of the next one.
    pub fn compacted(&self) -> watch::Receiver<Revision> {
        self.compacted.clone()
    }
}

impl Drop for Compactor {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn run(store: Arc<dyn Store>, config: CompactorConfig, compacted: watch::Sender<Revision>) {
    let mut samples: VecDeque<(Instant, Revision)> = VecDeque::new();
    let mut last: Revision = 0;
    let mut ticker = tokio::time::interval(config.tick);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        let now = ticker.tick().await;
        match store.current_revision().await {
            Ok(revision) => samples.push_back((now, revision)),
            Err(e) => {
                warn!(error = %e, "compactor could not read the current revision");
                continue;
            }
        }
        // The newest sample at least one window old is the compaction target; older ones
        // are no longer needed.
        let mut target = None;
        while let Some(&(at, revision)) = samples.front() {
            if now.duration_since(at) < config.window {
                break;
            }
            target = Some(revision);
            samples.pop_front();
        }
        let Some(target) = target.filter(|&t| t > last) else {
            continue;
        };
        match store.compact(target).await {
            Ok(()) => {
                debug!(revision = target, "compacted history older than the window");
                last = target;
                compacted.send_replace(target);
            }
            Err(Error::Compacted { .. }) => {
                // Someone compacted further already.
                last = target;
                compacted.send_replace(target);
            }
            Err(e) => warn!(error = %e, revision = target, "compaction failed; retrying next tick"),
        }
    }
}
