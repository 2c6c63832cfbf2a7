//! The kubelet's serving certificate, as upstream's `serverTLSBootstrap` and
//! `RotateKubeletServerCertificate`: requested with the node's own identity through a
//! CertificateSigningRequest for signer `kubernetes.io/kubelet-serving`
//! (`CN=system:node:<name>, O=system:nodes`, the Node's `status.addresses` as subject
//! alternative names, usages digital signature, key encipherment, server auth), kept in
//! `<pki dir>/kubelet-server-current.pem` (certificate then key, mode 0600), reused across
//! restarts while it is signed by the cluster CA, names the node's current addresses and has
//! more than 30% of its lifetime left, and requested anew otherwise, also while running.

use std::{
    net::IpAddr,
    path::{Path, PathBuf},
    sync::{Arc, RwLock},
    time::{Duration, Instant, SystemTime},
};

use base64::Engine;
use coxswain_auth::pki::{self, CertInfo};
use k8s_openapi::api::{certificates::v1::CertificateSigningRequest, core::v1::Node};
use kube::api::{Api, PostParams};
use rustls::{
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
    server::{ClientHello, ResolvesServerCert},
    sign::CertifiedKey,
};
use serde_json::json;
use tracing::{info, warn};

/// The file holding the current serving certificate and its key.
pub const SERVING_FILE: &str = "kubelet-server-current.pem";
/// The signer of kubelet serving certificates.
pub const SERVING_SIGNER: &str = "kubernetes.io/kubelet-serving";
/// How long a request may wait for approval and signing before it is made again.
const SIGN_TIMEOUT: Duration = Duration::from_secs(300);
/// How often the running kubelet checks whether its certificate needs replacing.
pub const CHECK_INTERVAL: Duration = Duration::from_secs(30);

/// Errors of the serving certificate.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An API call failed.
    #[error("failed to {what}: {source}")]
    Api {
        /// What was attempted.
        what: String,
        /// The cause.
        #[source]
        source: kube::Error,
    },
    /// The control plane refused the request.
    #[error("the certificate signing request {name} was {verdict}: {message}")]
    Refused {
        /// The request.
        name: String,
        /// `denied` or `failed`.
        verdict: String,
        /// The approver's or signer's reason.
        message: String,
    },
    /// Nobody approved or signed within [`SIGN_TIMEOUT`].
    #[error("the certificate signing request {0} was not signed within {SIGN_TIMEOUT:?}: is the csr controller running?")]
    Timeout(String),
    /// A key, request or certificate could not be made, read or written.
    #[error("failed to {what}: {message}")]
    Pki {
        /// What was attempted.
        what: String,
        /// The cause.
        message: String,
    },
}

fn pki_err(what: impl Into<String>) -> impl FnOnce(pki::PkiError) -> Error {
    let what = what.into();
    move |e| Error::Pki { what, message: e.to_string() }
}

/// The names a serving certificate of this node must carry: its DNS-type and IP-type
/// `status.addresses`, sorted and without duplicates.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServingNames {
    /// Host names.
    pub dns: Vec<String>,
    /// Addresses.
    pub ips: Vec<IpAddr>,
}

impl ServingNames {
    /// The names of `node`'s status (empty until the kubelet posted them).
    pub fn of(node: &Node) -> ServingNames {
        let mut names = ServingNames::default();
        for a in node.status.as_ref().and_then(|s| s.addresses.as_ref()).into_iter().flatten() {
            match a.type_.as_str() {
                "InternalIP" | "ExternalIP" => names.ips.extend(a.address.parse::<IpAddr>().ok()),
                "Hostname" | "InternalDNS" | "ExternalDNS" if !a.address.is_empty() => names.dns.push(a.address.clone()),
                _ => {}
            }
        }
        names.normalize()
    }

    fn normalize(mut self) -> ServingNames {
        self.dns.sort();
        self.dns.dedup();
        self.ips.sort();
        self.ips.dedup();
        self
    }

    /// Whether there is nothing to certify yet.
    pub fn is_empty(&self) -> bool {
        self.dns.is_empty() && self.ips.is_empty()
    }
}

