//! What pods need to call the API server from inside the cluster, over HTTPS as clients see
//! it: the `default/kubernetes` Service and its Endpoints and EndpointSlice (kept by every API
//! server, recreated when deleted, converging when several servers share one etcd),
//! ServiceAccount admission (the default account, the projected token volume) and what a
//! kubelet may ask of TokenRequest.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use anyhow::{Result, bail};
use bytes::Bytes;
use common::{Backend, Http, Identity, STEP, StoreHandle, TestServer, test_config};
use coxswain_apiserver::ServerConfig;
use serde_json::{Value, json};

const SERVICE: &str = "/api/v1/namespaces/default/services/kubernetes";
const ENDPOINTS: &str = "/api/v1/namespaces/default/endpoints/kubernetes";
const SLICE: &str = "/apis/discovery.k8s.io/v1/namespaces/default/endpointslices/kubernetes";
const LEASES: &str = "/apis/coordination.k8s.io/v1/namespaces/kube-system/leases";

/// Quick rounds, so that deletions are repaired and dead servers dropped within a test (the
/// Lease lasts many rounds, so that a busy machine never makes a live server look dead).
fn quick_config() -> ServerConfig {
    ServerConfig {
        endpoint_reconcile_interval: Duration::from_millis(200),
        endpoint_lease_ttl: Duration::from_secs(3),
        ..test_config()
    }
}

fn assert_status(reply: &common::Reply, code: u16, reason: &str) -> Value {
    let body = reply.json();
    assert_eq!(reply.status, code, "{body}");
    assert_eq!(body["kind"], "Status", "{body}");
    assert_eq!(body["reason"], reason, "{body}");
    body
}

