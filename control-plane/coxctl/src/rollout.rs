//! `coxctl rollout status|history|undo`: kubectl's success criteria for Deployments,
//! DaemonSets and StatefulSets, and Deployment history and undo done client-side as kubectl
//! does (from the ReplicaSets' `deployment.kubernetes.io/revision` annotations).

use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use futures::StreamExt;
use http::header::{CONTENT_TYPE, HeaderValue};
use kube::api::{DynamicObject, ListParams};
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::{Value, json};

use crate::client::{Connection, KubeResultExt, server_error};
use crate::describe;
use crate::output::{at, str_at};
use crate::resources::{Catalog, Resource, split_kind_name};

/// The annotation holding a ReplicaSet's revision.
pub const REVISION: &str = "deployment.kubernetes.io/revision";
/// The label that makes a ReplicaSet's template unique.
pub const POD_TEMPLATE_HASH: &str = "pod-template-hash";
/// The annotation `rollout history` shows.
pub const CHANGE_CAUSE: &str = "kubernetes.io/change-cause";

/// Annotations a rollback keeps from the Deployment instead of taking from the ReplicaSet
/// (kubectl's `annotationsToSkip`).
const ANNOTATIONS_TO_SKIP: &[&str] = &[
    "kubectl.kubernetes.io/last-applied-configuration",
    REVISION,
    "deployment.kubernetes.io/revision-history",
    "deployment.kubernetes.io/desired-replicas",
    "deployment.kubernetes.io/max-replicas",
    "deprecated.deployment.rollback.to",
];

/// Options of `coxctl rollout`.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    what: What,
}

#[derive(Debug, clap::Subcommand)]
enum What {
    /// Waits until a Deployment (DaemonSet, StatefulSet) has rolled out, as kubectl does.
    Status {
        /// `deployment/NAME` (or `TYPE NAME`).
        #[arg(required = true, num_args = 1..=2, value_name = "TYPE[/NAME]")]
        target: Vec<String>,
        /// Gives up after this long (`30s`, `5m`; `0`: never).
        #[arg(long, default_value = "0", value_parser = parse_duration)]
        timeout: Duration,
        /// Waits for the rollout to finish (`--watch=false`: print the current state once).
        #[arg(long, short = 'w', default_value_t = true, action = clap::ArgAction::Set)]
        watch: bool,
    },
    /// Lists a Deployment's revisions, or shows one's pod template.
    History {
        /// `deployment/NAME` (or `TYPE NAME`).
        #[arg(required = true, num_args = 1..=2, value_name = "TYPE[/NAME]")]
        target: Vec<String>,
        /// Shows this revision's pod template.
        #[arg(long)]
        revision: Option<i64>,
    },
    /// Rolls a Deployment back to its previous (or a given) revision.
    Undo {
        /// `deployment/NAME` (or `TYPE NAME`).
        #[arg(required = true, num_args = 1..=2, value_name = "TYPE[/NAME]")]
        target: Vec<String>,
        /// The revision to go back to (default: the one before the current).
        #[arg(long, default_value_t = 0)]
        to_revision: i64,
    },
}

/// Parses `30s`, `5m`, `1h30m`, `500ms` or a plain number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if let Ok(seconds) = text.parse::<u64>() {
        return Ok(Duration::from_secs(seconds));
    }
    let mut total = Duration::ZERO;
    let mut rest = text;
    if rest.is_empty() {
        return Err("empty duration".to_owned());
    }
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        if digits == 0 {
            return Err(format!(
                "invalid duration \"{text}\": expected e.g. 30s, 5m, 1h30m"
            ));
        }
        let n: u64 = rest[..digits]
            .parse()
            .map_err(|_| format!("invalid duration \"{text}\""))?;
        rest = &rest[digits..];
        let unit = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        total += match &rest[..unit] {
            "ms" => Duration::from_millis(n),
            "s" => Duration::from_secs(n),
            "m" => Duration::from_secs(n * 60),
            "h" => Duration::from_secs(n * 3600),
            other => {
                return Err(format!(
                    "invalid duration \"{text}\": unknown unit \"{other}\" (use ms, s, m, h)"
                ));
            }
        };
        rest = &rest[unit..];
    }
    Ok(total)
}

