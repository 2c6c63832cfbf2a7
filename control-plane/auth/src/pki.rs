//! The cluster's PKI: a CA created at first start, certificates it issues (the API server's
//! serving certificate, client certificates for users and components, signed CSRs), what a
//! certificate says (subject, groups, validity) and when it is due for renewal.
//!
//! Keys are ECDSA P-256 (fast to generate, understood by Go, Python and rustls clients) and
//! written in PKCS#8 PEM with mode 0600.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use rustls_pki_types::CertificateDer;
use time::OffsetDateTime;

/// How long the CA is valid (kubeadm: 10 years).
pub const CA_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// How long issued certificates are valid (kubeadm: 1 year).
pub const CERT_VALIDITY: Duration = Duration::from_secs(365 * 24 * 3600);
/// A certificate with less than this fraction of its lifetime left is renewed.
pub const RENEW_REMAINING_FRACTION: f64 = 0.3;

/// Errors of the PKI.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// Reading or writing a key or certificate file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Generating, signing or parsing with rcgen failed.
    #[error("{what}: {source}")]
    Rcgen {
        /// What was being done.
        what: String,
        /// The cause.
        #[source]
        source: rcgen::Error,
    },
    /// A certificate or request could not be parsed.
    #[error("{0}")]
    Parse(String),
}

type Result<T, E = PkiError> = std::result::Result<T, E>;

fn rc(what: impl Into<String>) -> impl FnOnce(rcgen::Error) -> PkiError {
    let what = what.into();
    move |source| PkiError::Rcgen { what, source }
}

fn read(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|source| PkiError::Io {
        path: path.to_owned(),
        source,
    })
}

