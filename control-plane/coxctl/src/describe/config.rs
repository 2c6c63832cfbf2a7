//! ConfigMaps (data as written) and Secrets (sizes only, never values).

use serde_json::Value;

use super::text::{Text, header, or_none};

/// ConfigMaps as kubectl prints them: each key, a rule, its value as written.
pub fn describe_config_map(text: &mut Text, o: &Value) {
    header(text, o, true);
    text.raw("");
    text.raw("Data");
    text.raw("====");
    for (k, v) in o["data"].as_object().into_iter().flatten() {
        text.raw(&format!("{k}:"));
        text.raw("----");
        text.raw(v.as_str().unwrap_or_default());
        text.raw("");
    }
    text.raw("");
    text.raw("BinaryData");
    text.raw("====");
    for (k, v) in o["binaryData"].as_object().into_iter().flatten() {
        let bytes = v
            .as_str()
            .map_or(0, |b64| b64.trim_end_matches('=').len() * 3 / 4);
        text.raw(&format!("{k}: {bytes} bytes"));
    }
    text.raw("");
}

/// Secrets: sizes only, never values.
pub fn describe_secret(text: &mut Text, o: &Value) {
    header(text, o, true);
    text.raw("");
    text.kv(0, "Type", or_none(o["type"].as_str()));
    text.raw("");
    text.raw("Data");
    text.raw("====");
    for (k, v) in o["data"].as_object().into_iter().flatten() {
        let bytes = v
            .as_str()
            .map_or(0, |b64| b64.trim_end_matches('=').len() * 3 / 4);
        text.kv(0, k, format!("{bytes} bytes"));
    }
}
