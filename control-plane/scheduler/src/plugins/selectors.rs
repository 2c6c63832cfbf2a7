//! Label selectors, node selector terms and tolerations, as the API defines them.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{NodeSelectorTerm, Taint, Toleration};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

use crate::cache::NodeInfo;

/// Whether `labels` match a `LabelSelector` (an empty selector matches everything).
pub fn label_selector_matches(selector: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
    if let Some(ml) = &selector.match_labels
        && !ml.iter().all(|(k, v)| labels.get(k) == Some(v))
    {
        return false;
    }
    selector.match_expressions.iter().flatten().all(|e| {
        let values = e.values.as_deref().unwrap_or(&[]);
        let value = labels.get(&e.key);
        match e.operator.as_str() {
            "In" => value.is_some_and(|v| values.contains(v)),
            "NotIn" => value.is_none_or(|v| !values.contains(v)),
            "Exists" => value.is_some(),
            "DoesNotExist" => value.is_none(),
            _ => false,
        }
    })
}

/// Whether a node matches a `NodeSelectorTerm` (all of its requirements; a term without
/// requirements matches nothing, as upstream).
pub fn node_selector_term_matches(term: &NodeSelectorTerm, node: &NodeInfo) -> bool {
    let exprs = term.match_expressions.as_deref().unwrap_or(&[]);
    let fields = term.match_fields.as_deref().unwrap_or(&[]);
    if exprs.is_empty() && fields.is_empty() {
        return false;
    }
    let labels = node.labels();
    let labels_ok = exprs.iter().all(|r| {
        let values = r.values.as_deref().unwrap_or(&[]);
        let value = labels.get(&r.key);
        match r.operator.as_str() {
            "In" => value.is_some_and(|v| values.contains(v)),
            "NotIn" => value.is_none_or(|v| !values.contains(v)),
            "Exists" => value.is_some(),
            "DoesNotExist" => value.is_none(),
            "Gt" | "Lt" => {
                let (Some(v), Some(bound)) = (
                    value.and_then(|v| v.parse::<i64>().ok()),
                    values.first().and_then(|b| b.parse::<i64>().ok()),
                ) else {
                    return false;
                };
                if r.operator == "Gt" { v > bound } else { v < bound }
            }
            _ => false,
        }
    });
    let fields_ok = fields.iter().all(|r| {
        if r.key != "metadata.name" {
            return false;
        }
        let values = r.values.as_deref().unwrap_or(&[]);
        let has = values.iter().any(|v| v.as_str() == node.name.as_ref());
        match r.operator.as_str() {
            "In" => has,
            "NotIn" => !has,
            _ => false,
        }
    });
    labels_ok && fields_ok
}

/// Whether a toleration tolerates a taint.
pub fn tolerates(toleration: &Toleration, taint: &Taint) -> bool {
    if let Some(effect) = toleration.effect.as_deref()
        && !effect.is_empty()
        && effect != taint.effect
    {
        return false;
    }
    let key = toleration.key.as_deref().unwrap_or("");
    let exists = toleration.operator.as_deref() == Some("Exists");
    if key.is_empty() {
        // An empty key with Exists tolerates every taint.
        return exists;
    }
    if key != taint.key {
        return false;
    }
    exists || toleration.value.as_deref().unwrap_or("") == taint.value.as_deref().unwrap_or("")
}

/// Whether any of `tolerations` tolerates `taint`.
pub fn tolerated(tolerations: &[Toleration], taint: &Taint) -> bool {
    tolerations.iter().any(|t| tolerates(t, taint))
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;

    fn taint(key: &str, value: &str, effect: &str) -> Taint {
        Taint {
            key: key.into(),
            value: Some(value.into()),
            effect: effect.into(),
            ..Default::default()
        }
    }

    fn tol(key: &str, op: &str, value: &str, effect: &str) -> Toleration {
        Toleration {
            key: (!key.is_empty()).then(|| key.into()),
            operator: (!op.is_empty()).then(|| op.into()),
            value: (!value.is_empty()).then(|| value.into()),
            effect: (!effect.is_empty()).then(|| effect.into()),
            ..Default::default()
        }
    }

    #[test]
    fn tolerations_match_as_the_api_defines() {
        let t = taint("k", "v", "NoSchedule");
        let table = [
            (tol("k", "Equal", "v", "NoSchedule"), true),
            (tol("k", "", "v", ""), true),
            (tol("k", "Equal", "w", "NoSchedule"), false),
            (tol("k", "Exists", "", ""), true),
            (tol("k", "Exists", "", "NoExecute"), false),
            (tol("", "Exists", "", ""), true),
            (tol("other", "Exists", "", ""), false),
        ];
        for (toleration, want) in table {
            assert_eq!(tolerates(&toleration, &t), want, "{toleration:?}");
        }
    }

    #[test]
    fn label_selectors_match_labels_and_expressions() {
        let labels = BTreeMap::from([("app".to_owned(), "web".to_owned())]);
        let req = |op: &str, values: &[&str]| LabelSelector {
            match_expressions: Some(vec![LabelSelectorRequirement {
                key: "app".into(),
                operator: op.into(),
                values: Some(values.iter().map(|v| v.to_string()).collect()),
            }]),
            ..Default::default()
        };
        assert!(label_selector_matches(&LabelSelector::default(), &labels));
        assert!(label_selector_matches(&req("In", &["web", "db"]), &labels));
        assert!(!label_selector_matches(&req("NotIn", &["web"]), &labels));
        assert!(label_selector_matches(&req("Exists", &[]), &labels));
        assert!(!label_selector_matches(&req("DoesNotExist", &[]), &labels));
        let ml = LabelSelector {
            match_labels: Some(BTreeMap::from([("app".to_owned(), "db".to_owned())])),
            ..Default::default()
        };
        assert!(!label_selector_matches(&ml, &labels));
    }
}