/// Writes `contents` to `path` (mode 0600 for keys), through a temporary file and a rename so
/// that a crash never leaves half a key.
fn write(path: &Path, contents: &str, private: bool) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let io = |source| PkiError::Io {
        path: path.to_owned(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    let tmp = path.with_extension("tmp");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(if private { 0o600 } else { 0o644 })
        .open(&tmp)
        .map_err(io)?;
    file.write_all(contents.as_bytes()).map_err(io)?;
    file.sync_all().map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

/// Writes a secret file (mode 0600) atomically.
pub fn write_private_file(path: &Path, contents: &str) -> Result<()> {
    write(path, contents, true)
}

fn offset(t: SystemTime) -> OffsetDateTime {
    OffsetDateTime::from(t)
}

/// Who a certificate is issued to and what for.
#[derive(Debug, Clone, Default)]
pub struct CertRequest {
    /// Subject common name: the user name of a client certificate.
    pub common_name: String,
    /// Subject organizations: the groups of a client certificate.
    pub organizations: Vec<String>,
    /// DNS subject alternative names (serving certificates).
    pub dns_names: Vec<String>,
    /// IP subject alternative names (serving certificates).
    pub ip_addresses: Vec<IpAddr>,
    /// Usable as a TLS client certificate.
    pub client: bool,
    /// Usable as a TLS server certificate.
    pub server: bool,
    /// Validity from now; [`CERT_VALIDITY`] when `None`.
    pub validity: Option<Duration>,
}

impl CertRequest {
    /// A client certificate for `user` in `groups`.
    pub fn client(user: impl Into<String>, groups: &[&str]) -> CertRequest {
        CertRequest {
            common_name: user.into(),
            organizations: groups.iter().map(|g| (*g).to_owned()).collect(),
            client: true,
            ..CertRequest::default()
        }
    }

    /// A serving certificate for `name` valid for these DNS names and addresses.
    pub fn server(name: impl Into<String>, dns_names: Vec<String>, ips: Vec<IpAddr>) -> CertRequest {
        CertRequest {
            common_name: name.into(),
            dns_names,
            ip_addresses: ips,
            server: true,
            ..CertRequest::default()
        }
    }

    fn params(&self) -> Result<CertificateParams> {
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        // rcgen keeps one value per attribute type, so a second group is written under the
        // same OID (2.5.4.10) spelled as a custom type; a third cannot be expressed.
        match self.organizations.as_slice() {
            [] => {}
            [one] => dn.push(DnType::OrganizationName, one.as_str()),
            [one, two] => {
                dn.push(DnType::OrganizationName, one.as_str());
                dn.push(DnType::CustomDnType(vec![2, 5, 4, 10]), two.as_str());
            }
            more => {
                return Err(PkiError::Parse(format!(
                    "a certificate can name at most 2 groups (organizations), {} were asked for",
                    more.len()
                )));
            }
        }
        dn.push(DnType::CommonName, self.common_name.as_str());
        params.distinguished_name = dn;
        for dns in &self.dns_names {
            let name = dns
                .clone()
                .try_into()
                .map_err(rc(format!("the DNS name {dns:?}")))?;
            params.subject_alt_names.push(SanType::DnsName(name));
        }
        for ip in &self.ip_addresses {
            params.subject_alt_names.push(SanType::IpAddress(*ip));
        }
        let now = SystemTime::now();
        // A little slack for clocks that are slightly behind.
        params.not_before = offset(now - Duration::from_secs(300));
        params.not_after = offset(now + self.validity.unwrap_or(CERT_VALIDITY));
        params.serial_number = Some(random_serial());
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        if self.client {
            params
                .extended_key_usages
                .push(ExtendedKeyUsagePurpose::ClientAuth);
        }
        if self.server {
            params
                .extended_key_usages
                .push(ExtendedKeyUsagePurpose::ServerAuth);
        }
        params.use_authority_key_identifier_extension = true;
        Ok(params)
    }
}

fn random_serial() -> rcgen::SerialNumber {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; 16];
    // SystemRandom only fails when the OS has no randomness at all.
    let _ = ring::rand::SystemRandom::new().fill(&mut bytes);
    bytes[0] &= 0x7f; // positive
    rcgen::SerialNumber::from_slice(&bytes)
}

/// A certificate with its private key, both PEM.
#[derive(Clone)]
pub struct Issued {
    /// The certificate.
    pub cert_pem: String,
    /// The PKCS#8 private key.
    pub key_pem: String,
}

impl std::fmt::Debug for Issued {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Issued")
            .field("cert_pem", &self.cert_pem)
            .field("key_pem", &"<redacted>")
            .finish()
    }
}

impl Issued {
    /// Writes the pair as `<base>.crt` and `<base>.key` in `dir`.
    pub fn write(&self, dir: &Path, base: &str) -> Result<()> {
        write(&dir.join(format!("{base}.crt")), &self.cert_pem, false)?;
        write(&dir.join(format!("{base}.key")), &self.key_pem, true)
    }

    /// Reads `<base>.crt` and `<base>.key` from `dir`.
    pub fn read(dir: &Path, base: &str) -> Result<Issued> {
        Ok(Issued {
            cert_pem: read(&dir.join(format!("{base}.crt")))?,
            key_pem: read(&dir.join(format!("{base}.key")))?,
        })
    }

    /// What the certificate says.
    pub fn info(&self) -> Result<CertInfo> {
        CertInfo::from_pem(&self.cert_pem)
    }
}

/// The cluster certificate authority.
pub struct CertificateAuthority {
    cert_pem: String,
    cert_der: CertificateDer<'static>,
    key: KeyPair,
}

impl std::fmt::Debug for CertificateAuthority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertificateAuthority")
            .field("hash", &self.public_key_hash())
            .finish_non_exhaustive()
    }
}

