//! ServiceAccount tokens: ES256 JWTs as kube-apiserver issues them through the TokenRequest
//! API (`POST .../serviceaccounts/<name>/token`), bound to a ServiceAccount and optionally a
//! Pod (the token dies with it), for a set of audiences, expiring.
//!
//! Written with ring rather than a JWT crate: the format is three base64url parts and one
//! ECDSA signature, and ring is already how the rest of the PKI signs; a JWT library would
//! add a second crypto stack for a few dozen lines.

use std::path::Path;

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use ring::rand::SystemRandom;
use ring::signature::{
    ECDSA_P256_SHA256_FIXED, ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair,
    UnparsedPublicKey,
};
use serde::{Deserialize, Serialize};

/// The issuer (and default audience) of tokens, as upstream's default `--service-account-issuer`.
pub const DEFAULT_ISSUER: &str = "https://kubernetes.default.svc.cluster.local";
/// The shortest lifetime a TokenRequest may ask for (upstream: 10 minutes).
pub const MIN_EXPIRATION_SECONDS: i64 = 600;
/// The lifetime when a TokenRequest gives none (upstream: 1 hour).
pub const DEFAULT_EXPIRATION_SECONDS: i64 = 3600;
/// The longest lifetime a TokenRequest may ask for (upstream caps at 48 hours by default for
/// long-lived requests; we cap there too).
pub const MAX_EXPIRATION_SECONDS: i64 = 48 * 3600;

/// Errors of token signing and verification.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// The signing key could not be created, read or used.
    #[error("service account signing key: {0}")]
    Key(String),
    /// The token is not a well-formed JWT of ours.
    #[error("malformed token: {0}")]
    Malformed(&'static str),
    /// The signature does not verify with our key.
    #[error("the token's signature is invalid")]
    BadSignature,
    /// The token is expired or not yet valid.
    #[error("the token has expired")]
    Expired,
    /// The token is not for this audience.
    #[error("the token is not for audience {0:?}")]
    WrongAudience(String),
    /// The token was issued by someone else.
    #[error("the token was issued by {0:?}")]
    WrongIssuer(String),
}

/// A named object a token is bound to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectRef {
    /// Name.
    pub name: String,
    /// UID: the token is valid only while an object with this UID exists.
    pub uid: String,
}

/// The private `kubernetes.io` claim.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KubernetesClaims {
    /// The ServiceAccount's namespace.
    pub namespace: String,
    /// The ServiceAccount.
    pub serviceaccount: ObjectRef,
    /// The Pod the token is bound to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<ObjectRef>,
    /// The Secret the token is bound to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<ObjectRef>,
    /// The node the bound pod runs on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<ObjectRef>,
}

/// A token's claims.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// Issuer.
    pub iss: String,
    /// Subject: `system:serviceaccount:<ns>:<name>`.
    pub sub: String,
    /// Audiences.
    pub aud: Vec<String>,
    /// Expiry, seconds since the epoch.
    pub exp: i64,
    /// Issued at.
    pub iat: i64,
    /// Not before.
    pub nbf: i64,
    /// Token id.
    pub jti: String,
    /// Who and what the token is bound to.
    #[serde(rename = "kubernetes.io")]
    pub kubernetes: KubernetesClaims,
}

#[derive(Serialize, Deserialize)]
struct Header {
    alg: String,
    kid: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    typ: Option<String>,
}

/// Signs and verifies tokens with one P-256 key.
pub struct TokenSigner {
    key: EcdsaKeyPair,
    public: Vec<u8>,
    kid: String,
    issuer: String,
    rng: SystemRandom,
}

impl std::fmt::Debug for TokenSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenSigner")
            .field("kid", &self.kid)
            .field("issuer", &self.issuer)
            .finish_non_exhaustive()
    }
}

fn pem_encode(label: &str, der: &[u8]) -> String {
    let b64 = STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(chunk).unwrap_or_default());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

fn pem_decode(label: &str, pem: &str) -> Result<Vec<u8>, TokenError> {
    let begin = format!("-----BEGIN {label}-----");
    let end = format!("-----END {label}-----");
    let start = pem
        .find(&begin)
        .ok_or_else(|| TokenError::Key(format!("no {label} block")))?
        + begin.len();
    let stop = pem[start..]
        .find(&end)
        .ok_or_else(|| TokenError::Key(format!("unterminated {label} block")))?;
    let body: String = pem[start..start + stop].split_whitespace().collect();
    STANDARD
        .decode(body)
        .map_err(|e| TokenError::Key(format!("bad base64 in the {label} block: {e}")))
}

impl TokenSigner {
    /// A signer with a new key.
    pub fn generate(issuer: &str) -> Result<(TokenSigner, String), TokenError> {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
            .map_err(|_| TokenError::Key("cannot generate a P-256 key".to_owned()))?;
        let pem = pem_encode("PRIVATE KEY", pkcs8.as_ref());
        Ok((TokenSigner::from_pem(&pem, issuer)?, pem))
    }

