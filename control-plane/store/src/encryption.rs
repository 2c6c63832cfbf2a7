//! Encryption at rest: a [`Store`] decorator that seals the values of chosen key prefixes
//! with AES-GCM before they reach the backend and opens them on every read and watch event,
//! as kube-apiserver's value transformers do (`--encryption-provider-config`).
//!
//! A sealed value is `k8s:enc:aesgcm:v1:<key name>:` followed by a random 12-byte nonce and
//! the ciphertext with its tag; the storage key is the additional authenticated data, so a
//! value copied under another key does not open. Values written before encryption was turned
//! on (no prefix) are read as they are, and rewritten sealed on their next update. Several
//! keys may be configured: the first seals, all open (rotation).

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use ring::aead::{AES_128_GCM, AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};
use tokio::sync::mpsc;

use crate::{
    Deleted, Error, Event, KeyValue, ListOptions, ListResult, Result, Revision, Store, WatchStream,
};

const PREFIX: &str = "k8s:enc:aesgcm:v1:";

/// One named AES-GCM key.
pub struct EncryptionKey {
    name: String,
    key: LessSafeKey,
}

impl std::fmt::Debug for EncryptionKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EncryptionKey")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl EncryptionKey {
    /// A key named `name` from 16 or 32 raw bytes (AES-128 or AES-256).
    pub fn new(name: &str, secret: &[u8]) -> std::result::Result<EncryptionKey, String> {
        if name.is_empty() || name.contains(':') {
            return Err(format!("key name {name:?} must be non-empty and contain no ':'"));
        }
        let algorithm = match secret.len() {
            16 => &AES_128_GCM,
            32 => &AES_256_GCM,
            n => return Err(format!("key {name:?} is {n} bytes; AES-GCM keys are 16 or 32 bytes")),
        };
        let key = UnboundKey::new(algorithm, secret).map_err(|_| format!("key {name:?} is unusable"))?;
        Ok(EncryptionKey {
            name: name.to_owned(),
            key: LessSafeKey::new(key),
        })
    }
}

/// How the values under one key prefix are kept.
#[derive(Debug)]
pub struct EncryptionRule {
    /// The key prefixes it applies to (`/registry/core/secrets/`).
    pub prefixes: Vec<String>,
    /// Keys that open values; the first also seals new writes when `seal` is set.
    pub keys: Vec<EncryptionKey>,
    /// Whether writes are sealed (`false`: written in plaintext, as an `identity` provider
    /// listed first, while existing sealed values still open).
    pub seal: bool,
}

/// Which key prefixes are sealed, and with what keys; the first matching rule applies.
#[derive(Debug, Default)]
pub struct EncryptionConfig {
    /// The rules.
    pub rules: Vec<EncryptionRule>,
}

/// A store whose values under configured prefixes are encrypted at rest.
#[derive(Debug)]
pub struct EncryptedStore {
    inner: Arc<dyn Store>,
    config: Arc<EncryptionConfig>,
}

impl EncryptedStore {
    /// Wraps `inner`.
    pub fn new(inner: Arc<dyn Store>, config: EncryptionConfig) -> EncryptedStore {
        EncryptedStore {
            inner,
            config: Arc::new(config),
        }
    }
}

fn sealing_key<'a>(config: &'a EncryptionConfig, key: &str) -> Option<&'a EncryptionKey> {
    config
        .rules
        .iter()
        .find(|r| r.prefixes.iter().any(|p| key.starts_with(p.as_str())))
        .filter(|r| r.seal)
        .and_then(|r| r.keys.first())
}

fn crypto_error(key: &str, what: &'static str) -> Error {
    Error::Backend {
        op: "decrypt a stored value",
        source: format!("{key}: {what}").into(),
    }
}

/// Seals `value` for `key` (unchanged when the key's prefix is not encrypted).
fn seal(config: &EncryptionConfig, key: &str, value: Bytes) -> Result<Bytes> {
    let Some(first) = sealing_key(config, key) else {
        return Ok(value);
    };
    let mut nonce = [0u8; NONCE_LEN];
    SystemRandom::new()
        .fill(&mut nonce)
        .map_err(|_| crypto_error(key, "no randomness for a nonce"))?;
    let mut sealed = value.to_vec();
    first
        .key
        .seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::from(key.as_bytes()), &mut sealed)
        .map_err(|_| crypto_error(key, "encryption failed"))?;
    let header = format!("{PREFIX}{}:", first.name);
    let mut out = Vec::with_capacity(header.len() + NONCE_LEN + sealed.len());
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&sealed);
    Ok(Bytes::from(out))
}

