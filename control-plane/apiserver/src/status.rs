//! API errors and their rendering as Kubernetes `Status` objects (the body of every failure).

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

/// One reason an object is invalid: a `Status` `details.causes` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cause {
    /// The JSON path of the field, e.g. `metadata.name` or `spec.containers[0].image`.
    pub field: String,
    /// The machine-readable reason: `FieldValueRequired`, `FieldValueInvalid`, ...
    pub reason: &'static str,
    /// A human-readable message.
    pub message: String,
}

impl Cause {
    /// A required field that is missing.
    pub fn required(field: impl Into<String>) -> Cause {
        Cause {
            field: field.into(),
            reason: "FieldValueRequired",
            message: "Required value".to_owned(),
        }
    }

    /// A field whose value is not acceptable, with the value shown and why.
    pub fn invalid(field: impl Into<String>, value: &str, detail: impl AsRef<str>) -> Cause {
        Cause {
            field: field.into(),
            reason: "FieldValueInvalid",
            message: format!("Invalid value: {value:?}: {}", detail.as_ref()),
        }
    }

    /// [`Cause::invalid`] for a JSON value, shown as upstream shows values: numbers and
    /// booleans bare (`Invalid value: -3`), strings quoted.
    pub fn invalid_value(field: impl Into<String>, value: &Value, detail: impl AsRef<str>) -> Cause {
        let shown = match value {
            Value::String(s) => format!("{s:?}"),
            other => other.to_string(),
        };
        Cause {
            field: field.into(),
            reason: "FieldValueInvalid",
            message: format!("Invalid value: {shown}: {}", detail.as_ref()),
        }
    }

    /// A value outside a fixed set of choices.
    pub fn not_supported(field: impl Into<String>, value: &str, supported: &[&str]) -> Cause {
        let choices: Vec<String> = supported.iter().map(|s| format!("{s:?}")).collect();
        Cause {
            field: field.into(),
            reason: "FieldValueNotSupported",
            message: format!(
                "Unsupported value: {value:?}: supported values: {}",
                choices.join(", ")
            ),
        }
    }

    /// A field that may not change after creation.
    pub fn immutable(field: impl Into<String>) -> Cause {
        Cause {
            field: field.into(),
            reason: "FieldValueInvalid",
            message: "field is immutable".to_owned(),
        }
    }

    /// A value already used by another object (an allocated port or address).
    pub fn duplicate(field: impl Into<String>, value: &str, detail: impl AsRef<str>) -> Cause {
        Cause {
            field: field.into(),
            reason: "FieldValueDuplicate",
            message: format!("Duplicate value: {value:?}: {}", detail.as_ref()),
        }
    }

    fn to_json(&self) -> Value {
        // As upstream's `field.Error.ErrorBody()`: clients (kubectl edit, describe) print
        // the field before it themselves.
        json!({"field": self.field, "reason": self.reason, "message": self.message})
    }
}

/// What identifies the object an error is about, for `Status.details`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Target {
    /// API group (empty for core).
    pub group: String,
    /// The plural resource name (`pods`), as upstream puts in `details.kind`.
    pub resource: String,
    /// The object name, if known.
    pub name: String,
}

impl Target {
    /// The object `name` of `resource` in `group`.
    pub fn new(group: &str, resource: &str, name: &str) -> Target {
        Target {
            group: group.to_owned(),
            resource: resource.to_owned(),
            name: name.to_owned(),
        }
    }

    /// `pods "web"` or `deployments.apps "web"`, as upstream messages name objects.
    fn qualified(&self) -> String {
        if self.group.is_empty() {
            self.resource.clone()
        } else {
            format!("{}.{}", self.resource, self.group)
        }
    }
}

