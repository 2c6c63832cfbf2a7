//! `--encryption-provider-config`: kube-apiserver's `EncryptionConfiguration` file, read into
//! the store's [`EncryptionConfig`]. Supported providers: `aesgcm` (keys of 16 or 32 bytes,
//! base64) and `identity`; the first provider of a resource seals new writes, every listed
//! key opens existing values.
//!
//! ```yaml
//! apiVersion: apiserver.config.k8s.io/v1
//! kind: EncryptionConfiguration
//! resources:
//!   - resources: [secrets]
//!     providers:
//!       - aesgcm:
//!           keys:
//!             - name: key1
//!               secret: <32 random bytes, base64>
//!       - identity: {}
//! ```

use base64::Engine;
use coxswain_store::{EncryptionConfig, EncryptionKey, EncryptionRule};
use serde::Deserialize;

use crate::registry::Registry;

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct File {
    #[serde(default)]
    api_version: String,
    #[serde(default)]
    kind: String,
    resources: Vec<ResourceConfig>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ResourceConfig {
    resources: Vec<String>,
    providers: Vec<Provider>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Provider {
    aesgcm: Option<Keys>,
    identity: Option<serde_yaml_ng::Value>,
    aescbc: Option<serde_yaml_ng::Value>,
    secretbox: Option<serde_yaml_ng::Value>,
    kms: Option<serde_yaml_ng::Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Keys {
    keys: Vec<Key>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Key {
    name: String,
    secret: String,
}

/// Parses an `EncryptionConfiguration`; errors name the resource, provider or key.
pub fn parse_encryption_config(text: &str) -> Result<EncryptionConfig, String> {
    let file: File = serde_yaml_ng::from_str(text).map_err(|e| format!("not an EncryptionConfiguration: {e}"))?;
    if !file.kind.is_empty() && file.kind != "EncryptionConfiguration" {
        return Err(format!("kind is {:?}, want EncryptionConfiguration", file.kind));
    }
    if !file.api_version.is_empty() && file.api_version != "apiserver.config.k8s.io/v1" {
        return Err(format!("apiVersion is {:?}, want apiserver.config.k8s.io/v1", file.api_version));
    }
    let registry = Registry::builtin();
    let mut config = EncryptionConfig::default();
    for (i, rc) in file.resources.iter().enumerate() {
        let at = format!("resources[{i}]");
        if rc.providers.is_empty() {
            return Err(format!("{at}.providers: at least one provider is required"));
        }
        let mut prefixes = Vec::new();
        for name in &rc.resources {
            let (plural, group) = name.split_once('.').unwrap_or((name.as_str(), ""));
            let rt = registry
                .all()
                .iter()
                .find(|t| t.plural == plural && t.group == group && !t.create_only)
                .ok_or_else(|| format!("{at}.resources: {name:?} is not a served resource"))?;
            prefixes.push(rt.prefix());
        }
        let mut keys = Vec::new();
        let mut seal = false;
        for (j, p) in rc.providers.iter().enumerate() {
            let pat = format!("{at}.providers[{j}]");
            let set = [p.aesgcm.is_some(), p.identity.is_some(), p.aescbc.is_some(), p.secretbox.is_some(), p.kms.is_some()];
            if set.iter().filter(|s| **s).count() != 1 {
                return Err(format!("{pat}: exactly one provider per entry"));
            }
            if p.aescbc.is_some() || p.secretbox.is_some() || p.kms.is_some() {
                return Err(format!("{pat}: only the aesgcm and identity providers are supported"));
            }
            if let Some(aes) = &p.aesgcm {
                if aes.keys.is_empty() {
                    return Err(format!("{pat}.aesgcm.keys: at least one key is required"));
                }
                for (k, key) in aes.keys.iter().enumerate() {
                    let secret = base64::engine::general_purpose::STANDARD
                        .decode(key.secret.trim())
                        .map_err(|e| format!("{pat}.aesgcm.keys[{k}].secret: not base64: {e}"))?;
                    keys.push(
                        EncryptionKey::new(&key.name, &secret)
                            .map_err(|e| format!("{pat}.aesgcm.keys[{k}]: {e}"))?,
                    );
                }
                if j == 0 {
                    seal = true;
                }
            }
        }
        config.rules.push(EncryptionRule { prefixes, keys, seal });
    }
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "c2VjcmV0IGlzIHNlY3VyZSwgSSB0aGluayBzbyB5ZXM="; // 32 bytes

    #[test]
    fn upstream_files_parse() {
        let config = parse_encryption_config(&format!(
            "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n\
             - resources: [secrets, configmaps]\n  providers:\n  - aesgcm:\n      keys:\n      - name: k1\n        secret: {KEY}\n  - identity: {{}}\n"
        ))
        .unwrap();
        assert_eq!(config.rules.len(), 1);
        assert_eq!(config.rules[0].prefixes, ["/registry/core/secrets/", "/registry/core/configmaps/"]);
        assert!(config.rules[0].seal);
        let identity_first = parse_encryption_config(&format!(
            "resources:\n- resources: [secrets]\n  providers:\n  - identity: {{}}\n  - aesgcm:\n      keys:\n      - name: k1\n        secret: {KEY}\n"
        ))
        .unwrap();
        assert!(!identity_first.rules[0].seal);
        assert_eq!(identity_first.rules[0].keys.len(), 1);
    }

    #[test]
    fn bad_files_name_what_is_wrong() {
        for (text, says) in [
            ("resources:\n- resources: [widgets]\n  providers:\n  - identity: {}\n", "resources[0].resources: \"widgets\""),
            ("resources:\n- resources: [secrets]\n  providers:\n  - aescbc: {keys: []}\n", "only the aesgcm and identity"),
            ("resources:\n- resources: [secrets]\n  providers:\n  - aesgcm:\n      keys:\n      - name: k\n        secret: c2hvcnQ=\n", "16 or 32 bytes"),
            ("resources:\n- resources: [secrets]\n  providers: []\n", "at least one provider"),
            ("kind: Pod\nresources: []\n", "want EncryptionConfiguration"),
            ("nonsense: true\n", "not an EncryptionConfiguration"),
        ] {
            let err = parse_encryption_config(text).unwrap_err();
            assert!(err.contains(says), "{text}: {err}");
        }
    }
}