fn i(v: &Value, path: &str) -> i64 {
    at(v, path).and_then(Value::as_i64).unwrap_or(0)
}

/// kubectl's verdict on a Deployment: the line to print and whether it is done.
pub fn deployment_status(d: &Value) -> Result<(String, bool)> {
    let name = str_at(d, "metadata.name").unwrap_or("");
    if i(d, "metadata.generation") > i(d, "status.observedGeneration") {
        return Ok((
            "Waiting for deployment spec update to be observed...".to_owned(),
            false,
        ));
    }
    let progressing = at(d, "status.conditions")
        .and_then(Value::as_array)
        .and_then(|cs| cs.iter().find(|c| c["type"] == "Progressing"));
    if progressing.is_some_and(|c| c["reason"] == "ProgressDeadlineExceeded") {
        bail!("deployment \"{name}\" exceeded its progress deadline");
    }
    let updated = i(d, "status.updatedReplicas");
    if let Some(replicas) = at(d, "spec.replicas").and_then(Value::as_i64)
        && updated < replicas
    {
        return Ok((
            format!(
                "Waiting for deployment \"{name}\" rollout to finish: {updated} out of {replicas} new replicas have been updated..."
            ),
            false,
        ));
    }
    let total = i(d, "status.replicas");
    if total > updated {
        return Ok((
            format!(
                "Waiting for deployment \"{name}\" rollout to finish: {} old replicas are pending termination...",
                total - updated
            ),
            false,
        ));
    }
    let available = i(d, "status.availableReplicas");
    if available < updated {
        return Ok((
            format!(
                "Waiting for deployment \"{name}\" rollout to finish: {available} of {updated} updated replicas are available..."
            ),
            false,
        ));
    }
    Ok((
        format!("deployment \"{name}\" successfully rolled out"),
        true,
    ))
}

/// kubectl's verdict on a DaemonSet.
pub fn daemonset_status(ds: &Value) -> Result<(String, bool)> {
    let name = str_at(ds, "metadata.name").unwrap_or("");
    if str_at(ds, "spec.updateStrategy.type").unwrap_or("RollingUpdate") != "RollingUpdate" {
        bail!("rollout status is only available for RollingUpdate strategy type");
    }
    if i(ds, "metadata.generation") > i(ds, "status.observedGeneration") {
        return Ok((
            "Waiting for daemon set spec update to be observed...".to_owned(),
            false,
        ));
    }
    let desired = i(ds, "status.desiredNumberScheduled");
    let updated = i(ds, "status.updatedNumberScheduled");
    if updated < desired {
        return Ok((
            format!(
                "Waiting for daemon set \"{name}\" rollout to finish: {updated} out of {desired} new pods have been updated..."
            ),
            false,
        ));
    }
    let available = i(ds, "status.numberAvailable");
    if available < desired {
        return Ok((
            format!(
                "Waiting for daemon set \"{name}\" rollout to finish: {available} of {desired} updated pods are available..."
            ),
            false,
        ));
    }
    Ok((
        format!("daemon set \"{name}\" successfully rolled out"),
        true,
    ))
}

/// kubectl's verdict on a StatefulSet.
pub fn statefulset_status(sts: &Value) -> Result<(String, bool)> {
    if str_at(sts, "spec.updateStrategy.type").unwrap_or("RollingUpdate") != "RollingUpdate" {
        bail!("rollout status is only available for RollingUpdate strategy type");
    }
    let observed = i(sts, "status.observedGeneration");
    if observed == 0 || i(sts, "metadata.generation") > observed {
        return Ok((
            "Waiting for statefulset spec update to be observed...".to_owned(),
            false,
        ));
    }
    let replicas = at(sts, "spec.replicas").and_then(Value::as_i64);
    let ready = i(sts, "status.readyReplicas");
    if let Some(replicas) = replicas
        && ready < replicas
    {
        return Ok((
            format!("Waiting for {} pods to be ready...", replicas - ready),
            false,
        ));
    }
    let updated = i(sts, "status.updatedReplicas");
    if at(sts, "spec.updateStrategy.rollingUpdate").is_some_and(|r| !r.is_null()) {
        if let (Some(replicas), Some(partition)) = (
            replicas,
            at(sts, "spec.updateStrategy.rollingUpdate.partition").and_then(Value::as_i64),
        ) && updated < replicas - partition
        {
            return Ok((
                format!(
                    "Waiting for partitioned roll out to finish: {updated} out of {} new pods have been updated...",
                    replicas - partition
                ),
                false,
            ));
        }
        return Ok((
            format!("partitioned roll out complete: {updated} new pods have been updated..."),
            true,
        ));
    }
    let update_revision = str_at(sts, "status.updateRevision").unwrap_or("");
    if update_revision != str_at(sts, "status.currentRevision").unwrap_or("") {
        return Ok((
            format!(
                "waiting for statefulset rolling update to complete {updated} pods at revision {update_revision}..."
            ),
            false,
        ));
    }
    Ok((
        format!(
            "statefulset rolling update complete {} pods at revision {update_revision}...",
            i(sts, "status.currentReplicas")
        ),
        true,
    ))
}

