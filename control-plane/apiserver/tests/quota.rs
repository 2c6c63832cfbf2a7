//! LimitRange and ResourceQuota against the API server, with the real kubectl and raw HTTP:
//! defaults a LimitRange gives pods, bounds it enforces (403 with upstream's messages),
//! invalid objects (422 with causes), quota admission (refusals, charges of `status.used`,
//! dry runs), and concurrent creates that never overshoot a quota, on one API server and on
//! two sharing a store. No controller runs here: where a test needs a quota's usage counted,
//! it writes the status as the resourcequota controller would (the controller itself is
//! tested in `coxswain-controllers`).

mod common;

use anyhow::{Context, Result, ensure};
use common::{Backend, Http, StoreHandle, TestServer};
use serde_json::{Value, json};

const PODS: &str = "/api/v1/namespaces/default/pods";
const QUOTAS: &str = "/api/v1/namespaces/default/resourcequotas";
const LIMIT_RANGES: &str = "/api/v1/namespaces/default/limitranges";

fn pod(name: &str, resources: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
        "spec": {"containers": [{"name": "app", "image": "busybox:1.36", "resources": resources}]}})
}

/// Writes a quota's status as the controller would on its first sync: `hard` from the spec,
/// `used` as given.
async fn count_quota(http: &Http, name: &str, used: Value) -> Result<Value> {
    let current = http.get(&format!("{QUOTAS}/{name}")).await?.json();
    let mut with_status = current.clone();
    with_status["status"] = json!({"hard": current["spec"]["hard"], "used": used});
    let reply = http.put_json(&format!("{QUOTAS}/{name}/status"), &with_status).await?;
    ensure!(reply.status == 200, "status update: {} {}", reply.status, reply.json());
    Ok(reply.json())
}

async fn used(http: &Http, name: &str) -> Result<Value> {
    Ok(http.get(&format!("{QUOTAS}/{name}")).await?.json()["status"]["used"].clone())
}

/// A LimitRange's defaults reach the pods kubectl creates (and `kubectl get -o yaml` shows
/// them with upstream's annotation); its bounds refuse pods with 403 and upstream's message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limit_ranges_default_and_bound_pods() -> Result<()> {
    let store = StoreHandle::open(Backend::Embedded).await?;
    let server = TestServer::start(store.store.clone()).await?;
    let http = Http::new(&server);
    server
        .apply(
            r#"
apiVersion: v1
kind: LimitRange
metadata: {name: limits}
spec:
  limits:
  - type: Container
    max: {cpu: 500m, memory: 1Gi}
    default: {memory: 256Mi}
    defaultRequest: {cpu: 100m}
  - type: Pod
    max: {memory: 1536Mi}
"#,
            &[],
        )
        .await?;
    // Defaulting filled the Container limit: default cpu from max, default request memory
    // from default.
    let lr = server.kubectl(&["get", "limitrange", "limits", "-o", "json"]).await?;
    let lr: Value = serde_json::from_str(&lr)?;
    ensure!(lr["spec"]["limits"][0]["default"] == json!({"cpu": "500m", "memory": "256Mi"}), "{lr}");
    ensure!(lr["spec"]["limits"][0]["defaultRequest"] == json!({"cpu": "100m", "memory": "256Mi"}), "{lr}");
    let table = server.kubectl(&["get", "limits"]).await?;
    ensure!(table.contains("CREATED AT") && table.contains("limits"), "{table}");
    let described = server.kubectl(&["describe", "limitrange", "limits"]).await?;
    ensure!(
        described.contains("Container") && described.contains("500m") && described.contains("256Mi"),
        "{described}"
    );
    let explained = server.kubectl(&["explain", "limitrange.spec.limits.maxLimitRequestRatio"]).await?;
    ensure!(explained.contains("KIND:       LimitRange"), "{explained}");

    server
        .kubectl(&["run", "web", "--image=busybox:1.36", "--restart=Never", "--", "sleep", "3600"])
        .await?;
    let yaml = server.kubectl(&["get", "pod", "web", "-o", "yaml"]).await?;
    let got: Value = serde_yaml_ng::from_str(&yaml)?;
    let resources = &got["spec"]["containers"][0]["resources"];
    ensure!(
        resources["requests"] == json!({"cpu": "100m", "memory": "256Mi"})
            && resources["limits"] == json!({"cpu": "500m", "memory": "256Mi"}),
        "{yaml}"
    );
    ensure!(
        got["metadata"]["annotations"]["kubernetes.io/limit-ranger"]
            == "LimitRanger plugin set: cpu, memory request for container web; cpu, memory limit for container web",
        "{yaml}"
    );
    ensure!(got["status"]["qosClass"] == "Burstable", "{yaml}");

    // Over the container max: kubectl shows upstream's message; the raw reply is a 403 Status.
    let err = server
        .apply(&pod("big", json!({"limits": {"cpu": "1"}})).to_string(), &[])
        .await
        .err()
        .context("a pod over the LimitRange was created")?
        .to_string();
    ensure!(
        err.contains(r#"pods "big" is forbidden: maximum cpu usage per Container is 500m, but limit is 1"#),
        "{err}"
    );
    let reply = http
        .post_json(PODS, &pod("big", json!({"limits": {"cpu": "1"}})))
        .await?;
    ensure!(reply.status == 403, "{} {}", reply.status, reply.json());
    ensure!(reply.json()["reason"] == "Forbidden", "{}", reply.json());
    // Two containers within the container bound but over the pod's.
    let mut two = pod("pair", json!({"limits": {"memory": "1Gi"}}));
    two["spec"]["containers"]
        .as_array_mut()
        .context("containers")?
        .push(json!({"name": "side", "image": "busybox:1.36", "resources": {"limits": {"memory": "1Gi"}}}));
    let reply = http.post_json(PODS, &two).await?;
    ensure!(
        reply.status == 403
            && reply.json()["message"]
                == r#"pods "pair" is forbidden: maximum memory usage per Pod is 1536Mi, but limit is 2Gi"#,
        "{}",
        reply.json()
    );
    for name in ["big", "pair"] {
        ensure!(http.get(&format!("{PODS}/{name}")).await?.status == 404, "{name} was stored");
    }
    Ok(())
}

