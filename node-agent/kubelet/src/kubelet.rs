//! The kubelet: starts (or connects to) containerd, registers the node and
//! keeps its Lease and status, writes the CNI config for the pod CIDR, runs a
//! worker per pod bound to the node, relists the runtime so that what
//! happens inside containerd reaches the workers, mirrors static pods, and
//! serves the logs and exec endpoint.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Node, Pod, Secret, Service};
use kube::{
    Api,
    runtime::{WatchStreamExt, reflector, watcher},
};
use prometheus_client::registry::Registry;
use tokio::sync::Notify;
use tracing::{info, warn};

use crate::{
    cni::Ipv4Cidr,
    containerd::{ContainerdLayout, ManagedContainerd},
    cri::{Cri, LABEL_POD_UID},
    metrics::KubeletMetrics,
    node::{NodeFacts, WarnOnce},
    pod_worker::WorkerHandle,
    spec::ObjectSource,
};

/// Errors of starting the kubelet.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// containerd could not be started.
    #[error(transparent)]
    Containerd(#[from] crate::containerd::Error),
    /// The runtime could not be reached.
    #[error(transparent)]
    Cri(#[from] crate::cri::Error),
    /// An image could not be prepared.
    #[error(transparent)]
    Image(#[from] crate::images::Error),
    /// The node could not be registered.
    #[error(transparent)]
    Node(#[from] crate::node::Error),
    /// The CNI config could not be written.
    #[error(transparent)]
    Cni(#[from] crate::cni::Error),
    /// The cluster CA given for client certificates is unusable.
    #[error("failed to read the client CA: {0}")]
    ClientCa(String),
}

/// Result of the kubelet.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Which containerd to use.
#[derive(Debug, Clone)]
pub enum Runtime {
    /// Start and own one with this layout.
    Managed(ContainerdLayout),
    /// Use the one serving this socket.
    Existing(PathBuf),
}

/// The kubelet's configuration.
#[derive(Debug, Clone)]
pub struct KubeletConfig {
    /// This node's name.
    pub node_name: String,
    /// This node's InternalIP.
    pub node_ip: String,
    /// Data directory: pod volumes, logs, image staging, IPAM state.
    pub root_dir: PathBuf,
    /// Where the CNI conflist is written (containerd's `conf_dir`).
    pub cni_conf_dir: PathBuf,
    /// Bridge device name for pods.
    pub cni_bridge: String,
    /// Masquerade pod traffic leaving the node.
    pub cni_ip_masq: bool,
    /// Pod CIDR to use when the Node has none.
    pub pod_cidr_fallback: Option<String>,
    /// Static pod manifests.
    pub static_pod_dir: Option<PathBuf>,
    /// OCI archives imported at start.
    pub image_preload_dir: Option<PathBuf>,
    /// Where the kubelet endpoint listens (HTTPS).
    pub listen: SocketAddr,
    /// Where the serving certificate is kept (`kubelet-server-current.pem`; the agent uses
    /// the directory of the node's kubeconfig).
    pub pki_dir: PathBuf,
    /// The cluster CA (DER): client certificates must chain to it, and so must the
    /// kubelet's own serving certificate.
    pub client_ca_der: Vec<u8>,
    /// The `ctr` binary (image import, exec sessions).
    pub ctr: PathBuf,
    /// The sandbox image.
    pub sandbox_image: String,
    /// Maximum pods (capacity).
    pub max_pods: u32,
    /// Called once a new sandbox has its network and before any of the
    /// pod's containers starts (the node agent attaches its Service program
    /// to the pod's interface there).
    pub sandbox_network_hook: Option<SandboxNetworkHook>,
}

/// See [`KubeletConfig::sandbox_network_hook`]. Runs on a blocking thread.
#[derive(Clone)]
pub struct SandboxNetworkHook(pub Arc<dyn Fn() + Send + Sync>);

impl std::fmt::Debug for SandboxNetworkHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SandboxNetworkHook")
    }
}

/// State shared by the kubelet's tasks.
pub(crate) struct Shared {
    pub config: KubeletConfig,
    pub client: kube::Client,
    pub cri: Cri,
    pub objects: Arc<dyn ObjectSource>,
    pub metrics: KubeletMetrics,
    pub node_ip: String,
    /// ServiceAccount tokens of projected volumes, requested as this node.
    pub tokens: crate::tokens::TokenManager,
    /// Events about pods and the node (never waits for the API server).
    pub events: crate::events::EventQueue,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared").field("node", &self.config.node_name).finish()
    }
}

impl Shared {
    /// `<root>/pods/<uid>`.
    pub fn pod_dir(&self, uid: &str) -> PathBuf {
        self.config.root_dir.join("pods").join(uid)
    }

    /// `<root>/logs/<namespace>_<name>_<uid>`.
    pub fn pod_log_dir(&self, namespace: &str, name: &str, uid: &str) -> PathBuf {
        self.config.root_dir.join("logs").join(format!("{namespace}_{name}_{uid}"))
    }
}

/// ConfigMaps, Secrets and Services from reflector stores.
struct StoreObjects {
    config_maps: reflector::Store<ConfigMap>,
    secrets: reflector::Store<Secret>,
    services: reflector::Store<Service>,
    /// Set once the Services have been listed.
    services_listed: Arc<std::sync::atomic::AtomicBool>,
}

impl ObjectSource for StoreObjects {
    fn config_map(&self, namespace: &str, name: &str) -> Option<ConfigMap> {
        self.config_maps
            .get(&reflector::ObjectRef::new(name).within(namespace))
            .map(|o| (*o).clone())
    }

    fn secret(&self, namespace: &str, name: &str) -> Option<Secret> {
        self.secrets
            .get(&reflector::ObjectRef::new(name).within(namespace))
            .map(|o| (*o).clone())
    }

    fn services(&self) -> Option<Vec<Service>> {
        self.services_listed
            .load(std::sync::atomic::Ordering::Acquire)
            .then(|| self.services.state().iter().map(|s| (**s).clone()).collect())
    }
}

/// What the relist tells each pod worker, by pod uid.
type Wakers = Arc<Mutex<HashMap<String, Arc<crate::pod_worker::RuntimeSignal>>>>;

/// Imports image archives (OCI layout or docker-save tar) into the
/// kubelet's containerd; cheap to clone, usable after the kubelet started.
#[derive(Debug, Clone)]
pub struct ImageImporter {
    ctr: PathBuf,
    socket: PathBuf,
    staging: PathBuf,
    metrics: KubeletMetrics,
}

impl ImageImporter {
    /// Imports an archive; returns the image names it declared.
    pub async fn import(&self, bytes: &[u8]) -> Result<Vec<String>, crate::images::Error> {
        let names = crate::images::import_bytes(&self.ctr, &self.socket, &self.staging, bytes).await?;
        self.metrics.images_imported.inc();
        Ok(names)
    }
}

/// A started kubelet.
pub struct Kubelet {
    shared: Arc<Shared>,
    containerd: Option<ManagedContainerd>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl std::fmt::Debug for Kubelet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Kubelet").field("node", &self.shared.config.node_name).finish()
    }
}

