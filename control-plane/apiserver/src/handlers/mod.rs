//! The generic resource handlers, one module per verb, and the dispatcher that routes every
//! `/api/...` and `/apis/...` request to them through the registry.

pub(crate) mod create;
pub(crate) mod delete;
mod get;
mod list;
mod node_proxy;
mod patch;
mod update;
mod watch;
pub(crate) mod write;

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Query, Request, State};
use axum::http::{HeaderMap, Method, Uri};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::Value;

use crate::fieldmanager::{Scope, Writer};
use crate::registry::{ResourceType, Subresource};
use crate::request_info::RequestInfo;
use crate::server::ApiState;
use crate::status::{ApiError, Cause, Result, Target};
use crate::{discovery, object};

pub(crate) use create::create_object;
pub(crate) use delete::{DeleteOptions, delete_object};
pub(crate) use update::update as update_object;

/// Query parameters of resource requests (unknown ones are ignored, as upstream does).
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Params {
    pub label_selector: Option<String>,
    pub field_selector: Option<String>,
    pub limit: Option<i64>,
    #[serde(rename = "continue")]
    pub continue_token: Option<String>,
    pub resource_version: Option<String>,
    pub resource_version_match: Option<String>,
    pub allow_watch_bookmarks: Option<String>,
    pub timeout_seconds: Option<i64>,
    pub send_initial_events: Option<String>,
    pub field_validation: Option<String>,
    pub field_manager: Option<String>,
    pub force: Option<String>,
    pub dry_run: Option<String>,
    pub grace_period_seconds: Option<i64>,
    pub propagation_policy: Option<String>,
    pub include_object: Option<String>,
}

/// Whether a boolean query parameter is set (`true` or `1`).
fn flag(v: &Option<String>) -> bool {
    matches!(v.as_deref(), Some("true" | "1" | ""))
}

impl Params {
    pub fn dry_run(&self) -> Result<bool> {
        match self.dry_run.as_deref() {
            None | Some("") => Ok(false),
            Some("All") => Ok(true),
            Some(other) => Err(ApiError::BadRequest(format!(
                "unsupported dryRun value {other:?}: only \"All\" is supported"
            ))),
        }
    }

    /// `force` as Go's `strconv.ParseBool` reads it (`None` when absent).
    pub fn force(&self) -> Result<Option<bool>> {
        match self.force.as_deref() {
            None => Ok(None),
            Some("1" | "t" | "T" | "true" | "TRUE" | "True") => Ok(Some(true)),
            Some("0" | "f" | "F" | "false" | "FALSE" | "False") => Ok(Some(false)),
            Some(other) => Err(ApiError::BadRequest(format!(
                "invalid force parameter {other:?}: must be true or false"
            ))),
        }
    }
}

/// The longest `fieldManager` upstream accepts.
const FIELD_MANAGER_MAX_LENGTH: usize = 128;

/// What is wrong with a `fieldManager` (upstream's `ValidateFieldManager`).
fn field_manager_causes(manager: &str) -> Vec<Cause> {
    let mut causes = Vec::new();
    if manager.len() > FIELD_MANAGER_MAX_LENGTH {
        causes.push(Cause {
            field: "fieldManager".into(),
            reason: "FieldValueTooLong",
            message: format!("Too long: may not be more than {FIELD_MANAGER_MAX_LENGTH} bytes"),
        });
    }
    for (i, c) in manager.chars().enumerate() {
        if c.is_control() {
            causes.push(Cause::invalid(
                "fieldManager",
                manager,
                format!("invalid character U+{:04X} (at position {i})", u32::from(c)),
            ));
        }
    }
    causes
}

/// The manager upstream derives from a `User-Agent` (`kubectl/v1.37.0 (linux/amd64) ...`
/// is `kubectl`): what comes before the first `/`, printable characters only, at most 128.
fn manager_from_user_agent(user_agent: &str) -> String {
    user_agent
        .split('/')
        .next()
        .unwrap_or("")
        .chars()
        .filter(|c| !c.is_control())
        .take(FIELD_MANAGER_MAX_LENGTH)
        .collect()
}

/// `fieldValidation`: what to do with unknown or duplicate fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FieldValidation {
    Ignore,
    Warn,
    Strict,
}