    /// A signer from a PKCS#8 PEM P-256 key.
    pub fn from_pem(pem: &str, issuer: &str) -> Result<TokenSigner, TokenError> {
        let der = pem_decode("PRIVATE KEY", pem)?;
        let rng = SystemRandom::new();
        let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &der, &rng)
            .map_err(|e| TokenError::Key(format!("not a P-256 PKCS#8 key: {e}")))?;
        let public = key.public_key().as_ref().to_vec();
        let digest = ring::digest::digest(&ring::digest::SHA256, &public);
        let kid = URL_SAFE_NO_PAD.encode(&digest.as_ref()[..16]);
        Ok(TokenSigner {
            key,
            public,
            kid,
            issuer: issuer.to_owned(),
            rng,
        })
    }

    /// Loads `sa.key` from `dir`, creating it (mode 0600) at first start.
    pub fn load_or_create(dir: &Path, issuer: &str) -> Result<TokenSigner, TokenError> {
        let path = dir.join("sa.key");
        if let Ok(pem) = std::fs::read_to_string(&path) {
            return TokenSigner::from_pem(&pem, issuer);
        }
        let (signer, pem) = TokenSigner::generate(issuer)?;
        crate::pki::write_private_file(&path, &pem).map_err(|e| TokenError::Key(e.to_string()))?;
        Ok(signer)
    }

    /// The issuer named in tokens.
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// The key id in token headers.
    pub fn key_id(&self) -> &str {
        &self.kid
    }

    /// The public key as a JWK (`/openid/v1/jwks`).
    pub fn jwk(&self) -> serde_json::Value {
        // Uncompressed point: 0x04 || X (32) || Y (32).
        let (x, y) = self.public[1..].split_at(32);
        serde_json::json!({
            "kty": "EC", "crv": "P-256", "alg": "ES256", "use": "sig", "kid": self.kid,
            "x": URL_SAFE_NO_PAD.encode(x), "y": URL_SAFE_NO_PAD.encode(y),
        })
    }

    /// Signs `claims`.
    pub fn sign(&self, claims: &Claims) -> Result<String, TokenError> {
        let header = Header {
            alg: "ES256".to_owned(),
            kid: self.kid.clone(),
            typ: Some("JWT".to_owned()),
        };
        let encode = |v: &dyn erased::Json| URL_SAFE_NO_PAD.encode(v.json());
        let input = format!("{}.{}", encode(&header), encode(claims));
        let signature = self
            .key
            .sign(&self.rng, input.as_bytes())
            .map_err(|_| TokenError::Key("signing failed".to_owned()))?;
        Ok(format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature.as_ref())))
    }

    /// Verifies a token's signature, issuer, validity window (at `now`, seconds since the
    /// epoch) and that one of its audiences is `audience`; returns its claims. Whether the
    /// objects it is bound to still exist is for the caller to check.
    pub fn verify(&self, token: &str, audience: &str, now: i64) -> Result<Claims, TokenError> {
        let mut parts = token.split('.');
        let (Some(h), Some(c), Some(s), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
            return Err(TokenError::Malformed("a JWT has three parts"));
        };
        let header: Header = URL_SAFE_NO_PAD
            .decode(h)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or(TokenError::Malformed("unreadable header"))?;
        if header.alg != "ES256" {
            return Err(TokenError::Malformed("unsupported algorithm"));
        }
        let signature = URL_SAFE_NO_PAD
            .decode(s)
            .map_err(|_| TokenError::Malformed("unreadable signature"))?;
        UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, &self.public)
            .verify(format!("{h}.{c}").as_bytes(), &signature)
            .map_err(|_| TokenError::BadSignature)?;
        let claims: Claims = URL_SAFE_NO_PAD
            .decode(c)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or(TokenError::Malformed("unreadable claims"))?;
        if claims.iss != self.issuer {
            return Err(TokenError::WrongIssuer(claims.iss));
        }
        // Upstream allows a little clock skew on both ends.
        const LEEWAY: i64 = 60;
        if now >= claims.exp + LEEWAY || now + LEEWAY < claims.nbf {
            return Err(TokenError::Expired);
        }
        if !claims.aud.iter().any(|a| a == audience) {
            return Err(TokenError::WrongAudience(audience.to_owned()));
        }
        Ok(claims)
    }
}

/// Serialization behind a trait object, so one closure encodes both header and claims.
mod erased {
    pub(super) trait Json {
        fn json(&self) -> Vec<u8>;
    }
    impl<T: serde::Serialize> Json for T {
        fn json(&self) -> Vec<u8> {
            serde_json::to_vec(self).unwrap_or_default()
        }
    }
}