impl Kubelet {
    /// Starts containerd (when managed), connects over CRI, makes sure the
    /// pause image exists and imports the preload directory.
    pub async fn start(config: KubeletConfig, runtime: Runtime, client: kube::Client) -> Result<Kubelet> {
        let (containerd, socket) = match runtime {
            Runtime::Managed(layout) => {
                let c = ManagedContainerd::start(layout, Duration::from_secs(30)).await?;
                let socket = c.socket().to_owned();
                (Some(c), socket)
            }
            Runtime::Existing(socket) => (None, socket),
        };
        let metrics = KubeletMetrics::default();
        let cri = Cri::connect(&socket).await?.with_metrics(metrics.runtime_operations_seconds.clone());
        let (name, version) = cri.version().await?;
        info!(runtime = %name, %version, socket = %socket.display(), "connected to the container runtime");
        let staging = config.root_dir.join("images");
        crate::images::ensure_pause_image(&cri, &config.ctr, &config.sandbox_image, &staging).await?;
        if let Some(dir) = &config.image_preload_dir {
            let names = crate::images::import_dir(&config.ctr, &socket, dir).await?;
            info!(images = ?names, dir = %dir.display(), "imported preloaded images");
        }

        let cms = reflector::store::Writer::<ConfigMap>::default();
        let secrets = reflector::store::Writer::<Secret>::default();
        let services = reflector::store::Writer::<Service>::default();
        let objects = StoreObjects {
            config_maps: cms.as_reader(),
            secrets: secrets.as_reader(),
            services: services.as_reader(),
            services_listed: Arc::default(),
        };
        let mut tasks = Vec::new();
        let service_api: Api<Service> = Api::all(client.clone());
        tasks.push(tokio::spawn(async move {
            reflector(services, watcher(service_api, watcher::Config::default()))
                .default_backoff()
                .for_each(|_| async {})
                .await;
        }));
        // This task is the services store's only waiter: kube-runtime's readiness wakes only
        // the last task to poll it, so every other wait goes through `listed_rx`.
        let (listed_tx, mut listed_rx) = tokio::sync::watch::channel(false);
        {
            let store = objects.services.clone();
            let listed = objects.services_listed.clone();
            tasks.push(tokio::spawn(async move {
                if store.wait_until_ready().await.is_ok() {
                    listed.store(true, std::sync::atomic::Ordering::Release);
                    let _ = listed_tx.send(true);
                }
            }));
        }
        let cm_api: Api<ConfigMap> = Api::all(client.clone());
        tasks.push(tokio::spawn(async move {
            reflector(cms, watcher(cm_api, watcher::Config::default()))
                .default_backoff()
                .for_each(|_| async {})
                .await;
        }));
        let secret_api: Api<Secret> = Api::all(client.clone());
        tasks.push(tokio::spawn(async move {
            reflector(secrets, watcher(secret_api, watcher::Config::default()))
                .default_backoff()
                .for_each(|_| async {})
                .await;
        }));
        let ready = async {
            let _ = objects.config_maps.wait_until_ready().await;
            let _ = objects.secrets.wait_until_ready().await;
            let _ = listed_rx.wait_for(|listed| *listed).await;
        };
        if tokio::time::timeout(Duration::from_secs(30), ready).await.is_err() {
            warn!("ConfigMaps, Secrets and Services are not listed yet; pods that use them wait");
        }
        let node_ip = config.node_ip.clone();
        let (events, queued) = crate::events::EventQueue::new(crate::events::QUEUE_CAPACITY, metrics.events_dropped.clone());
        let recorder = coxswain_runtime::events::Recorder::new(client.clone(), "kubelet", Some(config.node_name.clone()));
        tasks.push(crate::events::spawn_writer(queued, recorder, metrics.events_recorded.clone()));
        Ok(Kubelet {
            shared: Arc::new(Shared {
                config,
                client,
                cri: cri.clone(),
                objects: Arc::new(objects),
                metrics,
                node_ip,
                tokens: crate::tokens::TokenManager::default(),
                events,
            }),
            containerd,
            tasks,
        })
    }

