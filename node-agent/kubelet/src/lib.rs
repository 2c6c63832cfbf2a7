//! Coxswain's kubelet: runs the pods bound to a node on containerd over CRI.
//!
//! [`Kubelet::start`] starts (or connects to) containerd; [`Kubelet::run`]
//! registers the node, keeps its Lease, runs a worker per pod and serves
//! logs, exec and attach for the API server to proxy to, over TLS with a
//! serving certificate the cluster CA signed, authenticating and authorizing
//! every request.

mod atomic_writer;
mod auth;
mod cni;
mod containerd;
mod cri;
mod events;
mod images;
mod kubelet;
mod logs;
mod metrics;
mod node;
mod pod_worker;
mod probes;
mod resources;
mod server;
mod serving_cert;
mod spec;
mod static_pods;
mod status;
mod tokens;
mod volumes;
mod streaming;

pub use auth::{PeerUser, RequestAuth, attributes};
pub use cni::{CONFLIST_NAME, Ipv4Cidr};
pub use containerd::{ContainerdLayout, ManagedContainerd};
pub use cri::{Cri, LABEL_CONTAINER_NAME, LABEL_POD_NAME, LABEL_POD_NAMESPACE, LABEL_POD_UID};
pub use images::{import_archive, import_dir};
pub use kubelet::{
    Error, ImageImporter, Kubelet, KubeletConfig, Result, Runtime, SandboxNetworkHook, default_node_ip, managed_layout,
};
pub use metrics::KubeletMetrics;
pub use serving_cert::{SERVING_FILE, SERVING_SIGNER};
pub use static_pods::MIRROR_ANNOTATION;