/// Polls `check` every 50 ms until it gives `Some`; fails after [`STEP`] with `what`.
async fn eventually<T, F, Fut>(what: &str, mut check: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Option<T>>>,
{
    let deadline = tokio::time::Instant::now() + STEP;
    loop {
        if let Some(v) = check().await? {
            return Ok(v);
        }
        if tokio::time::Instant::now() > deadline {
            bail!("{what}: not within {STEP:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn addresses(endpoints: &Value) -> Vec<String> {
    endpoints["subsets"][0]["addresses"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|a| a["ip"].as_str().map(str::to_owned))
        .collect()
}

fn slice_addresses(slice: &Value) -> Vec<String> {
    slice["endpoints"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["addresses"][0].as_str().map(str::to_owned))
        .collect()
}

#[tokio::test]
async fn the_kubernetes_service_lists_the_api_server_and_comes_back_when_deleted() -> Result<()> {
    let store = StoreHandle::open(Backend::Embedded).await?;
    let server = TestServer::start_with(store.store.clone(), quick_config()).await?;
    let admin = Http::new(&server);
    let port = server.addr.port();

    let svc = admin.get(SERVICE).await?.json();
    assert_eq!(svc["spec"]["clusterIP"], "10.96.0.1", "{svc}");
    assert_eq!(svc["spec"]["clusterIPs"], json!(["10.96.0.1"]));
    assert_eq!(svc["spec"]["type"], "ClusterIP");
    assert!(svc["spec"]["selector"].is_null(), "no selector: the API server keeps its endpoints");
    assert_eq!(svc["spec"]["ports"], json!([{"name": "https", "port": 443, "protocol": "TCP", "targetPort": port}]));
    assert_eq!(svc["metadata"]["labels"], json!({"component": "apiserver", "provider": "kubernetes"}));

    let endpoints = admin.get(ENDPOINTS).await?.json();
    assert_eq!(endpoints["metadata"]["labels"]["endpointslice.kubernetes.io/skip-mirror"], "true");
    assert_eq!(
        endpoints["subsets"],
        json!([{"addresses": [{"ip": "127.0.0.1"}], "ports": [{"name": "https", "port": port, "protocol": "TCP"}]}])
    );
    let slice = admin.get(SLICE).await?.json();
    assert_eq!(slice["metadata"]["labels"]["kubernetes.io/service-name"], "kubernetes");
    assert_eq!(slice["addressType"], "IPv4");
    assert_eq!(slice_addresses(&slice), ["127.0.0.1"]);
    assert_eq!(slice["endpoints"][0]["conditions"]["ready"], true);
    assert_eq!(slice["ports"], json!([{"name": "https", "port": port, "protocol": "TCP"}]));
    let leases = admin.get(&format!("{LEASES}?labelSelector=apiserver.kubernetes.io/identity%3Dkube-apiserver")).await?.json();
    let items = leases["items"].as_array().unwrap();
    assert_eq!(items.len(), 1, "{leases}");
    assert_eq!(items[0]["metadata"]["name"], "apiserver-127-0-0-1");
    assert_eq!(items[0]["metadata"]["annotations"]["coxswain.dev/advertise-address"], "127.0.0.1");

    // kubectl sees it as users know it.
    let out = server.kubectl(&["get", "service", "kubernetes", "-o", "wide"]).await?;
    assert!(out.contains("10.96.0.1") && out.contains("443/TCP"), "{out}");

    // The first address is the kubernetes Service's alone.
    let taken = admin
        .post_json(
            "/api/v1/namespaces/default/services",
            &json!({"metadata": {"name": "squatter"}, "spec": {"clusterIP": "10.96.0.1", "ports": [{"port": 80}]}}),
        )
        .await?;
    let body = assert_status(&taken, 422, "Invalid");
    assert!(body["message"].as_str().unwrap().contains("provided IP is already allocated"), "{body}");

    // Deleted, each comes back (the Service with its address).
    let uid = svc["metadata"]["uid"].clone();
    server.kubectl(&["delete", "service", "kubernetes"]).await?;
    let again = eventually("the Service is recreated", || async {
        let reply = admin.get(SERVICE).await?;
        Ok((reply.status == 200 && reply.json()["metadata"]["uid"] != uid).then(|| reply.json()))
    })
    .await?;
    assert_eq!(again["spec"]["clusterIP"], "10.96.0.1");
    for path in [ENDPOINTS, SLICE] {
        let uid = admin.get(path).await?.json()["metadata"]["uid"].clone();
        let reply = admin.request("DELETE", path, &[], Bytes::new()).await?;
        assert_eq!(reply.status, 200, "{}", reply.json());
        eventually(&format!("{path} is recreated"), || async {
            let reply = admin.get(path).await?;
            Ok((reply.status == 200 && reply.json()["metadata"]["uid"] != uid).then_some(()))
        })
        .await?;
    }

    // Edited, the endpoints are put back.
    let mut edited = admin.get(ENDPOINTS).await?.json();
    edited["subsets"][0]["addresses"] = json!([{"ip": "10.9.9.9"}]);
    assert_eq!(admin.put_json(ENDPOINTS, &edited).await?.status, 200);
    eventually("the Endpoints are reset", || async {
        Ok((addresses(&admin.get(ENDPOINTS).await?.json()) == ["127.0.0.1"]).then_some(()))
    })
    .await?;
    eventually("the EndpointSlice follows", || async {
        Ok((slice_addresses(&admin.get(SLICE).await?.json()) == ["127.0.0.1"]).then_some(()))
    })
    .await?;
    Ok(())
}

/// Two listeners on the same port of two loopback addresses (every API server of a cluster
/// serves on the same port).
async fn two_listeners() -> Result<(tokio::net::TcpListener, tokio::net::TcpListener)> {
    for _ in 0..20 {
        let a = tokio::net::TcpListener::bind("127.0.0.2:0").await?;
        let port = a.local_addr()?.port();
        if let Ok(b) = tokio::net::TcpListener::bind(("127.0.0.3", port)).await {
            return Ok((a, b));
        }
    }
    bail!("no port free on both 127.0.0.2 and 127.0.0.3")
}

#[tokio::test]
async fn api_servers_on_one_etcd_converge_on_their_endpoints() -> Result<()> {
    let store = StoreHandle::open(Backend::Etcd).await?;
    let (la, lb) = two_listeners().await?;
    let a = TestServer::start_on(store.store.clone(), quick_config(), "", la).await?;
    let b = TestServer::start_on(store.second_etcd_client().await?, quick_config(), "", lb).await?;
    let port = a.addr.port();
    let (ha, hb) = (Http::new(&a), Http::new(&b));
    let both = vec!["127.0.0.2".to_owned(), "127.0.0.3".to_owned()];
    for http in [&ha, &hb] {
        eventually("both servers are listed, as either sees it", || async {
            let e = http.get(ENDPOINTS).await?.json();
            let s = http.get(SLICE).await?.json();
            Ok((addresses(&e) == both && slice_addresses(&s) == both).then_some(()))
        })
        .await?;
    }
    let e = ha.get(ENDPOINTS).await?.json();
    assert_eq!(e["subsets"][0]["ports"], json!([{"name": "https", "port": port, "protocol": "TCP"}]));

    // Agreeing, they leave the objects alone: no write over several rounds.
    let versions = || async {
        let mut v = BTreeSet::new();
        for path in [SERVICE, ENDPOINTS, SLICE] {
            v.insert(ha.get(path).await?.json()["metadata"]["resourceVersion"].as_str().unwrap_or_default().to_owned());
        }
        Ok::<_, anyhow::Error>(v)
    };
    let before = versions().await?;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(versions().await?, before, "the servers keep rewriting the kubernetes Service's objects");

    // A server that dies (its task dropped, nothing cleaned up) leaves once its Lease expires.
    drop(b);
    eventually("the dead server's address is dropped", || async {
        let e = ha.get(ENDPOINTS).await?.json();
        let s = ha.get(SLICE).await?.json();
        Ok((addresses(&e) == ["127.0.0.2"] && slice_addresses(&s) == ["127.0.0.2"]).then_some(()))
    })
    .await?;
    let leases = ha.get(LEASES).await?.json();
    let names: Vec<&str> = leases["items"].as_array().unwrap().iter().filter_map(|l| l["metadata"]["name"].as_str()).collect();
    assert!(names.contains(&"apiserver-127-0-0-2") && !names.contains(&"apiserver-127-0-0-3"), "{names:?}");

    // It comes back; stopping gracefully, it removes itself at once.
    let lb = tokio::net::TcpListener::bind(("127.0.0.3", port)).await?;
    let b = TestServer::start_on(store.second_etcd_client().await?, quick_config(), "", lb).await?;
    eventually("the restarted server is listed again", || async {
        Ok((addresses(&ha.get(ENDPOINTS).await?.json()) == both).then_some(()))
    })
    .await?;
    b.stop().await?;
    let e = ha.get(ENDPOINTS).await?.json();
    assert_eq!(addresses(&e), ["127.0.0.2"], "a stopped server removed itself before it ended: {e}");
    Ok(())
}

fn pod(name: &str, spec: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": spec})
}

fn containers() -> Value {
    json!([{"name": "app", "image": "busybox"}, {"name": "side", "image": "busybox"}])
}

#[tokio::test]
async fn pods_get_their_service_account_and_its_token_volume() -> Result<()> {
    let store = StoreHandle::open(Backend::Embedded).await?;
    let server = TestServer::start(store.store.clone()).await?;
    let admin = Http::new(&server);
    const PODS: &str = "/api/v1/namespaces/default/pods";

    let spec = json!({"initContainers": [{"name": "init", "image": "busybox"}], "containers": containers()});
    let reply = admin.post_json(PODS, &pod("plain", spec)).await?;
    assert_eq!(reply.status, 201, "{}", reply.json());
    let p = reply.json();
    assert_eq!(p["spec"]["serviceAccountName"], "default");
    assert_eq!(p["spec"]["serviceAccount"], "default");
    let volumes = p["spec"]["volumes"].as_array().unwrap();
    assert_eq!(volumes.len(), 1, "{volumes:?}");
    let name = volumes[0]["name"].as_str().unwrap();
    let suffix = name.strip_prefix("kube-api-access-").expect("the upstream volume name");
    assert!(suffix.len() == 5 && suffix.bytes().all(|b| b"bcdfghjklmnpqrstvwxz2456789".contains(&b)), "{name}");
    assert_eq!(volumes[0]["projected"], json!({
        "defaultMode": 420,
        "sources": [
            {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
            {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
            {"downwardAPI": {"items": [{"fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}, "path": "namespace"}]}},
        ],
    }));
    let mount = json!([{"mountPath": "/var/run/secrets/kubernetes.io/serviceaccount", "name": name, "readOnly": true}]);
    for (list, i) in [("initContainers", 0), ("containers", 0), ("containers", 1)] {
        assert_eq!(p["spec"][list][i]["volumeMounts"], mount, "{list}[{i}]");
    }

    // No token when the pod, or its account, says so (the pod's word wins).
    let reply = admin
        .post_json(PODS, &pod("no-token", json!({"automountServiceAccountToken": false, "containers": containers()})))
        .await?;
    assert_eq!(reply.status, 201);
    assert!(reply.json()["spec"]["volumes"].is_null(), "{}", reply.json());
    let sa = json!({"metadata": {"name": "quiet"}, "automountServiceAccountToken": false, "imagePullSecrets": [{"name": "regcred"}]});
    assert_eq!(admin.post_json("/api/v1/namespaces/default/serviceaccounts", &sa).await?.status, 201);
    let reply = admin
        .post_json(PODS, &pod("quiet-1", json!({"serviceAccountName": "quiet", "containers": containers()})))
        .await?;
    let p = reply.json();
    assert!(p["spec"]["volumes"].is_null(), "{p}");
    assert_eq!(p["spec"]["imagePullSecrets"], json!([{"name": "regcred"}]), "the account's pull secrets are copied");
    let reply = admin
        .post_json(
            PODS,
            &pod("quiet-2", json!({"serviceAccountName": "quiet", "automountServiceAccountToken": true, "containers": containers()})),
        )
        .await?;
    assert_eq!(reply.json()["spec"]["volumes"].as_array().map(Vec::len), Some(1), "{}", reply.json());

    // A missing account is refused, and nothing is stored.
    let before = store.store.current_revision().await?;
    let reply = admin
        .post_json(PODS, &pod("ghostly", json!({"serviceAccountName": "ghost", "containers": containers()})))
        .await?;
    let body = assert_status(&reply, 403, "Forbidden");
    assert_eq!(
        body["message"],
        r#"pods "ghostly" is forbidden: error looking up service account default/ghost: serviceaccount "ghost" not found"#
    );
    assert_eq!(store.store.current_revision().await?, before);
    // So is a pod in a namespace whose default account does not exist (yet).
    assert_eq!(admin.post_json("/api/v1/namespaces", &json!({"metadata": {"name": "fresh"}})).await?.status, 201);
    let reply = admin.post_json("/api/v1/namespaces/fresh/pods", &pod("early", json!({"containers": containers()}))).await?;
    let body = assert_status(&reply, 403, "Forbidden");
    assert!(body["message"].as_str().unwrap().contains("error looking up service account fresh/default"), "{body}");
    server.create_default_service_account("fresh").await?;
    let reply = admin.post_json("/api/v1/namespaces/fresh/pods", &pod("early", json!({"containers": containers()}))).await?;
    assert_eq!(reply.status, 201, "{}", reply.json());

    // Mirror pods are left as they are, and may not use accounts or secrets.
    let mirror = |name: &str, spec: Value| {
        let mut p = pod(name, spec);
        p["metadata"]["annotations"] = json!({"kubernetes.io/config.mirror": "abc"});
        p["spec"]["nodeName"] = json!("n1");
        p
    };
    let reply = admin.post_json(PODS, &mirror("static-n1", json!({"containers": containers()}))).await?;
    assert_eq!(reply.status, 201, "{}", reply.json());
    let p = reply.json();
    assert!(p["spec"]["serviceAccountName"].is_null() && p["spec"]["volumes"].is_null(), "{p}");
    let reply = admin
        .post_json(PODS, &mirror("static-sa", json!({"serviceAccountName": "default", "containers": containers()})))
        .await?;
    let body = assert_status(&reply, 403, "Forbidden");
    assert_eq!(body["message"], r#"pods "static-sa" is forbidden: a mirror pod may not reference service accounts"#);

    // kubectl shows the mount.
    let out = server.kubectl(&["get", "pod", "plain", "-o", "jsonpath={.spec.containers[0].volumeMounts[0].mountPath}"]).await?;
    assert_eq!(out, "/var/run/secrets/kubernetes.io/serviceaccount");
    Ok(())
}

fn bound(name: &str, uid: &str) -> Value {
    json!({"spec": {"boundObjectRef": {"apiVersion": "v1", "kind": "Pod", "name": name, "uid": uid}}})
}

#[tokio::test]
async fn a_kubelet_gets_tokens_only_for_pods_bound_to_it() -> Result<()> {
    let store = StoreHandle::open(Backend::Embedded).await?;
    let server = TestServer::start(store.store.clone()).await?;
    let admin = Http::new(&server);
    for sa in ["robot", "other"] {
        let reply = admin.post_json("/api/v1/namespaces/default/serviceaccounts", &json!({"metadata": {"name": sa}})).await?;
        assert_eq!(reply.status, 201);
    }
    let mut uids = std::collections::HashMap::new();
    for (name, node, sa) in [("mine", "n1", "default"), ("robotic", "n1", "robot"), ("theirs", "n2", "default"), ("far", "n2", "other")] {
        let p = pod(name, json!({"nodeName": node, "serviceAccountName": sa, "containers": containers()}));
        let reply = admin.post_json("/api/v1/namespaces/default/pods", &p).await?;
        assert_eq!(reply.status, 201, "{}", reply.json());
        uids.insert(name, reply.json()["metadata"]["uid"].as_str().unwrap().to_owned());
    }
    let kubelet = Http::as_identity(&server, Identity::Cert("system:node:n1", &["system:nodes"]))?;
    let request = |sa: &str, body: Value| {
        let kubelet = kubelet.clone();
        let path = format!("/api/v1/namespaces/default/serviceaccounts/{sa}/token");
        async move { kubelet.post_json(&path, &body).await }
    };

    // Its own pod's account, bound to that pod: a token that says so.
    let reply = request("default", bound("mine", &uids["mine"])).await?;
    assert_eq!(reply.status, 201, "{}", reply.json());
    let token = reply.json()["status"]["token"].as_str().unwrap().to_owned();
    let review = admin
        .post_json("/apis/authentication.k8s.io/v1/tokenreviews", &json!({"spec": {"token": token}}))
        .await?
        .json();
    let user = &review["status"]["user"];
    assert_eq!(user["username"], "system:serviceaccount:default:default", "{review}");
    assert_eq!(user["extra"]["authentication.kubernetes.io/pod-name"], json!(["mine"]));
    assert_eq!(user["extra"]["authentication.kubernetes.io/node-name"], json!(["n1"]));
    assert_eq!(request("robot", bound("robotic", &uids["robotic"])).await?.status, 201);

    let forbidden = |reply: common::Reply, want: &str| {
        let body = assert_status(&reply, 403, "Forbidden");
        let message = body["message"].as_str().unwrap_or_default().to_owned();
        assert!(message.contains(want), "{message:?} should say {want:?}");
    };
    forbidden(request("other", bound("far", &uids["far"])).await?, "no relationship found between node 'n1' and this object");
    forbidden(request("default", json!({"spec": {}})).await?, "node requested token not bound to a pod");
    forbidden(request("default", bound("mine", "")).await?, "node requested token with a pod binding without a uid");
    forbidden(request("default", bound("mine", "stale-uid")).await?, "does not match the UID in record");
    forbidden(request("default", bound("theirs", &uids["theirs"])).await?, "bound to a pod scheduled on a different node");
    let mut two = bound("mine", &uids["mine"]);
    two["spec"]["audiences"] = json!(["a", "b"]);
    forbidden(request("default", two).await?, "node may only request 0 or 1 audiences");
    let mut vault = bound("mine", &uids["mine"]);
    vault["spec"]["audiences"] = json!(["vault"]);
    forbidden(
        request("default", vault.clone()).await?,
        r#"audience "vault" not found in pod spec volume, system:node:n1 is not authorized to request tokens for this audience"#,
    );
    // RBAC may grant an audience explicitly.
    let role = json!({"metadata": {"name": "vault-audience"}, "rules": [{"apiGroups": [""], "resources": ["vault"],
        "verbs": ["request-serviceaccounts-token-audience"]}]});
    assert_eq!(admin.post_json("/apis/rbac.authorization.k8s.io/v1/clusterroles", &role).await?.status, 201);
    let binding = json!({"metadata": {"name": "vault-audience"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "vault-audience"},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "system:node:n1"}]});
    assert_eq!(admin.post_json("/apis/rbac.authorization.k8s.io/v1/clusterrolebindings", &binding).await?.status, 201);
    assert_eq!(request("default", vault).await?.status, 201);

    // Nobody binds an account's token to a pod running as another account.
    let reply = admin
        .post_json("/api/v1/namespaces/default/serviceaccounts/robot/token", &bound("mine", &uids["mine"]))
        .await?;
    let body = assert_status(&reply, 400, "BadRequest");
    assert_eq!(
        body["message"],
        r#"cannot bind token for serviceaccount "robot" to pod running with different serviceaccount name."#
    );
    Ok(())
}