    /// Registers the kubelet's metrics.
    pub fn register_metrics(&self, registry: &mut Registry) {
        self.shared.metrics.register(registry);
    }

    /// The CRI client.
    pub fn cri(&self) -> &Cri {
        &self.shared.cri
    }

    /// A handle that imports image archives into this kubelet's containerd.
    pub fn image_importer(&self) -> ImageImporter {
        ImageImporter {
            ctr: self.shared.config.ctr.clone(),
            socket: self.shared.cri.socket().to_owned(),
            staging: self.shared.config.root_dir.join("images"),
            metrics: self.shared.metrics.clone(),
        }
    }

    /// Runs until `shutdown` resolves (or a fatal error). Pods keep running
    /// when the kubelet stops; the next one adopts them.
    pub async fn run(mut self, shutdown: impl std::future::Future<Output = ()>) -> Result<()> {
        let shared = self.shared.clone();
        let ca_der = rustls::pki_types::CertificateDer::from(shared.config.client_ca_der.clone());
        coxswain_auth::pki::CertInfo::from_der(&ca_der).map_err(|e| Error::ClientCa(e.to_string()))?;
        let node = crate::node::register(
            &shared.client,
            &self.facts().await,
            shared.config.pod_cidr_fallback.as_deref(),
        )
        .await?;
        shared.events.node(&shared.config.node_name, coxswain_runtime::events::EventType::Normal, crate::events::reason::STARTING, "Starting kubelet.".into());
        let network_ready = Arc::new(Notify::new());
        let ready_flag = Arc::new(Mutex::new(false));
        self.tasks.push(tokio::spawn(node_loop(shared.clone(), node, self.facts().await, network_ready.clone(), ready_flag.clone())));
        // The endpoint serves only once it has a certificate the cluster CA signed for the
        // node's addresses (posted by the node loop above); pods start meanwhile.
        self.tasks.push(tokio::spawn(serve_endpoint(shared.clone(), ca_der)));
        // Pods on the pod network need the CNI config; wait a little for it.
        if !*ready_flag.lock().unwrap_or_else(|e| e.into_inner()) {
            let _ = tokio::time::timeout(Duration::from_secs(10), network_ready.notified()).await;
        }
        let wakers: Wakers = Arc::default();
        self.tasks.push(tokio::spawn(pod_manager(shared.clone(), wakers.clone())));
        self.tasks.push(tokio::spawn(relist_loop(shared.clone(), wakers)));
        if let Some(dir) = shared.config.static_pod_dir.clone() {
            let shared = shared.clone();
            self.tasks.push(tokio::spawn(async move {
                loop {
                    crate::static_pods::sync_mirrors(&shared.client, &dir, &shared.config.node_name).await;
                    tokio::time::sleep(Duration::from_secs(5)).await;
                }
            }));
        }
        shutdown.await;
        info!("kubelet stopping; pods keep running");
        Ok(())
    }

