//! `coxswain-control-plane`: the control plane binary. It runs the API server over the
//! embedded store (or etcd), writes the admin kubeconfig once serving, then runs the
//! controller-manager (under the `kube-controller-manager` Lease) and the scheduler (under
//! the `kube-scheduler` Lease) as clients of that API server, and stops gracefully on
//! SIGTERM or Ctrl-C: the components stop and release their Leases before the server stops.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Parser;
use coxswain_apiserver::{ApiServer, ServerConfig, admin_kubeconfig};
use coxswain_controllers::{Config as ControllerConfig, Context as ControllerContext};
use coxswain_runtime::leader::{LeaderConfig, default_identity};
use coxswain_scheduler::{Scheduler, SchedulerConfig};
use coxswain_store::{Compactor, CompactorConfig, EmbeddedConfig, EtcdConfig, StoreConfig};
use prometheus_client::registry::Registry;
use tokio::sync::watch;
use tracing::{error, info, warn};

/// Coxswain's control plane.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Where the embedded store and the admin kubeconfig live.
    #[arg(long, env = "COXSWAIN_DATA_DIR", default_value = "/var/lib/coxswain")]
    data_dir: PathBuf,
    /// Address the API server listens on (plain HTTP; keep it on loopback).
    #[arg(long, env = "COXSWAIN_LISTEN", default_value = "127.0.0.1:6443")]
    listen: SocketAddr,
    /// etcd client URLs, comma-separated; without them the embedded store is used.
    #[arg(long, env = "COXSWAIN_ETCD_ENDPOINTS", value_delimiter = ',')]
    etcd_endpoints: Vec<String>,
    /// The range Service cluster IPs are allocated from.
    #[arg(long, default_value = "10.96.0.0/12")]
    service_cidr: String,
    /// Log as JSON lines instead of text.
    #[arg(long)]
    log_json: bool,
    /// Controllers to run, upstream-style: `*` is every controller, `name` enables one,
    /// `-name` disables one (e.g. `*,-job`); `-*` runs none.
    #[arg(long, default_value = "*", allow_hyphen_values = true)]
    controllers: String,
    /// Do not run the scheduler.
    #[arg(long)]
    disable_scheduler: bool,
    /// Run the controller-manager and the scheduler only while holding their Leases
    /// (`--leader-elect=false` for a single control plane that never shares the cluster).
    #[arg(long, default_value_t = true, num_args = 0..=1, default_missing_value = "true", action = clap::ArgAction::Set)]
    leader_elect: bool,
    /// The range node IPAM gives each node's pod CIDR from.
    #[arg(long, default_value = "10.244.0.0/16")]
    cluster_cidr: String,
    /// Prefix length of each node's pod CIDR.
    #[arg(long, default_value_t = 24)]
    node_cidr_mask_size: u8,
    /// How long a node's Lease may go unrenewed before the node is marked Unknown and
    /// tainted unreachable (`40s`, `500ms`, `2m`; a bare number is seconds).
    #[arg(long, default_value = "40s", value_parser = parse_duration)]
    node_monitor_grace_period: Duration,
    /// How long pods stay on an unreachable or not-ready node when they do not tolerate
    /// its taint themselves.
    #[arg(long, default_value_t = 300)]
    default_toleration_seconds: i64,
    /// Where the controller-manager's and the scheduler's `/metrics` are served.
    #[arg(long, default_value = "127.0.0.1:10257")]
    components_metrics_listen: SocketAddr,
}

/// Parses `40s`, `500ms`, `2m`, `1h` or a bare number of seconds.
fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let n: f64 = number
        .parse()
        .map_err(|_| format!("{s:?} is not a duration (e.g. 40s, 500ms, 2m)"))?;
    let seconds = match unit {
        "" | "s" => n,
        "ms" => n / 1000.0,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        other => return Err(format!("unknown duration unit {other:?} in {s:?}")),
    };
    Duration::try_from_secs_f64(seconds).map_err(|e| format!("{s:?}: {e}"))
}

/// The client a control-plane component uses to reach the API server. One function per
/// process so that each component can be given its own identity (client certificate,
/// token) once the API server authenticates; today it is plain HTTP on the listen address.
fn component_client(addr: SocketAddr, component: &str) -> Result<kube::Client> {
    let url = format!("http://{addr}");
    let mut config = kube::Config::new(
        url.parse()
            .with_context(|| format!("the API server URL {url} for {component}"))?,
    );
    config.default_namespace = "default".to_owned();
    // Watches stay open for minutes; the API server ends them itself.
    config.read_timeout = Some(Duration::from_secs(330));
    kube::Client::try_from(config).with_context(|| format!("build the API client of {component}"))
}

