//! HTTPS serving: a rustls acceptor that asks for (but does not require) a client
//! certificate chaining to the cluster CA, then HTTP/1.1 (with upgrades, for exec and
//! attach) over each connection. The verified certificate's user rides on every request of
//! the connection as a [`ClientCertUser`] extension, for the authentication layer.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use coxswain_auth::UserInfo;
use coxswain_auth::pki::CertInfo;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use rustls::RootCertStore;
use rustls::server::WebPkiClientVerifier;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;
use tracing::{debug, info};

use super::Security;
use prometheus_client::metrics::counter::Counter;

/// How long a client may take to finish the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a client may take to send a request's headers.
const HEADER_TIMEOUT: Duration = Duration::from_secs(30);

/// The user of the client certificate the connection was opened with (verified against the
/// cluster CA during the handshake), if any.
#[derive(Debug, Clone)]
pub(crate) struct ClientCertUser(pub Option<UserInfo>);

/// The rustls configuration: the serving certificate from `security` (swappable), client
/// certificates optional but, when sent, verified against the cluster CA.
pub(crate) fn server_config(security: &Security) -> Result<Arc<rustls::ServerConfig>, String> {
    let mut roots = RootCertStore::empty();
    roots
        .add(security.ca().cert_der().clone())
        .map_err(|e| format!("the cluster CA is not a usable trust anchor: {e}"))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .allow_unauthenticated()
        .build()
        .map_err(|e| format!("client certificate verifier: {e}"))?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS versions: {e}"))?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(security.serving());
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

fn cert_user(conn: &rustls::ServerConnection) -> Option<UserInfo> {
    let der = conn.peer_certificates()?.first()?;
    UserInfo::from_certificate(&CertInfo::from_der(der).ok()?)
}

/// Serves `router` over TLS on `listener` until `shutdown` completes, then lets in-flight
/// requests finish (open watches are ended by the caller's shutdown signal).
pub(crate) async fn serve(
    listener: TcpListener,
    config: Arc<rustls::ServerConfig>,
    router: Router,
    handshake_failures: Counter,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let acceptor = TlsAcceptor::from(config);
    let (stop, stopped) = watch::channel(false);
    let mut connections = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    debug!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        // Reap finished connection tasks so the set does not grow without bound.
        while connections.try_join_next().is_some() {}
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let router = router.clone();
        let handshake_failures = handshake_failures.clone();
        let mut stopped = stopped.clone();
        connections.spawn(async move {
            let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => {
                    debug!(%peer, error = %e, "TLS handshake failed");
                    handshake_failures.inc();
                    return;
                }
                Err(_) => {
                    debug!(%peer, "TLS handshake timed out");
                    handshake_failures.inc();
                    return;
                }
            };
            let user = ClientCertUser(cert_user(tls.get_ref().1));
            let service = hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
                request.extensions_mut().insert(user.clone());
                router.clone().oneshot(request.map(Body::new))
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(tls), service)
                .with_upgrades();
            tokio::pin!(conn);
            let stopping = async move {
                let _ = stopped.wait_for(|s| *s).await;
            };
            let finished = tokio::select! {
                result = conn.as_mut() => Some(result),
                () = stopping => None,
            };
            let result = match finished {
                Some(result) => result,
                None => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            if let Err(e) = result {
                debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
    info!("API server stopped accepting connections; finishing in-flight requests");
    let _ = stop.send(true);
    while connections.join_next().await.is_some() {}
    Ok(())
}
