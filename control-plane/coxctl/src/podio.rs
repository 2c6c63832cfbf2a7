//! `coxctl logs` and `coxctl exec`: container logs through `pods/log`, and commands through
//! `pods/exec` over WebSocket (`v5.channel.k8s.io`, else `v4`: kube-rs frames the channels;
//! here the container is chosen and the exit status decoded into the process's own).

use anyhow::{Context, Result, anyhow, bail};
use futures::{AsyncBufReadExt, AsyncReadExt, TryStreamExt};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Status;
use kube::api::{Api, AttachParams, ListParams, LogParams};
use tokio::io::AsyncWriteExt;

use crate::client::{Connection, KubeResultExt};
use crate::describe::selector_text;
use crate::resources::{Catalog, split_kind_name};

/// The annotation naming the container `logs` and `exec` pick without `-c`.
pub const DEFAULT_CONTAINER: &str = "kubectl.kubernetes.io/default-container";

/// Options of `coxctl logs`.
#[derive(Debug, clap::Args)]
pub struct LogsArgs {
    /// The pod (`NAME`, `pod/NAME`), or `TYPE/NAME` of a workload or Service (one of its pods).
    #[arg(required_unless_present = "selector", conflicts_with = "selector")]
    pod: Option<String>,
    /// The logs of every pod matching this label selector, instead of one pod.
    #[arg(long, short = 'l')]
    selector: Option<String>,
    /// Prefixes each line with `[pod/NAME/CONTAINER]`.
    #[arg(long)]
    prefix: bool,
    /// With `-l -f`: at most this many pods followed at once (kubectl's limit).
    #[arg(long, default_value_t = 5)]
    max_log_requests: usize,
    /// The container (default: the pod's default container, else its first).
    #[arg(long, short = 'c')]
    container: Option<String>,
    /// Streams new lines as they are written.
    #[arg(long, short = 'f')]
    follow: bool,
    /// Only the last N lines.
    #[arg(long)]
    tail: Option<i64>,
    /// The previous (terminated) instance of the container.
    #[arg(long, short = 'p')]
    previous: bool,
    /// Prefixes each line with its timestamp.
    #[arg(long)]
    timestamps: bool,
}

/// Options of `coxctl exec`.
#[derive(Debug, clap::Args)]
pub struct ExecArgs {
    /// The pod (`NAME`, `pod/NAME`), or `TYPE/NAME` of a workload or Service (one of its pods).
    pod: String,
    /// The container (default: the pod's default container, else its first).
    #[arg(long, short = 'c')]
    container: Option<String>,
    /// Passes stdin to the command.
    #[arg(long, short = 'i')]
    stdin: bool,
    /// The command and its arguments, after `--`.
    #[arg(last = true, required = true, value_name = "COMMAND")]
    command: Vec<String>,
}

/// The pod `NAME`, `pod/NAME`, or `TYPE/NAME` of anything with a pod selector (Deployment,
/// ReplicaSet, StatefulSet, DaemonSet, Job, Service): one of its pods, chosen as kubectl
/// does, with a notice when there was a choice.
async fn resolve_pod(conn: &Connection, target: &str) -> Result<(Pod, Option<String>)> {
    let pods: Api<Pod> = Api::namespaced(conn.client.clone(), &conn.namespace);
    let Some((typed, name)) = split_kind_name(target) else {
        return Ok((pods.get(target).await.server(conn)?, None));
    };
    let catalog = Catalog::load(conn).await?;
    let resource = catalog.resolve(typed)?;
    if resource.group.is_empty() && resource.kind == "Pod" {
        return Ok((pods.get(name).await.server(conn)?, None));
    }
    let object = resource
        .api(conn, Some(&conn.namespace))
        .get(name)
        .await
        .server(conn)?;
    let object = serde_json::to_value(object)?;
    let selector = object
        .pointer("/spec/selector")
        .filter(|s| s.as_object().is_some_and(|m| !m.is_empty()))
        .ok_or_else(|| {
            anyhow!(
                "{}/{name} has no pod selector (spec.selector): name a pod instead",
                resource.display()
            )
        })?;
    let selector = selector_text(Some(selector));
    let found = pods
        .list(&ListParams::default().labels(&selector))
        .await
        .server(conn)?
        .items;
    let total = found.len();
    let chosen = choose_pod(found).ok_or_else(|| {
        anyhow!(
            "no pods found for {}/{name} (selector {selector})",
            resource.display()
        )
    })?;
    let notice = (total > 1).then(|| {
        format!(
            "Found {total} pods, using pod/{}",
            chosen.metadata.name.as_deref().unwrap_or("")
        )
    });
    Ok((chosen, notice))
}

