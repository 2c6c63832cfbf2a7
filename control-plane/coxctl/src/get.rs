//! `coxctl get KIND [NAME...]`: the server's own `Table` columns (what kubectl prints), or
//! the objects as YAML, JSON or names.

use anyhow::{Context, Result, bail};
use futures::TryStreamExt;
use http::header::{ACCEPT, HeaderValue};
use jiff::Timestamp;
use kube::api::{DynamicObject, GetParams, ListParams, WatchEvent, WatchParams};
use kube::core::Request;
use serde_json::{Value, json};

use crate::client::{Connection, format_status, server_error};
use crate::output::{self, Format, TableView};
use crate::resources::{Catalog, Resource, split_kind_name};

/// What kubectl sends to get a server-side `Table`.
const TABLE_ACCEPT: &str = "application/json;as=Table;v=v1;g=meta.k8s.io,application/json";

/// Options of `coxctl get`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The type (`pods`, `po`, `deploy`, `po,svc`) then names, or `TYPE/NAME` arguments.
    #[arg(required = true, value_name = "TYPE[/NAME]")]
    targets: Vec<String>,
    /// Label selector (`app=web,tier!=db`).
    #[arg(long, short = 'l')]
    selector: Option<String>,
    /// Field selector (`status.phase=Running`, `spec.nodeName=n1`).
    #[arg(long)]
    field_selector: Option<String>,
    /// List across all namespaces (adds a NAMESPACE column).
    #[arg(long, short = 'A')]
    all_namespaces: bool,
    /// Output format (default: the server's columns).
    #[arg(long, short = 'o', value_enum)]
    output: Option<Format>,
    /// Adds a LABELS column.
    #[arg(long)]
    show_labels: bool,
    /// Prints the rows without the header line.
    #[arg(long)]
    no_headers: bool,
    /// After the table, prints a row for every change (one type; until interrupted).
    #[arg(long, short = 'w')]
    watch: bool,
    /// Keeps `metadata.managedFields` in YAML and JSON output (hidden by default, as in
    /// kubectl).
    #[arg(long)]
    show_managed_fields: bool,
}

/// Which names of which type to read.
#[derive(Debug, PartialEq, Eq)]
pub struct Query {
    /// What the user typed for the type.
    pub typed: String,
    /// Names (empty: list).
    pub names: Vec<String>,
}

/// Groups `get`'s arguments as kubectl does: `TYPE[,TYPE] [NAME...]` or `TYPE/NAME...`.
pub fn parse_targets(targets: &[String]) -> Result<(Vec<Query>, bool)> {
    let Some(first) = targets.first() else {
        bail!("you must specify the type of resource to get");
    };
    if split_kind_name(first).is_some() {
        let mut queries: Vec<Query> = Vec::new();
        for target in targets {
            let Some((kind, name)) = split_kind_name(target) else {
                bail!(
                    "there is no need to specify a resource type as a separate argument when passing arguments in resource/name form (got \"{target}\")"
                );
            };
            match queries.iter_mut().find(|q| q.typed == kind) {
                Some(q) => q.names.push(name.to_owned()),
                None => queries.push(Query {
                    typed: kind.to_owned(),
                    names: vec![name.to_owned()],
                }),
            }
        }
        return Ok((queries, true));
    }
    let names: Vec<String> = targets[1..].to_vec();
    if let Some(bad) = names.iter().find(|n| n.contains('/')) {
        bail!(
            "arguments in resource/name form must have a single resource and name (got \"{bad}\" after a type)"
        );
    }
    let kinds: Vec<&str> = first.split(',').filter(|k| !k.is_empty()).collect();
    let several = kinds.len() > 1;
    Ok((
        kinds
            .into_iter()
            .map(|k| Query {
                typed: k.to_owned(),
                names: names.clone(),
            })
            .collect(),
        several,
    ))
}