impl FieldValidation {
    fn parse(v: Option<&str>) -> Result<FieldValidation> {
        match v {
            None | Some("") | Some("Warn") => Ok(FieldValidation::Warn),
            Some("Ignore") => Ok(FieldValidation::Ignore),
            Some("Strict") => Ok(FieldValidation::Strict),
            Some(other) => Err(ApiError::BadRequest(format!(
                "fieldValidation {other:?} is invalid: must be one of Ignore, Warn, Strict"
            ))),
        }
    }
}

/// One resource request, resolved against the registry.
#[derive(Debug)]
pub(crate) struct Ctx {
    pub state: Arc<ApiState>,
    pub rt: &'static ResourceType,
    /// The namespace (always `None` for cluster-scoped kinds; `None` for namespaced kinds
    /// means all namespaces).
    pub namespace: Option<String>,
    pub name: Option<String>,
    pub subresource: Option<Subresource>,
    pub params: Params,
    pub headers: HeaderMap,
    /// Who is asking (`None` for the server's own work: bootstrap, namespace cleanup).
    pub user: Option<coxswain_auth::UserInfo>,
}

impl Ctx {
    /// The store key of object `name`.
    pub fn key(&self, name: &str) -> String {
        self.rt.key(self.namespace.as_deref(), name)
    }

    /// The object named in the URL (or `name`), for error details.
    pub fn target(&self, name: &str) -> Target {
        Target::new(self.rt.group, self.rt.plural, name)
    }

    /// The name from the URL (routes guarantee it for per-object verbs).
    pub fn url_name(&self) -> Result<&str> {
        self.name.as_deref().ok_or(ApiError::MethodNotAllowed)
    }

    /// Reads the current object: its value (with `resourceVersion`) and mod revision.
    pub async fn current(&self, name: &str) -> Result<(Value, i64)> {
        let (kv, _) = self
            .state
            .store
            .get(&self.key(name), None)
            .await
            .map_err(|e| ApiError::from_store(e, &self.target(name)))?;
        let kv = kv.ok_or_else(|| ApiError::NotFound(self.target(name)))?;
        Ok((crate::storage::decode(&kv)?, kv.mod_revision))
    }

    /// Who this request writes as, for `managedFields`: the `fieldManager` parameter, else
    /// the client's `User-Agent` (as upstream); the server's own work is `kube-apiserver`.
    pub fn writer(&self) -> Writer {
        let from_agent = || {
            let agent = self
                .headers
                .get(axum::http::header::USER_AGENT)
                .and_then(|v| v.to_str().ok())
                .map(manager_from_user_agent)
                .unwrap_or_default();
            match (agent.is_empty(), &self.user) {
                (false, _) => agent,
                (true, None) => "kube-apiserver".to_owned(),
                (true, Some(_)) => "unknown".to_owned(),
            }
        };
        Writer {
            manager: self
                .params
                .field_manager
                .clone()
                .filter(|m| !m.is_empty())
                .unwrap_or_else(from_agent),
            api_version: self.rt.api_version(),
            subresource: self.subresource.map(|s| s.name().to_owned()).unwrap_or_default(),
        }
    }

    /// Which fields this request may own: a kind with a status subresource keeps `.status`
    /// to `/status` (and `/approval`) and everything else to the object.
    pub fn scope(&self) -> Scope {
        match self.subresource {
            Some(Subresource::Status | Subresource::Approval) => Scope::StatusOnly,
            Some(_) => Scope::Everything,
            None if self.rt.has(Subresource::Status) => Scope::AllButStatus,
            None => Scope::Everything,
        }
    }

