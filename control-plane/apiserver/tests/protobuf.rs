//! Kubernetes protobuf request bodies: the real kubectl's typed clients (`kubectl create
//! deployment|configmap|secret|service|namespace|serviceaccount|job`, `auth can-i`) send
//! `application/vnd.kubernetes.protobuf`; the server decodes them into the same objects as
//! JSON and always answers JSON. Raw requests cover update (PUT), PATCH (415), bad bodies and
//! content negotiation.

mod common;

use anyhow::{Context, Result, ensure};
use base64::Engine;
use common::{Backend, Http, StoreHandle, TestServer};
use prost_reflect::prost::Message;
use prost_reflect::{DescriptorPool, DynamicMessage, Value as ProtoValue};
use serde_json::{Value, json};

const PROTOBUF: &str = "application/vnd.kubernetes.protobuf";

/// The descriptors the server itself decodes with (compiled by build.rs).
static DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/kubernetes.fds"));

/// `k8s\0` + `runtime.Unknown{typeMeta, raw}` for `message` built from its protobuf-JSON form,
/// as client-go encodes an object.
fn protobuf_body(api_version: &str, kind: &str, message: &str, object: Value) -> Result<Vec<u8>> {
    let pool = DescriptorPool::decode(DESCRIPTOR_SET)?;
    let desc = |name: &str| {
        pool.get_message_by_name(name)
            .with_context(|| format!("no message {name}"))
    };
    let raw = DynamicMessage::deserialize(desc(message)?, object)?.encode_to_vec();
    let type_meta = DynamicMessage::deserialize(
        desc("k8s.io.apimachinery.pkg.runtime.TypeMeta")?,
        json!({"apiVersion": api_version, "kind": kind}),
    )?;
    let mut unknown = DynamicMessage::new(desc("k8s.io.apimachinery.pkg.runtime.Unknown")?);
    unknown.set_field_by_name("typeMeta", ProtoValue::Message(type_meta));
    unknown.set_field_by_name("raw", ProtoValue::Bytes(raw.into()));
    let mut body = b"k8s\0".to_vec();
    body.extend(unknown.encode_to_vec());
    Ok(body)
}