/// kubectl's choice among a workload's pods: running before pending before finished, ready
/// before unready, then the newest.
pub fn choose_pod(pods: Vec<Pod>) -> Option<Pod> {
    let rank = |p: &Pod| {
        let status = p.status.as_ref();
        let phase = match status.and_then(|s| s.phase.as_deref()) {
            Some("Running") => 0,
            Some("Pending") => 1,
            Some("Unknown") | None => 2,
            _ => 3,
        };
        let ready = status
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
        let created = p.metadata.creation_timestamp.as_ref().map(|t| t.0);
        (phase, !ready, std::cmp::Reverse(created))
    };
    pods.into_iter().min_by_key(rank)
}

/// Picks the container: `-c` (checked), else the default-container annotation, else the
/// first; returns it and, when there was a choice, the notice kubectl prints.
pub fn pick_container(pod: &Pod, requested: Option<&str>) -> Result<(String, Option<String>)> {
    let name = pod.metadata.name.as_deref().unwrap_or("");
    let spec = pod
        .spec
        .as_ref()
        .ok_or_else(|| anyhow!("pod \"{name}\" has no spec"))?;
    let mut all: Vec<&str> = spec.containers.iter().map(|c| c.name.as_str()).collect();
    let init: Vec<&str> = spec
        .init_containers
        .iter()
        .flatten()
        .map(|c| c.name.as_str())
        .collect();
    let ephemeral: Vec<&str> = spec
        .ephemeral_containers
        .iter()
        .flatten()
        .map(|c| c.name.as_str())
        .collect();
    if let Some(wanted) = requested {
        if all.contains(&wanted) || init.contains(&wanted) || ephemeral.contains(&wanted) {
            return Ok((wanted.to_owned(), None));
        }
        all.extend(init);
        all.extend(ephemeral);
        bail!(
            "container \"{wanted}\" is not valid for pod \"{name}\": choose one of: {}",
            all.join(", ")
        );
    }
    let annotated = pod
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(DEFAULT_CONTAINER))
        .filter(|c| all.contains(&c.as_str()));
    if let Some(c) = annotated {
        return Ok((c.clone(), None));
    }
    let Some(first) = all.first() else {
        bail!("pod \"{name}\" has no containers");
    };
    let notice = (all.len() > 1)
        .then(|| format!("Defaulted container \"{first}\" out of: {}", all.join(", ")));
    Ok(((*first).to_owned(), notice))
}

/// What the exec's status channel said: the command's exit code, or why it did not run.
pub fn exit_code(status: Option<&Status>) -> Result<i32> {
    let Some(status) = status else {
        bail!(
            "the exec stream closed without an exit status (the kubelet or the API server ended the session)"
        );
    };
    if status.status.as_deref() == Some("Success") {
        return Ok(0);
    }
    if status.reason.as_deref() == Some("NonZeroExitCode") {
        let code = status
            .details
            .as_ref()
            .and_then(|d| d.causes.as_ref())
            .and_then(|causes| {
                causes
                    .iter()
                    .find(|c| c.reason.as_deref() == Some("ExitCode"))
            })
            .and_then(|c| c.message.as_deref())
            .and_then(|m| m.trim().parse::<i32>().ok());
        return match code {
            Some(code) => Ok(code),
            None => bail!(
                "command failed without an exit code: {}",
                status.message.as_deref().unwrap_or("")
            ),
        };
    }
    bail!(
        "{}",
        status
            .message
            .as_deref()
            .filter(|m| !m.is_empty())
            .unwrap_or("the command could not be run")
    )
}

