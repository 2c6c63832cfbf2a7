//! The front door: TLS serving ([`tls`]), authentication ([`authn`]), authorization
//! ([`authz`], RBAC kept current from the store) and the review APIs ([`reviews`]).
//!
//! Requests pass, outermost first: request info, authentication (a client certificate
//! verified during the TLS handshake, or a bearer token; anonymous only for health and
//! version), authorization (`system:masters`, then RBAC), then the handlers, where admission
//! (namespace lifecycle, defaulting, validation) runs before anything reaches the store.

pub(crate) mod admission;
pub(crate) mod authn;
pub(crate) mod authz;
pub(crate) mod bootstrap;
pub(crate) mod encryption;
pub(crate) mod limitranger;
pub(crate) mod noderestriction;
pub(crate) mod resourcequota;
pub(crate) mod reviews;
pub(crate) mod serviceaccount;
pub(crate) mod tls;
pub(crate) mod tokens;

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::SystemTime;

use coxswain_auth::authn::TokenFile;
use coxswain_auth::kubeconfig::{self, Credential};
use coxswain_auth::pki::{self, CertRequest, CertificateAuthority, Issued, PkiError};
use coxswain_auth::satoken::{DEFAULT_ISSUER, TokenSigner};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

/// The names the API server's serving certificate is valid for.
#[derive(Debug, Clone, Default)]
pub struct SubjectNames {
    /// DNS names.
    pub dns: Vec<String>,
    /// Addresses.
    pub ips: Vec<IpAddr>,
}

impl SubjectNames {
    /// `localhost`, `127.0.0.1`, `::1` and the in-cluster names of the `kubernetes`
    /// Service (plus its ClusterIP when given).
    pub fn loopback(service_ip: Option<IpAddr>) -> SubjectNames {
        let mut names = SubjectNames {
            dns: [
                "localhost",
                "kubernetes",
                "kubernetes.default",
                "kubernetes.default.svc",
                "kubernetes.default.svc.cluster.local",
            ]
            .map(str::to_owned)
            .to_vec(),
            ips: vec![IpAddr::from([127, 0, 0, 1]), IpAddr::from([0u16, 0, 0, 0, 0, 0, 0, 1])],
        };
        names.ips.extend(service_ip);
        names
    }

    /// Adds `--tls-san`-style values: addresses become IP names, the rest DNS names.
    pub fn extend<'a>(&mut self, extra: impl IntoIterator<Item = &'a str>) {
        for name in extra {
            match name.parse::<IpAddr>() {
                Ok(ip) if !ip.is_unspecified() => {
                    if !self.ips.contains(&ip) {
                        self.ips.push(ip);
                    }
                }
                Ok(_) => {}
                Err(_) => {
                    if !self.dns.iter().any(|d| d == name) {
                        self.dns.push(name.to_owned());
                    }
                }
            }
        }
    }
}

/// The serving certificate, replaceable while serving (renewal swaps it in; new handshakes
/// use the new one, open connections keep theirs).
#[derive(Debug)]
pub struct ServingCert {
    current: RwLock<Arc<CertifiedKey>>,
}

/// The serving chain: the server's certificate, then the CA's, so that a joining node can
/// pin the CA by its public-key hash from the handshake alone.
fn certified_key(issued: &Issued, ca: &CertificateAuthority) -> Result<Arc<CertifiedKey>, PkiError> {
    use rustls::pki_types::PrivateKeyDer;
    use rustls::pki_types::pem::PemObject;
    let mut certs = pki::certs_der(&issued.cert_pem)?;
    certs.push(ca.cert_der().clone());
    let key = PrivateKeyDer::from_pem_slice(issued.key_pem.as_bytes())
        .map_err(|e| PkiError::Parse(format!("the serving key is unreadable: {e}")))?;
    let key = rustls::crypto::ring::sign::any_supported_type(&key)
        .map_err(|e| PkiError::Parse(format!("the serving key is unusable: {e}")))?;
    Ok(Arc::new(CertifiedKey::new(certs, key)))
}

impl ServingCert {
    /// A resolver serving `issued` (signed by `ca`).
    pub fn new(issued: &Issued, ca: &CertificateAuthority) -> Result<ServingCert, PkiError> {
        Ok(ServingCert {
            current: RwLock::new(certified_key(issued, ca)?),
        })
    }

    /// Serves `issued` from the next handshake on.
    pub fn replace(&self, issued: &Issued, ca: &CertificateAuthority) -> Result<(), PkiError> {
        let key = certified_key(issued, ca)?;
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = key;
        Ok(())
    }
}

impl ResolvesServerCert for ServingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.read().unwrap_or_else(|e| e.into_inner()).clone())
    }
}

/// Everything the front door needs: the cluster CA (which client certificates must chain
/// to, and which signs the serving certificate), the serving certificate, and static tokens.
#[derive(Debug)]
pub struct Security {
    ca: Arc<CertificateAuthority>,
    dir: PathBuf,
    names: SubjectNames,
    serving: Arc<ServingCert>,
    /// Static bearer tokens (`--token-auth-file`).
    pub tokens: TokenFile,
    /// Signs and verifies ServiceAccount tokens (`DIR/sa.key`).
    pub signer: Arc<TokenSigner>,
    /// How the API server reaches kubelets (see [`KubeletClient`]).
    kubelet_client: KubeletClient,
}

