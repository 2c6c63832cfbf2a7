//! `pods/log`, `pods/exec` and `pods/attach`: proxied to the kubelet of the pod's node (the
//! Node's `InternalIP` and `status.daemonEndpoints.kubeletEndpoint.Port`), as kube-apiserver
//! does. Logs stream through; exec and attach upgrade to WebSocket (`v5.channel.k8s.io`) and
//! the two connections are then spliced.
//!
//! The hop to the kubelet is TLS both ways ([`KubeletDialer`]): the kubelet's certificate
//! must be signed by the cluster CA and valid for the address dialled (upstream's
//! `--kubelet-certificate-authority`), and the API server presents its own client
//! certificate (`kube-apiserver-kubelet-client`), which the kubelet authorizes with a
//! SubjectAccessReview for `nodes/proxy` or `nodes/log`.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderValue, StatusCode, Uri, header};
use axum::response::Response;
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use serde_json::Value;
use tracing::debug;

use crate::request_info::RequestInfo;
use crate::server::ApiState;
use crate::status::{ApiError, Result, Target};

/// Subresources of pods served by the node's kubelet.
pub(crate) const SUBRESOURCES: [&str; 3] = ["log", "exec", "attach"];

/// Whether `info` is a request this module serves.
pub(crate) fn handles(info: &RequestInfo) -> bool {
    info.is_resource_request
        && info.api_prefix == "api"
        && info.api_group.is_empty()
        && info.resource == "pods"
        && info.name.is_some()
        && info
            .subresource
            .as_deref()
            .is_some_and(|s| SUBRESOURCES.contains(&s))
}

/// Dials a node's kubelet over TLS with the API server's kubelet client configuration.
#[derive(Debug, Clone)]
struct KubeletDialer(Arc<rustls::ClientConfig>);

/// How long dialling a kubelet (TCP and TLS) may take.
const DIAL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

impl KubeletDialer {
    /// Connects to `host:port` and completes a TLS handshake that verifies the kubelet's
    /// certificate against the cluster CA and `host` (an address or a DNS name).
    async fn dial(&self, host: &str, port: u16) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
        let name = match host.parse::<std::net::IpAddr>() {
            Ok(ip) => ServerName::IpAddress(ip.into()),
            Err(_) => ServerName::try_from(host.to_owned())
                .map_err(|e| std::io::Error::other(format!("{host:?} is not a server name: {e}")))?,
        };
        let connector = tokio_rustls::TlsConnector::from(self.0.clone());
        tokio::time::timeout(DIAL_TIMEOUT, async {
            let tcp = tokio::net::TcpStream::connect((host, port)).await?;
            let _ = tcp.set_nodelay(true);
            connector.connect(name, tcp).await
        })
        .await
        .map_err(|_| std::io::Error::other("timed out"))?
    }
}

async fn get_object(state: &ApiState, plural: &str, namespace: Option<&str>, name: &str) -> Result<Value> {
    let rt = state
        .registry
        .lookup("", "v1", plural)
        .ok_or(ApiError::NoSuchResource)?;
    let target = Target::new(rt.group, rt.plural, name);
    let (kv, _) = state
        .store
        .get(&rt.key(namespace, name), None)
        .await
        .map_err(|e| ApiError::from_store(e, &target))?;
    let kv = kv.ok_or(ApiError::NotFound(target))?;
    crate::storage::decode(&kv)
}

fn query_param(query: &str, key: &str) -> Option<String> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == key).then(|| v.to_owned())
    })
}

fn names(pod: &Value, field: &str) -> Vec<String> {
    pod["spec"][field]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| c["name"].as_str().map(str::to_owned))
        .collect()
}

/// The container a request is about: the `container` parameter, or the only (or
/// annotated default) container.
fn container(pod: &Value, name: &str, query: &str) -> Result<String> {
    let main = names(pod, "containers");
    let all: Vec<String> = main
        .iter()
        .cloned()
        .chain(names(pod, "initContainers"))
        .chain(names(pod, "ephemeralContainers"))
        .collect();
    match query_param(query, "container").filter(|c| !c.is_empty()) {
        Some(c) if all.contains(&c) => Ok(c),
        Some(c) => Err(ApiError::BadRequest(format!(
            "container {c} is not valid for pod {name}"
        ))),
        None => {
            if let Some(d) = pod["metadata"]["annotations"]["kubectl.kubernetes.io/default-container"].as_str()
                && main.iter().any(|c| c == d)
            {
                return Ok(d.to_owned());
            }
            match main.as_slice() {
                [only] => Ok(only.clone()),
                _ => Err(ApiError::BadRequest(format!(
                    "a container name must be specified for pod {name}, choose one of: [{}]",
                    main.join(" ")
                ))),
            }
        }
    }
}

/// The kubelet endpoint (host, port) of a Node object.
fn kubelet_endpoint(node: &Value) -> Option<(String, u16)> {
    let addresses = node["status"]["addresses"].as_array()?;
    let pick = |ty: &str| {
        addresses
            .iter()
            .find(|a| a["type"] == ty)
            .and_then(|a| a["address"].as_str())
    };
    let host = pick("InternalIP").or_else(|| pick("ExternalIP")).or_else(|| pick("Hostname"))?;
    let port = node["status"]["daemonEndpoints"]["kubeletEndpoint"]["Port"]
        .as_u64()
        .and_then(|p| u16::try_from(p).ok())
        .filter(|p| *p != 0)
        .unwrap_or(10250);
    Some((host.to_owned(), port))
}

