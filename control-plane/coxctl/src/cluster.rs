//! `coxctl cluster status`: the API server (`/version`, `/readyz`), who leads each
//! control-plane component (Leases in `kube-system`), and the nodes.

use std::io::Write;

use anyhow::{Context, Result};
use jiff::Timestamp;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, ListParams};

use crate::client::{Connection, KubeResultExt, server_error};
use crate::output::human_duration;

/// Options of `coxctl cluster`.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    what: What,
}

#[derive(Debug, clap::Subcommand)]
enum What {
    /// The API server's version and readiness, component leaders, and nodes.
    Status {
        /// Also checks node agents' `/healthz` at these endpoints (repeatable; e.g. the
        /// local agent, `http://127.0.0.1:10249`).
        #[arg(long, value_name = "URL")]
        agent: Vec<String>,
    },
}

/// `ok`, or why a node agent's `/healthz` did not answer so (bounded by 2 s).
pub fn agent_health(endpoint: &str) -> String {
    let url = format!("{}/healthz", endpoint.trim_end_matches('/'));
    let answer = ureq::get(&url)
        .config()
        .timeout_global(Some(std::time::Duration::from_secs(2)))
        .http_status_as_error(false)
        .build()
        .call();
    match answer {
        Ok(mut response) if response.status().is_success() => {
            let body = response.body_mut().read_to_string().unwrap_or_default();
            if body.trim().is_empty() {
                "ok".to_owned()
            } else {
                body.trim().to_owned()
            }
        }
        Ok(response) => format!("unhealthy (HTTP {})", response.status()),
        Err(e) => format!("unreachable ({e})"),
    }
}

/// One row of the component table.
#[derive(Debug, PartialEq, Eq)]
pub struct Leader {
    /// The Lease's name (the component).
    pub component: String,
    /// `holderIdentity`, or `<none>`.
    pub holder: String,
    /// `3s ago`, or `<never>`.
    pub renewed: String,
    /// `held` while the lease is within its duration, `expired` after, `released` without holder.
    pub state: &'static str,
}

/// What a Lease says about its component's leader at `now`.
pub fn leader(lease: &Lease, now: Timestamp) -> Leader {
    let spec = lease.spec.clone().unwrap_or_default();
    let holder = spec.holder_identity.filter(|h| !h.is_empty());
    let renewed_at = spec
        .renew_time
        .map(|t| t.0)
        .or_else(|| spec.acquire_time.map(|t| t.0));
    let since = renewed_at.map(|t| now.duration_since(t).as_secs());
    let duration = i64::from(spec.lease_duration_seconds.unwrap_or(15));
    let state = match (&holder, since) {
        (None, _) => "released",
        (Some(_), Some(s)) if s <= duration => "held",
        _ => "expired",
    };
    Leader {
        component: lease.metadata.name.clone().unwrap_or_default(),
        holder: holder.unwrap_or_else(|| "<none>".to_owned()),
        renewed: since
            .map(|s| format!("{} ago", human_duration(s)))
            .unwrap_or_else(|| "<never>".to_owned()),
        state,
    }
}

/// One row of the node table.
pub fn node_row(node: &Node, now: Timestamp) -> Vec<String> {
    let status = node.status.clone().unwrap_or_default();
    let ready = status
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == "Ready")
        .map(|c| match c.status.as_str() {
            "True" => "Ready".to_owned(),
            "False" => "NotReady".to_owned(),
            _ => "Unknown".to_owned(),
        })
        .unwrap_or_else(|| "Unknown".to_owned());
    let unschedulable = node
        .spec
        .as_ref()
        .and_then(|s| s.unschedulable)
        .unwrap_or(false);
    let info = status.node_info.clone().unwrap_or_default();
    let or_none = |s: &str| {
        if s.is_empty() {
            "<none>".to_owned()
        } else {
            s.to_owned()
        }
    };
    let ip = status
        .addresses
        .iter()
        .flatten()
        .find(|a| a.type_ == "InternalIP")
        .map(|a| a.address.clone())
        .unwrap_or_else(|| "<none>".to_owned());
    let cidr = node
        .spec
        .as_ref()
        .and_then(|s| s.pod_cidr.clone())
        .unwrap_or_else(|| "<none>".to_owned());
    let age = node
        .metadata
        .creation_timestamp
        .as_ref()
        .map(|t| human_duration(now.duration_since(t.0).as_secs()))
        .unwrap_or_else(|| "<unknown>".to_owned());
    vec![
        node.metadata.name.clone().unwrap_or_default(),
        if unschedulable {
            format!("{ready},SchedulingDisabled")
        } else {
            ready
        },
        or_none(&info.kubelet_version),
        ip,
        cidr,
        or_none(&info.kernel_version),
        or_none(&info.container_runtime_version),
        age,
    ]
}

