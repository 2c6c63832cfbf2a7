//! A simulated cluster for control-plane tests and benchmarks: Coxswain's API server
//! in-process on `127.0.0.1:0` over a temporary embedded store, and fake kubelets
//! ([`SimNode`]) that register Nodes, renew their Leases and move the pods bound to them
//! through their lifecycle without running anything.
//!
//! Pod annotations steer the fake kubelet:
//! - `sim.coxswain.dev/exit-code: "N"`: the pod's containers exit with N after
//!   `sim.coxswain.dev/run-millis` (default 0); the pod ends Succeeded (N = 0) or Failed,
//!   unless `restartPolicy` is Always.
//! - `sim.coxswain.dev/ready: "false"`: the pod runs but never becomes Ready.
//!
//! No controller runs in the simulated cluster, so [`SimCluster::start`] creates what the
//! controller-manager's serviceaccount controller would have: the `default` ServiceAccount of
//! the `default` namespace, without which the API server admits no pod there. Pods in other
//! namespaces need that namespace's account ([`SimCluster::create_default_service_account`]
//! or the real controller, whose work a test then waits for).

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use coxswain_apiserver::{ApiServer, Security, ServerConfig, SubjectNames};
use coxswain_store::{EmbeddedConfig, EmbeddedStore};
use futures::TryStreamExt;
use kube::runtime::WatchStreamExt;
use jiff::Timestamp;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::{
    Node, NodeAddress, NodeCondition, NodeSpec, NodeStatus, NodeSystemInfo, Pod, ServiceAccount, Taint,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, Time};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use kube::runtime::watcher;
use kube::{Client, ResourceExt};
use serde_json::json;
use tempfile::TempDir;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tracing::{debug, warn};

/// Annotation: exit code of the pod's containers.
pub const EXIT_CODE: &str = "sim.coxswain.dev/exit-code";
/// Annotation: how long the containers run before exiting, in milliseconds.
pub const RUN_MILLIS: &str = "sim.coxswain.dev/run-millis";
/// Annotation: `"false"` keeps the pod unready.
pub const READY: &str = "sim.coxswain.dev/ready";

/// The real kubectl (v1.37) from the venv `cargo xtask setup` creates.
pub fn kubectl_path() -> PathBuf {
    let venv = std::env::var_os("COXSWAIN_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/opt/coxswain/venv"));
    venv.join("bin/kubectl")
}

/// An in-process API server with its store, and the fake kubelets added to it.
pub struct SimCluster {
    addr: std::net::SocketAddr,
    kubeconfig: PathBuf,
    client: Client,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
    next_node: Arc<AtomicU32>,
    security: Arc<Security>,
    dir: TempDir,
}

impl std::fmt::Debug for SimCluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimCluster")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl Drop for SimCluster {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// A client from a kubeconfig file (the API server's CA and a user's credentials).
pub async fn client_for(kubeconfig: &Path) -> Result<Client> {
    let text = std::fs::read_to_string(kubeconfig)
        .with_context(|| format!("read {}", kubeconfig.display()))?;
    let kubeconfig = kube::config::Kubeconfig::from_yaml(&text).context("parse the kubeconfig")?;
    let mut config =
        kube::Config::from_custom_kubeconfig(kubeconfig, &kube::config::KubeConfigOptions::default())
            .await
            .context("client configuration from the kubeconfig")?;
    config.default_namespace = "default".to_owned();
    config.read_timeout = Some(Duration::from_secs(300));
    Client::try_from(config).context("build a kube client")
}

impl SimCluster {
    /// Starts an API server over a fresh embedded store (bookmarks every 200 ms).
    pub async fn start() -> Result<SimCluster> {
        Self::start_with(ServerConfig {
            bookmark_interval: Duration::from_millis(200),
            ..ServerConfig::default()
        })
        .await
    }

