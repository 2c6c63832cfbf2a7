//! The agent's HTTP endpoint: Prometheus metrics, health, and the raw
//! dataplane counters as JSON (what `coxctl dataplane` reads).

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{
    Router,
    http::{StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use coxswain_dataplane::Dataplane;
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric},
    metrics::{
        MetricType,
        counter::{ConstCounter, Counter},
        gauge::Gauge,
        histogram::{Histogram, exponential_buckets},
    },
    registry::Registry,
};

type Shared = Arc<Mutex<Dataplane>>;

/// Sync timings and map writes of the service proxy.
#[derive(Clone, Debug)]
pub struct ProxyMetrics {
    sync_seconds: Histogram,
    map_ops: Counter,
    gc_seconds: Histogram,
    gc_deleted: Counter,
    stale_deleted: Counter,
    ct_entries: Gauge,
}

impl ProxyMetrics {
    /// Records one sync that wrote `ops` map entries.
    pub fn observe(&self, elapsed: Duration, ops: usize) {
        self.sync_seconds.observe(elapsed.as_secs_f64());
        self.map_ops.inc_by(ops as u64);
    }

    /// Records one conntrack collection pass.
    pub fn observe_gc(&self, elapsed: Duration, stats: &coxswain_dataplane::GcStats) {
        self.gc_seconds.observe(elapsed.as_secs_f64());
        self.gc_deleted.inc_by(stats.deleted as u64);
        self.ct_entries
            .set(i64::try_from(stats.entries - stats.deleted).unwrap_or(i64::MAX));
    }

    /// Records the deletion of stale UDP/SCTP flows' entries.
    pub fn observe_stale_flush(&self, deleted: usize) {
        self.stale_deleted.inc_by(deleted as u64);
    }
}

/// Builds the router for `/metrics` and `/healthz`,
/// and the proxy metrics it exports.
/// `extend` registers more metrics (the kubelet's).
pub fn router_with(dataplane: Shared, extend: impl FnOnce(&mut Registry)) -> (Router, ProxyMetrics) {
    let mut registry = Registry::default();
    extend(&mut registry);
    registry.register_collector(Box::new(IfaceCounterCollector(dataplane.clone())));
    let proxy = ProxyMetrics {
        // 10 µs .. ~5 s.
        sync_seconds: Histogram::new(exponential_buckets(1e-5, 4.0, 10)),
        map_ops: Counter::default(),
        // 100 µs .. ~100 s.
        gc_seconds: Histogram::new(exponential_buckets(1e-4, 4.0, 11)),
        gc_deleted: Counter::default(),
        stale_deleted: Counter::default(),
        ct_entries: Gauge::default(),
    };
    registry.register(
        "coxswain_proxy_sync_duration_seconds",
        "Time to apply one change (or the initial sync) to the service maps",
        proxy.sync_seconds.clone(),
    );
    registry.register(
        "coxswain_proxy_map_ops",
        "Service map entries written or deleted",
        proxy.map_ops.clone(),
    );
    registry.register(
        "coxswain_conntrack_gc_duration_seconds",
        "Time of one conntrack collection pass",
        proxy.gc_seconds.clone(),
    );
    registry.register(
        "coxswain_conntrack_gc_deleted_entries",
        "Conntrack entries of closed or idle flows deleted by the collector",
        proxy.gc_deleted.clone(),
    );
    registry.register(
        "coxswain_conntrack_stale_deleted_entries",
        "Conntrack entries of UDP/SCTP flows deleted because their backend left the Service",
        proxy.stale_deleted.clone(),
    );
    registry.register(
        "coxswain_conntrack_entries",
        "Conntrack entries left after the last collection pass",
        proxy.ct_entries.clone(),
    );
    let registry = Arc::new(registry);
    let router = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/metrics",
            get(move || {
                let registry = registry.clone();
                async move { encode_registry(&registry) }
            }),
        );
    (router, proxy)
}

fn encode_registry(registry: &Registry) -> Response {
    let mut body = String::new();
    match prometheus_client::encoding::text::encode(&mut body, registry) {
        Ok(()) => (
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            body,
        )
            .into_response(),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("failed to encode metrics: {e}"),
        )
            .into_response(),
    }
}

/// Reads the kernel counters at scrape time.
#[derive(Debug)]
struct IfaceCounterCollector(Shared);

impl Collector for IfaceCounterCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let (counters, xdp) = {
            let dataplane = self.0.lock().unwrap_or_else(|e| e.into_inner());
            // A failed map read yields no samples rather than a failed scrape.
            (
                dataplane.iface_counters().unwrap_or_default(),
                dataplane.nodeport_xdp_stats().unwrap_or_default(),
            )
        };
        let names = crate::api::iface_names();
        let labels = |ifindex: &u32, hook: &str| {
            vec![
                (
                    "iface",
                    names
                        .get(ifindex)
                        .cloned()
                        .unwrap_or_else(|| ifindex.to_string()),
                ),
                ("hook", hook.to_owned()),
            ]
        };
        let mut packets = encoder.encode_descriptor(
            "coxswain_iface_packets",
            "Packets seen by Coxswain's eBPF programs, per interface and hook",
            None,
            MetricType::Counter,
        )?;
        for ((ifindex, hook), c) in &counters {
            let labels = labels(ifindex, hook.as_str());
            ConstCounter::new(c.packets).encode(packets.encode_family(&labels)?)?;
        }
        let mut bytes = encoder.encode_descriptor(
            "coxswain_iface_bytes",
            "Bytes seen by Coxswain's eBPF programs, per interface and hook",
            None,
            MetricType::Counter,
        )?;
        for ((ifindex, hook), c) in &counters {
            let labels = labels(ifindex, hook.as_str());
            ConstCounter::new(c.bytes).encode(bytes.encode_family(&labels)?)?;
        }
        let mut xdp_packets = encoder.encode_descriptor(
            "coxswain_nodeport_xdp_packets",
            "Service packets seen by NodePort acceleration at XDP, by verdict: local (translated, passed up to a pod of this node), tx (translated and sent back out of the uplink), pass (left to the tc program)",
            None,
            MetricType::Counter,
        )?;
        for (verdict, c) in &xdp {
            let labels = [("verdict", coxswain_ebpf_common::nodeport_verdict::name(*verdict))];
            ConstCounter::new(c.packets).encode(xdp_packets.encode_family(&labels)?)?;
        }
        Ok(())
    }
}
