//! `coxswain-control-plane`: the control plane binary. It creates the cluster CA at first
//! start (`DATA/pki`), serves the API over HTTPS only, over the embedded store (or etcd),
//! writes the admin kubeconfig (a `system:masters` client certificate) once serving, then runs the
//! controller-manager (under the `kube-controller-manager` Lease) and the scheduler (under
//! the `kube-scheduler` Lease) as clients of that API server, and stops gracefully on
//! SIGTERM or Ctrl-C: the components stop and release their Leases before the server stops.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Parser;
use coxswain_apiserver::{ApiServer, Security, ServerConfig, SubjectNames};
use coxswain_auth::authn::{SYSTEM_MASTERS, TokenFile};
use coxswain_auth::policy::{ADMIN_USER, CONTROLLER_MANAGER_USER, SCHEDULER_USER};
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
    /// Address the API server listens on (HTTPS).
    #[arg(long, env = "COXSWAIN_LISTEN", default_value = "127.0.0.1:6443")]
    listen: SocketAddr,
    /// The address the `kubernetes` Service's endpoints list for this API server (pods reach
    /// it through the Service): by default the `--listen` address, or, when listening on all
    /// addresses, the host's address towards its default route.
    #[arg(long)]
    advertise_address: Option<std::net::IpAddr>,
    /// Extra names (DNS names or addresses) for the serving certificate, besides loopback,
    /// the listen address and the `kubernetes` Service's names; repeatable.
    #[arg(long = "tls-san", value_delimiter = ',')]
    tls_sans: Vec<String>,
    /// Static bearer tokens: CSV lines `token,user,uid[,"group1,group2"]`.
    #[arg(long)]
    token_auth_file: Option<PathBuf>,
    /// An `EncryptionConfiguration` (apiserver.config.k8s.io/v1): the resources it names
    /// (e.g. secrets) are encrypted at rest with AES-GCM.
    #[arg(long)]
    encryption_provider_config: Option<PathBuf>,
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
    /// How often the resourcequota controller recounts every quota's usage even without a
    /// change (`5m`, `30s`).
    #[arg(long, default_value = "5m", value_parser = parse_duration)]
    resource_quota_sync_period: Duration,
    /// Where the controller-manager's and the scheduler's `/metrics` are served.
    #[arg(long, default_value = "127.0.0.1:10257")]
    components_metrics_listen: SocketAddr,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Prints a kubeconfig for a user with a fresh client certificate signed by the cluster
    /// CA in `DATA/pki` (as `kubeadm kubeconfig user`), e.g. a node's
    /// `--user system:node:n2 --group system:nodes`.
    Kubeconfig {
        /// The user name (the certificate's CN).
        #[arg(long)]
        user: String,
        /// Groups (the certificate's O), at most 2.
        #[arg(long = "group")]
        groups: Vec<String>,
        /// The API server URL the kubeconfig points at.
        #[arg(long)]
        server: String,
        /// Write here (mode 0600) instead of standard output.
        #[arg(long, short)]
        output: Option<PathBuf>,
    },
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