    /// Starts an API server with `config` over a fresh embedded store.
    pub async fn start_with(config: ServerConfig) -> Result<SimCluster> {
        let dir = tempfile::tempdir()?;
        let store = EmbeddedStore::open(
            EmbeddedConfig::new(dir.path().join("store.redb"))
                .progress_interval(Duration::from_millis(200)),
        )
        .await
        .context("open the embedded store")?;
        let security = Security::load_or_create(&dir.path().join("pki"), SubjectNames::loopback(None))
            .context("create the cluster PKI")?;
        let server = ApiServer::new(Arc::new(store), config, security).await?;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let url = format!("https://{addr}");
        let kubeconfig = dir.path().join("admin.kubeconfig");
        std::fs::write(&kubeconfig, server.admin_kubeconfig(&url)?)?;
        let security = server.security_handle();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let _ = server
                .serve(listener, async {
                    let _ = stopped.await;
                })
                .await;
        });
        let client = client_for(&kubeconfig).await?;
        let cluster = SimCluster {
            addr,
            kubeconfig,
            client,
            stop: Some(stop),
            task: Some(task),
            next_node: Arc::new(AtomicU32::new(1)),
            security,
            dir,
        };
        // The API server writes the `kubernetes` Service's objects as it starts (its
        // EndpointSlice last): tests start once they are there.
        let slices: Api<k8s_openapi::api::discovery::v1::EndpointSlice> = Api::namespaced(cluster.client(), "default");
        wait_for(Duration::from_secs(30), || async { Ok(slices.get_opt("kubernetes").await?.is_some()) })
            .await
            .context("the API server never wrote the kubernetes Service's EndpointSlice")?;
        cluster.create_default_service_account("default").await?;
        Ok(cluster)
    }

    /// Creates the `default` ServiceAccount of `namespace`, as the serviceaccount controller
    /// does for every namespace; one that exists already is fine.
    pub async fn create_default_service_account(&self, namespace: &str) -> Result<()> {
        let api: Api<ServiceAccount> = Api::namespaced(self.client(), namespace);
        let sa = ServiceAccount {
            metadata: ObjectMeta { name: Some("default".to_owned()), ..ObjectMeta::default() },
            ..ServiceAccount::default()
        };
        match api.create(&PostParams::default(), &sa).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(()),
            Err(e) => Err(e).with_context(|| format!("create the default ServiceAccount of {namespace}")),
        }
    }

    /// A client of the API server.
    pub fn client(&self) -> Client {
        self.client.clone()
    }

    /// `https://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// A kubeconfig (written next to the admin's) for `user` in `groups`, with a fresh
    /// client certificate signed by the cluster CA.
    pub fn kubeconfig_for(&self, user: &str, groups: &[&str]) -> Result<PathBuf> {
        let text = self.security.kubeconfig(&self.url(), user, groups)?;
        let safe: String = user
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
            .collect();
        let path = self.dir.path().join(format!("{safe}.kubeconfig"));
        std::fs::write(&path, text)?;
        Ok(path)
    }

    /// A client authenticated as `user` in `groups` (a client certificate).
    pub async fn client_as(&self, user: &str, groups: &[&str]) -> Result<Client> {
        client_for(&self.kubeconfig_for(user, groups)?).await
    }

    /// The cluster CA's certificate (PEM).
    pub fn ca_pem(&self) -> String {
        self.security.ca().cert_pem().to_owned()
    }

    /// The admin kubeconfig for this server.
    pub fn kubeconfig_path(&self) -> &Path {
        &self.kubeconfig
    }

    /// A `kubectl` command (the real v1.37 binary) pointed at this cluster, with a private
    /// HOME and cache directory.
    pub fn kubectl(&self) -> std::process::Command {
        let mut cmd = std::process::Command::new(kubectl_path());
        cmd.arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .env("HOME", self.dir.path())
            .env("KUBECACHEDIR", self.dir.path().join("kubectl-cache"));
        cmd
    }

    /// Runs kubectl with `args` (bounded by 60 s) and returns its stdout; fails with its
    /// stderr when it exits non-zero.
    pub async fn kubectl_run(&self, args: &[&str]) -> Result<String> {
        let mut cmd = tokio::process::Command::from(self.kubectl());
        cmd.args(args).kill_on_drop(true);
        let out = tokio::time::timeout(Duration::from_secs(60), cmd.output())
            .await
            .with_context(|| format!("kubectl {args:?} timed out"))?
            .with_context(|| format!("run kubectl {args:?}"))?;
        if !out.status.success() {
            bail!(
                "kubectl {args:?} failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Registers a Node and starts a fake kubelet for it.
    pub async fn add_node(&self, node: SimNode) -> Result<SimNodeHandle> {
        let index = self.next_node.fetch_add(1, Ordering::Relaxed);
        create_node_object(&self.client, &node, index).await?;
        Ok(SimNodeHandle::start(self.client.clone(), node, index))
    }

    /// Polls `check` every 50 ms until it returns true; fails after `timeout`.
    pub async fn wait_for<F, Fut>(&self, timeout: Duration, check: F) -> Result<()>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<bool>>,
    {
        wait_for(timeout, check).await
    }
}

/// Polls `check` every 50 ms until it returns true; fails after `timeout` with the last error.
pub async fn wait_for<F, Fut>(timeout: Duration, mut check: F) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<bool>>,
{
    let deadline = Instant::now() + timeout;
    let mut last_err = None;
    loop {
        match check().await {
            Ok(true) => return Ok(()),
            Ok(false) => {}
            Err(e) => last_err = Some(e),
        }
        if Instant::now() >= deadline {
            match last_err {
                Some(e) => bail!("condition not met within {timeout:?}; last error: {e:#}"),
                None => bail!("condition not met within {timeout:?}"),
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// What a simulated node offers.
#[derive(Debug, Clone)]
pub struct SimNode {
    pub name: String,
    pub cpu: String,
    pub memory: String,
    pub pods: u32,
    pub ephemeral_storage: String,
    pub labels: BTreeMap<String, String>,
    pub taints: Vec<Taint>,
    pub unschedulable: bool,
    /// How often the fake kubelet renews its Lease.
    pub lease_interval: Duration,
}

impl SimNode {
    /// A node with 4 CPUs, 8 GiB, 110 pods, 100 GiB of ephemeral storage, and the
    /// `kubernetes.io/hostname` and `kubernetes.io/os` labels.
    pub fn new(name: impl Into<String>) -> SimNode {
        let name = name.into();
        let labels = BTreeMap::from([
            ("kubernetes.io/hostname".to_owned(), name.clone()),
            ("kubernetes.io/os".to_owned(), "linux".to_owned()),
            ("kubernetes.io/arch".to_owned(), "amd64".to_owned()),
        ]);
        SimNode {
            name,
            cpu: "4".to_owned(),
            memory: "8Gi".to_owned(),
            pods: 110,
            ephemeral_storage: "100Gi".to_owned(),
            labels,
            taints: Vec::new(),
            unschedulable: false,
            lease_interval: Duration::from_secs(1),
        }
    }

    pub fn cpu(mut self, cpu: &str) -> SimNode {
        self.cpu = cpu.to_owned();
        self
    }

    pub fn memory(mut self, memory: &str) -> SimNode {
        self.memory = memory.to_owned();
        self
    }

    pub fn pods(mut self, pods: u32) -> SimNode {
        self.pods = pods;
        self
    }

    pub fn labels<'a>(mut self, labels: impl IntoIterator<Item = (&'a str, &'a str)>) -> SimNode {
        for (k, v) in labels {
            self.labels.insert(k.to_owned(), v.to_owned());
        }
        self
    }

    pub fn taints(mut self, taints: Vec<Taint>) -> SimNode {
        self.taints = taints;
        self
    }

    pub fn unschedulable(mut self, unschedulable: bool) -> SimNode {
        self.unschedulable = unschedulable;
        self
    }

    pub fn lease_interval(mut self, interval: Duration) -> SimNode {
        self.lease_interval = interval;
        self
    }

    /// The Node object this simulated node registers (`index` picks its InternalIP).
    pub fn to_node(&self, index: u32) -> Node {
        let resources = BTreeMap::from([
            ("cpu".to_owned(), Quantity(self.cpu.clone())),
            ("memory".to_owned(), Quantity(self.memory.clone())),
            ("pods".to_owned(), Quantity(self.pods.to_string())),
            (
                "ephemeral-storage".to_owned(),
                Quantity(self.ephemeral_storage.clone()),
            ),
        ]);
        let now = Time(Timestamp::now());
        let condition = |type_: &str, status: &str, reason: &str| NodeCondition {
            type_: type_.to_owned(),
            status: status.to_owned(),
            reason: Some(reason.to_owned()),
            message: Some(format!("simulated: {reason}")),
            last_heartbeat_time: Some(now.clone()),
            last_transition_time: Some(now.clone()),
        };
        Node {
            metadata: ObjectMeta {
                name: Some(self.name.clone()),
                labels: Some(self.labels.clone()),
                ..ObjectMeta::default()
            },
            spec: Some(NodeSpec {
                taints: (!self.taints.is_empty()).then(|| self.taints.clone()),
                unschedulable: self.unschedulable.then_some(true),
                ..NodeSpec::default()
            }),
            status: Some(NodeStatus {
                capacity: Some(resources.clone()),
                allocatable: Some(resources),
                addresses: Some(vec![
                    NodeAddress {
                        type_: "InternalIP".to_owned(),
                        address: node_ip(index),
                    },
                    NodeAddress {
                        type_: "Hostname".to_owned(),
                        address: self.name.clone(),
                    },
                ]),
                conditions: Some(vec![
                    condition("Ready", "True", "KubeletReady"),
                    condition("MemoryPressure", "False", "KubeletHasSufficientMemory"),
                    condition("DiskPressure", "False", "KubeletHasNoDiskPressure"),
                    condition("PIDPressure", "False", "KubeletHasSufficientPID"),
                ]),
                node_info: Some(NodeSystemInfo {
                    architecture: "amd64".to_owned(),
                    boot_id: String::new(),
                    container_runtime_version: "sim://0".to_owned(),
                    kernel_version: String::new(),
                    kube_proxy_version: String::new(),
                    kubelet_version: "v1.37.0-sim".to_owned(),
                    machine_id: String::new(),
                    operating_system: "linux".to_owned(),
                    os_image: "simulated".to_owned(),
                    system_uuid: String::new(),
                    ..NodeSystemInfo::default()
                }),
                ..NodeStatus::default()
            }),
        }
    }
}

fn node_ip(index: u32) -> String {
    format!("172.31.{}.{}", (index >> 8) & 0xff, index & 0xff)
}

/// Creates the Node object of `node` (with its status) without starting a fake kubelet,
/// which is what a benchmark with thousands of nodes wants.
pub async fn create_node_object(client: &Client, node: &SimNode, index: u32) -> Result<Node> {
    let api: Api<Node> = Api::all(client.clone());
    let object = node.to_node(index);
    let created = api
        .create(&PostParams::default(), &object)
        .await
        .with_context(|| format!("create node {}", node.name))?;
    // Status is ignored on create; write it through the status subresource.
    let status = json!({"status": object.status});
    api.patch_status(&node.name, &PatchParams::default(), &Patch::Merge(&status))
        .await
        .with_context(|| format!("write status of node {}", node.name))?;
    Ok(created)
}

/// A running fake kubelet. Dropping it stops it (as [`SimNodeHandle::stop`] does).
#[derive(Debug)]
pub struct SimNodeHandle {
    name: String,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for SimNodeHandle {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl SimNodeHandle {
    fn start(client: Client, node: SimNode, index: u32) -> SimNodeHandle {
        let lease = tokio::spawn(renew_lease(client.clone(), node.clone()));
        let pods = tokio::spawn(run_pods(client, node.name.clone(), index));
        SimNodeHandle {
            name: node.name,
            tasks: vec![lease, pods],
        }
    }

    /// The node's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Stops heartbeats and pod handling; the Node object stays (a dead node).
    pub async fn stop(mut self) {
        for task in self.tasks.drain(..) {
            task.abort();
            let _ = task.await;
        }
    }
}

async fn renew_lease(client: Client, node: SimNode) {
    let api: Api<Lease> = Api::namespaced(client.clone(), "kube-node-lease");
    let nodes: Api<Node> = Api::all(client);
    let mut owner_uid = None;
    loop {
        if owner_uid.is_none() {
            owner_uid = nodes.get_opt(&node.name).await.ok().flatten().and_then(|n| n.metadata.uid);
        }
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some(node.name.clone()),
                namespace: Some("kube-node-lease".to_owned()),
                owner_references: owner_uid.as_ref().map(|uid| {
                    vec![k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference {
                        api_version: "v1".to_owned(),
                        kind: "Node".to_owned(),
                        name: node.name.clone(),
                        uid: uid.clone(),
                        ..Default::default()
                    }]
                }),
                ..ObjectMeta::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(node.name.clone()),
                lease_duration_seconds: Some(40),
                renew_time: Some(MicroTime(Timestamp::now())),
                ..LeaseSpec::default()
            }),
        };
        let params = PatchParams::apply("sim-kubelet").force();
        if let Err(e) = api.patch(&node.name, &params, &Patch::Apply(&lease)).await {
            warn!(node = %node.name, error = %e, "sim kubelet: lease renewal failed");
        }
        tokio::time::sleep(node.lease_interval).await;
    }
}

fn annotation<'a>(pod: &'a Pod, key: &str) -> Option<&'a str> {
    pod.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(key))
        .map(String::as_str)
}

async fn run_pods(client: Client, node: String, index: u32) {
    let api: Api<Pod> = Api::all(client.clone());
    let config = watcher::Config::default().fields(&format!("spec.nodeName={node}"));
    let started: Arc<std::sync::Mutex<HashSet<String>>> = Arc::default();
    let next_ip = Arc::new(AtomicU32::new(2));
    let mut stream = std::pin::pin!(watcher::watcher(api, config).default_backoff());
    loop {
        let event = match stream.try_next().await {
            Ok(Some(event)) => event,
            Ok(None) => return,
            Err(e) => {
                debug!(%node, error = %e, "sim kubelet: watch error");
                continue;
            }
        };
        let pod = match event {
            watcher::Event::Apply(pod) | watcher::Event::InitApply(pod) => pod,
            watcher::Event::Delete(pod) => {
                if let Some(uid) = pod.metadata.uid.as_ref() {
                    started.lock().expect("lock").remove(uid);
                }
                continue;
            }
            watcher::Event::Init | watcher::Event::InitDone => continue,
        };
        let client = client.clone();
        let node = node.clone();
        if pod.metadata.deletion_timestamp.is_some() {
            tokio::spawn(async move { finish_deletion(client, pod).await });
            continue;
        }
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref()).unwrap_or("");
        if phase == "Succeeded" || phase == "Failed" {
            continue;
        }
        if !started.lock().expect("lock").insert(uid) {
            continue;
        }
        let n = next_ip.fetch_add(1, Ordering::Relaxed);
        let pod_ip = format!("10.{}.{}.{}", 128 + ((index >> 8) & 0x3f), index & 0xff, n % 250 + 2);
        let host_ip = node_ip(index);
        tokio::spawn(async move {
            if let Err(e) = run_pod(client, &node, pod, &pod_ip, &host_ip).await {
                debug!(%node, error = %e, "sim kubelet: pod status write failed");
            }
        });
    }
}