    async fn facts(&self) -> NodeFacts {
        let version = self
            .shared
            .cri
            .version()
            .await
            .map(|(n, v)| format!("{n}://{}", v.trim_start_matches('v')))
            .unwrap_or_default();
        NodeFacts {
            name: self.shared.config.node_name.clone(),
            ip: self.shared.node_ip.clone(),
            kubelet_port: self.shared.config.listen.port(),
            runtime_version: version,
            max_pods: self.shared.config.max_pods,
        }
    }
}

impl Drop for Kubelet {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
        // `containerd` drops after this: it stops, containers keep running.
        let _ = self.containerd.as_ref();
    }
}

/// Gets the serving certificate (retrying until the control plane signs one), then serves
/// the kubelet endpoint over TLS and keeps the certificate current.
async fn serve_endpoint(shared: Arc<Shared>, ca_der: rustls::pki_types::CertificateDer<'static>) {
    let manager = crate::serving_cert::ServingCertManager::new(
        shared.client.clone(),
        &shared.config.node_name,
        &shared.config.pki_dir,
        ca_der.clone(),
    );
    let mut retry = Duration::from_secs(1);
    let pair = loop {
        let got = match manager.wanted_names().await {
            Ok(names) => manager.obtain(&names).await,
            Err(e) => Err(e),
        };
        match got {
            Ok(pair) => break pair,
            Err(e) => {
                warn!(error = %e, retry_in = ?retry, "no serving certificate yet: the kubelet endpoint is not served");
                tokio::time::sleep(retry).await;
                retry = (retry * 2).min(Duration::from_secs(30));
            }
        }
    };
    let serving = match crate::serving_cert::ServingCert::new(&pair) {
        Ok(s) => Arc::new(s),
        Err(e) => {
            warn!(error = %e, "the serving certificate is unusable: the kubelet endpoint is not served");
            return;
        }
    };
    let config = match crate::server::tls_config(serving.clone(), ca_der) {
        Ok(c) => c,
        Err(e) => {
            warn!(error = %e, "the kubelet endpoint's TLS configuration failed");
            return;
        }
    };
    let renewal = tokio::spawn(manager.keep_current(serving));
    let auth = Arc::new(crate::auth::RequestAuth::new(
        shared.config.node_name.clone(),
        Arc::new(crate::auth::ApiReviewer(shared.client.clone())),
    ));
    let router = crate::server::router(
        Arc::new(crate::server::ServerState { cri: shared.cri.clone(), ctr: shared.config.ctr.clone() }),
        auth,
    );
    let addr = shared.config.listen;
    let listener = loop {
        match tokio::net::TcpListener::bind(addr).await {
            Ok(l) => break l,
            Err(e) => {
                warn!(%addr, error = %e, "cannot listen for the kubelet endpoint; retrying in 5 s");
                tokio::time::sleep(Duration::from_secs(5)).await;
            }
        }
    };
    info!(%addr, "serving the kubelet endpoint over TLS (logs, exec, attach)");
    if let Err(e) = crate::server::serve(listener, config, router, std::future::pending()).await {
        warn!(error = %e, "kubelet endpoint failed");
    }
    renewal.abort();
}

