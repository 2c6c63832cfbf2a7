//! Prometheus metrics shared by every controller: reconciles by outcome, reconcile latency,
//! and the depth of the work queues the controllers keep themselves.

use std::future::Future;
use std::time::Instant;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    controller: String,
    result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ControllerLabels {
    controller: String,
}

fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

/// The controller-manager's metrics. Register them in a registry with [`Metrics::register`]
/// (the daemon serves that registry), or read them with [`Metrics::encode`].
#[derive(Debug)]
pub struct Metrics {
    reconciles: Family<ResultLabels, Counter>,
    latency: Family<ControllerLabels, Histogram, fn() -> Histogram>,
    queue_depth: Family<ControllerLabels, Gauge>,
    leader: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// Fresh, unregistered metrics.
    pub fn new() -> Metrics {
        Metrics {
            reconciles: Family::default(),
            latency: Family::new_with_constructor(latency_histogram),
            queue_depth: Family::default(),
            leader: Gauge::default(),
        }
    }

    /// Adds every metric to `registry` (prefix them with a sub-registry if wanted).
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "controller_reconcile",
            "Reconciliations, by controller and result (success, error)",
            self.reconciles.clone(),
        );
        registry.register(
            "controller_reconcile_duration_seconds",
            "Time one reconciliation takes, by controller",
            self.latency.clone(),
        );
        registry.register(
            "controller_queue_depth",
            "Objects waiting to be processed, by controller (for the controllers that keep their own queue)",
            self.queue_depth.clone(),
        );
        registry.register(
            "controller_manager_leader",
            "1 while this controller-manager holds its Lease",
            self.leader.clone(),
        );
    }

    /// The metrics alone, in OpenMetrics text.
    pub fn encode(&self) -> String {
        let mut registry = Registry::with_prefix("coxswain");
        self.register(&mut registry);
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &registry).is_err() {
            out.clear();
        }
        out
    }

    /// Runs one reconciliation of `controller`, counting it and timing it.
    pub async fn reconcile<T, E>(
        &self,
        controller: &str,
        work: impl Future<Output = Result<T, E>>,
    ) -> Result<T, E> {
        let start = Instant::now();
        let result = work.await;
        self.latency
            .get_or_create(&ControllerLabels {
                controller: controller.to_owned(),
            })
            .observe(start.elapsed().as_secs_f64());
        self.count(controller, result.is_ok());
        result
    }

    /// Counts one reconciliation of `controller`.
    pub fn count(&self, controller: &str, ok: bool) {
        self.reconciles
            .get_or_create(&ResultLabels {
                controller: controller.to_owned(),
                result: if ok { "success" } else { "error" }.to_owned(),
            })
            .inc();
    }

    /// How many reconciliations `controller` finished with `ok`.
    pub fn reconciles(&self, controller: &str, ok: bool) -> u64 {
        self.reconciles
            .get_or_create(&ResultLabels {
                controller: controller.to_owned(),
                result: if ok { "success" } else { "error" }.to_owned(),
            })
            .get()
    }

    /// Reconciliations finished by every controller, successful or not.
    pub fn total_reconciles(&self) -> u64 {
        let text = self.encode();
        text.lines()
            .filter(|l| l.starts_with("coxswain_controller_reconcile_total{"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum()
    }

    /// Sets the queue depth of `controller`.
    pub fn set_queue_depth(&self, controller: &str, depth: usize) {
        self.queue_depth
            .get_or_create(&ControllerLabels {
                controller: controller.to_owned(),
            })
            .set(i64::try_from(depth).unwrap_or(i64::MAX));
    }

    /// Whether this manager leads (as last marked).
    pub fn is_leader(&self) -> bool {
        self.leader.get() == 1
    }

    /// Marks whether this manager leads.
    pub fn set_leader(&self, leading: bool) {
        self.leader.set(i64::from(leading));
    }
}