/// Proxies one `pods/{log,exec}` request to the kubelet.
pub(crate) async fn proxy(state: &ApiState, info: &RequestInfo, mut request: Request) -> Result<Response> {
    let namespace = info.namespace.as_deref().ok_or(ApiError::NoSuchResource)?;
    let name = info.name.as_deref().ok_or(ApiError::NoSuchResource)?;
    let sub = info.subresource.as_deref().unwrap_or_default();
    let pod = get_object(state, "pods", Some(namespace), name).await?;
    let query = request.uri().query().unwrap_or("").to_owned();
    let container = container(&pod, name, &query)?;
    let node_name = pod["spec"]["nodeName"].as_str().unwrap_or("");
    if node_name.is_empty() {
        return Err(ApiError::BadRequest(format!(
            "pod {name} does not have a host assigned"
        )));
    }
    let node = get_object(state, "nodes", None, node_name).await?;
    let (host, port) = kubelet_endpoint(&node).ok_or_else(|| {
        ApiError::BadRequest(format!("node {node_name} has no address for its kubelet"))
    })?;
    let path = match sub {
        "log" => "containerLogs",
        "attach" => "attach",
        _ => "exec",
    };
    let rest: Vec<&str> = query
        .split('&')
        .filter(|p| !p.is_empty() && !p.starts_with("container="))
        .collect();
    let uri: Uri = format!(
        "/{path}/{namespace}/{name}/{container}{}{}",
        if rest.is_empty() { "" } else { "?" },
        rest.join("&")
    )
    .parse()
    .map_err(|e| ApiError::BadRequest(format!("invalid request: {e}")))?;
    debug!(%host, port, %uri, "proxying to the kubelet");

    let unavailable = |e: &dyn std::fmt::Display| {
        ApiError::Unavailable(format!(
            "failed to reach the kubelet of node {node_name} at {host}:{port}: {e}"
        ))
    };
    let dialer = KubeletDialer(state.security.kubelet_client().tls());
    let stream = dialer.dial(&host, port).await.map_err(|e| unavailable(&e))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| unavailable(&e))?;
    tokio::spawn(async move {
        let _ = conn.with_upgrades().await;
    });

    let upgrading = request.headers().contains_key(header::UPGRADE);
    let client_upgrade = upgrading.then(|| hyper::upgrade::on(&mut request));
    let mut upstream = axum::http::Request::builder()
        .method(request.method().clone())
        .uri(uri);
    for (k, v) in request.headers() {
        if k == header::HOST || k == header::AUTHORIZATION || k == header::CONTENT_LENGTH {
            continue;
        }
        upstream = upstream.header(k, v);
    }
    let upstream = upstream
        .header(header::HOST, HeaderValue::from_str(&format!("{host}:{port}")).unwrap_or(HeaderValue::from_static("kubelet")))
        .body(if upgrading { Body::empty() } else { request.into_body() })
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    let mut response = sender.send_request(upstream).await.map_err(|e| unavailable(&e))?;

    if response.status() == StatusCode::SWITCHING_PROTOCOLS {
        let Some(client_upgrade) = client_upgrade else {
            return Err(ApiError::Internal("the kubelet upgraded a plain request".into()));
        };
        let kubelet_upgrade = hyper::upgrade::on(&mut response);
        tokio::spawn(async move {
            let (Ok(client), Ok(kubelet)) = (client_upgrade.await, kubelet_upgrade.await) else {
                return;
            };
            let mut client = TokioIo::new(client);
            let mut kubelet = TokioIo::new(kubelet);
            let _ = tokio::io::copy_bidirectional(&mut client, &mut kubelet).await;
        });
        let (parts, _) = response.into_parts();
        return Ok(Response::from_parts(parts, Body::empty()));
    }
    let (parts, body) = response.into_parts();
    Ok(Response::from_parts(parts, Body::new(body)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn picks_the_container() {
        let pod = json!({"spec": {"containers": [{"name": "a"}, {"name": "b"}], "initContainers": [{"name": "i"}]}});
        assert_eq!(container(&pod, "p", "container=b&follow=true").unwrap(), "b");
        assert_eq!(container(&pod, "p", "container=i").unwrap(), "i");
        assert_eq!(
            container(&pod, "p", "").unwrap_err().to_string(),
            "a container name must be specified for pod p, choose one of: [a b]"
        );
        assert_eq!(
            container(&pod, "p", "container=z").unwrap_err().to_string(),
            "container z is not valid for pod p"
        );
        let one = json!({"spec": {"containers": [{"name": "only"}]}});
        assert_eq!(container(&one, "p", "tailLines=1").unwrap(), "only");
    }

    #[test]
    fn finds_the_kubelet_endpoint() {
        let node = json!({"status": {
            "addresses": [{"type": "Hostname", "address": "n1"}, {"type": "InternalIP", "address": "10.1.0.2"}],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": 11250}},
        }});
        assert_eq!(kubelet_endpoint(&node), Some(("10.1.0.2".into(), 11250)));
        assert_eq!(kubelet_endpoint(&json!({"status": {}})), None);
    }
}
