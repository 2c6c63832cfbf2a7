//! The kubelet half of the agent: its flags, starting it (with a managed
//! containerd or an existing socket), the image import endpoint, and the
//! kubelet-only mode (no eBPF dataplane).

use std::{net::{IpAddr, SocketAddr}, path::PathBuf, sync::Arc};

use anyhow::{Context, Result};
use axum::{
    Json, Router,
    body::Bytes,
    extract::{DefaultBodyLimit, State},
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::post,
};
use coxswain_agent_api::{IMAGES_IMPORT_PATH, ImportedImages};
use coxswain_kubelet::{Kubelet, KubeletConfig, Runtime};
use tokio::sync::oneshot;
use tracing::info;

/// The kubelet's flags.
#[derive(Debug, Clone, clap::Args)]
pub struct KubeletArgs {
    /// Run the kubelet: register this node and run the pods bound to it.
    #[arg(long)]
    pub kubelet: bool,

    /// Instead of running: remove every pod sandbox of this node through
    /// CRI (containers, their network and addresses), stop the managed
    /// containerd, and exit (as `kubeadm reset`; give the same kubelet
    /// flags as when running).
    #[arg(long)]
    pub reset: bool,

    /// Use the containerd serving this socket instead of starting one.
    #[arg(long, value_name = "PATH", conflicts_with = "manage_containerd")]
    pub containerd_socket: Option<PathBuf>,

    /// Start and own a containerd (the default without --containerd-socket).
    #[arg(long)]
    pub manage_containerd: bool,

    /// The kubelet's data directory (pod volumes, logs, IPAM state).
    #[arg(long, value_name = "DIR", default_value = "/var/lib/coxswain/kubelet")]
    pub kubelet_root_dir: PathBuf,

    /// Root of the managed containerd (default: <kubelet-root-dir>/containerd).
    #[arg(long, value_name = "DIR")]
    pub containerd_root: Option<PathBuf>,

    /// State directory of the managed containerd, holding its socket
    /// (default: /run/coxswain/<node>/containerd).
    #[arg(long, value_name = "DIR")]
    pub containerd_state: Option<PathBuf>,

    /// The managed containerd's binary.
    #[arg(long, value_name = "PATH", default_value = "containerd")]
    pub containerd_bin: PathBuf,

    /// `ctr` (image import, exec sessions).
    #[arg(long, value_name = "PATH", default_value = "ctr")]
    pub ctr: PathBuf,

    /// Pod CIDR to use when the Node has no spec.podCIDR (no controller
    /// assigns one yet).
    #[arg(long, value_name = "CIDR")]
    pub pod_cidr: Option<String>,

    /// Directory of static pod manifests, mirrored into the API.
    #[arg(long, value_name = "DIR")]
    pub static_pod_dir: Option<PathBuf>,

    /// Directory of OCI image archives (`*.tar`) imported at start.
    #[arg(long, value_name = "DIR")]
    pub image_preload_dir: Option<PathBuf>,

    /// The CA (PEM) client certificates of the kubelet endpoint must chain to
    /// (default: the cluster CA of --kubeconfig), as upstream's `clientCAFile`.
    #[arg(long, value_name = "PATH")]
    pub client_ca_file: Option<PathBuf>,

    /// Port of the kubelet endpoint (logs, exec) the API server proxies to.
    #[arg(long, default_value_t = 10250)]
    pub kubelet_port: u16,

    /// The node's InternalIP (default: the address of the default route).
    #[arg(long, value_name = "IP")]
    pub node_ip: Option<IpAddr>,

    /// Name of the CNI bridge for pods.
    #[arg(long, value_name = "NAME", default_value = "cox0")]
    pub cni_bridge: String,

    /// Masquerade pod traffic leaving the node (off by default: turn it on
    /// only where the node's uplink is yours to NAT).
    #[arg(long)]
    pub cni_ip_masq: bool,

    /// Most pods this node runs.
    #[arg(long, default_value_t = 110)]
    pub max_pods: u32,
}