    /// Checks the write options upstream validates for every create, update and patch
    /// (`fieldManager`, and for patches `force` and apply's required manager): 422 with the
    /// options' kind (`CreateOptions`, `UpdateOptions`, `PatchOptions`).
    pub fn check_write_options(&self, kind: &str, apply: Option<bool>) -> Result<()> {
        let manager = self.params.field_manager.as_deref().unwrap_or("");
        let mut causes = Vec::new();
        match apply {
            Some(false) if self.params.force.is_some() => causes.push(Cause {
                field: "force".into(),
                reason: "FieldValueForbidden",
                message: "Forbidden: may not be specified for non-apply patch".into(),
            }),
            Some(true) if manager.is_empty() => causes.push(Cause {
                field: "fieldManager".into(),
                reason: "FieldValueRequired",
                message: "Required value: is required for apply patch".into(),
            }),
            _ => {}
        }
        causes.extend(field_manager_causes(manager));
        if causes.is_empty() {
            return Ok(());
        }
        Err(ApiError::Invalid {
            kind: format!("{kind}.meta.k8s.io"),
            target: Target::new("meta.k8s.io", "", ""),
            causes,
        })
    }

    pub fn field_validation(&self) -> Result<FieldValidation> {
        FieldValidation::parse(self.params.field_validation.as_deref())
    }

    /// Decodes a request object of this kind: fills or checks `kind` and `apiVersion`,
    /// round-trips it through the kind's typed struct (rejecting malformed objects, dropping
    /// unknown fields) and applies `fieldValidation` to what was dropped. Returns the object
    /// and the warnings for the client.
    pub fn decode_object(&self, input: Value) -> Result<(Value, Vec<String>)> {
        let rt = self.rt;
        let Value::Object(mut map) = input else {
            return Err(ApiError::BadRequest(format!(
                "the body of the request must be a JSON or YAML object of kind {}",
                rt.kind
            )));
        };
        match map.get("kind").and_then(Value::as_str) {
            None | Some("") => {
                map.insert("kind".into(), Value::from(rt.kind));
            }
            Some(k) if k == rt.kind => {}
            Some(k) => {
                return Err(ApiError::BadRequest(format!(
                    "the kind of the object ({k}) does not match the resource {} (kind {})",
                    rt.plural, rt.kind
                )));
            }
        }
        let api_version = rt.api_version();
        match map.get("apiVersion").and_then(Value::as_str) {
            None | Some("") => {
                map.insert("apiVersion".into(), Value::from(api_version.clone()));
            }
            Some(v) if v == api_version => {}
            Some(v) => {
                return Err(ApiError::BadRequest(format!(
                    "the apiVersion of the object ({v}) does not match the request's ({api_version})"
                )));
            }
        }
        let input = Value::Object(map);
        let typed = (rt.roundtrip)(input.clone()).map_err(|e| {
            ApiError::BadRequest(format!(
                "{} in version \"{}\" cannot be handled as a {}: {e}",
                rt.kind, rt.version, rt.kind
            ))
        })?;
        let mut unknown = Vec::new();
        unknown_fields(&input, &typed, "", &mut unknown);
        let mut warnings = Vec::new();
        if !unknown.is_empty() {
            match self.field_validation()? {
                FieldValidation::Ignore => {}
                FieldValidation::Warn => {
                    warnings.extend(unknown.iter().map(|f| format!("unknown field \"{f}\"")));
                }
                FieldValidation::Strict => {
                    let list: Vec<String> = unknown
                        .iter()
                        .map(|f| format!("unknown field \"{f}\""))
                        .collect();
                    return Err(ApiError::BadRequest(format!(
                        "strict decoding error: {}",
                        list.join(", ")
                    )));
                }
            }
        }
        Ok((typed, warnings))
    }
}

/// Collects the paths of fields in `input` that the typed round trip dropped.
fn unknown_fields(input: &Value, typed: &Value, path: &str, out: &mut Vec<String>) {
    match (input, typed) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in a {
                let p = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                match b.get(k) {
                    Some(tv) => unknown_fields(v, tv, &p, out),
                    None if v.is_null() => {}
                    None => out.push(p),
                }
            }
        }
        (Value::Array(a), Value::Array(b)) if a.len() == b.len() => {
            for (i, (x, y)) in a.iter().zip(b).enumerate() {
                unknown_fields(x, y, &format!("{path}[{i}]"), out);
            }
        }
        _ => {}
    }
}

