//! Aligned `Key:  value` text, the helpers every description shares, the generic
//! renderer, and the Events section.

use std::io::Write;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::Event;
use serde_json::Value;

use crate::output::{age, at, str_at};

/// Lines of `Key:\tvalue` and sections, aligned like kubectl's describe output.
#[derive(Debug, Default)]
pub struct Text {
    lines: Vec<Line>,
}

/// A line to align, or one to print as it is (user data, which may hold tabs).
#[derive(Debug)]
enum Line {
    Cells(String),
    Raw(String),
}

impl Text {
    /// `Key:  value` at an indentation level (2 spaces each).
    pub fn kv(&mut self, level: usize, key: &str, value: impl std::fmt::Display) {
        self.lines.push(Line::Cells(format!(
            "{}{key}:\t{value}",
            "  ".repeat(level)
        )));
    }

    /// `Key:` followed by one value per line, aligned (`<none>` when empty).
    pub fn kv_lines(&mut self, level: usize, key: &str, values: &[String]) {
        match values.split_first() {
            None => self.kv(level, key, "<none>"),
            Some((first, rest)) => {
                self.kv(level, key, first);
                for v in rest {
                    self.lines
                        .push(Line::Cells(format!("{}\t{v}", "  ".repeat(level))));
                }
            }
        }
    }

    /// A line of tab-separated cells (a table row) or a section heading.
    pub fn row(&mut self, level: usize, cells: &[&str]) {
        self.lines.push(Line::Cells(format!(
            "{}{}",
            "  ".repeat(level),
            cells.join("\t")
        )));
    }

    /// A line printed as it is (not aligned; ends the current block of columns).
    pub fn raw(&mut self, line: &str) {
        self.lines.push(Line::Raw(line.to_owned()));
    }

    /// The aligned text.
    pub fn finish(self) -> String {
        let mut text = String::new();
        let mut block: Vec<&str> = Vec::new();
        let flush = |block: &mut Vec<&str>, text: &mut String| {
            let mut out = tabwriter::TabWriter::new(Vec::new()).padding(2).minwidth(0);
            for line in block.drain(..) {
                // Infallible: writing to a Vec.
                let _ = writeln!(out, "{line}");
            }
            let bytes = out.into_inner().unwrap_or_default();
            text.push_str(&String::from_utf8_lossy(&bytes));
        };
        for line in &self.lines {
            match line {
                Line::Cells(cells) => block.push(cells),
                Line::Raw(raw) => {
                    flush(&mut block, &mut text);
                    text.push_str(raw);
                    text.push('\n');
                }
            }
        }
        flush(&mut block, &mut text);
        text
    }
}

pub fn or_none(value: Option<&str>) -> String {
    match value {
        Some(v) if !v.is_empty() => v.to_owned(),
        _ => "<none>".to_owned(),
    }
}

/// `Mon, 02 Jan 2006 15:04:05 +0000`, as kubectl prints times.
pub fn time_text(value: Option<&str>) -> String {
    match value.and_then(|t| t.parse::<Timestamp>().ok()) {
        Some(t) => t.strftime("%a, %d %b %Y %H:%M:%S +0000").to_string(),
        None => "<unset>".to_owned(),
    }
}