/// A serving certificate with its key, both PEM.
#[derive(Clone)]
pub struct ServingPair {
    /// The certificate.
    pub cert_pem: String,
    /// The private key.
    pub key_pem: String,
}

impl std::fmt::Debug for ServingPair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServingPair").field("cert_pem", &self.cert_pem).finish_non_exhaustive()
    }
}

impl ServingPair {
    /// Reads the pair from the one file it is kept in.
    pub fn read(path: &Path) -> Option<ServingPair> {
        let text = std::fs::read_to_string(path).ok()?;
        let key_at = text.find("-----BEGIN PRIVATE KEY-----").or_else(|| text.find("-----BEGIN EC PRIVATE KEY-----"))?;
        Some(ServingPair { cert_pem: text[..key_at].to_owned(), key_pem: text[key_at..].to_owned() })
    }

    /// Writes the pair (mode 0600, atomically).
    pub fn write(&self, path: &Path) -> Result<(), Error> {
        pki::write_private_file(path, &format!("{}{}", self.cert_pem, self.key_pem))
            .map_err(pki_err(format!("write {}", path.display())))
    }

    /// The rustls key to serve.
    pub fn certified_key(&self) -> Result<Arc<CertifiedKey>, Error> {
        let certs = pki::certs_der(&self.cert_pem).map_err(pki_err("read the serving certificate"))?;
        let key = PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes()).map_err(|e| Error::Pki {
            what: "read the serving key".into(),
            message: e.to_string(),
        })?;
        let key = rustls::crypto::ring::sign::any_supported_type(&key).map_err(|e| Error::Pki {
            what: "use the serving key".into(),
            message: e.to_string(),
        })?;
        Ok(Arc::new(CertifiedKey::new(certs, key)))
    }
}

/// Why a certificate (as `CertInfo`) cannot serve node `node` with `names` any more, or `None`
/// when it still can.
pub fn replacement_reason(info: &CertInfo, signed_by_ca: bool, node: &str, names: &ServingNames, now: SystemTime) -> Option<String> {
    if !signed_by_ca {
        return Some("it is not signed by the cluster CA".into());
    }
    if info.common_name != format!("system:node:{node}") {
        return Some(format!("it is for {:?}, not system:node:{node}", info.common_name));
    }
    let held = ServingNames { dns: info.dns_names.clone(), ips: info.ip_addresses.clone() }.normalize();
    if held != *names {
        return Some(format!("it names {held:?}, the node's addresses are {names:?}"));
    }
    if info.due_for_renewal(now) {
        return Some(format!("it expires at {:?}", jiff::Timestamp::try_from(info.not_after).ok()));
    }
    None
}

/// The certificate the TLS listener presents, replaceable while serving.
#[derive(Debug)]
pub struct ServingCert {
    current: RwLock<Arc<CertifiedKey>>,
}

impl ServingCert {
    /// Serves `pair`.
    pub fn new(pair: &ServingPair) -> Result<ServingCert, Error> {
        Ok(ServingCert { current: RwLock::new(pair.certified_key()?) })
    }

    /// Serves `pair` from the next handshake on.
    pub fn replace(&self, pair: &ServingPair) -> Result<(), Error> {
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = pair.certified_key()?;
        Ok(())
    }
}

impl ResolvesServerCert for ServingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.read().unwrap_or_else(|e| e.into_inner()).clone())
    }
}

/// Gets and keeps the serving certificate of one node.
#[derive(Clone)]
pub struct ServingCertManager {
    client: kube::Client,
    node: String,
    path: PathBuf,
    ca_der: CertificateDer<'static>,
}

impl std::fmt::Debug for ServingCertManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServingCertManager").field("node", &self.node).field("path", &self.path).finish()
    }
}

impl ServingCertManager {
    /// For node `node`, kept in `dir`, checked against the CA `ca_der`.
    pub fn new(client: kube::Client, node: &str, dir: &Path, ca_der: CertificateDer<'static>) -> ServingCertManager {
        ServingCertManager { client, node: node.to_owned(), path: dir.join(SERVING_FILE), ca_der }
    }

