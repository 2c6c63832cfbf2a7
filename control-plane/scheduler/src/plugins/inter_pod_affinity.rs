//! `InterPodAffinity` (filter): required pod anti-affinity, both the incoming pod's terms
//! and those of pods already placed, and required pod affinity.
//!
//! The pre-filter counts, per topology domain (a `topologyKey` value), the placed pods each
//! term matches, so the filter is a few lookups per node.

use std::collections::HashMap;

use k8s_openapi::api::core::v1::PodAffinityTerm;

use super::selectors::label_selector_matches;
use crate::cache::{Cache, NodeInfo, PodInfo};
use crate::framework::{
    ClusterEvents, CycleState, FilterPlugin, Plugin, PreFilterPlugin, Status,
};

pub const REASON_ANTI: &str = "node(s) didn't match pod anti-affinity rules";
pub const REASON_EXISTING_ANTI: &str = "node(s) didn't satisfy existing pods anti-affinity rules";
pub const REASON_AFFINITY: &str = "node(s) didn't match pod affinity rules";

const STATE_KEY: &str = "InterPodAffinity";

/// Required inter-pod affinity and anti-affinity.
#[derive(Debug, Default, Clone, Copy)]
pub struct InterPodAffinity;

impl Plugin for InterPodAffinity {
    fn name(&self) -> &'static str {
        "InterPodAffinity"
    }
    fn events(&self) -> ClusterEvents {
        ClusterEvents::NODE_ADD
            .union(ClusterEvents::NODE_UPDATE)
            .union(ClusterEvents::ASSIGNED_POD_ADD)
            .union(ClusterEvents::ASSIGNED_POD_UPDATE)
            .union(ClusterEvents::ASSIGNED_POD_DELETE)
    }
}

/// Whether `term`, written in a pod of namespace `owner_ns`, selects `target`.
pub fn term_matches(term: &PodAffinityTerm, owner_ns: &str, target: &PodInfo) -> bool {
    let ns_ok = match (&term.namespaces, &term.namespace_selector) {
        // An empty namespace selector selects every namespace; namespace labels are not
        // cached, so a non-empty one falls back to the listed namespaces.
        (_, Some(sel)) if sel.match_labels.as_ref().is_none_or(|m| m.is_empty())
            && sel.match_expressions.as_ref().is_none_or(|e| e.is_empty()) => true,
        (Some(list), _) if !list.is_empty() => list.iter().any(|n| n == &target.namespace),
        _ => owner_ns == target.namespace,
    };
    ns_ok
        && term
            .label_selector
            .as_ref()
            .is_some_and(|sel| label_selector_matches(sel, target.labels()))
}

#[derive(Debug, Default)]
struct State {
    /// (topology key, value) → placed pods whose anti-affinity rejects the incoming pod there.
    existing_anti: HashMap<(String, String), u32>,
    /// Per anti-affinity term of the incoming pod: domain value → matching placed pods.
    anti: Vec<HashMap<String, u32>>,
    /// Per affinity term of the incoming pod: domain value → matching placed pods.
    affinity: Vec<HashMap<String, u32>>,
    /// The pod matches all its own affinity terms (the first pod of a group may go anywhere).
    self_affine: bool,
}

fn count_matches(terms: &[PodAffinityTerm], pod: &PodInfo, cluster: &Cache) -> Vec<HashMap<String, u32>> {
    let mut counts = vec![HashMap::new(); terms.len()];
    if terms.is_empty() {
        return counts;
    }
    for node in cluster.nodes() {
        let labels = node.labels();
        for placed in node.pods.values() {
            for (i, term) in terms.iter().enumerate() {
                if let Some(v) = labels.get(&term.topology_key)
                    && term_matches(term, &pod.namespace, placed)
                {
                    *counts[i].entry(v.clone()).or_default() += 1;
                }
            }
        }
    }
    counts
}

impl PreFilterPlugin for InterPodAffinity {
    fn pre_filter(&self, state: &mut CycleState, pod: &PodInfo, cluster: &Cache) -> Status {
        let mut s = State::default();
        for (placed, node) in cluster.pods_with_anti_affinity() {
            for term in &placed.required_anti_affinity {
                if let Some(v) = node.labels().get(&term.topology_key)
                    && term_matches(term, &placed.namespace, pod)
                {
                    *s.existing_anti
                        .entry((term.topology_key.clone(), v.clone()))
                        .or_default() += 1;
                }
            }
        }
        s.anti = count_matches(&pod.required_anti_affinity, pod, cluster);
        s.affinity = count_matches(&pod.required_affinity, pod, cluster);
        s.self_affine = pod
            .required_affinity
            .iter()
            .all(|t| term_matches(t, &pod.namespace, pod));
        if !s.existing_anti.is_empty() || !pod.required_anti_affinity.is_empty() || !pod.required_affinity.is_empty() {
            state.write(STATE_KEY, s);
        }
        Status::success()
    }
}