fn status_of(resource: &Resource, object: &Value) -> Result<(String, bool)> {
    match resource.kind.as_str() {
        "Deployment" => deployment_status(object),
        "DaemonSet" => daemonset_status(object),
        "StatefulSet" => statefulset_status(object),
        _ => unreachable!("checked by rollout_target"),
    }
}

/// The ReplicaSets a Deployment controls (controller ownerReference with its uid).
pub fn owned_replicasets<'a>(deployment: &Value, replicasets: &'a [Value]) -> Vec<&'a Value> {
    let uid = str_at(deployment, "metadata.uid").unwrap_or("");
    replicasets
        .iter()
        .filter(|rs| {
            at(rs, "metadata.ownerReferences")
                .and_then(Value::as_array)
                .is_some_and(|refs| {
                    refs.iter()
                        .any(|r| r["uid"] == uid && r["controller"] == true)
                })
        })
        .collect()
}

/// A ReplicaSet's revision (`deployment.kubernetes.io/revision`), if it has a valid one.
pub fn revision_of(rs: &Value) -> Option<i64> {
    rs["metadata"]["annotations"][REVISION]
        .as_str()?
        .parse()
        .ok()
}

/// `(revision, change-cause)` of each owned ReplicaSet, in revision order.
pub fn history(deployment: &Value, replicasets: &[Value]) -> Vec<(i64, Option<String>)> {
    let mut rows: Vec<(i64, Option<String>)> = owned_replicasets(deployment, replicasets)
        .into_iter()
        .filter_map(|rs| {
            let cause = rs["metadata"]["annotations"][CHANGE_CAUSE]
                .as_str()
                .map(str::to_owned);
            Some((revision_of(rs)?, cause))
        })
        .collect();
    rows.sort_by_key(|(rev, _)| *rev);
    rows
}

/// What `rollout undo` will do.
#[derive(Debug, Clone, PartialEq)]
pub enum Undo {
    /// The Deployment's template already is that revision's.
    Skip {
        /// The revision it matches.
        revision: i64,
    },
    /// Send this JSON patch.
    Patch {
        /// The revision rolled back to.
        revision: i64,
        /// A JSON patch replacing `spec.template` and `metadata.annotations`.
        patch: Value,
    },
}

/// A pod template without the `pod-template-hash` label (how kubectl compares templates).
pub fn without_hash(template: &Value) -> Value {
    let mut t = template.clone();
    if let Some(labels) = t
        .pointer_mut("/metadata/labels")
        .and_then(Value::as_object_mut)
    {
        labels.remove(POD_TEMPLATE_HASH);
    }
    t
}