impl CertificateAuthority {
    /// A new self-signed CA named `common_name`.
    pub fn generate(common_name: &str) -> Result<CertificateAuthority> {
        let key = KeyPair::generate().map_err(rc("generate the CA key"))?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, common_name);
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let now = SystemTime::now();
        params.not_before = offset(now - Duration::from_secs(300));
        params.not_after = offset(now + CA_VALIDITY);
        params.serial_number = Some(random_serial());
        let cert = params
            .self_signed(&key)
            .map_err(rc("self-sign the CA"))?;
        Ok(CertificateAuthority {
            cert_pem: cert.pem(),
            cert_der: cert.der().clone(),
            key,
        })
    }

    /// Loads `ca.crt`/`ca.key` from `dir`, or creates and writes them when absent.
    pub fn load_or_create(dir: &Path) -> Result<CertificateAuthority> {
        let crt = dir.join("ca.crt");
        if crt.exists() {
            let cert_pem = read(&crt)?;
            let key_pem = read(&dir.join("ca.key"))?;
            return CertificateAuthority::from_pem(&cert_pem, &key_pem);
        }
        let ca = CertificateAuthority::generate("coxswain-ca")?;
        write(&dir.join("ca.key"), &ca.key.serialize_pem(), true)?;
        write(&crt, &ca.cert_pem, false)?;
        tracing::info!(dir = %dir.display(), hash = %ca.public_key_hash(), "created the cluster CA");
        Ok(ca)
    }

    /// A CA from its certificate and key.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<CertificateAuthority> {
        let key = KeyPair::from_pem(key_pem).map_err(rc("read the CA key"))?;
        let cert_der = first_cert_der(cert_pem)?;
        Ok(CertificateAuthority {
            cert_pem: cert_pem.to_owned(),
            cert_der,
            key,
        })
    }

    /// The CA certificate (what clients trust).
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA certificate, DER.
    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.cert_der
    }

    /// `sha256:<hex>` of the CA's SubjectPublicKeyInfo, as kubeadm's
    /// `--discovery-token-ca-cert-hash`.
    pub fn public_key_hash(&self) -> String {
        public_key_hash(&self.cert_der).unwrap_or_default()
    }

    fn issuer(&self) -> Result<Issuer<'static, &KeyPair>> {
        Issuer::from_ca_cert_der(&self.cert_der, &self.key).map_err(rc("read the CA certificate"))
    }

    /// Issues a certificate with a fresh key.
    pub fn issue(&self, request: &CertRequest) -> Result<Issued> {
        let key = KeyPair::generate().map_err(rc("generate a key"))?;
        let params = request.params()?;
        let cert = params
            .signed_by(&key, &self.issuer()?)
            .map_err(rc(format!("sign a certificate for {}", request.common_name)))?;
        Ok(Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// Signs a PEM certificate signing request (as the CSR API does): the subject comes from
    /// the request, usages and validity from `request` (its names are ignored).
    pub fn sign_csr(&self, csr_pem: &str, request: &CertRequest) -> Result<String> {
        let csr = CertificateSigningRequestParams::from_pem(csr_pem)
            .map_err(rc("parse the certificate signing request"))?;
        let mut params = request.params()?;
        params.distinguished_name = csr.params.distinguished_name.clone();
        params.subject_alt_names = csr.params.subject_alt_names.clone();
        let cert = params
            .signed_by(&csr.public_key, &self.issuer()?)
            .map_err(rc("sign the certificate signing request"))?;
        Ok(cert.pem())
    }
}

/// A new key and a PEM certificate signing request for `common_name` in `organizations`
/// (at most two, as [`CertRequest`]): `(csr_pem, key_pem)`.
pub fn new_csr(common_name: &str, organizations: &[&str]) -> Result<(String, String)> {
    let key = KeyPair::generate().map_err(rc("generate a key"))?;
    let mut params = CertRequest::client(common_name, organizations).params()?;
    params.serial_number = None;
    params.use_authority_key_identifier_extension = false;
    let csr = params
        .serialize_request(&key)
        .map_err(rc("build the certificate signing request"))?
        .pem()
        .map_err(rc("encode the certificate signing request"))?;
    Ok((csr, key.serialize_pem()))
}

/// A new key and a PEM certificate signing request for a serving certificate: `common_name`
/// in `organizations` (at most two), valid for these DNS names and addresses (as a kubelet
/// asks for with signer `kubernetes.io/kubelet-serving`): `(csr_pem, key_pem)`.
pub fn new_serving_csr(
    common_name: &str,
    organizations: &[&str],
    dns_names: Vec<String>,
    ip_addresses: Vec<IpAddr>,
) -> Result<(String, String)> {
    let key = KeyPair::generate().map_err(rc("generate a key"))?;
    let mut request = CertRequest::server(common_name, dns_names, ip_addresses);
    request.organizations = organizations.iter().map(|o| (*o).to_owned()).collect();
    let mut params = request.params()?;
    params.serial_number = None;
    params.use_authority_key_identifier_extension = false;
    let csr = params
        .serialize_request(&key)
        .map_err(rc("build the certificate signing request"))?
        .pem()
        .map_err(rc("encode the certificate signing request"))?;
    Ok((csr, key.serialize_pem()))
}

/// Everything a certificate signing request asks for, once its signature verified.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CsrInfo {
    /// Subject common name.
    pub common_name: String,
    /// Subject organizations.
    pub organizations: Vec<String>,
    /// DNS subject alternative names.
    pub dns_names: Vec<String>,
    /// IP subject alternative names.
    pub ip_addresses: Vec<IpAddr>,
    /// Email subject alternative names.
    pub emails: Vec<String>,
    /// URI subject alternative names.
    pub uris: Vec<String>,
}

