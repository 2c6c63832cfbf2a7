//! `DefaultPreemption` (post-filter): when no node fits a pod, find a node where deleting
//! pods of lower priority would make it fit, keeping as many of them as possible.
//!
//! As upstream: only nodes rejected for reasons removing pods can fix (`Unschedulable`,
//! not `UnschedulableAndUnresolvable`) are candidates; on each, every lower-priority pod is
//! removed, the filters re-run, then the victims are "reprieved" highest priority first
//! while the pod still fits. Among candidates, the one whose most important victim has the
//! lowest priority wins, then the smallest sum of victim priorities, then fewest victims.
//! Simplification: pre-filter state (inter-pod affinity counts) is not recomputed without
//! the victims, and nominated pods are not reserved on their node for other pods.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::cache::{Cache, NodeInfo, PodInfo};
use crate::framework::{
    Code, Diagnosis, FilterRunner, Plugin, PostFilterPlugin, PostFilterResult,
};

const NOT_HELPFUL: &str = "Preemption is not helpful for scheduling";
const NO_VICTIMS: &str = "No preemption victims found for incoming pod";
/// Candidate nodes examined at most (upstream: 10% of nodes, at least 100).
const MAX_CANDIDATES: usize = 100;

/// How bad a set of victims is: highest priority, sum of priorities, count (lower wins).
type VictimRank = (i32, i64, usize);

/// Evicts lower-priority pods to make room.
#[derive(Debug, Default, Clone, Copy)]
pub struct DefaultPreemption;

impl Plugin for DefaultPreemption {
    fn name(&self) -> &'static str {
        "DefaultPreemption"
    }
}

fn summary(nodes: usize, reasons: &BTreeMap<&str, usize>) -> String {
    let mut parts: Vec<String> = reasons.iter().map(|(r, n)| format!("{n} {r}")).collect();
    parts.sort();
    format!(
        "preemption: 0/{nodes} nodes are available: {}.",
        parts.join(", ")
    )
}

/// Victims on `node` that make room for `pod`, if removing lower-priority pods helps.
fn victims_on(pod: &PodInfo, node: &NodeInfo, filters: &FilterRunner<'_>) -> Option<Vec<Arc<PodInfo>>> {
    let mut lower: Vec<Arc<PodInfo>> = node
        .pods
        .values()
        .filter(|p| p.priority < pod.priority)
        .cloned()
        .collect();
    if lower.is_empty() {
        return None;
    }
    let mut sim = node.clone();
    for p in &lower {
        sim.remove_pod(&p.key);
    }
    if !filters.run(pod, &sim).is_success() {
        return None;
    }
    // Reprieve the most important pods first.
    lower.sort_by(|a, b| b.priority.cmp(&a.priority).then(a.key.cmp(&b.key)));
    let mut victims = Vec::new();
    for p in lower {
        sim.add_pod(p.clone());
        if !filters.run(pod, &sim).is_success() {
            sim.remove_pod(&p.key);
            victims.push(p);
        }
    }
    Some(victims)
}