/// Metrics of the components: the controller-manager's registry, and the scheduler's, which
/// is replaced each time a new scheduler starts (one per leadership term).
#[derive(Clone, Default)]
struct ComponentMetrics {
    controllers: Arc<Mutex<Option<Registry>>>,
    scheduler: Arc<Mutex<Option<Registry>>>,
}

impl ComponentMetrics {
    fn encode(&self) -> String {
        let mut out = String::new();
        for registry in [&self.controllers, &self.scheduler] {
            let guard = registry.lock().unwrap_or_else(|e| e.into_inner());
            let Some(registry) = guard.as_ref() else { continue };
            let mut text = String::new();
            if prometheus_client::encoding::text::encode(&mut text, registry).is_ok() {
                out.push_str(text.trim_end().trim_end_matches("# EOF").trim_end());
                out.push('\n');
            }
        }
        out.push_str("# EOF\n");
        out
    }
}

async fn serve_metrics(
    addr: SocketAddr,
    metrics: ComponentMetrics,
    mut stop: watch::Receiver<bool>,
) -> Result<()> {
    use axum::http::header;
    let app = axum::Router::new()
        .route(
            "/metrics",
            axum::routing::get(move || {
                let metrics = metrics.clone();
                async move {
                    (
                        [(
                            header::CONTENT_TYPE,
                            "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        )],
                        metrics.encode(),
                    )
                }
            }),
        )
        .route("/healthz", axum::routing::get(|| async { "ok" }));
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("listen for component metrics on {addr}"))?;
    info!(%addr, "serving controller-manager and scheduler metrics");
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            let _ = stop.wait_for(|s| *s).await;
        })
        .await
        .context("serve component metrics")
}

/// Runs `work` under the Lease `lease` (or directly when leader election is off) until
/// `stop` is set.
async fn run_component<W, F>(
    client: kube::Client,
    lease: &str,
    leader_elect: bool,
    stop: watch::Receiver<bool>,
    work: W,
    on_leading: impl Fn(bool),
) where
    W: FnMut() -> F,
    F: std::future::Future<Output = ()>,
{
    let stopped = {
        let mut stop = stop.clone();
        async move {
            let _ = stop.wait_for(|s| *s).await;
        }
    };
    if leader_elect {
        let config = LeaderConfig::new(lease, default_identity());
        coxswain_controllers::run_leader_elected(client, config, stopped, work, on_leading).await;
    } else {
        let mut work = work;
        on_leading(true);
        tokio::select! {
            () = stopped => {}
            () = work() => warn!(component = lease, "component stopped"),
        }
    }
}

