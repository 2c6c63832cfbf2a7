//! Request bodies in (JSON, YAML or Kubernetes protobuf, size-limited) and responses out
//! (JSON, tables).


use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde_json::Value;

use crate::protobuf;
use crate::status::{ApiError, Result};

/// The media types a body may have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyType {
    /// `application/json` (or no content type).
    Json,
    /// `application/yaml`.
    Yaml,
    /// `application/json-patch+json` (RFC 6902).
    JsonPatch,
    /// `application/merge-patch+json` (RFC 7386).
    MergePatch,
    /// `application/strategic-merge-patch+json`.
    StrategicMergePatch,
    /// `application/apply-patch+yaml` (server-side apply).
    ApplyPatch,
    /// `application/vnd.kubernetes.protobuf` (kubectl's typed clients; create and update
    /// only). Responses are never protobuf: every client that sends it also accepts JSON.
    Protobuf,
}

/// The body's media type from `Content-Type`, without parameters.
pub fn body_type(headers: &HeaderMap) -> Result<BodyType> {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json");
    let media = ct
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    Ok(match media.as_str() {
        "" | "application/json" | "*/*" | "text/plain" => BodyType::Json,
        "application/yaml" | "application/x-yaml" | "text/yaml" => BodyType::Yaml,
        "application/json-patch+json" => BodyType::JsonPatch,
        "application/merge-patch+json" => BodyType::MergePatch,
        "application/strategic-merge-patch+json" => BodyType::StrategicMergePatch,
        "application/apply-patch+yaml" => BodyType::ApplyPatch,
        protobuf::MEDIA_TYPE => BodyType::Protobuf,
        other => {
            return Err(ApiError::UnsupportedMediaType(format!(
                "{other:?} is not supported: use application/json, application/yaml, \
                 application/json-patch+json, application/merge-patch+json, \
                 application/strategic-merge-patch+json, application/apply-patch+yaml or \
                 application/vnd.kubernetes.protobuf"
            )));
        }
    })
}

/// How much of an oversized body is read (and dropped) before answering 413, so that the
/// client finishes sending and reads the answer instead of seeing a reset connection.
const DRAIN_FACTOR: usize = 8;

/// Reads a whole body, refusing more than `limit` bytes with 413.
pub async fn read_body(_headers: &HeaderMap, body: Body, limit: usize) -> Result<Bytes> {
    use http_body_util::BodyExt;
    let mut body = body;
    let mut buf = bytes::BytesMut::new();
    let mut seen = 0usize;
    while let Some(frame) = body.frame().await {
        let frame = frame
            .map_err(|e| ApiError::BadRequest(format!("failed to read the request body: {e}")))?;
        if let Ok(data) = frame.into_data() {
            seen += data.len();
            if seen <= limit {
                buf.extend_from_slice(&data);
            } else if seen > limit * DRAIN_FACTOR {
                break;
            }
        }
    }
    if seen > limit {
        return Err(ApiError::TooLarge { limit });
    }
    Ok(buf.freeze())
}

/// Decodes a JSON, YAML or protobuf body into a JSON value.
pub fn decode(bytes: &[u8], ty: BodyType) -> Result<Value> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::BadRequest("the request body is empty".to_owned()));
    }
    match ty {
        BodyType::Protobuf => Ok(protobuf::decode(bytes)?),
        BodyType::Yaml | BodyType::ApplyPatch => {
            // JSON is YAML, but serde_json gives better messages for it.
            if let Ok(v) = serde_json::from_slice::<Value>(bytes) {
                return Ok(v);
            }
            serde_yaml_ng::from_slice::<Value>(bytes)
                .map_err(|e| ApiError::BadRequest(format!("error decoding YAML: {e}")))
        }
        _ => serde_json::from_slice(bytes).map_err(|e| {
            ApiError::BadRequest(format!(
                "the body of the request could not be decoded as JSON: {e}"
            ))
        }),
    }
}

/// Whether the client asked for a `meta.k8s.io` `Table` (kubectl get).
pub fn wants_table(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|media| {
            let params: Vec<&str> = media.split(';').map(str::trim).collect();
            params.contains(&"as=Table") && params.contains(&"g=meta.k8s.io")
        })
}

/// A JSON response.
pub fn json_response(code: StatusCode, value: &Value) -> Response {
    json_bytes_response(code, serde_json::to_vec(value).unwrap_or_default().into())
}

/// A response with an already encoded JSON body.
pub fn json_bytes_response(code: StatusCode, body: Bytes) -> Response {
    let mut response = (code, body).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// Adds `Warning: 299` headers (kubectl prints them as `Warning: ...`).
pub fn add_warnings(response: &mut Response, warnings: &[String]) {
    for w in warnings {
        let text = format!("299 - {:?}", w);
        if let Ok(v) = HeaderValue::from_str(&text) {
            response.headers_mut().append(header::WARNING, v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_json_and_yaml() {
        assert_eq!(decode(b"{\"a\":1}", BodyType::Json).unwrap()["a"], 1);
        assert_eq!(
            decode(b"a: 1\nb: [x]\n", BodyType::Yaml).unwrap()["b"][0],
            "x"
        );
        assert!(matches!(
            decode(b"{", BodyType::Json),
            Err(ApiError::BadRequest(_))
        ));
        assert!(matches!(
            decode(b"a: [", BodyType::Yaml),
            Err(ApiError::BadRequest(_))
        ));
        assert!(matches!(
            decode(b"  ", BodyType::Json),
            Err(ApiError::BadRequest(_))
        ));
    }

    #[test]
    fn detects_table_requests() {
        let mut h = HeaderMap::new();
        h.insert(
            header::ACCEPT,
            HeaderValue::from_static(
                "application/json;as=Table;v=v1;g=meta.k8s.io,application/json",
            ),
        );
        assert!(wants_table(&h));
        h.insert(header::ACCEPT, HeaderValue::from_static("application/json"));
        assert!(!wants_table(&h));
    }

    #[test]
    fn content_types() {
        let mut h = HeaderMap::new();
        assert_eq!(body_type(&h).unwrap(), BodyType::Json);
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/merge-patch+json; charset=utf-8"),
        );
        assert_eq!(body_type(&h).unwrap(), BodyType::MergePatch);
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/vnd.kubernetes.protobuf"),
        );
        assert_eq!(body_type(&h).unwrap(), BodyType::Protobuf);
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/cbor"),
        );
        assert!(matches!(
            body_type(&h),
            Err(ApiError::UnsupportedMediaType(_))
        ));
    }
}
