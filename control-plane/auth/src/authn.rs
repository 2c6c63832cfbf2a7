//! Authentication: who is asking. Users come from x509 client certificates (CN is the user,
//! O the groups), from a static token file, from ServiceAccount tokens ([`crate::satoken`])
//! and from bootstrap tokens (Secrets the API server looks up). This module holds what needs
//! no store: the user type, the token file, bearer header parsing, certificate subjects and
//! bootstrap token syntax.

use std::collections::{BTreeMap, HashMap};

use crate::pki::CertInfo;

/// Members of this group may do anything (the admin kubeconfig's group).
pub const SYSTEM_MASTERS: &str = "system:masters";
/// Every authenticated user is in this group.
pub const AUTHENTICATED: &str = "system:authenticated";
/// Every kubelet's group.
pub const NODES: &str = "system:nodes";
/// The prefix of a kubelet's user name: `system:node:<node>`.
pub const NODE_USER_PREFIX: &str = "system:node:";
/// The prefix of a ServiceAccount's user name: `system:serviceaccount:<ns>:<name>`.
pub const SERVICE_ACCOUNT_PREFIX: &str = "system:serviceaccount:";
/// Every ServiceAccount's group.
pub const SERVICE_ACCOUNTS: &str = "system:serviceaccounts";
/// The group of bootstrap token users.
pub const BOOTSTRAPPERS: &str = "system:bootstrappers";
/// The prefix of a bootstrap token's user name: `system:bootstrap:<token-id>`.
pub const BOOTSTRAP_USER_PREFIX: &str = "system:bootstrap:";

/// An authenticated user, as kube-apiserver's `user.Info`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UserInfo {
    /// The user name.
    pub name: String,
    /// A unique id, when the authenticator knows one.
    pub uid: String,
    /// Groups, always including [`AUTHENTICATED`].
    pub groups: Vec<String>,
    /// Extra attributes (a ServiceAccount token's pod name, ...).
    pub extra: BTreeMap<String, Vec<String>>,
}

impl UserInfo {
    /// A user named `name` in `groups` (plus [`AUTHENTICATED`]).
    pub fn new(name: impl Into<String>, groups: impl IntoIterator<Item = impl Into<String>>) -> UserInfo {
        let mut user = UserInfo {
            name: name.into(),
            groups: groups.into_iter().map(Into::into).collect(),
            ..UserInfo::default()
        };
        user.add_group(AUTHENTICATED);
        user
    }

    fn add_group(&mut self, group: &str) {
        if !self.groups.iter().any(|g| g == group) {
            self.groups.push(group.to_owned());
        }
    }

    /// Whether the user is in `group`.
    pub fn in_group(&self, group: &str) -> bool {
        self.groups.iter().any(|g| g == group)
    }

    /// The node a kubelet identity (`system:node:<name>` in `system:nodes`) stands for.
    pub fn node_name(&self) -> Option<&str> {
        if !self.in_group(NODES) {
            return None;
        }
        self.name
            .strip_prefix(NODE_USER_PREFIX)
            .filter(|n| !n.is_empty())
    }

    /// The user of a verified client certificate.
    pub fn from_certificate(info: &CertInfo) -> Option<UserInfo> {
        if info.common_name.is_empty() {
            return None;
        }
        Some(UserInfo::new(
            info.common_name.clone(),
            info.organizations.iter().cloned(),
        ))
    }

    /// The user of a ServiceAccount.
    pub fn service_account(namespace: &str, name: &str, uid: &str) -> UserInfo {
        let mut user = UserInfo::new(
            format!("{SERVICE_ACCOUNT_PREFIX}{namespace}:{name}"),
            [SERVICE_ACCOUNTS.to_owned(), format!("{SERVICE_ACCOUNTS}:{namespace}")],
        );
        user.uid = uid.to_owned();
        user
    }
}

/// Why a request's credentials were refused (all are 401).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthnError {
    /// The `Authorization` header is not `Bearer <token>`.
    #[error("the Authorization header must be \"Bearer <token>\"")]
    MalformedHeader,
    /// The token is not known or not valid.
    #[error("invalid bearer token{}", if .0.is_empty() { String::new() } else { format!(": {}", .0) })]
    InvalidToken(String),
}

/// The token of an `Authorization: Bearer <token>` header; `Ok(None)` without the header.
pub fn bearer_token(header: Option<&[u8]>) -> Result<Option<&str>, AuthnError> {
    let Some(raw) = header else { return Ok(None) };
    let text = std::str::from_utf8(raw).map_err(|_| AuthnError::MalformedHeader)?;
    let mut parts = text.trim().splitn(2, ' ');
    let scheme = parts.next().unwrap_or_default();
    let token = parts.next().unwrap_or_default().trim();
    if !scheme.eq_ignore_ascii_case("bearer") || token.is_empty() || token.contains(' ') {
        return Err(AuthnError::MalformedHeader);
    }
    Ok(Some(token))
}