/// Invalid LimitRanges and ResourceQuotas are 422 with a cause per problem, and nothing is
/// stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_limit_ranges_and_quotas_are_refused_with_causes() -> Result<()> {
    let store = StoreHandle::open(Backend::Embedded).await?;
    let server = TestServer::start(store.store.clone()).await?;
    let http = Http::new(&server);
    let cases = [
        (
            LIMIT_RANGES,
            json!({"metadata": {"name": "bad"}, "spec": {"limits": [
                {"type": "Container", "min": {"cpu": "1"}, "max": {"cpu": "500m"}},
                {"type": "Pod", "default": {"cpu": "1"}},
                {"type": "Container", "max": {"memory": "lots"}},
            ]}}),
            vec![
                "spec.limits[0].min[cpu]",
                "spec.limits[1].default",
                "spec.limits[2].type",
                "spec.limits[2].max[memory]",
            ],
        ),
        (
            QUOTAS,
            json!({"metadata": {"name": "bad"}, "spec": {
                "hard": {"pods": "2.5", "requests.cpu": "-1", "widgets": "1"},
                "scopes": ["BestEffort", "NotBestEffort"],
            }}),
            vec!["spec.hard[pods]", "spec.hard[requests.cpu]", "spec.hard[widgets]", "spec.scopes"],
        ),
        (
            QUOTAS,
            json!({"metadata": {"name": "bad"}, "spec": {"hard": {"pods": "1"},
                "scopeSelector": {"matchExpressions": [{"scopeName": "PriorityClass", "operator": "In"}]}}}),
            vec!["spec.scopeSelector.matchExpressions.values"],
        ),
    ];
    for (path, body, want) in cases {
        let reply = http.post_json(path, &body).await?;
        let status = reply.json();
        ensure!(reply.status == 422 && status["reason"] == "Invalid", "{} {status}", reply.status);
        let fields: Vec<&str> = status["details"]["causes"]
            .as_array()
            .context("causes")?
            .iter()
            .filter_map(|c| c["field"].as_str())
            .collect();
        for field in &want {
            ensure!(fields.contains(field), "{field} missing from {status}");
        }
        ensure!(http.get(&format!("{path}/bad")).await?.status == 404, "stored: {body}");
    }
    // A valid quota; then its scopes cannot change.
    let reply = http
        .post_json(QUOTAS, &json!({"metadata": {"name": "be"}, "spec": {"hard": {"pods": "3"}, "scopes": ["BestEffort"]}}))
        .await?;
    ensure!(reply.status == 201, "{}", reply.json());
    let mut changed = reply.json();
    changed["spec"]["scopes"] = json!(["NotBestEffort"]);
    let reply = http.put_json(&format!("{QUOTAS}/be"), &changed).await?;
    ensure!(
        reply.status == 422 && reply.json()["details"]["causes"][0]["field"] == "spec.scopes",
        "{}",
        reply.json()
    );
    // A pod whose request exceeds its limit, or whose amount is no quantity.
    let reply = http
        .post_json(PODS, &pod("p", json!({"requests": {"cpu": "2"}, "limits": {"cpu": "1"}})))
        .await?;
    ensure!(
        reply.status == 422
            && reply.json()["details"]["causes"][0]["field"] == "spec.containers[0].resources.requests"
            && reply.json()["details"]["causes"][0]["message"]
                == "Invalid value: \"2\": must be less than or equal to cpu limit of 1",
        "{}",
        reply.json()
    );
    let reply = http.post_json(PODS, &pod("p", json!({"requests": {"memory": "1GB"}}))).await?;
    ensure!(
        reply.status == 422
            && reply.json()["details"]["causes"][0]["field"] == "spec.containers[0].resources.requests[memory]",
        "{}",
        reply.json()
    );
    Ok(())
}

