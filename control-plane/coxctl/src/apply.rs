//! `coxctl apply -f FILE|DIR|-`: server-side apply (field manager `coxctl`, conflicts
//! forced), reporting `kind/name created|configured|unchanged` per object as kubectl does.

use std::path::PathBuf;

use anyhow::{Result, anyhow, bail};
use kube::api::{DynamicObject, Patch, PatchParams};
use serde_json::{Value, json};

use crate::client::{Connection, server_error};
use crate::manifest::{self, Manifest};
use crate::resources::{Catalog, Resource};

/// The field manager of every apply.
pub const FIELD_MANAGER: &str = "coxctl";

/// Options of `coxctl apply`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Manifest file, directory of `.yaml`/`.yml`/`.json` files, or `-` for stdin (repeatable).
    #[arg(long, short = 'f', required = true, value_name = "FILE|DIR|-")]
    filename: Vec<PathBuf>,
    /// Also reads the directories' subdirectories.
    #[arg(long, short = 'R')]
    recursive: bool,
    /// Asks the server to validate and compute the result without storing it.
    #[arg(long)]
    dry_run: bool,
    /// Accepted for kubectl habits: coxctl always applies server-side.
    #[arg(long, hide = true)]
    server_side: bool,
    /// Accepted for kubectl habits: coxctl always forces conflicts (it takes over the
    /// fields it applies, as `kubectl apply` does for its own fields).
    #[arg(long, hide = true)]
    force_conflicts: bool,
}

/// What an apply did to one object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// It did not exist.
    Created,
    /// It existed and changed.
    Configured,
    /// It existed and the apply changed nothing a user wrote.
    Unchanged,
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Outcome::Created => "created",
            Outcome::Configured => "configured",
            Outcome::Unchanged => "unchanged",
        })
    }
}

/// Compares the object before and after the apply, ignoring what the server rewrites on
/// every write (`resourceVersion`, `managedFields` timestamps) and `status`, which
/// controllers may change meanwhile.
pub fn outcome(before: Option<&Value>, after: &Value) -> Outcome {
    let Some(before) = before else {
        return Outcome::Created;
    };
    fn comparable(v: &Value) -> Value {
        let mut v = v.clone();
        if let Some(map) = v.as_object_mut() {
            map.remove("status");
        }
        if let Some(meta) = v.get_mut("metadata").and_then(Value::as_object_mut) {
            meta.remove("resourceVersion");
            meta.remove("managedFields");
        }
        v
    }
    if comparable(before) == comparable(after) {
        Outcome::Unchanged
    } else {
        Outcome::Configured
    }
}

/// The namespace an object goes to: its own, else `-n`/the context's; an explicit `-n`
/// that contradicts the object is refused, as kubectl does.
pub fn target_namespace(
    manifest: &Manifest,
    resource: &Resource,
    conn_namespace: &str,
    explicit: bool,
) -> Result<Option<String>> {
    if !resource.namespaced {
        return Ok(None);
    }
    match manifest.namespace() {
        Some(ns) if explicit && ns != conn_namespace => bail!(
            "the namespace from the provided object \"{ns}\" does not match the namespace \"{conn_namespace}\": \
             pass --namespace={ns} or remove metadata.namespace from the object"
        ),
        Some(ns) => Ok(Some(ns.to_owned())),
        None => Ok(Some(conn_namespace.to_owned())),
    }
}

/// Finds the resource type of a manifest, re-reading discovery once (an earlier object of
/// the same apply may have been a CustomResourceDefinition).
pub async fn resource_of(
    conn: &Connection,
    catalog: &mut Catalog,
    refreshed: &mut bool,
    m: &Manifest,
) -> Result<Resource> {
    if let Some(r) = catalog.by_kind(m.api_version(), m.kind()) {
        return Ok(r.clone());
    }
    if !*refreshed {
        *catalog = Catalog::load(conn).await?;
        *refreshed = true;
        if let Some(r) = catalog.by_kind(m.api_version(), m.kind()) {
            return Ok(r.clone());
        }
    }
    Err(anyhow!(
        "no matches for kind \"{}\" in version \"{}\": the server doesn't have this resource type",
        m.kind(),
        m.api_version()
    ))
}

