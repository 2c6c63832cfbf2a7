//! The API server: configuration, shared state, the router with its layers, and serving.

use std::future::Future;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use coxswain_store::Store;
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::info;

use crate::allocator::{Allocator, Ipv4Cidr};
use crate::metrics::Metrics;
use crate::registry::Registry;
use crate::status::ApiError;
use crate::security::authz::Authorizer;
use crate::security::{self, Security};
use crate::watch_cache::{CacheConfig, WatchCaches};
use crate::{discovery, handlers, kubernetes_service, namespaces, openapi, request_info};

/// The largest request body accepted (larger ones get 413): 3 MiB, as kube-apiserver.
pub const MAX_BODY_BYTES: usize = 3 * 1024 * 1024;

/// Errors starting the API server.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A configuration value is unusable.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The built-in objects (namespaces, default RBAC policy) could not be created.
    #[error("failed to bootstrap the cluster's built-in objects: {0}")]
    Bootstrap(#[source] ApiError),
    /// TLS could not be set up.
    #[error("TLS: {0}")]
    Tls(String),
}

/// How the API server behaves.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// The range Service cluster IPs are allocated from (`10.96.0.0/12`).
    pub service_cidr: String,
    /// The range node ports are allocated from.
    pub node_ports: (u16, u16),
    /// Request bodies larger than this are refused with 413.
    pub max_body_bytes: usize,
    /// How often watches that allow bookmarks get one.
    pub bookmark_interval: Duration,
    /// How long a watch lasts when the client gives no `timeoutSeconds`.
    pub default_watch_timeout: Duration,
    /// Watch cache tuning.
    pub watch_cache_events: usize,
    /// Events buffered per watcher before it is closed as too slow.
    pub watcher_buffer: usize,
    /// The address the `kubernetes` Service's endpoints list for this server
    /// (`--advertise-address`); `None`: the address it listens on (or, listening on all
    /// addresses, the host's address towards its default route).
    pub advertise_address: Option<IpAddr>,
    /// How often the `kubernetes` Service and its endpoints are reconciled and this server's
    /// Lease renewed (upstream's `--endpoint-reconciler-interval`, 10 s).
    pub endpoint_reconcile_interval: Duration,
    /// How long this server's Lease lasts unrenewed before the others drop its address
    /// (upstream's master lease TTL, 15 s).
    pub endpoint_lease_ttl: Duration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            service_cidr: "10.96.0.0/12".to_owned(),
            node_ports: (30000, 32767),
            max_body_bytes: MAX_BODY_BYTES,
            bookmark_interval: Duration::from_secs(10),
            default_watch_timeout: Duration::from_secs(1800),
            watch_cache_events: 10_000,
            watcher_buffer: 10_000,
            advertise_address: None,
            endpoint_reconcile_interval: Duration::from_secs(10),
            endpoint_lease_ttl: Duration::from_secs(15),
        }
    }
}

/// What every handler shares.
#[derive(Debug)]
pub(crate) struct ApiState {
    pub store: Arc<dyn Store>,
    pub registry: Registry,
    pub caches: WatchCaches,
    pub config: ServerConfig,
    pub allocator: Allocator,
    pub metrics: Metrics,
    pub shutdown: watch::Receiver<bool>,
    pub security: Arc<Security>,
    pub authorizer: Authorizer,
    /// Serializes the quota checks of each namespace (`security::resourcequota`).
    pub quota_locks: security::resourcequota::NamespaceLocks,
}

/// The Kubernetes API server over a store.
#[derive(Debug)]
pub struct ApiServer {
    state: Arc<ApiState>,
    shutdown: watch::Sender<bool>,
}

impl ApiServer {
    /// Builds the server over `store` with the front door `security`, and creates the
    /// built-in namespaces and the default RBAC policy if missing.
    pub async fn new(
        store: Arc<dyn Store>,
        config: ServerConfig,
        security: Security,
    ) -> Result<ApiServer, Error> {
        let cidr: Ipv4Cidr = config.service_cidr.parse().map_err(Error::Config)?;
        if config.node_ports.0 > config.node_ports.1 {
            return Err(Error::Config("the node port range is empty".to_owned()));
        }
        if config.endpoint_lease_ttl < config.endpoint_reconcile_interval {
            return Err(Error::Config(
                "the endpoint lease TTL must be at least the endpoint reconcile interval".to_owned(),
            ));
        }
        let (shutdown, shutdown_rx) = watch::channel(false);
        let caches = WatchCaches::new(
            store.clone(),
            CacheConfig {
                ring: config.watch_cache_events,
                broadcast: config.watcher_buffer,
            },
        );
        let state = Arc::new(ApiState {
            allocator: Allocator::new(store.clone(), cidr, config.node_ports),
            store,
            registry: Registry::builtin(),
            caches,
            config,
            metrics: Metrics::new(),
            shutdown: shutdown_rx,
            security: Arc::new(security),
            authorizer: Authorizer::default(),
            quota_locks: Default::default(),
        });
        namespaces::bootstrap(&state)
            .await
            .map_err(Error::Bootstrap)?;
        security::bootstrap::ensure_default_policy(&state)
            .await
            .map_err(Error::Bootstrap)?;
        Authorizer::spawn_watch(state.clone());
        Ok(ApiServer { state, shutdown })
    }

