//! Coxswain's controller-manager: the controllers that turn desired state into actual state.
//!
//! Every controller talks to the cluster only through the API server (kube-runtime
//! watchers, reflectors and `Controller`s over a `kube::Client`), as upstream's do, so they
//! work against any Kubernetes API server. The manager runs the enabled ones under one
//! Lease (see `coxswain_runtime::leader`).
//!
//! Module map:
//! - `workloads`: ReplicaSet, Deployment, Job, CronJob, DaemonSet, StatefulSet.
//! - `endpointslice`, `endpoints`: the Service data path's inputs, from Services and pods.
//! - `nodelifecycle`: nodes whose Lease stops being renewed become Unknown and tainted; pods
//!   on them are marked unready and evicted after their toleration.
//! - `nodeipam`: a pod CIDR per node from the cluster CIDR.
//! - `garbagecollector`: ownerReferences, in the three propagation modes.
//! - `serviceaccount`: a `default` ServiceAccount in every namespace.
//! - `csr`: approves nodes' certificate signing requests and signs approved ones.
//! - `rootcacertpublisher`: a `kube-root-ca.crt` ConfigMap with the cluster CA in every
//!   namespace.
//! - `resourcequota`: ResourceQuota status (`hard` from the spec, `used` recounted).
//! - `manager`: the controller list, the manager that starts them, leader election.
//! - `metrics`: Prometheus metrics shared by every controller.
//!
//! Namespace deletion is finalized inside the API server (`coxswain-apiserver`'s
//! `namespaces` module), so there is no namespace controller here.

use std::sync::Arc;
use std::time::Duration;

mod backoff;
pub mod endpoints;
pub mod endpointslice;
pub mod garbagecollector;
mod labels;
pub mod manager;
pub mod metrics;
pub mod nodeipam;
pub mod nodelifecycle;
pub mod csr;
mod reconciler;
pub mod rootcacertpublisher;
pub mod resourcequota;
pub mod serviceaccount;
pub mod workloads;

pub use manager::{
    CLUSTER_CONTROLLERS, ControllerManager, Error as ManagerError, all_controllers,
    enabled_controllers, run, run_elected, run_leader_elected,
};
pub use metrics::Metrics;

/// Settings shared by every controller.
#[derive(Debug, Clone)]
pub struct Config {
    /// How long a node's Lease may go unrenewed before the node is marked NotReady/Unknown
    /// (upstream `--node-monitor-grace-period`, 40 s).
    pub node_monitor_grace_period: Duration,
    /// How often the node lifecycle controller checks nodes and due evictions (upstream
    /// `--node-monitor-period`, 5 s).
    pub node_monitor_period: Duration,
    /// Default toleration seconds for `node.kubernetes.io/unreachable` and `not-ready`
    /// NoExecute taints (upstream's DefaultTolerationSeconds admission, 300 s).
    pub default_toleration_seconds: i64,
    /// The cluster CIDR node IPAM allocates pod CIDRs from (default 10.244.0.0/16).
    pub cluster_cidr: String,
    /// Prefix length of each node's pod CIDR (default 24).
    pub node_cidr_mask_size: u8,
    /// How often the garbage collector re-examines every object even without a change
    /// (a safety net; changes are handled as they are watched).
    pub gc_resync_period: Duration,
    /// How often the resourcequota controller recounts every quota even without a change
    /// (upstream `--resource-quota-sync-period`, 5 minutes).
    pub quota_resync_period: Duration,
    /// How long a quota must stay unchanged before the resourcequota controller lowers its
    /// usage (covers admissions between their charge and their write; 2 s).
    pub quota_settle_period: Duration,
    /// Signs approved certificate signing requests with the cluster CA, when this process
    /// holds it (the control plane binary does).
    pub csr_signer: Option<Arc<dyn csr::CsrSigner>>,
    /// The cluster CA certificate (PEM) the root CA publisher puts in every namespace's
    /// `kube-root-ca.crt` ConfigMap, when this process knows it (the control plane binary does).
    pub root_ca_cert: Option<String>,
    /// Where the controllers count their work (reconciles, latency, queue depth, leadership).
    /// Not a setting, but carried here so that every `Config` (and so every `Context`) has
    /// its own set: two managers in one process keep separate counts. Clones share it.
    pub metrics: Arc<Metrics>,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            node_monitor_grace_period: Duration::from_secs(40),
            node_monitor_period: Duration::from_secs(5),
            default_toleration_seconds: 300,
            cluster_cidr: "10.244.0.0/16".to_owned(),
            node_cidr_mask_size: 24,
            gc_resync_period: Duration::from_secs(30),
            quota_resync_period: Duration::from_secs(300),
            quota_settle_period: Duration::from_secs(2),
            csr_signer: None,
            root_ca_cert: None,
            metrics: Arc::new(Metrics::new()),
        }
    }
}

/// What every controller gets: the client and the settings (which carry the metrics).
#[derive(Clone)]
pub struct Context {
    pub client: kube::Client,
    pub config: Arc<Config>,
}

impl Context {
    /// A context over `client` with `config`.
    pub fn new(client: kube::Client, config: Config) -> Context {
        Context {
            client,
            config: Arc::new(config),
        }
    }

    /// Reconcile counts and latencies, by controller (`config.metrics`).
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.config.metrics
    }
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}