/// Runs `coxctl apply`.
pub async fn run(conn: &Connection, args: &Args) -> Result<i32> {
    let manifests = manifest::read_all(&args.filename, args.recursive)?;
    let mut catalog = Catalog::load(conn).await?;
    let mut refreshed = false;
    let mut failed = false;
    for m in &manifests {
        match apply_one(conn, &mut catalog, &mut refreshed, m, args.dry_run).await {
            Ok(line) => println!("{line}"),
            Err(e) => {
                eprintln!("error: {}: {e:#}", m.origin());
                failed = true;
            }
        }
    }
    Ok(i32::from(failed))
}

async fn apply_one(
    conn: &Connection,
    catalog: &mut Catalog,
    refreshed: &mut bool,
    m: &Manifest,
    dry_run: bool,
) -> Result<String> {
    let resource = resource_of(conn, catalog, refreshed, m).await?;
    let namespace = target_namespace(m, &resource, &conn.namespace, conn.namespace_explicit)?;
    let mut object = m.object.clone();
    if let Some(ns) = &namespace {
        object["metadata"]["namespace"] = json!(ns);
    }
    let api = resource.api(conn, namespace.as_deref());
    let label = format!("{}/{}", resource.display(), m.name());
    let before = api
        .get_opt(m.name())
        .await
        .map_err(|e| server_error(e, &conn.url))
        .map_err(|e| anyhow!("{label}: {e:#}"))?;
    let mut params = PatchParams::apply(FIELD_MANAGER).force();
    params.dry_run = dry_run;
    let after: DynamicObject = api
        .patch(m.name(), &params, &Patch::Apply(&object))
        .await
        .map_err(|e| server_error(e, &conn.url))
        .map_err(|e| anyhow!("{label}: {e:#}"))?;
    let before = before.map(serde_json::to_value).transpose()?;
    let verdict = outcome(before.as_ref(), &serde_json::to_value(&after)?);
    Ok(format!(
        "{label} {verdict}{}",
        if dry_run { " (server dry run)" } else { "" }
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::tests::catalog;

    #[test]
    fn outcomes() {
        let before = json!({"metadata": {"name": "a", "resourceVersion": "1", "managedFields": [{"time": "t1"}]}, "data": {"k": "v"}, "status": {"x": 1}});
        let same = json!({"metadata": {"name": "a", "resourceVersion": "2", "managedFields": [{"time": "t2"}]}, "data": {"k": "v"}, "status": {"x": 2}});
        let changed =
            json!({"metadata": {"name": "a", "resourceVersion": "2"}, "data": {"k": "w"}});
        assert_eq!(outcome(None, &same), Outcome::Created);
        assert_eq!(outcome(Some(&before), &same), Outcome::Unchanged);
        assert_eq!(outcome(Some(&before), &changed), Outcome::Configured);
    }

    #[test]
    fn namespaces() {
        let catalog = catalog();
        let deploy = catalog.resolve("deploy").unwrap();
        let node = catalog.resolve("node").unwrap();
        let with_ns = &manifest::parse(
            "f.yaml",
            "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: w, namespace: prod}\n",
            false,
        )
        .unwrap()[0];
        let without = &manifest::parse(
            "f.yaml",
            "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: w}\n",
            false,
        )
        .unwrap()[0];
        assert_eq!(
            target_namespace(with_ns, deploy, "default", false)
                .unwrap()
                .as_deref(),
            Some("prod")
        );
        assert_eq!(
            target_namespace(with_ns, deploy, "prod", true)
                .unwrap()
                .as_deref(),
            Some("prod")
        );
        assert_eq!(
            target_namespace(without, deploy, "dev", true)
                .unwrap()
                .as_deref(),
            Some("dev")
        );
        assert_eq!(target_namespace(with_ns, node, "dev", true).unwrap(), None);
        let err = target_namespace(with_ns, deploy, "dev", true)
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("the namespace from the provided object \"prod\" does not match the namespace \"dev\""), "{err}");
    }
}