fn init_logging(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

async fn shutdown_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGTERM; only Ctrl-C stops the server");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => info!("SIGTERM received, shutting down"),
        _ = tokio::signal::ctrl_c() => info!("interrupt received, shutting down"),
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    init_logging(args.log_json);
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("create the data directory {}", args.data_dir.display()))?;
    let store_config = if args.etcd_endpoints.is_empty() {
        StoreConfig::Embedded(EmbeddedConfig::new(args.data_dir.join("store.redb")))
    } else {
        // Store keys already start with /registry/, so the etcd prefix is the root.
        StoreConfig::Etcd(EtcdConfig::new(args.etcd_endpoints.clone()).prefix("/"))
    };
    let store = store_config.open().await.context("open the store")?;
    let _compactor = Compactor::spawn(Arc::clone(&store), CompactorConfig::default());
    let config = ServerConfig {
        service_cidr: args.service_cidr.clone(),
        ..ServerConfig::default()
    };
    let server = ApiServer::new(store, config)
        .await
        .context("start the API server")?;
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("listen on {}", args.listen))?;
    let addr = listener
        .local_addr()
        .context("read the listening address")?;
    let kubeconfig = args.data_dir.join("admin.kubeconfig");
    std::fs::write(&kubeconfig, admin_kubeconfig(&format!("http://{addr}")))
        .with_context(|| format!("write {}", kubeconfig.display()))?;
    info!(%addr, kubeconfig = %kubeconfig.display(), "serving the Kubernetes API");
    let enabled = coxswain_controllers::enabled_controllers(std::slice::from_ref(&args.controllers))
        .context("--controllers")?;

    // Components stop first (releasing their Leases), then the API server.
    let (stop_components, components_stopped) = watch::channel(false);
    let (stop_server, server_stopped) = tokio::sync::oneshot::channel::<()>();
    let server_task = tokio::spawn(async move {
        server
            .serve(listener, async {
                let _ = server_stopped.await;
            })
            .await
    });

    let metrics = ComponentMetrics::default();
    let mut components = tokio::task::JoinSet::new();
    if !enabled.is_empty() {
        let client = component_client(addr, "kube-controller-manager")?;
        let ctx = ControllerContext::new(
            client.clone(),
            ControllerConfig {
                cluster_cidr: args.cluster_cidr.clone(),
                node_cidr_mask_size: args.node_cidr_mask_size,
                node_monitor_grace_period: args.node_monitor_grace_period,
                default_toleration_seconds: args.default_toleration_seconds,
                ..ControllerConfig::default()
            },
        );
        let mut registry = Registry::default();
        ctx.metrics().register(registry.sub_registry_with_prefix("coxswain"));
        coxswain_controllers::workloads::register_metrics(&mut registry);
        *metrics.controllers.lock().unwrap_or_else(|e| e.into_inner()) = Some(registry);
        let stop = components_stopped.clone();
        let leader_elect = args.leader_elect;
        components.spawn(async move {
            let leading = ctx.metrics().clone();
            run_component(
                client,
                "kube-controller-manager",
                leader_elect,
                stop,
                || {
                    let ctx = ctx.clone();
                    let enabled = enabled.clone();
                    async move { coxswain_controllers::run(ctx, &enabled, std::future::pending()).await }
                },
                move |l| leading.set_leader(l),
            )
            .await;
            info!("controller-manager stopped");
        });
    } else {
        info!("no controller enabled");
    }
    if !args.disable_scheduler {
        let client = component_client(addr, "kube-scheduler")?;
        let stop = components_stopped.clone();
        let leader_elect = args.leader_elect;
        let registry = metrics.scheduler.clone();
        components.spawn(async move {
            run_component(
                client.clone(),
                "kube-scheduler",
                leader_elect,
                stop,
                || {
                    let scheduler = Scheduler::new(client.clone(), SchedulerConfig::default());
                    let mut fresh = Registry::default();
                    scheduler.register_metrics(&mut fresh);
                    *registry.lock().unwrap_or_else(|e| e.into_inner()) = Some(fresh);
                    async move {
                        if let Err(e) = scheduler.run().await {
                            error!(error = %e, "scheduler failed");
                        }
                    }
                },
                |_| {},
            )
            .await;
            info!("scheduler stopped");
        });
    }
    let metrics_addr = args.components_metrics_listen;
    let metrics_stop = components_stopped.clone();
    let metrics_task = tokio::spawn(async move {
        // The API keeps being served without it: a busy port is not fatal.
        if let Err(e) = serve_metrics(metrics_addr, metrics, metrics_stop).await {
            warn!(error = format!("{e:#}"), "component metrics are not served");
        }
    });

    shutdown_signal().await;
    let _ = stop_components.send(true);
    while components.join_next().await.is_some() {}
    let _ = metrics_task.await;
    let _ = stop_server.send(());
    server_task
        .await
        .context("the API server task panicked")?
        .context("serve the API")?;
    info!("stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        let cases = [
            ("40s", Some(Duration::from_secs(40))),
            ("500ms", Some(Duration::from_millis(500))),
            ("2m", Some(Duration::from_secs(120))),
            ("1.5s", Some(Duration::from_millis(1500))),
            ("7", Some(Duration::from_secs(7))),
            ("1h", Some(Duration::from_secs(3600))),
            ("5d", None),
            ("s", None),
        ];
        for (text, want) in cases {
            assert_eq!(parse_duration(text).ok(), want, "{text}");
        }
    }

    #[test]
    fn flags() {
        let args = Args::try_parse_from(["cp", "--controllers", "*,-job", "--leader-elect=false"]).unwrap();
        assert_eq!(args.controllers, "*,-job");
        assert!(!args.leader_elect);
        let args = Args::try_parse_from(["cp", "--leader-elect"]).unwrap();
        assert!(args.leader_elect);
        let args = Args::try_parse_from(["cp"]).unwrap();
        assert!(args.leader_elect && !args.disable_scheduler);
        assert_eq!(args.node_monitor_grace_period, Duration::from_secs(40));
    }
}
