//! The request-info layer: parses every request's verb, group, version, resource, namespace,
//! name and subresource into a [`RequestInfo`] request extension, before anything else runs.
//!
//! Authentication, authorization and admission are meant to be tower layers placed after this
//! one (see [`crate::ApiServer::router`]): they read `RequestInfo` rather than re-parsing URLs.

use axum::extract::Request;
use axum::http::Method;
use axum::middleware::Next;
use axum::response::Response;

/// What a request is about, as kube-apiserver's `RequestInfo`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RequestInfo {
    /// Whether the path names a resource (`/api/v1/pods`), rather than discovery, `/version`...
    pub is_resource_request: bool,
    /// The request path.
    pub path: String,
    /// `get`, `list`, `watch`, `create`, `update`, `patch`, `delete`, `deletecollection`, or
    /// the lower-cased HTTP method for anything else.
    pub verb: String,
    /// `api` or `apis` (empty for non-API paths).
    pub api_prefix: String,
    /// API group (empty for core).
    pub api_group: String,
    /// API version.
    pub api_version: String,
    /// Namespace, if the path has one.
    pub namespace: Option<String>,
    /// Plural resource name.
    pub resource: String,
    /// Subresource (`status`, `scale`, `binding`).
    pub subresource: Option<String>,
    /// Object name.
    pub name: Option<String>,
    /// Path segments after the resource's subresource: a path too deep for any resource.
    pub extra: bool,
}

/// Subresources of namespaces that are not a namespace named by the next segment.
const NAMESPACE_SUBRESOURCES: [&str; 2] = ["status", "finalize"];

impl RequestInfo {
    /// Parses a request's method, path and query.
    pub fn parse(method: &Method, path: &str, query: Option<&str>) -> RequestInfo {
        let mut info = RequestInfo {
            path: path.to_owned(),
            verb: method.as_str().to_ascii_lowercase(),
            ..RequestInfo::default()
        };
        let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
        let rest = match parts.as_slice() {
            ["api", version, rest @ ..] => {
                info.api_prefix = "api".into();
                info.api_version = (*version).to_owned();
                rest
            }
            ["apis", group, version, rest @ ..] => {
                info.api_prefix = "apis".into();
                info.api_group = (*group).to_owned();
                info.api_version = (*version).to_owned();
                rest
            }
            ["api"] | ["apis", ..] => {
                info.api_prefix = parts[0].to_owned();
                if let Some(g) = parts.get(1) {
                    info.api_group = (*g).to_owned();
                }
                return info;
            }
            _ => return info,
        };
        let mut rest: Vec<&str> = rest.to_vec();
        if rest.is_empty() {
            return info;
        }
        info.is_resource_request = true;
        let mut legacy_watch = false;
        if rest[0] == "watch" {
            legacy_watch = true;
            rest.remove(0);
        }
        if rest.first() == Some(&"namespaces") && rest.len() > 1 {
            info.namespace = Some(rest[1].to_owned());
            if rest.len() >= 3 && !NAMESPACE_SUBRESOURCES.contains(&rest[2]) {
                rest.drain(..2);
            }
        }
        info.resource = rest.first().map(|s| (*s).to_owned()).unwrap_or_default();
        info.name = rest.get(1).map(|s| (*s).to_owned());
        info.subresource = rest.get(2).map(|s| (*s).to_owned());
        info.extra = rest.len() > 3;
        if info.resource == "namespaces" && info.namespace.is_some() {
            // `/api/v1/namespaces/foo[/status]` names the namespace itself.
            info.name = info.namespace.clone();
        }
        let watch_param = query.is_some_and(|q| {
            q.split('&')
                .any(|kv| kv == "watch=true" || kv == "watch=1" || kv == "watch")
        });
        info.verb = match *method {
            Method::GET | Method::HEAD => {
                if legacy_watch || watch_param {
                    "watch"
                } else if info.name.is_some() {
                    "get"
                } else {
                    "list"
                }
            }
            Method::POST => "create",
            Method::PUT => "update",
            Method::PATCH => "patch",
            Method::DELETE => {
                if info.name.is_some() {
                    "delete"
                } else {
                    "deletecollection"
                }
            }
            _ => return info,
        }
        .to_owned();
        info
    }
}

