//! The test harness: an API server in-process on 127.0.0.1:0 over a temporary embedded store
//! or a throwaway etcd, the real kubectl through a kubeconfig written for it, and a small
//! HTTP client for raw requests and watch streams.

#![allow(
    dead_code,
    reason = "each test binary uses a different part of the harness"
)]

use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use coxswain_apiserver::{ApiServer, Security, ServerConfig, SubjectNames};
use coxswain_store::{EmbeddedConfig, EmbeddedStore, EtcdConfig, EtcdStore, Store};
use coxswain_testkit::EtcdCluster;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;
use tempfile::TempDir;
use tokio::sync::oneshot;

/// How long any single step of a test may wait for the server or a client.
pub const STEP: Duration = Duration::from_secs(20);

/// Which store a test server runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Embedded,
    Etcd,
}

/// Where the store lives, kept alive as long as the servers using it.
pub struct StoreHandle {
    pub store: Arc<dyn Store>,
    _dir: TempDir,
    _etcd: Option<EtcdCluster>,
}

impl StoreHandle {
    pub async fn open(backend: Backend) -> Result<StoreHandle> {
        let dir = tempfile::tempdir()?;
        match backend {
            Backend::Embedded => {
                let store = EmbeddedStore::open(
                    EmbeddedConfig::new(dir.path().join("store.redb"))
                        .progress_interval(Duration::from_millis(200)),
                )
                .await?;
                Ok(StoreHandle {
                    store: Arc::new(store),
                    _dir: dir,
                    _etcd: None,
                })
            }
            Backend::Etcd => {
                let etcd = EtcdCluster::start(1).await?;
                let store = Self::connect_etcd(&etcd).await?;
                Ok(StoreHandle {
                    store,
                    _dir: dir,
                    _etcd: Some(etcd),
                })
            }
        }
    }

    async fn connect_etcd(etcd: &EtcdCluster) -> Result<Arc<dyn Store>> {
        let store = EtcdStore::connect(EtcdConfig::new(etcd.client_urls()).prefix("/")).await?;
        Ok(Arc::new(store))
    }

    /// Another client of the same etcd (what a second API server process would have).
    pub async fn second_etcd_client(&self) -> Result<Arc<dyn Store>> {
        let etcd = self._etcd.as_ref().context("not an etcd store")?;
        Self::connect_etcd(etcd).await
    }
}

/// One API server serving on loopback.
pub struct TestServer {
    pub addr: std::net::SocketAddr,
    pub kubeconfig: PathBuf,
    pub security: Arc<Security>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
    _dir: TempDir,
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// The configuration tests use: bookmarks every 200 ms; the `kubernetes` Service's
/// reconciler writes its first round at start, then not again within a test (tests that check
/// that a request wrote nothing compare store revisions).
pub fn test_config() -> ServerConfig {
    ServerConfig {
        bookmark_interval: Duration::from_millis(200),
        endpoint_reconcile_interval: Duration::from_secs(600),
        endpoint_lease_ttl: Duration::from_secs(900),
        ..ServerConfig::default()
    }
}

impl TestServer {
    pub async fn start(store: Arc<dyn Store>) -> Result<TestServer> {
        Self::start_with(store, test_config()).await
    }

    pub async fn start_with(store: Arc<dyn Store>, config: ServerConfig) -> Result<TestServer> {
        Self::start_with_tokens(store, config, "").await
    }

    /// A server that also accepts the static tokens of `token_file` (CSV lines
    /// `token,user,uid[,"groups"]`).
    pub async fn start_with_tokens(
        store: Arc<dyn Store>,
        config: ServerConfig,
        token_file: &str,
    ) -> Result<TestServer> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        Self::start_on(store, config, token_file, listener).await
    }