/// `kubectl create quota`, then admission against it: upstream's refusals, charges in
/// `status.used` that `kubectl get`/`describe quota` show, dry runs that charge nothing,
/// object counts, and a Service turned NodePort on update.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quota_admission_refuses_and_charges() -> Result<()> {
    let store = StoreHandle::open(Backend::Embedded).await?;
    let server = TestServer::start(store.store.clone()).await?;
    let http = Http::new(&server);
    server
        .kubectl(&["create", "quota", "compute", "--hard=requests.cpu=2,limits.memory=1Gi,pods=3"])
        .await?;
    let created = http.get(&format!("{QUOTAS}/compute")).await?.json();
    ensure!(created.get("status").is_none_or(|s| s.get("used").is_none()), "{created}");
    // Until the controller counted, the quota limits nothing (upstream: status.hard is empty).
    let reply = http.post_json(PODS, &pod("early", json!({}))).await?;
    ensure!(reply.status == 201, "{}", reply.json());
    http.request("DELETE", &format!("{PODS}/early"), &[], bytes::Bytes::new()).await?;
    count_quota(&http, "compute", json!({"requests.cpu": "0", "limits.memory": "0", "pods": "0"})).await?;

    let reply = http.post_json(PODS, &pod("bare", json!({}))).await?;
    ensure!(
        reply.status == 403
            && reply.json()["message"]
                == r#"pods "bare" is forbidden: failed quota: compute: must specify limits.memory for: app; requests.cpu for: app"#,
        "{}",
        reply.json()
    );
    let one = json!({"requests": {"cpu": "1"}, "limits": {"memory": "256Mi"}});
    let reply = http.post_json(PODS, &pod("a", one.clone())).await?;
    ensure!(reply.status == 201, "{}", reply.json());
    ensure!(
        used(&http, "compute").await? == json!({"requests.cpu": "1", "limits.memory": "256Mi", "pods": "1"}),
        "{}",
        used(&http, "compute").await?
    );
    let reply = http
        .post_json(PODS, &pod("b", json!({"requests": {"cpu": "1500m"}, "limits": {"memory": "256Mi"}})))
        .await?;
    ensure!(
        reply.status == 403
            && reply.json()["message"]
                == r#"pods "b" is forbidden: exceeded quota: compute, requested: requests.cpu=1500m, used: requests.cpu=1, limited: requests.cpu=2"#,
        "{}",
        reply.json()
    );
    // A dry run is checked but charges nothing. (Limits alone do: requests default to them.)
    let limits_only = json!({"limits": {"cpu": "1", "memory": "256Mi"}});
    let reply = http
        .post_json(&format!("{PODS}?dryRun=All"), &pod("c", limits_only.clone()))
        .await?;
    ensure!(reply.status == 201, "{}", reply.json());
    ensure!(used(&http, "compute").await?["pods"] == "1", "a dry run was charged");
    let reply = http.post_json(PODS, &pod("c", limits_only)).await?;
    ensure!(reply.status == 201, "{}", reply.json());
    ensure!(used(&http, "compute").await?["requests.cpu"] == "2");

    let table = server.kubectl(&["get", "quota", "compute"]).await?;
    ensure!(
        table.contains("REQUEST")
            && table.contains("pods: 2/3, requests.cpu: 2/2")
            && table.contains("limits.memory: 512Mi/1Gi"),
        "{table}"
    );
    let described = server.kubectl(&["describe", "quota", "compute"]).await?;
    ensure!(
        described.contains("Resource") && described.contains("Used") && described.contains("Hard"),
        "{described}"
    );
    let row = described
        .lines()
        .find(|l| l.starts_with("requests.cpu"))
        .context("describe lists requests.cpu")?;
    ensure!(row.split_whitespace().collect::<Vec<_>>() == ["requests.cpu", "2", "2"], "{described}");
    let err = server
        .apply(&pod("d", json!({"requests": {"cpu": "100m"}, "limits": {"memory": "1Mi"}})).to_string(), &[])
        .await
        .err()
        .context("a pod over the quota was created")?
        .to_string();
    ensure!(err.contains("exceeded quota: compute, requested: requests.cpu=100m, used: requests.cpu=2, limited: requests.cpu=2"), "{err}");

    // Object counts: classic and count/ names; a ClusterIP Service turned NodePort.
    server
        .kubectl(&["create", "quota", "objects", "--hard=configmaps=1,count/secrets=0,services.nodeports=0"])
        .await?;
    count_quota(&http, "objects", json!({"configmaps": "0", "count/secrets": "0", "services.nodeports": "0"})).await?;
    server.kubectl(&["create", "configmap", "first"]).await?;
    let err = server.kubectl_fails(&["create", "configmap", "second"]).await?;
    ensure!(err.contains("exceeded quota: objects, requested: configmaps=1, used: configmaps=1, limited: configmaps=1"), "{err}");
    let err = server.kubectl_fails(&["create", "secret", "generic", "s"]).await?;
    ensure!(err.contains("exceeded quota: objects, requested: count/secrets=1"), "{err}");
    server.kubectl(&["create", "service", "clusterip", "web", "--tcp=80:80"]).await?;
    let err = server
        .kubectl_fails(&["patch", "service", "web", "-p", r#"{"spec":{"type":"NodePort"}}"#])
        .await?;
    ensure!(err.contains("exceeded quota: objects, requested: services.nodeports=1"), "{err}");
    let svc = http.get("/api/v1/namespaces/default/services/web").await?.json();
    ensure!(svc["spec"]["type"] == "ClusterIP", "{svc}");
    Ok(())
}

/// Scoped quotas: a BestEffort quota counts only pods without requests or limits, a
/// PriorityClass selector only the pods of the classes it names; neither limits other kinds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scoped_quotas_count_only_their_pods() -> Result<()> {
    let store = StoreHandle::open(Backend::Embedded).await?;
    let server = TestServer::start(store.store.clone()).await?;
    let http = Http::new(&server);
    server
        .kubectl(&["create", "quota", "best-effort", "--hard=pods=1", "--scopes=BestEffort"])
        .await?;
    count_quota(&http, "best-effort", json!({"pods": "0"})).await?;
    let reply = http
        .post_json(QUOTAS, &json!({"metadata": {"name": "high"}, "spec": {
            "hard": {"pods": "1", "requests.cpu": "1"},
            "scopeSelector": {"matchExpressions": [{"scopeName": "PriorityClass", "operator": "In", "values": ["high"]}]},
        }}))
        .await?;
    ensure!(reply.status == 201, "{}", reply.json());
    count_quota(&http, "high", json!({"pods": "0", "requests.cpu": "0"})).await?;

    let created = |name: &str, body: Value| {
        let http = http.clone();
        let name = name.to_owned();
        async move {
            let reply = http.post_json(PODS, &body).await?;
            Ok::<_, anyhow::Error>((name, reply.status, reply.json()["message"].as_str().unwrap_or("").to_owned()))
        }
    };
    let (_, code, message) = created("free", pod("free", json!({}))).await?;
    ensure!(code == 201, "{message}");
    let (_, code, message) = created("free2", pod("free2", json!({}))).await?;
    ensure!(
        code == 403 && message.ends_with("exceeded quota: best-effort, requested: pods=1, used: pods=1, limited: pods=1"),
        "{code} {message}"
    );
    // Not best effort, no priority class: neither quota applies.
    let (_, code, message) = created("burst", pod("burst", json!({"requests": {"cpu": "5"}}))).await?;
    ensure!(code == 201, "{message}");
    let mut high = pod("high", json!({"requests": {"cpu": "500m"}}));
    high["spec"]["priorityClassName"] = json!("high");
    let (_, code, message) = created("high", high.clone()).await?;
    ensure!(code == 201, "{message}");
    ensure!(used(&http, "high").await? == json!({"pods": "1", "requests.cpu": "500m"}));
    high["metadata"]["name"] = json!("high2");
    let (_, code, message) = created("high2", high).await?;
    ensure!(code == 403 && message.contains("exceeded quota: high, requested: pods=1"), "{message}");
    // Scoped quotas never limit other kinds.
    server
        .kubectl(&["create", "quota", "scoped-objects", "--hard=count/configmaps=0", "--scopes=NotTerminating"])
        .await?;
    count_quota(&http, "scoped-objects", json!({"count/configmaps": "0"})).await?;
    server.kubectl(&["create", "configmap", "any"]).await?;
    Ok(())
}