/// Routes `/api/...` and `/apis/...` (and anything else unmatched) to the handlers.
pub(crate) async fn dispatch(State(state): State<Arc<ApiState>>, request: Request) -> Response {
    match route(state, request).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

async fn route(state: Arc<ApiState>, request: Request) -> Result<Response> {
    let info = request
        .extensions()
        .get::<RequestInfo>()
        .cloned()
        .unwrap_or_else(|| {
            RequestInfo::parse(
                request.method(),
                request.uri().path(),
                request.uri().query(),
            )
        });
    let method = request.method().clone();
    if !info.is_resource_request {
        return non_resource(&state, &info, &method);
    }
    if node_proxy::handles(&info) {
        return node_proxy::proxy(&state, &info, request).await;
    }
    let rt = state
        .registry
        .lookup(&info.api_group, &info.api_version, &info.resource)
        .ok_or(ApiError::NoSuchResource)?;
    if info.extra {
        return Err(ApiError::NoSuchResource);
    }
    let subresource = match info.subresource.as_deref() {
        None => None,
        Some(s) => Some(
            rt.subresources
                .iter()
                .copied()
                .find(|sub| sub.name() == s)
                .ok_or(ApiError::NoSuchResource)?,
        ),
    };
    let namespace = if rt.namespaced {
        info.namespace.clone()
    } else {
        if info.namespace.is_some() && rt.kind != "Namespace" {
            return Err(ApiError::NoSuchResource);
        }
        None
    };
    let uri: Uri = request.uri().clone();
    let params = Query::<Params>::try_from_uri(&uri)
        .map_err(|e| ApiError::BadRequest(format!("invalid query parameters: {e}")))?
        .0;
    let (parts, body) = request.into_parts();
    let user = parts.extensions.get::<coxswain_auth::UserInfo>().cloned();
    let ctx = Ctx {
        state,
        rt,
        namespace,
        name: info.name.clone(),
        subresource,
        params,
        headers: parts.headers,
        user: user.clone(),
    };
    let namespaced_request = ctx.namespace.is_some() || !rt.namespaced;
    if rt.create_only {
        return match (method, info.verb.as_str(), &user) {
            (Method::POST, "create", Some(user))
                if namespaced_request && ctx.name.is_none() && subresource.is_none() =>
            {
                crate::security::reviews::create(&ctx, user, read(&ctx, body).await?).await
            }
            (_, _, None) => Err(ApiError::Unauthorized),
            _ => Err(ApiError::MethodNotAllowed),
        };
    }
    if subresource == Some(Subresource::Token) {
        return match (method, info.verb.as_str(), &user) {
            (Method::POST, "create", Some(user)) => {
                crate::security::tokens::token_request(&ctx, user, read(&ctx, body).await?).await
            }
            (_, _, None) => Err(ApiError::Unauthorized),
            _ => Err(ApiError::MethodNotAllowed),
        };
    }
    match (method, info.verb.as_str()) {
        (Method::GET, "watch") => watch::watch(&ctx).await,
        (Method::GET, "get") => get::get(&ctx).await,
        (Method::GET, "list") if subresource.is_none() => list::list(&ctx).await,
        (Method::POST, "create") if namespaced_request => match (ctx.name.is_some(), subresource) {
            (false, None) => create::create(&ctx, read(&ctx, body).await?).await,
            (true, Some(Subresource::Binding)) => {
                create::binding(&ctx, read(&ctx, body).await?).await
            }
            _ => Err(ApiError::MethodNotAllowed),
        },
        (Method::PUT, "update")
            if ctx.name.is_some() && subresource != Some(Subresource::Binding) =>
        {
            update::update(&ctx, read(&ctx, body).await?).await
        }
        (Method::PATCH, "patch")
            if ctx.name.is_some() && subresource != Some(Subresource::Binding) =>
        {
            patch::patch(&ctx, read(&ctx, body).await?).await
        }
        (Method::DELETE, "delete") if subresource.is_none() => {
            delete::delete(&ctx, read_optional(&ctx, body).await?).await
        }
        (Method::DELETE, "deletecollection")
            if subresource.is_none() && namespaced_request && rt.kind != "Namespace" =>
        {
            delete::delete_collection(&ctx, read_optional(&ctx, body).await?).await
        }
        _ => Err(ApiError::MethodNotAllowed),
    }
}

async fn read(ctx: &Ctx, body: Body) -> Result<bytes::Bytes> {
    crate::codec::read_body(&ctx.headers, body, ctx.state.config.max_body_bytes).await
}

async fn read_optional(ctx: &Ctx, body: Body) -> Result<Option<Value>> {
    let bytes = read(ctx, body).await?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    let ty = crate::codec::body_type(&ctx.headers)?;
    crate::codec::decode(&bytes, ty).map(Some)
}

fn non_resource(state: &ApiState, info: &RequestInfo, method: &Method) -> Result<Response> {
    let known = match (
        info.api_prefix.as_str(),
        info.api_group.as_str(),
        info.api_version.as_str(),
    ) {
        ("api", "", v) if !v.is_empty() => Some(discovery::group_version(state, "", v)),
        ("apis", g, "") if !g.is_empty() => Some(discovery::group(state, g)),
        ("apis", g, v) if !g.is_empty() => Some(discovery::group_version(state, g, v)),
        _ => None,
    };
    match known {
        Some(Ok(_)) if *method != Method::GET => Err(ApiError::MethodNotAllowed),
        Some(r) => r,
        None => Err(ApiError::NoSuchResource),
    }
}

/// The `autoscaling/v1` `Scale` view of an object with `.spec.replicas`.
pub(crate) fn scale_of(obj: &Value) -> Value {
    let meta = object::meta(obj);
    let pick = |f: &str| meta.and_then(|m| m.get(f)).cloned().unwrap_or(Value::Null);
    let selector = obj
        .get("spec")
        .and_then(|s| s.get("selector"))
        .map(crate::selectors::format_label_selector)
        .unwrap_or_default();
    serde_json::json!({
        "kind": "Scale",
        "apiVersion": "autoscaling/v1",
        "metadata": {
            "name": pick("name"),
            "namespace": pick("namespace"),
            "uid": pick("uid"),
            "resourceVersion": pick("resourceVersion"),
            "creationTimestamp": pick("creationTimestamp"),
        },
        "spec": {"replicas": object::at_path(obj, "spec.replicas").cloned().unwrap_or(Value::from(0))},
        "status": {
            "replicas": object::at_path(obj, "status.replicas").cloned().unwrap_or(Value::from(0)),
            "selector": selector,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn finds_unknown_fields() {
        let input = json!({"spec": {"a": 1, "b": null, "list": [{"x": 1, "y": 2}]}, "extra": true});
        let typed = json!({"spec": {"a": 1, "list": [{"x": 1}]}});
        let mut out = Vec::new();
        unknown_fields(&input, &typed, "", &mut out);
        assert_eq!(out, vec!["extra", "spec.list[0].y"]);
    }

    #[test]
    fn managers_from_user_agents() {
        for (agent, want) in [
            ("kubectl/v1.37.0 (linux/amd64) kubernetes/abcdef", "kubectl"),
            ("kube-controller-manager/v1.37.0 (linux/amd64) kubernetes/x/system:serviceaccount:kube-system:deployment-controller", "kube-controller-manager"),
            ("OpenAPI-Generator/33.1.0/python", "OpenAPI-Generator"),
            ("curl", "curl"),
            ("", ""),
        ] {
            assert_eq!(manager_from_user_agent(agent), want, "{agent}");
        }
        assert_eq!(manager_from_user_agent(&"x".repeat(300)).len(), FIELD_MANAGER_MAX_LENGTH);
        assert!(field_manager_causes("ok").is_empty());
        assert_eq!(field_manager_causes(&"x".repeat(129))[0].reason, "FieldValueTooLong");
        assert_eq!(field_manager_causes("a\tb")[0].reason, "FieldValueInvalid");
    }

    #[test]
    fn scale_view() {
        let d = json!({"metadata": {"name": "d", "namespace": "n", "resourceVersion": "5"}, "spec": {"replicas": 3, "selector": {"matchLabels": {"app": "x"}}}, "status": {"replicas": 2}});
        let s = scale_of(&d);
        assert_eq!(s["spec"]["replicas"], 3);
        assert_eq!(s["status"]["replicas"], 2);
        assert_eq!(s["status"]["selector"], "app=x");
        assert_eq!(s["metadata"]["resourceVersion"], "5");
    }
}