    /// The names the certificate must carry, from the Node as stored (waits until the
    /// kubelet posted its addresses).
    pub async fn wanted_names(&self) -> Result<ServingNames, Error> {
        let nodes: Api<Node> = Api::all(self.client.clone());
        let mut logged = false;
        loop {
            let node = nodes.get_opt(&self.node).await.map_err(|source| Error::Api {
                what: format!("read node {}", self.node),
                source,
            })?;
            let names = node.as_ref().map(ServingNames::of).unwrap_or_default();
            if !names.is_empty() {
                return Ok(names);
            }
            if !logged {
                info!(node = %self.node, "waiting for the node's addresses before asking for a serving certificate");
                logged = true;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// The certificate on disk, if it can serve `names`; otherwise why not.
    pub fn current(&self, names: &ServingNames) -> Result<ServingPair, String> {
        let pair = ServingPair::read(&self.path).ok_or_else(|| format!("{} holds no certificate", self.path.display()))?;
        let info = CertInfo::from_pem(&pair.cert_pem).map_err(|e| e.to_string())?;
        let signed = pki::verify_signed_by(&pair.cert_pem, &self.ca_der).is_ok();
        match replacement_reason(&info, signed, &self.node, names, SystemTime::now()) {
            None => Ok(pair),
            Some(reason) => Err(reason),
        }
    }

    /// The certificate to serve `names` with: the one on disk when still good, else a new
    /// one through a CertificateSigningRequest (written to disk).
    pub async fn obtain(&self, names: &ServingNames) -> Result<ServingPair, Error> {
        match self.current(names) {
            Ok(pair) => {
                info!(path = %self.path.display(), "reusing the serving certificate");
                return Ok(pair);
            }
            Err(why) => info!(path = %self.path.display(), reason = %why, "requesting a serving certificate"),
        }
        let pair = self.request(names).await?;
        pair.write(&self.path)?;
        Ok(pair)
    }

    /// One CertificateSigningRequest, waited for until signed.
    async fn request(&self, names: &ServingNames) -> Result<ServingPair, Error> {
        let user = format!("system:node:{}", self.node);
        let (csr_pem, key_pem) = pki::new_serving_csr(&user, &["system:nodes"], names.dns.clone(), names.ips.clone())
            .map_err(pki_err("generate the serving key and request"))?;
        let api: Api<CertificateSigningRequest> = Api::all(self.client.clone());
        let request: CertificateSigningRequest = serde_json::from_value(json!({
            "metadata": {"generateName": "csr-"},
            "spec": {
                "request": base64::engine::general_purpose::STANDARD.encode(csr_pem.as_bytes()),
                "signerName": SERVING_SIGNER,
                "usages": ["digital signature", "key encipherment", "server auth"],
            },
        }))
        .map_err(|e| Error::Pki { what: "build the certificate signing request".into(), message: e.to_string() })?;
        let created = api.create(&PostParams::default(), &request).await.map_err(|source| Error::Api {
            what: "create the serving certificate signing request".into(),
            source,
        })?;
        let name = created.metadata.name.clone().unwrap_or_default();
        info!(csr = %name, dns = ?names.dns, ips = ?names.ips, "serving certificate requested; waiting for approval and signing");
        let deadline = Instant::now() + SIGN_TIMEOUT;
        loop {
            let csr = api.get(&name).await.map_err(|source| Error::Api {
                what: format!("read the certificate signing request {name}"),
                source,
            })?;
            let status = csr.status.unwrap_or_default();
            if let Some(c) = status
                .conditions
                .unwrap_or_default()
                .into_iter()
                .find(|c| (c.type_ == "Denied" || c.type_ == "Failed") && c.status == "True")
            {
                return Err(Error::Refused {
                    name,
                    verdict: c.type_.to_lowercase(),
                    message: c.message.unwrap_or_default(),
                });
            }
            if let Some(cert) = status.certificate.filter(|c| !c.0.is_empty()) {
                let cert_pem = String::from_utf8(cert.0).map_err(|e| Error::Pki {
                    what: format!("read the certificate of {name}"),
                    message: e.to_string(),
                })?;
                info!(csr = %name, "serving certificate issued");
                return Ok(ServingPair { cert_pem, key_pem });
            }
            if Instant::now() > deadline {
                return Err(Error::Timeout(name));
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }

    /// Keeps `serving` current while the kubelet runs: every [`CHECK_INTERVAL`], a
    /// certificate due for renewal or naming other addresses than the Node's is replaced.
    pub async fn keep_current(self, serving: Arc<ServingCert>) {
        loop {
            tokio::time::sleep(CHECK_INTERVAL).await;
            let names = match self.wanted_names().await {
                Ok(n) => n,
                Err(e) => {
                    warn!(error = %e, "cannot read the node's addresses; keeping the serving certificate");
                    continue;
                }
            };
            if self.current(&names).is_ok() {
                continue;
            }
            match self.obtain(&names).await {
                Ok(pair) => match serving.replace(&pair) {
                    Ok(()) => info!("serving with the renewed certificate"),
                    Err(e) => warn!(error = %e, "the renewed serving certificate is unusable"),
                },
                Err(e) => warn!(error = %e, "renewing the serving certificate failed; the current one serves meanwhile"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use coxswain_auth::pki::{CertRequest, CertificateAuthority};

    fn names(dns: &[&str], ips: &[&str]) -> ServingNames {
        ServingNames {
            dns: dns.iter().map(|d| (*d).to_owned()).collect(),
            ips: ips.iter().map(|i| i.parse().unwrap()).collect(),
        }
        .normalize()
    }

    #[test]
    fn names_come_from_the_nodes_addresses() {
        let node: Node = serde_json::from_value(json!({"metadata": {"name": "n1"}, "status": {"addresses": [
            {"type": "InternalIP", "address": "10.0.0.2"},
            {"type": "Hostname", "address": "box"},
            {"type": "InternalIP", "address": "10.0.0.2"},
        ]}}))
        .unwrap();
        assert_eq!(ServingNames::of(&node), names(&["box"], &["10.0.0.2"]));
        assert!(ServingNames::of(&Node::default()).is_empty());
    }

    #[test]
    fn a_certificate_is_replaced_when_foreign_renamed_or_near_its_end() {
        let ca = CertificateAuthority::generate("ca").unwrap();
        let issue = |cn: &str, ips: &[&str], validity: Option<Duration>| {
            let mut req = CertRequest::server(cn, vec!["box".into()], ips.iter().map(|i| i.parse().unwrap()).collect());
            req.validity = validity;
            ca.issue(&req).unwrap().info().unwrap()
        };
        let want = names(&["box"], &["10.0.0.2"]);
        let now = SystemTime::now();
        let good = issue("system:node:n1", &["10.0.0.2"], None);
        assert_eq!(replacement_reason(&good, true, "n1", &want, now), None);
        assert!(replacement_reason(&good, false, "n1", &want, now).unwrap().contains("not signed"));
        assert!(replacement_reason(&good, true, "n2", &want, now).unwrap().contains("system:node:n2"));
        let moved = names(&["box"], &["10.0.0.3"]);
        assert!(replacement_reason(&good, true, "n1", &moved, now).unwrap().contains("addresses"));
        // 1000 s of life (plus the 300 s of slack before now): due once under 30% remain.
        let short = issue("system:node:n1", &["10.0.0.2"], Some(Duration::from_secs(1000)));
        assert_eq!(replacement_reason(&short, true, "n1", &want, now), None);
        assert!(replacement_reason(&short, true, "n1", &want, now + Duration::from_secs(700)).unwrap().contains("expires"));
    }

    #[test]
    fn the_pair_round_trips_through_one_private_file() {
        let dir = tempfile::tempdir().unwrap();
        let ca = CertificateAuthority::generate("ca").unwrap();
        let issued = ca.issue(&CertRequest::server("system:node:n1", vec![], vec!["10.0.0.2".parse().unwrap()])).unwrap();
        let pair = ServingPair { cert_pem: issued.cert_pem.clone(), key_pem: issued.key_pem.clone() };
        let path = dir.path().join(SERVING_FILE);
        pair.write(&path).unwrap();
        let back = ServingPair::read(&path).unwrap();
        assert_eq!(back.cert_pem, issued.cert_pem);
        assert_eq!(back.key_pem, issued.key_pem);
        back.certified_key().unwrap();
        let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&path).unwrap().permissions());
        assert_eq!(mode & 0o077, 0);
    }
}