/// Starts the kubelet if `--kubelet` was given.
pub async fn start(
    args: &KubeletArgs,
    kubeconfig: Option<&PathBuf>,
    node_name: &str,
    sandbox_network_hook: Option<coxswain_kubelet::SandboxNetworkHook>,
) -> Result<Option<Kubelet>> {
    if !args.kubelet {
        return Ok(None);
    }
    let kubeconfig = kubeconfig.context("--kubelet needs --kubeconfig (or $KUBECONFIG)")?;
    let kubeconfig_file = kube::config::Kubeconfig::read_from(kubeconfig)
        .with_context(|| format!("failed to read --kubeconfig {}", kubeconfig.display()))?;
    let config = kube::Config::from_custom_kubeconfig(kubeconfig_file, &kube::config::KubeConfigOptions::default())
        .await
        .with_context(|| format!("failed to use --kubeconfig {}", kubeconfig.display()))?;
    let client_ca_der = match &args.client_ca_file {
        Some(path) => {
            let pem = std::fs::read_to_string(path).with_context(|| format!("failed to read --client-ca-file {}", path.display()))?;
            coxswain_auth::pki::first_cert_der(&pem)
                .with_context(|| format!("--client-ca-file {}", path.display()))?
                .to_vec()
        }
        None => config
            .root_cert
            .as_ref()
            .and_then(|certs| certs.first().cloned())
            .with_context(|| format!("--kubeconfig {} names no cluster CA (certificate-authority-data): give --client-ca-file", kubeconfig.display()))?,
    };
    let client = kube::Client::try_from(config).context("failed to build the API client")?;
    let node_ip = args
        .node_ip
        .map(|ip| ip.to_string())
        .unwrap_or_else(coxswain_kubelet::default_node_ip);
    let listen: SocketAddr = format!("{node_ip}:{}", args.kubelet_port)
        .parse()
        .with_context(|| format!("invalid --node-ip {node_ip}"))?;
    let root = args.kubelet_root_dir.clone();
    let cni_conf_dir = root.join("cni/net.d");
    let sandbox_image = coxswain_oci_image_pause();
    let runtime = runtime(args, &root, &cni_conf_dir, node_name);
    let config = KubeletConfig {
        node_name: node_name.to_owned(),
        node_ip,
        root_dir: root,
        cni_conf_dir,
        cni_bridge: args.cni_bridge.clone(),
        cni_ip_masq: args.cni_ip_masq,
        pod_cidr_fallback: args.pod_cidr.clone(),
        static_pod_dir: args.static_pod_dir.clone(),
        image_preload_dir: args.image_preload_dir.clone(),
        listen,
        // The serving certificate is kept next to the node's kubeconfig.
        pki_dir: kubeconfig.parent().map(PathBuf::from).unwrap_or_else(|| PathBuf::from(".")),
        client_ca_der,
        ctr: args.ctr.clone(),
        sandbox_image,
        max_pods: args.max_pods,
        sandbox_network_hook,
    };
    let kubelet = Kubelet::start(config, runtime, client).await.context("failed to start the kubelet")?;
    Ok(Some(kubelet))
}

/// The container runtime `args` describe: an existing socket or a
/// containerd of our own.
fn runtime(args: &KubeletArgs, root: &std::path::Path, cni_conf_dir: &std::path::Path, node_name: &str) -> Runtime {
    match &args.containerd_socket {
        Some(socket) => Runtime::Existing(socket.clone()),
        None => {
            let state = args
                .containerd_state
                .clone()
                .unwrap_or_else(|| PathBuf::from(format!("/run/coxswain/{node_name}/containerd")));
            let mut layout = coxswain_kubelet::managed_layout(
                &args.containerd_root.clone().unwrap_or_else(|| root.join("containerd")),
                &state,
                &state.join("containerd.sock"),
                cni_conf_dir,
                &coxswain_oci_image_pause(),
            );
            layout.binary = args.containerd_bin.clone();
            Runtime::Managed(layout)
        }
    }
}

/// `--reset` (as `kubeadm reset`): stops and removes every pod sandbox of
/// this node through CRI (containers are killed, CNI releases their
/// addresses and interfaces), then stops the managed containerd. Run after
/// the agent itself stopped; the API objects are left alone.
pub async fn reset(args: &KubeletArgs, node_name: &str) -> Result<()> {
    let root = args.kubelet_root_dir.clone();
    let cni_conf_dir = root.join("cni/net.d");
    let (_containerd, socket) = match runtime(args, &root, &cni_conf_dir, node_name) {
        Runtime::Existing(socket) => (None, socket),
        Runtime::Managed(layout) => {
            let socket = layout.socket.clone();
            let containerd = coxswain_kubelet::ManagedContainerd::start(layout, std::time::Duration::from_secs(30))
                .await
                .context("failed to start containerd for the reset")?;
            (Some(containerd), socket)
        }
    };
    let cri = coxswain_kubelet::Cri::connect(&socket)
        .await
        .with_context(|| format!("failed to reach containerd at {}", socket.display()))?;
    let sandboxes = cri.list_sandboxes(Default::default()).await.context("failed to list pod sandboxes")?;
    info!(count = sandboxes.len(), "removing pod sandboxes");
    let mut failed = 0;
    for sandbox in sandboxes {
        let name = sandbox.metadata.as_ref().map(|m| format!("{}/{}", m.namespace, m.name)).unwrap_or_default();
        let stopped = cri.stop_sandbox(&sandbox.id).await;
        let removed = cri.remove_sandbox(&sandbox.id).await;
        if let Err(e) = stopped.and(removed) {
            failed += 1;
            tracing::warn!(pod = %name, sandbox = %sandbox.id, error = %e, "could not remove the sandbox");
        }
    }
    anyhow::ensure!(failed == 0, "{failed} pod sandboxes could not be removed");
    Ok(())
}

