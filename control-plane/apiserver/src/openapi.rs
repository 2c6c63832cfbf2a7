//! OpenAPI v3 documents, generated from the registry: one document per group-version with
//! the paths of every resource (their operations carry `x-kubernetes-group-version-kind` and
//! the `fieldValidation` parameter, which is how kubectl learns it can leave validation to
//! the server) and a schema per kind generated from the k8s-openapi types (for
//! `kubectl explain`).
//!
//! OpenAPI v2 is only served in protobuf upstream; kubectl 1.37 reads v3 first, so v2 answers
//! 404 (kubectl then skips its client-side schema checks, the server validates).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use k8s_openapi::schemars::generate::SchemaSettings;
use serde_json::{Map, Value, json};

use crate::codec::json_response;
use crate::registry::{ResourceType, Subresource};
use crate::server::ApiState;
use crate::status::ApiError;

/// The URL path segment of a group-version's document: `api/v1`, `apis/apps/v1`.
fn gv_path(group: &str, version: &str) -> String {
    if group.is_empty() {
        format!("api/{version}")
    } else {
        format!("apis/{group}/{version}")
    }
}

fn gvk(rt: &ResourceType) -> Value {
    json!({"group": rt.group, "version": rt.version, "kind": rt.kind})
}

fn query(name: &str, description: &str, ty: &str) -> Value {
    json!({"name": name, "in": "query", "description": description, "schema": {"type": ty, "uniqueItems": true}})
}

fn path_param(name: &str) -> Value {
    json!({"name": name, "in": "path", "required": true, "description": format!("{name} of the object"), "schema": {"type": "string", "uniqueItems": true}})
}

fn write_params() -> Vec<Value> {
    vec![
        query(
            "dryRun",
            "When present, indicates that modifications should not be persisted.",
            "string",
        ),
        query(
            "fieldManager",
            "A name associated with the actor or entity that is making these changes.",
            "string",
        ),
        query(
            "fieldValidation",
            "How the server handles unknown or duplicate fields: Ignore, Warn (default) or Strict.",
            "string",
        ),
    ]
}

fn schema_ref(rt: &ResourceType) -> Value {
    json!({"$ref": format!("#/components/schemas/{}", schema_name(rt))})
}

/// The schema name of a kind, as upstream names it (`io.k8s.api.core.v1.Pod`).
fn schema_name(rt: &ResourceType) -> String {
    let group = match rt.group {
        "" => "core",
        g => g.strip_suffix(".k8s.io").unwrap_or(g),
    };
    format!("io.k8s.api.{group}.{}.{}", rt.version, rt.kind)
}

fn operation(rt: &ResourceType, id: &str, action: &str, params: Vec<Value>, body: bool) -> Value {
    let content = json!({"application/json": {"schema": schema_ref(rt)}});
    let mut op = json!({
        "operationId": id,
        "description": format!("{id} {}", rt.kind),
        "parameters": params,
        "responses": {"200": {"description": "OK", "content": content.clone()}},
        "x-kubernetes-action": action,
        "x-kubernetes-group-version-kind": gvk(rt),
    });
    if body {
        op["requestBody"] = json!({"required": true, "content": content});
    }
    op
}