/// kubectl's client-side rollback: the ReplicaSet of `to_revision` (0: the one before the
/// latest), its template without `pod-template-hash`, and the annotations it carried.
pub fn plan_undo(deployment: &Value, replicasets: &[Value], to_revision: i64) -> Result<Undo> {
    let name = str_at(deployment, "metadata.name").unwrap_or("");
    if at(deployment, "spec.paused").and_then(Value::as_bool) == Some(true) {
        bail!(
            "you cannot rollback a paused deployment; resume it first with 'coxctl rollout resume deployment/{name}' and try again"
        );
    }
    let owned: Vec<(i64, &Value)> = owned_replicasets(deployment, replicasets)
        .into_iter()
        .filter_map(|rs| Some((revision_of(rs)?, rs)))
        .collect();
    let chosen = if to_revision == 0 {
        let mut revisions: Vec<i64> = owned.iter().map(|(r, _)| *r).collect();
        revisions.sort_unstable();
        revisions.dedup();
        let Some(&previous) = revisions.iter().rev().nth(1) else {
            bail!(
                "no rollout history found for deployment \"{name}\": it has no revision before the current one"
            );
        };
        owned.iter().find(|(r, _)| *r == previous)
    } else {
        owned.iter().find(|(r, _)| *r == to_revision)
    };
    let Some(&(revision, rs)) = chosen else {
        bail!(
            "unable to find the specified revision {to_revision} in the history of deployment \"{name}\""
        );
    };
    let template = without_hash(rs.pointer("/spec/template").unwrap_or(&Value::Null));
    if template == without_hash(deployment.pointer("/spec/template").unwrap_or(&Value::Null)) {
        return Ok(Undo::Skip { revision });
    }
    let mut annotations = serde_json::Map::new();
    let current = deployment
        .pointer("/metadata/annotations")
        .and_then(Value::as_object);
    for key in ANNOTATIONS_TO_SKIP {
        if let Some(v) = current.and_then(|a| a.get(*key)) {
            annotations.insert((*key).to_owned(), v.clone());
        }
    }
    if let Some(from_rs) = rs
        .pointer("/metadata/annotations")
        .and_then(Value::as_object)
    {
        for (k, v) in from_rs {
            if !ANNOTATIONS_TO_SKIP.contains(&k.as_str()) {
                annotations.insert(k.clone(), v.clone());
            }
        }
    }
    let patch = json!([
        {"op": "replace", "path": "/spec/template", "value": template},
        // `add` replaces the member when present, and creates it when the Deployment has
        // no annotations at all (kubectl's `replace` would fail there).
        {"op": "add", "path": "/metadata/annotations", "value": annotations},
    ]);
    Ok(Undo::Patch { revision, patch })
}

/// Resolves `deployment/NAME` or `TYPE NAME` to a rollout-capable resource.
fn rollout_target<'a>(
    catalog: &'a Catalog,
    target: &[String],
    kinds: &[&str],
) -> Result<(&'a Resource, String)> {
    let (typed, name) = match target {
        [one] => split_kind_name(one)
            .map(|(k, n)| (k.to_owned(), n.to_owned()))
            .ok_or_else(|| anyhow!("expected TYPE/NAME (e.g. deployment/web), got \"{one}\""))?,
        [kind, name] => (kind.clone(), name.clone()),
        _ => bail!("expected TYPE/NAME (e.g. deployment/web)"),
    };
    let resource = catalog.resolve(&typed)?;
    if resource.group != "apps" || !kinds.contains(&resource.kind.as_str()) {
        let names: Vec<String> = kinds
            .iter()
            .map(|k| format!("{}.apps", k.to_lowercase()))
            .collect();
        bail!(
            "{} is not supported here: this works on {}",
            resource.display(),
            names.join(", ")
        );
    }
    Ok((resource, name))
}

/// Runs `coxctl rollout ...`.
pub async fn run(conn: &Connection, args: &Args) -> Result<i32> {
    let catalog = Catalog::load(conn).await?;
    match &args.what {
        What::Status {
            target,
            timeout,
            watch,
        } => {
            let (resource, name) = rollout_target(
                &catalog,
                target,
                &["Deployment", "DaemonSet", "StatefulSet"],
            )?;
            let api = resource.api(conn, Some(&conn.namespace));
            let first = api.get(&name).await.server(conn)?;
            let (line, done) = status_of(resource, &serde_json::to_value(&first)?)?;
            println!("{line}");
            if done {
                return Ok(0);
            }
            if !watch {
                return Ok(0);
            }
            let wait = wait_rolled_out(conn, resource, &name, line);
            if timeout.is_zero() {
                wait.await
            } else {
                match tokio::time::timeout(*timeout, wait).await {
                    Ok(result) => result,
                    Err(_) => bail!(
                        "timed out waiting for the rollout of {}/{name} ({timeout:?})",
                        resource.display()
                    ),
                }
            }
        }
        What::History { target, revision } => {
            let (resource, name) = rollout_target(&catalog, target, &["Deployment"])?;
            let (deployment, replicasets) =
                deployment_and_replicasets(conn, &catalog, resource, &name).await?;
            print!(
                "{}",
                history_text(resource, &name, &deployment, &replicasets, *revision)?
            );
            Ok(0)
        }
        What::Undo {
            target,
            to_revision,
        } => {
            let (resource, name) = rollout_target(&catalog, target, &["Deployment"])?;
            let (deployment, replicasets) =
                deployment_and_replicasets(conn, &catalog, resource, &name).await?;
            match plan_undo(&deployment, &replicasets, *to_revision)? {
                Undo::Skip { revision } => {
                    println!(
                        "{}/{name} skipped rollback (current template already matches revision {revision})",
                        resource.display()
                    );
                }
                Undo::Patch { patch, .. } => {
                    json_patch(conn, resource, &name, &patch).await?;
                    println!("{}/{name} rolled back", resource.display());
                }
            }
            Ok(0)
        }
    }
}

