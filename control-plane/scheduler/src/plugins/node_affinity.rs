//! `NodeAffinity`: `spec.nodeSelector` and required node affinity as a filter, preferred
//! node affinity as a score (sum of the weights of the matching terms, normalized).

use super::selectors::node_selector_term_matches;
use crate::cache::{NodeInfo, PodInfo};
use crate::framework::{
    ClusterEvents, CycleState, FilterPlugin, MAX_NODE_SCORE, Plugin, ScorePlugin, Status,
};

pub const REASON: &str = "node(s) didn't match Pod's node affinity/selector";

/// Node selector and node affinity.
#[derive(Debug, Default, Clone, Copy)]
pub struct NodeAffinity;

impl Plugin for NodeAffinity {
    fn name(&self) -> &'static str {
        "NodeAffinity"
    }
    fn events(&self) -> ClusterEvents {
        ClusterEvents::NODE_ADD.union(ClusterEvents::NODE_UPDATE)
    }
}

/// Whether `node` satisfies the pod's node selector and required node affinity.
pub fn required_node_affinity_matches(pod: &PodInfo, node: &NodeInfo) -> bool {
    let Some(spec) = pod.pod.spec.as_ref() else {
        return true;
    };
    if let Some(selector) = &spec.node_selector {
        let labels = node.labels();
        if !selector.iter().all(|(k, v)| labels.get(k) == Some(v)) {
            return false;
        }
    }
    let required = spec
        .affinity
        .as_ref()
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|a| a.required_during_scheduling_ignored_during_execution.as_ref());
    match required {
        // Terms are ORed.
        Some(sel) => sel
            .node_selector_terms
            .iter()
            .any(|t| node_selector_term_matches(t, node)),
        None => true,
    }
}

impl FilterPlugin for NodeAffinity {
    fn filter(&self, _: &CycleState, pod: &PodInfo, node: &NodeInfo) -> Status {
        if required_node_affinity_matches(pod, node) {
            Status::success()
        } else {
            Status::unresolvable(REASON)
        }
    }
}

impl ScorePlugin for NodeAffinity {
    fn score(&self, _: &CycleState, pod: &PodInfo, node: &NodeInfo) -> i64 {
        pod.pod
            .spec
            .as_ref()
            .and_then(|s| s.affinity.as_ref())
            .and_then(|a| a.node_affinity.as_ref())
            .and_then(|a| a.preferred_during_scheduling_ignored_during_execution.as_ref())
            .map(|terms| {
                terms
                    .iter()
                    .filter(|t| t.weight != 0 && node_selector_term_matches(&t.preference, node))
                    .map(|t| i64::from(t.weight))
                    .sum()
            })
            .unwrap_or(0)
    }

    fn normalize(&self, _: &CycleState, _: &PodInfo, scores: &mut [i64]) {
        normalize_to_max(scores, false);
    }
}

/// Scales scores to 0..=100 by the highest one (`reverse`: the highest gets 0), as
/// upstream's `DefaultNormalizeScore`.
pub fn normalize_to_max(scores: &mut [i64], reverse: bool) {
    let max = scores.iter().copied().max().unwrap_or(0);
    if max == 0 {
        if reverse {
            scores.iter_mut().for_each(|s| *s = MAX_NODE_SCORE);
        }
        return;
    }
    for s in scores.iter_mut() {
        let v = MAX_NODE_SCORE * *s / max;
        *s = if reverse { MAX_NODE_SCORE - v } else { v };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::tests::{node, pod};
    use k8s_openapi::api::core::v1::{
        Affinity, NodeSelector, NodeSelectorRequirement, NodeSelectorTerm, PreferredSchedulingTerm,
    };
    use std::collections::BTreeMap;

    fn labelled(name: &str, labels: &[(&str, &str)]) -> NodeInfo {
        let mut n = node(name, "1", "1Gi", "10");
        n.metadata.labels = Some(
            labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        );
        NodeInfo::new(n)
    }

    fn term(key: &str, op: &str, values: &[&str]) -> NodeSelectorTerm {
        NodeSelectorTerm {
            match_expressions: Some(vec![NodeSelectorRequirement {
                key: key.into(),
                operator: op.into(),
                values: Some(values.iter().map(|v| v.to_string()).collect()),
            }]),
            ..Default::default()
        }
    }

    #[test]
    fn node_selector_and_required_affinity_filter_nodes() {
        let s = CycleState::default();
        let ssd_a = labelled("a", &[("disk", "ssd"), ("zone", "a")]);
        let hdd_b = labelled("b", &[("disk", "hdd"), ("zone", "b")]);
        let gpu = labelled("c", &[("gpus", "4")]);

        let mut p = pod("p", "", "");
        p.spec.as_mut().unwrap().node_selector =
            Some(BTreeMap::from([("disk".to_owned(), "ssd".to_owned())]));
        let p = PodInfo::new(p);
        assert!(NodeAffinity.filter(&s, &p, &ssd_a).is_success());
        assert_eq!(NodeAffinity.filter(&s, &p, &hdd_b).reasons, vec![REASON.to_owned()]);

        let with_terms = |terms: Vec<NodeSelectorTerm>| {
            let mut p = pod("q", "", "");
            p.spec.as_mut().unwrap().affinity = Some(Affinity {
                node_affinity: Some(k8s_openapi::api::core::v1::NodeAffinity {
                    required_during_scheduling_ignored_during_execution: Some(NodeSelector {
                        node_selector_terms: terms,
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            });
            PodInfo::new(p)
        };
        let table = [
            (vec![term("zone", "In", &["b"])], [false, true, false]),
            (vec![term("zone", "NotIn", &["b"])], [true, false, true]),
            (vec![term("zone", "Exists", &[])], [true, true, false]),
            (vec![term("gpus", "Gt", &["2"])], [false, false, true]),
            (vec![term("gpus", "Lt", &["2"])], [false, false, false]),
            // Terms are ORed.
            (
                vec![term("zone", "In", &["a"]), term("gpus", "Exists", &[])],
                [true, false, true],
            ),
        ];
        for (terms, want) in table {
            let p = with_terms(terms.clone());
            let got: Vec<bool> = [&ssd_a, &hdd_b, &gpu]
                .iter()
                .map(|n| NodeAffinity.filter(&s, &p, n).is_success())
                .collect();
            assert_eq!(got, want, "{terms:?}");
        }
    }

    #[test]
    fn preferred_affinity_scores_by_weight() {
        let s = CycleState::default();
        let mut p = pod("p", "", "");
        p.spec.as_mut().unwrap().affinity = Some(Affinity {
            node_affinity: Some(k8s_openapi::api::core::v1::NodeAffinity {
                preferred_during_scheduling_ignored_during_execution: Some(vec![
                    PreferredSchedulingTerm {
                        weight: 80,
                        preference: term("zone", "In", &["a"]),
                    },
                    PreferredSchedulingTerm {
                        weight: 20,
                        preference: term("disk", "In", &["hdd"]),
                    },
                ]),
                ..Default::default()
            }),
            ..Default::default()
        });
        let p = PodInfo::new(p);
        let nodes = [
            labelled("a", &[("zone", "a")]),
            labelled("b", &[("disk", "hdd")]),
            labelled("c", &[]),
        ];
        let mut scores: Vec<i64> = nodes.iter().map(|n| NodeAffinity.score(&s, &p, n)).collect();
        assert_eq!(scores, vec![80, 20, 0]);
        NodeAffinity.normalize(&s, &p, &mut scores);
        assert_eq!(scores, vec![100, 25, 0]);
    }
}