/// Runs `coxctl cluster status`; non-zero when the API server is not ready.
pub async fn run(conn: &Connection, args: &Args) -> Result<i32> {
    let What::Status { agent: agents } = &args.what;
    let version = conn
        .client
        .apiserver_version()
        .await
        .map_err(|e| server_error(e, &conn.url))?;
    let readyz = http::Request::get("/readyz")
        .body(Vec::new())
        .context("failed to build the /readyz request")?;
    let (ready_text, ready) = match conn.client.request_text(readyz).await {
        Ok(body) => (body.trim().to_owned(), true),
        Err(e) => (format!("not ready: {}", server_error(e, &conn.url)), false),
    };
    let now = Timestamp::now();
    let mut out = tabwriter::TabWriter::new(Vec::new()).padding(3).minwidth(0);
    writeln!(out, "API server:\t{}", conn.url)?;
    let built: Vec<&str> = [version.platform.as_str(), version.go_version.as_str()]
        .into_iter()
        .filter(|s| !s.is_empty())
        .collect();
    writeln!(
        out,
        "Version:\t{} ({})",
        version.git_version,
        built.join(", ")
    )?;
    writeln!(out, "Ready:\t{ready_text}")?;
    writeln!(out)?;
    let leases: Api<Lease> = Api::namespaced(conn.client.clone(), "kube-system");
    let leases = leases
        .list(&ListParams::default())
        .await
        .server(conn)?
        .items;
    if leases.is_empty() {
        writeln!(
            out,
            "No component leases in kube-system (the scheduler and controllers are not running, or run without leader election)"
        )?;
    } else {
        writeln!(out, "COMPONENT\tLEADER\tRENEWED\tSTATE")?;
        for lease in &leases {
            let l = leader(lease, now);
            writeln!(
                out,
                "{}\t{}\t{}\t{}",
                l.component, l.holder, l.renewed, l.state
            )?;
        }
    }
    writeln!(out)?;
    let nodes: Api<Node> = Api::all(conn.client.clone());
    let nodes = nodes.list(&ListParams::default()).await.server(conn)?.items;
    if nodes.is_empty() {
        writeln!(out, "No nodes registered")?;
    } else {
        writeln!(
            out,
            "NODE\tSTATUS\tVERSION\tINTERNAL-IP\tPOD-CIDR\tKERNEL\tCONTAINER-RUNTIME\tAGE"
        )?;
        for node in &nodes {
            writeln!(out, "{}", node_row(node, now).join("\t"))?;
        }
    }
    if !agents.is_empty() {
        writeln!(out)?;
        writeln!(out, "NODE AGENT\tHEALTH")?;
        for endpoint in agents {
            let owned = endpoint.clone();
            let health = tokio::task::spawn_blocking(move || agent_health(&owned))
                .await
                .context("the node agent check stopped")?;
            writeln!(out, "{endpoint}\t{health}")?;
        }
    }
    let text = out.into_inner().context("failed to align the status")?;
    std::io::stdout().write_all(&text)?;
    Ok(if ready { 0 } else { 1 })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn leaders_and_their_state() {
        let now: Timestamp = "2026-01-01T00:01:00Z".parse().unwrap();
        let lease = |holder: Option<&str>, renewed: &str| -> Lease {
            serde_json::from_value(json!({
                "metadata": {"name": "kube-scheduler", "namespace": "kube-system"},
                "spec": {"holderIdentity": holder, "renewTime": renewed, "leaseDurationSeconds": 15},
            }))
            .unwrap()
        };
        assert_eq!(
            leader(
                &lease(Some("cp-1_ab12"), "2026-01-01T00:00:57.000000Z"),
                now
            ),
            Leader {
                component: "kube-scheduler".into(),
                holder: "cp-1_ab12".into(),
                renewed: "3s ago".into(),
                state: "held"
            }
        );
        assert_eq!(
            leader(
                &lease(Some("cp-1_ab12"), "2026-01-01T00:00:00.000000Z"),
                now
            )
            .state,
            "expired"
        );
        assert_eq!(
            leader(&lease(None, "2026-01-01T00:00:59.000000Z"), now).state,
            "released"
        );
    }

    #[test]
    fn node_rows() {
        let now: Timestamp = "2026-01-01T01:00:00Z".parse().unwrap();
        let node: Node = serde_json::from_value(json!({
            "metadata": {"name": "n1", "creationTimestamp": "2026-01-01T00:00:00Z"},
            "spec": {"podCIDR": "10.244.1.0/24", "unschedulable": true},
            "status": {
                "conditions": [{"type": "Ready", "status": "True"}],
                "addresses": [{"type": "Hostname", "address": "n1"}, {"type": "InternalIP", "address": "10.0.0.2"}],
                "nodeInfo": {"kubeletVersion": "v1.37.0", "kernelVersion": "6.12.0", "containerRuntimeVersion": "containerd://2.1",
                             "architecture": "", "bootID": "", "kubeProxyVersion": "", "machineID": "", "operatingSystem": "", "osImage": "", "systemUUID": ""},
            },
        }))
        .unwrap();
        assert_eq!(
            node_row(&node, now),
            vec![
                "n1",
                "Ready,SchedulingDisabled",
                "v1.37.0",
                "10.0.0.2",
                "10.244.1.0/24",
                "6.12.0",
                "containerd://2.1",
                "60m"
            ]
        );
    }
}
