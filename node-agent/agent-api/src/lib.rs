//! The node agent's HTTP API: JSON bodies of `/dataplane/*`, shared by the
//! agent (which serves them) and `coxctl` (which prints them).
//!
//! Addresses are dotted strings and ports host-order numbers here; the
//! kernel layouts stay in `coxswain-ebpf-common`.

use serde::{Deserialize, Serialize};

/// Path of the Service frontends with their backends and counters.
pub const SERVICES_PATH: &str = "/dataplane/services";
/// Path of the conntrack entries.
pub const CONNTRACK_PATH: &str = "/dataplane/conntrack";
/// Path of the per-interface packet counters.
pub const COUNTERS_PATH: &str = "/dataplane/counters";
/// Path of the NodePort acceleration (XDP) verdict counters.
pub const NODEPORT_XDP_PATH: &str = "/dataplane/nodeport-xdp";

/// What NodePort acceleration did with Service packets, for one verdict.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerdictEntry {
    /// `local` (translated, passed up to a pod of this node), `tx`
    /// (translated and sent back out of the uplink) or `pass` (left to the
    /// tc program).
    pub verdict: String,
    /// Packets.
    pub packets: u64,
    /// Bytes.
    pub bytes: u64,
}

/// Packet and byte counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Traffic {
    /// Packets.
    pub packets: u64,
    /// Bytes.
    pub bytes: u64,
}

/// One Service frontend as the kernel holds it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceEntry {
    /// `namespace/name` of the Kubernetes Service, when the agent's proxy
    /// knows it.
    pub service: Option<String>,
    /// Frontend address.
    pub addr: String,
    /// Frontend port.
    pub port: u16,
    /// `TCP`, `UDP` or `SCTP`.
    pub protocol: String,
    /// `all` or `local` (externalTrafficPolicy Local, from outside).
    pub scope: String,
    /// Flag names (`affinity`, `snat`, `node-port`, `external`, ...).
    pub flags: Vec<String>,
    /// Service id (also the reverse-NAT id).
    pub service_id: u32,
    /// ClientIP affinity timeout in seconds (0 without affinity).
    pub affinity_timeout_s: u32,
    /// Backends in slot order.
    pub backends: Vec<BackendEntry>,
    /// Traffic of this frontend's flows.
    pub traffic: Traffic,
}

/// One backend of a frontend.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackendEntry {
    /// Backend id.
    pub id: u32,
    /// Address.
    pub addr: String,
    /// Port.
    pub port: u16,
    /// Flag names (`local`, `terminating`).
    pub flags: Vec<String>,
    /// Traffic of flows through this backend (all Services).
    pub traffic: Traffic,
}

/// One tracked flow direction.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ConntrackEntry {
    /// `forward`, `reply`, `egress` or `snat-out`.
    pub direction: String,
    /// `TCP`, `UDP` or `SCTP`.
    pub protocol: String,
    /// Source `addr:port` as seen on the wire.
    pub source: String,
    /// Destination `addr:port` as seen on the wire.
    pub destination: String,
    /// The backend `addr:port` chosen for the flow.
    pub backend: String,
    /// Service id.
    pub service_id: u32,
    /// Flag names (`snat`, `external`).
    pub flags: Vec<String>,
    /// Seconds since a packet of the flow was seen.
    pub idle_s: f64,
}

/// One per-interface counter.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CounterEntry {
    /// Interface index.
    pub ifindex: u32,
    /// Interface name, if known.
    pub iface: Option<String>,
    /// `tc_ingress`, `tc_egress` or `xdp`.
    pub hook: String,
    /// Packets.
    pub packets: u64,
    /// Bytes.
    pub bytes: u64,
}

/// Path where an image archive (OCI layout or docker-save tar) is `POST`ed
/// for the node's containerd to import (`coxctl image import FILE`).
pub const IMAGES_IMPORT_PATH: &str = "/images/import";

/// The answer of an image import.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImportedImages {
    /// The image names the archive declared, as containerd now knows them.
    pub images: Vec<String>,
}
