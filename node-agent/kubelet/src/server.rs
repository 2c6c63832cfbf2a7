//! The kubelet's HTTP endpoint, which the API server proxies `pods/log` and
//! `pods/exec` to: `GET /containerLogs/{namespace}/{pod}/{container}` (with
//! `follow`, `previous`, `tailLines`, `timestamps`, `sinceSeconds`,
//! `limitBytes`) and `GET /exec/{namespace}/{pod}/{container}?command=...`
//! over WebSocket with the `v5.channel.k8s.io` protocol (v4 accepted).
//!
//! Plain HTTP for now; the router is independent of the listener, so TLS
//! with client certificates wraps it without changes here.

use std::{
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
        ws::{Message, WebSocket, WebSocketUpgrade},
    },
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::get,
};
use futures::{SinkExt, StreamExt};
use k8s_cri::v1::ContainerStatus;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tracing::{debug, info};

use crate::{
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

/// The kubelet API routes.
pub fn router(state: Arc<ServerState>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/containerLogs/{namespace}/{pod}/{container}", get(container_logs))
        .route("/exec/{namespace}/{pod}/{container}", get(exec).post(exec))
        .with_state(state)
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
    ws.protocols(["v5.channel.k8s.io", "v4.channel.k8s.io"])
        .on_upgrade(move |socket| async move {
            if let Err(e) = run_exec(socket, &state, &id, command, stdin, stdout, stderr, tty).await {
                debug!(error = %e, "exec session ended with an error");
            }
        })
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
    if tty {
        // ctr needs a terminal for --tty; without one, run with plain pipes.
        debug!("tty requested: running with pipes (no terminal is allocated)");
    }
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