/// Opens a stored value (plaintext values pass through).
fn open(config: &EncryptionConfig, key: &str, value: Bytes) -> Result<Bytes> {
    let Some(rest) = value.strip_prefix(PREFIX.as_bytes()) else {
        return Ok(value);
    };
    let colon = rest
        .iter()
        .position(|b| *b == b':')
        .ok_or_else(|| crypto_error(key, "malformed encrypted value"))?;
    let name = std::str::from_utf8(&rest[..colon]).map_err(|_| crypto_error(key, "malformed key name"))?;
    let body = &rest[colon + 1..];
    if body.len() < NONCE_LEN {
        return Err(crypto_error(key, "truncated encrypted value"));
    }
    let k = config
        .rules
        .iter()
        .flat_map(|r| r.keys.iter())
        .find(|k| k.name == name)
        .ok_or_else(|| crypto_error(key, "sealed with a key that is not configured"))?;
    let mut nonce = [0u8; NONCE_LEN];
    nonce.copy_from_slice(&body[..NONCE_LEN]);
    let mut buf = body[NONCE_LEN..].to_vec();
    let plain = k
        .key
        .open_in_place(Nonce::assume_unique_for_key(nonce), Aad::from(key.as_bytes()), &mut buf)
        .map_err(|_| crypto_error(key, "authentication failed (wrong key or tampered value)"))?;
    Ok(Bytes::copy_from_slice(plain))
}

fn open_kv(config: &EncryptionConfig, mut kv: KeyValue) -> Result<KeyValue> {
    kv.value = open(config, &kv.key, kv.value)?;
    Ok(kv)
}

fn open_event(config: &EncryptionConfig, event: Event) -> Result<Event> {
    Ok(match event {
        Event::Put { kv, prev } => Event::Put {
            kv: open_kv(config, kv)?,
            prev: prev.map(|p| open_kv(config, p)).transpose()?,
        },
        Event::Delete { key, prev, revision } => Event::Delete {
            key,
            prev: open_kv(config, prev)?,
            revision,
        },
        progress @ Event::Progress { .. } => progress,
    })
}

#[async_trait]
impl Store for EncryptedStore {
    async fn get(&self, key: &str, at: Option<Revision>) -> Result<(Option<KeyValue>, Revision)> {
        let (kv, rev) = self.inner.get(key, at).await?;
        Ok((kv.map(|kv| open_kv(&self.config, kv)).transpose()?, rev))
    }

    async fn list(&self, prefix: &str, opts: ListOptions) -> Result<ListResult> {
        let mut page = self.inner.list(prefix, opts).await?;
        page.items = page
            .items
            .into_iter()
            .map(|kv| open_kv(&self.config, kv))
            .collect::<Result<_>>()?;
        Ok(page)
    }

    async fn count(&self, prefix: &str) -> Result<i64> {
        self.inner.count(prefix).await
    }

    async fn create(&self, key: &str, value: Bytes) -> Result<KeyValue> {
        let sealed = seal(&self.config, key, value.clone())?;
        let mut kv = self.inner.create(key, sealed).await?;
        kv.value = value;
        Ok(kv)
    }

    async fn update(&self, key: &str, value: Bytes, expected_mod_revision: Revision) -> Result<KeyValue> {
        let sealed = seal(&self.config, key, value.clone())?;
        let mut kv = self.inner.update(key, sealed, expected_mod_revision).await?;
        kv.value = value;
        Ok(kv)
    }

    async fn delete(&self, key: &str, expected_mod_revision: Option<Revision>) -> Result<Deleted> {
        let mut deleted = self.inner.delete(key, expected_mod_revision).await?;
        deleted.prev = open_kv(&self.config, deleted.prev)?;
        Ok(deleted)
    }

