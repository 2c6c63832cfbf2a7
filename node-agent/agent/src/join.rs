//! `coxswain-node-agent join https://SERVER:PORT --token ID.SECRET
//! --discovery-token-ca-cert-hash sha256:HASH [agent flags]`: joins a node the way kubeadm
//! does, then runs the agent as that node.
//!
//! 1. A TLS handshake with the server, sending nothing: its chain must hold a CA whose
//!    public-key hash is the one given and that signed the server's certificate; otherwise
//!    the join stops here, before any credential leaves the machine.
//! 2. With that CA trusted and the bootstrap token as credential, a CertificateSigningRequest
//!    for `CN=system:node:<name>, O=system:nodes` (a key generated here, never sent).
//! 3. Once the control plane approves and signs it, a kubeconfig with the certificate is
//!    written (mode 0600) to `--kubeconfig` (default `/var/lib/coxswain/kubelet.kubeconfig`),
//!    and the agent starts with it. A node whose kubeconfig is still valid skips the join.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use base64::Engine;
use coxswain_auth::kubeconfig::{Credential, render};
use coxswain_auth::pki;
use k8s_openapi::api::certificates::v1::CertificateSigningRequest;
use kube::api::{Api, PostParams};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use serde_json::json;
use tracing::info;

/// Where a joined node's kubeconfig goes unless `--kubeconfig` says otherwise.
pub const DEFAULT_KUBECONFIG: &str = "/var/lib/coxswain/kubelet.kubeconfig";
/// How long the join waits for the control plane to approve and sign.
const SIGN_TIMEOUT: Duration = Duration::from_secs(120);

/// The join flags.
#[derive(Debug, clap::Parser)]
#[command(name = "coxswain-node-agent join", about = "Joins this node to a cluster, then runs the agent")]
pub struct JoinArgs {
    /// The API server, `https://HOST:PORT`.
    pub server: String,
    /// The bootstrap token (`coxctl token create`).
    #[arg(long)]
    pub token: String,
    /// The cluster CA's public-key hash, `sha256:<hex>`.
    #[arg(long = "discovery-token-ca-cert-hash")]
    pub ca_hash: String,
    /// Stop once the kubeconfig is written instead of running the agent.
    #[arg(long)]
    pub join_only: bool,
    /// The agent's own flags (`--kubelet --node-name ...`).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub agent_args: Vec<String>,
}

/// Accepts whatever the server presents and records it; the caller decides.
#[derive(Debug)]
struct RecordChain {
    chain: Mutex<Vec<CertificateDer<'static>>>,
    schemes: Vec<SignatureScheme>,
}

impl ServerCertVerifier for RecordChain {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let mut chain = vec![end_entity.clone().into_owned()];
        chain.extend(intermediates.iter().map(|c| c.clone().into_owned()));
        *self.chain.lock().unwrap_or_else(|e| e.into_inner()) = chain;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn verify_tls13_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.schemes.clone()
    }
}

/// `host:port` of an `https://` URL.
fn host_port(server: &str) -> Result<(String, u16)> {
    let rest = server
        .strip_prefix("https://")
        .with_context(|| format!("the server {server:?} must be an https:// URL"))?;
    let authority = rest.split('/').next().unwrap_or_default();
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => (h, p.parse::<u16>().with_context(|| format!("bad port in {server:?}"))?),
        _ => (authority, 443),
    };
    Ok((host.trim_start_matches('[').trim_end_matches(']').to_owned(), port))
}

/// Step 1: the server's CA, pinned by its hash, from a handshake that sends nothing.
pub async fn discover_ca(server: &str, ca_hash: &str) -> Result<CertificateDer<'static>> {
    let (host, port) = host_port(server)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let recorder = Arc::new(RecordChain {
        chain: Mutex::new(Vec::new()),
        schemes: provider.signature_verification_algorithms.supported_schemes(),
    });
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS configuration")?
        .dangerous()
        .with_custom_certificate_verifier(recorder.clone())
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::time::timeout(Duration::from_secs(10), tokio::net::TcpStream::connect((host.as_str(), port)))
        .await
        .with_context(|| format!("connecting to {server} timed out"))?
        .with_context(|| format!("cannot connect to {server}"))?;
    let name = ServerName::try_from(host.clone()).with_context(|| format!("{host:?} is not a server name"))?;
    let tls = tokio::time::timeout(Duration::from_secs(10), connector.connect(name, tcp))
        .await
        .with_context(|| format!("the TLS handshake with {server} timed out"))?
        .with_context(|| format!("the TLS handshake with {server} failed"))?;
    drop(tls);
    let chain = recorder.chain.lock().unwrap_or_else(|e| e.into_inner()).clone();
    pki::pinned_ca(&chain, ca_hash).context("refusing to join: the cluster CA is not the one pinned")
}

fn der_to_pem(der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut pem = String::from("-----BEGIN CERTIFICATE-----\n");
    for line in b64.as_bytes().chunks(64) {
        pem.push_str(&String::from_utf8_lossy(line));
        pem.push('\n');
    }
    pem.push_str("-----END CERTIFICATE-----\n");
    pem
}

/// Whether `path` holds a kubeconfig whose client certificate is for `node` and not due for
/// renewal (so a restarted agent does not join again).
fn still_valid(path: &Path, node: &str) -> bool {
    let Ok(text) = std::fs::read_to_string(path) else { return false };
    let Some(data) = text.lines().find_map(|l| l.trim().strip_prefix("client-certificate-data: ")) else {
        return false;
    };
    let Ok(pem) = base64::engine::general_purpose::STANDARD.decode(data.trim()) else { return false };
    let Ok(info) = pki::CertInfo::from_pem(&String::from_utf8_lossy(&pem)) else { return false };
    info.common_name == format!("system:node:{node}") && !info.due_for_renewal(std::time::SystemTime::now())
}

