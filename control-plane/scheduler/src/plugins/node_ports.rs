//! `NodePorts`: a pod asking for a host port fits only nodes where no other pod holds it.

use crate::cache::{NodeInfo, PodInfo};
use crate::framework::{ClusterEvents, CycleState, FilterPlugin, Plugin, Status};

pub const REASON: &str = "node(s) didn't have free ports for the requested pod ports";

/// Host port conflicts.
#[derive(Debug, Default, Clone, Copy)]
pub struct NodePorts;

impl Plugin for NodePorts {
    fn name(&self) -> &'static str {
        "NodePorts"
    }
    fn events(&self) -> ClusterEvents {
        ClusterEvents::NODE_ADD.union(ClusterEvents::ASSIGNED_POD_DELETE)
    }
}

impl FilterPlugin for NodePorts {
    fn filter(&self, _: &CycleState, pod: &PodInfo, node: &NodeInfo) -> Status {
        let conflict = pod
            .host_ports
            .iter()
            .any(|want| node.used_ports.iter().any(|used| used.conflicts(want)));
        if conflict {
            Status::unschedulable(REASON)
        } else {
            Status::success()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::tests::{node, pod};
    use k8s_openapi::api::core::v1::{ContainerPort, Pod};
    use std::sync::Arc;

    fn with_port(name: &str, ip: &str, port: i32, protocol: &str) -> Pod {
        let mut p = pod(name, "", "");
        p.spec.as_mut().unwrap().containers[0].ports = Some(vec![ContainerPort {
            container_port: 80,
            host_port: Some(port),
            host_ip: (!ip.is_empty()).then(|| ip.into()),
            protocol: Some(protocol.into()),
            ..Default::default()
        }]);
        p
    }

    #[test]
    fn host_ports_conflict_on_same_port_protocol_and_overlapping_ip() {
        let s = CycleState::default();
        let mut n = NodeInfo::new(node("n", "1", "1Gi", "10"));
        n.add_pod(Arc::new(PodInfo::new(with_port("a", "10.0.0.1", 8080, "TCP"))));
        let table = [
            (with_port("b", "10.0.0.1", 8080, "TCP"), false),
            (with_port("c", "", 8080, "TCP"), false),
            (with_port("d", "10.0.0.2", 8080, "TCP"), true),
            (with_port("e", "10.0.0.1", 8080, "UDP"), true),
            (with_port("f", "10.0.0.1", 9090, "TCP"), true),
            (pod("g", "", ""), true),
        ];
        for (p, fits) in table {
            let name = p.metadata.name.clone();
            let st = NodePorts.filter(&s, &PodInfo::new(p), &n);
            assert_eq!(st.is_success(), fits, "{name:?}");
        }
        n.remove_pod("default/a");
        assert!(NodePorts.filter(&s, &PodInfo::new(with_port("b", "", 8080, "TCP")), &n).is_success());
    }
}