impl FilterPlugin for InterPodAffinity {
    fn filter(&self, state: &CycleState, pod: &PodInfo, node: &NodeInfo) -> Status {
        let Some(s) = state.read::<State>(STATE_KEY) else {
            return Status::success();
        };
        let labels = node.labels();
        // Upstream's order: affinity, the pod's anti-affinity, existing pods' anti-affinity.
        if !pod.required_affinity.is_empty() {
            let satisfied = pod.required_affinity.iter().zip(&s.affinity).all(|(term, counts)| {
                labels
                    .get(&term.topology_key)
                    .is_some_and(|v| counts.get(v).is_some_and(|c| *c > 0))
            });
            if !satisfied {
                let nothing_matches = s.affinity.iter().all(|c| c.is_empty());
                let has_keys = pod
                    .required_affinity
                    .iter()
                    .all(|t| labels.contains_key(&t.topology_key));
                if !(nothing_matches && s.self_affine && has_keys) {
                    return Status::unresolvable(REASON_AFFINITY);
                }
            }
        }
        for (term, counts) in pod.required_anti_affinity.iter().zip(&s.anti) {
            if let Some(v) = labels.get(&term.topology_key)
                && counts.get(v).is_some_and(|c| *c > 0)
            {
                return Status::unschedulable(REASON_ANTI);
            }
        }
        if !s.existing_anti.is_empty() {
            for (k, v) in labels {
                // Cheap enough: nodes carry a handful of labels.
                if s.existing_anti.contains_key(&(k.clone(), v.clone())) {
                    return Status::unschedulable(REASON_EXISTING_ANTI);
                }
            }
        }
        Status::success()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::tests::{bound, node, pod};
    use k8s_openapi::api::core::v1::{Affinity, Pod, PodAntiAffinity};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
    use std::collections::BTreeMap;
    use std::sync::Arc;

    fn app_pod(name: &str, app: &str, anti: bool) -> Pod {
        let mut p = pod(name, "", "");
        p.metadata.labels = Some(BTreeMap::from([("app".to_owned(), app.to_owned())]));
        if anti {
            p.spec.as_mut().unwrap().affinity = Some(Affinity {
                pod_anti_affinity: Some(PodAntiAffinity {
                    required_during_scheduling_ignored_during_execution: Some(vec![
                        PodAffinityTerm {
                            label_selector: Some(LabelSelector {
                                match_labels: Some(BTreeMap::from([(
                                    "app".to_owned(),
                                    app.to_owned(),
                                )])),
                                ..Default::default()
                            }),
                            topology_key: "kubernetes.io/hostname".into(),
                            ..Default::default()
                        },
                    ]),
                    ..Default::default()
                }),
                ..Default::default()
            });
        }
        p
    }

    fn cluster() -> Cache {
        let mut c = Cache::new();
        for name in ["n1", "n2"] {
            let mut n = node(name, "4", "8Gi", "110");
            n.metadata.labels = Some(BTreeMap::from([(
                "kubernetes.io/hostname".to_owned(),
                name.to_owned(),
            )]));
            c.apply_node(n);
        }
        c
    }

    fn fits(c: &Cache, p: Pod) -> Vec<Status> {
        let p = PodInfo::new(p);
        let mut state = CycleState::default();
        assert!(InterPodAffinity.pre_filter(&mut state, &p, c).is_success());
        ["n1", "n2"]
            .iter()
            .map(|n| InterPodAffinity.filter(&state, &p, c.node(n).unwrap()))
            .collect()
    }

    #[test]
    fn anti_affinity_keeps_replicas_apart_both_ways() {
        let mut c = cluster();
        c.apply_bound_pod(Arc::new(PodInfo::new(bound(app_pod("a", "web", true), "n1"))));
        // The incoming pod's own term rejects n1.
        let st = fits(&c, app_pod("b", "web", true));
        assert_eq!(st[0].reasons, vec![REASON_ANTI.to_owned()]);
        assert!(st[1].is_success());
        // The placed pod's term rejects a matching pod without terms of its own.
        let st = fits(&c, app_pod("c", "web", false));
        assert_eq!(st[0].reasons, vec![REASON_EXISTING_ANTI.to_owned()]);
        assert!(st[1].is_success());
        // Other apps are not affected.
        assert!(fits(&c, app_pod("d", "db", true)).iter().all(Status::is_success));
    }

    #[test]
    fn affinity_follows_matching_pods_but_lets_the_first_one_anywhere() {
        let with_affinity = |name: &str| {
            let mut p = app_pod(name, "web", false);
            p.spec.as_mut().unwrap().affinity = Some(Affinity {
                pod_affinity: Some(k8s_openapi::api::core::v1::PodAffinity {
                    required_during_scheduling_ignored_during_execution: Some(vec![
                        PodAffinityTerm {
                            label_selector: Some(LabelSelector {
                                match_labels: Some(BTreeMap::from([(
                                    "app".to_owned(),
                                    "web".to_owned(),
                                )])),
                                ..Default::default()
                            }),
                            topology_key: "kubernetes.io/hostname".into(),
                            ..Default::default()
                        },
                    ]),
                    ..Default::default()
                }),
                ..Default::default()
            });
            p
        };
        let mut c = cluster();
        assert!(fits(&c, with_affinity("a")).iter().all(Status::is_success));
        c.apply_bound_pod(Arc::new(PodInfo::new(bound(with_affinity("a"), "n2"))));
        let st = fits(&c, with_affinity("b"));
        assert_eq!(st[0].reasons, vec![REASON_AFFINITY.to_owned()]);
        assert!(st[1].is_success());
    }
}
