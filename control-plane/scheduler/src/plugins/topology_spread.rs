//! `PodTopologySpread`: spreads a workload's pods over topology domains (nodes, zones).
//!
//! - `whenUnsatisfiable: DoNotSchedule` constraints filter: a node is rejected when placing
//!   the pod there would make its domain exceed the least loaded one by more than `maxSkew`.
//! - `ScheduleAnyway` constraints score: fewer matching pods in the node's domain score
//!   higher (upstream's formula: `count * ln(domains + 2) + maxSkew - 1`, normalized so the
//!   emptiest domain gets 100).
//! - A pod without constraints gets upstream's system defaults (`kubernetes.io/hostname`
//!   maxSkew 3, `topology.kubernetes.io/zone` maxSkew 5, both `ScheduleAnyway`) over the
//!   pods of its workload. Upstream finds the workload through the Services, ReplicaSets
//!   and StatefulSets selecting the pod; we use the pod's controller (ownerReference with
//!   `controller: true`), which the cache indexes, so scoring costs a few lookups.

use std::collections::{HashMap, HashSet};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

use super::node_affinity::required_node_affinity_matches;
use super::selectors::label_selector_matches;
use crate::cache::{Cache, NodeInfo, PodInfo};
use crate::framework::{
    ClusterEvents, CycleState, FilterPlugin, MAX_NODE_SCORE, Plugin, PreFilterPlugin,
    ScorePlugin, Status,
};

pub const REASON: &str = "node(s) didn't match pod topology spread constraints";
pub const REASON_MISSING_LABEL: &str =
    "node(s) didn't match pod topology spread constraints (missing required label)";

const FILTER_KEY: &str = "PodTopologySpread/filter";
const SCORE_KEY: &str = "PodTopologySpread/score";
const HOSTNAME: &str = "kubernetes.io/hostname";
const ZONE: &str = "topology.kubernetes.io/zone";

/// Topology spread constraints, and default spreading of workloads.
#[derive(Debug, Default, Clone, Copy)]
pub struct PodTopologySpread;

impl Plugin for PodTopologySpread {
    fn name(&self) -> &'static str {
        "PodTopologySpread"
    }
    fn events(&self) -> ClusterEvents {
        ClusterEvents::NODE_ADD
            .union(ClusterEvents::NODE_UPDATE)
            .union(ClusterEvents::ASSIGNED_POD_ADD)
            .union(ClusterEvents::ASSIGNED_POD_UPDATE)
            .union(ClusterEvents::ASSIGNED_POD_DELETE)
    }
}

#[derive(Debug, Clone)]
enum Matcher {
    Selector(LabelSelector),
    Workload(String),
}

#[derive(Debug, Clone)]
struct Constraint {
    max_skew: i64,
    key: String,
    hard: bool,
    min_domains: i64,
    matcher: Matcher,
}

impl Constraint {
    fn matches(&self, owner_ns: &str, pod: &PodInfo) -> bool {
        match &self.matcher {
            Matcher::Selector(sel) => {
                pod.namespace == owner_ns && label_selector_matches(sel, pod.labels())
            }
            Matcher::Workload(w) => pod.workload.as_deref() == Some(w.as_str()),
        }
    }
}

fn constraints(pod: &PodInfo) -> Vec<Constraint> {
    let explicit = pod
        .pod
        .spec
        .as_ref()
        .and_then(|s| s.topology_spread_constraints.as_deref())
        .unwrap_or(&[]);
    if explicit.is_empty() {
        return match &pod.workload {
            Some(w) => vec![
                Constraint {
                    max_skew: 3,
                    key: HOSTNAME.into(),
                    hard: false,
                    min_domains: 1,
                    matcher: Matcher::Workload(w.clone()),
                },
                Constraint {
                    max_skew: 5,
                    key: ZONE.into(),
                    hard: false,
                    min_domains: 1,
                    matcher: Matcher::Workload(w.clone()),
                },
            ],
            None => Vec::new(),
        };
    }
    explicit
        .iter()
        .map(|c| Constraint {
            max_skew: i64::from(c.max_skew.max(1)),
            key: c.topology_key.clone(),
            hard: c.when_unsatisfiable == "DoNotSchedule",
            min_domains: i64::from(c.min_domains.unwrap_or(1).max(1)),
            matcher: Matcher::Selector(c.label_selector.clone().unwrap_or_default()),
        })
        .collect()
}

/// The domain (value of the constraint's key) of a node; hostname falls back to the name.
fn domain<'a>(c: &Constraint, node: &'a NodeInfo) -> Option<&'a str> {
    match node.labels().get(&c.key) {
        Some(v) => Some(v.as_str()),
        None if c.key == HOSTNAME => Some(node.name.as_ref()),
        None => None,
    }
}