/// Runs `coxctl get`.
pub async fn run(conn: &Connection, args: &Args) -> Result<i32> {
    let (queries, prefixed) = parse_targets(&args.targets)?;
    let catalog = Catalog::load(conn).await?;
    let resolved: Vec<(&Resource, &Query)> = queries
        .iter()
        .map(|q| Ok((catalog.resolve(&q.typed)?, q)))
        .collect::<Result<_>>()?;
    if args.all_namespaces && queries.iter().any(|q| !q.names.is_empty()) {
        bail!("a resource cannot be retrieved by name across all namespaces: drop -A or the names");
    }
    if args.watch {
        return watch(conn, &catalog, &queries, args).await;
    }
    let namespace = (!args.all_namespaces).then_some(conn.namespace.as_str());
    let mut failed = false;
    let mut printed_any = false;
    let mut objects = Vec::new();
    let mut as_list = false;
    for (resource, query) in resolved {
        if !resource.supports(if query.names.is_empty() {
            "list"
        } else {
            "get"
        }) {
            bail!(
                "the server does not allow listing or getting {}",
                resource.plural_display()
            );
        }
        let with_namespace = args.all_namespaces && resource.namespaced;
        let ns = if resource.namespaced { namespace } else { None };
        match args.output {
            None | Some(Format::Wide) => {
                let (table, errors) = fetch_table(conn, resource, ns, query, args).await?;
                for e in &errors {
                    eprintln!("{e}");
                }
                failed |= !errors.is_empty();
                if table["rows"].as_array().is_none_or(Vec::is_empty) {
                    continue;
                }
                let view = TableView {
                    table: &table,
                    with_namespace,
                    wide: args.output == Some(Format::Wide),
                    name_prefix: prefixed.then(|| format!("{}/", resource.display())),
                    show_labels: args.show_labels,
                };
                if printed_any {
                    println!();
                }
                print!("{}", output::render_table(&view, !args.no_headers)?);
                printed_any = true;
            }
            Some(format) => {
                let (found, errors) = fetch_objects(conn, resource, ns, query, args).await?;
                for e in &errors {
                    eprintln!("{e}");
                }
                failed |= !errors.is_empty();
                as_list |= query.names.is_empty() || queries.len() > 1;
                if format == Format::Name {
                    for o in &found {
                        println!(
                            "{}/{}",
                            resource.display(),
                            output::str_at(o, "metadata.name").unwrap_or("")
                        );
                        printed_any = true;
                    }
                } else {
                    objects.extend(found);
                }
            }
        }
    }
    if let Some(format @ (Format::Yaml | Format::Json)) = args.output {
        if objects.is_empty() && !as_list {
            return Ok(1);
        }
        print!("{}", output::objects_text(objects, as_list, format)?);
        return Ok(i32::from(failed));
    }
    if !printed_any && !failed {
        match namespace {
            Some(ns)
                if queries
                    .iter()
                    .any(|q| catalog.resolve(&q.typed).is_ok_and(|r| r.namespaced)) =>
            {
                eprintln!("No resources found in {ns} namespace.");
            }
            _ => eprintln!("No resources found"),
        }
    }
    Ok(i32::from(failed))
}