fn coxswain_oci_image_pause() -> String {
    coxswain_oci_image::PAUSE_IMAGE.to_owned()
}

/// A running kubelet task; `stop` ends it (containerd stops, pods keep running).
#[derive(Debug)]
pub struct KubeletTask {
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Result<()>>,
}

impl KubeletTask {
    /// Stops the kubelet and waits for it.
    pub async fn stop(self) -> Result<()> {
        let _ = self.stop.send(());
        self.task.await.context("kubelet panicked")?
    }
}

/// Runs the kubelet in a task.
pub fn spawn(kubelet: Kubelet) -> KubeletTask {
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        kubelet
            .run(async {
                let _ = stopped.await;
            })
            .await
            .context("kubelet failed")
    });
    KubeletTask { stop, task }
}

/// The image import route (empty without a kubelet).
pub fn routes(kubelet: Option<Arc<ImportHandle>>) -> Router {
    match kubelet {
        None => Router::new(),
        Some(handle) => Router::new()
            .route(IMAGES_IMPORT_PATH, post(import))
            .layer(DefaultBodyLimit::max(1 << 30))
            .with_state(handle),
    }
}

/// What the import endpoint needs from the kubelet.
#[derive(Debug)]
pub struct ImportHandle {
    /// The kubelet (shared with its task through this handle's clone of the runtime).
    pub importer: coxswain_kubelet::ImageImporter,
}

async fn import(State(handle): State<Arc<ImportHandle>>, body: Bytes) -> Response {
    if body.is_empty() {
        return (StatusCode::BAD_REQUEST, "the request body must be an image archive (tar)").into_response();
    }
    match handle.importer.import(&body).await {
        Ok(images) => {
            info!(?images, "imported an image archive");
            Json(ImportedImages { images }).into_response()
        }
        Err(e) => (StatusCode::UNPROCESSABLE_ENTITY, e.to_string()).into_response(),
    }
}

/// Kubelet-only mode: no dataplane; `/metrics`, `/healthz` and the image
/// import endpoint on `metrics_addr`.
pub async fn run_alone(kubelet: Kubelet, metrics_addr: SocketAddr, shutdown: impl std::future::Future<Output = ()> + Send + 'static) -> Result<()> {
    let mut registry = prometheus_client::registry::Registry::default();
    kubelet.register_metrics(&mut registry);
    let registry = Arc::new(registry);
    let importer = Arc::new(ImportHandle { importer: kubelet.image_importer() });
    let app = Router::new()
        .route("/healthz", axum::routing::get(|| async { "ok" }))
        .route(
            "/metrics",
            axum::routing::get(move || {
                let registry = registry.clone();
                async move {
                    let mut body = String::new();
                    match prometheus_client::encoding::text::encode(&mut body, &registry) {
                        Ok(()) => ([("content-type", "application/openmetrics-text; version=1.0.0; charset=utf-8")], body).into_response(),
                        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
                    }
                }
            }),
        )
        .merge(routes(Some(importer)));
    let listener = tokio::net::TcpListener::bind(metrics_addr)
        .await
        .with_context(|| format!("failed to listen on --metrics-addr {metrics_addr}"))?;
    info!(addr = %metrics_addr, "kubelet-only mode: serving /metrics, /healthz and {IMAGES_IMPORT_PATH}");
    let task = spawn(kubelet);
    let (done_tx, done_rx) = oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async {
                let _ = done_rx.await;
            })
            .await
    });
    shutdown.await;
    let _ = done_tx.send(());
    let result = task.stop().await;
    let _ = server.await;
    result
}
