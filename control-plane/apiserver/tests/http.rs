//! Raw HTTP against the API server: broken requests (each a 4xx `Status` that changes
//! nothing), optimistic concurrency, pagination, status and generation rules, finalizers,
//! discovery and metrics, field ownership and server-side apply.

mod common;

use anyhow::{Result, ensure};
use bytes::Bytes;
use common::{Backend, Http, StoreHandle, TestServer};
use serde_json::{Value, json};

const CMS: &str = "/api/v1/namespaces/default/configmaps";

fn cm(name: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": {"k": "v"}})
}

fn deployment(name: &str) -> Value {
    json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": {"app": name}}, "spec": {"containers": [{"name": "c", "image": "nginx:1"}]}}
        }
    })
}

/// One broken request and what it must get.
struct Broken {
    what: &'static str,
    method: &'static str,
    path: String,
    content_type: &'static str,
    body: Bytes,
    code: u16,
    reason: &'static str,
}

fn broken(
    what: &'static str,
    method: &'static str,
    path: &str,
    content_type: &'static str,
    body: impl Into<Bytes>,
    code: u16,
    reason: &'static str,
) -> Broken {
    Broken {
        what,
        method,
        path: path.to_owned(),
        content_type,
        body: body.into(),
        code,
        reason,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_requests_get_a_status_and_change_nothing() -> Result<()> {
    let store = StoreHandle::open(Backend::Embedded).await?;
    let server = TestServer::start(store.store.clone()).await?;
    let http = Http::new(&server);
    ensure!(http.post_json(CMS, &cm("existing")).await?.status == 201);
    let mut bad_name = cm("x");
    bad_name["metadata"]["name"] = json!("Bad_Name");
    let mut unknown = cm("strict");
    unknown["spec"] = json!({"nope": 1});
    let mut bad_key = cm("badkey");
    bad_key["data"] = json!({"no spaces": "v"});
    let mut mismatch = deployment("d");
    mismatch["spec"]["template"]["metadata"]["labels"]["app"] = json!("other");
    let mut wrong_type = cm("typed");
    wrong_type["data"] = json!("not a map");
    let huge = format!("{{\"data\":{{\"k\":\"{}\"}}}}", "x".repeat(4 * 1024 * 1024));
    let json = "application/json";
    let table = vec![
        broken(
            "malformed JSON",
            "POST",
            CMS,
            json,
            "{\"kind\": ",
            400,
            "BadRequest",
        ),
        broken(
            "malformed YAML",
            "POST",
            CMS,
            "application/yaml",
            "metadata: [",
            400,
            "BadRequest",
        ),
        broken(
            "not an object",
            "POST",
            CMS,
            json,
            "[1, 2]",
            400,
            "BadRequest",
        ),
        broken("empty body", "POST", CMS, json, "", 400, "BadRequest"),
        broken(
            "wrong kind",
            "POST",
            CMS,
            json,
            json!({"kind": "Pod", "metadata": {"name": "p"}}).to_string(),
            400,
            "BadRequest",
        ),
        broken(
            "wrong field type",
            "POST",
            CMS,
            json,
            wrong_type.to_string(),
            400,
            "BadRequest",
        ),
        broken(
            "unknown resource",
            "GET",
            "/api/v1/namespaces/default/widgets",
            json,
            "",
            404,
            "NotFound",
        ),
        broken(
            "unknown group",
            "GET",
            "/apis/example.com/v1/things",
            json,
            "",
            404,
            "NotFound",
        ),
        broken("unknown path", "GET", "/nowhere", json, "", 404, "NotFound"),
        broken(
            "unknown subresource",
            "GET",
            &format!("{CMS}/existing/status"),
            json,
            "",
            404,
            "NotFound",
        ),
        broken(
            "too deep",
            "GET",
            &format!("{CMS}/existing/a/b"),
            json,
            "",
            404,
            "NotFound",
        ),
        broken(
            "missing object",
            "GET",
            &format!("{CMS}/absent"),
            json,
            "",
            404,
            "NotFound",
        ),
        broken(
            "PUT on a collection",
            "PUT",
            CMS,
            json,
            cm("x").to_string(),
            405,
            "MethodNotAllowed",
        ),
        broken(
            "POST on an object",
            "POST",
            &format!("{CMS}/existing"),
            json,
            cm("x").to_string(),
            405,
            "MethodNotAllowed",
        ),
        broken(
            "DELETE /version",
            "DELETE",
            "/version",
            json,
            "",
            405,
            "MethodNotAllowed",
        ),
        broken(
            "POST discovery",
            "POST",
            "/api/v1",
            json,
            "{}",
            405,
            "MethodNotAllowed",
        ),
        broken(
            "oversized body",
            "POST",
            CMS,
            json,
            huge,
            413,
            "RequestEntityTooLarge",
        ),
        broken(
            "invalid name",
            "POST",
            CMS,
            json,
            bad_name.to_string(),
            422,
            "Invalid",
        ),
        broken(
            "invalid data key",
            "POST",
            CMS,
            json,
            bad_key.to_string(),
            422,
            "Invalid",
        ),
        broken(
            "selector not matching template",
            "POST",
            "/apis/apps/v1/namespaces/default/deployments",
            json,
            mismatch.to_string(),
            422,
            "Invalid",
        ),
        broken(
            "unknown field, Strict",
            "POST",
            &format!("{CMS}?fieldValidation=Strict"),
            json,
            unknown.to_string(),
            400,
            "BadRequest",
        ),
        broken(
            "bad fieldValidation",
            "POST",
            &format!("{CMS}?fieldValidation=Sometimes"),
            json,
            unknown.to_string(),
            400,
            "BadRequest",
        ),
        broken(
            "protobuf body without a kind",
            "POST",
            CMS,
            "application/vnd.kubernetes.protobuf",
            "k8s\0",
            400,
            "BadRequest",
        ),
        broken(
            "PATCH as protobuf",
            "PATCH",
            &format!("{CMS}/existing"),
            "application/vnd.kubernetes.protobuf",
            "k8s\0",
            415,
            "UnsupportedMediaType",
        ),
        broken(
            "missing namespace",
            "POST",
            "/api/v1/namespaces/nope/configmaps",
            json,
            cm("x").to_string(),
            404,
            "NotFound",
        ),
        broken(
            "namespace mismatch",
            "POST",
            CMS,
            json,
            json!({"metadata": {"name": "x", "namespace": "other"}}).to_string(),
            400,
            "BadRequest",
        ),
        broken(
            "PATCH as plain JSON",
            "PATCH",
            &format!("{CMS}/existing"),
            json,
            "{}",
            415,
            "UnsupportedMediaType",
        ),
        broken(
            "failed JSON patch test",
            "PATCH",
            &format!("{CMS}/existing"),
            "application/json-patch+json",
            r#"[{"op":"test","path":"/data/k","value":"other"}]"#,
            400,
            "BadRequest",
        ),
        broken(
            "malformed JSON patch",
            "PATCH",
            &format!("{CMS}/existing"),
            "application/json-patch+json",
            r#"{"op":"add"}"#,
            400,
            "BadRequest",
        ),
        broken(
            "patch renames the object",
            "PATCH",
            &format!("{CMS}/existing"),
            "application/merge-patch+json",
            r#"{"metadata":{"resourceVersion":"1"}}"#,
            409,
            "Conflict",
        ),
        broken(
            "apply without fieldManager",
            "PATCH",
            &format!("{CMS}/existing"),
            "application/apply-patch+yaml",
            "apiVersion: v1\nkind: ConfigMap\ndata: {k: w}",
            422,
            "Invalid",
        ),
        broken(
            "apply carrying managedFields",
            "PATCH",
            &format!("{CMS}/existing?fieldManager=me"),
            "application/apply-patch+yaml",
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {managedFields: [{manager: x}]}\ndata: {k: w}",
            400,
            "BadRequest",
        ),
        broken(
            "apply of another apiVersion",
            "PATCH",
            &format!("{CMS}/existing?fieldManager=me"),
            "application/apply-patch+yaml",
            "apiVersion: v2\nkind: ConfigMap\ndata: {k: w}",
            400,
            "BadRequest",
        ),
        broken(
            "apply of a container without its name",
            "PATCH",
            "/apis/apps/v1/namespaces/default/deployments/nameless?fieldManager=me",
            "application/apply-patch+yaml",
            "apiVersion: apps/v1\nkind: Deployment\nspec: {template: {spec: {containers: [{image: x}]}}}",
            400,
            "BadRequest",
        ),
        broken(
            "apply of the same container twice",
            "PATCH",
            "/apis/apps/v1/namespaces/default/deployments/twice?fieldManager=me",
            "application/apply-patch+yaml",
            "apiVersion: apps/v1\nkind: Deployment\nspec: {template: {spec: {containers: [{name: a}, {name: a}]}}}",
            400,
            "BadRequest",
        ),
        broken(
            "apply with a bad force",
            "PATCH",
            &format!("{CMS}/existing?fieldManager=me&force=maybe"),
            "application/apply-patch+yaml",
            "apiVersion: v1\nkind: ConfigMap\ndata: {k: w}",
            400,
            "BadRequest",
        ),
        broken(
            "force on a merge patch",
            "PATCH",
            &format!("{CMS}/existing?force=true"),
            "application/merge-patch+json",
            r#"{"data":{"k":"w"}}"#,
            422,
            "Invalid",
        ),
        broken(
            "a field manager too long",
            "PUT",
            &format!("{CMS}/existing?fieldManager={}", "m".repeat(129)),
            json,
            cm("existing").to_string(),
            422,
            "Invalid",
        ),
        broken(
            "bad label selector",
            "GET",
            &format!("{CMS}?labelSelector=a%20in%20(b"),
            json,
            "",
            400,
            "BadRequest",
        ),
        broken(
            "bad limit",
            "GET",
            &format!("{CMS}?limit=many"),
            json,
            "",
            400,
            "BadRequest",
        ),
        broken(
            "bad resourceVersion",
            "GET",
            &format!("{CMS}?watch=true&resourceVersion=abc"),
            json,
            "",
            400,
            "BadRequest",
        ),
        broken(
            "bad continue",
            "GET",
            &format!("{CMS}?limit=1&continue=garbage"),
            json,
            "",
            400,
            "BadRequest",
        ),
        broken(
            "resourceVersionMatch alone",
            "GET",
            &format!("{CMS}?resourceVersionMatch=Exact"),
            json,
            "",
            400,
            "BadRequest",
        ),
        broken(
            "future resourceVersion",
            "GET",
            &format!("{CMS}?resourceVersion=99999999"),
            json,
            "",
            504,
            "Timeout",
        ),
        broken(
            "bad propagationPolicy",
            "DELETE",
            &format!("{CMS}/existing?propagationPolicy=Sideways"),
            json,
            "",
            400,
            "BadRequest",
        ),
        broken(
            "stale delete precondition",
            "DELETE",
            &format!("{CMS}/existing"),
            json,
            r#"{"preconditions":{"resourceVersion":"1"}}"#,
            409,
            "Conflict",
        ),
    ];
    for case in table {
        let before = store.store.current_revision().await?;
        let reply = http
            .request(
                case.method,
                &case.path,
                &[("content-type", case.content_type)],
                case.body.clone(),
            )
            .await?;
        let status = reply.json();
        ensure!(
            reply.status == case.code,
            "{}: got {} {}",
            case.what,
            reply.status,
            String::from_utf8_lossy(&reply.body)
        );
        ensure!(
            status["kind"] == "Status" && status["apiVersion"] == "v1",
            "{}: not a Status: {status}",
            case.what
        );
        ensure!(
            status["status"] == "Failure" && status["code"] == case.code,
            "{}: {status}",
            case.what
        );
        ensure!(
            status["reason"] == case.reason,
            "{}: reason {}",
            case.what,
            status["reason"]
        );
        ensure!(
            status["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{}: no message",
            case.what
        );
        ensure!(
            store.store.current_revision().await? == before,
            "{}: the store changed",
            case.what
        );
    }
    // Invalid objects name the field.
    let reply = http.post_json(CMS, &bad_name).await?;
    let causes = &reply.json()["details"]["causes"];
    ensure!(
        causes[0]["field"] == "metadata.name" && causes[0]["reason"] == "FieldValueInvalid",
        "{causes}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_resource_version_is_a_conflict() -> Result<()> {
    let store = StoreHandle::open(Backend::Embedded).await?;
    let server = TestServer::start(store.store.clone()).await?;
    let http = Http::new(&server);
    let created = http.post_json(CMS, &cm("c")).await?.json();
    let rv1 = created["metadata"]["resourceVersion"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let mut update = created.clone();
    update["data"]["k"] = json!("w");
    let updated = http.put_json(&format!("{CMS}/c"), &update).await?;
    ensure!(updated.status == 200, "{:?}", updated.body);
    let rv2 = updated.json()["metadata"]["resourceVersion"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    ensure!(rv2.parse::<i64>()? > rv1.parse::<i64>()?);
    // The same stale version again: 409, and nothing is written.
    let before = store.store.current_revision().await?;
    update["data"]["k"] = json!("x");
    let stale = http.put_json(&format!("{CMS}/c"), &update).await?;
    ensure!(
        stale.status == 409 && stale.json()["reason"] == "Conflict",
        "{:?}",
        stale.body
    );
    ensure!(
        stale.json()["message"]
            .as_str()
            .unwrap_or_default()
            .contains("the object has been modified")
    );
    ensure!(store.store.current_revision().await? == before);
    // Without a resourceVersion the update is unconditional; a no-op keeps the version.
    let mut unconditional = update.clone();
    unconditional["metadata"]
        .as_object_mut()
        .map(|m| m.remove("resourceVersion"));
    let r = http.put_json(&format!("{CMS}/c"), &unconditional).await?;
    ensure!(r.status == 200 && r.json()["data"]["k"] == "x");
    let rv3 = r.json()["metadata"]["resourceVersion"].clone();
    let again = http.put_json(&format!("{CMS}/c"), &unconditional).await?;
    ensure!(
        again.json()["metadata"]["resourceVersion"] == rv3,
        "a no-op update must not write"
    );
    // Name mismatch between URL and body.
    let r = http
        .put_json(&format!("{CMS}/other"), &unconditional)
        .await?;
    ensure!(r.status == 400, "{:?}", r.body);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_fields_follow_field_validation() -> Result<()> {
    let store = StoreHandle::open(Backend::Embedded).await?;
    let server = TestServer::start(store.store.clone()).await?;
    let http = Http::new(&server);
    let mut obj = cm("warned");
    obj["extra"] = json!(true);
    let r = http.post_json(CMS, &obj).await?;
    ensure!(r.status == 201);
    let warning = r
        .headers
        .get("warning")
        .and_then(|w| w.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    ensure!(
        warning.contains("unknown field") && warning.contains("extra"),
        "{warning}"
    );
    ensure!(
        r.json().get("extra").is_none(),
        "unknown fields are dropped"
    );
    obj["metadata"]["name"] = json!("ignored");
    let r = http
        .post_json(&format!("{CMS}?fieldValidation=Ignore"), &obj)
        .await?;
    ensure!(r.status == 201 && r.headers.get("warning").is_none());
    // generateName gives a fresh name each time.
    let generated = json!({"metadata": {"generateName": "gen-"}, "data": {}});
    let a = http.post_json(CMS, &generated).await?.json();
    let b = http.post_json(CMS, &generated).await?.json();
    let (a, b) = (
        a["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
        b["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
    );
    ensure!(
        a.starts_with("gen-") && b.starts_with("gen-") && a != b && a.len() == 9,
        "{a} {b}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lists_paginate_at_one_revision_with_selectors() -> Result<()> {
    let store = StoreHandle::open(Backend::Embedded).await?;
    let server = TestServer::start(store.store.clone()).await?;
    let http = Http::new(&server);
    for i in 0..7 {
        let mut c = cm(&format!("c{i}"));
        c["metadata"]["labels"] = json!({"parity": if i % 2 == 0 { "even" } else { "odd" }});
        ensure!(http.post_json(CMS, &c).await?.status == 201);
    }
    let mut names = Vec::new();
    let mut path = format!("{CMS}?limit=3");
    let mut revision = None;
    loop {
        let page = http.get(&path).await?.json();
        ensure!(page["kind"] == "ConfigMapList");
        let rv = page["metadata"]["resourceVersion"].clone();
        ensure!(
            revision.get_or_insert(rv.clone()) == &rv,
            "every page is read at the first page's revision"
        );
        let items = page["items"].as_array().cloned().unwrap_or_default();
        ensure!(items.len() <= 3);
        names.extend(items.iter().map(|i| {
            i["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_owned()
        }));
        // A write between pages does not show up in later pages.
        if names.len() == 3 {
            http.post_json(CMS, &cm("c9-late")).await?;
        }
        match page["metadata"]["continue"].as_str() {
            Some(c) => path = format!("{CMS}?limit=3&continue={c}"),
            None => break,
        }
    }
    ensure!(
        names == ["c0", "c1", "c2", "c3", "c4", "c5", "c6"],
        "{names:?}"
    );
    // Selectors with a limit fill pages with matching items only.
    let page = http
        .get(&format!("{CMS}?labelSelector=parity%3Dodd&limit=2"))
        .await?
        .json();
    let odd: Vec<&str> = page["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|i| i["metadata"]["name"].as_str())
        .collect();
    ensure!(
        odd == ["c1", "c3"] && page["metadata"]["continue"].is_string(),
        "{page}"
    );
    let page = http
        .get(&format!(
            "{CMS}?labelSelector=parity%20notin%20(odd)&fieldSelector=metadata.name!%3Dc0"
        ))
        .await?
        .json();
    // c2, c4, c6, and c9-late, which has no parity label at all.
    ensure!(page["items"].as_array().map(Vec::len) == Some(4), "{page}");
    // resourceVersion=0 is served from the watch cache; Exact reads the past.
    let cached = http.get(&format!("{CMS}?resourceVersion=0")).await?.json();
    ensure!(cached["items"].as_array().map(Vec::len) == Some(8));
    let rv = revision
        .and_then(|r| r.as_str().map(str::to_owned))
        .unwrap_or_default();
    let past = http
        .get(&format!(
            "{CMS}?resourceVersion={rv}&resourceVersionMatch=Exact"
        ))
        .await?
        .json();
    ensure!(past["items"].as_array().map(Vec::len) == Some(7), "{past}");
    // A table for kubectl.
    let table = http
        .request(
            "GET",
            CMS,
            &[(
                "accept",
                "application/json;as=Table;v=v1;g=meta.k8s.io,application/json",
            )],
            Bytes::new(),
        )
        .await?
        .json();
    ensure!(
        table["kind"] == "Table" && table["columnDefinitions"][1]["name"] == "Data",
        "{table}"
    );
    ensure!(table["rows"][0]["object"]["kind"] == "PartialObjectMetadata");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_subresource_and_generation() -> Result<()> {
    let store = StoreHandle::open(Backend::Embedded).await?;
    let server = TestServer::start(store.store.clone()).await?;
    let http = Http::new(&server);
    let path = "/apis/apps/v1/namespaces/default/deployments";
    let created = http.post_json(path, &deployment("d")).await?.json();
    ensure!(created["metadata"]["generation"] == 1 && created["spec"]["replicas"] == 1);
    // Status writes change status only.
    let mut status = created.clone();
    status["status"] = json!({"replicas": 1, "readyReplicas": 1});
    status["spec"]["replicas"] = json!(9);
    let r = http
        .put_json(&format!("{path}/d/status"), &status)
        .await?
        .json();
    ensure!(
        r["status"]["readyReplicas"] == 1
            && r["spec"]["replicas"] == 1
            && r["metadata"]["generation"] == 1,
        "{r}"
    );
    // Main writes never change status; labels do not bump the generation; spec does.
    let mut main = r.clone();
    main["status"] = json!({"replicas": 42});
    main["metadata"]["labels"] = json!({"x": "y"});
    let r = http.put_json(&format!("{path}/d"), &main).await?.json();
    ensure!(
        r["status"]["replicas"] == 1 && r["metadata"]["generation"] == 1,
        "{r}"
    );
    let r = http
        .request(
            "PATCH",
            &format!("{path}/d"),
            &[("content-type", "application/merge-patch+json")],
            r#"{"spec":{"replicas":3}}"#,
        )
        .await?
        .json();
    ensure!(
        r["metadata"]["generation"] == 2 && r["spec"]["replicas"] == 3,
        "{r}"
    );
    // The scale subresource.
    let scale = http.get(&format!("{path}/d/scale")).await?.json();
    ensure!(
        scale["kind"] == "Scale"
            && scale["spec"]["replicas"] == 3
            && scale["status"]["selector"] == "app=d",
        "{scale}"
    );
    let r = http
        .request(
            "PATCH",
            &format!("{path}/d/scale"),
            &[("content-type", "application/merge-patch+json")],
            r#"{"spec":{"replicas":5}}"#,
        )
        .await?;
    ensure!(r.status == 200 && r.json()["spec"]["replicas"] == 5);
    ensure!(http.get(&format!("{path}/d")).await?.json()["spec"]["replicas"] == 5);
    // Pod binding sets the node once.
    let pod =
        json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c", "image": "i"}]}});
    ensure!(
        http.post_json("/api/v1/namespaces/default/pods", &pod)
            .await?
            .status
            == 201
    );
    let binding = json!({"apiVersion": "v1", "kind": "Binding", "metadata": {"name": "p"}, "target": {"kind": "Node", "name": "n1"}});
    ensure!(
        http.post_json("/api/v1/namespaces/default/pods/p/binding", &binding)
            .await?
            .status
            == 201
    );
    let bound = http.get("/api/v1/namespaces/default/pods/p").await?.json();
    ensure!(bound["spec"]["nodeName"] == "n1", "{bound}");
    // As upstream's binding storage: PodScheduled=True with a transition time.
    let scheduled: Vec<&serde_json::Value> = bound["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|c| c["type"] == "PodScheduled")
        .collect();
    ensure!(
        scheduled.len() == 1
            && scheduled[0]["status"] == "True"
            && scheduled[0]["lastTransitionTime"].is_string()
            && scheduled[0].get("reason").is_none(),
        "{bound}"
    );
    let r = http
        .post_json("/api/v1/namespaces/default/pods/p/binding", &binding)
        .await?;
    ensure!(r.status == 409, "{}", r.json());
    // A Binding naming another uid (the pod was recreated under the same name) is refused
    // and changes nothing; the right uid binds, and the Binding's annotations are copied.
    ensure!(http.post_json("/api/v1/namespaces/default/pods", &json!({
        "metadata": {"name": "q"}, "spec": {"containers": [{"name": "c", "image": "i"}]}}))
        .await?.status == 201);
    let q = http.get("/api/v1/namespaces/default/pods/q").await?.json();
    let wrong = json!({"apiVersion": "v1", "kind": "Binding",
        "metadata": {"name": "q", "uid": "not-the-uid"}, "target": {"kind": "Node", "name": "n1"}});
    let r = http
        .post_json("/api/v1/namespaces/default/pods/q/binding", &wrong)
        .await?;
    ensure!(
        r.status == 409 && r.json()["message"].as_str().is_some_and(|m| m.contains("Precondition failed: UID")),
        "{}",
        r.json()
    );
    let q2 = http.get("/api/v1/namespaces/default/pods/q").await?.json();
    ensure!(q2["spec"].get("nodeName").is_none() && q2["metadata"]["resourceVersion"] == q["metadata"]["resourceVersion"], "{q2}");
    let right = json!({"apiVersion": "v1", "kind": "Binding",
        "metadata": {"name": "q", "uid": q["metadata"]["uid"], "annotations": {"example.com/placed-by": "test"}},
        "target": {"kind": "Node", "name": "n2"}});
    let r = http
        .post_json("/api/v1/namespaces/default/pods/q/binding", &right)
        .await?;
    ensure!(r.status == 201, "{}", r.json());
    let q3 = http.get("/api/v1/namespaces/default/pods/q").await?.json();
    ensure!(
        q3["spec"]["nodeName"] == "n2" && q3["metadata"]["annotations"]["example.com/placed-by"] == "test",
        "{q3}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finalizers_hold_deletion() -> Result<()> {
    let store = StoreHandle::open(Backend::Embedded).await?;
    let server = TestServer::start(store.store.clone()).await?;
    let http = Http::new(&server);
    let mut c = cm("held");
    c["metadata"]["finalizers"] = json!(["example.com/hold"]);
    ensure!(http.post_json(CMS, &c).await?.status == 201);
    let r = http
        .request("DELETE", &format!("{CMS}/held"), &[], Bytes::new())
        .await?;
    ensure!(
        r.status == 202 && r.json()["metadata"]["deletionTimestamp"].is_string(),
        "{:?}",
        r.body
    );
    ensure!(http.get(&format!("{CMS}/held")).await?.status == 200);
    let r = http
        .request(
            "PATCH",
            &format!("{CMS}/held"),
            &[("content-type", "application/merge-patch+json")],
            r#"{"metadata":{"finalizers":null}}"#,
        )
        .await?;
    ensure!(r.status == 200, "{:?}", r.body);
    ensure!(http.get(&format!("{CMS}/held")).await?.status == 404);
    // Foreground deletion is recorded as upstream does, with a finalizer.
    ensure!(http.post_json(CMS, &cm("fg")).await?.status == 201);
    let r = http
        .request(
            "DELETE",
            &format!("{CMS}/fg"),
            &[("content-type", "application/json")],
            r#"{"propagationPolicy":"Foreground"}"#,
        )
        .await?;
    ensure!(
        r.json()["metadata"]["finalizers"] == json!(["foregroundDeletion"]),
        "{:?}",
        r.body
    );
    // DeleteCollection with a selector.
    for name in ["a1", "a2", "b1"] {
        let mut c = cm(name);
        c["metadata"]["labels"] = json!({"group": &name[..1]});
        http.post_json(CMS, &c).await?;
    }
    let r = http
        .request(
            "DELETE",
            &format!("{CMS}?labelSelector=group%3Da"),
            &[],
            Bytes::new(),
        )
        .await?;
    ensure!(
        r.status == 200 && r.json()["items"].as_array().map(Vec::len) == Some(2),
        "{:?}",
        r.body
    );
    ensure!(http.get(&format!("{CMS}/b1")).await?.status == 200);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_get_distinct_addresses_and_ports() -> Result<()> {
    let store = StoreHandle::open(Backend::Embedded).await?;
    let server = TestServer::start(store.store.clone()).await?;
    let http = Http::new(&server);
    let path = "/api/v1/namespaces/default/services";
    let mut tasks = Vec::new();
    for i in 0..20 {
        let http = http.clone();
        tasks.push(tokio::spawn(async move {
            let svc = json!({"metadata": {"name": format!("s{i}")}, "spec": {"type": "NodePort", "ports": [{"port": 80}]}});
            http.post_json(path, &svc).await
        }));
    }
    let mut ips = std::collections::HashSet::new();
    let mut ports = std::collections::HashSet::new();
    for t in tasks {
        let r = t.await??.json();
        ensure!(
            ips.insert(
                r["spec"]["clusterIP"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned()
            ),
            "duplicate IP"
        );
        ensure!(
            ports.insert(
                r["spec"]["ports"][0]["nodePort"]
                    .as_i64()
                    .unwrap_or_default()
            ),
            "duplicate port"
        );
    }
    // Asking for a taken node port or address is refused with the field named.
    let taken = *ports.iter().next().unwrap_or(&0);
    let svc = json!({"metadata": {"name": "dup"}, "spec": {"type": "NodePort", "ports": [{"port": 80, "nodePort": taken}]}});
    let r = http.post_json(path, &svc).await?;
    ensure!(
        r.status == 422 && r.json()["details"]["causes"][0]["field"] == "spec.ports[0].nodePort",
        "{:?}",
        r.body
    );
    let ip = ips.iter().next().cloned().unwrap_or_default();
    let svc =
        json!({"metadata": {"name": "dupip"}, "spec": {"clusterIP": ip, "ports": [{"port": 80}]}});
    ensure!(http.post_json(path, &svc).await?.status == 422);
    // Deleting a Service frees its address for a new one that asks for it.
    for i in 0..20 {
        http.request("DELETE", &format!("{path}/s{i}"), &[], Bytes::new())
            .await?;
    }
    let svc = json!({"metadata": {"name": "reuse"}, "spec": {"clusterIP": ip, "type": "NodePort", "ports": [{"port": 80, "nodePort": taken}]}});
    let r = http.post_json(path, &svc).await?;
    ensure!(r.status == 201, "{:?}", r.body);
    // Updates keep the address and port when the client leaves them out.
    let r = http
        .request(
            "PATCH",
            &format!("{path}/reuse"),
            &[("content-type", "application/merge-patch+json")],
            r#"{"spec":{"clusterIP":null,"clusterIPs":null}}"#,
        )
        .await?
        .json();
    ensure!(r["spec"]["clusterIP"] == json!(ip), "{r}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovery_version_health_and_metrics() -> Result<()> {
    let store = StoreHandle::open(Backend::Embedded).await?;
    let server = TestServer::start(store.store.clone()).await?;
    let http = Http::new(&server);
    let agg = http
        .request("GET", "/apis", &[("accept", "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,application/json")], Bytes::new())
        .await?;
    let ct = agg
        .headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    ensure!(ct.contains("as=APIGroupDiscoveryList"), "{ct}");
    let groups: Vec<String> = agg.json()["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|g| g["metadata"]["name"].as_str().map(str::to_owned))
        .collect();
    for g in [
        "apps",
        "batch",
        "discovery.k8s.io",
        "coordination.k8s.io",
        "rbac.authorization.k8s.io",
    ] {
        ensure!(groups.iter().any(|x| x == g), "{groups:?}");
    }
    let core = http.get("/api/v1").await?.json();
    let names: Vec<&str> = core["resources"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| r["name"].as_str())
        .collect();
    ensure!(
        names.contains(&"pods/status")
            && names.contains(&"pods/binding")
            && names.contains(&"nodes/status"),
        "{names:?}"
    );
    ensure!(http.get("/apis/apps").await?.json()["preferredVersion"]["version"] == "v1");
    ensure!(http.get("/version").await?.json()["major"] == "1");
    for p in ["/healthz", "/livez", "/readyz"] {
        ensure!(http.get(p).await?.status == 200);
    }
    http.get(CMS).await?;
    let metrics = String::from_utf8_lossy(&http.get("/metrics").await?.body).into_owned();
    ensure!(
        metrics
            .contains("apiserver_request_total{verb=\"LIST\",group=\"\",resource=\"configmaps\""),
        "{metrics}"
    );
    ensure!(
        metrics.contains("apiserver_request_duration_seconds_bucket"),
        "{metrics}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_identical_apply_writes_nothing_and_secret_string_data_becomes_data() -> Result<()> {
    let store = StoreHandle::open(Backend::Embedded).await?;
    let server = TestServer::start(store.store.clone()).await?;
    let http = Http::new(&server);
    let apply = |body: &'static str| {
        let http = &http;
        async move {
            http.request(
                "PATCH",
                &format!("{CMS}/applied?fieldManager=me"),
                &[("content-type", "application/apply-patch+yaml")],
                body,
            )
            .await
        }
    };
    let manifest = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: applied}\ndata: {k: v}\n";
    let first = apply(manifest).await?;
    ensure!(first.status == 201, "{:?}", first.body);
    let rv = first.json()["metadata"]["resourceVersion"].clone();
    let before = store.store.current_revision().await?;
    let again = apply(manifest).await?;
    ensure!(again.status == 200, "{:?}", again.body);
    ensure!(again.json()["metadata"]["resourceVersion"] == rv, "an identical apply must not write");
    ensure!(store.store.current_revision().await? == before);
    // A real change is written, and its managedFields entry is refreshed.
    let changed = apply("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: applied}\ndata: {k: w}\n").await?;
    ensure!(changed.json()["data"]["k"] == "w" && changed.json()["metadata"]["resourceVersion"] != rv);

    // Secrets: stringData is merged into data (base64), its keys winning, and not stored.
    let secret = json!({
        "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"},
        "data": {"a": "b2xk", "b": "Yg=="}, "stringData": {"a": "new", "c": "plain text"}
    });
    let created = http.post_json("/api/v1/namespaces/default/secrets", &secret).await?;
    ensure!(created.status == 201, "{:?}", created.body);
    let stored = http.get("/api/v1/namespaces/default/secrets/s").await?.json();
    ensure!(stored["data"] == json!({"a": "bmV3", "b": "Yg==", "c": "cGxhaW4gdGV4dA=="}), "{stored}");
    ensure!(stored.get("stringData").is_none(), "{stored}");
    // Not text: refused, saying why.
    let bad = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "t"}, "stringData": {"n": 5}});
    let refused = http.post_json("/api/v1/namespaces/default/secrets", &bad).await?;
    ensure!(refused.status == 400, "{:?}", refused.body);
    ensure!(refused.json()["message"].as_str().unwrap_or_default().contains("expected a string"), "{:?}", refused.body);
    Ok(())
}

/// `PATCH` with an applied configuration (YAML or JSON) as `manager`.
async fn apply_as(http: &Http, path: &str, manager: &str, extra: &str, body: &Value) -> Result<common::Reply> {
    http.request(
        "PATCH",
        &format!("{path}?fieldManager={manager}{extra}"),
        &[("content-type", "application/apply-patch+yaml")],
        body.to_string(),
    )
    .await
}

/// The managed fields entries as `(manager, operation, subresource, fieldsV1)`.
fn entries(obj: &Value) -> Vec<(String, String, String, Value)> {
    obj["metadata"]["managedFields"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| {
            let s = |f: &str| e[f].as_str().unwrap_or_default().to_owned();
            (s("manager"), s("operation"), s("subresource"), e["fieldsV1"].clone())
        })
        .collect()
}

fn fields(obj: &Value, manager: &str) -> Value {
    entries(obj)
        .into_iter()
        .find(|e| e.0 == manager)
        .map(|e| e.3)
        .unwrap_or(Value::Null)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_write_records_who_set_what() -> Result<()> {
    let store = StoreHandle::open(Backend::Embedded).await?;
    let server = TestServer::start(store.store.clone()).await?;
    let http = Http::new(&server);
    let path = format!("{CMS}/owned");

    // Create: the creator owns what it set, defaults included.
    let mut body = cm("owned");
    body["metadata"]["labels"] = json!({"app": "x"});
    let created = http.post_json(&format!("{CMS}?fieldManager=creator"), &body).await?;
    ensure!(created.status == 201, "{:?}", created.body);
    let obj = created.json();
    ensure!(
        entries(&obj) == [("creator".into(), "Update".into(), String::new(), json!({"f:data": {".": {}, "f:k": {}}, "f:metadata": {"f:labels": {".": {}, "f:app": {}}}}))],
        "{obj}"
    );

    // An update owns what it changed, taken from the creator.
    let mut put = obj.clone();
    put["data"]["k"] = json!("changed");
    let updated = http.put_json(&format!("{path}?fieldManager=editor"), &put).await?.json();
    ensure!(fields(&updated, "editor") == json!({"f:data": {"f:k": {}}}), "{updated}");
    ensure!(fields(&updated, "creator") == json!({"f:data": {}, "f:metadata": {"f:labels": {".": {}, "f:app": {}}}}), "{updated}");

    // Without fieldManager the manager is the User-Agent's.
    let patched = http
        .request(
            "PATCH",
            &path,
            &[("content-type", "application/merge-patch+json"), ("user-agent", "my-tool/1.2 (linux)")],
            r#"{"data":{"n":"1"}}"#,
        )
        .await?
        .json();
    ensure!(fields(&patched, "my-tool") == json!({"f:data": {"f:n": {}}}), "{patched}");

    // `managedFields: [{}]` clears them; the object then stays untracked until applied to.
    let cleared = http
        .request("PATCH", &path, &[("content-type", "application/merge-patch+json")], r#"{"metadata":{"managedFields":[{}]}}"#)
        .await?
        .json();
    ensure!(cleared["metadata"].get("managedFields").is_none(), "{cleared}");
    let untracked = http
        .request("PATCH", &format!("{path}?fieldManager=later"), &[("content-type", "application/merge-patch+json")], r#"{"data":{"n":"2"}}"#)
        .await?
        .json();
    ensure!(untracked["metadata"].get("managedFields").is_none(), "{untracked}");
    // An apply then finds what exists owned by "before-first-apply": changing it conflicts.
    let config = |n: &str| json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "owned"}, "data": {"n": n, "m": "1"}});
    let refused = apply_as(&http, &path, "applier", "", &config("3")).await?;
    ensure!(refused.status == 409, "{:?}", refused.body);
    ensure!(refused.json()["message"] == "Apply failed with 1 conflict: conflict with \"before-first-apply\" using v1: .data.n", "{:?}", refused.body);
    let applied = apply_as(&http, &path, "applier", "", &config("2")).await?;
    ensure!(applied.status == 200, "{:?}", applied.body);
    let applied = applied.json();
    ensure!(fields(&applied, "applier") == json!({"f:data": {"f:m": {}, "f:n": {}}}), "{applied}");
    ensure!(fields(&applied, "before-first-apply")["f:data"]["f:n"] == json!({}), "shared: {applied}");

    // Status and scale writes are recorded with their subresource.
    let deploy = "/apis/apps/v1/namespaces/default/deployments";
    ensure!(http.post_json(&format!("{deploy}?fieldManager=creator"), &deployment("web")).await?.status == 201);
    let status = http
        .request("PATCH", &format!("{deploy}/web/status?fieldManager=controller"), &[("content-type", "application/merge-patch+json")], r#"{"status":{"replicas":1}}"#)
        .await?
        .json();
    ensure!(
        entries(&status).contains(&("controller".into(), "Update".into(), "status".into(), json!({"f:status": {"f:replicas": {}}}))),
        "{status}"
    );
    let scale = json!({"apiVersion": "autoscaling/v1", "kind": "Scale", "metadata": {"name": "web"}, "spec": {"replicas": 4}});
    ensure!(http.put_json(&format!("{deploy}/web/scale?fieldManager=scaler"), &scale).await?.status == 200);
    let web = http.get(&format!("{deploy}/web")).await?.json();
    ensure!(
        entries(&web).contains(&("scaler".into(), "Update".into(), "scale".into(), json!({"f:spec": {"f:replicas": {}}}))),
        "{web}"
    );
    ensure!(fields(&web, "creator")["f:spec"].get("f:replicas").is_none(), "{web}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_conflicts_force_and_dropped_fields() -> Result<()> {
    let store = StoreHandle::open(Backend::Embedded).await?;
    let server = TestServer::start(store.store.clone()).await?;
    let http = Http::new(&server);
    let deploy = "/apis/apps/v1/namespaces/default/deployments/web";
    let mut config = deployment("web");
    config["spec"]["replicas"] = json!(2);
    ensure!(apply_as(&http, deploy, "a", "", &config).await?.status == 201);

    // Another value from another manager: 409 with one FieldManagerConflict cause per field.
    let mut other = config.clone();
    other["spec"]["replicas"] = json!(3);
    other["spec"]["template"]["spec"]["containers"][0]["image"] = json!("nginx:2");
    let before = store.store.current_revision().await?;
    let refused = apply_as(&http, deploy, "b", "", &other).await?;
    ensure!(refused.status == 409, "{:?}", refused.body);
    let status = refused.json();
    ensure!(status["reason"] == "Conflict", "{status}");
    ensure!(
        status["message"]
            == "Apply failed with 2 conflicts: conflicts with \"a\":\n- .spec.replicas\n- .spec.template.spec.containers[name=\"c\"].image",
        "{status}"
    );
    ensure!(
        status["details"]["causes"][0]
            == json!({"reason": "FieldManagerConflict", "message": "conflict with \"a\"", "field": ".spec.replicas"}),
        "{status}"
    );
    ensure!(store.store.current_revision().await? == before, "a refused apply writes nothing");

    // The same values are shared; force takes the others over.
    ensure!(apply_as(&http, deploy, "b", "", &config).await?.status == 200);
    let forced = apply_as(&http, deploy, "b", "&force=true", &other).await?.json();
    ensure!(forced["spec"]["replicas"] == 3, "{forced}");
    ensure!(fields(&forced, "a")["f:spec"].get("f:replicas").is_none(), "{forced}");
    ensure!(fields(&forced, "b")["f:spec"]["f:replicas"] == json!({}), "{forced}");

    // Service ports are keyed by port and protocol; a port dropped from the configuration goes.
    let svc = "/api/v1/namespaces/default/services/s";
    let service = |ports: Value| json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "s"}, "spec": {"selector": {"app": "x"}, "ports": ports}});
    ensure!(apply_as(&http, svc, "me", "", &service(json!([{"name": "http", "port": 80}, {"name": "https", "port": 443}]))).await?.status == 201);
    let one = apply_as(&http, svc, "me", "", &service(json!([{"name": "http", "port": 80}]))).await?.json();
    let ports: Vec<i64> = one["spec"]["ports"].as_array().into_iter().flatten().filter_map(|p| p["port"].as_i64()).collect();
    ensure!(ports == [80], "{one}");
    ensure!(
        fields(&one, "me")["f:spec"]["f:ports"] == json!({"k:{\"port\":80,\"protocol\":\"TCP\"}": {".": {}, "f:name": {}, "f:port": {}}}),
        "{one}"
    );
    // Fields the server set (the cluster IP) are nobody's and survive applies.
    ensure!(one["spec"]["clusterIP"].as_str().is_some_and(|ip| ip.starts_with("10.")), "{one}");
    Ok(())
}