/// `key=value` lines of a string map (labels, selectors), sorted.
pub fn map_lines(value: Option<&Value>) -> Vec<String> {
    value
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .map(|(k, v)| {
                    format!(
                        "{k}={}",
                        v.as_str()
                            .map(str::to_owned)
                            .unwrap_or_else(|| v.to_string())
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// `key: value` lines of annotations, without kubectl's last-applied-configuration.
pub fn annotation_lines(value: Option<&Value>) -> Vec<String> {
    value
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .filter(|(k, _)| k.as_str() != "kubectl.kubernetes.io/last-applied-configuration")
                .map(|(k, v)| format!("{k}: {}", v.as_str().unwrap_or_default()))
                .collect()
        })
        .unwrap_or_default()
}

/// A label selector (`matchLabels`/`matchExpressions`, or a plain map as Services have) in
/// selector syntax: `app=web,tier in (a,b)`; `<none>` when empty.
pub fn selector_text(selector: Option<&Value>) -> String {
    let Some(selector) = selector else {
        return "<none>".to_owned();
    };
    let mut parts = map_lines(selector.get("matchLabels"));
    if selector.get("matchLabels").is_none() && selector.get("matchExpressions").is_none() {
        parts = map_lines(Some(selector));
    }
    for e in selector["matchExpressions"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
    {
        let key = e["key"].as_str().unwrap_or("");
        let values: Vec<&str> = e["values"]
            .as_array()
            .map(|v| v.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        parts.push(match e["operator"].as_str().unwrap_or("") {
            "In" => format!("{key} in ({})", values.join(",")),
            "NotIn" => format!("{key} notin ({})", values.join(",")),
            "Exists" => key.to_owned(),
            "DoesNotExist" => format!("!{key}"),
            op => format!("{key} {op} ({})", values.join(",")),
        });
    }
    if parts.is_empty() {
        "<none>".to_owned()
    } else {
        parts.join(",")
    }
}

pub fn scalar_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "<none>".to_owned(),
        other => other.to_string(),
    }
}

/// `creationTimestamp` → `Creation Timestamp`; keys that are not plain identifiers (label
/// keys, paths) stay as they are.
pub fn label_for(key: &str) -> String {
    if !key.chars().all(|c| c.is_ascii_alphanumeric()) {
        return key.to_owned();
    }
    let mut out = String::new();
    let chars: Vec<char> = key.chars().collect();
    for (i, &c) in chars.iter().enumerate() {
        let starts_word = i > 0
            && c.is_ascii_uppercase()
            && (chars[i - 1].is_ascii_lowercase()
                || chars.get(i + 1).is_some_and(char::is_ascii_lowercase));
        if starts_word {
            out.push(' ');
        }
        if i == 0 {
            out.push(c.to_ascii_uppercase());
        } else {
            out.push(c);
        }
    }
    out
}

/// The generic renderer: nested fields as `Key:` blocks, as kubectl describes custom
/// resources.
pub fn generic(text: &mut Text, level: usize, key: &str, value: &Value) {
    let label = label_for(key);
    match value {
        Value::Object(map) if map.is_empty() => text.kv(level, &label, "<none>"),
        Value::Object(map) => {
            text.row(level, &[&format!("{label}:")]);
            for (k, v) in map {
                generic(text, level + 1, k, v);
            }
        }
        Value::Array(items) if items.is_empty() => text.kv(level, &label, "<none>"),
        Value::Array(items) if items.iter().all(|i| !i.is_object() && !i.is_array()) => {
            text.kv_lines(
                level,
                &label,
                &items.iter().map(scalar_text).collect::<Vec<_>>(),
            );
        }
        Value::Array(items) => {
            text.row(level, &[&format!("{label}:")]);
            for item in items {
                match item {
                    Value::Object(map) => {
                        for (k, v) in map {
                            generic(text, level + 1, k, v);
                        }
                    }
                    other => text.row(level + 1, &[&scalar_text(other)]),
                }
            }
        }
        scalar => text.kv(level, &label, scalar_text(scalar)),
    }
}

/// Name, Namespace, Labels, Annotations (the head of every description).
pub fn header(text: &mut Text, o: &Value, namespaced: bool) {
    text.kv(0, "Name", str_at(o, "metadata.name").unwrap_or(""));
    if namespaced {
        text.kv(
            0,
            "Namespace",
            str_at(o, "metadata.namespace").unwrap_or(""),
        );
    }
    text.kv_lines(0, "Labels", &map_lines(at(o, "metadata.labels")));
    text.kv_lines(
        0,
        "Annotations",
        &annotation_lines(at(o, "metadata.annotations")),
    );
}

pub fn conditions(text: &mut Text, o: &Value, columns: &[(&str, &str)], dashes: bool) {
    let Some(list) = at(o, "status.conditions")
        .and_then(Value::as_array)
        .filter(|c| !c.is_empty())
    else {
        return;
    };
    text.row(0, &["Conditions:"]);
    let heads: Vec<&str> = columns.iter().map(|(h, _)| *h).collect();
    text.row(1, &heads);
    if dashes {
        let rule: Vec<String> = heads.iter().map(|h| "-".repeat(h.len())).collect();
        text.row(1, &rule.iter().map(String::as_str).collect::<Vec<_>>());
    }
    for c in list {
        let cells: Vec<String> = columns
            .iter()
            .map(|(_, field)| {
                let v = &c[*field];
                if field.ends_with("Time") {
                    time_text(v.as_str())
                } else {
                    scalar_text(v)
                }
            })
            .collect();
        text.row(1, &cells.iter().map(String::as_str).collect::<Vec<_>>());
    }
}

pub fn describe_generic(text: &mut Text, o: &Value, namespaced: bool) {
    header(text, o, namespaced);
    text.kv(0, "API Version", str_at(o, "apiVersion").unwrap_or(""));
    text.kv(0, "Kind", str_at(o, "kind").unwrap_or(""));
    if let Some(map) = o.as_object() {
        for (k, v) in map
            .iter()
            .filter(|(k, _)| !matches!(k.as_str(), "apiVersion" | "kind" | "metadata"))
        {
            generic(text, 0, k, v);
        }
    }
}

/// The `Events:` section: `Type Reason Age From Message`, oldest first.
pub fn events_section(text: &mut Text, events: &[Event], now: Timestamp) {
    if events.is_empty() {
        text.kv(0, "Events", "<none>");
        return;
    }
    text.row(0, &["Events:"]);
    text.row(1, &["Type", "Reason", "Age", "From", "Message"]);
    text.row(1, &["----", "------", "----", "----", "-------"]);
    let when = |e: &Event| -> Option<Timestamp> {
        e.last_timestamp
            .as_ref()
            .map(|t| t.0)
            .or_else(|| e.event_time.as_ref().map(|t| t.0))
            .or_else(|| e.first_timestamp.as_ref().map(|t| t.0))
            .or_else(|| e.metadata.creation_timestamp.as_ref().map(|t| t.0))
    };
    let mut sorted: Vec<&Event> = events.iter().collect();
    sorted.sort_by_key(|e| when(e));
    for e in sorted {
        let last = age(when(e).map(|t| t.to_string()).as_deref(), now);
        let count = e.count.unwrap_or(1);
        let age_text = if count > 1 {
            let first = e.first_timestamp.as_ref().map(|t| t.0.to_string());
            format!("{last} (x{count} over {})", age(first.as_deref(), now))
        } else {
            last
        };
        let from = e
            .source
            .as_ref()
            .and_then(|s| s.component.clone())
            .or_else(|| e.reporting_component.clone())
            .filter(|c| !c.is_empty())
            .unwrap_or_default();
        text.row(
            1,
            &[
                e.type_.as_deref().unwrap_or(""),
                e.reason.as_deref().unwrap_or(""),
                &age_text,
                &from,
                e.message.as_deref().unwrap_or("").trim(),
            ],
        );
    }
}