/// Static tokens, as kube-apiserver's `--token-auth-file`: CSV lines
/// `token,user,uid[,"group1,group2"]`; `#` starts a comment.
#[derive(Default)]
pub struct TokenFile {
    // Keyed by the token's SHA-256, so a lookup's timing says nothing about stored tokens.
    users: HashMap<[u8; 32], UserInfo>,
}

impl std::fmt::Debug for TokenFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenFile")
            .field("tokens", &self.users.len())
            .finish()
    }
}

fn digest(token: &str) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

impl TokenFile {
    /// Parses the file's text; errors name the line.
    pub fn parse(text: &str) -> Result<TokenFile, String> {
        let mut users = HashMap::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let fields = split_csv(line).map_err(|e| format!("line {}: {e}", i + 1))?;
            if fields.len() < 3 {
                return Err(format!(
                    "line {}: want token,user,uid[,\"groups\"], got {} fields",
                    i + 1,
                    fields.len()
                ));
            }
            if fields[0].is_empty() || fields[1].is_empty() {
                return Err(format!("line {}: the token and the user must not be empty", i + 1));
            }
            let groups: Vec<String> = fields
                .get(3)
                .map(|g| {
                    g.split(',')
                        .map(str::trim)
                        .filter(|g| !g.is_empty())
                        .map(str::to_owned)
                        .collect()
                })
                .unwrap_or_default();
            let mut user = UserInfo::new(fields[1].clone(), groups);
            user.uid = fields[2].clone();
            if users.insert(digest(&fields[0]), user).is_some() {
                return Err(format!("line {}: a token appears twice", i + 1));
            }
        }
        Ok(TokenFile { users })
    }

    /// The user of `token`, if it is in the file.
    pub fn authenticate(&self, token: &str) -> Option<&UserInfo> {
        self.users.get(&digest(token))
    }

    /// How many tokens the file holds.
    pub fn len(&self) -> usize {
        self.users.len()
    }

    /// Whether the file holds no token.
    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }
}

/// Splits one CSV line (double quotes group fields containing commas; `""` is a quote).
fn split_csv(line: &str) -> Result<Vec<String>, String> {
    let mut fields = Vec::new();
    let mut field = String::new();
    let mut quoted = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match (c, quoted) {
            ('"', false) if field.is_empty() => quoted = true,
            ('"', true) if chars.peek() == Some(&'"') => {
                chars.next();
                field.push('"');
            }
            ('"', true) => quoted = false,
            (',', false) => fields.push(std::mem::take(&mut field).trim().to_owned()),
            (c, _) => field.push(c),
        }
    }
    if quoted {
        return Err("an unterminated quote".to_owned());
    }
    fields.push(field.trim().to_owned());
    Ok(fields)
}

/// A bootstrap token `<id>.<secret>`: id `[a-z0-9]{6}`, secret `[a-z0-9]{16}`.
#[derive(Clone, PartialEq, Eq)]
pub struct BootstrapToken {
    /// The public part, also the Secret's name suffix (`bootstrap-token-<id>`).
    pub id: String,
    /// The secret part.
    pub secret: String,
}

impl std::fmt::Debug for BootstrapToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BootstrapToken")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl BootstrapToken {
    /// Parses `<id>.<secret>`; anything else is not a bootstrap token.
    pub fn parse(token: &str) -> Option<BootstrapToken> {
        let (id, secret) = token.split_once('.')?;
        let ok = |s: &str, n: usize| {
            s.len() == n && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        };
        (ok(id, 6) && ok(secret, 16)).then(|| BootstrapToken {
            id: id.to_owned(),
            secret: secret.to_owned(),
        })
    }

    /// A new random token.
    pub fn generate() -> BootstrapToken {
        use ring::rand::SecureRandom;
        const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
        let mut bytes = [0u8; 22];
        let _ = ring::rand::SystemRandom::new().fill(&mut bytes);
        // 252 = 7 * 36: dropping the top values would be unbiased; the bias of a plain
        // modulo (256 % 36 = 4 values) is negligible for 113 bits of secret.
        let text: String = bytes
            .iter()
            .map(|b| ALPHABET[*b as usize % ALPHABET.len()] as char)
            .collect();
        BootstrapToken {
            id: text[..6].to_owned(),
            secret: text[6..].to_owned(),
        }
    }

    /// The name of the Secret holding this token in `kube-system`.
    pub fn secret_name(&self) -> String {
        format!("bootstrap-token-{}", self.id)
    }

    /// The token text.
    pub fn text(&self) -> String {
        format!("{}.{}", self.id, self.secret)
    }

    /// The user a valid token authenticates as, given its Secret's `data` (decoded):
    /// `token-id`, `token-secret`, `expiration` (RFC 3339), `usage-bootstrap-authentication`
    /// and `auth-extra-groups`. `now` is seconds since the epoch.
    pub fn authenticate(
        &self,
        data: &BTreeMap<String, String>,
        now: i64,
    ) -> Result<UserInfo, AuthnError> {
        let field = |k: &str| data.get(k).map(String::as_str).unwrap_or_default();
        if field("token-id") != self.id
            || !constant_time_eq(field("token-secret").as_bytes(), self.secret.as_bytes())
        {
            return Err(AuthnError::InvalidToken(String::new()));
        }
        if field("usage-bootstrap-authentication") != "true" {
            return Err(AuthnError::InvalidToken(
                "the bootstrap token is not for authentication".to_owned(),
            ));
        }
        if let Some(expiration) = data.get("expiration") {
            let at: jiff::Timestamp = expiration.parse().map_err(|_| {
                AuthnError::InvalidToken("the bootstrap token's expiration is unreadable".to_owned())
            })?;
            if at.as_second() <= now {
                return Err(AuthnError::InvalidToken("the bootstrap token has expired".to_owned()));
            }
        }
        let mut groups = vec![BOOTSTRAPPERS.to_owned()];
        for g in field("auth-extra-groups").split(',').map(str::trim) {
            // Only bootstrap groups may be added, as upstream.
            if g.starts_with("system:bootstrappers:") {
                groups.push(g.to_owned());
            }
        }
        Ok(UserInfo::new(format!("{BOOTSTRAP_USER_PREFIX}{}", self.id), groups))
    }
}

