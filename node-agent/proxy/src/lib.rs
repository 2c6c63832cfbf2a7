//! Coxswain's service proxy: Services and EndpointSlices to eBPF map state.
//!
//! [`ProxyState`] keeps the Kubernetes objects, what each Service wants in
//! the maps, and what the maps hold; each change writes only the difference
//! for the Services it affects, through the [`coxswain_dataplane::ServiceMaps`]
//! trait, ordered so that the kernel, which reads the maps between any two
//! operations, always finds them consistent: a master counting `n` slots has
//! slots `1..=n`, each naming an existing backend, and its reverse-NAT entry.
//!
//! This crate knows nothing of the bpf syscall or of the API server: the
//! agent feeds it watch events and hands it the kernel maps; tests hand it
//! `MemoryServiceMaps`.
//!
//! ```
//! use coxswain_dataplane::{MemoryServiceMaps, ServiceMaps};
//! use coxswain_proxy::{NodeInfo, ProxyState};
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let mut maps = MemoryServiceMaps::default(); // `KernelServiceMaps` on a node
//! let node = NodeInfo { name: "node-a".into(), addresses: vec!["192.168.1.10".parse()?] };
//! let mut proxy = ProxyState::new(node);
//! // Keep the ids a previous agent gave, so established flows survive.
//! proxy.adopt(maps.dump()?)?;
//! // Feed the initial lists (recorded, not written yet), then converge once.
//! // proxy.upsert_service(&mut maps, &service)?; ...
//! proxy.full_resync(&mut maps)?;
//! // From now on each watch event writes its difference at once.
//! let report = proxy.delete_service(&mut maps, "default", "web")?;
//! assert_eq!(report.ops, 0);
//! # Ok(()) }
//! ```

mod desired;
mod engine;
mod error;
mod ids;
mod keys;
mod maglev;
mod model;
mod programmed;
mod view;

// The kube-proxy baselines are modules of their own: their entry points
// (`iptables::render`, `nftables::full`, `nftables::update`) read best
// qualified.
pub mod iptables;
pub mod nftables;

pub use desired::FrontendKind;
pub use engine::{ProxyState, SyncReport};
pub use error::{Error, Result};
pub use keys::{Protocol, Scope};
pub use model::{
    DEFAULT_AFFINITY_TIMEOUT_S, LB_ALGORITHM_ANNOTATION, LbAlgorithm, NodeInfo, ObjectRef,
    SERVICE_NAME_LABEL,
};
pub use view::{BACKEND_FLAG_NAMES, BackendView, FrontendView, SERVICE_FLAG_NAMES, flag_names};