/// Matching pods per domain, over the given nodes.
fn counts<'a>(
    c: &Constraint,
    pod: &PodInfo,
    cluster: &'a Cache,
    nodes: impl Iterator<Item = &'a NodeInfo>,
) -> HashMap<String, i64> {
    let mut out: HashMap<String, i64> = HashMap::new();
    if let Matcher::Workload(w) = &c.matcher {
        // Indexed: only the nodes running the workload.
        let wanted: HashSet<&str> = nodes.filter_map(|n| domain(c, n)).collect();
        for d in &wanted {
            out.insert((*d).to_owned(), 0);
        }
        for (node, n) in cluster.workload_nodes(w).into_iter().flatten() {
            if let Some(d) = cluster.node(node).and_then(|n| domain(c, n))
                && let Some(slot) = out.get_mut(d)
            {
                *slot += i64::from(*n);
            }
        }
        return out;
    }
    for node in nodes {
        let Some(d) = domain(c, node) else { continue };
        let n = node
            .pods
            .values()
            .filter(|p| c.matches(&pod.namespace, p))
            .count() as i64;
        *out.entry(d.to_owned()).or_default() += n;
    }
    out
}

#[derive(Debug)]
struct FilterState {
    /// Per hard constraint: matching pods per domain and the smallest count.
    constraints: Vec<(Constraint, HashMap<String, i64>, i64)>,
}

impl PreFilterPlugin for PodTopologySpread {
    fn pre_filter(&self, state: &mut CycleState, pod: &PodInfo, cluster: &Cache) -> Status {
        let hard: Vec<Constraint> = constraints(pod).into_iter().filter(|c| c.hard).collect();
        if hard.is_empty() {
            return Status::success();
        }
        let mut out = Vec::new();
        for c in hard {
            // Nodes the pod could go to by node affinity define the domains (upstream's
            // default nodeAffinityPolicy: Honor).
            let eligible = cluster
                .nodes()
                .filter(|n| required_node_affinity_matches(pod, n));
            let per_domain = counts(&c, pod, cluster, eligible);
            let mut min = per_domain.values().copied().min().unwrap_or(0);
            if (per_domain.len() as i64) < c.min_domains {
                min = 0;
            }
            out.push((c, per_domain, min));
        }
        state.write(FILTER_KEY, FilterState { constraints: out });
        Status::success()
    }
}

impl FilterPlugin for PodTopologySpread {
    fn filter(&self, state: &CycleState, pod: &PodInfo, node: &NodeInfo) -> Status {
        let Some(s) = state.read::<FilterState>(FILTER_KEY) else {
            return Status::success();
        };
        for (c, per_domain, min) in &s.constraints {
            let Some(d) = domain(c, node) else {
                return Status::unresolvable(REASON_MISSING_LABEL);
            };
            let own = i64::from(c.matches(&pod.namespace, pod));
            let skew = per_domain.get(d).copied().unwrap_or(0) + own - min;
            if skew > c.max_skew {
                return Status::unschedulable(REASON);
            }
        }
        Status::success()
    }
}

#[derive(Debug)]
struct ScoreState {
    /// Per soft constraint: matching pods per domain and the domain weight.
    constraints: Vec<(Constraint, HashMap<String, i64>, f64)>,
}

/// Marks a node lacking a constraint's key: it gets 0 after normalization.
const IGNORED: i64 = -1;

impl ScorePlugin for PodTopologySpread {
    fn pre_score(
        &self,
        state: &mut CycleState,
        pod: &PodInfo,
        cluster: &Cache,
        nodes: &[&NodeInfo],
    ) -> Status {
        let soft: Vec<Constraint> = constraints(pod).into_iter().filter(|c| !c.hard).collect();
        if soft.is_empty() {
            return Status::success();
        }
        let mut out = Vec::new();
        for c in soft {
            let per_domain = counts(&c, pod, cluster, nodes.iter().copied());
            let weight = ((per_domain.len() + 2) as f64).ln();
            out.push((c, per_domain, weight));
        }
        state.write(SCORE_KEY, ScoreState { constraints: out });
        Status::success()
    }