/// Everything a request can fail with; each variant maps to one HTTP status and `reason`.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The request itself is malformed (400 BadRequest).
    #[error("{0}")]
    BadRequest(String),
    /// The object does not exist (404 NotFound).
    #[error("{} \"{}\" not found", .0.qualified(), .0.name)]
    NotFound(Target),
    /// The request carries no valid credentials (401 Unauthorized).
    #[error("Unauthorized")]
    Unauthorized,
    /// The URL names no resource or endpoint this server has (404 NotFound).
    #[error("the server could not find the requested resource")]
    NoSuchResource,
    /// The method is not supported on this URL (405 MethodNotAllowed).
    #[error("the server does not allow this method on the requested resource")]
    MethodNotAllowed,
    /// `create` of an object that exists (409 AlreadyExists).
    #[error("{} \"{}\" already exists", .0.qualified(), .0.name)]
    AlreadyExists(Target),
    /// A stale `resourceVersion` or failed precondition (409 Conflict).
    #[error("Operation cannot be fulfilled on {} \"{}\": {}", .0.qualified(), .0.name, .1)]
    Conflict(Target, String),
    /// A server-side apply would change fields other managers own (409 Conflict), with one
    /// `FieldManagerConflict` cause per field.
    #[error("{message}")]
    ApplyConflict {
        /// Upstream's summary (`Apply failed with 1 conflict: ...`).
        message: String,
        /// `(field, owner)` pairs: `.spec.replicas`, `conflict with "kubectl-scale" ...`.
        causes: Vec<(String, String)>,
    },
    /// The object is invalid (422 Invalid) with per-field causes.
    #[error("{kind} \"{}\" is invalid: {}", .target.name, render_causes(.causes))]
    Invalid {
        /// The kind (`Pod`), as upstream names it in Invalid messages.
        kind: String,
        /// The object.
        target: Target,
        /// What is wrong, per field.
        causes: Vec<Cause>,
    },
    /// A resourceVersion older than the retained history (410 Gone, reason Expired).
    #[error("too old resource version: {requested} ({oldest})")]
    Expired {
        /// The version the client asked for.
        requested: i64,
        /// The oldest version still available.
        oldest: i64,
    },
    /// The request is refused whatever its content, e.g. in a terminating namespace
    /// (403 Forbidden).
    #[error("{message}")]
    Forbidden {
        /// The object the request was about.
        target: Target,
        /// Why.
        message: String,
    },
    /// The body is larger than the server accepts (413 RequestEntityTooLarge).
    #[error("the request body is too large: the limit is {limit} bytes")]
    TooLarge {
        /// The limit in bytes.
        limit: usize,
    },
    /// The body's content type cannot be decoded (415 UnsupportedMediaType).
    #[error("the body of the request was in an unknown format - accepted media types include: {0}")]
    UnsupportedMediaType(String),
    /// A resourceVersion newer than the server has seen, or a write that took too long
    /// (504 Timeout).
    #[error("{0}")]
    Timeout(String),
    /// The store cannot be reached (503 ServiceUnavailable).
    #[error("{0}")]
    Unavailable(String),
    /// A server-side fault (500 InternalError). Never caused by client input.
    #[error("Internal error occurred: {0}")]
    Internal(String),
}

fn render_causes(causes: &[Cause]) -> String {
    let parts: Vec<String> = causes
        .iter()
        .map(|c| format!("{}: {}", c.field, c.message))
        .collect();
    if parts.len() == 1 {
        parts[0].clone()
    } else {
        format!("[{}]", parts.join(", "))
    }
}

/// Result of an API operation.
pub type Result<T, E = ApiError> = std::result::Result<T, E>;

