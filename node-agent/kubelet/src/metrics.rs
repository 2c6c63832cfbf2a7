//! The kubelet's Prometheus metrics, registered into the agent's registry.

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{
        counter::Counter,
        family::Family,
        gauge::Gauge,
        histogram::{Histogram, exponential_buckets},
    },
    registry::Registry,
};

/// `operation_type` of a CRI call, as upstream's `kubelet_runtime_operations_duration_seconds`
/// names them (`run_podsandbox`, `create_container`, `image_status`, ...).
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct OperationLabels {
    /// The CRI operation.
    pub operation_type: &'static str,
}

/// `phase` of a pod's first start (see [`KubeletMetrics::pod_start_phase_seconds`]).
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct PhaseLabels {
    /// The step.
    pub phase: &'static str,
}

/// Histograms of one label set, all with the fine latency buckets.
pub type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// 1 ms .. ~57 s, each bucket 1.5 times the one before: fine enough to tell 30 ms from 50 ms.
fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 1.5, 28))
}

/// The kubelet's metrics.
#[derive(Debug, Clone)]
pub struct KubeletMetrics {
    /// Seconds from a pod's worker start to its first Ready status.
    pub pod_start_seconds: Histogram,
    /// Seconds each step of a pod's first start took, by `phase`: `worker_start` (watch event
    /// to the first sync), `sandbox` (RunPodSandbox with CNI, and PodSandboxStatus), `tokens`,
    /// `volumes`, `image` (ImageStatus), `create_container`, `start_container`, `observe`
    /// (listing what the runtime has), `status` (the status write), `total` (worker start to
    /// the Ready status written).
    pub pod_start_phase_seconds: HistogramFamily<PhaseLabels>,
    /// Seconds each step of a pod's termination took, by `phase`: `containers` (preStop,
    /// StopContainer of all, in parallel), `sandboxes` (StopPodSandbox with CNI teardown,
    /// RemovePodSandbox), `api_delete` (the final delete), `total`.
    pub pod_stop_phase_seconds: HistogramFamily<PhaseLabels>,
    /// Seconds per CRI call, by `operation_type`.
    pub runtime_operations_seconds: HistogramFamily<OperationLabels>,
    /// Pods with a worker.
    pub pods: Gauge,
    /// Seconds per relist of the runtime state.
    pub relist_seconds: Histogram,
    /// Images imported through the agent.
    pub images_imported: Counter,
    /// Events written to the API server.
    pub events_recorded: Counter,
    /// Events dropped because the queue to the API server was full.
    pub events_dropped: Counter,
}

impl Default for KubeletMetrics {
    fn default() -> Self {
        KubeletMetrics {
            // 10 ms .. ~80 s.
            pod_start_seconds: Histogram::new(exponential_buckets(0.01, 2.0, 14)),
            pod_start_phase_seconds: Family::new_with_constructor(latency_histogram),
            pod_stop_phase_seconds: Family::new_with_constructor(latency_histogram),
            runtime_operations_seconds: Family::new_with_constructor(latency_histogram),
            pods: Gauge::default(),
            // 1 ms .. ~4 s.
            relist_seconds: Histogram::new(exponential_buckets(0.001, 2.0, 12)),
            images_imported: Counter::default(),
            events_recorded: Counter::default(),
            events_dropped: Counter::default(),
        }
    }
}

impl KubeletMetrics {
    /// Records one step of a pod's first start.
    pub fn start_phase(&self, phase: &'static str, seconds: f64) {
        self.pod_start_phase_seconds
            .get_or_create(&PhaseLabels { phase })
            .observe(seconds);
    }

    /// Records one step of a pod's termination.
    pub fn stop_phase(&self, phase: &'static str, seconds: f64) {
        self.pod_stop_phase_seconds.get_or_create(&PhaseLabels { phase }).observe(seconds);
    }

    /// Registers every metric under `coxswain_kubelet_*`.
    pub fn register(&self, registry: &mut Registry) {
        let sub = registry.sub_registry_with_prefix("coxswain_kubelet");
        sub.register(
            "pod_start_duration_seconds",
            "Time from a pod reaching this node to its first Ready status",
            self.pod_start_seconds.clone(),
        );
        sub.register(
            "pod_start_phase_duration_seconds",
            "Time each step of a pod's first start took",
            self.pod_start_phase_seconds.clone(),
        );
        sub.register(
            "pod_stop_phase_duration_seconds",
            "Time each step of a pod's termination took",
            self.pod_stop_phase_seconds.clone(),
        );
        sub.register(
            "runtime_operations_duration_seconds",
            "Time of CRI calls, by operation",
            self.runtime_operations_seconds.clone(),
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
        sub.register(
            "events_recorded",
            "Events the kubelet wrote to the API server",
            self.events_recorded.clone(),
        );
        sub.register(
            "events_dropped",
            "Events dropped because the API server did not keep up (queue full)",
            self.events_dropped.clone(),
        );
    }
}