async fn wait_rolled_out(
    conn: &Connection,
    resource: &Resource,
    name: &str,
    mut last: String,
) -> Result<i32> {
    let api = resource.api(conn, Some(&conn.namespace));
    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let mut stream = std::pin::pin!(watcher::watcher(api, config).default_backoff());
    let mut failures = 0;
    loop {
        let event = match stream.next().await {
            Some(Ok(event)) => {
                failures = 0;
                event
            }
            // The watcher re-lists after errors (a 410 Gone, a dropped connection); give up
            // only when errors persist.
            Some(Err(_)) if failures < 5 => {
                failures += 1;
                continue;
            }
            Some(Err(e)) => {
                return Err(e)
                    .with_context(|| format!("failed to watch {}/{name}", resource.display()));
            }
            None => bail!("the watch of {}/{name} ended", resource.display()),
        };
        let object: DynamicObject = match event {
            watcher::Event::Apply(o) | watcher::Event::InitApply(o) => o,
            watcher::Event::Delete(_) => {
                bail!(
                    "{}/{name} was deleted during the rollout",
                    resource.display()
                )
            }
            _ => continue,
        };
        let (line, done) = status_of(resource, &serde_json::to_value(&object)?)?;
        if line != last {
            println!("{line}");
            last = line;
        }
        if done {
            return Ok(0);
        }
    }
}

async fn deployment_and_replicasets(
    conn: &Connection,
    catalog: &Catalog,
    resource: &Resource,
    name: &str,
) -> Result<(Value, Vec<Value>)> {
    let deployment = resource
        .api(conn, Some(&conn.namespace))
        .get(name)
        .await
        .server(conn)?;
    let rs_resource = catalog
        .by_kind(&resource.api_version(), "ReplicaSet")
        .ok_or_else(|| {
            anyhow!(
                "the server doesn't serve ReplicaSets in {}",
                resource.api_version()
            )
        })?;
    let replicasets = rs_resource
        .api(conn, Some(&conn.namespace))
        .list(&ListParams::default())
        .await
        .server(conn)?
        .items
        .into_iter()
        .map(serde_json::to_value)
        .collect::<Result<Vec<_>, _>>()?;
    Ok((serde_json::to_value(deployment)?, replicasets))
}

/// `rollout history`'s text: the revision table, or one revision's pod template.
pub fn history_text(
    resource: &Resource,
    name: &str,
    deployment: &Value,
    replicasets: &[Value],
    revision: Option<i64>,
) -> Result<String> {
    use std::io::Write;
    let mut out = tabwriter::TabWriter::new(Vec::new()).padding(2);
    if let Some(wanted) = revision {
        let rs = owned_replicasets(deployment, replicasets)
            .into_iter()
            .find(|rs| revision_of(rs) == Some(wanted))
            .ok_or_else(|| anyhow!("unable to find the specified revision {wanted} in the history of deployment \"{name}\""))?;
        writeln!(out, "{}/{name} with revision #{wanted}", resource.display())?;
        let template = rs.pointer("/spec/template").unwrap_or(&Value::Null);
        let mut text = describe::Text::default();
        describe::pod_template(&mut text, template, 0);
        write!(out, "{}", text.finish())?;
    } else {
        writeln!(out, "{}/{name}", resource.display())?;
        writeln!(out, "REVISION\tCHANGE-CAUSE")?;
        for (rev, cause) in history(deployment, replicasets) {
            writeln!(out, "{rev}\t{}", cause.as_deref().unwrap_or("<none>"))?;
        }
    }
    Ok(
        String::from_utf8_lossy(&out.into_inner().context("failed to align the history")?)
            .into_owned(),
    )
}

