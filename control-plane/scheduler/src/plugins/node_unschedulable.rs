//! `NodeUnschedulable`: no pods on a cordoned node (`spec.unschedulable`), unless they
//! tolerate `node.kubernetes.io/unschedulable:NoSchedule`.

use k8s_openapi::api::core::v1::Taint;

use super::selectors::tolerated;
use crate::cache::{NodeInfo, PodInfo};
use crate::framework::{ClusterEvents, CycleState, FilterPlugin, Plugin, Status};

pub const REASON: &str = "node(s) were unschedulable";

/// Filters out cordoned nodes.
#[derive(Debug, Default, Clone, Copy)]
pub struct NodeUnschedulable;

impl Plugin for NodeUnschedulable {
    fn name(&self) -> &'static str {
        "NodeUnschedulable"
    }
    fn events(&self) -> ClusterEvents {
        ClusterEvents::NODE_ADD.union(ClusterEvents::NODE_UPDATE)
    }
}

impl FilterPlugin for NodeUnschedulable {
    fn filter(&self, _: &CycleState, pod: &PodInfo, node: &NodeInfo) -> Status {
        if !node.is_unschedulable() {
            return Status::success();
        }
        let taint = Taint {
            key: "node.kubernetes.io/unschedulable".into(),
            effect: "NoSchedule".into(),
            ..Default::default()
        };
        let tolerations = pod
            .pod
            .spec
            .as_ref()
            .and_then(|s| s.tolerations.as_deref())
            .unwrap_or(&[]);
        if tolerated(tolerations, &taint) {
            Status::success()
        } else {
            Status::unresolvable(REASON)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::tests::{node, pod};
    use k8s_openapi::api::core::v1::{NodeSpec, Toleration};

    #[test]
    fn cordoned_nodes_take_only_tolerating_pods() {
        let mut n = node("n1", "1", "1Gi", "10");
        let plain = PodInfo::new(pod("p", "", ""));
        let s = CycleState::default();
        assert!(NodeUnschedulable.filter(&s, &plain, &NodeInfo::new(n.clone())).is_success());
        n.spec = Some(NodeSpec {
            unschedulable: Some(true),
            ..Default::default()
        });
        let cordoned = NodeInfo::new(n);
        let st = NodeUnschedulable.filter(&s, &plain, &cordoned);
        assert_eq!(st.reasons, vec![REASON.to_owned()]);
        let mut p = pod("q", "", "");
        p.spec.as_mut().unwrap().tolerations = Some(vec![Toleration {
            key: Some("node.kubernetes.io/unschedulable".into()),
            operator: Some("Exists".into()),
            effect: Some("NoSchedule".into()),
            ..Default::default()
        }]);
        assert!(NodeUnschedulable.filter(&s, &PodInfo::new(p), &cordoned).is_success());
    }
}
