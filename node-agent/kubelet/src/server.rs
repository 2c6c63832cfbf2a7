//! The kubelet's HTTPS endpoint, which the API server proxies `pods/log`, `pods/exec` and
//! `pods/attach` to: `GET /containerLogs/{namespace}/{pod}/{container}` (with `follow`,
//! `previous`, `tailLines`, `timestamps`, `sinceSeconds`, `limitBytes`),
//! `GET /exec/{namespace}/{pod}/{container}?command=...` and
//! `GET /attach/{namespace}/{pod}/{container}` over WebSocket with the
//! `v5.channel.k8s.io` protocol (v4 accepted).
//!
//! Served over TLS only ([`serve`]), with the serving certificate the cluster CA signed
//! (`serving_cert`); every request is authenticated and authorized (`auth`) before it
//! reaches a handler. Exec without a terminal runs through `ctr` (pipes, and v5's close
//! signal ends its input); exec with a terminal and attach go through CRI `Exec`/`Attach`
//! and containerd's streaming server (`streaming`), so the session has a real terminal
//! that follows resizes.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Stdio,
    sync::Arc,
    time::Duration,
};

use axum::{
    Router,
    body::{Body, Bytes},
    extract::{
        Path as UrlPath, RawQuery, State,
        connect_info::Connected,
        ws::{Message, WebSocket, WebSocketUpgrade},
    },
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::get,
    serve::IncomingStream,
};
use coxswain_auth::{UserInfo, pki::CertInfo};
use futures::{SinkExt, StreamExt};
use k8s_cri::v1::ContainerStatus;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tracing::{debug, info};

use crate::{
    auth::{PeerUser, RequestAuth},
    cri::{Cri, LABEL_CONTAINER_NAME, LABEL_POD_NAME, LABEL_POD_NAMESPACE, LABEL_POD_UID, container_order, labels},
    logs::{LogOptions, render},
    status::is_running,
};

/// What the endpoint needs.
#[derive(Debug, Clone)]
pub struct ServerState {
    /// The runtime.
    pub cri: Cri,
    /// `ctr`, used to run exec sessions with streamed stdio.
    pub ctr: PathBuf,
}

/// The kubelet API routes, each request authenticated and authorized by `auth`.
pub fn router(state: Arc<ServerState>, auth: Arc<RequestAuth>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/containerLogs/{namespace}/{pod}/{container}", get(container_logs))
        .route("/exec/{namespace}/{pod}/{container}", get(exec).post(exec))
        .route("/attach/{namespace}/{pod}/{container}", get(attach).post(attach))
        .with_state(state)
        .layer(axum::middleware::from_fn_with_state(auth, crate::auth::layer))
}

/// How long a client may take to finish the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The TLS configuration: `serving` presented, client certificates optional (a bearer
/// token may stand in) but, when sent, verified against `client_ca_der` during the
/// handshake (a certificate the CA did not sign fails it).
pub fn tls_config(
    serving: Arc<crate::serving_cert::ServingCert>,
    client_ca_der: rustls::pki_types::CertificateDer<'static>,
) -> Result<Arc<rustls::ServerConfig>, String> {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(client_ca_der)
        .map_err(|e| format!("the client CA is not a usable trust anchor: {e}"))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .allow_unauthenticated()
        .build()
        .map_err(|e| format!("client certificate verifier: {e}"))?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS versions: {e}"))?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(serving);
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// A TCP listener whose connections come out with their TLS handshake done (each
/// handshake in its own task, so a slow client holds up nobody).
#[derive(Debug)]
pub struct TlsListener {
    local: SocketAddr,
    accepted: tokio::sync::mpsc::Receiver<(tokio_rustls::server::TlsStream<tokio::net::TcpStream>, SocketAddr)>,
    _acceptor: AbortOnDrop,
}

#[derive(Debug)]
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl TlsListener {
    /// Wraps `listener` with `config`.
    pub fn new(listener: tokio::net::TcpListener, config: Arc<rustls::ServerConfig>) -> std::io::Result<TlsListener> {
        let local = listener.local_addr()?;
        let (tx, accepted) = tokio::sync::mpsc::channel(64);
        let acceptor = tokio_rustls::TlsAcceptor::from(config);
        let task = tokio::spawn(async move {
            loop {
                let (tcp, peer) = match listener.accept().await {
                    Ok(a) => a,
                    Err(e) => {
                        debug!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = tcp.set_nodelay(true);
                let acceptor = acceptor.clone();
                let tx = tx.clone();
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                        Ok(Ok(tls)) => {
                            let _ = tx.send((tls, peer)).await;
                        }
                        Ok(Err(e)) => debug!(%peer, error = %e, "TLS handshake failed"),
                        Err(_) => debug!(%peer, "TLS handshake timed out"),
                    }
                });
            }
        });
        Ok(TlsListener { local, accepted, _acceptor: AbortOnDrop(task) })
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.accepted.recv().await {
            Some(conn) => conn,
            // The acceptor task only ends when the listener is dropped.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}

impl Connected<IncomingStream<'_, TlsListener>> for PeerUser {
    fn connect_info(stream: IncomingStream<'_, TlsListener>) -> Self {
        let user = stream
            .io()
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
            .and_then(|der| CertInfo::from_der(der).ok())
            .and_then(|info| UserInfo::from_certificate(&info));
        PeerUser(user)
    }
}

/// Serves `router` over TLS on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    config: Arc<rustls::ServerConfig>,
    router: Router,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let listener = TlsListener::new(listener, config)?;
    axum::serve(listener, router.into_make_service_with_connect_info::<PeerUser>())
        .with_graceful_shutdown(shutdown)
        .await
}

fn error(code: StatusCode, message: String) -> Response {
    let reason = match code {
        StatusCode::NOT_FOUND => "NotFound",
        StatusCode::BAD_REQUEST => "BadRequest",
        _ => "InternalError",
    };
    (
        code,
        [("content-type", "application/json")],
        json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {},
            "status": "Failure", "message": message, "reason": reason, "code": code.as_u16(),
        })
        .to_string(),
    )
        .into_response()
}

