//! Label selector matching on plain maps (what Services' `spec.selector` is).

use std::collections::BTreeMap;

/// Whether `labels` carries every key/value of `selector`. An empty selector matches
/// nothing here: a Service without a selector has no managed endpoints.
pub(crate) fn selector_matches(
    selector: &BTreeMap<String, String>,
    labels: Option<&BTreeMap<String, String>>,
) -> bool {
    if selector.is_empty() {
        return false;
    }
    let Some(labels) = labels else { return false };
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn table() {
        let cases = [
            (map(&[("app", "a")]), Some(map(&[("app", "a"), ("x", "y")])), true),
            (map(&[("app", "a")]), Some(map(&[("app", "b")])), false),
            (map(&[("app", "a"), ("t", "1")]), Some(map(&[("app", "a")])), false),
            (map(&[]), Some(map(&[("app", "a")])), false),
            (map(&[("app", "a")]), None, false),
        ];
        for (selector, labels, want) in cases {
            assert_eq!(selector_matches(&selector, labels.as_ref()), want, "{selector:?} {labels:?}");
        }
    }
}