/// Parses a PEM certificate signing request and checks its signature (the requester holds
/// the key).
pub fn csr_info(csr_pem: &str) -> Result<CsrInfo> {
    use rustls_pki_types::pem::PemObject;
    use x509_parser::extensions::{GeneralName, ParsedExtension};
    use x509_parser::prelude::FromDer;
    let der = rustls_pki_types::CertificateSigningRequestDer::from_pem_slice(csr_pem.as_bytes())
        .map_err(|e| PkiError::Parse(format!("not a PEM certificate signing request: {e}")))?;
    let (_, csr) = x509_parser::certification_request::X509CertificationRequest::from_der(der.as_ref())
        .map_err(|e| PkiError::Parse(format!("not a certificate signing request: {e}")))?;
    csr.verify_signature()
        .map_err(|e| PkiError::Parse(format!("the request's signature does not verify: {e}")))?;
    let subject = &csr.certification_request_info.subject;
    let text = |a: &x509_parser::x509::AttributeTypeAndValue<'_>| a.as_str().map(str::to_owned).unwrap_or_default();
    let mut info = CsrInfo {
        common_name: subject.iter_common_name().next().map(text).unwrap_or_default(),
        organizations: subject.iter_organization().map(text).collect(),
        ..CsrInfo::default()
    };
    for extension in csr.requested_extensions().into_iter().flatten() {
        let ParsedExtension::SubjectAlternativeName(san) = extension else { continue };
        for name in &san.general_names {
            match name {
                GeneralName::DNSName(d) => info.dns_names.push((*d).to_owned()),
                GeneralName::IPAddress(bytes) => match bytes.len() {
                    4 => info.ip_addresses.push(IpAddr::from(<[u8; 4]>::try_from(*bytes).unwrap_or_default())),
                    16 => info.ip_addresses.push(IpAddr::from(<[u8; 16]>::try_from(*bytes).unwrap_or_default())),
                    _ => return Err(PkiError::Parse("an IP subject alternative name is malformed".to_owned())),
                },
                GeneralName::RFC822Name(e) => info.emails.push((*e).to_owned()),
                GeneralName::URI(u) => info.uris.push((*u).to_owned()),
                other => info.uris.push(format!("{other:?}")),
            }
        }
    }
    Ok(info)
}

