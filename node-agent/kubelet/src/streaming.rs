//! Streaming sessions the runtime serves: CRI `Exec` (with a terminal) and `Attach` answer
//! with a one-time URL of containerd's streaming server (on loopback of the node). The
//! kubelet connects to it over WebSocket with `v4.channel.k8s.io`, the newest channel
//! protocol containerd 1.6 speaks, and relays frames between it and the client's connection
//! (`v5.channel.k8s.io` or `v4`), as upstream's kubelet proxies the runtime's streams.
//!
//! Both protocols frame every message as one channel byte then data: 0 stdin, 1 stdout,
//! 2 stderr, 3 the error channel (a `v1.Status` when the process ends), 4 terminal resize
//! (`{"Width":W,"Height":H}`). v5's close signal (255) has no v4 form; with a terminal,
//! end of input is the terminal's own (^D), so nothing is lost.

use axum::extract::ws::{CloseFrame, Message, WebSocket, close_code};
use futures::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::{self, client::IntoClientRequest, http::HeaderValue};
use tracing::debug;

/// The channel protocol asked of the runtime's streaming server.
const RUNTIME_PROTOCOL: &str = "v4.channel.k8s.io";
/// v5's close signal (no v4 form).
const CLOSE_CHANNEL: u8 = 255;

/// Errors of a relayed session.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The runtime's URL is not one we can dial.
    #[error("failed to use the runtime's streaming URL {url}: {message}")]
    Url {
        /// The URL.
        url: String,
        /// Why not.
        message: String,
    },
    /// Connecting to the runtime's streaming server failed.
    #[error("failed to connect to the runtime's streaming server at {url}: {source}")]
    Connect {
        /// The URL.
        url: String,
        /// The cause.
        #[source]
        source: Box<tungstenite::Error>,
    },
}

/// The WebSocket URL of a CRI streaming URL (`http://127.0.0.1:PORT/exec/TOKEN`).
pub fn websocket_url(url: &str) -> Result<String, Error> {
    let bad = |message: &str| Error::Url { url: url.to_owned(), message: message.to_owned() };
    if let Some(rest) = url.strip_prefix("http://") {
        Ok(format!("ws://{rest}"))
    } else if url.starts_with("ws://") {
        Ok(url.to_owned())
    } else if url.starts_with("https://") {
        Err(bad("TLS streaming is not supported: containerd must serve its streams on loopback without TLS"))
    } else {
        Err(bad("not an http:// URL"))
    }
}

/// Connects to the runtime's streaming server at `url` (from `Exec` or `Attach`).
pub async fn connect(url: &str) -> Result<tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>, Error> {
    let ws_url = websocket_url(url)?;
    let mut request = ws_url.as_str().into_client_request().map_err(|e| Error::Url { url: url.to_owned(), message: e.to_string() })?;
    request.headers_mut().insert("Sec-WebSocket-Protocol", HeaderValue::from_static(RUNTIME_PROTOCOL));
    let uri = request.uri().clone();
    let host = uri.host().unwrap_or("127.0.0.1").trim_start_matches('[').trim_end_matches(']').to_owned();
    let port = uri.port_u16().unwrap_or(80);
    let tcp = tokio::net::TcpStream::connect((host.as_str(), port))
        .await
        .map_err(|e| Error::Connect { url: url.to_owned(), source: Box::new(tungstenite::Error::Io(e)) })?;
    let _ = tcp.set_nodelay(true);
    let (stream, _response) = tokio_tungstenite::client_async(request, tcp)
        .await
        .map_err(|e| Error::Connect { url: url.to_owned(), source: Box::new(e) })?;
    Ok(stream)
}

/// Relays the client's session and the runtime's until either ends; the client's
/// connection is closed normally once the runtime's stream ended (after its last frame).
pub async fn relay(client: WebSocket, runtime: tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>) {
    let (mut client_tx, mut client_rx) = client.split();
    let (mut runtime_tx, mut runtime_rx) = runtime.split();
    let upstream = async {
        while let Some(Ok(msg)) = client_rx.next().await {
            let forward = match msg {
                Message::Binary(data) if data.first() == Some(&CLOSE_CHANNEL) => continue,
                Message::Binary(data) => tungstenite::Message::Binary(data),
                Message::Text(text) => tungstenite::Message::Text(text.as_str().into()),
                Message::Close(_) => break,
                Message::Ping(_) | Message::Pong(_) => continue,
            };
            if runtime_tx.send(forward).await.is_err() {
                break;
            }
        }
        let _ = runtime_tx.send(tungstenite::Message::Close(None)).await;
    };
    let downstream = async {
        while let Some(next) = runtime_rx.next().await {
            let msg = match next {
                Ok(m) => m,
                Err(e) => {
                    debug!(error = %e, "the runtime's stream ended with an error");
                    break;
                }
            };
            let forward = match msg {
                // containerd announces each channel with an empty frame; clients ignore them.
                tungstenite::Message::Binary(data) => Message::Binary(data),
                tungstenite::Message::Text(text) => Message::Text(text.as_str().into()),
                tungstenite::Message::Close(_) => break,
                _ => continue,
            };
            if client_tx.send(forward).await.is_err() {
                return;
            }
        }
        let _ = client_tx
            .send(Message::Close(Some(CloseFrame { code: close_code::NORMAL, reason: "".into() })))
            .await;
    };
    tokio::select! {
        () = downstream => {}
        () = upstream => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streaming_urls_become_websocket_urls() {
        assert_eq!(websocket_url("http://127.0.0.1:41000/exec/AbC").unwrap(), "ws://127.0.0.1:41000/exec/AbC");
        assert!(websocket_url("https://127.0.0.1:1/attach/x").unwrap_err().to_string().contains("TLS streaming"));
        assert!(websocket_url("unix:///x").is_err());
    }
}
