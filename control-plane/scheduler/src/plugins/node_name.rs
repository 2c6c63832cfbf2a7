//! `NodeName`: a pod naming a node in `spec.nodeName` fits only that node.

use crate::cache::{NodeInfo, PodInfo};
use crate::framework::{ClusterEvents, CycleState, FilterPlugin, Plugin, Status};

pub const REASON: &str = "node(s) didn't match the requested node name";

/// Filters out every node but the one the pod names.
#[derive(Debug, Default, Clone, Copy)]
pub struct NodeName;

impl Plugin for NodeName {
    fn name(&self) -> &'static str {
        "NodeName"
    }
    fn events(&self) -> ClusterEvents {
        ClusterEvents::NODE_ADD
    }
}

impl FilterPlugin for NodeName {
    fn filter(&self, _: &CycleState, pod: &PodInfo, node: &NodeInfo) -> Status {
        match pod.node_name() {
            Some(wanted) if wanted != node.name.as_ref() => Status::unresolvable(REASON),
            _ => Status::success(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::tests::{node, pod};

    #[test]
    fn only_the_named_node_fits() {
        let s = CycleState::default();
        let n1 = NodeInfo::new(node("n1", "1", "1Gi", "10"));
        let n2 = NodeInfo::new(node("n2", "1", "1Gi", "10"));
        let mut p = pod("p", "", "");
        assert!(NodeName.filter(&s, &PodInfo::new(p.clone()), &n2).is_success());
        p.spec.as_mut().unwrap().node_name = Some("n1".into());
        let p = PodInfo::new(p);
        assert!(NodeName.filter(&s, &p, &n1).is_success());
        assert_eq!(NodeName.filter(&s, &p, &n2).reasons, vec![REASON.to_owned()]);
    }
}