/// What a PEM certificate signing request asks for: `(common name, organizations)`.
pub fn csr_subject(csr_pem: &str) -> Result<(String, Vec<String>)> {
    use rustls_pki_types::pem::PemObject;
    use x509_parser::prelude::FromDer;
    let der = rustls_pki_types::CertificateSigningRequestDer::from_pem_slice(csr_pem.as_bytes())
        .map_err(|e| PkiError::Parse(format!("not a PEM certificate signing request: {e}")))?;
    let (_, csr) = x509_parser::certification_request::X509CertificationRequest::from_der(der.as_ref())
        .map_err(|e| PkiError::Parse(format!("not a certificate signing request: {e}")))?;
    csr.verify_signature()
        .map_err(|e| PkiError::Parse(format!("the request's signature does not verify: {e}")))?;
    let subject = &csr.certification_request_info.subject;
    let text = |a: &x509_parser::x509::AttributeTypeAndValue<'_>| a.as_str().map(str::to_owned).unwrap_or_default();
    let cn = subject.iter_common_name().next().map(text).unwrap_or_default();
    let orgs = subject.iter_organization().map(text).collect();
    Ok((cn, orgs))
}

/// Finds, among the certificates a server presented, the CA whose public-key hash is
/// `expected` (kubeadm's `--discovery-token-ca-cert-hash`), and checks that the server's own
/// certificate (the first) was signed by it. Returns the CA's DER.
pub fn pinned_ca(chain: &[CertificateDer<'_>], expected: &str) -> Result<CertificateDer<'static>> {
    let expected = expected.trim().to_ascii_lowercase();
    if !expected.starts_with("sha256:") || expected.len() != "sha256:".len() + 64 {
        return Err(PkiError::Parse(format!(
            "{expected:?} is not a CA hash: want sha256:<64 hex digits>"
        )));
    }
    let leaf = chain
        .first()
        .ok_or_else(|| PkiError::Parse("the server presented no certificate".to_owned()))?;
    let mut seen = Vec::new();
    for cert in chain {
        let hash = public_key_hash(cert)?;
        if hash == expected {
            let (_, leaf_cert) = x509_parser::parse_x509_certificate(leaf)
                .map_err(|e| PkiError::Parse(format!("the server's certificate is unreadable: {e}")))?;
            let (_, ca_cert) = x509_parser::parse_x509_certificate(cert)
                .map_err(|e| PkiError::Parse(format!("the CA certificate is unreadable: {e}")))?;
            leaf_cert
                .verify_signature(Some(ca_cert.public_key()))
                .map_err(|e| PkiError::Parse(format!("the server's certificate was not signed by the pinned CA: {e}")))?;
            return Ok(cert.clone().into_owned());
        }
        seen.push(hash);
    }
    Err(PkiError::Parse(format!(
        "the server's CA does not match --discovery-token-ca-cert-hash {expected} (the server presented {})",
        seen.join(", ")
    )))
}

/// `sha256:<hex>` of a certificate's SubjectPublicKeyInfo.
pub fn public_key_hash(cert_der: &[u8]) -> Result<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(cert_der)
        .map_err(|e| PkiError::Parse(format!("not an X.509 certificate: {e}")))?;
    let digest = ring::digest::digest(&ring::digest::SHA256, cert.public_key().raw);
    Ok(format!("sha256:{}", hex::encode(digest.as_ref())))
}

/// The DER of the first certificate in a PEM bundle.
pub fn first_cert_der(pem: &str) -> Result<CertificateDer<'static>> {
    certs_der(pem)?
        .into_iter()
        .next()
        .ok_or_else(|| PkiError::Parse("no CERTIFICATE block in the PEM data".to_owned()))
}

/// Every certificate in a PEM bundle.
pub fn certs_der(pem: &str) -> Result<Vec<CertificateDer<'static>>> {
    use rustls_pki_types::pem::PemObject;
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| PkiError::Parse(format!("bad PEM certificate data: {e}")))
}

/// What a certificate says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    /// Subject common name.
    pub common_name: String,
    /// Subject organizations.
    pub organizations: Vec<String>,
    /// DNS subject alternative names.
    pub dns_names: Vec<String>,
    /// IP subject alternative names.
    pub ip_addresses: Vec<IpAddr>,
    /// Start of validity.
    pub not_before: SystemTime,
    /// End of validity.
    pub not_after: SystemTime,
}