/// Steps 2 and 3: a client certificate for `node` through a CertificateSigningRequest, then
/// the kubeconfig at `out`.
pub async fn join(args: &JoinArgs, node: &str, out: &Path) -> Result<()> {
    if still_valid(out, node) {
        info!(kubeconfig = %out.display(), "already joined: the node's certificate is valid");
        return Ok(());
    }
    let ca = discover_ca(&args.server, &args.ca_hash).await?;
    info!(server = %args.server, "the cluster CA matches the pinned hash");
    let ca_pem = der_to_pem(&ca);
    let bootstrap = render(&args.server, &ca_pem, "bootstrap", &Credential::Token(args.token.clone()));
    let kubeconfig = kube::config::Kubeconfig::from_yaml(&bootstrap).context("the bootstrap kubeconfig")?;
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &kube::config::KubeConfigOptions::default())
        .await
        .context("the bootstrap client configuration")?;
    let client = kube::Client::try_from(config).context("the bootstrap client")?;
    let user = format!("system:node:{node}");
    let (csr_pem, key_pem) = pki::new_csr(&user, &["system:nodes"]).context("generate the node's key")?;
    let api: Api<CertificateSigningRequest> = Api::all(client);
    let suffix: String = uuid_like();
    let name = format!("node-csr-{node}-{suffix}");
    let request: CertificateSigningRequest = serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {
            "request": base64::engine::general_purpose::STANDARD.encode(csr_pem.as_bytes()),
            "signerName": "kubernetes.io/kube-apiserver-client-kubelet",
            "usages": ["digital signature", "client auth"],
        },
    }))?;
    api.create(&PostParams::default(), &request).await.map_err(|e| match e {
        kube::Error::Api(s) if s.code == 401 => anyhow::anyhow!("the bootstrap token was refused (401): it is wrong, expired or deleted"),
        e => anyhow::anyhow!("creating the certificate signing request failed: {e}"),
    })?;
    info!(csr = %name, "certificate signing request sent; waiting for approval");
    let deadline = Instant::now() + SIGN_TIMEOUT;
    let certificate = loop {
        let csr = api.get(&name).await.with_context(|| format!("read the certificate signing request {name}"))?;
        let status = csr.status.unwrap_or_default();
        if let Some(c) = status.conditions.unwrap_or_default().iter().find(|c| (c.type_ == "Denied" || c.type_ == "Failed") && c.status == "True") {
            bail!(
                "the certificate signing request {name} was {}: {}",
                c.type_.to_lowercase(),
                c.message.clone().unwrap_or_default()
            );
        }
        if let Some(cert) = status.certificate.filter(|c| !c.0.is_empty()) {
            break String::from_utf8(cert.0).context("the issued certificate is not PEM")?;
        }
        if Instant::now() > deadline {
            bail!("the certificate signing request {name} was not signed within {SIGN_TIMEOUT:?}: is the control plane's csr controller running?");
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    let text = render(
        &args.server,
        &ca_pem,
        &user,
        &Credential::ClientCertificate { cert_pem: certificate, key_pem },
    );
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    }
    pki::write_private_file(out, &text).with_context(|| format!("write {}", out.display()))?;
    info!(kubeconfig = %out.display(), user, "joined");
    Ok(())
}

fn uuid_like() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos() ^ (d.as_secs() as u32))
        .unwrap_or_default();
    format!("{:08x}", nanos ^ std::process::id().rotate_left(16))
}

/// The agent's arguments after a join: the given ones with `--kubeconfig` pointing at the
/// joined node's kubeconfig.
pub fn agent_argv(args: &JoinArgs) -> (Vec<String>, PathBuf) {
    let mut argv = vec!["coxswain-node-agent".to_owned()];
    let mut out = PathBuf::from(DEFAULT_KUBECONFIG);
    let mut rest = args.agent_args.iter();
    while let Some(a) = rest.next() {
        if a == "--kubeconfig" {
            if let Some(p) = rest.next() {
                out = PathBuf::from(p);
            }
        } else if let Some(p) = a.strip_prefix("--kubeconfig=") {
            out = PathBuf::from(p);
        } else {
            argv.push(a.clone());
        }
    }
    argv.push("--kubeconfig".to_owned());
    argv.push(out.display().to_string());
    (argv, out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[test]
    fn join_takes_its_flags_and_passes_the_rest_to_the_agent() {
        let args = JoinArgs::try_parse_from([
            "join", "https://10.0.0.1:6443", "--token", "abcdef.0123456789abcdef",
            "--discovery-token-ca-cert-hash", "sha256:00", "--kubelet", "--node-name", "n2",
            "--kubeconfig", "/tmp/k",
        ])
        .unwrap();
        assert_eq!(args.server, "https://10.0.0.1:6443");
        let (argv, out) = agent_argv(&args);
        assert_eq!(out, PathBuf::from("/tmp/k"));
        assert_eq!(argv, ["coxswain-node-agent", "--kubelet", "--node-name", "n2", "--kubeconfig", "/tmp/k"]);
    }

    #[test]
    fn servers_are_https_urls() {
        assert_eq!(host_port("https://10.0.0.1:6443").unwrap(), ("10.0.0.1".to_owned(), 6443));
        assert_eq!(host_port("https://api.example").unwrap(), ("api.example".to_owned(), 443));
        assert!(host_port("http://10.0.0.1:6443").is_err());
    }
}