/// Lease renewals, status updates and the CNI config for the pod CIDR.
async fn node_loop(shared: Arc<Shared>, node: Node, facts: NodeFacts, network_ready: Arc<Notify>, ready_flag: Arc<Mutex<bool>>) {
    let name = shared.config.node_name.clone();
    let nodes: Api<Node> = Api::all(shared.client.clone());
    let mut node = node;
    let mut since = BTreeMap::new();
    let mut last: Option<(serde_json::Value, Instant)> = None;
    let mut last_lease: Option<Instant> = None;
    let mut warn = WarnOnce::default();
    // The conditions already told as Node events.
    let mut told = BTreeMap::new();
    loop {
        let cidr = crate::node::pod_cidr(&node, shared.config.pod_cidr_fallback.as_deref());
        let network = match cidr.as_deref().map(Ipv4Cidr::parse) {
            None => Err("network plugin not ready: the node has no pod CIDR yet (spec.podCIDR)".to_owned()),
            Some(Err(e)) => Err(e.to_string()),
            Some(Ok(cidr)) => crate::cni::write_conflist(
                &shared.config.cni_conf_dir,
                &shared.config.cni_bridge,
                cidr,
                shared.config.cni_ip_masq,
                &shared.config.root_dir.join("ipam"),
            )
            .map(|changed| {
                if changed {
                    info!(%cidr, bridge = %shared.config.cni_bridge, "wrote the CNI config");
                }
            })
            .map_err(|e| e.to_string()),
        };
        let runtime = shared.cri.version().await.map(|_| ()).map_err(|e| format!("container runtime is down: {e}"));
        let ready = runtime.and(network);
        if ready.is_ok() {
            *ready_flag.lock().unwrap_or_else(|e| e.into_inner()) = true;
            network_ready.notify_waiters();
        }
        let machine = crate::node::read_machine(&shared.config.root_dir);
        let conds = crate::node::conditions(&machine, ready);
        let status = crate::node::node_status(&facts, &machine, &conds);
        let stale = last.as_ref().is_none_or(|(s, at)| *s != status || at.elapsed() >= crate::node::STATUS_REFRESH);
        if stale {
            match crate::node::post_status(&shared.client, &name, &status, &mut since).await {
                Ok(()) => {
                    last = Some((status, Instant::now()));
                    warn.clear();
                    for reason in crate::node::condition_events(&mut told, &conds) {
                        let message = format!("Node {name} status is now: {reason}");
                        shared.events.node(&name, coxswain_runtime::events::EventType::Normal, reason, message);
                    }
                }
                Err(e) => warn.warn(e.to_string()),
            }
        }
        if last_lease.is_none_or(|t| t.elapsed() >= crate::node::LEASE_RENEW - Duration::from_millis(500)) {
            match crate::node::renew_lease(&shared.client, &node).await {
                Ok(()) => last_lease = Some(Instant::now()),
                Err(e) => warn.warn(e.to_string()),
            }
        }
        let wait = if cidr.is_none() { Duration::from_secs(1) } else { Duration::from_secs(2) };
        tokio::time::sleep(wait).await;
        match nodes.get_opt(&name).await {
            Ok(Some(n)) => node = n,
            Ok(None) => {
                // Deleted: register again.
                if let Ok(n) = crate::node::register(&shared.client, &facts, shared.config.pod_cidr_fallback.as_deref()).await {
                    node = n;
                    last = None;
                }
            }
            Err(e) => warn.warn(format!("failed to read node {name}: {e}")),
        }
    }
}