impl CertInfo {
    /// Parses the first certificate of a PEM bundle.
    pub fn from_pem(pem: &str) -> Result<CertInfo> {
        CertInfo::from_der(&first_cert_der(pem)?)
    }

    /// Parses a DER certificate.
    pub fn from_der(der: &[u8]) -> Result<CertInfo> {
        use x509_parser::extensions::GeneralName;
        let (_, cert) = x509_parser::parse_x509_certificate(der)
            .map_err(|e| PkiError::Parse(format!("not an X.509 certificate: {e}")))?;
        let subject = cert.subject();
        let text = |attr: &x509_parser::x509::AttributeTypeAndValue<'_>| {
            attr.as_str().map(str::to_owned).map_err(|e| {
                PkiError::Parse(format!("a subject attribute is not a string: {e}"))
            })
        };
        let common_name = match subject.iter_common_name().next() {
            Some(cn) => text(cn)?,
            None => String::new(),
        };
        let organizations = subject
            .iter_organization()
            .map(text)
            .collect::<Result<Vec<_>>>()?;
        let mut dns_names = Vec::new();
        let mut ip_addresses = Vec::new();
        if let Ok(Some(san)) = cert.subject_alternative_name() {
            for name in &san.value.general_names {
                match name {
                    GeneralName::DNSName(d) => dns_names.push((*d).to_owned()),
                    GeneralName::IPAddress(bytes) => match bytes.len() {
                        4 => ip_addresses.push(IpAddr::from(<[u8; 4]>::try_from(*bytes).unwrap_or_default())),
                        16 => ip_addresses.push(IpAddr::from(<[u8; 16]>::try_from(*bytes).unwrap_or_default())),
                        _ => {}
                    },
                    _ => {}
                }
            }
        }
        let validity = cert.validity();
        let to_system = |t: x509_parser::time::ASN1Time| {
            let secs = t.timestamp();
            if secs >= 0 {
                SystemTime::UNIX_EPOCH + Duration::from_secs(secs as u64)
            } else {
                SystemTime::UNIX_EPOCH
            }
        };
        Ok(CertInfo {
            common_name,
            organizations,
            dns_names,
            ip_addresses,
            not_before: to_system(validity.not_before),
            not_after: to_system(validity.not_after),
        })
    }

    /// Whether less than [`RENEW_REMAINING_FRACTION`] of the lifetime is left at `now`.
    pub fn due_for_renewal(&self, now: SystemTime) -> bool {
        let lifetime = self
            .not_after
            .duration_since(self.not_before)
            .unwrap_or_default();
        match self.not_after.duration_since(now) {
            Ok(left) => left.as_secs_f64() < lifetime.as_secs_f64() * RENEW_REMAINING_FRACTION,
            Err(_) => true,
        }
    }
}

/// Loads `<base>.crt`/`.key` from `dir` if they exist, were issued by `ca` for the same
/// names, and are not due for renewal; otherwise issues, writes and returns new ones.
/// Returns whether a new certificate was issued.
pub fn load_or_issue(
    ca: &CertificateAuthority,
    dir: &Path,
    base: &str,
    request: &CertRequest,
) -> Result<(Issued, bool)> {
    if let Ok(existing) = Issued::read(dir, base)
        && let Ok(info) = existing.info()
        && !info.due_for_renewal(SystemTime::now())
        && info.common_name == request.common_name
        && same_set(&info.dns_names, &request.dns_names)
        && same_set(&info.ip_addresses, &request.ip_addresses)
        && same_set(&info.organizations, &request.organizations)
        && verify_issued_by(&existing.cert_pem, ca).is_ok()
    {
        return Ok((existing, false));
    }
    let issued = ca.issue(request)?;
    issued.write(dir, base)?;
    Ok((issued, true))
}

