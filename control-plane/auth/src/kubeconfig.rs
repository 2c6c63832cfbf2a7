//! Kubeconfig files with credentials embedded, as kubeadm writes them.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;

/// How a kubeconfig's user proves who it is.
#[derive(Clone)]
pub enum Credential {
    /// A client certificate and its key (PEM).
    ClientCertificate {
        /// The certificate.
        cert_pem: String,
        /// The private key.
        key_pem: String,
    },
    /// A bearer token.
    Token(String),
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credential::ClientCertificate { .. } => f.write_str("ClientCertificate(<redacted>)"),
            Credential::Token(_) => f.write_str("Token(<redacted>)"),
        }
    }
}

/// A kubeconfig for `server` that trusts `ca_pem` and authenticates `user` with
/// `credential`; its context's namespace is `default`.
pub fn render(server: &str, ca_pem: &str, user: &str, credential: &Credential) -> String {
    let b64 = |s: &str| STANDARD.encode(s.as_bytes());
    let user_fields = match credential {
        Credential::ClientCertificate { cert_pem, key_pem } => format!(
            "    client-certificate-data: {}\n    client-key-data: {}\n",
            b64(cert_pem),
            b64(key_pem)
        ),
        Credential::Token(token) => format!("    token: {token}\n"),
    };
    // Quoted so that names like `system:node:n1` stay plain YAML strings; the context is
    // `<user>@coxswain`, as kubeadm's `kubernetes-admin@kubernetes`.
    let context = format!("{user}@coxswain");
    format!(
        "apiVersion: v1\n\
         kind: Config\n\
         clusters:\n\
         - name: coxswain\n  cluster:\n    server: {server}\n    certificate-authority-data: {ca}\n\
         contexts:\n\
         - name: {context:?}\n  context:\n    cluster: coxswain\n    user: {user:?}\n    namespace: default\n\
         current-context: {context:?}\n\
         users:\n\
         - name: {user:?}\n  user:\n{user_fields}\
         preferences: {{}}\n",
        ca = b64(ca_pem),
    )
}