/// `get -w`: the table, then one row per event (the server renders each as a `Table`),
/// kept in the first table's columns; resumes after the server ends a watch.
async fn watch(
    conn: &Connection,
    catalog: &Catalog,
    queries: &[Query],
    args: &Args,
) -> Result<i32> {
    let [query] = queries else {
        bail!("-w watches one type at a time (got {})", queries.len());
    };
    if let Some(format @ (Format::Yaml | Format::Json | Format::Name)) = args.output {
        bail!("-w prints the server's columns: drop -o {format:?}");
    }
    if query.names.len() > 1 {
        bail!("-w watches one object or a whole type, not several names");
    }
    let resource = catalog.resolve(&query.typed)?;
    if !resource.supports("watch") {
        bail!(
            "the server does not allow watching {}",
            resource.plural_display()
        );
    }
    let namespace =
        (!args.all_namespaces && resource.namespaced).then_some(conn.namespace.as_str());
    let field_selector = match (query.names.first(), &args.field_selector) {
        (Some(name), Some(fields)) => Some(format!("{fields},metadata.name={name}")),
        (Some(name), None) => Some(format!("metadata.name={name}")),
        (None, fields) => fields.clone(),
    };
    let request = request_for(resource, namespace);
    let list = ListParams {
        label_selector: args.selector.clone(),
        field_selector: field_selector.clone(),
        ..ListParams::default()
    };
    let mut req = request
        .list(&list)
        .context("failed to build the list request")?;
    req.headers_mut()
        .insert(ACCEPT, HeaderValue::from_static(TABLE_ACCEPT));
    let table: Value = conn
        .client
        .request(req)
        .await
        .map_err(|e| server_error(e, &conn.url))?;
    let first = output::table_cells(&watch_view(&table, args, resource), !args.no_headers);
    let mut aligner = output::RowAligner::new(&first);
    for line in &first {
        println!("{}", aligner.line(line));
    }
    let mut version = output::str_at(&table, "metadata.resourceVersion")
        .unwrap_or("0")
        .to_owned();
    loop {
        let params = WatchParams {
            label_selector: args.selector.clone(),
            field_selector: field_selector.clone(),
            timeout: Some(290),
            bookmarks: false,
            ..WatchParams::default()
        };
        let mut req = request
            .watch(&params, &version)
            .context("failed to build the watch request")?;
        req.headers_mut()
            .insert(ACCEPT, HeaderValue::from_static(TABLE_ACCEPT));
        let events = conn
            .client
            .request_events::<Value>(req)
            .await
            .map_err(|e| server_error(e, &conn.url))?;
        let mut events = std::pin::pin!(events);
        while let Some(event) = events
            .try_next()
            .await
            .map_err(|e| server_error(e, &conn.url))?
        {
            match event {
                WatchEvent::Added(t) | WatchEvent::Modified(t) | WatchEvent::Deleted(t) => {
                    let rows = t["rows"].as_array().map(Vec::as_slice).unwrap_or_default();
                    if let Some(v) = rows
                        .iter()
                        .filter_map(|r| output::str_at(r, "object.metadata.resourceVersion"))
                        .next_back()
                    {
                        version = v.to_owned();
                    }
                    for line in output::table_cells(&watch_view(&t, args, resource), false) {
                        println!("{}", aligner.line(&line));
                    }
                }
                WatchEvent::Bookmark(b) => version = b.metadata.resource_version,
                WatchEvent::Error(status) => bail!("the watch stopped: {}", format_status(&status)),
            }
        }
    }
}

/// How `get -w` prints a table (the same options as the first table, never prefixed).
fn watch_view<'a>(table: &'a Value, args: &Args, resource: &Resource) -> TableView<'a> {
    TableView {
        table,
        with_namespace: args.all_namespaces && resource.namespaced,
        wide: args.output == Some(Format::Wide),
        name_prefix: None,
        show_labels: args.show_labels,
    }
}

fn list_params(args: &Args) -> ListParams {
    ListParams {
        label_selector: args.selector.clone(),
        field_selector: args.field_selector.clone(),
        ..ListParams::default()
    }
}

fn request_for(resource: &Resource, namespace: Option<&str>) -> Request {
    let ar = resource.api_resource();
    Request::new(<DynamicObject as kube::Resource>::url_path(&ar, namespace))
}

/// Reads a `Table` (one list, or one GET per name with the rows merged); per-name errors
/// come back as lines to print.
async fn fetch_table(
    conn: &Connection,
    resource: &Resource,
    namespace: Option<&str>,
    query: &Query,
    args: &Args,
) -> Result<(Value, Vec<String>)> {
    let request = request_for(resource, namespace);
    let mut http_requests = Vec::new();
    if query.names.is_empty() {
        http_requests.push(
            request
                .list(&list_params(args))
                .context("failed to build the list request")?,
        );
    } else {
        for name in &query.names {
            http_requests.push(
                request
                    .get(name, &GetParams::default())
                    .context("failed to build the get request")?,
            );
        }
    }
    let mut table: Option<Value> = None;
    let mut errors = Vec::new();
    for mut req in http_requests {
        req.headers_mut()
            .insert(ACCEPT, HeaderValue::from_static(TABLE_ACCEPT));
        match conn.client.request::<Value>(req).await {
            Ok(answer) => {
                let answer = if answer["kind"] == "Table" {
                    answer
                } else {
                    fallback_table(&answer)
                };
                match table.as_mut() {
                    None => table = Some(answer),
                    Some(t) => {
                        let rows = answer["rows"].as_array().cloned().unwrap_or_default();
                        if let Some(existing) = t["rows"].as_array_mut() {
                            existing.extend(rows);
                        }
                    }
                }
            }
            Err(e @ kube::Error::Api(_)) => errors.push(server_error(e, &conn.url).to_string()),
            Err(e) => return Err(server_error(e, &conn.url)),
        }
    }
    Ok((table.unwrap_or_else(|| json!({"rows": []})), errors))
}