/// The API server's TLS client towards kubelets (upstream's `--kubelet-client-certificate`
/// and `--kubelet-certificate-authority`): it presents a client certificate of its own
/// (`kube-apiserver-kubelet-client`, issued from the CA at start and kept in memory, renewed
/// with the serving certificate) and trusts only kubelet certificates the cluster CA signed.
#[derive(Debug)]
pub(crate) struct KubeletClient {
    current: RwLock<(Arc<rustls::ClientConfig>, SystemTime)>,
}

impl KubeletClient {
    fn issue(ca: &CertificateAuthority) -> Result<KubeletClient, PkiError> {
        Ok(KubeletClient { current: RwLock::new(Self::config(ca)?) })
    }

    fn config(ca: &CertificateAuthority) -> Result<(Arc<rustls::ClientConfig>, SystemTime), PkiError> {
        use rustls::pki_types::PrivateKeyDer;
        use rustls::pki_types::pem::PemObject;
        let issued = ca.issue(&CertRequest::client(coxswain_auth::policy::KUBELET_CLIENT_USER, &[]))?;
        let not_after = issued.info()?.not_after;
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(ca.cert_der().clone())
            .map_err(|e| PkiError::Parse(format!("the cluster CA is not a usable trust anchor: {e}")))?;
        let key = PrivateKeyDer::from_pem_slice(issued.key_pem.as_bytes())
            .map_err(|e| PkiError::Parse(format!("the kubelet client key is unreadable: {e}")))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| PkiError::Parse(format!("TLS versions: {e}")))?
            .with_root_certificates(roots)
            .with_client_auth_cert(pki::certs_der(&issued.cert_pem)?, key)
            .map_err(|e| PkiError::Parse(format!("the kubelet client certificate is unusable: {e}")))?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok((Arc::new(config), not_after))
    }

    /// The client configuration to dial a kubelet with.
    pub(crate) fn tls(&self) -> Arc<rustls::ClientConfig> {
        self.current.read().unwrap_or_else(|e| e.into_inner()).0.clone()
    }

    /// Issues a new client certificate when the current one is due (as the serving one).
    fn renew_if_due(&self, ca: &CertificateAuthority) -> Result<(), PkiError> {
        let not_after = self.current.read().unwrap_or_else(|e| e.into_inner()).1;
        let lifetime = pki::CERT_VALIDITY.as_secs_f64();
        let left = not_after.duration_since(SystemTime::now()).map(|d| d.as_secs_f64()).unwrap_or(0.0);
        if left < lifetime * pki::RENEW_REMAINING_FRACTION {
            *self.current.write().unwrap_or_else(|e| e.into_inner()) = Self::config(ca)?;
        }
        Ok(())
    }
}

/// The file name (in the PKI directory) of the API server's serving certificate.
const SERVING: &str = "apiserver";

impl Security {
    /// Loads the CA from `dir` (creating it at first start) and a serving certificate for
    /// `names` (issuing a new one when missing, for other names, or due for renewal).
    pub fn load_or_create(dir: &Path, names: SubjectNames) -> Result<Security, PkiError> {
        let ca = CertificateAuthority::load_or_create(dir)?;
        let signer = TokenSigner::load_or_create(dir, DEFAULT_ISSUER)
            .map_err(|e| PkiError::Parse(e.to_string()))?;
        let (issued, _) = pki::load_or_issue(&ca, dir, SERVING, &serving_request(&names))?;
        Ok(Security {
            serving: Arc::new(ServingCert::new(&issued, &ca)?),
            kubelet_client: KubeletClient::issue(&ca)?,
            ca: Arc::new(ca),
            dir: dir.to_owned(),
            names,
            tokens: TokenFile::default(),
            signer: Arc::new(signer),
        })
    }

    /// The cluster CA.
    pub fn ca(&self) -> &CertificateAuthority {
        &self.ca
    }

    /// Re-issues the serving certificate if it is due for renewal; returns whether it did.
    pub fn renew_if_due(&self) -> Result<bool, PkiError> {
        self.kubelet_client.renew_if_due(&self.ca)?;
        let (issued, renewed) =
            pki::load_or_issue(&self.ca, &self.dir, SERVING, &serving_request(&self.names))?;
        if renewed {
            self.serving.replace(&issued, &self.ca)?;
            tracing::info!(not_after = ?issued.info().map(|i| i.not_after).ok(), "renewed the API server's serving certificate");
        }
        Ok(renewed)
    }

    /// When the current serving certificate expires.
    pub fn serving_not_after(&self) -> Option<SystemTime> {
        Issued::read(&self.dir, SERVING)
            .ok()
            .and_then(|i| i.info().ok())
            .map(|i| i.not_after)
    }

    /// A kubeconfig for `server_url` whose user is `user` in `groups`, with a fresh client
    /// certificate (as `kubeadm kubeconfig user`).
    pub fn kubeconfig(&self, server_url: &str, user: &str, groups: &[&str]) -> Result<String, PkiError> {
        let issued = self.ca.issue(&CertRequest::client(user, groups))?;
        Ok(kubeconfig::render(
            server_url,
            self.ca.cert_pem(),
            user,
            &Credential::ClientCertificate {
                cert_pem: issued.cert_pem,
                key_pem: issued.key_pem,
            },
        ))
    }

    pub(crate) fn kubelet_client(&self) -> &KubeletClient {
        &self.kubelet_client
    }

    pub(crate) fn serving(&self) -> Arc<ServingCert> {
        self.serving.clone()
    }
}

fn serving_request(names: &SubjectNames) -> CertRequest {
    CertRequest::server("kube-apiserver", names.dns.clone(), names.ips.clone())
}