    async fn watch(&self, key_or_prefix: &str, from: Revision) -> Result<WatchStream> {
        let mut inner = self.inner.watch(key_or_prefix, from).await?;
        let config = self.config.clone();
        let (tx, rx) = mpsc::channel(256);
        let producer = tokio::spawn(async move {
            while let Some(item) = inner.next().await {
                let item = item.and_then(|e| open_event(&config, e));
                let stop = item.is_err();
                if tx.send(item).await.is_err() || stop {
                    return;
                }
            }
        });
        Ok(WatchStream::new(rx, producer))
    }

    async fn current_revision(&self) -> Result<Revision> {
        self.inner.current_revision().await
    }

    async fn compact(&self, revision: Revision) -> Result<()> {
        self.inner.compact(revision).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{EmbeddedConfig, EmbeddedStore};

    fn config(keys: &[(&str, [u8; 32])]) -> EncryptionConfig {
        EncryptionConfig {
            rules: vec![EncryptionRule {
                prefixes: vec!["/registry/core/secrets/".to_owned()],
                keys: keys.iter().map(|(n, k)| EncryptionKey::new(n, k).unwrap()).collect(),
                seal: true,
            }],
        }
    }

    #[tokio::test]
    async fn secrets_are_sealed_at_rest_and_read_back_unchanged() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let raw: Arc<dyn Store> = Arc::new(EmbeddedStore::open(EmbeddedConfig::new(dir.path().join("s.redb"))).await?);
        let store = EncryptedStore::new(raw.clone(), config(&[("k1", [7; 32])]));
        let secret = Bytes::from_static(br#"{"data":{"password":"aHVudGVyMg=="}}"#);
        let key = "/registry/core/secrets/default/db";
        let mut watch = store.watch("/registry/core/secrets/", 0).await?;
        let created = store.create(key, secret.clone()).await?;
        assert_eq!(created.value, secret);
        let (stored, _) = raw.get(key, None).await?;
        let stored = stored.unwrap().value;
        assert!(stored.starts_with(b"k8s:enc:aesgcm:v1:k1:"), "{stored:?}");
        assert!(!stored.windows(8).any(|w| w == b"aHVudGVy"), "plaintext visible at rest");
        assert_eq!(store.get(key, None).await?.0.unwrap().value, secret);
        assert_eq!(store.list("/registry/core/secrets/", ListOptions::default()).await?.items[0].value, secret);
        match watch.next().await.unwrap()? {
            Event::Put { kv, .. } => assert_eq!(kv.value, secret),
            other => panic!("{other:?}"),
        }
        // Other prefixes stay plaintext.
        store.create("/registry/core/configmaps/default/c", Bytes::from_static(b"{}")).await?;
        assert_eq!(raw.get("/registry/core/configmaps/default/c", None).await?.0.unwrap().value, Bytes::from_static(b"{}"));
        // A value moved under another key does not open (the key is authenticated).
        raw.create("/registry/core/secrets/default/copy", stored.clone()).await?;
        assert!(store.get("/registry/core/secrets/default/copy", None).await.is_err());
        // Rotation: a new first key seals new writes; the old one still opens old values.
        let rotated = EncryptedStore::new(raw.clone(), config(&[("k2", [9; 32]), ("k1", [7; 32])]));
        assert_eq!(rotated.get(key, None).await?.0.unwrap().value, secret);
        let rev = rotated.get(key, None).await?.0.unwrap().mod_revision;
        rotated.update(key, secret.clone(), rev).await?;
        assert!(raw.get(key, None).await?.0.unwrap().value.starts_with(b"k8s:enc:aesgcm:v1:k2:"));
        // Without the key, the value cannot be read; a plaintext value written before
        // encryption reads as it is.
        let wrong = EncryptedStore::new(raw.clone(), config(&[("k1", [1; 32])]));
        assert!(wrong.get("/registry/core/secrets/default/copy", None).await.is_err());
        raw.create("/registry/core/secrets/default/old", Bytes::from_static(b"{\"old\":1}")).await?;
        assert_eq!(store.get("/registry/core/secrets/default/old", None).await?.0.unwrap().value, Bytes::from_static(b"{\"old\":1}"));
        Ok(())
    }

    #[test]
    fn keys_must_be_aes_sized_and_named() {
        assert!(EncryptionKey::new("k", &[0; 16]).is_ok());
        assert!(EncryptionKey::new("k", &[0; 24]).is_err());
        assert!(EncryptionKey::new("", &[0; 32]).is_err());
        assert!(EncryptionKey::new("a:b", &[0; 32]).is_err());
    }
}
