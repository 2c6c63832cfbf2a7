//! Discovery: `/api`, `/apis`, per group-version resource lists, and the aggregated discovery
//! documents (`apidiscovery.k8s.io/v2`) that kubectl asks for first. All built from the
//! registry's table.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::Response;
use serde_json::{Value, json};

use crate::codec::json_response;
use crate::registry::{ResourceType, Subresource};
use crate::server::ApiState;
use crate::status::ApiError;

const AGGREGATED_V2: &str = "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList";

fn wants_aggregated(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|m| {
            let p: Vec<&str> = m.split(';').map(str::trim).collect();
            p.contains(&"as=APIGroupDiscoveryList") && p.contains(&"v=v2")
        })
}

fn verbs(rt: &ResourceType) -> Vec<&'static str> {
    if rt.create_only {
        return vec!["create"];
    }
    let mut v = vec!["create", "delete"];
    if rt.kind != "Namespace" {
        v.push("deletecollection");
    }
    v.extend(["get", "list", "patch", "update", "watch"]);
    v
}

fn sub_verbs(sub: Subresource) -> Vec<&'static str> {
    match sub {
        Subresource::Binding | Subresource::Token => vec!["create"],
        Subresource::Status | Subresource::Scale | Subresource::Approval => vec!["get", "patch", "update"],
    }
}

fn sub_kind(rt: &ResourceType, sub: Subresource) -> (&'static str, &'static str, &'static str) {
    match sub {
        Subresource::Scale => ("autoscaling", "v1", "Scale"),
        Subresource::Binding => ("", "v1", "Binding"),
        Subresource::Token => ("authentication.k8s.io", "v1", "TokenRequest"),
        Subresource::Status | Subresource::Approval => (rt.group, rt.version, rt.kind),
    }
}

fn api_resources(rt: &ResourceType) -> Vec<Value> {
    let mut out = vec![json!({
        "name": rt.plural,
        "singularName": rt.singular,
        "namespaced": rt.namespaced,
        "kind": rt.kind,
        "verbs": verbs(rt),
        "shortNames": rt.short_names,
        "categories": rt.categories,
    })];
    for sub in rt.subresources {
        let (group, version, kind) = sub_kind(rt, *sub);
        let mut r = json!({
            "name": format!("{}/{}", rt.plural, sub.name()),
            "singularName": "",
            "namespaced": rt.namespaced,
            "kind": kind,
            "verbs": sub_verbs(*sub),
        });
        if matches!(*sub, Subresource::Scale | Subresource::Token) {
            r["group"] = json!(group);
            r["version"] = json!(version);
        }
        out.push(r);
    }
    out
}

fn aggregated_resource(rt: &ResourceType) -> Value {
    let subresources: Vec<Value> = rt
        .subresources
        .iter()
        .map(|sub| {
            let (group, version, kind) = sub_kind(rt, *sub);
            json!({
                "subresource": sub.name(),
                "responseKind": {"group": group, "version": version, "kind": kind},
                "verbs": sub_verbs(*sub),
            })
        })
        .collect();
    json!({
        "resource": rt.plural,
        "responseKind": {"group": rt.group, "version": rt.version, "kind": rt.kind},
        "scope": if rt.namespaced { "Namespaced" } else { "Cluster" },
        "singularResource": rt.singular,
        "verbs": verbs(rt),
        "shortNames": rt.short_names,
        "categories": rt.categories,
        "subresources": subresources,
    })
}

fn aggregated(state: &ApiState, core: bool) -> Value {
    let items: Vec<Value> = state
        .registry
        .group_versions()
        .into_iter()
        .filter(|(g, _)| g.is_empty() == core)
        .map(|(group, version)| {
            let resources: Vec<Value> = state
                .registry
                .all()
                .iter()
                .filter(|rt| rt.group == group && rt.version == version)
                .map(|rt| aggregated_resource(rt))
                .collect();
            json!({
                "metadata": {"name": group, "creationTimestamp": null},
                "versions": [{"version": version, "resources": resources, "freshness": "Current"}],
            })
        })
        .collect();
    json!({
        "kind": "APIGroupDiscoveryList",
        "apiVersion": "apidiscovery.k8s.io/v2",
        "metadata": {},
        "items": items,
    })
}

fn aggregated_response(value: &Value) -> Response {
    let mut r = json_response(StatusCode::OK, value);
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(AGGREGATED_V2),
    );
    r.headers_mut()
        .insert(header::VARY, HeaderValue::from_static("Accept"));
    r
}

/// `GET /api`: the core group's versions (or its aggregated document).
pub async fn api(State(state): State<Arc<ApiState>>, headers: HeaderMap) -> Response {
    if wants_aggregated(&headers) {
        return aggregated_response(&aggregated(&state, true));
    }
    json_response(
        StatusCode::OK,
        &json!({
            "kind": "APIVersions",
            "versions": ["v1"],
            "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": ""}],
        }),
    )
}

fn group_doc(group: &str, version: &str) -> Value {
    let gv = format!("{group}/{version}");
    json!({
        "name": group,
        "versions": [{"groupVersion": gv, "version": version}],
        "preferredVersion": {"groupVersion": gv, "version": version},
    })
}

/// `GET /apis`: the named groups (or their aggregated document).
pub async fn apis(State(state): State<Arc<ApiState>>, headers: HeaderMap) -> Response {
    if wants_aggregated(&headers) {
        return aggregated_response(&aggregated(&state, false));
    }
    let groups: Vec<Value> = state
        .registry
        .group_versions()
        .into_iter()
        .filter(|(g, _)| !g.is_empty())
        .map(|(g, v)| group_doc(g, v))
        .collect();
    json_response(
        StatusCode::OK,
        &json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}),
    )
}

/// `GET /apis/<group>`: one group.
pub fn group(state: &ApiState, group: &str) -> Result<Response, ApiError> {
    let (g, v) = state
        .registry
        .group_versions()
        .into_iter()
        .find(|(g, _)| *g == group)
        .ok_or(ApiError::NoSuchResource)?;
    let mut doc = group_doc(g, v);
    doc["kind"] = json!("APIGroup");
    doc["apiVersion"] = json!("v1");
    Ok(json_response(StatusCode::OK, &doc))
}

/// `GET /api/v1`, `GET /apis/<group>/<version>`: the resources of a group-version.
pub fn group_version(state: &ApiState, group: &str, version: &str) -> Result<Response, ApiError> {
    let types: Vec<&ResourceType> = state
        .registry
        .all()
        .iter()
        .filter(|rt| rt.group == group && rt.version == version)
        .copied()
        .collect();
    if types.is_empty() {
        return Err(ApiError::NoSuchResource);
    }
    let resources: Vec<Value> = types.into_iter().flat_map(api_resources).collect();
    Ok(json_response(
        StatusCode::OK,
        &json!({
            "kind": "APIResourceList",
            "apiVersion": "v1",
            "groupVersion": crate::object::api_version(group, version),
            "resources": resources,
        }),
    ))
}