/// Creates `count` pods at once through `servers` (round robin); returns how many were
/// admitted, failing on any reply but 201 and the quota's 403.
async fn create_at_once(servers: &[Http], count: usize) -> Result<usize> {
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..count {
        let http = servers[i % servers.len()].clone();
        tasks.spawn(async move {
            http.post_json(PODS, &pod(&format!("p{i}"), json!({}))).await
        });
    }
    let mut admitted = 0;
    while let Some(reply) = tasks.join_next().await {
        let reply = reply??;
        match reply.status {
            201 => admitted += 1,
            403 => ensure!(
                reply.json()["message"].as_str().is_some_and(|m| m.contains("exceeded quota: pods")),
                "{}",
                reply.json()
            ),
            other => anyhow::bail!("unexpected {other}: {}", reply.json()),
        }
    }
    Ok(admitted)
}

async fn pods_quota(http: &Http) -> Result<()> {
    let reply = http
        .post_json(QUOTAS, &json!({"metadata": {"name": "pods"}, "spec": {"hard": {"pods": "5"}}}))
        .await?;
    ensure!(reply.status == 201, "{}", reply.json());
    count_quota(http, "pods", json!({"pods": "0"})).await?;
    Ok(())
}

async fn stored_pods(http: &Http) -> Result<usize> {
    Ok(http.get(PODS).await?.json()["items"].as_array().map_or(0, Vec::len))
}

