//! `coxctl scale TYPE/NAME --replicas N`, through the `scale` subresource (so it works for
//! any kind that has one, custom resources included).

use anyhow::{Result, bail};
use kube::api::{Patch, PatchParams};
use serde_json::json;

use crate::client::{Connection, KubeResultExt};
use crate::resources::{Catalog, split_kind_name};

/// Options of `coxctl scale`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// `TYPE/NAME...` or `TYPE NAME...`.
    #[arg(required = true, value_name = "TYPE[/NAME]")]
    targets: Vec<String>,
    /// The new number of replicas.
    #[arg(long)]
    replicas: u32,
    /// Scales only if the current number of replicas is this (a precondition).
    #[arg(long)]
    current_replicas: Option<u32>,
}

/// Runs `coxctl scale`.
pub async fn run(conn: &Connection, args: &Args) -> Result<i32> {
    let catalog = Catalog::load(conn).await?;
    let mut pairs = Vec::new();
    if split_kind_name(&args.targets[0]).is_some() {
        for t in &args.targets {
            let Some((kind, name)) = split_kind_name(t) else {
                bail!("\"{t}\": mix TYPE/NAME arguments with nothing else");
            };
            pairs.push((catalog.resolve(kind)?, name.to_owned()));
        }
    } else {
        let resource = catalog.resolve(&args.targets[0])?;
        if args.targets.len() == 1 {
            bail!("you must name the {} to scale", resource.plural_display());
        }
        pairs.extend(args.targets[1..].iter().map(|n| (resource, n.clone())));
    }
    let mut failed = false;
    for (resource, name) in pairs {
        if !resource.subresources.iter().any(|s| s == "scale") {
            bail!(
                "{} cannot be scaled: the server has no scale subresource for {}",
                resource.display(),
                resource.plural_display()
            );
        }
        let api = resource.api(conn, Some(&conn.namespace));
        if let Some(expected) = args.current_replicas {
            let current = api.get_scale(&name).await.server(conn)?;
            let now = current.spec.and_then(|s| s.replicas).unwrap_or(0);
            if i64::from(now) != i64::from(expected) {
                eprintln!(
                    "error: expected {}/{name} to have {expected} replicas (--current-replicas), it has {now}",
                    resource.display()
                );
                failed = true;
                continue;
            }
        }
        let patch = json!({"spec": {"replicas": args.replicas}});
        match api
            .patch_scale(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .server(conn)
        {
            Ok(_) => println!("{}/{name} scaled", resource.display()),
            Err(e) => {
                eprintln!("{e}");
                failed = true;
            }
        }
    }
    Ok(i32::from(failed))
}
