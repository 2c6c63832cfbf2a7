//! The conntrack collector: deletes the entries of closed and idle flows from the pinned
//! table on its own handle, on a blocking thread, at an interval that adapts to churn
//! (halved while passes delete a quarter of the table or more, doubled while they delete
//! almost nothing), so a node with 20k new connections a second keeps room in its table
//! and an idle node scans rarely. It also deletes, as soon as the proxy reports them, the
//! entries of UDP and SCTP flows whose backend left their Service (`StaleBackend`).

use std::path::PathBuf;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::{Duration, Instant};

use coxswain_dataplane::{ConntrackGc, StaleBackend, monotonic_now_ns};
use tracing::{debug, info, warn};

use crate::metrics::ProxyMetrics;

/// Bounds of the adaptive interval.
const MIN_INTERVAL: Duration = Duration::from_secs(1);

/// Runs the collector until the process exits. `max_interval` is the longest pause
/// between passes (and the first one). Stale backends sent on the returned channel have
/// their flows deleted at once.
pub fn spawn(
    pin_dir: PathBuf,
    max_interval: Duration,
    metrics: ProxyMetrics,
) -> mpsc::Sender<Vec<StaleBackend>> {
    let (tx, rx) = mpsc::channel();
    std::thread::Builder::new()
        .name("conntrack-gc".to_owned())
        .spawn(move || run(pin_dir, max_interval, metrics, rx))
        .map(|_| ())
        .unwrap_or_else(|e| warn!(error = %e, "conntrack collector not started"));
    tx
}

fn run(
    pin_dir: PathBuf,
    max_interval: Duration,
    metrics: ProxyMetrics,
    stale: mpsc::Receiver<Vec<StaleBackend>>,
) {
    let mut gc = match ConntrackGc::open(&pin_dir) {
        Ok(gc) => gc,
        Err(e) => {
            warn!(error = %e, "conntrack collector not started: cannot open the pinned table");
            return;
        }
    };
    info!(max_interval = ?max_interval, "conntrack collector running");
    let mut interval = max_interval;
    let mut next_pass = Instant::now() + interval;
    loop {
        match stale.recv_timeout(next_pass.saturating_duration_since(Instant::now())) {
            Ok(mut backends) => {
                // Everything reported meanwhile, in one scan.
                while let Ok(more) = stale.try_recv() {
                    backends.extend(more);
                }
                match gc.flush_stale(&backends) {
                    Ok(deleted) => {
                        metrics.observe_stale_flush(deleted);
                        debug!(backends = backends.len(), deleted, "stale UDP/SCTP flows deleted");
                    }
                    Err(e) => warn!(error = %e, "failed to delete stale UDP/SCTP flows"),
                }
                if Instant::now() < next_pass {
                    continue;
                }
            }
            Err(RecvTimeoutError::Timeout) => {}
            // No proxy (or it stopped): collection goes on by the clock.
            Err(RecvTimeoutError::Disconnected) => {
                std::thread::sleep(next_pass.saturating_duration_since(Instant::now()));
            }
        }
        let started = Instant::now();
        match gc.collect(monotonic_now_ns()) {
            Ok(stats) => {
                let elapsed = started.elapsed();
                metrics.observe_gc(elapsed, &stats);
                debug!(?stats, ?elapsed, next = ?interval, "conntrack collected");
                interval = next_interval(interval, max_interval, stats.entries, stats.deleted);
            }
            Err(e) => warn!(error = %e, "conntrack collection failed"),
        }
        next_pass = Instant::now() + interval;
    }
}

/// Halve the pause after a pass that deleted at least a quarter of what it read; double it
/// (up to `max`) after one that deleted under 5%.
fn next_interval(current: Duration, max: Duration, entries: usize, deleted: usize) -> Duration {
    if entries > 0 && deleted * 4 >= entries {
        (current / 2).max(MIN_INTERVAL.min(max))
    } else if deleted * 20 < entries.max(1) {
        (current * 2).min(max)
    } else {
        current
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interval_follows_churn_within_bounds() {
        let max = Duration::from_secs(30);
        assert_eq!(next_interval(max, max, 1000, 500), Duration::from_secs(15));
        assert_eq!(next_interval(Duration::from_secs(1), max, 1000, 900), MIN_INTERVAL);
        assert_eq!(next_interval(Duration::from_secs(4), max, 1000, 10), Duration::from_secs(8));
        assert_eq!(next_interval(Duration::from_secs(20), max, 1000, 0), max);
        assert_eq!(next_interval(Duration::from_secs(8), max, 1000, 100), Duration::from_secs(8));
        assert_eq!(next_interval(Duration::from_secs(8), max, 0, 0), Duration::from_secs(16));
    }
}