/// Runs `coxctl logs`.
pub async fn logs(conn: &Connection, args: &LogsArgs) -> Result<i32> {
    let api: Api<Pod> = Api::namespaced(conn.client.clone(), &conn.namespace);
    let pods = match (&args.pod, &args.selector) {
        (Some(target), _) => {
            let (pod, found) = resolve_pod(conn, target).await?;
            if let Some(found) = found {
                eprintln!("{found}");
            }
            vec![pod]
        }
        (None, Some(selector)) => {
            let pods = api
                .list(&ListParams::default().labels(selector))
                .await
                .server(conn)?
                .items;
            if pods.is_empty() {
                eprintln!("No resources found in {} namespace.", conn.namespace);
                return Ok(0);
            }
            if args.follow && pods.len() > args.max_log_requests {
                bail!(
                    "you are attempting to follow {} log streams, but the maximum allowed concurrency is {}: \
                     use --max-log-requests to increase the limit",
                    pods.len(),
                    args.max_log_requests
                );
            }
            pods
        }
        (None, None) => bail!("name a pod, or pass -l SELECTOR"),
    };
    let mut streams = Vec::new();
    for pod in &pods {
        let (container, notice) = pick_container(pod, args.container.as_deref())?;
        if let Some(notice) = notice {
            eprintln!("{notice}");
        }
        let name = pod.metadata.name.clone().unwrap_or_default();
        let prefix = args.prefix.then(|| format!("[pod/{name}/{container}]"));
        let params = LogParams {
            container: Some(container),
            follow: args.follow,
            tail_lines: args.tail.filter(|n| *n >= 0),
            previous: args.previous,
            timestamps: args.timestamps,
            ..LogParams::default()
        };
        streams.push((name, params, prefix));
    }
    if args.follow {
        // Every stream at once; lines from different pods interleave whole.
        futures::future::try_join_all(streams.iter().map(|(name, params, prefix)| {
            copy_logs(conn, &api, name, params, prefix.as_deref(), pods.len() > 1)
        }))
        .await?;
    } else {
        for (name, params, prefix) in &streams {
            copy_logs(conn, &api, name, params, prefix.as_deref(), false).await?;
        }
    }
    Ok(0)
}

/// Copies one pod's log stream to stdout: as bytes, or line by line when lines need a
/// prefix or must not interleave with other streams.
async fn copy_logs(
    conn: &Connection,
    api: &Api<Pod>,
    name: &str,
    params: &LogParams,
    prefix: Option<&str>,
    whole_lines: bool,
) -> Result<()> {
    let stream = api.log_stream(name, params).await.server(conn)?;
    let mut stream = std::pin::pin!(stream);
    let failed = || format!("failed to read the logs of pod \"{name}\"");
    if prefix.is_some() || whole_lines {
        let mut lines = stream.lines();
        while let Some(line) = lines.try_next().await.with_context(failed)? {
            match prefix {
                Some(p) => println!("{p} {line}"),
                None => println!("{line}"),
            }
        }
        return Ok(());
    }
    let mut stdout = tokio::io::stdout();
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = stream.read(&mut buf).await.with_context(failed)?;
        if n == 0 {
            return Ok(());
        }
        stdout.write_all(&buf[..n]).await?;
        stdout.flush().await?;
    }
}