async fn finish_deletion(client: Client, pod: Pod) {
    let api: Api<Pod> = Api::namespaced(client, &pod.namespace().unwrap_or_default());
    let params = DeleteParams {
        grace_period_seconds: Some(0),
        preconditions: pod.metadata.uid.clone().map(|uid| Preconditions {
            uid: Some(uid),
            resource_version: None,
        }),
        ..DeleteParams::default()
    };
    if let Err(e) = api.delete(&pod.name_any(), &params).await {
        debug!(pod = %pod.name_any(), error = %e, "sim kubelet: final delete failed");
    }
}

fn container_statuses(pod: &Pod, state: serde_json::Value, ready: bool) -> Vec<serde_json::Value> {
    pod.spec
        .as_ref()
        .map(|s| s.containers.as_slice())
        .unwrap_or_default()
        .iter()
        .map(|c| {
            json!({
                "name": c.name,
                "image": c.image.clone().unwrap_or_default(),
                "imageID": format!("sim://{}", c.image.clone().unwrap_or_default()),
                "containerID": format!("sim://{}", c.name),
                "ready": ready,
                "started": true,
                "restartCount": 0,
                "state": state,
            })
        })
        .collect()
}

async fn run_pod(client: Client, node: &str, pod: Pod, pod_ip: &str, host_ip: &str) -> Result<()> {
    let api: Api<Pod> = Api::namespaced(client, &pod.namespace().unwrap_or_default());
    let name = pod.name_any();
    let now = Time(Timestamp::now());
    let ready = annotation(&pod, READY) != Some("false");
    let ready_str = if ready { "True" } else { "False" };
    let cond = |type_: &str, status: &str| {
        json!({"type": type_, "status": status, "lastTransitionTime": now})
    };
    // PodScheduled is the API server's (set with the binding), kept as it is, as the
    // kubelet does.
    let scheduled = pod
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.type_ == "PodScheduled" && c.status == "True"))
        .map(|c| json!(c))
        .unwrap_or_else(|| cond("PodScheduled", "True"));
    let running = json!({"running": {"startedAt": now}});
    let status = json!({"status": {
        "phase": "Running",
        "hostIP": host_ip,
        "hostIPs": [{"ip": host_ip}],
        "podIP": pod_ip,
        "podIPs": [{"ip": pod_ip}],
        "startTime": now,
        "conditions": [
            scheduled,
            cond("Initialized", "True"),
            cond("ContainersReady", ready_str),
            cond("Ready", ready_str),
        ],
        "containerStatuses": container_statuses(&pod, running, ready),
    }});
    api.patch_status(&name, &PatchParams::default(), &Patch::Merge(&status))
        .await
        .with_context(|| format!("{node}: mark {name} running"))?;
    let Some(code) = annotation(&pod, EXIT_CODE).and_then(|c| c.parse::<i32>().ok()) else {
        return Ok(());
    };
    let restart_policy = pod
        .spec
        .as_ref()
        .and_then(|s| s.restart_policy.clone())
        .unwrap_or_else(|| "Always".to_owned());
    if restart_policy == "Always" {
        return Ok(());
    }
    let millis = annotation(&pod, RUN_MILLIS)
        .and_then(|m| m.parse::<u64>().ok())
        .unwrap_or(0);
    tokio::time::sleep(Duration::from_millis(millis)).await;
    let finished = Time(Timestamp::now());
    let phase = if code == 0 { "Succeeded" } else { "Failed" };
    let terminated = json!({"terminated": {
        "exitCode": code,
        "reason": if code == 0 { "Completed" } else { "Error" },
        "startedAt": now,
        "finishedAt": finished,
    }});
    let status = json!({"status": {
        "phase": phase,
        "conditions": [
            scheduled,
            cond("Initialized", "True"),
            cond("ContainersReady", "False"),
            cond("Ready", "False"),
        ],
        "containerStatuses": container_statuses(&pod, terminated, false),
    }});
    api.patch_status(&name, &PatchParams::default(), &Patch::Merge(&status))
        .await
        .with_context(|| format!("{node}: mark {name} {phase}"))?;
    Ok(())
}