/// Watches the pods bound to this node and runs one worker per pod.
async fn pod_manager(shared: Arc<Shared>, wakers: Wakers) {
    let api: Api<Pod> = Api::all(shared.client.clone());
    let config = watcher::Config::default().fields(&format!("spec.nodeName={}", shared.config.node_name));
    let mut stream = watcher(api, config).default_backoff().boxed();
    let mut workers: HashMap<String, WorkerHandle> = HashMap::new();
    let mut listing: Option<HashSet<String>> = None;
    let mut cleaned_orphans = false;
    let upsert = |workers: &mut HashMap<String, WorkerHandle>, pod: Pod| {
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        match workers.get(&uid) {
            Some(w) if !w.task.is_finished() => {
                w.pod.send_replace(Some(pod));
            }
            _ => {
                let handle = crate::pod_worker::spawn(shared.clone(), pod);
                wakers.lock().unwrap_or_else(|e| e.into_inner()).insert(uid.clone(), handle.runtime.clone());
                workers.insert(uid, handle);
            }
        }
    };
    while let Some(event) = stream.next().await {
        match event {
            Ok(watcher::Event::Init) => listing = Some(HashSet::new()),
            Ok(watcher::Event::InitApply(pod)) => {
                if let Some(seen) = listing.as_mut() {
                    seen.insert(pod.metadata.uid.clone().unwrap_or_default());
                }
                upsert(&mut workers, pod);
            }
            Ok(watcher::Event::InitDone) => {
                let seen = listing.take().unwrap_or_default();
                for (uid, w) in &workers {
                    if !seen.contains(uid) {
                        w.pod.send_replace(None);
                    }
                }
                if !cleaned_orphans {
                    cleaned_orphans = true;
                    tokio::spawn(remove_orphans(shared.clone(), seen));
                }
            }
            Ok(watcher::Event::Apply(pod)) => upsert(&mut workers, pod),
            Ok(watcher::Event::Delete(pod)) => {
                let uid = pod.metadata.uid.clone().unwrap_or_default();
                if let Some(w) = workers.get(&uid) {
                    w.pod.send_replace(None);
                }
            }
            Err(e) => warn!(error = %e, "pod watch failed; retrying"),
        }
        workers.retain(|uid, w| {
            let keep = !w.task.is_finished();
            if !keep {
                wakers.lock().unwrap_or_else(|e| e.into_inner()).remove(uid);
            }
            keep
        });
        shared.metrics.pods.set(workers.len() as i64);
    }
}

