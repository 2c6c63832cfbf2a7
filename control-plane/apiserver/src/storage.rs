//! How objects are kept in the store: JSON bytes without `resourceVersion` (the key's mod
//! revision is the resourceVersion, injected on every read).

use bytes::Bytes;
use coxswain_store::KeyValue;
use serde_json::Value;

use crate::object;
use crate::status::{ApiError, Result};

/// Encodes an object for the store, dropping its `resourceVersion`.
pub fn encode(obj: &Value) -> Result<Bytes> {
    let mut obj = obj.clone();
    if let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.remove("resourceVersion");
    }
    serde_json::to_vec(&obj)
        .map(Bytes::from)
        .map_err(|e| ApiError::Internal(format!("failed to encode object: {e}")))
}

/// Decodes a stored object and stamps it with its mod revision as `resourceVersion`.
pub fn decode(kv: &KeyValue) -> Result<Value> {
    decode_at(&kv.key, &kv.value, kv.mod_revision)
}

/// Decodes stored bytes, stamping `revision` as `resourceVersion`.
pub fn decode_at(key: &str, bytes: &[u8], revision: i64) -> Result<Value> {
    let mut obj: Value = serde_json::from_slice(bytes)
        .map_err(|e| ApiError::Internal(format!("failed to decode stored object {key}: {e}")))?;
    object::set_resource_version(&mut obj, revision);
    Ok(obj)
}

/// Parses a `resourceVersion` string.
pub fn parse_resource_version(rv: &str) -> Result<i64> {
    rv.parse::<i64>()
        .ok()
        .filter(|n| *n >= 0)
        .ok_or_else(|| ApiError::BadRequest(format!("invalid resource version: {rv:?}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn resource_version_is_never_stored() {
        let obj = json!({"metadata": {"name": "a", "resourceVersion": "7"}});
        let bytes = encode(&obj).unwrap();
        assert!(!String::from_utf8_lossy(&bytes).contains("resourceVersion"));
        let back = decode_at("/k", &bytes, 9).unwrap();
        assert_eq!(back["metadata"]["resourceVersion"], "9");
        assert!(parse_resource_version("x").is_err());
        assert_eq!(parse_resource_version("12").unwrap(), 12);
    }
}