impl PostFilterPlugin for DefaultPreemption {
    fn post_filter(
        &self,
        pod: &PodInfo,
        cluster: &Cache,
        filters: &FilterRunner<'_>,
        diagnosis: &Diagnosis,
    ) -> PostFilterResult {
        let never = pod
            .pod
            .spec
            .as_ref()
            .and_then(|s| s.preemption_policy.as_deref())
            == Some("Never");
        if never {
            return PostFilterResult {
                message: "preemption: not eligible due to preemptionPolicy=Never.".into(),
                ..Default::default()
            };
        }
        let mut reasons: BTreeMap<&str, usize> = BTreeMap::new();
        if diagnosis.pre_filter.is_some() {
            reasons.insert(NOT_HELPFUL, diagnosis.nodes);
            return PostFilterResult {
                message: summary(diagnosis.nodes, &reasons),
                ..Default::default()
            };
        }
        let mut best: Option<(VictimRank, Arc<str>, Vec<Arc<PodInfo>>)> = None;
        let mut examined = 0;
        for (name, status) in &diagnosis.node_statuses {
            if status.code != Code::Unschedulable || examined >= MAX_CANDIDATES {
                *reasons.entry(NOT_HELPFUL).or_default() += 1;
                continue;
            }
            examined += 1;
            let Some(node) = cluster.node(name) else {
                *reasons.entry(NOT_HELPFUL).or_default() += 1;
                continue;
            };
            match victims_on(pod, node, filters) {
                Some(victims) if !victims.is_empty() => {
                    let rank = (
                        victims.iter().map(|v| v.priority).max().unwrap_or(i32::MIN),
                        victims.iter().map(|v| i64::from(v.priority)).sum::<i64>(),
                        victims.len(),
                    );
                    if best.as_ref().is_none_or(|(r, _, _)| rank < *r) {
                        best = Some((rank, name.clone(), victims));
                    }
                }
                _ => *reasons.entry(NO_VICTIMS).or_default() += 1,
            }
        }
        match best {
            Some((_, node, victims)) => PostFilterResult {
                message: format!(
                    "preemption: {} pod(s) of lower priority will be deleted from node {node}.",
                    victims.len()
                ),
                nominated_node: Some(node),
                victims,
            },
            None => PostFilterResult {
                message: summary(diagnosis.nodes, &reasons),
                ..Default::default()
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::tests::{bound, node, pod};
    use crate::framework::{CycleState, Extension, Profile, Status};
    use crate::plugins::{NodeResourcesFit, PrioritySort};

    fn prio(mut p: k8s_openapi::api::core::v1::Pod, priority: i32) -> Arc<PodInfo> {
        p.spec.as_mut().unwrap().priority = Some(priority);
        Arc::new(PodInfo::new(p))
    }

    struct NoBind;
    impl Plugin for NoBind {
        fn name(&self) -> &'static str {
            "NoBind"
        }
    }
    impl crate::framework::BindPlugin for NoBind {
        fn bind(
            &self,
            _: Arc<PodInfo>,
            _: Arc<str>,
        ) -> futures::future::BoxFuture<'static, Result<(), crate::framework::BindError>> {
            Box::pin(async { Ok(()) })
        }
    }

    #[test]
    fn preempts_the_fewest_lowest_priority_pods() {
        let mut c = Cache::new();
        c.apply_node(node("n1", "4", "8Gi", "110"));
        c.apply_node(node("n2", "4", "8Gi", "110"));
        // n1: two small low pods; n2: one big pod of higher (but still lower) priority.
        c.apply_bound_pod(Arc::new(PodInfo::new(bound(
            prio(pod("low-a", "2", ""), 1).pod.clone(),
            "n1",
        ))));
        c.apply_bound_pod(Arc::new(PodInfo::new(bound(
            prio(pod("low-b", "2", ""), 1).pod.clone(),
            "n1",
        ))));
        c.apply_bound_pod(Arc::new(PodInfo::new(bound(
            prio(pod("mid", "4", ""), 5).pod.clone(),
            "n2",
        ))));
        let incoming = prio(pod("high", "2", ""), 10);
        let profile = Profile::empty(Arc::new(PrioritySort), Arc::new(NoBind))
            .with(Extension::Filter(Arc::new(NodeResourcesFit)));
        let state = CycleState::default();
        let filters = profile.filters(&state);
        let diagnosis = Diagnosis {
            nodes: 2,
            node_statuses: vec![
                ("n1".into(), Status::unschedulable("Insufficient cpu")),
                ("n2".into(), Status::unschedulable("Insufficient cpu")),
            ],
            pre_filter: None,
        };
        let r = DefaultPreemption.post_filter(&incoming, &c, &filters, &diagnosis);
        assert_eq!(r.nominated_node.as_deref(), Some("n1"));
        assert_eq!(r.victims.len(), 1, "one 2-cpu pod is enough");

        // Nothing of lower priority: nothing to gain.
        let low = prio(pod("low", "2", ""), 0);
        let r = DefaultPreemption.post_filter(&low, &c, &filters, &diagnosis);
        assert!(r.nominated_node.is_none());
        assert_eq!(
            r.message,
            "preemption: 0/2 nodes are available: 2 No preemption victims found for incoming pod."
        );
    }
}