/// A NAME/AGE table for servers that answer with plain objects.
fn fallback_table(answer: &Value) -> Value {
    let items: Vec<Value> = match answer["items"].as_array() {
        Some(items) => items.clone(),
        None => vec![answer.clone()],
    };
    let now = Timestamp::now();
    json!({
        "kind": "Table",
        "columnDefinitions": [
            {"name": "Name", "type": "string", "format": "name", "priority": 0},
            {"name": "Age", "type": "string", "format": "", "priority": 0},
        ],
        "rows": items.iter().map(|o| json!({
            "cells": [
                output::str_at(o, "metadata.name").unwrap_or(""),
                output::age(output::str_at(o, "metadata.creationTimestamp"), now),
            ],
            "object": {"metadata": o.get("metadata").cloned().unwrap_or(Value::Null)},
        })).collect::<Vec<_>>(),
    })
}

/// Reads the objects themselves (with `apiVersion` and `kind` set on list items).
async fn fetch_objects(
    conn: &Connection,
    resource: &Resource,
    namespace: Option<&str>,
    query: &Query,
    args: &Args,
) -> Result<(Vec<Value>, Vec<String>)> {
    let api = resource.api(conn, namespace);
    let mut objects = Vec::new();
    let mut errors = Vec::new();
    if query.names.is_empty() {
        let list = api
            .list(&list_params(args))
            .await
            .map_err(|e| server_error(e, &conn.url))?;
        for item in list.items {
            objects.push(for_output(
                serde_json::to_value(item)?,
                resource,
                args.show_managed_fields,
            ));
        }
    } else {
        for name in &query.names {
            match api.get(name).await {
                Ok(o) => objects.push(for_output(
                    serde_json::to_value(o)?,
                    resource,
                    args.show_managed_fields,
                )),
                Err(e @ kube::Error::Api(_)) => errors.push(server_error(e, &conn.url).to_string()),
                Err(e) => return Err(server_error(e, &conn.url)),
            }
        }
    }
    Ok((objects, errors))
}

/// Sets `apiVersion` and `kind` (list items come without them) and drops
/// `metadata.managedFields` unless asked to keep it.
fn for_output(mut object: Value, resource: &Resource, managed_fields: bool) -> Value {
    if let Some(map) = object.as_object_mut() {
        map.insert("apiVersion".into(), json!(resource.api_version()));
        map.insert("kind".into(), json!(resource.kind));
    }
    if !managed_fields && let Some(meta) = object.get_mut("metadata").and_then(Value::as_object_mut)
    {
        meta.remove("managedFields");
    }
    object
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    fn q(typed: &str, names: &[&str]) -> Query {
        Query {
            typed: typed.to_owned(),
            names: args(names),
        }
    }

    #[test]
    fn targets_group_like_kubectl() {
        assert_eq!(
            parse_targets(&args(&["po"])).unwrap(),
            (vec![q("po", &[])], false)
        );
        assert_eq!(
            parse_targets(&args(&["po", "a", "b"])).unwrap(),
            (vec![q("po", &["a", "b"])], false)
        );
        assert_eq!(
            parse_targets(&args(&["po,svc"])).unwrap(),
            (vec![q("po", &[]), q("svc", &[])], true)
        );
        assert_eq!(
            parse_targets(&args(&["deploy/web", "svc/web", "deploy/db"])).unwrap(),
            (vec![q("deploy", &["web", "db"]), q("svc", &["web"])], true)
        );
        assert!(parse_targets(&args(&["deploy/web", "db"])).is_err());
        assert!(parse_targets(&args(&["deploy", "svc/db"])).is_err());
    }

    #[test]
    fn fallback_table_has_names() {
        let table = fallback_table(&json!({"items": [{"metadata": {"name": "a"}}]}));
        assert_eq!(table["rows"][0]["cells"][0], "a");
        assert_eq!(table["rows"][0]["cells"][1], "<unknown>");
    }
}
