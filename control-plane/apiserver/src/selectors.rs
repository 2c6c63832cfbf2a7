//! Label selectors (equality and set-based) and field selectors, parsed from query strings and
//! matched against JSON objects.

use serde_json::Value;

use crate::object;
use crate::registry::ResourceType;
use crate::status::ApiError;
use crate::validation::{label_value, qualified_name};

/// One requirement of a label selector.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Requirement {
    Exists(String),
    NotExists(String),
    Equals(String, String),
    NotEquals(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    GreaterThan(String, i64),
    LessThan(String, i64),
}

/// A parsed label selector: every requirement must hold.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LabelSelector(Vec<Requirement>);

/// Splits at commas outside parentheses.
fn split_terms(s: &str) -> Vec<&str> {
    let mut terms = Vec::new();
    let (mut depth, mut start) = (0i32, 0);
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                terms.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    terms.push(&s[start..]);
    terms
        .into_iter()
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .collect()
}

fn key(k: &str) -> Result<String, String> {
    let k = k.trim();
    match qualified_name(k) {
        None => Ok(k.to_owned()),
        Some(p) => Err(format!("invalid label key {k:?}: {p}")),
    }
}

fn value(v: &str) -> Result<String, String> {
    let v = v.trim();
    match label_value(v) {
        None => Ok(v.to_owned()),
        Some(p) => Err(format!("invalid label value {v:?}: {p}")),
    }
}

impl LabelSelector {
    /// Parses `app=web,tier in (a,b),!legacy`.
    pub fn parse(s: &str) -> Result<LabelSelector, String> {
        let mut reqs = Vec::new();
        for term in split_terms(s) {
            reqs.push(Self::term(term)?);
        }
        Ok(LabelSelector(reqs))
    }

    fn term(t: &str) -> Result<Requirement, String> {
        if let Some(k) = t.strip_prefix('!') {
            return Ok(Requirement::NotExists(key(k)?));
        }
        if let Some(open) = t.find('(') {
            let close = t
                .rfind(')')
                .filter(|c| *c > open && t[c + 1..].trim().is_empty())
                .ok_or_else(|| format!("unclosed set in label selector term {t:?}"))?;
            let head: Vec<&str> = t[..open].split_whitespace().collect();
            let values = t[open + 1..close]
                .split(',')
                .map(value)
                .collect::<Result<Vec<_>, _>>()?;
            return match head.as_slice() {
                [k, "in"] => Ok(Requirement::In(key(k)?, values)),
                [k, "notin"] => Ok(Requirement::NotIn(key(k)?, values)),
                _ => Err(format!(
                    "invalid label selector term {t:?}: expected 'key in (...)' or 'key notin (...)'"
                )),
            };
        }
        for (op, build) in [
            (
                "!=",
                Requirement::NotEquals as fn(String, String) -> Requirement,
            ),
            ("==", Requirement::Equals),
            ("=", Requirement::Equals),
        ] {
            if let Some((k, v)) = t.split_once(op) {
                return Ok(build(key(k)?, value(v)?));
            }
        }
        for (op, gt) in [(">", true), ("<", false)] {
            if let Some((k, v)) = t.split_once(op) {
                let n: i64 = v.trim().parse().map_err(|_| {
                    format!("invalid label selector term {t:?}: {v:?} is not an integer")
                })?;
                return Ok(if gt {
                    Requirement::GreaterThan(key(k)?, n)
                } else {
                    Requirement::LessThan(key(k)?, n)
                });
            }
        }
        if t.contains(char::is_whitespace) {
            return Err(format!("invalid label selector term {t:?}"));
        }
        Ok(Requirement::Exists(key(t)?))
    }

    /// Whether the selector selects everything.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether the object's labels satisfy every requirement.
    pub fn matches(&self, obj: &Value) -> bool {
        self.0.iter().all(|r| {
            let get = |k: &str| object::label(obj, k);
            match r {
                Requirement::Exists(k) => get(k).is_some(),
                Requirement::NotExists(k) => get(k).is_none(),
                Requirement::Equals(k, v) => get(k) == Some(v.as_str()),
                Requirement::NotEquals(k, v) => get(k) != Some(v.as_str()),
                Requirement::In(k, vs) => get(k).is_some_and(|x| vs.iter().any(|v| v == x)),
                Requirement::NotIn(k, vs) => get(k).is_none_or(|x| vs.iter().all(|v| v != x)),
                Requirement::GreaterThan(k, n) => get(k)
                    .and_then(|x| x.parse::<i64>().ok())
                    .is_some_and(|x| x > *n),
                Requirement::LessThan(k, n) => get(k)
                    .and_then(|x| x.parse::<i64>().ok())
                    .is_some_and(|x| x < *n),
            }
        })
    }
}

/// One field selector requirement.
#[derive(Debug, Clone, PartialEq, Eq)]
struct FieldRequirement {
    field: String,
    value: String,
    equal: bool,
}

/// A parsed field selector: every requirement must hold.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FieldSelector(Vec<FieldRequirement>);

