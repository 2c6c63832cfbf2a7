//! `coxswain-control-plane`: the control plane binary. Today it runs the API server over the
//! embedded store (or etcd), writes the admin kubeconfig once serving, and stops gracefully on
//! SIGTERM or Ctrl-C.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::Parser;
use coxswain_apiserver::{ApiServer, ServerConfig, admin_kubeconfig};
use coxswain_store::{Compactor, CompactorConfig, EmbeddedConfig, EtcdConfig, StoreConfig};
use tracing::info;

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
    server
        .serve(listener, shutdown_signal())
        .await
        .context("serve the API")?;
    info!("stopped");
    Ok(())
}