fn paths(rt: &ResourceType) -> Vec<(String, Value)> {
    let base = if rt.group.is_empty() {
        format!("/api/{}", rt.version)
    } else {
        format!("/apis/{}/{}", rt.group, rt.version)
    };
    let collection = if rt.namespaced {
        format!("{base}/namespaces/{{namespace}}/{}", rt.plural)
    } else {
        format!("{base}/{}", rt.plural)
    };
    let mut common = vec![];
    if rt.namespaced {
        common.push(path_param("namespace"));
    }
    let mut out = vec![(
        collection.clone(),
        json!({
            "parameters": common,
            "get": operation(rt, "list", "list", vec![
                query("labelSelector", "A selector to restrict the list of returned objects by their labels.", "string"),
                query("fieldSelector", "A selector to restrict the list of returned objects by their fields.", "string"),
                query("limit", "The maximum number of items to return.", "integer"),
                query("continue", "Continues a previous list.", "string"),
                query("resourceVersion", "Which version of the resource to list or watch from.", "string"),
                query("watch", "Watch for changes instead of listing.", "boolean"),
            ], false),
            "post": operation(rt, "create", "post", write_params(), true),
        }),
    )];
    let mut per_object = common.clone();
    per_object.insert(0, path_param("name"));
    let mut patch_params = write_params();
    patch_params.push(query("force", "Force an apply request.", "boolean"));
    out.push((
        format!("{collection}/{{name}}"),
        json!({
            "parameters": per_object,
            "get": operation(rt, "read", "get", vec![], false),
            "put": operation(rt, "replace", "put", write_params(), true),
            "patch": operation(rt, "patch", "patch", patch_params.clone(), true),
            "delete": operation(rt, "delete", "delete", vec![
                query("gracePeriodSeconds", "The duration in seconds before the object should be deleted.", "integer"),
                query("propagationPolicy", "Whether and how garbage collection will be performed.", "string"),
            ], false),
        }),
    ));
    for sub in rt.subresources {
        if *sub == Subresource::Status {
            out.push((
                format!("{collection}/{{name}}/status"),
                json!({
                    "parameters": per_object,
                    "get": operation(rt, "readStatus", "get", vec![], false),
                    "put": operation(rt, "replaceStatus", "put", write_params(), true),
                    "patch": operation(rt, "patchStatus", "patch", patch_params.clone(), true),
                }),
            ));
        }
    }
    out
}

/// The component schemas of some kinds and of every type they refer to.
fn schemas(types: &[&ResourceType]) -> Map<String, Value> {
    let mut generator = SchemaSettings::openapi3().into_generator();
    for rt in types {
        (rt.schema)(&mut generator);
    }
    generator.take_definitions(true)
}

/// The document of a group-version, built once.
fn document(state: &ApiState, group: &str, version: &str) -> Option<Arc<Value>> {
    static DOCS: OnceLock<Mutex<HashMap<String, Arc<Value>>>> = OnceLock::new();
    let key = gv_path(group, version);
    let docs = DOCS.get_or_init(Default::default);
    if let Some(doc) = docs.lock().unwrap_or_else(|p| p.into_inner()).get(&key) {
        return Some(doc.clone());
    }
    let doc = Arc::new(build_document(state, group, version)?);
    docs.lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(key, doc.clone());
    Some(doc)
}

fn build_document(state: &ApiState, group: &str, version: &str) -> Option<Value> {
    let types: Vec<&ResourceType> = state
        .registry
        .all()
        .iter()
        .filter(|rt| rt.group == group && rt.version == version)
        .copied()
        .collect();
    if types.is_empty() {
        return None;
    }
    let mut all_paths = Map::new();
    let mut components = Map::new();
    for rt in &types {
        for (p, v) in paths(rt) {
            all_paths.insert(p, v);
        }
    }
    components.extend(schemas(&types));
    for rt in &types {
        if let Some(s) = components.get_mut(&schema_name(rt)) {
            s["x-kubernetes-group-version-kind"] = json!([gvk(rt)]);
        }
    }
    Some(json!({
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": "v1.37.0"},
        "paths": all_paths,
        "components": {"schemas": components},
    }))
}

/// `GET /openapi/v2`: not served (see the module documentation).
pub async fn v2() -> ApiError {
    ApiError::NoSuchResource
}

/// `GET /openapi/v3`: the index of per group-version documents.
pub async fn v3_index(State(state): State<Arc<ApiState>>) -> Response {
    let mut paths = Map::new();
    for (group, version) in state.registry.group_versions() {
        let p = gv_path(group, version);
        paths.insert(
            p.clone(),
            json!({"serverRelativeURL": format!("/openapi/v3/{p}?hash={}", env!("CARGO_PKG_VERSION"))}),
        );
    }
    json_response(StatusCode::OK, &json!({"paths": paths}))
}

/// `GET /openapi/v3/api/v1`, `GET /openapi/v3/apis/<group>/<version>`.
pub async fn v3_document(
    State(state): State<Arc<ApiState>>,
    Path(path): Path<String>,
) -> Result<Response, ApiError> {
    let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
    let (group, version) = match parts.as_slice() {
        ["api", v] => ("", *v),
        ["apis", g, v] => (*g, *v),
        _ => return Err(ApiError::NoSuchResource),
    };
    let doc = document(&state, group, version).ok_or(ApiError::NoSuchResource)?;
    Ok(json_response(StatusCode::OK, &doc))
}
