//! `NodeResourcesFit` (filter: requests against allocatable minus what the node's pods
//! request; score: least allocated) and `NodeResourcesBalancedAllocation` (score: CPU and
//! memory used in similar fractions).

use crate::cache::{NodeInfo, PodInfo};
use crate::framework::{
    ClusterEvents, CycleState, FilterPlugin, MAX_NODE_SCORE, Plugin, ScorePlugin, Status,
};

/// Requests against free allocatable; scores emptier nodes higher.
#[derive(Debug, Default, Clone, Copy)]
pub struct NodeResourcesFit;

impl Plugin for NodeResourcesFit {
    fn name(&self) -> &'static str {
        "NodeResourcesFit"
    }
    fn events(&self) -> ClusterEvents {
        ClusterEvents::NODE_ADD
            .union(ClusterEvents::NODE_UPDATE)
            .union(ClusterEvents::ASSIGNED_POD_DELETE)
    }
}

/// The reasons a pod does not fit a node's free resources (empty: it fits).
pub fn insufficient_resources(pod: &PodInfo, node: &NodeInfo) -> Vec<String> {
    let mut reasons = Vec::new();
    let (req, alloc, used) = (&pod.requests, &node.allocatable, &node.requested);
    if used.pods + 1 > alloc.pods {
        reasons.push("Too many pods".to_owned());
    }
    if req.milli_cpu > 0 && req.milli_cpu > alloc.milli_cpu - used.milli_cpu {
        reasons.push("Insufficient cpu".to_owned());
    }
    if req.memory > 0 && req.memory > alloc.memory - used.memory {
        reasons.push("Insufficient memory".to_owned());
    }
    if req.ephemeral_storage > 0
        && req.ephemeral_storage > alloc.ephemeral_storage - used.ephemeral_storage
    {
        reasons.push("Insufficient ephemeral-storage".to_owned());
    }
    for (name, want) in &req.scalar {
        if *want == 0 {
            continue;
        }
        let free = alloc.scalar.get(name).copied().unwrap_or(0)
            - used.scalar.get(name).copied().unwrap_or(0);
        if *want > free {
            reasons.push(format!("Insufficient {name}"));
        }
    }
    reasons
}

impl FilterPlugin for NodeResourcesFit {
    fn filter(&self, _: &CycleState, pod: &PodInfo, node: &NodeInfo) -> Status {
        let reasons = insufficient_resources(pod, node);
        if reasons.is_empty() {
            Status::success()
        } else {
            Status {
                reasons,
                ..Status::unschedulable("")
            }
        }
    }
}

/// The fractions of allocatable CPU and memory the node would have requested with the pod
/// (scoring counts request-less pods at upstream's defaults).
fn fractions(pod: &PodInfo, node: &NodeInfo) -> Option<(f64, f64)> {
    let (ac, am) = (node.allocatable.milli_cpu, node.allocatable.memory);
    if ac <= 0 || am <= 0 {
        return None;
    }
    let cpu = (node.non_zero_cpu + pod.non_zero_cpu) as f64 / ac as f64;
    let mem = (node.non_zero_memory + pod.non_zero_memory) as f64 / am as f64;
    Some((cpu, mem))
}

impl ScorePlugin for NodeResourcesFit {
    /// Least allocated: `(allocatable - requested) * 100 / allocatable`, averaged over CPU
    /// and memory (weight 1 each).
    fn score(&self, _: &CycleState, pod: &PodInfo, node: &NodeInfo) -> i64 {
        let Some((cpu, mem)) = fractions(pod, node) else {
            return 0;
        };
        let free = |f: f64| ((1.0 - f).max(0.0) * MAX_NODE_SCORE as f64) as i64;
        (free(cpu) + free(mem)) / 2
    }
}

/// Prefers nodes whose CPU and memory would be used in similar fractions.
#[derive(Debug, Default, Clone, Copy)]
pub struct BalancedAllocation;

impl Plugin for BalancedAllocation {
    fn name(&self) -> &'static str {
        "NodeResourcesBalancedAllocation"
    }
}

impl ScorePlugin for BalancedAllocation {
    /// `(1 - std) * 100` of the CPU and memory fractions (upstream's formula; for two
    /// resources the standard deviation is half their difference).
    fn score(&self, _: &CycleState, pod: &PodInfo, node: &NodeInfo) -> i64 {
        let Some((cpu, mem)) = fractions(pod, node) else {
            return 0;
        };
        let (cpu, mem) = (cpu.min(1.0), mem.min(1.0));
        let std = (cpu - mem).abs() / 2.0;
        ((1.0 - std) * MAX_NODE_SCORE as f64) as i64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::tests::{node, pod};
    use std::sync::Arc;

    #[test]
    fn requests_fit_against_allocatable_minus_bound_pods() {
        let s = CycleState::default();
        let mut n = NodeInfo::new(node("n", "2", "4Gi", "2"));
        n.add_pod(Arc::new(PodInfo::new(pod("a", "1500m", "1Gi"))));
        let table: &[(&str, &str, &[&str])] = &[
            ("500m", "3Gi", &[]),
            ("600m", "", &["Insufficient cpu"]),
            ("", "3Gi", &[]),
            ("100m", "4Gi", &["Insufficient memory"]),
            ("1", "4Gi", &["Insufficient cpu", "Insufficient memory"]),
        ];
        for (cpu, mem, want) in table {
            let st = NodeResourcesFit.filter(&s, &PodInfo::new(pod("p", cpu, mem)), &n);
            assert_eq!(st.reasons, *want, "cpu {cpu} memory {mem}");
        }
        n.add_pod(Arc::new(PodInfo::new(pod("b", "", ""))));
        let st = NodeResourcesFit.filter(&s, &PodInfo::new(pod("p", "", "")), &n);
        assert_eq!(st.reasons, vec!["Too many pods".to_owned()]);
    }

    #[test]
    fn emptier_and_balanced_nodes_score_higher() {
        let s = CycleState::default();
        let empty = NodeInfo::new(node("e", "4", "8Gi", "110"));
        let mut busy = NodeInfo::new(node("b", "4", "8Gi", "110"));
        busy.add_pod(Arc::new(PodInfo::new(pod("a", "2", "4Gi"))));
        let mut lopsided = NodeInfo::new(node("l", "4", "8Gi", "110"));
        lopsided.add_pod(Arc::new(PodInfo::new(pod("a", "3", "1Gi"))));
        let p = PodInfo::new(pod("p", "1", "2Gi"));
        let la = |n: &NodeInfo| NodeResourcesFit.score(&s, &p, n);
        assert_eq!(la(&empty), 75);
        assert_eq!(la(&busy), 25);
        assert!(la(&empty) > la(&busy));
        let ba = |n: &NodeInfo| BalancedAllocation.score(&s, &p, n);
        assert_eq!(ba(&empty), 100);
        assert!(ba(&busy) > ba(&lopsided));
    }
}