impl ApiError {
    /// The HTTP status code.
    pub fn code(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::NotFound(_) | ApiError::NoSuchResource => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::AlreadyExists(_)
            | ApiError::Conflict(..)
            | ApiError::ApplyConflict { .. } => StatusCode::CONFLICT,
            ApiError::Invalid { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::Expired { .. } => StatusCode::GONE,
            ApiError::Forbidden { .. } => StatusCode::FORBIDDEN,
            ApiError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The `Status.reason`.
    pub fn reason(&self) -> &'static str {
        match self {
            ApiError::BadRequest(_) => "BadRequest",
            ApiError::Unauthorized => "Unauthorized",
            ApiError::NotFound(_) | ApiError::NoSuchResource => "NotFound",
            ApiError::MethodNotAllowed => "MethodNotAllowed",
            ApiError::AlreadyExists(_) => "AlreadyExists",
            ApiError::Conflict(..) | ApiError::ApplyConflict { .. } => "Conflict",
            ApiError::Invalid { .. } => "Invalid",
            ApiError::Expired { .. } => "Expired",
            ApiError::Forbidden { .. } => "Forbidden",
            ApiError::TooLarge { .. } => "RequestEntityTooLarge",
            ApiError::UnsupportedMediaType(_) => "UnsupportedMediaType",
            ApiError::Timeout(_) => "Timeout",
            ApiError::Unavailable(_) => "ServiceUnavailable",
            ApiError::Internal(_) => "InternalError",
        }
    }

    /// The `Status` object for this error.
    pub fn to_status(&self) -> Value {
        let mut status = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.to_string(),
            "reason": self.reason(),
            "code": self.code().as_u16(),
        });
        let details = match self {
            ApiError::NotFound(t)
            | ApiError::AlreadyExists(t)
            | ApiError::Conflict(t, _)
            | ApiError::Forbidden { target: t, .. } => Some(target_details(t)),
            ApiError::Invalid {
                kind,
                target,
                causes,
            } => {
                let mut d = target_details(target);
                // A qualified kind (`PatchOptions.meta.k8s.io`) names its group.
                match kind.split_once('.') {
                    Some((kind, group)) => {
                        d["kind"] = json!(kind);
                        d["group"] = json!(group);
                    }
                    None => d["kind"] = json!(kind),
                }
                d["causes"] = causes.iter().map(Cause::to_json).collect();
                Some(d)
            }
            ApiError::ApplyConflict { causes, .. } => Some(json!({
                "causes": causes
                    .iter()
                    .map(|(field, message)| json!({
                        "reason": "FieldManagerConflict",
                        "message": message,
                        "field": field,
                    }))
                    .collect::<Vec<_>>(),
            })),
            _ => None,
        };
        if let Some(details) = details {
            status["details"] = details;
        }
        status
    }

    /// Maps a store error about `target` to the API error a client should see.
    pub fn from_store(err: coxswain_store::Error, target: &Target) -> ApiError {
        use coxswain_store::Error as S;
        match err {
            S::NotFound { .. } => ApiError::NotFound(target.clone()),
            S::AlreadyExists { .. } => ApiError::AlreadyExists(target.clone()),
            S::Conflict { .. } => ApiError::Conflict(
                target.clone(),
                "the object has been modified; please apply your changes to the latest version and try again".to_owned(),
            ),
            S::Compacted {
                requested,
                compacted,
            } => ApiError::Expired {
                requested,
                oldest: compacted,
            },
            S::FutureRevision { requested, current } => ApiError::Timeout(format!(
                "Too large resource version: {requested}, current: {current}"
            )),
            S::InvalidRevision { revision, reason } => {
                ApiError::BadRequest(format!("invalid resourceVersion {revision}: {reason}"))
            }
            S::InvalidContinue { .. } => ApiError::BadRequest(
                "the provided continue parameter is not valid for this list".to_owned(),
            ),
            S::ValueTooLarge { size, limit, .. } => ApiError::TooLarge {
                limit: limit.min(size),
            },
            S::InvalidKey { .. } => ApiError::BadRequest(format!("invalid object key: {err}")),
            S::Unavailable { .. } => ApiError::Unavailable(err.to_string()),
            other => ApiError::Internal(other.to_string()),
        }
    }
}

fn target_details(t: &Target) -> Value {
    let mut d = json!({"name": t.name, "kind": t.resource});
    if !t.group.is_empty() {
        d["group"] = json!(t.group);
    }
    d
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let code = self.code();
        if code.is_server_error() {
            tracing::warn!(error = %self, code = code.as_u16(), "request failed");
        }
        let body = serde_json::to_vec(&self.to_status()).unwrap_or_default();
        let mut response = (code, body).into_response();
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        response
    }
}

/// A `Status` of success, as returned by some deletes and by bindings.
pub fn success_status(code: u16, details: Option<Value>) -> Value {
    let mut status = json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Success",
        "code": code,
    });
    if let Some(d) = details {
        status["details"] = d;
    }
    status
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_error_is_a_status_with_matching_code() {
        let t = Target::new("apps", "deployments", "web");
        let cases: Vec<(ApiError, u16, &str)> = vec![
            (ApiError::BadRequest("x".into()), 400, "BadRequest"),
            (ApiError::NotFound(t.clone()), 404, "NotFound"),
            (ApiError::AlreadyExists(t.clone()), 409, "AlreadyExists"),
            (ApiError::Conflict(t.clone(), "c".into()), 409, "Conflict"),
            (
                ApiError::Expired {
                    requested: 1,
                    oldest: 5,
                },
                410,
                "Expired",
            ),
            (
                ApiError::TooLarge { limit: 3 },
                413,
                "RequestEntityTooLarge",
            ),
            (ApiError::MethodNotAllowed, 405, "MethodNotAllowed"),
        ];
        for (err, code, reason) in cases {
            let s = err.to_status();
            assert_eq!(s["kind"], "Status");
            assert_eq!(s["status"], "Failure");
            assert_eq!(s["code"], code, "{err}");
            assert_eq!(s["reason"], reason, "{err}");
        }
        assert_eq!(
            ApiError::NotFound(t).to_string(),
            "deployments.apps \"web\" not found"
        );
    }

    #[test]
    fn invalid_lists_causes() {
        let err = ApiError::Invalid {
            kind: "Pod".into(),
            target: Target::new("", "pods", "Bad"),
            causes: vec![Cause::invalid("metadata.name", "Bad", "must be lowercase")],
        };
        let s = err.to_status();
        assert_eq!(s["code"], 422);
        assert_eq!(s["details"]["kind"], "Pod");
        assert_eq!(s["details"]["causes"][0]["field"], "metadata.name");
        assert_eq!(s["details"]["causes"][0]["reason"], "FieldValueInvalid");
    }
}
