//! The kubelet's Prometheus metrics, registered into the agent's registry.

use prometheus_client::{
    metrics::{counter::Counter, gauge::Gauge, histogram::{Histogram, exponential_buckets}},
    registry::Registry,
};

/// The kubelet's metrics.
#[derive(Debug, Clone)]
pub struct KubeletMetrics {
    /// Seconds from a pod's worker start to its first Ready status.
    pub pod_start_seconds: Histogram,
    /// Pods with a worker.
    pub pods: Gauge,
    /// Seconds per relist of the runtime state.
    pub relist_seconds: Histogram,
    /// Images imported through the agent.
    pub images_imported: Counter,
}

impl Default for KubeletMetrics {
    fn default() -> Self {
        KubeletMetrics {
            // 10 ms .. ~80 s.
            pod_start_seconds: Histogram::new(exponential_buckets(0.01, 2.0, 14)),
            pods: Gauge::default(),
            // 1 ms .. ~4 s.
            relist_seconds: Histogram::new(exponential_buckets(0.001, 2.0, 12)),
            images_imported: Counter::default(),
        }
    }
}

impl KubeletMetrics {
    /// Registers every metric under `coxswain_kubelet_*`.
    pub fn register(&self, registry: &mut Registry) {
        let sub = registry.sub_registry_with_prefix("coxswain_kubelet");
        sub.register(
            "pod_start_duration_seconds",
            "Time from a pod reaching this node to its first Ready status",
            self.pod_start_seconds.clone(),
        );
        sub.register("pods", "Pods this kubelet manages", self.pods.clone());
        sub.register(
            "relist_duration_seconds",
            "Time to list the runtime's sandboxes and containers",
            self.relist_seconds.clone(),
        );
        sub.register(
            "images_imported",
            "Image archives imported through the agent",
            self.images_imported.clone(),
        );
    }
}