impl FieldSelector {
    /// Parses `metadata.name=web,status.phase!=Running`, accepting only fields `rt` supports.
    pub fn parse(s: &str, rt: &ResourceType) -> Result<FieldSelector, ApiError> {
        let mut reqs = Vec::new();
        for term in split_terms(s) {
            let (field, value, equal) = if let Some((f, v)) = term.split_once("!=") {
                (f, v, false)
            } else if let Some((f, v)) = term.split_once("==") {
                (f, v, true)
            } else if let Some((f, v)) = term.split_once('=') {
                (f, v, true)
            } else {
                return Err(ApiError::BadRequest(format!(
                    "invalid field selector: {term:?}: expected 'field=value' or 'field!=value'"
                )));
            };
            let field = field.trim();
            if !rt.selectable(field) {
                return Err(ApiError::BadRequest(format!(
                    "field label not supported: {field}"
                )));
            }
            reqs.push(FieldRequirement {
                field: field.to_owned(),
                value: value.trim().to_owned(),
                equal,
            });
        }
        Ok(FieldSelector(reqs))
    }

    /// Whether the selector selects everything.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether the object's fields satisfy every requirement.
    pub fn matches(&self, obj: &Value) -> bool {
        self.0
            .iter()
            .all(|r| (field_value(obj, &r.field) == r.value) == r.equal)
    }
}

/// A field's value as a field selector compares it: strings as is, numbers and booleans
/// printed, absent fields empty.
fn field_value(obj: &Value, field: &str) -> String {
    let path = if field == "source" {
        "source.component"
    } else {
        field
    };
    match object::at_path(obj, path) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Bool(b)) => b.to_string(),
        Some(Value::Number(n)) => n.to_string(),
        _ => String::new(),
    }
}

/// Renders a `LabelSelector` object (`matchLabels`, `matchExpressions`) as selector text, as a
/// `Scale`'s `status.selector` carries it.
pub fn format_label_selector(selector: &Value) -> String {
    let mut parts = Vec::new();
    if let Some(ml) = selector.get("matchLabels").and_then(Value::as_object) {
        for (k, v) in ml {
            parts.push(format!("{k}={}", v.as_str().unwrap_or_default()));
        }
    }
    for e in selector
        .get("matchExpressions")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let k = e.get("key").and_then(Value::as_str).unwrap_or_default();
        let values: Vec<&str> = e
            .get("values")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        match e.get("operator").and_then(Value::as_str) {
            Some("In") => parts.push(format!("{k} in ({})", values.join(","))),
            Some("NotIn") => parts.push(format!("{k} notin ({})", values.join(","))),
            Some("Exists") => parts.push(k.to_owned()),
            Some("DoesNotExist") => parts.push(format!("!{k}")),
            _ => {}
        }
    }
    parts.join(",")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::Registry;
    use serde_json::json;

    #[test]
    fn label_selector_table() {
        let obj = json!({"metadata": {"labels": {"app": "web", "tier": "front", "n": "5"}}});
        // (selector, matches)
        let table = [
            ("", true),
            ("app=web", true),
            ("app==web", true),
            ("app!=web", false),
            ("app=db", false),
            ("app", true),
            ("!app", false),
            ("!legacy", true),
            ("tier in (front, back)", true),
            ("tier notin (front)", false),
            ("missing notin (x)", true),
            ("app=web,tier in (back)", false),
            ("n>3,n<6", true),
            ("app in (web),!legacy,tier", true),
        ];
        for (s, want) in table {
            let sel = LabelSelector::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"));
            assert_eq!(sel.matches(&obj), want, "{s}");
        }
        for bad in [
            "app in (web",
            "a b",
            "app=bad value!",
            "Bad Key=x",
            "x in y",
        ] {
            assert!(
                LabelSelector::parse(bad).is_err(),
                "{bad} should be rejected"
            );
        }
    }

    #[test]
    fn field_selector_table() {
        let r = Registry::builtin();
        let pods = r.lookup("", "v1", "pods").unwrap();
        let pod = json!({"metadata": {"name": "p", "namespace": "default"}, "spec": {"nodeName": "n1"}, "status": {"phase": "Running"}});
        let table = [
            ("metadata.name=p", true),
            ("metadata.name!=p", false),
            ("spec.nodeName=n1,status.phase=Running", true),
            ("spec.nodeName=", false),
            ("status.phase!=Pending", true),
            ("metadata.namespace==default", true),
        ];
        for (s, want) in table {
            let sel = FieldSelector::parse(s, pods).unwrap();
            assert_eq!(sel.matches(&pod), want, "{s}");
        }
        assert!(FieldSelector::parse("spec.foo=x", pods).is_err());
        let cms = r.lookup("", "v1", "configmaps").unwrap();
        assert!(FieldSelector::parse("spec.nodeName=x", cms).is_err());
    }

    #[test]
    fn formats_label_selector_objects() {
        let s = json!({"matchLabels": {"app": "web"}, "matchExpressions": [{"key": "tier", "operator": "In", "values": ["a", "b"]}]});
        let text = format_label_selector(&s);
        assert_eq!(text, "app=web,tier in (a,b)");
        assert!(LabelSelector::parse(&text).is_ok());
    }
}