/// The layer itself: inserts the parsed [`RequestInfo`] into the request's extensions.
pub async fn layer(mut request: Request, next: Next) -> Response {
    let info = RequestInfo::parse(
        request.method(),
        request.uri().path(),
        request.uri().query(),
    );
    request.extensions_mut().insert(info);
    next.run(request).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_request_paths() {
        // (method, path, query, verb, group, namespace, resource, name, subresource)
        type Row = (
            Method,
            &'static str,
            Option<&'static str>,
            &'static str,
            &'static str,
            Option<&'static str>,
            &'static str,
            Option<&'static str>,
            Option<&'static str>,
        );
        let table: Vec<Row> = vec![
            (
                Method::GET,
                "/api/v1/pods",
                None,
                "list",
                "",
                None,
                "pods",
                None,
                None,
            ),
            (
                Method::GET,
                "/api/v1/namespaces/d/pods",
                Some("watch=true"),
                "watch",
                "",
                Some("d"),
                "pods",
                None,
                None,
            ),
            (
                Method::GET,
                "/api/v1/watch/namespaces/d/pods",
                None,
                "watch",
                "",
                Some("d"),
                "pods",
                None,
                None,
            ),
            (
                Method::GET,
                "/api/v1/namespaces/d/pods/p",
                None,
                "get",
                "",
                Some("d"),
                "pods",
                Some("p"),
                None,
            ),
            (
                Method::PUT,
                "/api/v1/namespaces/d/pods/p/status",
                None,
                "update",
                "",
                Some("d"),
                "pods",
                Some("p"),
                Some("status"),
            ),
            (
                Method::POST,
                "/apis/apps/v1/namespaces/d/deployments",
                None,
                "create",
                "apps",
                Some("d"),
                "deployments",
                None,
                None,
            ),
            (
                Method::PATCH,
                "/apis/apps/v1/namespaces/d/deployments/x/scale",
                None,
                "patch",
                "apps",
                Some("d"),
                "deployments",
                Some("x"),
                Some("scale"),
            ),
            (
                Method::DELETE,
                "/api/v1/namespaces/d/configmaps",
                None,
                "deletecollection",
                "",
                Some("d"),
                "configmaps",
                None,
                None,
            ),
            (
                Method::GET,
                "/api/v1/namespaces/d",
                None,
                "get",
                "",
                Some("d"),
                "namespaces",
                Some("d"),
                None,
            ),
            (
                Method::PUT,
                "/api/v1/namespaces/d/finalize",
                None,
                "update",
                "",
                Some("d"),
                "namespaces",
                Some("d"),
                Some("finalize"),
            ),
            (
                Method::GET,
                "/api/v1/namespaces",
                None,
                "list",
                "",
                None,
                "namespaces",
                None,
                None,
            ),
            (
                Method::GET,
                "/api/v1/nodes/n1",
                None,
                "get",
                "",
                None,
                "nodes",
                Some("n1"),
                None,
            ),
        ];
        for (method, path, query, verb, group, ns, resource, name, sub) in table {
            let info = RequestInfo::parse(&method, path, query);
            assert!(info.is_resource_request, "{path}");
            assert_eq!(info.verb, verb, "{path}");
            assert_eq!(info.api_group, group, "{path}");
            assert_eq!(info.namespace.as_deref(), ns, "{path}");
            assert_eq!(info.resource, resource, "{path}");
            assert_eq!(info.name.as_deref(), name, "{path}");
            assert_eq!(info.subresource.as_deref(), sub, "{path}");
        }
        for path in [
            "/api",
            "/apis",
            "/api/v1",
            "/apis/apps",
            "/apis/apps/v1",
            "/version",
        ] {
            assert!(
                !RequestInfo::parse(&Method::GET, path, None).is_resource_request,
                "{path}"
            );
        }
    }
}
