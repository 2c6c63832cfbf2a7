//! Printing as kubectl prints: server-side `Table`s as aligned columns, `-o yaml|json|name`,
//! and ages (`45s`, `5m30s`, `2d4h`).

use std::io::Write;

use anyhow::{Context, Result};
use jiff::Timestamp;
use serde_json::{Value, json};

/// `-o/--output` of `get`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// The server's columns plus the extra (`priority > 0`) ones.
    Wide,
    /// The objects as YAML.
    Yaml,
    /// The objects as JSON.
    Json,
    /// `kind.group/name`, one a line.
    Name,
}

/// Age as kubectl prints it (upstream's `HumanDuration`).
pub fn human_duration(seconds: i64) -> String {
    if seconds < -1 {
        return "<invalid>".to_owned();
    }
    if seconds < 0 {
        return "0s".to_owned();
    }
    if seconds < 120 {
        return format!("{seconds}s");
    }
    let minutes = seconds / 60;
    if minutes < 10 {
        let s = seconds % 60;
        return if s == 0 {
            format!("{minutes}m")
        } else {
            format!("{minutes}m{s}s")
        };
    }
    if minutes < 180 {
        return format!("{minutes}m");
    }
    let hours = seconds / 3600;
    if hours < 8 {
        let m = minutes % 60;
        return if m == 0 {
            format!("{hours}h")
        } else {
            format!("{hours}h{m}m")
        };
    }
    if hours < 48 {
        return format!("{hours}h");
    }
    if hours < 24 * 8 {
        let h = hours % 24;
        return if h == 0 {
            format!("{}d", hours / 24)
        } else {
            format!("{}d{h}h", hours / 24)
        };
    }
    if hours < 24 * 365 * 2 {
        return format!("{}d", hours / 24);
    }
    if hours < 24 * 365 * 8 {
        let days = (hours / 24) % 365;
        return if days == 0 {
            format!("{}y", hours / 24 / 365)
        } else {
            format!("{}y{days}d", hours / 24 / 365)
        };
    }
    format!("{}y", hours / 24 / 365)
}

/// The age of an RFC 3339 timestamp, or `<unknown>`.
pub fn age(timestamp: Option<&str>, now: Timestamp) -> String {
    match timestamp.and_then(|t| t.parse::<Timestamp>().ok()) {
        Some(t) => human_duration(now.duration_since(t).as_secs()),
        None => "<unknown>".to_owned(),
    }
}

/// A string at a dotted path of a JSON value.
pub fn str_at<'a>(value: &'a Value, path: &str) -> Option<&'a str> {
    at(value, path).and_then(Value::as_str)
}

/// The value at a dotted path (`metadata.name`).
pub fn at<'a>(value: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.').try_fold(value, |v, key| v.get(key))
}

/// One table to print: the server's `Table` plus how names are shown.
#[derive(Debug)]
pub struct TableView<'a> {
    /// The `meta.k8s.io/v1` `Table`.
    pub table: &'a Value,
    /// Adds a `NAMESPACE` column first (from each row's object metadata).
    pub with_namespace: bool,
    /// Shows `priority > 0` columns.
    pub wide: bool,
    /// Prefix for the name column (`deployment.apps/`) when several types are listed.
    pub name_prefix: Option<String>,
    /// Adds a `LABELS` column.
    pub show_labels: bool,
}

/// Renders a `Table` as kubectl does: upper-cased headers, columns padded by 3 spaces.
pub fn render_table(view: &TableView<'_>, print_headers: bool) -> Result<String> {
    let lines = table_cells(view, print_headers);
    let mut out = tabwriter::TabWriter::new(Vec::new()).padding(3).minwidth(0);
    for line in lines {
        writeln!(out, "{}", line.join("\t"))?;
    }
    let bytes = out.into_inner().context("failed to align the table")?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

/// The cells of a `Table` as printed: the header line (when asked) then one line a row.
pub fn table_cells(view: &TableView<'_>, print_headers: bool) -> Vec<Vec<String>> {
    let columns = view.table["columnDefinitions"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let shown: Vec<usize> = columns
        .iter()
        .enumerate()
        .filter(|(_, c)| view.wide || c["priority"].as_i64().unwrap_or(0) == 0)
        .map(|(i, _)| i)
        .collect();
    let mut lines: Vec<Vec<String>> = Vec::new();
    if print_headers {
        let mut header = Vec::new();
        if view.with_namespace {
            header.push("NAMESPACE".to_owned());
        }
        header.extend(
            shown
                .iter()
                .map(|&i| columns[i]["name"].as_str().unwrap_or("").to_uppercase()),
        );
        if view.show_labels {
            header.push("LABELS".to_owned());
        }
        lines.push(header);
    }
    for row in view.table["rows"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
    {
        let cells = row["cells"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default();
        let mut line = Vec::new();
        if view.with_namespace {
            line.push(
                str_at(row, "object.metadata.namespace")
                    .unwrap_or("")
                    .to_owned(),
            );
        }
        for &i in &shown {
            let mut text = cell_text(cells.get(i).unwrap_or(&Value::Null));
            if columns[i]["format"] == "name"
                && let Some(prefix) = &view.name_prefix
            {
                text = format!("{prefix}{text}");
            }
            line.push(text);
        }
        if view.show_labels {
            line.push(labels_text(at(row, "object.metadata.labels")));
        }
        lines.push(line);
    }
    lines
}

/// Keeps rows printed one at a time (`get -w`) in the columns of the table printed first,
/// widening a column when a later cell is longer.
#[derive(Debug, Default)]
pub struct RowAligner {
    widths: Vec<usize>,
}

impl RowAligner {
    /// Column widths from the lines already printed.
    pub fn new(lines: &[Vec<String>]) -> RowAligner {
        let mut aligner = RowAligner::default();
        for line in lines {
            aligner.widen(line);
        }
        aligner
    }

    fn widen(&mut self, line: &[String]) {
        for (i, cell) in line.iter().enumerate() {
            let width = cell.chars().count();
            match self.widths.get_mut(i) {
                Some(w) => *w = (*w).max(width),
                None => self.widths.push(width),
            }
        }
    }

    /// One line: every cell but the last padded to its column's width plus 3 spaces.
    pub fn line(&mut self, cells: &[String]) -> String {
        self.widen(cells);
        let mut out = String::new();
        for (i, cell) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                out.push_str(cell);
            } else {
                let pad = self.widths[i] + 3 - cell.chars().count();
                out.push_str(cell);
                out.push_str(&" ".repeat(pad));
            }
        }
        out
    }
}

fn cell_text(cell: &Value) -> String {
    match cell {
        Value::String(s) => s.clone(),
        Value::Null => "<none>".to_owned(),
        other => other.to_string(),
    }
}

/// `a=b,c=d`, or `<none>`.
pub fn labels_text(labels: Option<&Value>) -> String {
    let pairs: Vec<String> = labels
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
                .collect()
        })
        .unwrap_or_default();
    if pairs.is_empty() {
        "<none>".to_owned()
    } else {
        pairs.join(",")
    }
}