    /// A server on `listener` (a loopback address; its certificate names it).
    pub async fn start_on(
        store: Arc<dyn Store>,
        config: ServerConfig,
        token_file: &str,
        listener: tokio::net::TcpListener,
    ) -> Result<TestServer> {
        let addr = listener.local_addr()?;
        let dir = tempfile::tempdir()?;
        let mut names = SubjectNames::loopback(None);
        let ip = addr.ip().to_string();
        names.extend([ip.as_str()]);
        let mut security = Security::load_or_create(&dir.path().join("pki"), names)?;
        security.tokens =
            coxswain_auth::authn::TokenFile::parse(token_file).map_err(anyhow::Error::msg)?;
        let server = ApiServer::new(store, config, security).await?;
        let kubeconfig = dir.path().join("admin.kubeconfig");
        std::fs::write(
            &kubeconfig,
            server.admin_kubeconfig(&format!("https://{addr}"))?,
        )?;
        let security = server.security_handle();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let _ = server
                .serve(listener, async {
                    let _ = stopped.await;
                })
                .await;
        });
        let server = TestServer {
            addr,
            kubeconfig,
            security,
            stop: Some(stop),
            task: Some(task),
            _dir: dir,
        };
        server.wait_for_kubernetes_service().await?;
        server.create_default_service_account("default").await?;
        Ok(server)
    }

    /// Waits until the first round of the `kubernetes` Service's reconciler is written (its
    /// EndpointSlice is its last write), so that a test starts on a quiet store.
    pub async fn wait_for_kubernetes_service(&self) -> Result<()> {
        let http = Http::new(self);
        let deadline = tokio::time::Instant::now() + STEP;
        loop {
            let reply = http.get("/apis/discovery.k8s.io/v1/namespaces/default/endpointslices/kubernetes").await?;
            if reply.status == 200 {
                return Ok(());
            }
            if tokio::time::Instant::now() > deadline {
                bail!("the kubernetes Service's EndpointSlice never appeared: {}", reply.json());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Creates the `default` ServiceAccount of `namespace` (what the controller-manager's
    /// serviceaccount controller does in a cluster; these tests run no controllers), so that
    /// pods are admitted. One that exists already is fine.
    pub async fn create_default_service_account(&self, namespace: &str) -> Result<()> {
        let sa = serde_json::json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "default"}});
        let reply = Http::new(self)
            .post_json(&format!("/api/v1/namespaces/{namespace}/serviceaccounts"), &sa)
            .await?;
        if reply.status != 201 && reply.status != 409 {
            bail!("creating the default ServiceAccount of {namespace}: {} {}", reply.status, reply.json());
        }
        Ok(())
    }

    /// Stops the server gracefully (it removes itself from the `kubernetes` Service's
    /// endpoints) and waits until it has.
    pub async fn stop(mut self) -> Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            tokio::time::timeout(STEP, task).await.context("the server did not stop")??;
        }
        Ok(())
    }

    pub fn url(&self, path: &str) -> String {
        format!("https://{}{}", self.addr, path)
    }

    /// A kubeconfig file for `user` in `groups` (a fresh client certificate).
    pub fn kubeconfig_for(&self, user: &str, groups: &[&str]) -> Result<PathBuf> {
        let text = self.security.kubeconfig(&self.url(""), user, groups)?;
        let safe: String = user
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
            .collect();
        let path = self._dir.path().join(format!("{safe}.kubeconfig"));
        std::fs::write(&path, text)?;
        Ok(path)
    }

    /// Runs kubectl with this server's kubeconfig; `stdin` is piped in if given.
    pub async fn kubectl_with_input(&self, args: &[&str], stdin: Option<&str>) -> Result<Output> {
        self.kubectl_with_env(args, stdin, &[]).await
    }

    /// [`TestServer::kubectl_with_input`] with extra environment variables.
    pub async fn kubectl_with_env(
        &self,
        args: &[&str],
        stdin: Option<&str>,
        env: &[(&str, &std::ffi::OsStr)],
    ) -> Result<Output> {
        let mut cmd = tokio::process::Command::new(kubectl_path());
        cmd.envs(env.iter().copied());
        cmd.arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args(args)
            .env("HOME", self._dir.path())
            .env("KUBECACHEDIR", self._dir.path().join("cache"))
            .stdin(if stdin.is_some() {
                std::process::Stdio::piped()
            } else {
                std::process::Stdio::null()
            })
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd
            .spawn()
            .with_context(|| format!("run kubectl {args:?}"))?;
        if let Some(input) = stdin {
            use tokio::io::AsyncWriteExt;
            let mut pipe = child.stdin.take().context("stdin")?;
            pipe.write_all(input.as_bytes()).await?;
            drop(pipe);
        }
        tokio::time::timeout(STEP, child.wait_with_output())
            .await
            .with_context(|| format!("kubectl {args:?} timed out"))?
            .context("wait for kubectl")
    }

    /// Runs kubectl and returns its stdout, failing with its stderr if it failed.
    pub async fn kubectl(&self, args: &[&str]) -> Result<String> {
        let out = self.kubectl_with_input(args, None).await?;
        if !out.status.success() {
            bail!(
                "kubectl {args:?} failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// `kubectl apply -f -` with `manifest`.
    pub async fn apply(&self, manifest: &str, extra: &[&str]) -> Result<String> {
        let mut args = vec!["apply", "-f", "-"];
        args.extend_from_slice(extra);
        let out = self.kubectl_with_input(&args, Some(manifest)).await?;
        if !out.status.success() {
            bail!(
                "kubectl apply failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Runs kubectl expecting failure; returns stderr.
    pub async fn kubectl_fails(&self, args: &[&str]) -> Result<String> {
        let out = self.kubectl_with_input(args, None).await?;
        if out.status.success() {
            bail!(
                "kubectl {args:?} unexpectedly succeeded: {}",
                String::from_utf8_lossy(&out.stdout)
            );
        }
        Ok(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// The real kubectl: `$COXSWAIN_VENV/bin/kubectl` (default /opt/coxswain/venv).
pub fn kubectl_path() -> PathBuf {
    let venv = std::env::var("COXSWAIN_VENV").unwrap_or_else(|_| "/opt/coxswain/venv".into());
    let path = Path::new(&venv).join("bin/kubectl");
    assert!(
        path.exists(),
        "kubectl not found at {}: run `cargo xtask setup` to install the test clients (or set COXSWAIN_VENV)",
        path.display()
    );
    path
}

/// The Python interpreter of the same virtual environment.
pub fn python_path() -> PathBuf {
    let venv = std::env::var("COXSWAIN_VENV").unwrap_or_else(|_| "/opt/coxswain/venv".into());
    let path = Path::new(&venv).join("bin/python");
    assert!(
        path.exists(),
        "python not found at {}: run `cargo xtask setup` to install the test clients (or set COXSWAIN_VENV)",
        path.display()
    );
    path
}

/// A raw HTTP response.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: hyper::HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }
}

/// Who a raw [`Http`] client is.
pub enum Identity<'a> {
    /// A client certificate for a user in groups.
    Cert(&'a str, &'a [&'a str]),
    /// A bearer token.
    Token(&'a str),
    /// No credentials.
    Anonymous,
}

/// A minimal HTTPS/1.1 client that trusts the server's CA.
#[derive(Clone)]
pub struct Http {
    client: Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>,
    base: String,
    authorization: Option<String>,
}

fn tls_config(server: &TestServer, identity: &Identity<'_>) -> Result<rustls::ClientConfig> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots.add(server.security.ca().cert_der().clone())?;
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots);
    Ok(match identity {
        Identity::Cert(user, groups) => {
            let issued = server
                .security
                .ca()
                .issue(&coxswain_auth::pki::CertRequest::client(*user, groups))?;
            let certs = CertificateDer::pem_slice_iter(issued.cert_pem.as_bytes())
                .collect::<Result<Vec<_>, _>>()?;
            let key = PrivateKeyDer::from_pem_slice(issued.key_pem.as_bytes())?;
            builder.with_client_auth_cert(certs, key)?
        }
        Identity::Token(_) | Identity::Anonymous => builder.with_no_client_auth(),
    })
}

impl Http {
    /// The cluster admin (`system:masters`).
    pub fn new(server: &TestServer) -> Http {
        Http::as_identity(
            server,
            Identity::Cert("kubernetes-admin", &["system:masters"]),
        )
        .expect("an admin client")
    }

    /// Someone else.
    pub fn as_identity(server: &TestServer, identity: Identity<'_>) -> Result<Http> {
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls_config(server, &identity)?)
            .https_only()
            .enable_http1()
            .build();
        Ok(Http {
            client: Client::builder(TokioExecutor::new()).build(connector),
            base: format!("https://{}", server.addr),
            authorization: match identity {
                Identity::Token(t) => Some(format!("Bearer {t}")),
                _ => None,
            },
        })
    }

    async fn send(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: impl Into<Bytes>,
    ) -> Result<hyper::Response<Incoming>> {
        let mut req = hyper::Request::builder()
            .method(method)
            .uri(format!("{}{}", self.base, path));
        if let Some(auth) = &self.authorization
            && !headers
                .iter()
                .any(|(k, _)| k.eq_ignore_ascii_case("authorization"))
        {
            req = req.header("authorization", auth.as_str());
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req.body(Full::new(body.into()))?;
        tokio::time::timeout(STEP, self.client.request(req))
            .await
            .context("request timed out")?
            .context("send request")
    }

    pub async fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: impl Into<Bytes>,
    ) -> Result<Reply> {
        let resp = self.send(method, path, headers, body).await?;
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let body = tokio::time::timeout(STEP, resp.into_body().collect())
            .await
            .context("body timed out")??
            .to_bytes();
        Ok(Reply {
            status,
            headers,
            body,
        })
    }

    pub async fn get(&self, path: &str) -> Result<Reply> {
        self.request("GET", path, &[], Bytes::new()).await
    }

    pub async fn post_json(&self, path: &str, body: &Value) -> Result<Reply> {
        self.request(
            "POST",
            path,
            &[("content-type", "application/json")],
            body.to_string(),
        )
        .await
    }

    pub async fn put_json(&self, path: &str, body: &Value) -> Result<Reply> {
        self.request(
            "PUT",
            path,
            &[("content-type", "application/json")],
            body.to_string(),
        )
        .await
    }

    /// Opens a watch; read its events with [`WatchReader::next`].
    pub async fn watch(&self, path: &str) -> Result<WatchReader> {
        let resp = self.send("GET", path, &[], Bytes::new()).await?;
        Ok(WatchReader {
            status: resp.status().as_u16(),
            body: resp.into_body(),
            buf: Vec::new(),
        })
    }
}

/// The events of a watch response, one JSON object per line.
pub struct WatchReader {
    pub status: u16,
    body: Incoming,
    buf: Vec<u8>,
}

impl WatchReader {
    /// The next event, or `None` when the stream ended; fails after [`STEP`].
    pub async fn next(&mut self) -> Result<Option<Value>> {
        loop {
            if let Some(pos) = self.buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=pos).collect();
                return Ok(Some(serde_json::from_slice(&line)?));
            }
            let frame = tokio::time::timeout(STEP, self.body.frame())
                .await
                .context("no watch event in time")?;
            match frame {
                None => return Ok(None),
                Some(frame) => {
                    if let Ok(data) = frame?.into_data() {
                        self.buf.extend_from_slice(&data);
                    }
                }
            }
        }
    }

    /// The next event that is not a BOOKMARK.
    pub async fn next_change(&mut self) -> Result<Option<Value>> {
        loop {
            match self.next().await? {
                Some(ev) if ev["type"] == "BOOKMARK" => continue,
                other => return Ok(other),
            }
        }
    }
}