/// Sends a JSON patch (what kubectl's rollback sends; kube's typed `Patch::Json` would need
/// the json-patch crate for one request).
async fn json_patch(
    conn: &Connection,
    resource: &Resource,
    name: &str,
    patch: &Value,
) -> Result<()> {
    let ar = resource.api_resource();
    let path = <DynamicObject as kube::Resource>::url_path(&ar, Some(&conn.namespace));
    let mut request = http::Request::patch(format!("{path}/{name}"))
        .body(serde_json::to_vec(patch)?)
        .context("failed to build the rollback request")?;
    request.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/json-patch+json"),
    );
    conn.client
        .request::<Value>(request)
        .await
        .map_err(|e| server_error(e, &conn.url))
        .with_context(|| format!("failed to roll back {}/{name}", resource.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        let table = [
            ("30s", 30_000),
            ("5m", 300_000),
            ("1h30m", 5_400_000),
            ("500ms", 500),
            ("12", 12_000),
            ("0", 0),
        ];
        for (text, millis) in table {
            assert_eq!(
                parse_duration(text).unwrap(),
                Duration::from_millis(millis),
                "{text}"
            );
        }
        assert!(parse_duration("5 minutes").is_err());
        assert!(parse_duration("m").is_err());
        assert!(parse_duration("").is_err());
    }

    fn deployment(generation: i64, replicas: i64, status: Value) -> Value {
        json!({"metadata": {"name": "web", "generation": generation}, "spec": {"replicas": replicas}, "status": status})
    }

    #[test]
    fn deployment_criterion_is_kubectls() {
        let table = [
            (
                deployment(2, 3, json!({"observedGeneration": 1})),
                "Waiting for deployment spec update to be observed...",
                false,
            ),
            (
                deployment(
                    2,
                    3,
                    json!({"observedGeneration": 2, "replicas": 3, "updatedReplicas": 1}),
                ),
                "Waiting for deployment \"web\" rollout to finish: 1 out of 3 new replicas have been updated...",
                false,
            ),
            (
                deployment(
                    2,
                    3,
                    json!({"observedGeneration": 2, "replicas": 4, "updatedReplicas": 3}),
                ),
                "Waiting for deployment \"web\" rollout to finish: 1 old replicas are pending termination...",
                false,
            ),
            (
                deployment(
                    2,
                    3,
                    json!({"observedGeneration": 2, "replicas": 3, "updatedReplicas": 3, "availableReplicas": 2}),
                ),
                "Waiting for deployment \"web\" rollout to finish: 2 of 3 updated replicas are available...",
                false,
            ),
            (
                deployment(
                    2,
                    3,
                    json!({"observedGeneration": 2, "replicas": 3, "updatedReplicas": 3, "availableReplicas": 3}),
                ),
                "deployment \"web\" successfully rolled out",
                true,
            ),
            (
                deployment(1, 0, json!({"observedGeneration": 1})),
                "deployment \"web\" successfully rolled out",
                true,
            ),
        ];
        for (d, line, done) in table {
            assert_eq!(
                deployment_status(&d).unwrap(),
                (line.to_owned(), done),
                "{d}"
            );
        }
        let stuck = deployment(
            1,
            3,
            json!({"observedGeneration": 1, "conditions": [{"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded"}]}),
        );
        assert_eq!(
            deployment_status(&stuck).unwrap_err().to_string(),
            "deployment \"web\" exceeded its progress deadline"
        );
    }

    #[test]
    fn daemonset_and_statefulset_criteria() {
        let ds = json!({"metadata": {"name": "agent", "generation": 1}, "status": {"observedGeneration": 1, "desiredNumberScheduled": 3, "updatedNumberScheduled": 3, "numberAvailable": 2}});
        assert_eq!(
            daemonset_status(&ds).unwrap(),
            ("Waiting for daemon set \"agent\" rollout to finish: 2 of 3 updated pods are available...".to_owned(), false)
        );
        let ondelete = json!({"metadata": {"name": "agent"}, "spec": {"updateStrategy": {"type": "OnDelete"}}});
        assert!(daemonset_status(&ondelete).is_err());
        let sts = json!({"metadata": {"name": "db", "generation": 2}, "spec": {"replicas": 3, "updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"partition": 1}}},
            "status": {"observedGeneration": 2, "readyReplicas": 3, "updatedReplicas": 1}});
        assert_eq!(
            statefulset_status(&sts).unwrap(),
            ("Waiting for partitioned roll out to finish: 1 out of 2 new pods have been updated...".to_owned(), false)
        );
        let sts = json!({"metadata": {"name": "db", "generation": 2}, "spec": {"replicas": 3, "updateStrategy": {"type": "RollingUpdate"}},
            "status": {"observedGeneration": 2, "readyReplicas": 3, "updatedReplicas": 3, "currentReplicas": 3, "updateRevision": "db-2", "currentRevision": "db-2"}});
        assert_eq!(
            statefulset_status(&sts).unwrap(),
            (
                "statefulset rolling update complete 3 pods at revision db-2...".to_owned(),
                true
            )
        );
    }

    fn template(image: &str, hash: &str) -> Value {
        json!({"metadata": {"labels": {"app": "web", POD_TEMPLATE_HASH: hash}}, "spec": {"containers": [{"name": "web", "image": image}]}})
    }

    fn rs(name: &str, owner: &str, revision: &str, image: &str, hash: &str) -> Value {
        json!({
            "metadata": {
                "name": name,
                "annotations": {REVISION: revision, CHANGE_CAUSE: format!("set image {image}"), "team": "a"},
                "ownerReferences": [{"uid": owner, "controller": true, "kind": "Deployment", "name": "web"}],
            },
            "spec": {"template": template(image, hash)},
        })
    }

    #[test]
    fn undo_goes_to_the_previous_revision_without_the_hash_label() {
        let mut d = json!({
            "metadata": {"name": "web", "uid": "u1", "annotations": {REVISION: "3", "owner": "me"}},
            "spec": {"template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "web", "image": "web:3"}]}}},
        });
        let sets = vec![
            rs("web-1", "u1", "1", "web:1", "h1"),
            rs("web-2", "u1", "2", "web:2", "h2"),
            rs("web-3", "u1", "3", "web:3", "h3"),
            rs("other", "u2", "9", "other:9", "h9"),
        ];
        let Undo::Patch { revision, patch } = plan_undo(&d, &sets, 0).unwrap() else {
            panic!("expected a patch")
        };
        assert_eq!(revision, 2);
        assert_eq!(patch[0]["path"], "/spec/template");
        assert_eq!(
            patch[0]["value"],
            json!({"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "web", "image": "web:2"}]}})
        );
        // The Deployment keeps its own revision annotation; the rest come from the ReplicaSet.
        assert_eq!(
            patch[1]["value"],
            json!({REVISION: "3", CHANGE_CAUSE: "set image web:2", "team": "a"})
        );

        let Undo::Patch { revision, .. } = plan_undo(&d, &sets, 1).unwrap() else {
            panic!("expected a patch")
        };
        assert_eq!(revision, 1);
        assert_eq!(plan_undo(&d, &sets, 3).unwrap(), Undo::Skip { revision: 3 });
        let err = plan_undo(&d, &sets, 9).unwrap_err().to_string();
        assert_eq!(
            err,
            "unable to find the specified revision 9 in the history of deployment \"web\""
        );
        let err = plan_undo(&d, &sets[2..3], 0).unwrap_err().to_string();
        assert!(
            err.starts_with("no rollout history found for deployment \"web\""),
            "{err}"
        );
        d["spec"]["paused"] = json!(true);
        assert!(
            plan_undo(&d, &sets, 0)
                .unwrap_err()
                .to_string()
                .starts_with("you cannot rollback a paused deployment")
        );

        let h = history(&json!({"metadata": {"uid": "u1"}}), &sets);
        assert_eq!(h.iter().map(|(r, _)| *r).collect::<Vec<_>>(), vec![1, 2, 3]);
        assert_eq!(h[0].1.as_deref(), Some("set image web:1"));
    }
}