    /// The HTTP service. Layers, outermost first: request info (parses what the request is
    /// about into a `RequestInfo` extension), metrics, authentication (a `UserInfo`
    /// extension or 401), authorization (403 unless allowed), then the routes, whose
    /// handlers run admission (namespace lifecycle, defaulting, validation) before writing.
    fn router(&self) -> Router {
        let state = self.state.clone();
        let not_allowed = || async { ApiError::MethodNotAllowed };
        Router::new()
            .route("/version", get(version).fallback(not_allowed))
            .route("/healthz", get(health).fallback(not_allowed))
            .route("/livez", get(health).fallback(not_allowed))
            .route("/readyz", get(health).fallback(not_allowed))
            .route("/metrics", get(metrics).fallback(not_allowed))
            .route(
                "/.well-known/openid-configuration",
                get(|State(state): State<Arc<ApiState>>| async move {
                    security::tokens::openid_configuration(&state)
                })
                .fallback(not_allowed),
            )
            .route(
                "/openid/v1/jwks",
                get(|State(state): State<Arc<ApiState>>| async move { security::tokens::jwks(&state) })
                    .fallback(not_allowed),
            )
            .route("/api", get(discovery::api).fallback(not_allowed))
            .route("/apis", get(discovery::apis).fallback(not_allowed))
            .route("/openapi/v2", get(openapi::v2).fallback(not_allowed))
            .route("/openapi/v3", get(openapi::v3_index).fallback(not_allowed))
            .route(
                "/openapi/v3/{*path}",
                get(openapi::v3_document).fallback(not_allowed),
            )
            .fallback(handlers::dispatch)
            .with_state(state.clone())
            .layer(middleware::from_fn_with_state(state.clone(), security::authz::layer))
            .layer(middleware::from_fn_with_state(state.clone(), security::authn::layer))
            .layer(middleware::from_fn_with_state(state, crate::metrics::layer))
            .layer(middleware::from_fn(request_info::layer))
    }

    /// Serves HTTPS on `listener` until `shutdown` completes, then ends open watches and
    /// returns once in-flight requests have finished. While serving, it keeps the
    /// `default/kubernetes` Service and lists itself in its endpoints (on the listener's
    /// port); on shutdown it removes itself from them.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let addr = listener.local_addr()?;
        let config = security::tls::server_config(&self.state.security)
            .map_err(std::io::Error::other)?;
        info!(%addr, "API server serving HTTPS");
        let router = self.router();
        let stop = self.shutdown.clone();
        let settings = kubernetes_service::Settings {
            address: kubernetes_service::advertise_address(self.state.config.advertise_address, addr.ip()),
            port: addr.port(),
            identity: format!("kube-apiserver-{}", uuid::Uuid::new_v4()),
            cluster_ip: IpAddr::V4(self.state.allocator.kubernetes_ip()),
            interval: self.state.config.endpoint_reconcile_interval,
            lease_ttl: self.state.config.endpoint_lease_ttl,
        };
        let reconciler = kubernetes_service::Reconciler::start(self.state.clone(), settings);
        security::tls::serve(
            listener,
            config,
            router,
            self.state.metrics.tls_handshake_failures(),
            async move {
                shutdown.await;
                reconciler.stop().await;
                let _ = stop.send(true);
            },
        )
        .await
    }

    /// A kubeconfig for the cluster admin (`kubernetes-admin` in `system:masters`) with a
    /// fresh client certificate, for a server reached at `url`.
    pub fn admin_kubeconfig(&self, url: &str) -> Result<String, coxswain_auth::pki::PkiError> {
        use coxswain_auth::authn::SYSTEM_MASTERS;
        use coxswain_auth::policy::ADMIN_USER;
        self.state
            .security
            .kubeconfig(url, ADMIN_USER, &[SYSTEM_MASTERS])
    }

    /// The front door's certificates and tokens (renewal, kubeconfigs), shared.
    pub fn security_handle(&self) -> Arc<Security> {
        self.state.security.clone()
    }

    /// Ends every open watch (as shutdown does), without stopping the server.
    pub fn close_watches(&self) {
        let _ = self.shutdown.send(true);
    }
}

async fn version() -> Response {
    crate::codec::json_response(
        StatusCode::OK,
        &json!({
            "major": "1",
            "minor": "37",
            "emulationMajor": "1",
            "emulationMinor": "37",
            "minCompatibilityMajor": "1",
            "minCompatibilityMinor": "36",
            "gitVersion": concat!("v1.37.0-coxswain.", env!("CARGO_PKG_VERSION")),
            "gitCommit": "",
            "gitTreeState": "clean",
            "buildDate": "",
            "goVersion": "",
            "compiler": "rustc",
            "platform": format!("{}/{}", std::env::consts::OS, std::env::consts::ARCH),
        }),
    )
}

async fn health() -> &'static str {
    "ok"
}

async fn metrics(State(state): State<Arc<ApiState>>) -> Response {
    let mut response = state.metrics.encode().into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
    );
    response
}
