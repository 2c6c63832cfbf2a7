//! Prometheus metrics: request counts and latencies by verb, resource and code.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::request_info::RequestInfo;
use crate::server::ApiState;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    verb: String,
    group: String,
    resource: String,
    subresource: String,
    code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LatencyLabels {
    verb: String,
    group: String,
    resource: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WatchLabels {
    group: String,
    resource: String,
}

fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

/// The API server's metrics.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    latency: Family<LatencyLabels, Histogram, fn() -> Histogram>,
    watchers: Family<WatchLabels, Gauge>,
    authentication: Family<ResultLabels, Counter>,
    authorization: Family<ResultLabels, Counter>,
    tls_handshake_failures: Counter,
    rbac_rebuilds: Counter,
}

impl Metrics {
    /// Registers every metric.
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("apiserver");
        let requests = Family::<RequestLabels, Counter>::default();
        let latency: Family<LatencyLabels, Histogram, fn() -> Histogram> =
            Family::new_with_constructor(latency_histogram);
        let watchers = Family::<WatchLabels, Gauge>::default();
        registry.register(
            "request",
            "Requests served, by verb, group, resource, subresource and HTTP code",
            requests.clone(),
        );
        registry.register(
            "request_duration_seconds",
            "Time to the response's headers, by verb, group and resource (watches: time to start)",
            latency.clone(),
        );
        registry.register(
            "registered_watchers",
            "Open watches, by group and resource",
            watchers.clone(),
        );
        let authentication = Family::<ResultLabels, Counter>::default();
        registry.register(
            "authentication_attempts",
            "Requests by how they authenticated: certificate, token, bootstrap_token, anonymous, or failure",
            authentication.clone(),
        );
        let authorization = Family::<ResultLabels, Counter>::default();
        registry.register(
            "authorization_decisions",
            "Authorization decisions: allowed or forbidden",
            authorization.clone(),
        );
        let tls_handshake_failures = Counter::default();
        registry.register(
            "tls_handshake_failures",
            "TLS handshakes that failed or timed out (untrusted client certificates included)",
            tls_handshake_failures.clone(),
        );
        let rbac_rebuilds = Counter::default();
        registry.register(
            "rbac_policy_rebuilds",
            "Times the RBAC snapshot was rebuilt from the store",
            rbac_rebuilds.clone(),
        );
        Metrics {
            registry,
            requests,
            latency,
            watchers,
            authentication,
            authorization,
            tls_handshake_failures,
            rbac_rebuilds,
        }
    }

    /// The metrics in OpenMetrics text.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }

    /// Counts a request's authentication outcome.
    pub(crate) fn authenticated(&self, result: &str) {
        self.authentication
            .get_or_create(&ResultLabels {
                result: result.to_owned(),
            })
            .inc();
    }

    /// Counts an authorization decision.
    pub(crate) fn authorized(&self, allowed: bool) {
        self.authorization
            .get_or_create(&ResultLabels {
                result: if allowed { "allowed" } else { "forbidden" }.to_owned(),
            })
            .inc();
    }

    /// The counter of failed TLS handshakes (shared with connection tasks).
    pub(crate) fn tls_handshake_failures(&self) -> Counter {
        self.tls_handshake_failures.clone()
    }

    /// Counts a rebuild of the RBAC snapshot.
    pub(crate) fn rbac_rebuilt(&self) {
        self.rbac_rebuilds.inc();
    }

    /// Counts an open watch until the returned guard is dropped.
    pub(crate) fn watcher(&self, group: &str, resource: &str) -> WatcherGuard {
        let gauge = self
            .watchers
            .get_or_create(&WatchLabels {
                group: group.to_owned(),
                resource: resource.to_owned(),
            })
            .clone();
        gauge.inc();
        WatcherGuard(gauge)
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

/// Decrements the open-watch gauge when dropped.
#[derive(Debug)]
pub(crate) struct WatcherGuard(Gauge);

impl Drop for WatcherGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// The metrics layer: counts and times every request by its [`RequestInfo`].
pub async fn layer(State(state): State<Arc<ApiState>>, request: Request, next: Next) -> Response {
    let info = request.extensions().get::<RequestInfo>().cloned();
    let start = Instant::now();
    let response = next.run(request).await;
    let elapsed = start.elapsed().as_secs_f64();
    let info = info.unwrap_or_default();
    let (resource, group) = if info.is_resource_request {
        (info.resource.clone(), info.api_group.clone())
    } else {
        (String::new(), String::new())
    };
    state
        .metrics
        .requests
        .get_or_create(&RequestLabels {
            verb: info.verb.to_uppercase(),
            group: group.clone(),
            resource: resource.clone(),
            subresource: info.subresource.clone().unwrap_or_default(),
            code: response.status().as_u16().to_string(),
        })
        .inc();
    state
        .metrics
        .latency
        .get_or_create(&LatencyLabels {
            verb: info.verb.to_uppercase(),
            group,
            resource,
        })
        .observe(elapsed);
    response
}