/// 20 pods created at once against a quota of 5 pods: exactly 5 are admitted, and the quota
/// says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_creates_never_overshoot_a_quota() -> Result<()> {
    let store = StoreHandle::open(Backend::Embedded).await?;
    let server = TestServer::start(store.store.clone()).await?;
    let http = Http::new(&server);
    pods_quota(&http).await?;
    let admitted = create_at_once(std::slice::from_ref(&http), 20).await?;
    ensure!(admitted == 5, "{admitted} admitted");
    ensure!(stored_pods(&http).await? == 5);
    ensure!(used(&http, "pods").await? == json!({"pods": "5"}));
    Ok(())
}

/// The same through two API servers over one etcd: each serializes its own checks, so only
/// the compare-and-swap on the quota keeps them from both admitting the fifth pod.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_api_servers_never_overshoot_a_quota() -> Result<()> {
    let store = StoreHandle::open(Backend::Etcd).await?;
    let first = TestServer::start(store.store.clone()).await?;
    let second = TestServer::start(store.second_etcd_client().await?).await?;
    let servers = [Http::new(&first), Http::new(&second)];
    pods_quota(&servers[0]).await?;
    let admitted = create_at_once(&servers, 20).await?;
    ensure!(admitted == 5, "{admitted} admitted");
    ensure!(stored_pods(&servers[1]).await? == 5);
    ensure!(used(&servers[1], "pods").await? == json!({"pods": "5"}));
    Ok(())
}