/// Removes sandboxes of pods the API no longer has (deleted while no kubelet ran).
async fn remove_orphans(shared: Arc<Shared>, known: HashSet<String>) {
    let Ok(sandboxes) = shared.cri.list_sandboxes(HashMap::new()).await else { return };
    for s in sandboxes {
        let Some(uid) = s.labels.get(LABEL_POD_UID) else { continue };
        if known.contains(uid) {
            continue;
        }
        info!(sandbox = %s.id, pod_uid = %uid, "removing the sandbox of a pod that no longer exists");
        if let Ok(containers) = shared.cri.list_containers(crate::cri::labels([(LABEL_POD_UID, uid.as_str())])).await {
            for c in containers {
                let _ = shared.cri.stop_container(&c.id, 2).await;
            }
        }
        let _ = shared.cri.stop_sandbox(&s.id).await;
        let _ = shared.cri.remove_sandbox(&s.id).await;
        let _ = std::fs::remove_dir_all(shared.pod_dir(uid));
    }
}

/// The lifecycle event generator: relists the runtime every second and
/// wakes the workers of pods whose containers or sandboxes changed state, telling each what
/// its pod now has (a worker that already saw exactly that skips the sync).
async fn relist_loop(shared: Arc<Shared>, wakers: Wakers) {
    let mut previous: HashMap<String, (i32, String)> = HashMap::new();
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let started = Instant::now();
        let (Ok(containers), Ok(sandboxes)) = (
            shared.cri.list_containers(HashMap::new()).await,
            shared.cri.list_sandboxes(HashMap::new()).await,
        ) else {
            continue;
        };
        shared.metrics.relist_seconds.observe(started.elapsed().as_secs_f64());
        let mut current = HashMap::new();
        for c in containers {
            current.insert(c.id, (c.state, c.labels.get(LABEL_POD_UID).cloned().unwrap_or_default()));
        }
        for s in sandboxes {
            current.insert(s.id, (crate::pod_worker::sandbox_state_key(s.state), s.labels.get(LABEL_POD_UID).cloned().unwrap_or_default()));
        }
        let mut changed: HashSet<&str> = HashSet::new();
        for (id, (state, uid)) in &current {
            if previous.get(id).is_none_or(|(s, _)| s != state) {
                changed.insert(uid);
            }
        }
        for (id, (_, uid)) in &previous {
            if !current.contains_key(id) {
                changed.insert(uid);
            }
        }
        if !changed.is_empty() {
            let mut by_pod: HashMap<&str, Vec<(&str, i32)>> = HashMap::new();
            for (id, (state, uid)) in &current {
                if changed.contains(uid.as_str()) {
                    by_pod.entry(uid).or_default().push((id, *state));
                }
            }
            let wakers = wakers.lock().unwrap_or_else(|e| e.into_inner());
            for uid in changed {
                if let Some(w) = wakers.get(uid) {
                    let entries = by_pod.remove(uid).unwrap_or_default();
                    w.changed(crate::pod_worker::fingerprint(entries));
                }
            }
        }
        previous = current;
    }
}

/// The node's address: the source address the kernel picks towards a
/// public address (no packet is sent), or loopback.
pub fn default_node_ip() -> String {
    std::net::UdpSocket::bind("0.0.0.0:0")
        .and_then(|s| {
            s.connect("192.0.2.1:9")?;
            s.local_addr()
        })
        .map(|a| a.ip().to_string())
        .unwrap_or_else(|_| "127.0.0.1".into())
}

/// Default paths of a managed containerd under a root directory.
pub fn managed_layout(root: &Path, state: &Path, socket: &Path, cni_conf_dir: &Path, sandbox_image: &str) -> ContainerdLayout {
    ContainerdLayout {
        binary: PathBuf::from("containerd"),
        root: root.to_owned(),
        state: state.to_owned(),
        socket: socket.to_owned(),
        cni_conf_dir: cni_conf_dir.to_owned(),
        cni_bin_dir: PathBuf::from("/usr/lib/cni"),
        sandbox_image: sandbox_image.to_owned(),
    }
}