/// Runs kubectl (with `-v=8`, which logs request headers) and checks that it sent its
/// object as protobuf; returns stdout.
async fn kubectl_protobuf(server: &TestServer, args: &[&str]) -> Result<String> {
    // First, so that it is not taken for part of a command after `--`.
    let mut all = vec!["-v=8"];
    all.extend_from_slice(args);
    let out = server.kubectl_with_input(&all, None).await?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(out.status.success(), "kubectl {args:?} failed: {stderr}");
    ensure!(
        stderr.contains(&format!("Content-Type: {PROTOBUF}")),
        "kubectl {args:?} did not send protobuf:\n{stderr}"
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

async fn get_json(server: &TestServer, args: &[&str]) -> Result<Value> {
    let mut all = args.to_vec();
    all.extend(["-o", "json"]);
    let out = server.kubectl(&all).await?;
    serde_json::from_str(&out).with_context(|| format!("kubectl {args:?} printed {out}"))
}

#[tokio::test]
async fn kubectl_create_sends_protobuf_and_stores_the_same_objects() -> Result<()> {
    let store = StoreHandle::open(Backend::Embedded).await?;
    let server = TestServer::start(store.store.clone()).await?;

    // Every create below checks that kubectl sent protobuf (kubectl_protobuf).
    let created = kubectl_protobuf(
        &server,
        &[
            "create",
            "deployment",
            "web",
            "--image=nginx",
            "--replicas=2",
        ],
    )
    .await?;
    ensure!(created.contains("deployment.apps/web created"), "{created}");
    let web = get_json(&server, &["get", "deployment", "web"]).await?;
    ensure!(web["spec"]["replicas"] == 2, "{web}");
    ensure!(
        web["spec"]["selector"]["matchLabels"] == json!({"app": "web"}),
        "{web}"
    );
    ensure!(
        web["spec"]["template"]["metadata"]["labels"] == json!({"app": "web"}),
        "{web}"
    );
    let container = &web["spec"]["template"]["spec"]["containers"][0];
    ensure!(
        container["name"] == "nginx" && container["image"] == "nginx",
        "{web}"
    );
    // Defaulting ran on the decoded object as on JSON.
    ensure!(web["spec"]["strategy"]["type"] == "RollingUpdate", "{web}");
    ensure!(container["imagePullPolicy"] == "Always", "{web}");
    ensure!(web["metadata"]["generation"] == 1, "{web}");
    ensure!(web["metadata"]["creationTimestamp"].is_string(), "{web}");

    ensure!(
        kubectl_protobuf(&server, &["create", "configmap", "c", "--from-literal=a=b"])
            .await?
            .contains("configmap/c created")
    );
    let c = get_json(&server, &["get", "configmap", "c"]).await?;
    ensure!(c["data"] == json!({"a": "b"}), "{c}");

    kubectl_protobuf(
        &server,
        &["create", "secret", "generic", "s", "--from-literal=k=v"],
    )
    .await?;
    let s = get_json(&server, &["get", "secret", "s"]).await?;
    ensure!(s["type"] == "Opaque", "{s}");
    let stored = s["data"]["k"].as_str().context("data.k")?;
    let decoded = base64::engine::general_purpose::STANDARD.decode(stored)?;
    ensure!(decoded == b"v", "data.k is {stored:?}");

    kubectl_protobuf(
        &server,
        &["create", "service", "clusterip", "svc", "--tcp=80:8080"],
    )
    .await?;
    let svc = get_json(&server, &["get", "service", "svc"]).await?;
    let port = &svc["spec"]["ports"][0];
    ensure!(port["port"] == 80 && port["targetPort"] == 8080, "{svc}");
    ensure!(
        port["protocol"] == "TCP" && port["name"] == "80-8080",
        "{svc}"
    );
    ensure!(svc["spec"]["type"] == "ClusterIP", "{svc}");
    ensure!(svc["spec"]["selector"] == json!({"app": "svc"}), "{svc}");
    ensure!(
        svc["spec"]["clusterIP"]
            .as_str()
            .is_some_and(|ip| !ip.is_empty()),
        "no ClusterIP allocated: {svc}"
    );

    kubectl_protobuf(&server, &["create", "namespace", "team"]).await?;
    let ns = get_json(&server, &["get", "namespace", "team"]).await?;
    ensure!(ns["metadata"]["name"] == "team", "{ns}");
    ensure!(ns["status"]["phase"] == "Active", "{ns}");

    kubectl_protobuf(
        &server,
        &["create", "serviceaccount", "robot", "-n", "team"],
    )
    .await?;
    let sa = get_json(&server, &["get", "serviceaccount", "robot", "-n", "team"]).await?;
    ensure!(sa["metadata"]["namespace"] == "team", "{sa}");

    kubectl_protobuf(
        &server,
        &[
            "create",
            "job",
            "once",
            "--image=busybox",
            "--",
            "echo",
            "hi",
        ],
    )
    .await?;
    let job = get_json(&server, &["get", "job", "once"]).await?;
    let pod = &job["spec"]["template"]["spec"];
    ensure!(pod["containers"][0]["image"] == "busybox", "{job}");
    ensure!(
        pod["containers"][0]["command"] == json!(["echo", "hi"]),
        "{job}"
    );
    ensure!(pod["restartPolicy"] == "Never", "{job}");

    // Server-side dry run: answered (as YAML by kubectl, from our JSON), nothing stored.
    let yaml = kubectl_protobuf(
        &server,
        &[
            "create",
            "deployment",
            "x",
            "--image=y",
            "--dry-run=server",
            "-o",
            "yaml",
        ],
    )
    .await?;
    // `y` is quoted: a bare y is a YAML 1.1 boolean.
    for needle in ["kind: Deployment", "name: x", "image: \"y\"", "replicas: 1"] {
        ensure!(yaml.contains(needle), "dry run lacks {needle:?}:\n{yaml}");
    }
    let missing = server.kubectl_fails(&["get", "deployment", "x"]).await?;
    ensure!(missing.contains("not found"), "{missing}");

    // SelfSubjectAccessReview is created from protobuf too.
    let can = kubectl_protobuf(&server, &["auth", "can-i", "create", "pods"]).await?;
    ensure!(can.trim() == "yes", "{can}");
    Ok(())
}

#[tokio::test]
async fn kubectl_create_keeps_meaningful_zeros_lists_and_references() -> Result<()> {
    let store = StoreHandle::open(Backend::Embedded).await?;
    let server = TestServer::start(store.store.clone()).await?;

    // A pointer set to zero is not "unset": replicas stays 0 (defaulting would make it 1).
    kubectl_protobuf(
        &server,
        &[
            "create",
            "deployment",
            "idle",
            "--image=nginx",
            "--replicas=0",
        ],
    )
    .await?;
    let idle = get_json(&server, &["get", "deployment", "idle"]).await?;
    ensure!(idle["spec"]["replicas"] == 0, "{idle}");
    // PriorityClass.value is required: 0 is kept.
    kubectl_protobuf(
        &server,
        &[
            "create",
            "priorityclass",
            "zero",
            "--value=0",
            "--description=none",
        ],
    )
    .await?;
    let zero = get_json(&server, &["get", "priorityclass", "zero"]).await?;
    ensure!(
        zero["value"] == 0 && zero["description"] == "none",
        "{zero}"
    );

    kubectl_protobuf(
        &server,
        &[
            "create",
            "cronjob",
            "nightly",
            "--image=busybox",
            "--schedule=0 0 * * *",
            "--",
            "date",
        ],
    )
    .await?;
    let cron = get_json(&server, &["get", "cronjob", "nightly"]).await?;
    ensure!(cron["spec"]["schedule"] == "0 0 * * *", "{cron}");
    let pod = &cron["spec"]["jobTemplate"]["spec"]["template"]["spec"];
    ensure!(pod["containers"][0]["command"] == json!(["date"]), "{cron}");

    // RBAC: a list holding the empty string (the core group) survives.
    kubectl_protobuf(&server, &["create", "namespace", "team"]).await?;
    kubectl_protobuf(
        &server,
        &["create", "serviceaccount", "robot", "-n", "team"],
    )
    .await?;
    kubectl_protobuf(
        &server,
        &[
            "create",
            "role",
            "reader",
            "--verb=get,list",
            "--resource=pods",
            "-n",
            "team",
        ],
    )
    .await?;
    let role = get_json(&server, &["get", "role", "reader", "-n", "team"]).await?;
    ensure!(
        role["rules"]
            == json!([{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list"]}]),
        "{role}"
    );
    kubectl_protobuf(
        &server,
        &[
            "create",
            "rolebinding",
            "readers",
            "--role=reader",
            "--serviceaccount=team:robot",
            "-n",
            "team",
        ],
    )
    .await?;
    let binding = get_json(&server, &["get", "rolebinding", "readers", "-n", "team"]).await?;
    ensure!(
        binding["roleRef"]
            == json!({"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "reader"}),
        "{binding}"
    );
    ensure!(
        binding["subjects"]
            == json!([{"kind": "ServiceAccount", "name": "robot", "namespace": "team"}]),
        "{binding}"
    );
    kubectl_protobuf(
        &server,
        &[
            "create",
            "clusterrole",
            "health",
            "--verb=get",
            "--non-resource-url=/healthz",
        ],
    )
    .await?;
    let health = get_json(&server, &["get", "clusterrole", "health"]).await?;
    ensure!(
        health["rules"] == json!([{"nonResourceURLs": ["/healthz"], "verbs": ["get"]}]),
        "{health}"
    );
    // TokenRequest (serviceaccounts/token) is protobuf too.
    let token = kubectl_protobuf(&server, &["create", "token", "robot", "-n", "team"]).await?;
    ensure!(token.trim().split('.').count() == 3, "not a JWT: {token}");
    // The binding works: the robot may list pods in team.
    let can = kubectl_protobuf(
        &server,
        &[
            "auth",
            "can-i",
            "list",
            "pods",
            "-n",
            "team",
            "--as=system:serviceaccount:team:robot",
        ],
    )
    .await?;
    ensure!(can.trim() == "yes", "{can}");
    Ok(())
}

#[tokio::test]
async fn raw_protobuf_create_update_patch_and_negotiation() -> Result<()> {
    let store = StoreHandle::open(Backend::Embedded).await?;
    let server = TestServer::start(store.store.clone()).await?;
    let http = Http::new(&server);
    let path = "/api/v1/namespaces/default/configmaps";
    let headers = [
        ("content-type", PROTOBUF),
        (
            "accept",
            "application/vnd.kubernetes.protobuf, application/json",
        ),
    ];

    // Create: the answer is JSON although protobuf comes first in Accept.
    let body = protobuf_body(
        "v1",
        "ConfigMap",
        "k8s.io.api.core.v1.ConfigMap",
        json!({"metadata": {"name": "cfg", "namespace": "", "labels": {"app": "web"}}, "data": {"a": "1"}}),
    )?;
    let created = http.request("POST", path, &headers, body).await?;
    ensure!(created.status == 201, "{created:?}");
    ensure!(
        created.headers["content-type"] == "application/json",
        "{:?}",
        created.headers
    );
    let created = created.json();
    ensure!(created["data"] == json!({"a": "1"}), "{created}");
    ensure!(
        created["metadata"]["labels"] == json!({"app": "web"}),
        "{created}"
    );
    ensure!(
        created["metadata"].get("namespace") == Some(&json!("default")),
        "{created}"
    );
    let rv = created["metadata"]["resourceVersion"]
        .as_str()
        .context("resourceVersion")?
        .to_owned();

    // Update (PUT) with protobuf, with the resourceVersion precondition.
    let body = protobuf_body(
        "v1",
        "ConfigMap",
        "k8s.io.api.core.v1.ConfigMap",
        json!({"metadata": {"name": "cfg", "resourceVersion": rv}, "data": {"a": "2", "b": ""}}),
    )?;
    let updated = http
        .request("PUT", &format!("{path}/cfg"), &headers, body.clone())
        .await?;
    ensure!(updated.status == 200, "{updated:?}");
    ensure!(updated.headers["content-type"] == "application/json");
    ensure!(
        updated.json()["data"] == json!({"a": "2", "b": ""}),
        "{:?}",
        updated
    );
    // The same body again is stale: 409, as with JSON.
    let stale = http
        .request("PUT", &format!("{path}/cfg"), &headers, body)
        .await?;
    ensure!(stale.status == 409, "{stale:?}");

    // Go writes a zero IntOrString (a Service port without targetPort) as type 0, intVal 0:
    // defaulted to the port, as upstream.
    let service = protobuf_body(
        "v1",
        "Service",
        "k8s.io.api.core.v1.Service",
        json!({
            "metadata": {"name": "svc"},
            "spec": {"ports": [{"port": 80, "targetPort": {"type": 0, "intVal": 0, "strVal": ""}}]},
        }),
    )?;
    let svc = http
        .request(
            "POST",
            "/api/v1/namespaces/default/services",
            &headers,
            service,
        )
        .await?;
    ensure!(svc.status == 201, "{svc:?}");
    let port = &svc.json()["spec"]["ports"][0];
    ensure!(
        port["targetPort"] == 80 && port["protocol"] == "TCP",
        "{port}"
    );

    // PATCH never takes protobuf.
    let patch = http
        .request("PATCH", &format!("{path}/cfg"), &headers, b"k8s\0".to_vec())
        .await?;
    ensure!(patch.status == 415, "{patch:?}");

    // A kind without a vendored message: 415 naming it. Garbage: 400. Neither stores anything.
    let widget = protobuf_body("v1", "Widget", "k8s.io.api.core.v1.ConfigMap", json!({}))?;
    let unknown = http.request("POST", path, &headers, widget).await?;
    ensure!(unknown.status == 415, "{unknown:?}");
    ensure!(
        unknown.json()["message"]
            .as_str()
            .is_some_and(|m| m.contains("Widget"))
    );
    for garbage in [
        b"k8s\0\x0a\xff\xff".to_vec(),
        b"{\"kind\":\"ConfigMap\"}".to_vec(),
    ] {
        let bad = http.request("POST", path, &headers, garbage).await?;
        ensure!(bad.status == 400, "{bad:?}");
        ensure!(bad.json()["kind"] == "Status", "{bad:?}");
    }
    // The kind must match the URL's resource, as with JSON.
    let secret = protobuf_body(
        "v1",
        "Secret",
        "k8s.io.api.core.v1.Secret",
        json!({"metadata": {"name": "nope"}}),
    )?;
    let mismatch = http.request("POST", path, &headers, secret).await?;
    ensure!(mismatch.status == 400, "{mismatch:?}");

    // Discovery never advertises protobuf, plain or aggregated (kubectl's Accept).
    let aggregated = "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,\
                      application/json";
    for (doc, accept) in [
        ("/api", "application/json"),
        ("/apis", "application/json"),
        ("/api/v1", "application/json"),
        ("/apis/apps/v1", "application/json"),
        ("/api", aggregated),
        ("/apis", aggregated),
    ] {
        let reply = http
            .request("GET", doc, &[("accept", accept)], Vec::new())
            .await?;
        ensure!(reply.status == 200, "{doc}: {reply:?}");
        ensure!(
            reply.headers["content-type"]
                .to_str()?
                .starts_with("application/json")
        );
        ensure!(
            !String::from_utf8_lossy(&reply.body).contains("protobuf"),
            "{doc} advertises protobuf"
        );
    }
    Ok(())
}
