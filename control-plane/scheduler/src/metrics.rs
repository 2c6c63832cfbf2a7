//! Prometheus metrics of the scheduler (names follow upstream's `scheduler_*`).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct ResultLabel {
    /// `scheduled`, `unschedulable` or `error`.
    pub result: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct QueueLabel {
    /// `active`, `backoff`, `unschedulable` or `in_flight`.
    pub queue: &'static str,
}

/// The scheduler's metrics; clones share the values.
#[derive(Debug, Clone)]
pub(crate) struct Metrics {
    pub attempts: Family<ResultLabel, Counter>,
    pub e2e_latency: Histogram,
    pub algorithm_latency: Histogram,
    pub pending: Family<QueueLabel, Gauge>,
    pub binds_in_flight: Gauge,
    pub events_dropped: Counter,
    pub preemption_victims: Counter,
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics {
            attempts: Family::default(),
            // 1 ms .. ~65 s
            e2e_latency: Histogram::new(exponential_buckets(0.001, 2.0, 17)),
            // 10 µs .. ~0.3 s
            algorithm_latency: Histogram::new(exponential_buckets(0.000_01, 2.0, 15)),
            pending: Family::default(),
            binds_in_flight: Gauge::default(),
            events_dropped: Counter::default(),
            preemption_victims: Counter::default(),
        }
    }
}

impl Metrics {
    pub fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("scheduler");
        r.register(
            "schedule_attempts",
            "Scheduling attempts by result (scheduled, unschedulable, error)",
            self.attempts.clone(),
        );
        r.register(
            "e2e_scheduling_duration_seconds",
            "From the scheduler first seeing a pod to its binding succeeding",
            self.e2e_latency.clone(),
        );
        r.register(
            "scheduling_algorithm_duration_seconds",
            "Filtering and scoring of one pod",
            self.algorithm_latency.clone(),
        );
        r.register(
            "pending_pods",
            "Pods waiting, by queue (active, backoff, unschedulable, in_flight)",
            self.pending.clone(),
        );
        r.register(
            "binds_in_flight",
            "Bindings sent and not yet answered",
            self.binds_in_flight.clone(),
        );
        r.register(
            "events_dropped",
            "Events not written because the event buffer was full",
            self.events_dropped.clone(),
        );
        r.register(
            "preemption_victims",
            "Pods deleted to make room for higher-priority pods",
            self.preemption_victims.clone(),
        );
    }

    pub fn attempt(&self, result: &'static str) {
        self.attempts.get_or_create(&ResultLabel { result }).inc();
    }
}