/// Decodes `application/x-www-form-urlencoded` pairs (repeated keys kept).
pub fn query_pairs(query: Option<&str>) -> Vec<(String, String)> {
    fn decode(s: &str) -> String {
        let bytes = s.as_bytes();
        let mut out = Vec::with_capacity(bytes.len());
        let mut i = 0;
        while i < bytes.len() {
            match bytes[i] {
                b'+' => out.push(b' '),
                b'%' if i + 2 < bytes.len() => {
                    match std::str::from_utf8(&bytes[i + 1..i + 3])
                        .ok()
                        .and_then(|h| u8::from_str_radix(h, 16).ok())
                    {
                        Some(b) => {
                            out.push(b);
                            i += 2;
                        }
                        None => out.push(b'%'),
                    }
                }
                b => out.push(b),
            }
            i += 1;
        }
        String::from_utf8_lossy(&out).into_owned()
    }
    query
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((k, v)) => (decode(k), decode(v)),
            None => (decode(p), String::new()),
        })
        .collect()
}

fn flag(pairs: &[(String, String)], key: &str) -> bool {
    pairs
        .iter()
        .any(|(k, v)| k == key && matches!(v.as_str(), "" | "1" | "true" | "True"))
}

fn value<'a>(pairs: &'a [(String, String)], key: &str) -> Option<&'a str> {
    pairs.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
}