/// The client a control-plane component uses to reach the API server: its own identity (a
/// client certificate for `user`, issued at each start and never written to disk).
async fn component_client(security: &Security, url: &str, user: &str) -> Result<kube::Client> {
    let text = security
        .kubeconfig(url, user, &[])
        .with_context(|| format!("issue the client certificate of {user}"))?;
    let kubeconfig = kube::config::Kubeconfig::from_yaml(&text)
        .with_context(|| format!("read the kubeconfig of {user}"))?;
    let mut config = kube::Config::from_custom_kubeconfig(
        kubeconfig,
        &kube::config::KubeConfigOptions::default(),
    )
    .await
    .with_context(|| format!("the client configuration of {user}"))?;
    config.default_namespace = "default".to_owned();
    // Watches stay open for minutes; the API server ends them itself.
    config.read_timeout = Some(Duration::from_secs(330));
    kube::Client::try_from(config).with_context(|| format!("build the API client of {user}"))
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

/// The names the serving certificate covers: loopback, the `kubernetes` Service (its
/// ClusterIP is the first address of the service CIDR), the listen and advertised addresses
/// and `--tls-san`.
fn subject_names(args: &Args) -> Result<SubjectNames> {
    let (base, _) = args
        .service_cidr
        .split_once('/')
        .with_context(|| format!("--service-cidr {:?} is not a CIDR", args.service_cidr))?;
    let base: std::net::Ipv4Addr = base
        .parse()
        .with_context(|| format!("--service-cidr {:?} is not an IPv4 CIDR", args.service_cidr))?;
    let first = std::net::Ipv4Addr::from(u32::from(base) + 1);
    let mut names = SubjectNames::loopback(Some(first.into()));
    let listen = args.listen.ip().to_string();
    names.extend(std::iter::once(listen.as_str()));
    if let Some(advertised) = args.advertise_address.map(|ip| ip.to_string()) {
        names.extend(std::iter::once(advertised.as_str()));
    }
    names.extend(args.tls_sans.iter().map(String::as_str));
    Ok(names)
}

fn pki_dir(args: &Args) -> PathBuf {
    args.data_dir.join("pki")
}

/// Writes a file only its owner can read (it holds a private key).
fn write_private(path: &std::path::Path, contents: &str) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("write {}", tmp.display()))?;
    file.write_all(contents.as_bytes())
        .and_then(|()| file.sync_all())
        .with_context(|| format!("write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("write {}", path.display()))
}

fn issue_kubeconfig(args: &Args, user: &str, groups: &[String], server: &str, output: Option<&PathBuf>) -> Result<()> {
    let ca_dir = pki_dir(args);
    if !ca_dir.join("ca.crt").exists() {
        anyhow::bail!(
            "no cluster CA in {}: start the control plane with --data-dir {} first",
            ca_dir.display(),
            args.data_dir.display()
        );
    }
    let ca = coxswain_auth::pki::CertificateAuthority::load_or_create(&ca_dir)
        .context("load the cluster CA")?;
    let groups: Vec<&str> = groups.iter().map(String::as_str).collect();
    let issued = ca
        .issue(&coxswain_auth::pki::CertRequest::client(user, &groups))
        .context("--group")?;
    let text = coxswain_auth::kubeconfig::render(
        server,
        ca.cert_pem(),
        user,
        &coxswain_auth::kubeconfig::Credential::ClientCertificate {
            cert_pem: issued.cert_pem,
            key_pem: issued.key_pem,
        },
    );
    match output {
        Some(path) => write_private(path, &text),
        None => {
            print!("{text}");
            Ok(())
        }
    }
}

/// Signs nodes' certificate signing requests with the cluster CA this process holds.
#[derive(Debug)]
struct CaSigner(Arc<Security>);

impl coxswain_controllers::csr::CsrSigner for CaSigner {
    fn sign_client(&self, csr_pem: &str) -> Result<String, String> {
        let usage = coxswain_auth::pki::CertRequest {
            client: true,
            ..coxswain_auth::pki::CertRequest::default()
        };
        self.0.ca().sign_csr(csr_pem, &usage).map_err(|e| e.to_string())
    }

    fn subject(&self, csr_pem: &str) -> Result<(String, Vec<String>), String> {
        coxswain_auth::pki::csr_subject(csr_pem).map_err(|e| e.to_string())
    }

    fn sign_serving(&self, csr_pem: &str) -> Result<String, String> {
        let usage = coxswain_auth::pki::CertRequest {
            server: true,
            ..coxswain_auth::pki::CertRequest::default()
        };
        self.0.ca().sign_csr(csr_pem, &usage).map_err(|e| e.to_string())
    }

    fn names(&self, csr_pem: &str) -> Result<coxswain_controllers::csr::RequestedNames, String> {
        let info = coxswain_auth::pki::csr_info(csr_pem).map_err(|e| e.to_string())?;
        Ok(coxswain_controllers::csr::RequestedNames {
            dns: info.dns_names,
            ips: info.ip_addresses,
            other: info.emails.into_iter().chain(info.uris).collect(),
        })
    }
}

/// Checks the serving certificate every hour and renews it when less than 30% of its
/// lifetime is left; new connections get the new certificate.
fn spawn_renewal(security: Arc<Security>, mut stop: watch::Receiver<bool>) {
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = stop.wait_for(|s| *s) => return,
                () = tokio::time::sleep(Duration::from_secs(3600)) => {}
            }
            if let Err(e) = security.renew_if_due() {
                error!(error = %e, "renewing the serving certificate failed; retrying in an hour");
            }
        }
    });
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    if let Some(Command::Kubeconfig { user, groups, server, output }) = &args.command {
        return issue_kubeconfig(&args, user, groups, server, output.as_ref());
    }
    init_logging(args.log_json);
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("create the data directory {}", args.data_dir.display()))?;
    let store_config = if args.etcd_endpoints.is_empty() {
        StoreConfig::Embedded(EmbeddedConfig::new(args.data_dir.join("store.redb")))
    } else {
        // Store keys already start with /registry/, so the etcd prefix is the root.
        StoreConfig::Etcd(EtcdConfig::new(args.etcd_endpoints.clone()).prefix("/"))
    };
    let mut security = Security::load_or_create(&pki_dir(&args), subject_names(&args)?)
        .context("set up the cluster PKI")?;
    if let Some(path) = &args.token_auth_file {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("read --token-auth-file {}", path.display()))?;
        security.tokens = TokenFile::parse(&text)
            .map_err(|e| anyhow::anyhow!("--token-auth-file {}: {e}", path.display()))?;
    }
    info!(ca_hash = %security.ca().public_key_hash(), "cluster CA");
    let encryption = match &args.encryption_provider_config {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("read --encryption-provider-config {}", path.display()))?;
            Some(
                coxswain_apiserver::parse_encryption_config(&text)
                    .map_err(|e| anyhow::anyhow!("--encryption-provider-config {}: {e}", path.display()))?,
            )
        }
        None => None,
    };
    let store = store_config.open().await.context("open the store")?;
    let store: Arc<dyn coxswain_store::Store> = match encryption {
        Some(config) => {
            info!(rules = config.rules.len(), "encrypting configured resources at rest");
            Arc::new(coxswain_store::EncryptedStore::new(store, config))
        }
        None => store,
    };
    let _compactor = Compactor::spawn(Arc::clone(&store), CompactorConfig::default());
    let config = ServerConfig {
        service_cidr: args.service_cidr.clone(),
        advertise_address: args.advertise_address,
        ..ServerConfig::default()
    };
    let server = ApiServer::new(store, config, security)
        .await
        .context("start the API server")?;
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("listen on {}", args.listen))?;
    let addr = listener
        .local_addr()
        .context("read the listening address")?;
    let url = format!("https://{addr}");
    let security = server.security_handle();
    let kubeconfig = args.data_dir.join("admin.kubeconfig");
    let admin = security
        .kubeconfig(&url, ADMIN_USER, &[SYSTEM_MASTERS])
        .context("issue the admin client certificate")?;
    write_private(&kubeconfig, &admin)?;
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

    spawn_renewal(security.clone(), components_stopped.clone());
    let metrics = ComponentMetrics::default();
    let mut components = tokio::task::JoinSet::new();
    if !enabled.is_empty() {
        let client = component_client(&security, &url, CONTROLLER_MANAGER_USER).await?;
        let ctx = ControllerContext::new(
            client.clone(),
            ControllerConfig {
                cluster_cidr: args.cluster_cidr.clone(),
                node_cidr_mask_size: args.node_cidr_mask_size,
                node_monitor_grace_period: args.node_monitor_grace_period,
                default_toleration_seconds: args.default_toleration_seconds,
                quota_resync_period: args.resource_quota_sync_period,
                csr_signer: Some(Arc::new(CaSigner(security.clone()))),
                root_ca_cert: Some(security.ca().cert_pem().to_owned()),
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
        let client = component_client(&security, &url, SCHEDULER_USER).await?;
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
        assert_eq!(args.resource_quota_sync_period, Duration::from_secs(300));
    }

    #[test]
    fn the_serving_certificate_names_the_kubernetes_service() {
        let ip = |s: &str| s.parse::<std::net::IpAddr>().unwrap();
        let args = Args::try_parse_from(["cp", "--listen", "0.0.0.0:6443", "--advertise-address", "10.250.0.1"]).unwrap();
        let names = subject_names(&args).unwrap();
        assert!(names.ips.contains(&ip("10.96.0.1")), "the first Service address: {:?}", names.ips);
        assert!(names.ips.contains(&ip("10.250.0.1")), "the advertised address: {:?}", names.ips);
        assert!(!names.ips.iter().any(|i| i.is_unspecified()));
        for dns in ["kubernetes", "kubernetes.default", "kubernetes.default.svc", "kubernetes.default.svc.cluster.local"] {
            assert!(names.dns.iter().any(|d| d == dns), "{dns}: {:?}", names.dns);
        }
        let args = Args::try_parse_from(["cp", "--service-cidr", "10.112.0.0/12"]).unwrap();
        assert!(subject_names(&args).unwrap().ips.contains(&ip("10.112.0.1")));
    }
}