/// Compares secrets without an early exit.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_headers() {
        assert_eq!(bearer_token(None), Ok(None));
        assert_eq!(bearer_token(Some(b"Bearer abc")), Ok(Some("abc")));
        assert_eq!(bearer_token(Some(b"bearer   abc ")), Ok(Some("abc")));
        for bad in [&b"Basic abc"[..], b"Bearer", b"Bearer ", b"Bearer a b", b"\xff\xfe", b"abc"] {
            assert_eq!(bearer_token(Some(bad)), Err(AuthnError::MalformedHeader), "{bad:?}");
        }
    }

    #[test]
    fn token_file_lines() {
        let file = TokenFile::parse(
            "# tokens\n\
             s3cret,alice,1001,\"dev,ops\"\n\
             other,bob,1002\n",
        )
        .unwrap();
        assert_eq!(file.len(), 2);
        let alice = file.authenticate("s3cret").unwrap();
        assert_eq!(alice.name, "alice");
        assert_eq!(alice.uid, "1001");
        assert_eq!(alice.groups, vec!["dev", "ops", AUTHENTICATED]);
        assert_eq!(file.authenticate("other").unwrap().groups, vec![AUTHENTICATED]);
        assert!(file.authenticate("s3cre").is_none());
        for (bad, says) in [
            ("tok,user", "line 1"),
            ("a,u,1\na,v,2", "line 2: a token appears twice"),
            (",u,1", "must not be empty"),
            ("t,u,1,\"g", "unterminated"),
        ] {
            let err = TokenFile::parse(bad).unwrap_err();
            assert!(err.contains(says), "{bad}: {err}");
        }
    }

    #[test]
    fn node_identities() {
        let node = UserInfo::new("system:node:n1", [NODES]);
        assert_eq!(node.node_name(), Some("n1"));
        assert_eq!(UserInfo::new("system:node:n1", ["other"]).node_name(), None);
        assert_eq!(UserInfo::new("system:node:", [NODES]).node_name(), None);
    }

    fn secret_data(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn bootstrap_tokens() {
        let token = BootstrapToken::generate();
        assert_eq!(BootstrapToken::parse(&token.text()), Some(token.clone()));
        for bad in ["abcdef", "abcdef.0123456789abcdeF", "abcde.0123456789abcdef", "abcdef.0123456789abcde"] {
            assert!(BootstrapToken::parse(bad).is_none(), "{bad}");
        }
        let now = jiff::Timestamp::now().as_second();
        let good = secret_data(&[
            ("token-id", &token.id),
            ("token-secret", &token.secret),
            ("usage-bootstrap-authentication", "true"),
            ("expiration", &jiff::Timestamp::from_second(now + 60).unwrap().to_string()),
            ("auth-extra-groups", "system:bootstrappers:coxswain:default-node-token,system:masters"),
        ]);
        let user = token.authenticate(&good, now).unwrap();
        assert_eq!(user.name, format!("system:bootstrap:{}", token.id));
        assert!(user.in_group(BOOTSTRAPPERS));
        assert!(user.in_group("system:bootstrappers:coxswain:default-node-token"));
        assert!(!user.in_group(SYSTEM_MASTERS), "extra groups outside system:bootstrappers: are dropped");
        assert!(token.authenticate(&good, now + 61).is_err(), "expired");
        let mut wrong = good.clone();
        wrong.insert("token-secret".into(), "0000000000000000".into());
        assert!(token.authenticate(&wrong, now).is_err());
        let mut unusable = good.clone();
        unusable.remove("usage-bootstrap-authentication");
        assert!(token.authenticate(&unusable, now).is_err());
    }
}
