//! `TaintToleration`: no pods on a node with a `NoSchedule`/`NoExecute` taint they do not
//! tolerate (filter); fewer untolerated `PreferNoSchedule` taints score higher.

use k8s_openapi::api::core::v1::Toleration;

use super::node_affinity::normalize_to_max;
use super::selectors::tolerated;
use crate::cache::{NodeInfo, PodInfo};
use crate::framework::{ClusterEvents, CycleState, FilterPlugin, Plugin, ScorePlugin, Status};

/// Taints and tolerations.
#[derive(Debug, Default, Clone, Copy)]
pub struct TaintToleration;

impl Plugin for TaintToleration {
    fn name(&self) -> &'static str {
        "TaintToleration"
    }
    fn events(&self) -> ClusterEvents {
        ClusterEvents::NODE_ADD.union(ClusterEvents::NODE_UPDATE)
    }
}

fn tolerations(pod: &PodInfo) -> &[Toleration] {
    pod.pod
        .spec
        .as_ref()
        .and_then(|s| s.tolerations.as_deref())
        .unwrap_or(&[])
}

impl FilterPlugin for TaintToleration {
    fn filter(&self, _: &CycleState, pod: &PodInfo, node: &NodeInfo) -> Status {
        let tols = tolerations(pod);
        let untolerated = node.taints().iter().find(|t| {
            (t.effect == "NoSchedule" || t.effect == "NoExecute") && !tolerated(tols, t)
        });
        match untolerated {
            Some(t) => Status::unresolvable(format!(
                "node(s) had untolerated taint {{{}: {}}}",
                t.key,
                t.value.as_deref().unwrap_or("")
            )),
            None => Status::success(),
        }
    }
}

impl ScorePlugin for TaintToleration {
    fn score(&self, _: &CycleState, pod: &PodInfo, node: &NodeInfo) -> i64 {
        // Upstream counts only tolerations with an empty or PreferNoSchedule effect here.
        let tols: Vec<Toleration> = tolerations(pod)
            .iter()
            .filter(|t| t.effect.as_deref().is_none_or(|e| e.is_empty() || e == "PreferNoSchedule"))
            .cloned()
            .collect();
        node.taints()
            .iter()
            .filter(|t| t.effect == "PreferNoSchedule" && !tolerated(&tols, t))
            .count() as i64
    }

    fn normalize(&self, _: &CycleState, _: &PodInfo, scores: &mut [i64]) {
        normalize_to_max(scores, true);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::tests::{node, pod};
    use k8s_openapi::api::core::v1::{NodeSpec, Taint};

    fn tainted(name: &str, taints: &[(&str, &str, &str)]) -> NodeInfo {
        let mut n = node(name, "1", "1Gi", "10");
        n.spec = Some(NodeSpec {
            taints: Some(
                taints
                    .iter()
                    .map(|(k, v, e)| Taint {
                        key: k.to_string(),
                        value: Some(v.to_string()),
                        effect: e.to_string(),
                        ..Default::default()
                    })
                    .collect(),
            ),
            ..Default::default()
        });
        NodeInfo::new(n)
    }

    #[test]
    fn untolerated_hard_taints_filter_with_upstream_wording() {
        let s = CycleState::default();
        let n = tainted("n", &[("dedicated", "gpu", "NoSchedule")]);
        let plain = PodInfo::new(pod("p", "", ""));
        assert_eq!(
            TaintToleration.filter(&s, &plain, &n).reasons,
            vec!["node(s) had untolerated taint {dedicated: gpu}".to_owned()]
        );
        let soft = tainted("m", &[("x", "y", "PreferNoSchedule")]);
        assert!(TaintToleration.filter(&s, &plain, &soft).is_success());

        let mut p = pod("q", "", "");
        p.spec.as_mut().unwrap().tolerations = Some(vec![Toleration {
            key: Some("dedicated".into()),
            value: Some("gpu".into()),
            operator: Some("Equal".into()),
            effect: Some("NoSchedule".into()),
            ..Default::default()
        }]);
        assert!(TaintToleration.filter(&s, &PodInfo::new(p), &n).is_success());
    }

    #[test]
    fn fewer_prefer_no_schedule_taints_score_higher() {
        let s = CycleState::default();
        let p = PodInfo::new(pod("p", "", ""));
        let nodes = [
            tainted("a", &[]),
            tainted("b", &[("x", "1", "PreferNoSchedule")]),
            tainted("c", &[("x", "1", "PreferNoSchedule"), ("y", "1", "PreferNoSchedule")]),
        ];
        let mut scores: Vec<i64> = nodes.iter().map(|n| TaintToleration.score(&s, &p, n)).collect();
        TaintToleration.normalize(&s, &p, &mut scores);
        assert_eq!(scores, vec![100, 50, 0]);
    }
}