fn same_set<T: Ord + Clone>(a: &[T], b: &[T]) -> bool {
    let mut a = a.to_vec();
    let mut b = b.to_vec();
    a.sort();
    a.dedup();
    b.sort();
    b.dedup();
    a == b
}

/// Checks that `cert_pem` was signed by `ca`.
pub fn verify_issued_by(cert_pem: &str, ca: &CertificateAuthority) -> Result<()> {
    verify_signed_by(cert_pem, ca.cert_der())
}

/// Checks that `cert_pem` (its first certificate) was signed by the CA certificate `ca_der`
/// (for holders of the CA certificate only, such as a kubelet).
pub fn verify_signed_by(cert_pem: &str, ca_der: &[u8]) -> Result<()> {
    let der = first_cert_der(cert_pem)?;
    let (_, cert) = x509_parser::parse_x509_certificate(&der)
        .map_err(|e| PkiError::Parse(format!("not an X.509 certificate: {e}")))?;
    let (_, ca_cert) = x509_parser::parse_x509_certificate(ca_der)
        .map_err(|e| PkiError::Parse(format!("the CA is not an X.509 certificate: {e}")))?;
    cert.verify_signature(Some(ca_cert.public_key()))
        .map_err(|e| PkiError::Parse(format!("not signed by the cluster CA: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issued_client_certificates_carry_user_and_groups() {
        let ca = CertificateAuthority::generate("test-ca").unwrap();
        let issued = ca
            .issue(&CertRequest::client("alice", &["dev", "ops"]))
            .unwrap();
        assert!(ca.issue(&CertRequest::client("x", &["a", "b", "c"])).is_err());
        let info = issued.info().unwrap();
        assert_eq!(info.common_name, "alice");
        assert_eq!(info.organizations, vec!["dev", "ops"]);
        assert!(!info.due_for_renewal(SystemTime::now()));
        verify_issued_by(&issued.cert_pem, &ca).unwrap();
        let other = CertificateAuthority::generate("other").unwrap();
        assert!(verify_issued_by(&issued.cert_pem, &other).is_err());
    }

    #[test]
    fn a_certificate_near_its_end_is_due_for_renewal() {
        let ca = CertificateAuthority::generate("test-ca").unwrap();
        let mut request = CertRequest::client("bob", &[]);
        request.validity = Some(Duration::from_secs(1000));
        let info = ca.issue(&request).unwrap().info().unwrap();
        // Valid from now-300 s to now+1000 s: 1300 s; renewal once < 390 s remain.
        assert!(!info.due_for_renewal(SystemTime::now()));
        assert!(info.due_for_renewal(SystemTime::now() + Duration::from_secs(700)));
        assert!(info.due_for_renewal(SystemTime::now() + Duration::from_secs(2000)));
    }

    #[test]
    fn load_or_issue_keeps_a_good_certificate_and_replaces_a_changed_one() {
        let dir = tempfile::tempdir().unwrap();
        let ca = CertificateAuthority::load_or_create(dir.path()).unwrap();
        let again = CertificateAuthority::load_or_create(dir.path()).unwrap();
        assert_eq!(ca.public_key_hash(), again.public_key_hash());
        let request = CertRequest::server(
            "kube-apiserver",
            vec!["localhost".into()],
            vec!["127.0.0.1".parse().unwrap()],
        );
        let (first, new) = load_or_issue(&ca, dir.path(), "apiserver", &request).unwrap();
        assert!(new);
        let (second, new) = load_or_issue(&ca, dir.path(), "apiserver", &request).unwrap();
        assert!(!new);
        assert_eq!(first.cert_pem, second.cert_pem);
        let mut wider = request.clone();
        wider.ip_addresses.push("10.0.0.1".parse().unwrap());
        let (third, new) = load_or_issue(&ca, dir.path(), "apiserver", &wider).unwrap();
        assert!(new);
        assert_eq!(third.info().unwrap().ip_addresses.len(), 2);
    }

    #[test]
    fn csr_subjects_are_kept_and_usages_come_from_the_signer() {
        let ca = CertificateAuthority::generate("test-ca").unwrap();
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "system:nodes");
        dn.push(DnType::CommonName, "system:node:n1");
        params.distinguished_name = dn;
        let csr = params.serialize_request(&key).unwrap().pem().unwrap();
        let cert = ca
            .sign_csr(&csr, &CertRequest { client: true, ..CertRequest::default() })
            .unwrap();
        let info = CertInfo::from_pem(&cert).unwrap();
        assert_eq!(info.common_name, "system:node:n1");
        assert_eq!(info.organizations, vec!["system:nodes"]);
        verify_issued_by(&cert, &ca).unwrap();
        assert!(ca.sign_csr("garbage", &CertRequest::default()).is_err());
    }

    #[test]
    fn new_csrs_say_who_and_pinning_finds_the_ca() {
        let (csr, _key) = new_csr("system:node:n2", &["system:nodes"]).unwrap();
        assert_eq!(csr_subject(&csr).unwrap(), ("system:node:n2".to_owned(), vec!["system:nodes".to_owned()]));
        assert!(csr_subject("-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n").is_err());
        let ca = CertificateAuthority::generate("ca").unwrap();
        let leaf = ca.issue(&CertRequest::server("s", vec!["localhost".into()], vec![])).unwrap();
        let chain = vec![first_cert_der(&leaf.cert_pem).unwrap(), ca.cert_der().clone()];
        assert_eq!(&pinned_ca(&chain, &ca.public_key_hash()).unwrap(), ca.cert_der());
        let other = CertificateAuthority::generate("other").unwrap();
        let err = pinned_ca(&chain, &other.public_key_hash()).unwrap_err().to_string();
        assert!(err.contains("does not match"), "{err}");
        assert!(pinned_ca(&chain, "sha256:abc").is_err());
        // A chain whose "CA" matches the hash but did not sign the leaf is refused.
        let forged = vec![first_cert_der(&other.issue(&CertRequest::server("s", vec![], vec![])).unwrap().cert_pem).unwrap(), ca.cert_der().clone()];
        assert!(pinned_ca(&forged, &ca.public_key_hash()).is_err());
    }

    #[test]
    fn serving_csrs_carry_their_names_and_sign_into_serving_certificates() {
        let ip: IpAddr = "10.236.1.2".parse().unwrap();
        let (csr, key) = new_serving_csr("system:node:n1", &["system:nodes"], vec!["n1".into()], vec![ip]).unwrap();
        let info = csr_info(&csr).unwrap();
        assert_eq!(info.common_name, "system:node:n1");
        assert_eq!(info.organizations, vec!["system:nodes"]);
        assert_eq!(info.dns_names, vec!["n1"]);
        assert_eq!(info.ip_addresses, vec![ip]);
        assert!(info.emails.is_empty() && info.uris.is_empty());
        let ca = CertificateAuthority::generate("ca").unwrap();
        let cert = ca.sign_csr(&csr, &CertRequest { server: true, ..CertRequest::default() }).unwrap();
        let issued = CertInfo::from_pem(&cert).unwrap();
        assert_eq!(issued.ip_addresses, vec![ip]);
        assert_eq!(issued.dns_names, vec!["n1"]);
        verify_issued_by(&cert, &ca).unwrap();
        assert!(key.contains("PRIVATE KEY"));
        // A client request has no names.
        let (client, _) = new_csr("alice", &[]).unwrap();
        assert_eq!(csr_info(&client).unwrap().dns_names, Vec::<String>::new());
    }

    #[test]
    fn the_ca_hash_is_stable_and_formatted_like_kubeadm() {
        let ca = CertificateAuthority::generate("test-ca").unwrap();
        let hash = ca.public_key_hash();
        assert!(hash.starts_with("sha256:"));
        assert_eq!(hash.len(), "sha256:".len() + 64);
        assert_eq!(hash, public_key_hash(ca.cert_der()).unwrap());
    }
}
