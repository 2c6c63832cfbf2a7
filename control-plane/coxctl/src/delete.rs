//! `coxctl delete TYPE NAME... | TYPE/NAME... | -f FILE | TYPE -l SELECTOR | TYPE --all`:
//! background propagation (the garbage collector removes dependents), one
//! `kind "name" deleted [from NS namespace]` line per object, as kubectl 1.37 prints.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Result, bail};
use kube::api::{DeleteParams, ListParams, PropagationPolicy};

use crate::apply::{resource_of, target_namespace};
use crate::client::{Connection, is_not_found, server_error};
use crate::manifest;
use crate::resources::{Catalog, Resource, split_kind_name};

/// Options of `coxctl delete`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// `TYPE NAME...` or `TYPE/NAME...`.
    #[arg(value_name = "TYPE[/NAME]")]
    targets: Vec<String>,
    /// Deletes the objects of these manifests (file, directory or `-`).
    #[arg(
        long,
        short = 'f',
        value_name = "FILE|DIR|-",
        conflicts_with = "targets"
    )]
    filename: Vec<PathBuf>,
    /// Deletes every object of the type matching this label selector.
    #[arg(long, short = 'l')]
    selector: Option<String>,
    /// Deletes every object of the type in the namespace.
    #[arg(long)]
    all: bool,
    /// Treats objects that do not exist as deleted.
    #[arg(long)]
    ignore_not_found: bool,
    /// Waits until the objects are gone (finalizers done).
    #[arg(long)]
    wait: bool,
    /// How long `--wait` waits, e.g. `30s`, `2m`.
    #[arg(long, default_value = "60s", value_parser = crate::rollout::parse_duration)]
    timeout: Duration,
}

/// One object to delete.
#[derive(Debug)]
struct Target {
    resource: Resource,
    namespace: Option<String>,
    name: String,
}

/// Runs `coxctl delete`.
pub async fn run(conn: &Connection, args: &Args) -> Result<i32> {
    let mut catalog = Catalog::load(conn).await?;
    let targets = targets(conn, &mut catalog, args).await?;
    if targets.is_empty() {
        eprintln!("No resources found");
        return Ok(0);
    }
    let params = DeleteParams {
        propagation_policy: Some(PropagationPolicy::Background),
        ..DeleteParams::default()
    };
    let mut failed = false;
    let mut deleted = Vec::new();
    for t in targets {
        let api = t.resource.api(conn, t.namespace.as_deref());
        match api.delete(&t.name, &params).await {
            Ok(_) => {
                match &t.namespace {
                    // kubectl 1.37 names the namespace of namespaced objects.
                    Some(ns) => println!(
                        "{} \"{}\" deleted from {ns} namespace",
                        t.resource.display(),
                        t.name
                    ),
                    None => println!("{} \"{}\" deleted", t.resource.display(), t.name),
                }
                deleted.push(t);
            }
            Err(e) if is_not_found(&e) && args.ignore_not_found => {}
            Err(e) => {
                eprintln!("{}", server_error(e, &conn.url));
                failed = true;
            }
        }
    }
    if args.wait {
        let deadline = tokio::time::Instant::now() + args.timeout;
        for t in deleted {
            let api = t.resource.api(conn, t.namespace.as_deref());
            loop {
                match api
                    .get_opt(&t.name)
                    .await
                    .map_err(|e| server_error(e, &conn.url))?
                {
                    None => break,
                    Some(_) if tokio::time::Instant::now() >= deadline => {
                        eprintln!(
                            "error: timed out after {:?} waiting for {} \"{}\" to be gone (finalizers: see `coxctl get {} {} -o yaml`)",
                            args.timeout,
                            t.resource.display(),
                            t.name,
                            t.resource.plural_display(),
                            t.name
                        );
                        return Ok(1);
                    }
                    Some(_) => tokio::time::sleep(Duration::from_millis(200)).await,
                }
            }
        }
    }
    Ok(i32::from(failed))
}

async fn targets(conn: &Connection, catalog: &mut Catalog, args: &Args) -> Result<Vec<Target>> {
    if !args.filename.is_empty() {
        let mut refreshed = false;
        let mut found = Vec::new();
        for m in manifest::read_all(&args.filename, false)? {
            let resource = resource_of(conn, catalog, &mut refreshed, &m)
                .await
                .map_err(|e| e.context(m.origin()))?;
            let namespace =
                target_namespace(&m, &resource, &conn.namespace, conn.namespace_explicit)
                    .map_err(|e| e.context(m.origin()))?;
            found.push(Target {
                resource,
                namespace,
                name: m.name().to_owned(),
            });
        }
        return Ok(found);
    }
    let Some(first) = args.targets.first() else {
        bail!(
            "you must specify the type and name of what to delete (TYPE NAME, TYPE/NAME or -f FILE)"
        );
    };
    let namespace_of = |r: &Resource| r.namespaced.then(|| conn.namespace.clone());
    if split_kind_name(first).is_some() {
        let mut found = Vec::new();
        for arg in &args.targets {
            let Some((kind, name)) = split_kind_name(arg) else {
                bail!("\"{arg}\": mix TYPE/NAME arguments with nothing else");
            };
            let resource = catalog.resolve(kind)?.clone();
            found.push(Target {
                namespace: namespace_of(&resource),
                resource,
                name: name.to_owned(),
            });
        }
        return Ok(found);
    }
    let resource = catalog.resolve(first)?.clone();
    let names = &args.targets[1..];
    if names.is_empty() {
        if args.selector.is_none() && !args.all {
            bail!(
                "you must name the {} to delete, or pass -l SELECTOR or --all",
                resource.plural_display()
            );
        }
        let api = resource.api(conn, namespace_of(&resource).as_deref());
        let params = ListParams {
            label_selector: args.selector.clone(),
            ..ListParams::default()
        };
        let list = api
            .list(&params)
            .await
            .map_err(|e| server_error(e, &conn.url))?;
        return Ok(list
            .items
            .into_iter()
            .map(|o| Target {
                namespace: o.metadata.namespace.clone(),
                name: o.metadata.name.unwrap_or_default(),
                resource: resource.clone(),
            })
            .collect());
    }
    Ok(names
        .iter()
        .map(|name| Target {
            namespace: namespace_of(&resource),
            resource: resource.clone(),
            name: name.clone(),
        })
        .collect())
}