/// Prints objects as kubectl's `-o yaml|json`: one object as itself, several (or a list
/// request) as a `v1` `List`.
pub fn objects_text(objects: Vec<Value>, as_list: bool, format: Format) -> Result<String> {
    let value = if !as_list && objects.len() == 1 {
        objects.into_iter().next().unwrap_or(Value::Null)
    } else {
        json!({"apiVersion": "v1", "items": objects, "kind": "List", "metadata": {"resourceVersion": ""}})
    };
    Ok(match format {
        Format::Json => format!("{}\n", serde_json::to_string_pretty(&value)?),
        _ => serde_yaml_ng::to_string(&value).context("failed to write YAML")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_like_kubectl() {
        let table = [
            (-5, "<invalid>"),
            (-1, "0s"),
            (0, "0s"),
            (45, "45s"),
            (119, "119s"),
            (120, "2m"),
            (330, "5m30s"),
            (600, "10m"),
            (179 * 60, "179m"),
            (3 * 3600, "3h"),
            (3 * 3600 + 1800, "3h30m"),
            (47 * 3600, "47h"),
            (2 * 86400 + 4 * 3600, "2d4h"),
            (30 * 86400, "30d"),
            (3 * 365 * 86400, "3y"),
            (3 * 365 * 86400 + 10 * 86400, "3y10d"),
            (9 * 365 * 86400, "9y"),
        ];
        for (seconds, text) in table {
            assert_eq!(human_duration(seconds), text, "{seconds}s");
        }
    }

    fn table() -> Value {
        json!({
            "kind": "Table",
            "columnDefinitions": [
                {"name": "Name", "type": "string", "format": "name", "priority": 0},
                {"name": "Ready", "type": "string", "format": "", "priority": 0},
                {"name": "IP", "type": "string", "format": "", "priority": 1},
            ],
            "rows": [
                {"cells": ["web-1", "1/1", "10.0.0.1"], "object": {"metadata": {"namespace": "default", "labels": {"app": "web"}}}},
                {"cells": ["db", "0/1", null], "object": {"metadata": {"namespace": "data"}}},
            ],
        })
    }

    #[test]
    fn tables_align_and_hide_wide_columns() {
        let t = table();
        let view = TableView {
            table: &t,
            with_namespace: false,
            wide: false,
            name_prefix: None,
            show_labels: false,
        };
        assert_eq!(
            render_table(&view, true).unwrap(),
            "NAME    READY\nweb-1   1/1\ndb      0/1\n"
        );
        let view = TableView {
            table: &t,
            with_namespace: true,
            wide: true,
            name_prefix: Some("pod/".into()),
            show_labels: true,
        };
        assert_eq!(
            render_table(&view, true).unwrap(),
            "NAMESPACE   NAME        READY   IP         LABELS\n\
             default     pod/web-1   1/1     10.0.0.1   app=web\n\
             data        pod/db      0/1     <none>     <none>\n"
        );
    }

    #[test]
    fn watched_rows_keep_the_first_tables_columns() {
        let t = table();
        let view = TableView {
            table: &t,
            with_namespace: false,
            wide: false,
            name_prefix: None,
            show_labels: false,
        };
        let printed = table_cells(&view, true);
        let mut aligner = RowAligner::new(&printed);
        let row = |cells: &[&str]| cells.iter().map(|c| (*c).to_owned()).collect::<Vec<_>>();
        // Same columns as "NAME    READY" above.
        assert_eq!(aligner.line(&row(&["db", "1/1"])), "db      1/1");
        // A longer name widens the column for later rows.
        assert_eq!(aligner.line(&row(&["web-12345", "0/1"])), "web-12345   0/1");
        assert_eq!(aligner.line(&row(&["db", "1/1"])), "db          1/1");
    }

    #[test]
    fn one_object_or_a_list() {
        let one = objects_text(vec![json!({"kind": "Pod"})], false, Format::Json).unwrap();
        assert_eq!(
            serde_json::from_str::<Value>(&one).unwrap(),
            json!({"kind": "Pod"})
        );
        let list = objects_text(vec![json!({"kind": "Pod"})], true, Format::Yaml).unwrap();
        let parsed: Value = serde_yaml_ng::from_str(&list).unwrap();
        assert_eq!(parsed["kind"], "List");
        assert_eq!(parsed["items"][0]["kind"], "Pod");
    }
}
