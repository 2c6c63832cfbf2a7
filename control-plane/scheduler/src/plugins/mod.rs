//! The built-in plugins, and the default profile that wires them as upstream's does.

mod default_binder;
mod inter_pod_affinity;
mod node_affinity;
mod node_name;
mod node_ports;
mod node_resources;
mod node_unschedulable;
mod queue_sort;
pub mod selectors;
mod taint_toleration;
mod topology_spread;

use std::sync::Arc;

use kube::Client;

pub use default_binder::DefaultBinder;
pub use inter_pod_affinity::InterPodAffinity;
pub use node_affinity::{NodeAffinity, normalize_to_max, required_node_affinity_matches};
pub use node_name::NodeName;
pub use node_ports::NodePorts;
pub use node_resources::{BalancedAllocation, NodeResourcesFit, insufficient_resources};
pub use node_unschedulable::NodeUnschedulable;
pub use queue_sort::PrioritySort;
pub use taint_toleration::TaintToleration;
pub use topology_spread::PodTopologySpread;

use crate::framework::{Extension, Profile};
use crate::preemption::DefaultPreemption;

/// Upstream's default plugins and score weights (NodeResourcesFit 1, BalancedAllocation 1,
/// NodeAffinity 2, TaintToleration 3, PodTopologySpread 2), binding with `client`.
pub fn default_profile(client: Client) -> Profile {
    Profile::empty(Arc::new(PrioritySort), Arc::new(DefaultBinder::new(client)))
        .with(Extension::PreFilter(Arc::new(InterPodAffinity)))
        .with(Extension::PreFilter(Arc::new(PodTopologySpread)))
        .with(Extension::Filter(Arc::new(NodeUnschedulable)))
        .with(Extension::Filter(Arc::new(NodeName)))
        .with(Extension::Filter(Arc::new(TaintToleration)))
        .with(Extension::Filter(Arc::new(NodeAffinity)))
        .with(Extension::Filter(Arc::new(NodePorts)))
        .with(Extension::Filter(Arc::new(NodeResourcesFit)))
        .with(Extension::Filter(Arc::new(PodTopologySpread)))
        .with(Extension::Filter(Arc::new(InterPodAffinity)))
        .with(Extension::PostFilter(Arc::new(DefaultPreemption)))
        .with(Extension::Score(Arc::new(TaintToleration), 3))
        .with(Extension::Score(Arc::new(NodeAffinity), 2))
        .with(Extension::Score(Arc::new(PodTopologySpread), 2))
        .with(Extension::Score(Arc::new(NodeResourcesFit), 1))
        .with(Extension::Score(Arc::new(BalancedAllocation), 1))
}