/// The containers named `container` of pod `namespace/pod`, latest first.
async fn find_containers(cri: &Cri, namespace: &str, pod: &str, container: &str) -> Result<Vec<ContainerStatus>, Response> {
    let sandboxes = cri
        .list_sandboxes(labels([(LABEL_POD_NAMESPACE, namespace), (LABEL_POD_NAME, pod)]))
        .await
        .map_err(|e| error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    let Some(uid) = sandboxes
        .iter()
        .max_by_key(|s| s.created_at)
        .and_then(|s| s.labels.get(LABEL_POD_UID).cloned())
    else {
        return Err(error(StatusCode::NOT_FOUND, format!("pod \"{pod}\" in namespace \"{namespace}\" is not running on this node")));
    };
    let mut list = cri
        .list_containers(labels([(LABEL_POD_UID, uid.as_str()), (LABEL_CONTAINER_NAME, container)]))
        .await
        .map_err(|e| error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    list.sort_by_key(|c| std::cmp::Reverse(container_order(c)));
    let mut out = Vec::new();
    for c in list {
        if let Ok(s) = cri.container_status(&c.id).await {
            out.push(s);
        }
    }
    if out.is_empty() {
        return Err(error(StatusCode::BAD_REQUEST, format!("container \"{container}\" in pod \"{pod}\" is waiting to start: no container has been created yet")));
    }
    Ok(out)
}

async fn container_logs(
    State(state): State<Arc<ServerState>>,
    UrlPath((namespace, pod, container)): UrlPath<(String, String, String)>,
    RawQuery(query): RawQuery,
) -> Response {
    let q = query_pairs(query.as_deref());
    let containers = match find_containers(&state.cri, &namespace, &pod, &container).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    let previous = flag(&q, "previous");
    let target = if previous {
        match containers.get(1) {
            Some(c) => c.clone(),
            None => {
                return error(StatusCode::BAD_REQUEST, format!("previous terminated container \"{container}\" in pod \"{pod}\" not found"));
            }
        }
    } else {
        containers[0].clone()
    };
    let opts = LogOptions {
        tail_lines: value(&q, "tailLines").and_then(|v| v.parse().ok()),
        timestamps: flag(&q, "timestamps"),
        since: value(&q, "sinceSeconds")
            .and_then(|v| v.parse::<i64>().ok())
            .and_then(|s| jiff::Timestamp::now().checked_sub(jiff::SignedDuration::from_secs(s)).ok())
            .or_else(|| value(&q, "sinceTime").and_then(|t| t.parse().ok())),
        limit_bytes: value(&q, "limitBytes").and_then(|v| v.parse().ok()),
    };
    let path = PathBuf::from(&target.log_path);
    let content = std::fs::read(&path).unwrap_or_default();
    // Only whole lines now; a trailing partial line is read with the rest when following.
    let whole = content.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
    let first = render(&String::from_utf8_lossy(&content[..whole]), &opts);
    let follow = flag(&q, "follow") && !previous && is_running(&target);
    if !follow {
        return (StatusCode::OK, [("content-type", "text/plain")], first).into_response();
    }
    let cri = state.cri.clone();
    let id = target.id.clone();
    let stream_opts = LogOptions { tail_lines: None, ..opts };
    let stream = futures::stream::unfold(
        (Some(first), whole as u64, path, cri, id, stream_opts, false),
        |(first, offset, path, cri, id, opts, done)| async move {
            if let Some(first) = first {
                return Some((Ok::<_, std::io::Error>(Bytes::from(first)), (None, offset, path, cri, id, opts, done)));
            }
            if done {
                return None;
            }
            let mut offset = offset;
            loop {
                let chunk = read_from(&path, offset);
                if !chunk.is_empty() {
                    offset += chunk.len() as u64;
                    let text = render(&String::from_utf8_lossy(&chunk), &opts);
                    return Some((Ok(Bytes::from(text)), (None, offset, path, cri, id, opts, false)));
                }
                let running = cri.container_status(&id).await.map(|s| is_running(&s)).unwrap_or(false);
                if !running {
                    let rest = read_from(&path, offset);
                    let text = render(&String::from_utf8_lossy(&rest), &opts);
                    return Some((Ok(Bytes::from(text)), (None, offset, path, cri, id, opts, true)));
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        },
    );
    (StatusCode::OK, [("content-type", "text/plain")], Body::from_stream(stream)).into_response()
}

/// Whole lines of `path` from `offset`.
fn read_from(path: &Path, offset: u64) -> Vec<u8> {
    use std::io::{Read, Seek, SeekFrom};
    let Ok(mut f) = std::fs::File::open(path) else { return Vec::new() };
    if f.seek(SeekFrom::Start(offset)).is_err() {
        return Vec::new();
    }
    let mut buf = Vec::new();
    let _ = f.read_to_end(&mut buf);
    let whole = buf.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
    buf.truncate(whole);
    buf
}

/// Stream ids of the channel protocol.
mod channel {
    pub const STDIN: u8 = 0;
    pub const STDOUT: u8 = 1;
    pub const STDERR: u8 = 2;
    pub const ERROR: u8 = 3;
    pub const RESIZE: u8 = 4;
    pub const CLOSE: u8 = 255;
}

/// The `v1.Status` written on the error channel when a command ends.
pub fn exit_status(code: Option<i32>, command: &[String]) -> String {
    match code {
        Some(0) => json!({"metadata": {}, "status": "Success"}).to_string(),
        Some(c) => json!({
            "metadata": {}, "status": "Failure",
            "message": format!("command terminated with non-zero exit code: error executing command {command:?}, exit code {c}"),
            "reason": "NonZeroExitCode",
            "details": {"causes": [{"reason": "ExitCode", "message": c.to_string()}]},
        })
        .to_string(),
        None => json!({"metadata": {}, "status": "Failure", "message": "command was killed", "reason": "InternalError"}).to_string(),
    }
}

async fn exec(
    State(state): State<Arc<ServerState>>,
    UrlPath((namespace, pod, container)): UrlPath<(String, String, String)>,
    RawQuery(query): RawQuery,
    ws: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Response {
    let q = query_pairs(query.as_deref());
    let command: Vec<String> = q.iter().filter(|(k, _)| k == "command").map(|(_, v)| v.clone()).collect();
    if command.is_empty() {
        return error(StatusCode::BAD_REQUEST, "you must specify at least one command for the container".into());
    }
    let Ok(ws) = ws else {
        return error(StatusCode::BAD_REQUEST, "exec needs a WebSocket upgrade with the v5.channel.k8s.io protocol (SPDY is not supported)".into());
    };
    let containers = match find_containers(&state.cri, &namespace, &pod, &container).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    if !is_running(&containers[0]) {
        return error(StatusCode::BAD_REQUEST, format!("container {container} is not running in pod {pod}"));
    }
    let id = containers[0].id.clone();
    let stdin = flag(&q, "stdin") || flag(&q, "input");
    let stdout = !q.iter().any(|(k, _)| k == "stdout" || k == "output") || flag(&q, "stdout") || flag(&q, "output");
    let stderr = !q.iter().any(|(k, _)| k == "stderr" || k == "error") || flag(&q, "stderr") || flag(&q, "error");
    let tty = flag(&q, "tty");
    info!(%namespace, %pod, %container, ?command, stdin, tty, "exec");
    if tty {
        // A terminal: the runtime allocates it (CRI Exec), resizes follow through channel 4.
        let stdio = crate::cri::Stdio { stdin, stdout, stderr: false, tty };
        return match state.cri.exec(&id, command, stdio).await {
            Ok(url) => stream_session(ws, url).await,
            Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        };
    }
    ws.protocols(["v5.channel.k8s.io", "v4.channel.k8s.io"])
        .on_upgrade(move |socket| async move {
            if let Err(e) = run_exec(socket, &state, &id, command, stdin, stdout, stderr, tty).await {
                debug!(error = %e, "exec session ended with an error");
            }
        })
}

/// Connects to the runtime's streaming server at `url`, then upgrades the client and relays.
async fn stream_session(ws: WebSocketUpgrade, url: String) -> Response {
    let runtime = match crate::streaming::connect(&url).await {
        Ok(r) => r,
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    };
    ws.protocols(["v5.channel.k8s.io", "v4.channel.k8s.io"])
        .on_upgrade(move |socket| crate::streaming::relay(socket, runtime))
}

/// `attach`: the container's own stdio (and terminal) through CRI `Attach`.
async fn attach(
    State(state): State<Arc<ServerState>>,
    UrlPath((namespace, pod, container)): UrlPath<(String, String, String)>,
    RawQuery(query): RawQuery,
    ws: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Response {
    let q = query_pairs(query.as_deref());
    let Ok(ws) = ws else {
        return error(StatusCode::BAD_REQUEST, "attach needs a WebSocket upgrade with the v5.channel.k8s.io protocol (SPDY is not supported)".into());
    };
    let containers = match find_containers(&state.cri, &namespace, &pod, &container).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    if !is_running(&containers[0]) {
        return error(StatusCode::BAD_REQUEST, format!("container {container} is not running in pod {pod}"));
    }
    let stdio = crate::cri::Stdio {
        stdin: flag(&q, "stdin") || flag(&q, "input"),
        stdout: !q.iter().any(|(k, _)| k == "stdout" || k == "output") || flag(&q, "stdout") || flag(&q, "output"),
        stderr: !q.iter().any(|(k, _)| k == "stderr" || k == "error") || flag(&q, "stderr") || flag(&q, "error"),
        tty: flag(&q, "tty"),
    };
    info!(%namespace, %pod, %container, ?stdio, "attach");
    match state.cri.attach(&containers[0].id, stdio).await {
        Ok(url) => stream_session(ws, url).await,
        Err(e) => error(StatusCode::BAD_REQUEST, e.message()),
    }
}

#[allow(clippy::too_many_arguments)] // One call site; the flags are the query's.
async fn run_exec(
    socket: WebSocket,
    state: &ServerState,
    id: &str,
    command: Vec<String>,
    stdin: bool,
    stdout: bool,
    stderr: bool,
    tty: bool,
) -> Result<(), String> {
    let exec_id = format!("coxswain-exec-{}", jiff::Timestamp::now().as_nanosecond());
    let mut cmd = tokio::process::Command::new(&state.ctr);
    cmd.arg("--address")
        .arg(state.cri.socket())
        .args(["--namespace", "k8s.io", "task", "exec", "--exec-id", &exec_id]);
    cmd.arg(id)
        .args(&command)
        .stdin(if stdin { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let (mut sink, mut stream) = socket.split();
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            let msg = json!({"metadata": {}, "status": "Failure", "message": format!("failed to start exec: {e}"), "reason": "InternalError"}).to_string();
            let _ = sink.send(frame(channel::ERROR, msg.as_bytes())).await;
            return Err(e.to_string());
        }
    };
    let mut child_stdin = child.stdin.take();
    let mut child_out = child.stdout.take().ok_or("no stdout pipe")?;
    let mut child_err = child.stderr.take().ok_or("no stderr pipe")?;
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Message>(32);
    let out_tx = tx.clone();
    let pump_out = tokio::spawn(async move {
        let mut buf = vec![0u8; 32 * 1024];
        while let Ok(n) = child_out.read(&mut buf).await {
            if n == 0 {
                break;
            }
            if stdout && out_tx.send(frame(channel::STDOUT, &buf[..n])).await.is_err() {
                break;
            }
        }
    });
    let err_tx = tx.clone();
    let pump_err = tokio::spawn(async move {
        let mut buf = vec![0u8; 32 * 1024];
        while let Ok(n) = child_err.read(&mut buf).await {
            if n == 0 {
                break;
            }
            let ch = if tty { channel::STDOUT } else { channel::STDERR };
            if (stderr || tty) && err_tx.send(frame(ch, &buf[..n])).await.is_err() {
                break;
            }
        }
    });
    drop(tx);
    let writer = tokio::spawn(async move {
        while let Some(m) = rx.recv().await {
            if sink.send(m).await.is_err() {
                return None;
            }
        }
        Some(sink)
    });
    let reader = async {
        while let Some(Ok(msg)) = stream.next().await {
            match msg {
                Message::Binary(data) if !data.is_empty() => match data[0] {
                    channel::STDIN => {
                        if let Some(w) = child_stdin.as_mut()
                            && w.write_all(&data[1..]).await.is_err()
                        {
                            child_stdin = None;
                        }
                    }
                    channel::CLOSE if data.get(1) == Some(&channel::STDIN) => {
                        if let Some(mut w) = child_stdin.take() {
                            let _ = w.shutdown().await;
                        }
                    }
                    channel::RESIZE => {}
                    _ => {}
                },
                Message::Close(_) => return false,
                _ => {}
            }
        }
        false
    };
    let status = tokio::select! {
        status = child.wait() => status.ok(),
        _ = reader => {
            // The client went away: end the session.
            let _ = child.kill().await;
            None
        }
    };
    let _ = pump_out.await;
    let _ = pump_err.await;
    let Some(sink) = writer.await.ok().flatten() else { return Ok(()) };
    let mut sink = sink;
    if let Some(status) = status {
        let body = exit_status(status.code(), &command);
        let _ = sink.send(frame(channel::ERROR, body.as_bytes())).await;
    }
    // A normal closure (1000): clients read it as the end of every stream.
    let _ = sink
        .send(Message::Close(Some(axum::extract::ws::CloseFrame {
            code: axum::extract::ws::close_code::NORMAL,
            reason: "".into(),
        })))
        .await;
    Ok(())
}

fn frame(channel: u8, data: &[u8]) -> Message {
    let mut v = Vec::with_capacity(data.len() + 1);
    v.push(channel);
    v.extend_from_slice(data);
    Message::Binary(Bytes::from(v))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_queries_with_repeated_keys() {
        let q = query_pairs(Some("command=sh&command=-c&command=echo+%22hi%22%3B%20exit%203&stdin=true&tty"));
        let cmd: Vec<&str> = q.iter().filter(|(k, _)| k == "command").map(|(_, v)| v.as_str()).collect();
        assert_eq!(cmd, vec!["sh", "-c", "echo \"hi\"; exit 3"]);
        assert!(flag(&q, "stdin") && flag(&q, "tty") && !flag(&q, "stdout"));
        assert_eq!(query_pairs(Some("a=%")), vec![("a".to_owned(), "%".to_owned())]);
    }

    #[test]
    fn exit_status_carries_the_code() {
        let s: serde_json::Value = serde_json::from_str(&exit_status(Some(3), &["sh".into()])).unwrap();
        assert_eq!(s["status"], "Failure");
        assert_eq!(s["details"]["causes"][0]["message"], "3");
        let ok: serde_json::Value = serde_json::from_str(&exit_status(Some(0), &[])).unwrap();
        assert_eq!(ok["status"], "Success");
    }
}