    fn score(&self, state: &CycleState, _: &PodInfo, node: &NodeInfo) -> i64 {
        let Some(s) = state.read::<ScoreState>(SCORE_KEY) else {
            return 0;
        };
        let mut total = 0.0;
        for (c, per_domain, weight) in &s.constraints {
            let Some(d) = domain(c, node) else {
                return IGNORED;
            };
            let n = per_domain.get(d).copied().unwrap_or(0);
            total += n as f64 * weight + (c.max_skew - 1) as f64;
        }
        // Kept in thousandths so normalization keeps the fractions apart.
        (total * 1000.0).round() as i64
    }

    fn normalize(&self, state: &CycleState, _: &PodInfo, scores: &mut [i64]) {
        if state.read::<ScoreState>(SCORE_KEY).is_none() {
            return;
        }
        let considered = scores.iter().copied().filter(|s| *s != IGNORED);
        let (min, max) = considered.fold((i64::MAX, 0), |(lo, hi), s| (lo.min(s), hi.max(s)));
        for s in scores.iter_mut() {
            *s = if *s == IGNORED {
                0
            } else if max == 0 {
                MAX_NODE_SCORE
            } else {
                MAX_NODE_SCORE * (max + min - *s) / max
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::tests::{bound, node, pod};
    use k8s_openapi::api::core::v1::{Pod, TopologySpreadConstraint};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
    use std::collections::BTreeMap;
    use std::sync::Arc;

    fn replica(name: &str) -> Pod {
        let mut p = pod(name, "", "");
        p.metadata.labels = Some(BTreeMap::from([("app".to_owned(), "web".to_owned())]));
        p.metadata.owner_references = Some(vec![OwnerReference {
            api_version: "apps/v1".into(),
            kind: "ReplicaSet".into(),
            name: "web".into(),
            uid: "rs-uid".into(),
            controller: Some(true),
            ..Default::default()
        }]);
        p
    }

    fn cluster(zones: &[(&str, &str)]) -> Cache {
        let mut c = Cache::new();
        for (name, zone) in zones {
            let mut n = node(name, "4", "8Gi", "110");
            n.metadata.labels = Some(BTreeMap::from([
                (HOSTNAME.to_owned(), name.to_string()),
                (ZONE.to_owned(), zone.to_string()),
            ]));
            c.apply_node(n);
        }
        c
    }

    fn scores(c: &Cache, p: &PodInfo) -> Vec<i64> {
        let nodes: Vec<&NodeInfo> = c.nodes().collect();
        let mut state = CycleState::default();
        PodTopologySpread.pre_score(&mut state, p, c, &nodes);
        let mut s: Vec<i64> = nodes
            .iter()
            .map(|n| PodTopologySpread.score(&state, p, n))
            .collect();
        PodTopologySpread.normalize(&state, p, &mut s);
        s
    }

    #[test]
    fn default_spreading_prefers_nodes_and_zones_without_the_workload() {
        let mut c = cluster(&[("n1", "a"), ("n2", "a"), ("n3", "b")]);
        c.apply_bound_pod(Arc::new(PodInfo::new(bound(replica("r1"), "n1"))));
        let s = scores(&c, &PodInfo::new(replica("r2")));
        assert!(s[2] > s[1], "empty zone b beats zone a: {s:?}");
        assert!(s[1] > s[0], "empty node beats the busy one: {s:?}");
        // A pod of no workload is not spread.
        let s = scores(&c, &PodInfo::new(pod("lone", "", "")));
        assert_eq!(s, vec![0, 0, 0]);
    }

    #[test]
    fn do_not_schedule_rejects_nodes_that_would_exceed_max_skew() {
        let mut c = cluster(&[("n1", "a"), ("n2", "b")]);
        let constrained = |name: &str| {
            let mut p = replica(name);
            p.spec.as_mut().unwrap().topology_spread_constraints =
                Some(vec![TopologySpreadConstraint {
                    max_skew: 1,
                    topology_key: ZONE.into(),
                    when_unsatisfiable: "DoNotSchedule".into(),
                    label_selector: Some(LabelSelector {
                        match_labels: Some(BTreeMap::from([(
                            "app".to_owned(),
                            "web".to_owned(),
                        )])),
                        ..Default::default()
                    }),
                    ..Default::default()
                }]);
            p
        };
        c.apply_bound_pod(Arc::new(PodInfo::new(bound(constrained("r1"), "n1"))));
        let p = PodInfo::new(constrained("r2"));
        let mut state = CycleState::default();
        PodTopologySpread.pre_filter(&mut state, &p, &c);
        let st: Vec<Status> = ["n1", "n2"]
            .iter()
            .map(|n| PodTopologySpread.filter(&state, &p, c.node(n).unwrap()))
            .collect();
        assert_eq!(st[0].reasons, vec![REASON.to_owned()]);
        assert!(st[1].is_success());
    }
}