/// Claims for a token of ServiceAccount `namespace/name` (uid `sa_uid`), valid for
/// `expiration_seconds` from `now`, for `audiences`, optionally bound to a pod (and its node).
#[allow(clippy::too_many_arguments, reason = "each is a distinct claim")]
pub fn claims(
    issuer: &str,
    namespace: &str,
    service_account: ObjectRef,
    pod: Option<ObjectRef>,
    node: Option<ObjectRef>,
    audiences: Vec<String>,
    now: i64,
    expiration_seconds: i64,
) -> Claims {
    Claims {
        iss: issuer.to_owned(),
        sub: format!(
            "{}{namespace}:{}",
            crate::authn::SERVICE_ACCOUNT_PREFIX,
            service_account.name
        ),
        aud: audiences,
        exp: now + expiration_seconds,
        iat: now,
        nbf: now,
        jti: random_id(),
        kubernetes: KubernetesClaims {
            namespace: namespace.to_owned(),
            serviceaccount: service_account,
            pod,
            secret: None,
            node,
        },
    }
}

fn random_id() -> String {
    use ring::rand::SecureRandom;
    let mut b = [0u8; 16];
    let _ = SystemRandom::new().fill(&mut b);
    hex::encode(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(signer: &TokenSigner, now: i64, ttl: i64, aud: &str) -> String {
        let c = claims(
            signer.issuer(),
            "default",
            ObjectRef { name: "builder".into(), uid: "sa-1".into() },
            Some(ObjectRef { name: "web-0".into(), uid: "pod-1".into() }),
            None,
            vec![aud.to_owned()],
            now,
            ttl,
        );
        signer.sign(&c).unwrap()
    }

    #[test]
    fn a_signed_token_verifies_and_says_who() {
        let (signer, pem) = TokenSigner::generate(DEFAULT_ISSUER).unwrap();
        let now = 1_800_000_000;
        let token = sample(&signer, now, 600, DEFAULT_ISSUER);
        let claims = signer.verify(&token, DEFAULT_ISSUER, now + 10).unwrap();
        assert_eq!(claims.sub, "system:serviceaccount:default:builder");
        assert_eq!(claims.kubernetes.pod.unwrap().uid, "pod-1");
        // The same key from its PEM verifies it too; another key does not.
        let again = TokenSigner::from_pem(&pem, DEFAULT_ISSUER).unwrap();
        assert!(again.verify(&token, DEFAULT_ISSUER, now).is_ok());
        let (other, _) = TokenSigner::generate(DEFAULT_ISSUER).unwrap();
        assert_eq!(other.verify(&token, DEFAULT_ISSUER, now), Err(TokenError::BadSignature));
    }

    #[test]
    fn tampered_expired_and_foreign_tokens_are_refused() {
        let (signer, _) = TokenSigner::generate(DEFAULT_ISSUER).unwrap();
        let now = 1_800_000_000;
        let token = sample(&signer, now, 600, DEFAULT_ISSUER);
        // Expired (past the leeway) and not yet valid.
        assert_eq!(signer.verify(&token, DEFAULT_ISSUER, now + 600 + 61), Err(TokenError::Expired));
        assert_eq!(signer.verify(&token, DEFAULT_ISSUER, now - 120), Err(TokenError::Expired));
        // Wrong audience.
        let other_aud = sample(&signer, now, 600, "vault");
        assert!(matches!(signer.verify(&other_aud, DEFAULT_ISSUER, now), Err(TokenError::WrongAudience(_))));
        // Claims swapped for another subject, signature kept.
        let parts: Vec<&str> = token.split('.').collect();
        let mut claims: serde_json::Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
        claims["sub"] = "system:serviceaccount:kube-system:admin".into();
        let forged = format!("{}.{}.{}", parts[0], URL_SAFE_NO_PAD.encode(claims.to_string()), parts[2]);
        assert_eq!(signer.verify(&forged, DEFAULT_ISSUER, now), Err(TokenError::BadSignature));
        // Garbage of every shape.
        for bad in ["", "a.b", "a.b.c.d", "....", "x.y.z", &token[..token.len() - 3]] {
            assert!(signer.verify(bad, DEFAULT_ISSUER, now).is_err(), "{bad}");
        }
        // An unsigned token (alg none) is refused.
        let none = format!("{}.{}.", URL_SAFE_NO_PAD.encode(r#"{"alg":"none","kid":"x"}"#), parts[1]);
        assert!(signer.verify(&none, DEFAULT_ISSUER, now).is_err());
        // Another issuer's key with our issuer name still fails on the signature; our key
        // with another issuer name fails on the issuer.
        let (foreign, _) = TokenSigner::generate("https://elsewhere").unwrap();
        let theirs = sample(&foreign, now, 600, DEFAULT_ISSUER);
        assert!(signer.verify(&theirs, DEFAULT_ISSUER, now).is_err());
    }

    #[test]
    fn the_jwk_names_the_key() {
        let (signer, _) = TokenSigner::generate(DEFAULT_ISSUER).unwrap();
        let jwk = signer.jwk();
        assert_eq!(jwk["kid"], signer.key_id());
        assert_eq!(URL_SAFE_NO_PAD.decode(jwk["x"].as_str().unwrap()).unwrap().len(), 32);
    }
}