/// Runs `coxctl exec`; the result is the remote command's exit code.
pub async fn exec(conn: &Connection, args: &ExecArgs) -> Result<i32> {
    let (pod, found) = resolve_pod(conn, &args.pod).await?;
    if let Some(found) = found {
        eprintln!("{found}");
    }
    let name = pod.metadata.name.clone().unwrap_or_default();
    let name = name.as_str();
    let api: Api<Pod> = Api::namespaced(conn.client.clone(), &conn.namespace);
    let phase = pod
        .status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("");
    if matches!(phase, "Succeeded" | "Failed") {
        bail!("cannot exec into a container in a completed pod; current phase is {phase}");
    }
    let (container, notice) = pick_container(&pod, args.container.as_deref())?;
    if let Some(notice) = notice {
        eprintln!("{notice}");
    }
    let params = AttachParams::default()
        .container(container)
        .stdin(args.stdin)
        .stdout(true)
        .stderr(true);
    let mut process = api
        .exec(name, args.command.clone(), &params)
        .await
        .server(conn)?;
    let status = process
        .take_status()
        .context("the exec session has no status channel")?;
    let mut tasks = Vec::new();
    if let Some(mut out) = process.stdout() {
        tasks.push(tokio::spawn(async move {
            tokio::io::copy(&mut out, &mut tokio::io::stdout()).await
        }));
    }
    if let Some(mut err) = process.stderr() {
        tasks.push(tokio::spawn(async move {
            tokio::io::copy(&mut err, &mut tokio::io::stderr()).await
        }));
    }
    if let Some(mut input) = process.stdin() {
        // Not awaited: stdin may never end; the session ends when the command does.
        tokio::spawn(async move {
            let _ = tokio::io::copy(&mut tokio::io::stdin(), &mut input).await;
            let _ = input.shutdown().await;
        });
    }
    let status = status.await;
    for task in tasks {
        task.await
            .context("the output relay stopped")?
            .context("failed to relay the command's output")?;
    }
    process.join().await.context("the exec session failed")?;
    let code = exit_code(status.as_ref())?;
    if code != 0 {
        eprintln!("command terminated with exit code {code}");
    }
    Ok(code)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(containers: &[&str], annotation: Option<&str>) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "web", "annotations": annotation.map(|a| json!({DEFAULT_CONTAINER: a}))},
            "spec": {
                "initContainers": [{"name": "setup"}],
                "containers": containers.iter().map(|c| json!({"name": c})).collect::<Vec<_>>(),
            },
        }))
        .unwrap()
    }

    #[test]
    fn containers_are_picked_like_kubectl() {
        assert_eq!(
            pick_container(&pod(&["web"], None), None).unwrap(),
            ("web".into(), None)
        );
        assert_eq!(
            pick_container(&pod(&["web", "sidecar"], None), None).unwrap(),
            (
                "web".into(),
                Some("Defaulted container \"web\" out of: web, sidecar".into())
            )
        );
        assert_eq!(
            pick_container(&pod(&["web", "sidecar"], Some("sidecar")), None).unwrap(),
            ("sidecar".into(), None)
        );
        // An annotation naming no container is ignored.
        assert_eq!(
            pick_container(&pod(&["web"], Some("gone")), None)
                .unwrap()
                .0,
            "web"
        );
        assert_eq!(
            pick_container(&pod(&["web"], None), Some("setup")).unwrap(),
            ("setup".into(), None)
        );
        let err = pick_container(&pod(&["web", "sidecar"], None), Some("db"))
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "container \"db\" is not valid for pod \"web\": choose one of: web, sidecar, setup"
        );
    }

    fn status(value: serde_json::Value) -> Status {
        serde_json::from_value(value).unwrap()
    }

    #[test]
    fn exit_status_decoding() {
        // What the kubelet sends on channel 3 (the error channel).
        assert_eq!(
            exit_code(Some(&status(json!({"metadata": {}, "status": "Success"})))).unwrap(),
            0
        );
        let failed = status(json!({
            "metadata": {}, "status": "Failure", "message": "command terminated with non-zero exit code: exit status 3",
            "reason": "NonZeroExitCode", "details": {"causes": [{"reason": "ExitCode", "message": "3"}]},
        }));
        assert_eq!(exit_code(Some(&failed)).unwrap(), 3);
        let not_found = status(
            json!({"metadata": {}, "status": "Failure", "message": "container \"x\" not found in pod \"web\""}),
        );
        assert_eq!(
            exit_code(Some(&not_found)).unwrap_err().to_string(),
            "container \"x\" not found in pod \"web\""
        );
        let no_code = status(
            json!({"metadata": {}, "status": "Failure", "reason": "NonZeroExitCode", "message": "boom"}),
        );
        assert!(
            exit_code(Some(&no_code))
                .unwrap_err()
                .to_string()
                .contains("boom")
        );
        assert!(exit_code(None).is_err());
    }

    #[test]
    fn workload_pods_are_chosen_like_kubectl() {
        let pod = |name: &str, phase: &str, ready: bool, created: &str| -> Pod {
            serde_json::from_value(json!({
                "metadata": {"name": name, "creationTimestamp": created},
                "status": {"phase": phase, "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}]},
            }))
            .unwrap()
        };
        let chosen = |pods: Vec<Pod>| choose_pod(pods).and_then(|p| p.metadata.name);
        let old_ready = pod("old-ready", "Running", true, "2026-01-01T00:00:00Z");
        let new_ready = pod("new-ready", "Running", true, "2026-01-02T00:00:00Z");
        let unready = pod("unready", "Running", false, "2026-01-03T00:00:00Z");
        let pending = pod("pending", "Pending", false, "2026-01-04T00:00:00Z");
        let done = pod("done", "Succeeded", false, "2026-01-05T00:00:00Z");
        assert_eq!(
            chosen(vec![
                done.clone(),
                pending.clone(),
                unready.clone(),
                old_ready,
                new_ready
            ])
            .as_deref(),
            Some("new-ready")
        );
        assert_eq!(
            chosen(vec![done.clone(), pending.clone(), unready]).as_deref(),
            Some("unready")
        );
        assert_eq!(
            chosen(vec![done.clone(), pending]).as_deref(),
            Some("pending")
        );
        assert_eq!(chosen(vec![done]).as_deref(), Some("done"));
        assert_eq!(chosen(vec![]), None);
    }
}
